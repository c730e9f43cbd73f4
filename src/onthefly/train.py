"""Training and evaluation on the sampler's stream: the correspondence model and the fracture classifier.

:func:`train_correspondence` trains a :class:`~onthefly.models.CorrespondenceModel`
on batches drawn by a :class:`~onthefly.sampling.DRRCorrespondenceSampler`
(nothing stored), with Adam and a cosine schedule, and:

* checkpoints (model, optimiser, schedule, stream position and the model,
  training and sampler configurations; plain tensors and numbers with a
  checksum, :mod:`onthefly.checkpoint`) written atomically every
  ``checkpoint_every`` steps; ``resume=True`` continues from the last one on
  exactly the same stream (batch ``s`` is a pure function of the sampler's
  seed, rank and ``s``), so a killed run loses nothing, and refuses a run
  whose configuration differs from the saved one, listing the fields;
* a CSV metrics log, evaluation on a fixed seeded stream of held-out volumes
  (MSE, precision, recall, average precision; :mod:`onthefly.metrics`), and
  PNGs of predicted versus true correspondences;
* progress (step, loss, samples/s, time left) as a bar on a terminal, or as one
  plain line per log interval on stderr elsewhere (:class:`onthefly.logs.Progress`),
  and optionally TensorBoard events of the same numbers and pictures
  (``tensorboard=``; :class:`onthefly.logs.TensorBoardLog`);
* DistributedDataParallel when launched by ``torchrun`` (gloo on CPU, nccl on
  GPU); each rank draws its own stream; only rank 0 writes files.

:func:`train_classifier` does the same for the
:class:`~onthefly.models.FractureClassifier` on simulated fractures, with
optional correspondence pre-training (``init_from``) and attention guidance.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_int, check_real, is_int
from .checkpoint import (
    RESUME_OVERRIDES,
    TRAINING_KEYS,
    check_resume,
    load_checkpoint,
    prepare_metrics,
    restore_training,
    save_checkpoint,
    write_json,
)
from .logs import PROGRESS_MODES, Progress, TensorBoardLog, format_value
from .metrics import classification_metrics, correspondence_metrics
from .models import ClassifierConfig, CorrespondenceConfig, CorrespondenceModel, FractureClassifier
from .preview import save_prediction_preview
from .sampling import DRRCorrespondenceSampler, Prefetcher, require_fields
from .volume import Volume

__all__ = [
    "TrainConfig",
    "train_correspondence",
    "train_classifier",
    "Curriculum",
    "evaluate_correspondence",
    "evaluate_classifier_on_studies",
    "finetune_classifier_on_studies",
    "split_volume",
]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
SUMMARY = "summary.json"


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


def split_volume(volume: Volume, *, fraction: float = 0.6, axis: int | None = None) -> tuple[Volume, Volume]:
    """Cut a CT into two disjoint parts along the patient's long axis, for held-out evaluation.

    Args:
        volume: the CT.
        fraction: share of the slices in the first (inferior) part.
        axis: voxel axis to cut (default: the one most aligned with world z, superior).

    Returns:
        ``(inferior, superior)`` volumes, each with its own correct affine.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a number in (0, 1), got {fraction!r}")
    if axis is None:
        axis = int(volume.affine[2, :3].abs().argmax())
    size = volume.shape[axis]
    cut = int(round(size * fraction))
    if not 0 < cut < size:
        raise ValueError(f"fraction: the cut at {cut} of {size} slices leaves an empty part")
    stop_a, start_b = list(volume.shape), [0, 0, 0]
    stop_a[axis], start_b[axis] = cut, cut
    first, second = volume.crop([0, 0, 0], stop_a), volume.crop(start_b, list(volume.shape))
    if float(volume.affine[2, axis]) < 0:  # voxel index grows towards inferior: swap
        first, second = second, first
    return first, second


# ---------------------------------------------------------------------------
# Distributed set-up


@dataclass
class _Cluster:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _cluster(device: str) -> _Cluster:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for, but torch finds no CUDA device "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use device='cpu'")
    if world <= 1:
        return _Cluster(device=chosen)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        owns = True
    if chosen.type == "cuda":
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(chosen)
    return _Cluster(rank=dist.get_rank(), world=dist.get_world_size(), device=chosen, owns_group=owns)


