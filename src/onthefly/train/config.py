"""The settings of a training run (:class:`TrainConfig`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .._checks import check_int, check_real
from ..checkpoint import RESUME_OVERRIDES
from ..logs import PROGRESS_MODES

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Settings of a training run (the model and the data are configured apart).

    Attributes:
        output: folder for the checkpoint, ``metrics.csv``, ``summary.json`` and ``pictures/``.
        steps: optimisation steps in all (the cosine schedule spans them).
        lr: Adam learning rate (the seed method: 1e-4), decayed by a cosine to 0.
        warmup_steps: linear warm-up steps.
        device: ``"cpu"``, ``"cuda"`` ... (under torchrun on GPUs, each rank takes ``cuda:LOCAL_RANK``).
        amp: bfloat16 autocast on CUDA (ignored on the CPU).
        compile: wrap the model in ``torch.compile``.
        checkpoint_every, eval_every, log_every: periods in steps (0 disables evaluation).
        eval_batches: batches of the evaluation stream per evaluation (the same ones every time).
        resume: continue from ``output/checkpoint.pt`` if it exists. The saved
            model, training and sampler configurations must equal the given
            ones (else :class:`~onthefly.checkpoint.ConfigurationMismatchError`
            lists the fields that differ), except the settings of how the run
            is driven (``output``, ``device``, ``compile``, the periods,
            ``stop_at``, ``progress``, ``tensorboard``) and ``steps``, which may grow to extend the run.
        resume_overrides: training settings a resume may change on purpose,
            from :data:`~onthefly.checkpoint.RESUME_OVERRIDES` (``"lr"``,
            ``"warmup_steps"``): the schedule continues with the new values.
        stop_at: stop after this step as if the run were killed (the checkpoint lets it resume).
        seed: model initialisation seed.
        progress: how rank 0 shows progress: ``True`` or ``"auto"`` (a bar when stderr is a
            terminal, else one plain line per ``log_every`` steps on stderr), ``"bar"``,
            ``"lines"``, or ``False`` / ``"off"`` (nothing); see :class:`onthefly.logs.Progress`.
        tensorboard: a folder for TensorBoard events (losses, learning rate, samples/s,
            evaluation metrics and prediction pictures, at the steps of ``metrics.csv``), or
            ``None``. Needs the ``tensorboard`` package (``pip install 'onthefly[logs]'``).
        prefetch: batches made ahead in a background thread while the model trains
            (:class:`~onthefly.sampling.prefetch.Prefetcher`); 0 makes each batch in the step.
        command: the command-line settings of the run (set by ``onthefly train``;
            stored in the checkpoint so that ``--resume`` restores them).
    """

    output: str = "outputs/train"
    steps: int = 1000
    lr: float = 1e-4
    warmup_steps: int = 0
    device: str = "cpu"
    amp: bool = True
    compile: bool = False
    checkpoint_every: int = 100
    eval_every: int = 100
    eval_batches: int = 4
    log_every: int = 10
    resume: bool = False
    stop_at: int | None = None
    seed: int = 0
    progress: bool | str = True
    resume_overrides: tuple[str, ...] = ()
    command: dict | None = None
    prefetch: int = 2
    tensorboard: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.output, (str, os.PathLike)):
            raise TypeError(f"output: expected a folder path, got {type(self.output).__name__}")
        self.output = os.fspath(self.output)
        for name in ("steps", "checkpoint_every", "log_every", "eval_batches"):
            setattr(self, name, check_int(name, getattr(self, name), minimum=1))
        for name in ("warmup_steps", "eval_every", "prefetch"):
            setattr(self, name, check_int(name, getattr(self, name), minimum=0))
        self.lr = check_real("lr", self.lr, low=0.0)
        if self.lr == 0:
            raise ValueError("lr: expected a positive learning rate, got 0")
        if self.stop_at is not None:
            self.stop_at = check_int("stop_at", self.stop_at, minimum=1)
        for name in ("amp", "compile", "resume"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        if not isinstance(self.progress, bool) and self.progress not in PROGRESS_MODES:
            raise ValueError(f"progress: expected True, False or one of {list(PROGRESS_MODES)}, got {self.progress!r}")
        if self.tensorboard is not None:
            if not isinstance(self.tensorboard, (str, os.PathLike)):
                raise TypeError(f"tensorboard: expected a folder path or None, got {type(self.tensorboard).__name__}")
            self.tensorboard = os.fspath(self.tensorboard)
        self.seed = check_int("seed", self.seed)
        if not isinstance(self.device, (str, torch.device)):
            raise TypeError(f"device: expected a device name such as 'cpu' or 'cuda', got {type(self.device).__name__}")
        self.device = str(self.device)
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda', got {self.device!r}") from error
        if not isinstance(self.resume_overrides, (list, tuple)) or not set(self.resume_overrides) <= set(RESUME_OVERRIDES):
            raise ValueError(f"resume_overrides: expected names from {list(RESUME_OVERRIDES)}, got {self.resume_overrides!r}")
        self.resume_overrides = tuple(self.resume_overrides)
        if self.command is not None and not isinstance(self.command, dict):
            raise TypeError(f"command: expected a dict of command-line settings or None, got {type(self.command).__name__}")
