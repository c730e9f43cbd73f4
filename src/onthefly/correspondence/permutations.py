"""How flips and rotations of the images permute the patches, and the matrix with them."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_choice, check_int, check_ndim

__all__ = ["IMAGE_OPERATIONS", "patch_permutation", "permute_views_patches"]

IMAGE_OPERATIONS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")


def _check_grid_shape(grid_shape) -> tuple[int, int]:
    if not isinstance(grid_shape, (tuple, list)) or len(grid_shape) != 2:
        raise ValueError(f"grid_shape: expected (rows, cols) of patches, got {grid_shape!r}")
    return check_int("grid_shape", grid_shape[0], minimum=1), check_int("grid_shape", grid_shape[1], minimum=1)


def patch_permutation(grid_shape: tuple[int, int], operation: str) -> Tensor:
    """Where each patch comes from when an image is flipped or rotated.

    ``operation`` acts on the image's last two dims as ``torch.flip`` (``"hflip"``:
    columns, ``"vflip"``: rows) or ``torch.rot90(k, dims=(-2, -1))`` (``"rot90"``,
    ``"rot180"``, ``"rot270"``; rotations need a square grid). Returns ``(N,)``:
    patch ``i`` of the transformed image is patch ``perm[i]`` of the original.
    """
    check_choice("operation", operation, IMAGE_OPERATIONS)
    rows, cols = _check_grid_shape(grid_shape)
    grid = torch.arange(rows * cols).view(rows, cols)
    if operation in ("rot90", "rot270") and rows != cols:
        raise ValueError(f"operation: {operation} needs a square patch grid, got {rows} x {cols}")
    if operation == "hflip":
        grid = grid.flip(-1)
    elif operation == "vflip":
        grid = grid.flip(-2)
    elif operation.startswith("rot"):
        grid = torch.rot90(grid, int(operation[3:]) // 90, dims=(-2, -1))
    return grid.reshape(-1)


def permute_views_patches(correspondence: Tensor, permutations: Tensor) -> Tensor:
    """Re-index ``C`` after each view's patches were permuted.

    Args:
        correspondence: ``(B, V*N, V*N)``.
        permutations: ``(B, V, N)`` or ``(V, N)``; ``perm[b, a, i]`` is the old patch
            that patch ``i`` of view ``a`` now shows (see :func:`patch_permutation`).

    Returns:
        ``(B, V*N, V*N)`` with ``C'[a*N+i, c*N+j] = C[a*N+perm[a,i], c*N+perm[c,j]]``.
    """
    if not isinstance(permutations, Tensor) or permutations.is_floating_point() or permutations.is_complex():
        raise TypeError(f"permutations: expected an integer tensor (V, N) or (B, V, N), got {permutations!r:.80}")
    check_ndim("permutations", permutations, (2, 3), "(V, N) or (B, V, N)")
    if permutations.dim() == 2:
        permutations = permutations[None].expand(correspondence.shape[0], -1, -1)
    batch, views, n_patches = permutations.shape
    if correspondence.shape != (batch, views * n_patches, views * n_patches):
        raise ValueError(
            f"correspondence: expected shape {(batch, views * n_patches, views * n_patches)} to match "
            f"permutations {tuple(permutations.shape)}, got {tuple(correspondence.shape)}"
        )
    if not torch.compiler.is_compiling():  # a host read; the traced hot path takes patch_permutation's maps
        identity = torch.arange(n_patches, device=permutations.device)
        if not bool((permutations.sort(-1).values == identity).all()):
            raise ValueError(f"permutations: expected each row to be a permutation of 0..{n_patches - 1} "
                             "(every patch exactly once)")
    offsets = torch.arange(views, device=permutations.device)[None, :, None] * n_patches
    tokens = (permutations.to(correspondence.device) + offsets.to(correspondence.device)).reshape(batch, -1)
    rows = correspondence.gather(1, tokens[:, :, None].expand(-1, -1, correspondence.shape[2]))
    return rows.gather(2, tokens[:, None, :].expand(-1, rows.shape[1], -1))