# ---------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_correspondence(model: torch.nn.Module, sampler: DRRCorrespondenceSampler, *, batches: int = 4,
                            device: torch.device | str = "cpu") -> tuple[dict[str, float], object, Tensor]:
    """Metrics of ``model`` on batches ``0 .. batches-1`` of ``sampler`` (a fixed, seeded stream).

    Returns the metrics (over all entries of all batches), the first batch and its prediction.
    """
    was_training = model.training
    model.eval()
    predictions, targets = [], []
    first = first_prediction = None
    for step in range(batches):
        batch = sampler.sample(step).to(device)
        predicted = model(batch.images).float()
        predictions.append(predicted.cpu())
        targets.append(batch.correspondence.cpu())
        if first is None:
            first, first_prediction = batch, predicted
    model.train(was_training)
    return correspondence_metrics(torch.cat(predictions), torch.cat(targets)), first, first_prediction


# ---------------------------------------------------------------------------
# Training


def _schedule(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _parameter_checksum(model: torch.nn.Module) -> list[float]:
    flat = torch.cat([p.detach().double().flatten().cpu() for p in model.parameters()])
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64) % 997
    return [float(flat.sum()), float((flat * flat).sum()), float((flat * weights).sum())]


class _CorrespondenceTask:
    """The correspondence model: MSE against the true matrix; MSE/precision/recall/AP on held-out data."""

    name = "correspondence"
    eval_keys = ("mse", "precision", "recall", "ap")
    score = "ap"

    def __init__(self, model_config: CorrespondenceConfig) -> None:
        if not isinstance(model_config, CorrespondenceConfig):
            raise TypeError(f"model_config: expected a CorrespondenceConfig, got {type(model_config).__name__}")
        self.model_config = model_config

    def build(self) -> torch.nn.Module:
        return CorrespondenceModel(self.model_config)

    def loss(self, model: torch.nn.Module, batch) -> Tensor:
        return F.mse_loss(model(batch.images).float(), batch.correspondence)

    def evaluate(self, model, sampler, batches: int, device, picture: Path) -> dict[str, float]:
        metrics, batch, predicted = evaluate_correspondence(model, sampler, batches=batches, device=device)
        save_prediction_preview(batch.images[0], predicted[0], batch.correspondence[0], picture,
                                patch_size=batch.patch_size, title=f"held-out sample: AP {metrics['ap']:.3f}")
        return metrics


def train_correspondence(
    model_config: CorrespondenceConfig,
    sampler: DRRCorrespondenceSampler,
    config: TrainConfig,
    *,
    eval_sampler: DRRCorrespondenceSampler | None = None,
) -> dict:
    """Train the correspondence model on ``sampler``'s stream; evaluate on ``eval_sampler``.

    Args:
        model_config: the architecture.
        sampler: the training stream (its ``batch_size`` is the per-rank batch).
        config: the run's settings.
        eval_sampler: a stream of held-out volumes (and, if wished, poses); its
            first ``eval_batches`` batches are the evaluation set.

    Returns:
        the summary also written to ``output/summary.json`` (rank 0): losses,
        throughput, the sampler's share of each step, evaluation metrics before
        and after training, and (under torchrun) whether the ranks' parameters agree.
    """
    task = _CorrespondenceTask(model_config)
    for name, item in (("sampler", sampler), ("eval_sampler", eval_sampler)):
        if item is not None:
            require_fields(item, ("correspondence",), consumer=f"train_correspondence ({name})")
    if isinstance(sampler, DRRCorrespondenceSampler) and sampler.patch_size != model_config.patch_size:
        raise ValueError(
            f"model_config: patch_size {model_config.patch_size} differs from the sampler's {sampler.patch_size}"
        )
    return _train(task, sampler, config, eval_sampler)


@dataclass(frozen=True)
class Curriculum:
    """From obvious to subtle fractures: a schedule of the visibility a fractured sample needs to count in the loss.

    At step ``s`` a fractured sample whose best view's visibility
    (``batch.fracture_visibility``, display units) is below
    ``threshold(s)`` is left out of the loss (samples without a fracture always
    count). The threshold falls linearly from ``start`` at step 0 to ``end`` at
    ``steps`` and stays there; it depends only on the batch's step, so a resumed
    run follows the same schedule.

    Example:
        >>> Curriculum(start=0.06, end=0.0, steps=100).threshold(50)
        0.03
    """

    start: float = 0.06
    end: float = 0.0
    steps: int = 500

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name}: expected a visibility in [0, 1), got {value!r}")
        if self.end > self.start:
            raise ValueError(f"end: expected a threshold at most start ({self.start}) (obvious first), got {self.end}")
        if not is_int(self.steps) or self.steps < 1:
            raise ValueError(f"steps: expected a positive int, got {self.steps!r}")

    def threshold(self, step: int) -> float:
        """The visibility a fractured sample needs at ``step``."""
        progress = min(1.0, step / self.steps)
        return round(self.start + (self.end - self.start) * progress, 12)


