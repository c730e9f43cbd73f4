"""The drawn parameters of one batch: :class:`SampleParams`, typed and batched.

:func:`~onthefly.sampling.draw.draw` makes them on the host;
:func:`~onthefly.sampling.make.make_batch` turns them into a batch. Everything
a batch shows follows from them, so a batch can be re-made from its
parameters alone (with the store and the configuration that drew them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace

import torch
from torch import Tensor

from ..augment import AugmentationParams
from ..geometry import CArm

__all__ = ["SampleParams", "POSE_NAMES"]

POSE_NAMES = ("alpha", "beta", "gamma", "sid", "sdd")
"""The per-view pose parameters a view layout draws, each ``(B, V)``: radians for angles, mm for distances."""


@dataclass(frozen=True)
class SampleParams:
    """Every random parameter of one batch (host tensors unless moved).

    Attributes:
        step, seed, rank: the batch's place in its stream.
        volume_index: ``(B,)`` long, which CT of the store each sample crops.
        crop_start, crop_stop: ``(B, 3)`` long, the crop box ``[start, stop)``
            in voxel indices of that CT (at the sampler's spacing).
        alpha, beta, gamma: ``(B, V)`` float64 radians (C-arm angles, see
            :class:`~onthefly.geometry.CArm`).
        sid, sdd: ``(B, V)`` float64 mm.
        isocenter: ``(B, V, 3)`` float64 world mm.
        coarse_factor: ``(B, 3)`` long, fine voxels per coarse voxel edge of
            the correspondence grid (one patch back-projected to the isocenter).
        tissue_fraction: ``(B,)`` host estimate of the crop's non-air fraction.
        projection_fraction: ``(B, V)`` host estimate of the share of patches
            tissue covers in each view.
        degenerate: ``(B,)`` bool, samples still failing a check when the
            redraws ran out.
        layout: values a view layout draws besides the poses (for example
            ``start`` and ``arc`` of an angular sequence), each with a leading
            ``B`` axis; documented by each layout.
        augmentation: the drawn augmentation (:class:`~onthefly.augment.AugmentationParams`).
        fracture: the drawn fractures (:class:`~onthefly.fractures.FractureParams`), or ``None``.
        physics: the drawn radiograph physics (:class:`~onthefly.physics.PhysicsParams`), or ``None``.
        anatomy: the drawn anatomical variation (:class:`~onthefly.deformation.AnatomyParams`), or ``None``.
    """

    step: int
    seed: int
    rank: int
    volume_index: Tensor
    crop_start: Tensor
    crop_stop: Tensor
    alpha: Tensor
    beta: Tensor
    gamma: Tensor
    sid: Tensor
    sdd: Tensor
    isocenter: Tensor
    coarse_factor: Tensor
    tissue_fraction: Tensor
    projection_fraction: Tensor
    degenerate: Tensor
    layout: Mapping[str, Tensor] = field(default_factory=dict)
    augmentation: AugmentationParams | None = None
    fracture: object | None = None
    physics: object | None = None
    anatomy: object | None = None

    @property
    def batch_size(self) -> int:
        return int(self.volume_index.shape[0])

    @property
    def views(self) -> int:
        return int(self.alpha.shape[1])

    def carm(self, *, height: int, width: int, pixel_spacing: float) -> CArm:
        """The cameras of these poses (float64, on the host), for a detector of ``height x width`` pixels."""
        return CArm(
            alpha=self.alpha, beta=self.beta, gamma=self.gamma, sid=self.sid, sdd=self.sdd,
            isocenter=self.isocenter, height=height, width=width, pixel_spacing=pixel_spacing,
        )

    def select(self, mask: Tensor, other: "SampleParams") -> "SampleParams":
        """Per sample: ``other``'s values where ``mask (B,)`` is True, else these (the redraw of degenerate samples)."""
        changes = {}
        for item in fields(self):
            mine, theirs = getattr(self, item.name), getattr(other, item.name)
            if isinstance(mine, Tensor):
                changes[item.name] = torch.where(mask.view(-1, *([1] * (mine.dim() - 1))), theirs, mine)
            elif item.name == "layout":
                changes[item.name] = {
                    key: torch.where(mask.view(-1, *([1] * (value.dim() - 1))), theirs[key], value)
                    for key, value in mine.items()
                }
        return replace(self, **changes)

    def rows(self, index: Tensor) -> "SampleParams":
        """The parameters of samples ``index (B',)`` (long, on the host), in that order; fractures included."""
        changes = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Tensor):
                changes[item.name] = value[index]
            elif isinstance(value, dict):
                changes[item.name] = {key: tensor[index] for key, tensor in value.items()}
            elif value is not None and hasattr(value, "rows"):  # the typed parameter groups
                changes[item.name] = value.rows(index)
            elif value is not None and is_dataclass(value):  # groups of (B, ...) tensors without their own rows
                changes[item.name] = replace(value, **{
                    inner.name: getattr(value, inner.name)[index] for inner in fields(value)
                    if isinstance(getattr(value, inner.name), Tensor)})
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> "SampleParams":
        """The same parameters with every tensor on ``device``."""
        changes = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, dict):
                changes[item.name] = {key: tensor.to(device) for key, tensor in value.items()}
            elif value is not None and not isinstance(value, int):  # tensors and the typed parameter groups
                changes[item.name] = value.to(device)
        return replace(self, **changes)
