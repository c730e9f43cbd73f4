"""Batch types: what a stream yields.

:class:`DRRBatch` is what the pipeline makes (views, correspondence, geometry,
optional labels, crops and fractures, and the parameters that reproduce it).
Task target builders (:mod:`onthefly.sampling.targets`) turn it into a task's
own batch: :class:`BiplanarBatch`, :class:`SequenceBatch`, :class:`NovelViewBatch`.
Each type's fields say what it carries; :func:`require_fields` lets a
consumer refuse a stream that lacks a field it needs, at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from ..geometry import CArm, project_points
from ..volume import VolumeBatch
from .params import SampleParams

__all__ = ["DRRBatch", "BiplanarBatch", "SequenceBatch", "NovelViewBatch", "require_fields"]


def _moved(batch, device: torch.device | str) -> dict:
    """A batch's fields with tensors, cameras, volumes and inner batches on ``device`` (``params`` stay)."""
    moved = {}
    for item in fields(batch):
        value = getattr(batch, item.name)
        if item.name != "params" and isinstance(value, (Tensor, CArm, VolumeBatch, DRRBatch)):
            value = value.to(device)
        moved[item.name] = value
    return moved


@dataclass
class DRRBatch:
    """One batch of views, their correspondence matrix and everything needed to reproduce it.

    Attributes:
        images: ``(B, V, 1, H, W)`` in ``[0, 1]`` (dense is bright), augmented.
        correspondence: ``(B, V*N, V*N)`` for the augmented images (``N = (H/k)(W/k)``);
            ``None`` when the sampler was built with ``correspondence=False``.
        carm: the cameras that rendered the views, batch ``(B, V)`` (float32, on the batch's device).
        operations: ``(B, V)`` geometric operation applied to each rendered view
            (index into ``onthefly.correspondence.IMAGE_OPERATIONS``; 0 = none).
        volume_index: ``(B,)`` which of the store's CTs each sample cropped.
        crop_start, crop_stop: ``(B, 3)`` crop boxes, voxel indices of that CT
            (at the sampler's spacing), ``[start, stop)``.
        crop_affine: ``(B, 4, 4)`` crop voxel-to-world matrices (mm).
        params: the :class:`~onthefly.sampling.params.SampleParams` that made
            this batch (host tensors): ``make_batch(params, ...)`` makes it again.
        patch_size: ``k``.
        step, seed, rank: the batch's place in its stream.
        labels: optional ``(B, V, S, H, W)`` path length (mm) through each of the
            ``structures``, geometrically augmented like the images.
        structures: names of the ``S`` label channels.
        volume: optional crops as a :class:`~onthefly.volume.VolumeBatch`
            (attenuation, 1/mm; fractured where ``fracture``).
        fracture: with fractures: ``(B,)`` bool, whether the sample's crop was
            fractured before rendering (the classification label).
        fracture_center: ``(B, 3)`` world mm of each fracture's centre, the
            centroid of the change it makes (NaN where ``fracture`` is False).
        fracture_pixel: ``(B, V, 2)`` (row, column) of the centre in each
            augmented view (NaN where ``fracture`` is False).
        fracture_patch: ``(B, V)`` long, the patch (row-major over the
            ``H/k x W/k`` grid of the augmented view) holding ``fracture_pixel``;
            -1 where there is no fracture or it projects outside the view.
        fracture_visibility: ``(B, V)`` the fracture's visibility in each view: about
            the largest change of the display image (before intensity augmentation)
            it causes (:func:`~onthefly.fractures.fracture_visibility`); 0 where not fractured.
        fracture_invisible: ``(B,)`` bool, fractured samples that stayed below
            ``FractureConfig.min_visibility`` after every redraw.
        fracture_kind: ``(B,)`` long, the fracture's kind, an index into ``FractureConfig.kind_names``;
            -1 for the generic fracture (no kind's site in the crop) and where not fractured.
        fracture_severity: ``(B,)`` long, an index into ``onthefly.fractures.SEVERITY_NAMES``
            (obvious, moderate, subtle); -1 where ``fracture_kind`` is -1.
    """

    images: Tensor
    correspondence: Tensor | None
    carm: CArm
    operations: Tensor
    volume_index: Tensor
    crop_start: Tensor
    crop_stop: Tensor
    crop_affine: Tensor
    params: SampleParams
    patch_size: int
    step: int
    seed: int
    rank: int
    labels: Tensor | None = None
    structures: tuple[str, ...] = ()
    volume: VolumeBatch | None = field(default=None, repr=False)
    fracture: Tensor | None = None
    fracture_center: Tensor | None = None
    fracture_pixel: Tensor | None = None
    fracture_patch: Tensor | None = None
    fracture_visibility: Tensor | None = None
    fracture_invisible: Tensor | None = None
    fracture_kind: Tensor | None = None
    fracture_severity: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def views(self) -> int:
        return self.images.shape[1]

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(H/k, W/k)`` patches per view."""
        return (self.images.shape[-2] // self.patch_size, self.images.shape[-1] // self.patch_size)

    def to(self, device: torch.device | str) -> "DRRBatch":
        """The batch with its tensors on ``device`` (``params`` stay on the host)."""
        return DRRBatch(**_moved(self, device))

    def project_points(self, points: Tensor) -> Tensor:
        """World points ``(B, P, 3)`` to ``(B, V, P, 2)`` (row, column) in the augmented images."""
        pixels = project_points(self.carm, points.to(self.carm.device, self.carm.dtype))
        return augmented_pixels(pixels, self.operations, tuple(self.images.shape[-2:]))


def augmented_pixels(pixels: Tensor, operations: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``(B, V, P, 2)`` (row, column) of rendered views moved as the views' flips and quarter turns move them."""
    height, width = image_size
    row, col = pixels[..., 0], pixels[..., 1]
    op = operations.to(pixels.device)[:, :, None].expand_as(row)
    # IMAGE_OPERATIONS: identity, hflip, vflip, rot90, rot180, rot270 (torch.flip / torch.rot90 semantics).
    new_row = torch.stack([row, row, height - 1 - row, width - 1 - col, height - 1 - row, col])
    new_col = torch.stack([col, width - 1 - col, col, row, width - 1 - col, height - 1 - row])
    pick = op[None]
    return torch.stack([new_row.gather(0, pick)[0], new_col.gather(0, pick)[0]], -1)


