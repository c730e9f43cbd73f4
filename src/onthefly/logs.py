"""Progress and logs of long runs: a live bar on a terminal, plain lines elsewhere, and TensorBoard.

:class:`Progress` shows a loop's progress. On a terminal it is a tqdm bar
(step, rate, time left, and the values given to :meth:`Progress.log`); when
stderr is not a terminal (a log file, a batch job, a pipe), or with
``mode="lines"``, it writes one plain line per :meth:`Progress.log` call to
stderr instead, with the step, the values, the rate and the time left;
``mode="off"`` prints nothing.

:class:`TensorBoardLog` writes scalars and PNG pictures as TensorBoard events
through ``torch.utils.tensorboard``, which needs the ``tensorboard`` package
(``pip install 'onthefly[logs]'``).

Example:
    >>> import io
    >>> stream = io.StringIO()
    >>> with Progress(total=20, description="train", mode="lines", stream=stream) as progress:
    ...     for step in range(20):
    ...         progress.update()
    ...         if (step + 1) % 10 == 0:
    ...             progress.log(loss=0.5)
    >>> stream.getvalue().splitlines()[0].startswith("train: step 10/20 (50 %), loss 0.5")
    True
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

__all__ = ["PROGRESS_MODES", "Progress", "TensorBoardLog", "format_value", "progress_mode", "tensorboard_missing"]

PROGRESS_MODES = ("auto", "bar", "lines", "off")
"""``auto``: a bar when stderr is a terminal, else lines; ``bar``; ``lines``: one plain line per log; ``off``."""


def progress_mode(progress: bool | str, stream: TextIO | None = None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"`` for a ``progress`` setting (``True`` is ``"auto"``, ``False`` ``"off"``).

    ``auto`` resolves to a bar when ``stream`` (default: stderr) is a terminal, else to lines.
    """
    if progress is True:
        progress = "auto"
    elif progress is False:
        progress = "off"
    if progress not in PROGRESS_MODES:
        raise ValueError(f"progress: expected True, False or one of {list(PROGRESS_MODES)}, got {progress!r}")
    if progress == "auto":
        stream = sys.stderr if stream is None else stream
        return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"
    return progress


def _duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"`` or ``"1 h 02 min"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_value(value) -> str:
    """A number as shown in progress lines: floats to 4 significant digits, anything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Progress of a loop of ``total`` steps, as a bar on a terminal or as plain lines.

    Args:
        total: steps in all (the bar's end; the time left is computed towards it).
        description: the label in front (``"train correspondence"``).
        initial: steps already done (a resumed run); the rate counts from here.
        mode: a :data:`PROGRESS_MODES` name, or ``True`` (``"auto"``) / ``False`` (``"off"``).
        unit: what a step is called on the bar.
        stream: where to write (default: stderr).
        leave: keep the finished bar on screen (a nested bar, such as an evaluation's, passes ``False``).
    """

    def __init__(self, *, total: int, description: str, initial: int = 0, mode: bool | str = "auto",
                 unit: str = "step", stream: TextIO | None = None, leave: bool = True) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.mode = progress_mode(mode, self.stream)
        self.total, self.description, self.unit = total, description, unit
        self.initial = self.done = initial
        self._clock: tuple[float, int] | None = None  # (time, steps done) at the first update: the rate counts from it
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=description, unit=unit, file=self.stream,
                             dynamic_ncols=True, leave=leave, mininterval=0.5)

    def update(self, count: int = 1) -> None:
        """``count`` more steps are done."""
        self.done += count
        if self._clock is None:  # the end of the first step: the rate counts from here
            self._clock = (time.perf_counter(), self.done)
        if self._bar is not None:
            self._bar.update(count)

    def rate(self) -> float | None:
        """Steps per second since the first :meth:`update` (``None`` until a second one).

        What ran before the loop's first step ended (loading, a first evaluation, the first
        step's warm-up) does not count; what runs between steps (evaluations, checkpoints) does.
        """
        if self._clock is None:
            return None
        began, done = self._clock
        elapsed, steps = time.perf_counter() - began, self.done - done
        return steps / elapsed if steps > 0 and elapsed > 0 else None

    def log(self, values: Mapping[str, object] | None = None, /, **more) -> None:
        """Show ``values`` and ``more`` (loss, samples/s, ...): on the bar beside the count; as lines, one line now."""
        if self.mode == "off":
            return
        shown = {key: format_value(value) for key, value in {**(values or {}), **more}.items()}
        if self._bar is not None:
            self._bar.set_postfix(shown, refresh=True)
            return
        parts = [f"{self.description}: {self.unit} {self.done}/{self.total} ({100 * self.done / max(1, self.total):.0f} %)"]
        parts += [f"{key} {value}" for key, value in shown.items()]
        rate = self.rate()
        if rate is not None:
            parts.append(f"{1 / rate:.3g} s/{self.unit}")
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        self.write(", ".join(parts))

    def write(self, message: str) -> None:
        """Print a message without breaking the bar (nothing in ``"off"`` mode)."""
        if self.mode == "off":
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exception) -> None:
        self.close()


def tensorboard_missing() -> str | None:
    """``None`` when TensorBoard logs can be written, else a sentence saying what to install."""
    try:
        import tensorboard  # noqa: F401
    except ModuleNotFoundError:
        return ("TensorBoard logs need the tensorboard package, which is not installed: "
                "pip install 'onthefly[logs]' (or pip install tensorboard)")
    return None


class TensorBoardLog:
    """TensorBoard event files in ``folder``: scalars and PNG pictures at training steps.

    Args:
        folder: where the event files go (made if missing).
        purge_step: on a resumed run, the step it resumes from: events of the killed run
            at or after it are hidden, so the curves do not fold back.

    Raises ``ModuleNotFoundError`` naming the extra to install when ``tensorboard`` is missing.
    """

    def __init__(self, folder: str | os.PathLike, *, purge_step: int | None = None) -> None:
        missing = tensorboard_missing()
        if missing:
            raise ModuleNotFoundError(f"tensorboard: {missing}")
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder)
        self._writer = SummaryWriter(log_dir=str(self.folder), purge_step=purge_step or None, flush_secs=10)

    def scalars(self, step: int, values: dict, *, prefix: str) -> None:
        """``prefix/name`` for each finite number in ``values`` (``None`` and NaN are left out)."""
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
                self._writer.add_scalar(f"{prefix}/{name}", value, step)

    def picture(self, tag: str, path: str | os.PathLike, step: int) -> bool:
        """Add the PNG at ``path`` as an image; ``False`` when there is no such file."""
        import matplotlib.image

        if not Path(path).is_file():
            return False
        image = matplotlib.image.imread(path)  # (H, W, 3 or 4) in [0, 1]
        self._writer.add_image(tag, image[..., :3], step, dataformats="HWC")
        return True

    def close(self) -> None:
        self._writer.close()
