"""Reading and checking correspondences: one patch's heat map in another view, a pixel's ray, its epipolar line."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_int
from ..geometry import CArm, project_points
from .permutations import _check_grid_shape

__all__ = ["correspondence_map", "pixel_ray", "epipolar_line"]


def correspondence_map(
    correspondence: Tensor, view_a: int, patch: int | tuple[int, int], view_b: int, *, grid_shape: tuple[int, int]
) -> Tensor:
    """Heat map in view ``b`` of the patches matching one patch of view ``a``.

    Args:
        correspondence: ``(B, V*N, V*N)`` or ``(V*N, V*N)``.
        view_a, view_b: view indices.
        patch: flat patch index ``i`` or ``(row, col)`` in view ``a``'s patch grid.
        grid_shape: ``(H/k, W/k)`` patches per view.

    Returns:
        ``(B, H/k, W/k)`` (or ``(H/k, W/k)`` for an unbatched input).
    """
    rows, cols = _check_grid_shape(grid_shape)
    n_patches = rows * cols
    unbatched = correspondence.dim() == 2
    matrix = correspondence[None] if unbatched else correspondence
    if matrix.dim() != 3 or matrix.shape[-1] != matrix.shape[-2] or matrix.shape[-1] % n_patches:
        raise ValueError(
            f"correspondence: expected (B, V*N, V*N) with N = {n_patches} patches per view, got {tuple(correspondence.shape)}"
        )
    views = matrix.shape[-1] // n_patches
    view_a, view_b = _check_view("view_a", view_a, views), _check_view("view_b", view_b, views)
    index = _patch_index(patch, rows, cols)
    row = matrix[:, view_a * n_patches + index, view_b * n_patches : (view_b + 1) * n_patches]
    heat = row.reshape(-1, rows, cols)
    return heat[0] if unbatched else heat


def _patch_index(patch, rows: int, cols: int) -> int:
    """Flat index of ``patch`` (flat or ``(row, col)``), refused outside the ``rows x cols`` grid."""
    if isinstance(patch, (tuple, list)):
        if len(patch) != 2:
            raise ValueError(f"patch: expected a flat index or (row, col), got {patch!r}")
        row, col = check_int("patch", patch[0]), check_int("patch", patch[1])
        if not (0 <= row < rows and 0 <= col < cols):
            raise ValueError(f"patch: expected (row, col) in the {rows} x {cols} grid, got {tuple(patch)}")
        return row * cols + col
    index = check_int("patch", patch)
    if not 0 <= index < rows * cols:
        raise ValueError(f"patch: expected a flat index in [0, {rows * cols}) ({rows} x {cols} grid), got {index}")
    return index


def _check_view(name: str, view, views: int) -> int:
    view = check_int(name, view)
    if not 0 <= view < views:
        raise ValueError(f"{name}: expected a view index in [0, {views}), got {view}")
    return view


def pixel_ray(carm: CArm, view: int, pixel: Tensor) -> tuple[Tensor, Tensor]:
    """The ray of a pixel: world ``origins (B, P, 3)`` (the source) and ``targets (B, P, 3)``.

    Args:
        carm: the C-arm, batch ``(B, V)``.
        view: the view index.
        pixel: ``(P, 2)`` or ``(B, P, 2)`` (row, column) coordinates, fractional allowed.
    """
    if not isinstance(carm, CArm):
        raise TypeError(f"carm: expected a CArm, got {type(carm).__name__}")
    view = _check_view("view", view, carm.batch_shape[1])
    pixel = torch.as_tensor(pixel, dtype=carm.dtype, device=carm.device)
    if pixel.dim() == 2:
        pixel = pixel[None].expand(carm.batch_shape[0], -1, -1)
    if pixel.dim() != 3 or pixel.shape[-1] != 2:
        raise ValueError(f"pixel: expected shape (P, 2) or (B, P, 2) (row, column), got {tuple(pixel.shape)}")
    # The detector is an affine map of the pixel coordinates (the pixel-centre convention of CArm).
    frame = carm.detector_points(torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))[:, view]  # (B, 3, 3)
    origin, step_row, step_col = frame[:, None, 0], frame[:, None, 1] - frame[:, None, 0], frame[:, None, 2] - frame[:, None, 0]
    target = origin + pixel[..., 0:1] * step_row + pixel[..., 1:2] * step_col
    source = carm.source_positions()[:, view, None, :].expand_as(target)
    return source, target


def epipolar_line(carm: CArm, view_a: int, pixel: Tensor, view_b: int) -> Tensor:
    """The epipolar line in view ``b`` of pixels of view ``a``.

    Args:
        carm: the C-arm, batch ``(B, V)``.
        view_a, view_b: view indices (distinct).
        pixel: ``(P, 2)`` or ``(B, P, 2)`` (row, column) in view ``a``.

    Returns:
        ``(B, P, 3)`` coefficients ``(a, b, c)`` of ``a * row + b * col + c = 0`` in
        view ``b``, scaled so ``a^2 + b^2 = 1`` (so ``|a r + b q + c|`` is a distance
        in pixels).
    """
    views = carm.batch_shape[1]
    view_a, view_b = _check_view("view_a", view_a, views), _check_view("view_b", view_b, views)
    if view_a == view_b:
        raise ValueError(f"view_b: expected a view other than view_a ({view_a})")
    source, target = pixel_ray(carm, view_a, pixel)
    near = project_points(carm, source + 0.25 * (target - source))[:, view_b]  # (B, P, 2)
    far = project_points(carm, target)[:, view_b]
    ones = torch.ones_like(near[..., :1])
    line = torch.cross(torch.cat([near, ones], -1), torch.cat([far, ones], -1), dim=-1)
    return line / line[..., :2].norm(dim=-1, keepdim=True).clamp_min(1e-12)