@dataclass
class BiplanarBatch:
    """One batch of PA + lateral views and the CT crops they show, on a fixed grid.

    Attributes:
        images: ``(B, 2, 1, H, W)`` in ``[0, 1]``: view 0 is PA, view 1 the lateral.
        volume: ``(B, 1, S, S, S)`` the crop in ``[0, 1]``: HU windowed by
            :data:`~onthefly.volume.TARGET_HU_WINDOW` (-1000 HU -> 0, 2000 HU -> 1, clamped).
            ``volume * TARGET_ATTENUATION_SCALE`` is the attenuation (1/mm).
        volume_affine: ``(B, 4, 4)`` float64, target grid index ``(i, j, k, 1)``
            -> world mm; the grid's voxel faces span the crop box exactly.
        carm: the cameras of the two views, ``(B, 2)``.
        crop_affine: ``(B, 4, 4)`` crop voxel index -> world mm (sampler spacing).
        params: the drawn parameters (poses ``(B, 2)``).
        step, seed, rank: the batch's place in its stream.
        drr: the pipeline's batch (crop boxes, augmentation, ...).
    """

    images: Tensor
    volume: Tensor
    volume_affine: Tensor
    carm: CArm
    crop_affine: Tensor
    params: SampleParams
    step: int
    seed: int
    rank: int
    drr: DRRBatch = field(repr=False)

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> "BiplanarBatch":
        return BiplanarBatch(**_moved(self, device))


