"""The command line and the pictures behind it."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import matplotlib.image
import pytest

from onthefly.cli import main


def read_png(path: Path):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image


def test_preview_writes_a_png_and_reports_shapes(tmp_path, capsys):
    output = tmp_path / "preview.png"
    assert main(["preview", "--size", "64", "--pixel-spacing", "8", "--patch-size", "16", "--output", str(output),
                 "--alpha", "0", "90", "45"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == [1, 3, 1, 64, 64]
    assert summary["correspondence"] == [1, 48, 48]
    image = read_png(output)
    assert image[..., :3].std() > 0.05  # not a blank figure


def test_sampled_preview(tmp_path, capsys):
    output = tmp_path / "batch.png"
    assert main(["preview", "--sampled", "--size", "64", "--patch-size", "16", "--samples", "2", "--views", "3",
                 "--spacing", "4", "--crop-size", "160", "--geometric", "0.5", "--output", str(output)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == [2, 3, 1, 64, 64]
    assert summary["correspondence"] == [2, 48, 48]
    read_png(output)


def test_bad_beta_count_is_reported():
    with pytest.raises(SystemExit, match="--beta"):
        main(["preview", "--alpha", "0", "90", "--beta", "10"])


@pytest.mark.slow
def test_sampler_loop_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "sampler_loop.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "same batch as the uninterrupted stream: True" in out
    assert "DataLoader steps: [4, 5]" in out
    read_png(tmp_path / "outputs" / "examples" / "sampled_batch.png")