class _ClassifierTask:
    """The fracture classifier: binary cross-entropy on the study label plus, weighted by ``patch_weight``, on
    each patch (the fracture's patch positive); accuracy/precision/recall/kappa and patch hits on held-out data."""

    name = "classifier"
    eval_keys = ("loss", "accuracy", "precision", "recall", "kappa", "positives", "patch_hit", "left_out")
    score = "accuracy"

    def __init__(self, model_config: ClassifierConfig, init_from=None, guidance_model=None, *,
                 patch_weight: float = 1.0, curriculum: Curriculum | None = None) -> None:
        if not isinstance(model_config, ClassifierConfig):
            raise TypeError(f"model_config: expected a ClassifierConfig, got {type(model_config).__name__}")
        if isinstance(patch_weight, bool) or not isinstance(patch_weight, (int, float)) or not (
                math.isfinite(patch_weight) and patch_weight >= 0):
            raise ValueError(f"patch_weight: expected a weight >= 0, got {patch_weight!r}")
        if curriculum is not None and not isinstance(curriculum, Curriculum):
            raise TypeError(f"curriculum: expected a Curriculum or None, got {type(curriculum).__name__}")
        self.model_config = model_config
        self.init_from = init_from
        self.guidance_model = guidance_model
        self.patch_weight = float(patch_weight)
        self.curriculum = curriculum

    def build(self) -> torch.nn.Module:
        model = FractureClassifier(self.model_config)
        if self.init_from is not None:
            model.load_trunk(self.init_from)
        return model

    def _correspondence(self, batch) -> Tensor | None:
        if not self.model_config.attention_guidance:
            return None
        if self.guidance_model is None:
            return batch.correspondence
        with torch.no_grad():
            return self.guidance_model.to(batch.images.device).eval()(batch.images).float()

    def _weights(self, batch) -> Tensor:
        """``(B,)`` 1 for the samples that count in the loss at this batch's step, 0 for fractures flagged below
        the sampler's ``min_visibility`` and for those the :class:`Curriculum` leaves for later."""
        weight = _counted(batch).float()
        if self.curriculum is None:
            return weight
        subtle = batch.fracture & (batch.fracture_visibility.amax(1) < self.curriculum.threshold(batch.step))
        return weight.masked_fill(subtle, 0.0)

    def loss(self, model: torch.nn.Module, batch) -> Tensor:
        correspondence = batch.correspondence if self.model_config.attention_guidance else None
        output = model(batch.images, correspondence, patches=True)
        weight = self._weights(batch)
        loss = _balanced_loss(output.logits.float(), batch.fracture, weight)
        if self.patch_weight:
            target = _patch_targets(output.patch_logits, batch.fracture_pixel, batch.grid_shape, batch.patch_size)
            loss = loss + self.patch_weight * _patch_loss(output.patch_logits.float(), target, weight)
        return loss

    @torch.no_grad()
    def evaluate(self, model, sampler, batches: int, device, picture: Path) -> dict[str, float]:
        was_training = model.training
        model.eval()
        logits, labels, hits, counted = [], [], [], []
        for step in range(batches):
            batch = sampler.sample(step).to(device)
            output = model.predict(batch.images, self._correspondence(batch))
            kept = _counted(batch)
            logits.append(output.logits.float()[kept].cpu())
            labels.append(batch.fracture[kept].cpu())
            hits.append(_patch_hits(output.patch_logits.float()[kept], batch.fracture_patch[kept],
                                    batch.grid_shape).cpu())
            counted.append(kept.cpu())
            if step == 0:
                _save_heatmaps(batch, output, picture)
        model.train(was_training)
        logits, labels, hits, counted = torch.cat(logits), torch.cat(labels), torch.cat(hits), torch.cat(counted)
        metrics = classification_metrics(logits > 0, labels)
        metrics["loss"] = float(F.binary_cross_entropy_with_logits(logits, labels.float()))
        metrics["positives"] = float(labels.float().mean())
        metrics["patch_hit"] = float(hits.float().mean()) if hits.numel() else float("nan")
        metrics["left_out"] = 1.0 - float(counted.float().mean())
        return metrics


