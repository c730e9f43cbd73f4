"""Run files: checkpoints with a checksum, the resume check, the metrics log and strict JSON.

A checkpoint is a dict of plain values only: tensors, numbers, strings,
booleans, ``None``, and lists, tuples and dicts of them. It is written by
``torch.save`` to a temporary file, followed by one trailer line

    ``\\nonthefly-sha256:<64 hex digits>\\n``

holding the SHA-256 of every byte before it, then moved over the old file
(so a kill never leaves half a checkpoint). ``torch.load`` still reads the
file (its zip reader ignores the trailer). :func:`load_checkpoint` verifies
the checksum before reading anything, then loads with ``weights_only=True``,
so a file that would run code when unpickled is refused, and any damage (a
flipped byte, a truncated or overwritten file, missing keys) is reported as
such with the file's name.

A training checkpoint (:func:`onthefly.train.train_correspondence`) holds:
``model``, ``optimizer``, ``scheduler`` (state dicts), ``step``, ``world``
(ranks), ``task``, ``model_config``, ``train_config`` (the ``TrainConfig``
fields, including the command-line settings of a CLI run), ``sampler`` (the
training sampler's ``state_dict()``: ``seed``, ``rank``, ``step`` and, where
the sampler gives them, ``config`` and ``fingerprint``) and ``history``.
Resuming compares the saved configurations with the given ones
(:func:`check_resume`) and stops with the fields that differ.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ._checks import is_int

__all__ = [
    "CheckpointError",
    "ConfigurationMismatchError",
    "TRAINING_KEYS",
    "RESUME_OVERRIDES",
    "save_checkpoint",
    "load_checkpoint",
    "settings_differences",
    "check_resume",
    "restore_training",
    "prepare_metrics",
    "strict_json",
    "write_json",
]

TRAILER_PREFIX = b"\nonthefly-sha256:"
TRAILER_LENGTH = len(TRAILER_PREFIX) + 64 + 1
ZIP_END = b"PK\x05\x06"  # the zip end-of-central-directory record torch.save ends a file with (22 bytes)

TRAINING_KEYS = ("model", "optimizer", "scheduler", "step", "task", "model_config", "train_config", "sampler")
"""Keys every training checkpoint holds (a file without them is reported as damaged)."""

RESUME_OVERRIDES = ("lr", "warmup_steps")
"""Training settings a resume may change on purpose (``TrainConfig.resume_overrides``);
the cosine schedule then continues from the resumed step with the new values."""

RESUME_FREE = ("output", "resume", "stop_at", "device", "compile", "checkpoint_every", "eval_every", "eval_batches",
               "log_every", "progress", "tensorboard", "resume_overrides", "command", "steps")
"""Training settings that may differ on resume: where and how the run is driven, not what it trains
(``steps`` may grow, to extend a run; it is checked apart)."""


class CheckpointError(ValueError):
    """A checkpoint file that is damaged, incomplete, or holds objects other than plain data."""


class ConfigurationMismatchError(ValueError):
    """A resume whose model, training or sampler configuration differs from the checkpoint's.

    Attributes:
        differences: ``{field: (saved, given)}`` with dotted field names
            (``model_config.d_model``, ``sampler.config.batch_size``, ``train_config.lr``).
    """

    def __init__(self, message: str, differences: dict[str, tuple]) -> None:
        super().__init__(message)
        self.differences = differences


# ---------------------------------------------------------------------------
# Writing and reading


def check_plain(value, where: str = "payload") -> None:
    """Raise ``TypeError`` naming the first entry that is not a tensor, number, string, bool, None
    or a list, tuple or dict (with string or int keys) of them."""
    if value is None or isinstance(value, (bool, int, float, str, Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not (isinstance(key, str) or is_int(key)):
                raise TypeError(f"{where}: checkpoint keys must be strings or ints, got {type(key).__name__} {key!r}")
            check_plain(item, f"{where}.{key}")
        return
    raise TypeError(f"{where}: a checkpoint holds tensors, numbers, strings and lists or dicts of them only, "
                    f"got {type(value).__module__}.{type(value).__name__}")


def _digest(path: Path, length: int) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        left = length
        while left > 0:
            chunk = handle.read(min(left, 1 << 22))
            if not chunk:
                break
            hasher.update(chunk)
            left -= len(chunk)
    return hasher.hexdigest()


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """Write ``payload`` (plain values only, see :func:`check_plain`) atomically, with its checksum.

    Returns the path written.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"payload: expected a dict, got {type(payload).__name__}")
    check_plain(payload)
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    digest = _digest(temporary, temporary.stat().st_size)
    with open(temporary, "ab") as handle:
        handle.write(TRAILER_PREFIX + digest.encode("ascii") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def _damaged(name: str, path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{name}: the checkpoint {path} is damaged ({reason}); restore a copy, or delete it "
                           "to start the run over")


def _verify(name: str, path: Path) -> None:
    """Check the trailer's checksum; a file without a trailer must at least end as a complete zip archive."""
    size = path.stat().st_size
    if size == 0:
        raise _damaged(name, path, "the file is empty")
    with open(path, "rb") as handle:
        handle.seek(max(0, size - TRAILER_LENGTH))
        tail = handle.read()
    if tail.startswith(TRAILER_PREFIX) and len(tail) == TRAILER_LENGTH and tail.endswith(b"\n"):
        recorded = tail[len(TRAILER_PREFIX):-1].decode("ascii", errors="replace")
        if _digest(path, size - TRAILER_LENGTH) != recorded:
            raise _damaged(name, path, "its SHA-256 differs from the one written with it: "
                                       "the file changed after it was saved")
        return
    if tail[-22:].startswith(ZIP_END):
        warnings.warn(f"{name}: {path} carries no checksum (written without one); loading it unverified",
                      stacklevel=3)
        return
    raise _damaged(name, path, "no checksum trailer and not a complete archive: truncated or overwritten")


def load_checkpoint(path: str | os.PathLike, *, name: str = "checkpoint", map_location="cpu",
                    required: tuple[str, ...] = ()) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (or a plain ``torch.save`` of tensors).

    Args:
        path: the file.
        name: the argument or flag it came from, for messages (``"resume"``, ``"--init-from"``).
        map_location: as for ``torch.load``.
        required: keys the dict must hold (:data:`TRAINING_KEYS` for a training checkpoint).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the checksum does not match, the file is truncated or
            not a checkpoint, a required key is missing, or it holds objects other
            than plain data (refused by ``weights_only=True``: they could run code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such checkpoint file: {path}")
    _verify(name, path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if unsafe:
            raise CheckpointError(
                f"{name}: the checkpoint {path} is refused: it holds Python objects other than tensors, numbers and "
                f"strings, which could run code when loaded ({unsafe[0]})") from None
        raise _damaged(name, path, f"unreadable: {str(error).splitlines()[0][:120]}") from None
    except Exception as error:  # zip, EOF and decoding errors alike: the file is not what was written
        raise _damaged(name, path, f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}") from None
    if not isinstance(state, dict):
        raise _damaged(name, path, f"expected a dict, found a {type(state).__name__}")
    missing = [key for key in required if key not in state]
    if missing:
        raise _damaged(name, path, f"missing keys {missing}")
    return state


# ---------------------------------------------------------------------------
# Resume


def _comparable(value):
    if isinstance(value, (list, tuple)):
        return [_comparable(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def settings_differences(saved: Mapping, given: Mapping, *, prefix: str = "", ignore=()) -> dict[str, tuple]:
    """``{dotted field: (saved, given)}`` for the fields present in both mappings whose values differ
    (nested mappings compared field by field; lists and tuples alike)."""
    differences: dict[str, tuple] = {}
    for key in sorted(set(saved) & set(given), key=str):
        if key in ignore:
            continue
        old, new = saved[key], given[key]
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differences |= settings_differences(old, new, prefix=f"{prefix}{key}.")
        elif _comparable(old) != _comparable(new):
            differences[f"{prefix}{key}"] = (old, new)
    return differences


def _sampler_differences(saved: Mapping, given: Mapping) -> dict[str, tuple]:
    """The stream-defining differences: seed, the sampler's ``config`` (when both give one), else the fingerprint."""
    differences = settings_differences(saved, given, prefix="sampler.", ignore=("step", "rank", "fingerprint"))
    if not differences and "fingerprint" in saved and "fingerprint" in given and saved["fingerprint"] != given["fingerprint"]:
        differences["sampler.fingerprint"] = (saved["fingerprint"], given["fingerprint"])
    return differences


def check_resume(saved: Mapping, *, path, task: str, model_config: Mapping, train_config: Mapping,
                 sampler_state: Mapping, world: int) -> None:
    """Refuse to resume ``saved`` (a training checkpoint) into a run configured otherwise.

    Compares the task, the model configuration (all fields but
    ``backbone_weights``, which only seeds a fresh model), the training
    configuration (all fields but :data:`RESUME_FREE`, and but the
    ``resume_overrides`` it names), the sampler's state (seed, ``config``,
    ``fingerprint``; not ``step`` or ``rank``) and the number of ranks.

    Raises:
        ConfigurationMismatchError: listing every differing field, saved vs given.
        ValueError: ``steps`` below the step already done.
    """
    overrides = tuple(train_config.get("resume_overrides", ()))
    differences = settings_differences({"task": saved.get("task")}, {"task": task})
    differences |= settings_differences(saved.get("model_config", {}), model_config, prefix="model_config.",
                                        ignore=("backbone_weights",))
    differences |= settings_differences(saved.get("train_config", {}), train_config, prefix="train_config.",
                                        ignore=RESUME_FREE + overrides)
    differences |= _sampler_differences(saved.get("sampler", {}), sampler_state)
    if saved.get("world", 1) != world:
        differences["world"] = (saved.get("world", 1), world)
    if differences:
        listed = "; ".join(f"{field}: {old!r} vs {new!r}" for field, (old, new) in differences.items())
        hint = ""
        if any(field.split(".")[-1] in RESUME_OVERRIDES for field in differences):
            hint = (" A new lr or warmup_steps can be applied on purpose with resume_overrides=('lr',) "
                    "(command line: --resume-override lr).")
        raise ConfigurationMismatchError(
            f"resume: the run saved in {path} differs from this one (saved vs given): {listed}. Resume with the "
            f"saved settings, or start a new run in another output folder.{hint}", differences)
    done = int(saved.get("step", 0))
    steps = train_config.get("steps")
    if isinstance(steps, int) and steps < done:
        raise ValueError(f"steps: the checkpoint {path} has already done {done} steps; give steps >= {done} "
                         f"(more than the saved run's {saved.get('train_config', {}).get('steps')} extends it)")


def restore_training(saved: Mapping, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float) -> int:
    """Load the model, optimiser and schedule of a checked training checkpoint; returns its step.

    The learning rate is recomputed from the given base ``lr`` and the schedule
    as configured now (identical to the saved one when nothing changed; the new
    one from the resumed step on when ``steps``, ``lr`` or ``warmup_steps`` changed).
    """
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scheduler.base_lrs = [float(lr) for _ in scheduler.base_lrs]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * factor(scheduler.last_epoch)
    return int(saved["step"])


# ---------------------------------------------------------------------------
# Metrics log and JSON


def prepare_metrics(path: str | os.PathLike, columns: list[str], *, resumed_step: int) -> int:
    """Start ``metrics.csv`` (header only) for a new run, or cut it back to the rows of steps
    ``<= resumed_step`` on resume, so a killed and resumed run logs each step once.

    Returns the number of rows dropped.
    """
    path = Path(path)
    if resumed_step == 0 or not path.exists():
        _write_rows(path, [columns])
        return 0
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = (rows[0], rows[1:]) if rows else (columns, [])
    kept = [row for row in body if _row_step(row) is not None and _row_step(row) <= resumed_step]
    _write_rows(path, [header, *kept])
    return len(body) - len(kept)


def _row_step(row: list[str]) -> float | None:
    try:
        return float(row[0])
    except (IndexError, ValueError):
        return None


def _write_rows(path: Path, rows: list[list[str]]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    os.replace(temporary, path)


def strict_json(value):
    """``value`` with every NaN or infinite float replaced by ``None`` (JSON ``null``), tuples as lists,
    one-element tensors as numbers and paths as strings, so that ``json.dumps(..., allow_nan=False)`` succeeds."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Tensor) and value.numel() == 1:
        return strict_json(value.item())
    if isinstance(value, Mapping):
        return {str(key) if not isinstance(key, (str, int, float, bool)) else key: strict_json(item)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(path: str | os.PathLike, value) -> Path:
    """Write ``value`` as strict JSON (``null`` for NaN, see :func:`strict_json`), atomically."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(strict_json(value), indent=2, allow_nan=False) + "\n")
    os.replace(temporary, path)
    return path