@dataclass
class SequenceBatch:
    """``T`` views of one crop per sample at increasing angles around one axis.

    Attributes:
        images: ``(B, T, 1, H, W)`` in ``[0, 1]``, in order of increasing angle.
        angles: ``(B, T)`` float32 radians, the swept angle (``alpha`` for
            ``axis="z"``, ``beta`` for ``axis="x"``), not wrapped: consecutive
            differences are the angular steps.
        axis: ``"z"`` or ``"x"``.
        carm: the cameras, ``(B, T)``.
        params: the drawn parameters (``params.layout["start"]``, ``["arc"]``: ``(B,)``; poses ``(B, T)``).
        step, seed, rank: the batch's place in its stream.
        drr: the pipeline's batch.
    """

    images: Tensor
    angles: Tensor
    axis: str
    carm: CArm
    params: SampleParams
    step: int
    seed: int
    rank: int
    drr: DRRBatch = field(repr=False)

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def length(self) -> int:
        """``T``."""
        return self.images.shape[1]

    def to(self, device: torch.device | str) -> "SequenceBatch":
        return SequenceBatch(**_moved(self, device))


@dataclass
class NovelViewBatch:
    """A source view, ``M`` target views and their relative geometry.

    Attributes:
        source: ``(B, 1, 1, H, W)`` in ``[0, 1]`` (augmented if the sampler augments).
        targets: ``(B, M, 1, H', W')`` in ``[0, 1]``, never augmented; the same
            field of view as the source (pixel edge scaled by ``H / H'``).
        relative_angles: ``(B, M, 3)`` float32 radians, target minus source
            ``(alpha, beta, gamma)``.
        relative_pose: ``(B, M, 4, 4)`` float32, the rigid transform (mm) from the
            source camera frame to each target camera frame
            (:func:`~onthefly.geometry.relative_camera_pose`).
        correspondence: ``(B, (1+M) N, (1+M) N)`` patch correspondence of all
            views at the source resolution (token ``a N + i`` is patch ``i`` of
            view ``a``, view 0 the source), or ``None``.
        carm: the cameras of all views at the source resolution, ``(B, 1+M)``.
        target_carm: the cameras of the targets at their resolution, ``(B, M)``.
        params: the drawn parameters (``params.layout["relative_alpha"]``, ``["relative_beta"]``: ``(B, M)``).
        patch_size: ``k``.
        step, seed, rank: the batch's place in its stream.
        drr: the pipeline's batch (all views at the source resolution).
    """

    source: Tensor
    targets: Tensor
    relative_angles: Tensor
    relative_pose: Tensor
    correspondence: Tensor | None
    carm: CArm
    target_carm: CArm
    params: SampleParams
    patch_size: int
    step: int
    seed: int
    rank: int
    drr: DRRBatch = field(repr=False)

    @property
    def batch_size(self) -> int:
        return self.source.shape[0]

    @property
    def num_targets(self) -> int:
        """``M``."""
        return self.targets.shape[1]

    @property
    def source_target_correspondence(self) -> Tensor | None:
        """``(B, M, N, N)``: the blocks of ``correspondence`` between the source (rows) and each target (columns)."""
        if self.correspondence is None:
            return None
        n = (self.source.shape[-2] // self.patch_size) * (self.source.shape[-1] // self.patch_size)
        rows = self.correspondence[:, :n, n:]  # (B, N, M*N)
        return rows.reshape(self.batch_size, n, self.num_targets, n).permute(0, 2, 1, 3)

    def to(self, device: torch.device | str) -> "NovelViewBatch":
        return NovelViewBatch(**_moved(self, device))


def require_fields(sampler, needed: tuple[str, ...], *, consumer: str) -> None:
    """Raise ``ValueError`` at once if ``sampler``'s batches lack a field ``consumer`` needs.

    ``sampler.batch_fields`` names the fields its batches always carry (not ``None``).
    """
    provided = getattr(sampler, "batch_fields", None)
    if provided is None:
        return
    missing = [name for name in needed if name not in provided]
    if missing:
        kind = getattr(getattr(sampler, "batch_type", None), "__name__", type(sampler).__name__)
        raise ValueError(
            f"sampler: {consumer} needs batches with {', '.join(repr(m) for m in missing)}, but this "
            f"{type(sampler).__name__} yields {kind} without it (its batches carry: {', '.join(sorted(provided))})"
        )
