"""Volumes as a task's target: attenuation windowed to ``[0, 1]`` and crops resampled onto a cube."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .hounsfield import MU_WATER_PER_MM, attenuation_to_hu

__all__ = ["TARGET_HU_WINDOW", "TARGET_ATTENUATION_SCALE", "window_attenuation", "resample_to_cube"]

TARGET_HU_WINDOW = (-1000.0, 2000.0)
"""HU mapped linearly to ``[0, 1]`` for volume targets (air 0, dense bone 1); clamped outside."""

TARGET_ATTENUATION_SCALE = (TARGET_HU_WINDOW[1] - TARGET_HU_WINDOW[0]) / 1000.0 * MU_WATER_PER_MM
"""1/mm per unit of a ``[0, 1]`` volume target: ``mu = 0.06 * target`` undoes the window exactly below 2000 HU
(``mu = mu_water (1 + HU / 1000)`` and the window starts at air, -1000 HU)."""


def window_attenuation(attenuation: Tensor, *, mu_water: float = MU_WATER_PER_MM) -> Tensor:
    """Attenuation (1/mm) as a ``[0, 1]`` target: HU windowed by :data:`TARGET_HU_WINDOW`, clamped; same shape."""
    low, high = TARGET_HU_WINDOW
    return ((attenuation_to_hu(attenuation, mu_water=mu_water) - low) / (high - low)).clamp(0.0, 1.0)


def resample_to_cube(attenuation: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Resample ``(B, 1, d, h, w)`` crops onto an ``S^3`` grid spanning the same box.

    Anti-aliased trilinear resampling: along each axis the crop is first
    averaged over non-overlapping blocks of ``f = floor(n / S)`` voxels (none
    when ``n < 2 S``), then sampled trilinearly at the target voxel centres
    (clamped to the outermost block centres at the border). Both steps keep
    linear intensity ramps exact away from the border.

    Returns:
        ``(B, 1, S, S, S)`` and the ``(4, 4)`` float64 map from target index to crop index.

    Example:
        >>> cube, index_map = resample_to_cube(torch.rand(2, 1, 30, 20, 10), 8)
        >>> cube.shape, index_map[0, 0].item()
        (torch.Size([2, 1, 8, 8, 8]), 3.75)
    """
    shape = attenuation.shape[2:]
    counts = torch.tensor(shape, dtype=torch.float64)
    scale = counts / size  # crop voxels per target voxel
    factor = [max(1, n // size) for n in shape]
    pooled = F.avg_pool3d(attenuation, kernel_size=factor, stride=factor) if max(factor) > 1 else attenuation
    pooled_shape = pooled.shape[2:]
    device, dtype = attenuation.device, attenuation.dtype
    axes = []
    for axis in range(3):
        target = torch.arange(size, dtype=torch.float64)
        crop_index = scale[axis] * (target + 0.5) - 0.5
        pooled_index = (crop_index - (factor[axis] - 1) / 2) / factor[axis]
        m = pooled_shape[axis]
        normalised = 2 * pooled_index / (m - 1) - 1 if m > 1 else torch.zeros_like(pooled_index)
        axes.append(normalised.to(device=device, dtype=dtype))
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], -1)  # (S, S, S, 3) as (x=w, y=h, z=d)
    grid = grid[None].expand(attenuation.shape[0], -1, -1, -1, -1)
    resampled = F.grid_sample(pooled, grid, mode="bilinear", padding_mode="border", align_corners=True)
    index_map = torch.eye(4, dtype=torch.float64)
    index_map[:3, :3] = torch.diag(scale)
    index_map[:3, 3] = (scale - 1) / 2
    return resampled, index_map
