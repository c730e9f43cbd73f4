"""Voxel-to-world matrices: the checks every volume's affine passes, and the affine of a crop."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_finite, check_length, check_position

__all__ = ["crop_affine"]


def crop_affine(affine: Tensor, start: Tensor) -> Tensor:
    """Voxel-to-world matrices of crops that start at voxel ``start`` of volumes placed by ``affine``.

    Args:
        affine: ``(B, 4, 4)`` voxel-to-world matrices (mm) of the volumes.
        start: ``(B, 3)`` voxel index of each crop's first voxel.

    Returns:
        ``(B, 4, 4)`` float64 on ``affine``'s device: ``affine @ translation(start)``.

    Example:
        >>> crop_affine(torch.eye(4, dtype=torch.float64)[None], torch.tensor([[1, 2, 3]]))[0, :3, 3]
        tensor([1., 2., 3.], dtype=torch.float64)
    """
    to_crop = torch.eye(4, dtype=torch.float64, device=affine.device).repeat(start.shape[0], 1, 1)
    to_crop[:, :3, 3] = start.to(torch.float64)
    return affine @ to_crop


def _affine_from_spacing(spacing: Tensor, origin: Tensor) -> Tensor:
    affine = torch.eye(4, dtype=torch.float64)
    affine[0, 0], affine[1, 1], affine[2, 2] = spacing[0], spacing[1], spacing[2]
    affine[:3, 3] = origin
    return affine


def _check_affines(name: str, affine: Tensor) -> None:
    """``(..., 4, 4)`` voxel-to-world matrices: finite, bottom row ``(0, 0, 0, 1)``, spacings and
    translations within the physical bounds, axes not (nearly) parallel."""
    host = affine.detach().to("cpu", torch.float64)
    check_finite(name, host)
    bottom = host[..., 3, :]
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    if not bool(((bottom - expected).abs() <= 1e-6).all()):
        worst = bottom.reshape(-1, 4)[int((bottom - expected).abs().reshape(-1, 4).amax(1).argmax())]
        raise ValueError(f"{name}: expected the bottom row (0, 0, 0, 1) of a voxel-to-world matrix, got {worst.tolist()}")
    spacing = host[..., :3, :3].norm(dim=-2)
    check_length(f"{name} (voxel spacing, the norms of its first three columns)", spacing)
    check_position(f"{name} (translation, its last column)", host[..., :3, 3])
    # |det| / (product of the column norms) is 1 for orthogonal axes and 0 for parallel ones
    skew = torch.linalg.det(host[..., :3, :3]).abs() / spacing.prod(-1)
    if not bool((skew > 1e-6).all()):
        raise ValueError(f"{name}: the 3x3 part is singular (voxel axes parallel or zero), "
                         f"|det| / product of spacings = {float(skew.min()):.3g}")