def evaluate_classifier(model: FractureClassifier, sampler: DRRCorrespondenceSampler, *, batches: int = 4,
                        device: torch.device | str = "cpu", picture: str | Path | None = None) -> dict[str, float]:
    """Metrics of the fracture classifier on batches ``0 .. batches-1`` of ``sampler`` (a fixed, seeded stream):
    accuracy, precision, recall, kappa, positives, patch_hit (top patch on or next to the fracture), loss, and
    left_out (fractures the sampler flagged invisible, not counted). ``picture``: heat maps of the first batch."""
    if not isinstance(model, FractureClassifier):
        raise TypeError(f"model: expected a FractureClassifier, got {type(model).__name__}")
    task = _ClassifierTask(model.config)
    if picture is None:
        with tempfile.TemporaryDirectory() as folder:
            return task.evaluate(model, sampler, batches, device, Path(folder) / "heatmaps.png")
    return task.evaluate(model, sampler, batches, device, Path(picture))


def _counted(batch) -> Tensor:
    """``(B,)`` bool: every sample but the fractures flagged below the sampler's ``min_visibility``
    (``batch.fracture_invisible``): their label says fractured, their views may not show it."""
    invisible = getattr(batch, "fracture_invisible", None)
    return torch.ones_like(batch.fracture) if invisible is None else ~invisible


def _balanced_loss(logits: Tensor, labels: Tensor, weight: Tensor) -> Tensor:
    """Binary cross-entropy with fractured and intact samples weighing half each (whatever their numbers)."""
    losses = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none") * weight
    terms = []
    for members in (labels, ~labels):
        count = (weight * members).sum()
        terms.append(torch.where(count > 0, (losses * members).sum() / count.clamp_min(1.0), 0.0))
    present = torch.stack([(weight * labels).sum() > 0, (weight * ~labels).sum() > 0]).float()
    return (terms[0] * present[0] + terms[1] * present[1]) / present.sum().clamp_min(1.0)


def _patch_targets(patch_logits: Tensor, fracture_pixel: Tensor, grid: tuple[int, int], patch_size: int) -> Tensor:
    """``(B, V', N)`` soft targets: a Gaussian (sigma 0.75 patch) of each patch centre's distance to the fracture's
    pixel in each view (``fracture_pixel (B, V, 2)``, NaN where none: all 0)."""
    views = patch_logits.shape[1]
    pixel = fracture_pixel[:, :views].to(patch_logits.dtype)  # (B, V', 2)
    rows, columns = grid
    centre = (torch.arange(max(rows, columns), device=pixel.device, dtype=pixel.dtype) + 0.5) * patch_size - 0.5
    row_distance = (centre[:rows] - pixel[..., 0, None]) / patch_size  # (B, V', rows)
    column_distance = (centre[:columns] - pixel[..., 1, None]) / patch_size
    square = row_distance[..., :, None] ** 2 + column_distance[..., None, :] ** 2
    target = torch.exp(-square / (2 * 0.75**2)).flatten(2)
    return torch.nan_to_num(target, nan=0.0)


