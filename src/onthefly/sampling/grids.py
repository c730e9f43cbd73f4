"""What every CT store derives from a CT the same way, written once.

The resident store (:class:`~onthefly.sampling.store.ResidentStore`), the
phantom store, the preparation of a cache (:mod:`~onthefly.sampling.preparation`)
and the bank that reads it (:class:`~onthefly.sampling.bank.VolumeBank`) all
follow these rules, so a CT gives the same crops, tissue grid and pooled
weights whichever store serves it:

* the resample rule: a CT within 1 % of the sampler's spacing is kept as it
  is (:func:`at_spacing`);
* the tissue grid the draw stage reads to reject degenerate draws: blocks of
  about :data:`TISSUE_BLOCK_MM` (:func:`tissue_block_voxels`, :func:`tissue_grid`);
* the quantised summed-volume table of the correspondence weights a prepared
  cache stores (:func:`weight_table`) and the pooled weights of a crop read
  from it (:func:`coarse_boundaries`, :func:`pooled_from_table`); the float64
  tables held in memory are :class:`~onthefly.correspondence.WeightIntegral`'s,
  with the same boundaries.

The crop and coarse affines of pooled weights are
:func:`~onthefly.volume.crop_affine` and
:func:`~onthefly.correspondence.coarse_grid_affine`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..correspondence import coarse_boundaries, voxel_weights
from ..volume import Volume

__all__ = [
    "TISSUE_BLOCK_MM",
    "RESAMPLE_RTOL",
    "WEIGHT_SCALE",
    "MAX_BOX_VOXELS",
    "at_spacing",
    "needs_resampling",
    "tissue_block_voxels",
    "tissue_grid",
    "weight_table",
    "table_corners",
    "pooled_from_table",
]

TISSUE_BLOCK_MM = 8.0
"""Edge (mm) of the host-side tissue blocks used to reject degenerate draws."""
RESAMPLE_RTOL = 0.01
"""A CT whose voxel edges are within this relative tolerance of the asked spacing is not resampled."""
WEIGHT_SCALE = 16383
"""Voxel weights in [0, 1] are stored as integers ``round(w * WEIGHT_SCALE)``."""
MAX_BOX_VOXELS = (2**32 - 1) // WEIGHT_SCALE
"""Largest box (voxels) whose weight sum the modulo-2**32 table gives exactly: 262,160 (64^3)."""


def needs_resampling(spacing: Tensor, target: Tensor) -> bool:
    """Whether voxel edges ``spacing`` ``(3,)`` mm differ from ``target`` ``(3,)`` by more than :data:`RESAMPLE_RTOL`."""
    return not torch.allclose(spacing, target, rtol=RESAMPLE_RTOL, atol=0)


def at_spacing(volume: Volume, spacing: Sequence[float] | Tensor) -> Volume:
    """``volume`` as it is when within :data:`RESAMPLE_RTOL` of ``spacing`` (mm), else resampled to it."""
    target = torch.as_tensor(spacing, dtype=torch.float64)
    if not needs_resampling(volume.spacing, target):
        return volume
    return volume.resample(target.tolist())


def tissue_block_voxels(spacing: Sequence[float] | Tensor, block_mm: float = TISSUE_BLOCK_MM) -> Tensor:
    """``(3,)`` long voxels per tissue-block edge: ``round(block_mm / spacing)``, at least 1."""
    spacing = torch.as_tensor(spacing, dtype=torch.float64)
    return torch.clamp(torch.round(block_mm / spacing), min=1).long()


def tissue_grid(hu: Tensor, block: Sequence[int], air_threshold_hu: float) -> Tensor:
    """``(d, h, w)`` float32 non-air fraction (``HU > air_threshold_hu``) of each ``block`` of ``hu`` ``(D, H, W)``.

    The grid the draw stage's tissue checks read, for every store and the
    preparation alike (partial blocks at the far edges)."""
    tissue = (hu > air_threshold_hu).float()
    return F.avg_pool3d(tissue[None, None], tuple(block), ceil_mode=True)[0, 0]


def weight_table(hu: Tensor, *, weighting: str, air_threshold_hu: float) -> np.ndarray:
    """``(D+1, H+1, W+1)`` uint32 summed-volume table of ``round(w * WEIGHT_SCALE)``, modulo ``2**32``.

    ``table[i, j, k]`` sums the quantised weights of voxels ``[0, i) x [0, j) x [0, k)``;
    built one slab of planes at a time so no float64 volume is made.
    """
    depth, height, width = hu.shape
    table = np.zeros((depth + 1, height + 1, width + 1), dtype=np.uint32)
    planes = max(1, (32 * 2**20) // max(1, height * width * 4))
    for first in range(0, depth, planes):
        slab = hu[first : first + planes].float()
        weights = voxel_weights(slab, weighting=weighting, air_threshold_hu=air_threshold_hu)
        table[first + 1 : first + 1 + slab.shape[0], 1:, 1:] = torch.round(weights * WEIGHT_SCALE).to(torch.int32).numpy()
    for axis in range(3):
        np.cumsum(table, axis=axis, dtype=np.uint32, out=table)  # unsigned: wraps modulo 2**32, by definition
    return table


def table_corners(start: Tensor, stop: Tensor, factor: Tensor) -> list[Tensor]:
    """Per axis, the ``n + 1`` table indices bounding the coarse voxels of one crop ``[start, stop)`` ``(3,)``.

    Boundaries ``start, start + f, ...`` clipped to ``stop`` (the last coarse
    voxel may be partial): :func:`~onthefly.correspondence.coarse_boundaries` of
    the crop's own grid.
    """
    cells = -(-(stop - start) // factor)
    return [coarse_boundaries(start[None, a], stop[None, a], factor[None, a], int(cells[a]))[0] for a in range(3)]


def pooled_from_table(rows: np.ndarray, corners: Sequence[Tensor], factor: Tensor) -> Tensor:
    """Pooled weights ``(n0, n1, n2)`` float32 of one crop from its :func:`weight_table` values at the corners.

    Args:
        rows: the table's planes ``corners[0]``, rows ``corners[1][0]`` to ``corners[1][-1]`` (all columns).
        corners: :func:`table_corners` of the crop.
        factor: ``(3,)`` fine voxels per coarse voxel edge.

    Box sums by inclusion-exclusion, exact modulo ``2**32`` (every box holds at
    most :data:`MAX_BOX_VOXELS` voxels), divided by the full box's quantised
    weight. ``ValueError`` for a sum above it (a table that is not a prepared one).
    """
    picked = torch.from_numpy(rows.astype(np.int64))[:, corners[1] - corners[1][0]][:, :, corners[2]]
    sums = picked.diff(dim=0).diff(dim=1).diff(dim=2) & 0xFFFFFFFF  # inclusion-exclusion, modulo 2**32
    full = WEIGHT_SCALE * int(factor.prod())
    if int(sums.max()) > full:
        raise ValueError("a pooled weight above 1")
    return (sums.double() / full).float()
