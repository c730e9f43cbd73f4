"""The fracture classifier's task: balanced losses, the patch loss of attention guidance, the curriculum."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import is_int
from ..metrics import classification_metrics
from ..models import ClassifierConfig, FractureClassifier
from ..sampling import DRRCorrespondenceSampler, require_fields
from .config import TrainConfig
from .loop import _train

__all__ = ["Curriculum", "train_classifier", "evaluate_classifier"]


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
    from ..preview import _figure, _save

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