def _patch_loss(patch_logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Binary cross-entropy of every patch against its soft target, the positive part weighted as all the
    negatives (one patch holds a fracture, ``N - 1`` do not); per-sample ``weight (B,)``.

    Weighting the positives by ``w = N - 1`` moves the loss's optimum to ``logit(p) + log(w)``; the loss is
    taken on ``patch_logits + log(w)`` so that the patch logits themselves stay calibrated
    (``sigmoid(logit)`` estimates the patch's probability, and an intact view's largest one stays below 0,
    which the study logit of ``pooling="max"`` relies on)."""
    count = patch_logits.shape[-1]
    shift = math.log(max(count - 1, 1))
    losses = F.binary_cross_entropy_with_logits(patch_logits + shift, target, reduction="none",
                                                pos_weight=torch.tensor(float(count - 1), device=patch_logits.device))
    per_sample = losses.mean((1, 2))
    return (per_sample * weight).sum() / weight.sum().clamp_min(1.0)


def _patch_hits(patch_logits: Tensor, fracture_patch: Tensor, grid: tuple[int, int]) -> Tensor:
    """Per view with a fracture patch: whether the top patch is it or one of its 8 neighbours, ``(hits,)`` bool."""
    views = patch_logits.shape[1]
    patch = fracture_patch[:, :views]
    best = patch_logits.argmax(-1)
    columns = grid[1]
    near = ((best // columns - patch // columns).abs() <= 1) & ((best % columns - patch % columns).abs() <= 1)
    return near[patch >= 0]


def _save_heatmaps(batch, output, path: Path, *, samples: int = 3) -> None:
    """A picture of the predicted patch probabilities over the views of the first fractured samples."""
    from .preview import _figure, _save

    chosen = torch.nonzero(batch.fracture)[:samples, 0].tolist() or [0]
    views = output.patch_logits.shape[1]
    rows, columns = batch.grid_shape
    figure, axes = _figure(len(chosen), views, (3.2 * views, 3.2 * len(chosen)))
    probability = torch.sigmoid(output.patch_logits.float()).cpu()
    study = torch.sigmoid(output.logits.float()).cpu()
    height, width = batch.images.shape[-2:]
    for axis_row, sample in zip(axes, chosen):
        for view, axis in enumerate(axis_row):
            axis.imshow(batch.images[sample, view, 0].float().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            heat = axis.imshow(probability[sample, view].view(rows, columns).numpy(), cmap="magma", alpha=0.45,
                               vmin=0, vmax=1, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
            if bool(batch.fracture[sample]) and not bool(batch.fracture_pixel[sample, view].isnan().any()):
                row, col = batch.fracture_pixel[sample, view].tolist()
                axis.plot(col, row, "+", color="cyan", markersize=12, markeredgewidth=1.5)
            axis.set_title(f"sample {sample} view {view}: p(fracture) {float(study[sample]):.2f}, "
                           f"label {int(batch.fracture[sample])}", fontsize=8)
            axis.set_xticks([])
            axis.set_yticks([])
        figure.colorbar(heat, ax=axis_row[-1], fraction=0.046, pad=0.04, label="p(patch holds the fracture)")
    _save(figure, path)


def train_classifier(
    model_config: ClassifierConfig,
    sampler: DRRCorrespondenceSampler,
    config: TrainConfig,
    *,
    eval_sampler: DRRCorrespondenceSampler | None = None,
    init_from: str | os.PathLike | dict | None = None,
    guidance_model: torch.nn.Module | None = None,
    patch_weight: float = 1.0,
    curriculum: Curriculum | None = None,
) -> dict:
    """Train the multi-view fracture classifier on simulated fractures drawn on the fly.

    The loss is the study label's binary cross-entropy plus ``patch_weight``
    times a detection loss on the patches (``batch.fracture_patch``: the
    fracture's patch in each view is the positive). Each evaluation also saves
    a heat map of the predicted patches (``output/pictures/``).

    Args:
        model_config: the architecture (fusion, attention guidance, backbone, pooling).
        sampler: a stream with ``fractures=FractureConfig(...)`` (labels per sample).
        config: the run's settings (as for :func:`train_correspondence`).
        eval_sampler: held-out stream with fractures; its first ``eval_batches``
            batches are the evaluation set (accuracy, precision, recall, Cohen's
            kappa; ``patch_hit``: the share of fractured views whose top patch is
            the fracture's or a neighbour). Fractures flagged below the sampler's
            ``min_visibility`` (``batch.fracture_invisible``) are left out of the
            loss and of the metrics (``left_out``: their share).
        init_from: a :func:`train_correspondence` checkpoint whose trunk starts
            the classifier (correspondence pre-training); its configuration must
            match ``model_config.trunk_config()``.
        guidance_model: with attention guidance, evaluate with this
            correspondence model's predicted ``C`` instead of the true one (training
            always uses the true ``C``).
        patch_weight: weight of the patch detection loss (0: the study label only).
        curriculum: a :class:`Curriculum` from obvious to subtle fractures (``None``: every sample counts).
    """
    needed = ("fracture", "correspondence") if model_config.attention_guidance else ("fracture",)
    for name, item in (("sampler", sampler), ("eval_sampler", eval_sampler)):
        if isinstance(item, DRRCorrespondenceSampler) and getattr(item, "fractures", None) is None:
            raise ValueError(f"{name}: the classifier needs fracture labels: build it with fractures=FractureConfig(...)")
        if item is not None:
            require_fields(item, needed if name == "sampler" else ("fracture",), consumer=f"train_classifier ({name})")
    if isinstance(sampler, DRRCorrespondenceSampler) and sampler.patch_size != model_config.patch_size:
        raise ValueError(
            f"model_config: patch_size {model_config.patch_size} differs from the sampler's {sampler.patch_size}"
        )
    task = _ClassifierTask(model_config, init_from, guidance_model, patch_weight=patch_weight, curriculum=curriculum)
    return _train(task, sampler, config, eval_sampler)


class _StepMeter:
    """Samples per second and the share of step time spent waiting for batches, since the last :meth:`read`.

    Reads the clock only (no device synchronisation) except in :meth:`read`,
    once per log interval; time inside :meth:`excluded` blocks (evaluation,
    checkpoints) does not count.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.began, self.waited, self.skipped, self.samples, self.mark = time.perf_counter(), 0.0, 0.0, 0, 0.0

    def waiting(self) -> None:
        self.mark = time.perf_counter()

    def working(self) -> None:
        self.waited += time.perf_counter() - self.mark

    def count(self, samples: int) -> None:
        self.samples += samples

    @contextlib.contextmanager
    def excluded(self):
        began = time.perf_counter()
        yield
        self.skipped += time.perf_counter() - began

    def read(self) -> tuple[float, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = max(time.perf_counter() - self.began - self.skipped, 1e-9)
        result = (self.samples / elapsed, min(1.0, self.waited / elapsed))
        self._reset()
        return result


class _CountingSampler:
    """A stream that ticks a progress bar at every batch it makes (the evaluation's ``sample(step)`` calls)."""

    def __init__(self, sampler, progress: Progress) -> None:
        self._sampler, self._progress = sampler, progress

    def sample(self, *args, **kwargs):
        batch = self._sampler.sample(*args, **kwargs)
        self._progress.update()
        return batch

    def __getattr__(self, name: str):
        return getattr(self._sampler, name)


class _RunLog:
    """Where rank 0 reports a run: ``metrics.csv``, the progress bar or lines, and TensorBoard events.

    Other ranks get a log that writes nothing.
    """

    def __init__(self, task, config: TrainConfig, output: Path, *, start: int, main: bool) -> None:
        self.task, self.output, self.main = task, output, main
        self.columns = ["step", "loss", "lr", "samples_per_s", "sampler_fraction"] + [f"eval_{k}" for k in task.eval_keys]
        self.board = TensorBoardLog(config.tensorboard, purge_step=start) if main and config.tensorboard else None
        self.progress = Progress(total=config.steps, initial=start, description=f"train {task.name}",
                                 mode=config.progress if main else "off")
        self.eval_batches = config.eval_batches
        if main:
            prepare_metrics(output / METRICS, self.columns, resumed_step=start)

    def evaluate(self, evaluate, sampler, step: int) -> dict[str, float] | None:
        """``evaluate(counted_sampler)`` with a nested bar over its batches; the metrics, also reported."""
        if sampler is None or not self.main:
            return None
        mode = "bar" if self.progress.mode == "bar" else "off"
        began = time.perf_counter()
        with Progress(total=self.eval_batches, description="evaluate", unit="batch", mode=mode, leave=False,
                      stream=self.progress.stream) as bar:
            metrics = evaluate(_CountingSampler(sampler, bar))
        shown = ", ".join(f"{key} {format_value(value)}" for key, value in metrics.items())
        self.progress.write(f"evaluate {self.task.name} at step {step} ({self.eval_batches} held-out batches, "
                            f"{time.perf_counter() - began:.1f} s): {shown}")
        if self.board is not None:
            self.board.scalars(step, metrics, prefix="eval")
            self.board.picture("eval/prediction", self.output / "pictures" / f"step_{step:06d}.png", step)
        return metrics

    def row(self, row: dict, losses: Sequence[float] = (), last_eval: dict | None = None) -> None:
        """One row of ``metrics.csv`` (and TensorBoard, and the progress); ``losses``: the steps' losses
        since the last row; ``last_eval``: the latest held-out metrics, shown beside the loss."""
        if not self.main:
            return
        _write_row(self.output, self.columns, row)
        if "loss" not in row:
            return
        shown = {"loss": f"{row['loss']:.4f}", "samples/s": f"{row['samples_per_s']:.1f}"}
        if last_eval:
            shown[f"held-out {self.task.score}"] = f"{last_eval[self.task.score]:.3f}"
        self.progress.log(shown)
        if self.board is not None:
            first = row["step"] - len(losses) + 1
            for offset, loss in enumerate(losses):
                self.board.scalars(first + offset, {"loss": loss}, prefix="train")
            self.board.scalars(row["step"], {key: row[key] for key in ("lr", "samples_per_s", "sampler_fraction")},
                               prefix="train")

    def close(self) -> None:
        self.progress.close()
        if self.board is not None:
            self.board.close()


def _train(task, sampler: DRRCorrespondenceSampler, config: TrainConfig, eval_sampler) -> dict:
    """The training loop shared by the tasks (see :func:`train_correspondence`)."""
    if not isinstance(sampler, DRRCorrespondenceSampler):
        raise TypeError(f"sampler: expected a DRRCorrespondenceSampler, got {type(sampler).__name__}")
    cluster = _cluster(config.device)
    device = cluster.device
    output = Path(config.output)
    if cluster.main:
        (output / "pictures").mkdir(parents=True, exist_ok=True)

    checkpoint_path = output / CHECKPOINT
    saved = _resumable_state(task, sampler, config, cluster, checkpoint_path)
    with torch.random.fork_rng(devices=[]):  # the model's initial weights from the run's seed, global RNG untouched
        torch.manual_seed(config.seed)
        model = task.build().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    start = 0
    history: dict = {"losses": [], "initial_eval": None}
    if saved is not None:
        start = restore_training(saved, model=model, optimizer=optimizer, scheduler=scheduler, lr=config.lr)
        history = saved.get("history", history)
    trained = model
    if cluster.world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if config.compile:
        trained = torch.compile(trained)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if config.amp and device.type == "cuda" else contextlib.nullcontext()
    )
    log = _RunLog(task, config, output, start=start, main=cluster.main)

    def evaluate(step: int) -> dict[str, float] | None:
        def run(counted_sampler):
            with autocast:
                return task.evaluate(model, counted_sampler, config.eval_batches, device,
                                     output / "pictures" / f"step_{step:06d}.png")

        return log.evaluate(run, eval_sampler, step)

    if cluster.main and start == 0:
        history["initial_eval"] = evaluate(0)
    if cluster.main and history["initial_eval"] is not None and start == 0:
        log.row({"step": 0, **{f"eval_{k}": v for k, v in history["initial_eval"].items()}})

    last_eval = history.get("last_eval")
    meter = _StepMeter(device)
    pending: list[Tensor] = []  # losses of the steps since the last log, read from the device once per interval
    first_batch_sum = None
    step = start
    end = min(config.steps, config.stop_at) if config.stop_at is not None else config.steps
    batches = iter(Prefetcher(sampler, depth=config.prefetch, start=start, stop=end)) if config.prefetch else None
    for step in range(start, end):
        meter.waiting()
        batch = (next(batches) if batches is not None else sampler.sample(step)).to(device)
        meter.working()
        with autocast:
            loss = task.loss(trained, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step == start:
            first_batch_sum = float(batch.images.double().sum())  # tells the ranks' streams apart
        meter.count(batch.batch_size * cluster.world)
        pending.append(loss.detach())
        log.progress.update()
        done = step + 1
        row, losses = None, []
        if done % config.log_every == 0 or done == end:
            losses = torch.stack(pending).float().tolist()
            history["losses"].extend(losses)
            pending.clear()
            samples_per_s, sampler_fraction = meter.read()
            row = {"step": done, "loss": losses[-1], "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": samples_per_s, "sampler_fraction": sampler_fraction}
            history.setdefault("throughput", []).append(samples_per_s)
            history.setdefault("sampler_fraction", []).append(sampler_fraction)
        if config.eval_every and (done % config.eval_every == 0 or done == config.steps):
            with meter.excluded():
                last_eval = evaluate(done)
            history["last_eval"] = last_eval
            if last_eval is not None:
                row = (row or {"step": done}) | {f"eval_{k}": v for k, v in last_eval.items()}
        if row is not None:
            log.row(row, losses, last_eval)
        if cluster.main and (done % config.checkpoint_every == 0 or done == end):
            history["losses"].extend(torch.stack(pending).float().tolist() if pending else [])
            pending.clear()
            with meter.excluded():
                save_checkpoint({
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "step": done, "sampler": sampler.state_dict() | {"step": done},
                    "world": cluster.world, "model_config": task.model_config.to_dict(), "task": task.name,
                    "train_config": asdict(config), "history": history,
                }, checkpoint_path)
    log.close()

    summary = _summary(history, model, task.model_config, config, cluster, sampler,
                       finished_steps=step + 1 if end > start else start)
    if cluster.world > 1:
        checksums = [None] * cluster.world
        dist.all_gather_object(checksums, _parameter_checksum(model))
        summary["rank_checksums"] = checksums
        summary["ranks_in_sync"] = all(c == checksums[0] for c in checksums)
        first_batches = [None] * cluster.world
        dist.all_gather_object(first_batches, first_batch_sum if end > start else None)
        summary["rank_first_batch_sums"] = first_batches
    if cluster.main:
        write_json(output / SUMMARY, summary)
    if cluster.owns_group:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _resumable_state(task, sampler, config: TrainConfig, cluster: _Cluster, path: Path) -> dict | None:
    """The checkpoint to resume (checked against this run's configuration), or ``None`` to start afresh."""
    if not (config.resume and path.exists()):
        return None
    saved = load_checkpoint(path, name="resume", map_location=cluster.device, required=TRAINING_KEYS)
    check_resume(saved, path=path, task=task.name, model_config=task.model_config.to_dict(),
                 train_config=asdict(config), sampler_state=sampler.state_dict(), world=cluster.world)
    return saved


def _write_row(output: Path, columns: list[str], row: dict) -> None:
    with open(output / METRICS, "a", newline="") as handle:
        csv.writer(handle).writerow(["" if row.get(c) is None else f"{row[c]:.6g}" for c in columns])


def _summary(history, model, model_config, config, cluster, sampler, *, finished_steps: int) -> dict:
    losses = history["losses"]
    tenth = max(1, len(losses) // 10)
    throughput = history.get("throughput", [])
    fractions = history.get("sampler_fraction", [])
    return {
        "steps_done": finished_steps,
        "steps": config.steps,
        "world_size": cluster.world,
        "batch_size_per_rank": sampler.batch_size,
        "image_size": [sampler.height, sampler.width],
        "views": sampler.views,
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_config": model_config.to_dict(),
        "loss_first": sum(losses[:tenth]) / tenth if losses else None,
        "loss_last": sum(losses[-tenth:]) / tenth if losses else None,
        "samples_per_s": sum(throughput[1:] or throughput) / max(1, len(throughput[1:] or throughput)) if throughput else None,
        "sampler_fraction": sum(fractions[1:] or fractions) / max(1, len(fractions[1:] or fractions)) if fractions else None,
        "initial_eval": history.get("initial_eval"),
        "final_eval": history.get("last_eval"),
    }


# ---------------------------------------------------------------------------
# Real radiographs (multi-view studies, e.g. onthefly.datasets.MuraStudies)


def _study_logits(model: FractureClassifier, images: Tensor, guidance_model: torch.nn.Module | None) -> Tensor:
    correspondence = None
    if model.config.attention_guidance:
        if guidance_model is None:
            raise ValueError("guidance_model: attention guidance on real radiographs needs a correspondence model "
                             "to predict C (there is no ground truth)")
        with torch.no_grad():
            correspondence = guidance_model.eval()(images).float()
    return model(images, correspondence)


@torch.no_grad()
def evaluate_classifier_on_studies(model: FractureClassifier, dataset, *, batch_size: int = 8,
                                   device: torch.device | str = "cpu",
                                   guidance_model: torch.nn.Module | None = None) -> dict[str, float]:
    """Accuracy, precision, recall and Cohen's kappa of ``model`` on a dataset of studies.

    ``dataset`` yields dicts with ``images (V, 1, H, W)`` and ``label`` (as
    :class:`~onthefly.datasets.MuraStudies`); with attention guidance,
    ``guidance_model`` (a correspondence model) predicts ``C``.
    """
    from .datasets import collate_studies

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_studies)
    was_training = model.training
    model.eval().to(device)
    if guidance_model is not None:
        guidance_model.to(device)
    logits, labels = [], []
    for batch in loader:
        images = batch["images"].to(device)
        logits.append(_study_logits(model, images, guidance_model).float().cpu())
        labels.append(batch["label"])
    model.train(was_training)
    logits, labels = torch.cat(logits), torch.cat(labels)
    metrics = classification_metrics(logits > 0, labels)
    metrics["loss"] = float(F.binary_cross_entropy_with_logits(logits, labels.float()))
    return metrics


def finetune_classifier_on_studies(model: FractureClassifier, dataset, *, steps: int, lr: float = 1e-5,
                                   batch_size: int = 8, device: torch.device | str = "cpu", seed: int = 0,
                                   guidance_model: torch.nn.Module | None = None) -> list[float]:
    """Fine-tune a classifier on real multi-view studies (binary cross-entropy); returns the losses.

    Batches are drawn with a seeded shuffle, epoch after epoch (``dataset.set_epoch``
    is called when it exists), for ``steps`` optimisation steps.
    """
    from .datasets import collate_studies

    if not is_int(steps) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    model.train().to(device)
    if guidance_model is not None:
        guidance_model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    epoch = 0
    while len(losses) < steps:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                                             collate_fn=collate_studies)
        for batch in loader:
            images, labels = batch["images"].to(device), batch["label"].to(device)
            loss = F.binary_cross_entropy_with_logits(_study_logits(model, images, guidance_model).float(),
                                                      labels.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if len(losses) == steps:
                break
        epoch += 1
    return losses
