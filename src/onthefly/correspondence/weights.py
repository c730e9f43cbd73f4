"""Correspondence weights of voxels (step 1) and the coarse grids they are pooled onto (step 2's geometry).

Air (``HU <= air_threshold_hu``) weighs exactly 0; other voxels
``sigmoid(0.005 (HU + 150))`` (``"soft"``) or 1 (``"binary"``). A coarse grid
pooled by integer ``factor`` from a voxel grid has its own affine
(:func:`coarse_grid_affine`), boundaries (:func:`coarse_boundaries`) and
smallest edge (:func:`coarse_voxel_size`); :class:`CoarseWeights` holds pooled
weights on such grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_choice, check_ndim
from ..volume import attenuation_of_hu

__all__ = ["WEIGHTINGS", "voxel_weights", "coarse_grid_affine", "coarse_boundaries", "coarse_voxel_size",
           "CoarseWeights"]

WEIGHTINGS = ("soft", "binary")


def voxel_weights(hu: Tensor, *, weighting: str = "soft", air_threshold_hu: float = -900.0) -> Tensor:
    """Correspondence weight of each voxel (step 1), same shape as ``hu``.

    Air (``hu <= air_threshold_hu``) gets exactly 0; other voxels get
    ``sigmoid(0.005 (hu + 150))`` (``"soft"``) or 1 (``"binary"``).
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    tissue = hu > air_threshold_hu
    if weighting == "binary":
        return tissue.to(hu.dtype)
    return torch.sigmoid(0.005 * (hu + 150.0)) * tissue


def _attenuation_weights(attenuation: Tensor, *, mu_water: float, weighting: str, air_threshold_hu: float) -> Tensor:
    """:func:`voxel_weights` computed from attenuation in three passes over the volume.

    ``HU = 1000 (mu / mu_water - 1)``, so ``0.005 (HU + 150) = 5 mu / mu_water - 4.25``
    and ``HU > t`` is ``mu > mu_water (1 + t / 1000)`` (attenuation 0 reads as -1000 HU).
    """
    air = attenuation <= attenuation_of_hu(air_threshold_hu, mu_water)  # below -1000 HU: see next line
    if air_threshold_hu < -1000.0:
        air = torch.zeros_like(air)
    if weighting == "binary":
        return (~air).to(attenuation.dtype)
    weights = attenuation * (5.0 / mu_water)  # in-place from here: one new tensor in all
    return weights.sub_(4.25).sigmoid_().masked_fill_(air, 0.0)


def coarse_grid_affine(affine: Tensor, factor: Tensor) -> Tensor:
    """Coarse-index-to-world matrices of grids pooled by ``factor`` from voxels placed by ``affine``.

    Args:
        affine: ``(..., 4, 4)`` voxel-index-to-world matrices (mm) of the (cropped) volumes.
        factor: ``(..., 3)`` fine voxels per coarse voxel edge.

    Returns:
        ``(..., 4, 4)`` float64: coarse voxel ``(i, j, k)`` has its centre at the centre of
        the fine block starting at ``factor * (i, j, k)``. On host tensors this needs no
        device (the sampler computes it from its host crops for :func:`~onthefly.footprints.footprint_window`).

    Example:
        >>> coarse_grid_affine(torch.eye(4, dtype=torch.float64), torch.tensor([2, 2, 2]))[:3, 3]
        tensor([0.5000, 0.5000, 0.5000], dtype=torch.float64)
    """
    return affine.to(device=factor.device, dtype=torch.float64) @ _coarse_to_fine(factor)


def _coarse_to_fine(factor: Tensor) -> Tensor:
    """``(..., 4, 4)`` maps from coarse voxel index to fine voxel index (coarse voxel centres)."""
    factor = factor.to(torch.float64)
    matrix = torch.zeros(*factor.shape[:-1], 4, 4, dtype=torch.float64, device=factor.device)
    matrix[..., [0, 1, 2], [0, 1, 2]] = factor
    matrix[..., :3, 3] = (factor - 1) / 2
    matrix[..., 3, 3] = 1.0
    return matrix


def coarse_boundaries(start: Tensor, stop: Tensor, factor: Tensor, count: int) -> Tensor:
    """``(B, count + 1)`` fine voxel indices bounding coarse voxels ``0 .. count - 1`` along one axis.

    Coarse voxel ``i`` of a crop ``[start, stop)`` pooled by ``factor`` (each ``(B,)``)
    spans ``[start + i f, start + (i + 1) f)`` clipped to ``stop``: the last one may be
    partial, and those past the crop are empty.

    Example:
        >>> coarse_boundaries(torch.tensor([2]), torch.tensor([9]), torch.tensor([3]), 4)
        tensor([[2, 5, 8, 9, 9]])
    """
    bounds = start[:, None] + torch.arange(count + 1, device=start.device) * factor[:, None]
    return torch.minimum(bounds, stop[:, None])


def coarse_voxel_size(factor: Tensor, spacing: Tensor) -> Tensor:
    """``(B,)`` float64 smallest coarse voxel edge (mm) of grids pooled by ``factor`` ``(B, 3)`` from voxels of
    ``spacing`` ``(B, 3)`` mm."""
    return (factor.to(torch.float64) * spacing).amin(1)


@dataclass(frozen=True, eq=False)
class CoarseWeights:
    """Correspondence weights pooled onto one coarse voxel grid per sample (steps 1-2).

    Attributes:
        weight: ``(B, d, h, w)`` mean voxel weight of each coarse voxel; 0 is air
            (and padding, where samples have grids of different sizes).
        affine: ``(B, 4, 4)`` coarse-index-to-world matrices (mm), float64.
        voxel_size: ``(B,)`` smallest coarse voxel edge of each sample (mm), a CPU
            float64 tensor (it sets the default rays per patch without reading the device).

    Built by :func:`pool_weights` (from volumes) or :meth:`WeightIntegral.pool`
    (from crops of precomputed volumes, the sampler's fast path); accepted by
    :func:`patch_correspondence` in place of a volume.
    """

    weight: Tensor
    affine: Tensor
    voxel_size: Tensor

    def __post_init__(self) -> None:
        check_ndim("weight", self.weight, (4,), "(B, d, h, w)")
        batch = self.weight.shape[0]
        if tuple(self.affine.shape) != (batch, 4, 4):
            raise ValueError(f"affine: expected shape ({batch}, 4, 4) to match weight, got {tuple(self.affine.shape)}")
        if tuple(self.voxel_size.shape) != (batch,):
            raise ValueError(f"voxel_size: expected shape ({batch},), got {tuple(self.voxel_size.shape)}")

    @property
    def batch_size(self) -> int:
        return self.weight.shape[0]

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def to(self, device: torch.device | str) -> "CoarseWeights":
        return CoarseWeights(weight=self.weight.to(device), affine=self.affine.to(device), voxel_size=self.voxel_size)
