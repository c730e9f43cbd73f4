"""Progress (a bar on a terminal, plain lines elsewhere) and TensorBoard logs."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

from onthefly import logs
from onthefly.logs import Progress, TensorBoardLog, progress_mode


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_mode_follows_the_stream():
    assert progress_mode("auto", Terminal()) == "bar"
    assert progress_mode(True, io.StringIO()) == "lines"
    assert progress_mode(False, Terminal()) == "off"
    assert progress_mode("lines", Terminal()) == "lines"
    with pytest.raises(ValueError, match=r"progress: expected True, False or one of .*got 'loud'"):
        progress_mode("loud")


def test_lines_give_step_values_rate_and_time_left():
    stream = io.StringIO()
    with Progress(total=40, description="train x", mode="auto", stream=stream) as progress:  # not a terminal: lines
        for step in range(20):
            progress.update()
            if (step + 1) % 10 == 0:
                progress.log({"loss": 0.123456, "samples/s": 12.5})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"train x: step 20/40 \(50 %\), loss 0\.1235, samples/s 12\.5, [\d.e-]+ s/step, ETA \d+ s",
                        lines[1]), lines[1]


def test_a_resumed_count_starts_at_its_step_and_the_rate_ignores_what_came_before():
    stream = io.StringIO()
    progress = Progress(total=10, description="train", initial=6, mode="lines", stream=stream)
    assert progress.rate() is None
    progress.update()
    progress.log(loss=1.0)
    assert stream.getvalue() == "train: step 7/10 (70 %), loss 1\n"


def test_off_writes_nothing_and_a_bar_writes_to_a_terminal():
    quiet = io.StringIO()
    with Progress(total=3, description="x", mode="off", stream=quiet) as progress:
        progress.update(3)
        progress.log(loss=1.0)
        progress.write("hello")
    assert quiet.getvalue() == ""
    terminal = Terminal()
    with Progress(total=3, description="bar", stream=terminal) as progress:
        progress.update(3)
        progress.log(loss=0.5)
    assert "bar" in terminal.getvalue() and "3/3" in terminal.getvalue() and "loss=0.5" in terminal.getvalue()


def test_tensorboard_events_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from matplotlib.figure import Figure

    picture = tmp_path / "picture.png"
    figure = Figure(figsize=(1, 1))
    figure.subplots().plot([0, 1], [0, 1])
    figure.savefig(picture)
    board = TensorBoardLog(tmp_path / "board")
    board.scalars(3, {"loss": 0.5, "ap": float("nan"), "missing": None}, prefix="train")
    assert board.picture("eval/prediction", picture, 3)
    assert not board.picture("eval/absent", tmp_path / "absent.png", 3)
    board.close()
    events = EventAccumulator(str(tmp_path / "board")).Reload()
    assert events.Tags()["scalars"] == ["train/loss"]  # NaN and None are left out
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(3, 0.5)]
    assert events.Tags()["images"] == ["eval/prediction"]


def test_missing_tensorboard_is_named_with_the_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    assert "pip install 'onthefly[logs]'" in logs.tensorboard_missing()
    with pytest.raises(ModuleNotFoundError, match=r"tensorboard: .*pip install 'onthefly\[logs\]'"):
        TensorBoardLog(tmp_path)
    assert not any(tmp_path.iterdir())


def test_train_config_checks_progress_and_tensorboard():
    from onthefly.train import TrainConfig

    assert TrainConfig(progress="lines", tensorboard=Path("runs")).tensorboard == "runs"
    with pytest.raises(ValueError, match=r"progress: expected True, False or one of .*got 'loud'"):
        TrainConfig(progress="loud")
    with pytest.raises(TypeError, match="tensorboard: expected a folder path or None, got int"):
        TrainConfig(tensorboard=3)
