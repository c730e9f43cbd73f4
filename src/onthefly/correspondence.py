"""Patch-level many-to-many correspondence matrices between views.

Definition (DESIGN.md, "Correspondence ground truth"): for an ``H x W`` view and
patch size ``k`` there are ``N = (H/k)(W/k)`` patches, row-major; tokens of all
views are concatenated view-major, token ``a*N + i`` is patch ``i`` of view ``a``.

1. Weight every voxel: 0 for air (``HU <= air_threshold_hu``, default -900),
   else ``sigmoid(0.005 (HU + 150))`` (``weighting="soft"``) or 1 (``"binary"``).
2. Average-pool the weights onto a coarse grid; the default coarse voxel edge
   is one patch back-projected to the isocenter, ``k dx sid / sdd``, the
   smallest over the sample's views.
3. Footprint ``p_a^v[i]`` of coarse voxel ``v`` in view ``a``: the summed
   length (mm) of patch ``i``'s rays inside the voxel's box, between source and
   detector, each patch sampled by ``m x m`` rays through the centres of an
   ``m x m`` split of the patch; normalised so ``max_i p_a^v[i] = 1``.
4. ``C[a*N+i, b*N+j] = max_v w_v p_a^v[i] p_b^v[j]`` for all view pairs.

The cameras are the rendering cameras (:class:`~onthefly.geometry.CArm`).

Computation: a coarse voxel projects onto a few patches per view, so for each
voxel and view only a ``K x K`` window of patches around its projection is
tested (``K`` bounds every voxel's projected box), the ``T`` non-zero entries
are kept, and the outer products for every view pair are scattered into ``C``
with ``scatter_reduce(..., "amax")``, batched over samples, views and voxels.
Host reads: the voxel count after dropping air, and the sizes ``K`` and ``T``
(three integers per call). Not differentiable (runs under ``torch.no_grad``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_choice, check_positive, check_positive_int
from .geometry import CArm, project_points
from .volume import MU_WATER_PER_MM, Volume, VolumeBatch, as_volume_batch

__all__ = [
    "patch_correspondence",
    "voxel_weights",
    "correspondence_map",
    "epipolar_line",
    "pixel_ray",
    "patch_permutation",
    "permute_views_patches",
    "WEIGHTINGS",
    "IMAGE_OPERATIONS",
]

WEIGHTINGS = ("soft", "binary")
IMAGE_OPERATIONS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")
DEFAULT_MEMORY_BUDGET = 256 * 2**20


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
    air = attenuation <= mu_water * (1.0 + air_threshold_hu / 1000.0)
    if air_threshold_hu < -1000.0:
        air = torch.zeros_like(air)
    if weighting == "binary":
        return (~air).to(attenuation.dtype)
    weights = torch.sigmoid_(attenuation * (5.0 / mu_water) - 4.25)
    return weights.masked_fill_(air, 0.0)


@torch.no_grad()
def patch_correspondence(
    volume: Volume | Sequence[Volume] | VolumeBatch,
    carm: CArm,
    *,
    patch_size: int = 16,
    weighting: str = "soft",
    air_threshold_hu: float = -900.0,
    coarse_voxel_size: float | None = None,
    rays_per_patch: int | None = None,
    mu_water: float = MU_WATER_PER_MM,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Tensor:
    """Patch correspondence matrices between all views of each sample.

    Args:
        volume: one :class:`Volume` (shared), ``B`` volumes, or a :class:`VolumeBatch`.
        carm: the cameras that render the views, batch ``(B, V)``.
        patch_size: patch edge ``k`` in pixels; must divide the detector height and width.
        weighting: ``"soft"`` or ``"binary"`` voxel weights.
        air_threshold_hu: voxels at or below this HU are air (weight 0).
        coarse_voxel_size: coarse voxel edge in mm (default: ``k dx sid / sdd``,
            the smallest over each sample's views).
        rays_per_patch: rays per patch side ``m`` (default: enough for two rays
            per coarse voxel edge at the isocenter, at least 2).
        mu_water: attenuation of water (1/mm) to recover HU from a :class:`VolumeBatch`.
        memory_budget: bytes of intermediate tensors per voxel chunk.

    Returns:
        ``(B, V*N, V*N)`` in ``[0, 1]``, symmetric, ``N = (H/k) (W/k)``.

    Example:
        >>> vol = Volume.from_tensor(torch.zeros(16, 16, 16), spacing=4.0)
        >>> carm = CArm(alpha=torch.tensor([0.0, 1.57]), sid=500.0, sdd=800.0, height=64, pixel_spacing=1.0)
        >>> patch_correspondence(vol, carm, patch_size=16).shape
        torch.Size([1, 32, 32])
    """
    if not isinstance(carm, CArm):
        raise TypeError(f"carm: expected a CArm, got {type(carm).__name__}")
    check_positive_int("patch_size", patch_size)
    check_choice("weighting", weighting, WEIGHTINGS)
    check_positive_int("memory_budget", memory_budget)
    if carm.height % patch_size or carm.width % patch_size:
        raise ValueError(
            f"patch_size: expected a divisor of the detector size {carm.height} x {carm.width}, got {patch_size}"
        )
    if coarse_voxel_size is not None:
        check_positive("coarse_voxel_size", torch.as_tensor(float(coarse_voxel_size)))
    if rays_per_patch is not None:
        check_positive_int("rays_per_patch", rays_per_patch)
    batch = as_volume_batch(volume, mu_water=mu_water)
    carm_batch, views = carm.batch_shape
    if batch.batch_size not in (1, carm_batch) and carm_batch != 1:
        raise ValueError(
            f"volume, carm: mismatched batch sizes, {batch.batch_size} volumes for {carm_batch} C-arm samples "
            "(expected equal sizes, or one of them 1)"
        )
    out_batch = max(batch.batch_size, carm_batch)
    device = batch.device
    carm = carm.to(device=device, dtype=torch.float32)
    rows, cols = carm.height // patch_size, carm.width // patch_size
    n_patches = rows * cols
    tokens = views * n_patches

    # Coarse voxel edge and rays per patch, per sample (host-side numbers).
    backprojected = (patch_size * carm.pixel_spacing * carm.sid / carm.sdd).expand(out_batch, views)
    backprojected_min = backprojected.amin(1).to("cpu", torch.float64)
    edge = backprojected_min if coarse_voxel_size is None else torch.full_like(backprojected_min, float(coarse_voxel_size))
    if rays_per_patch is None:
        rays = int(min(patch_size, max(2, math.ceil(float((2 * backprojected_min / edge).amax())))))
    else:
        rays = rays_per_patch

    weights = _attenuation_weights(
        batch.attenuation[:, 0], mu_water=batch.mu_water, weighting=weighting, air_threshold_hu=air_threshold_hu
    )
    voxels = _coarse_voxels(weights, batch.affine.to(torch.float64), edge, out_batch)
    result = torch.zeros(out_batch * tokens * tokens, device=device)
    if voxels["weight"].numel() == 0:
        return result.view(out_batch, tokens, tokens)

    footprint_args = dict(carm=carm, patch_size=patch_size, rays=rays)
    per_voxel = views * (16 * rays * rays * 3 * 4 + views * 64 * 12)  # generous bytes per voxel
    chunk = max(1, memory_budget // (per_voxel * 16))
    for first in range(0, voxels["weight"].shape[0], chunk):
        part = {key: value[first : first + chunk] for key, value in voxels.items()}
        values, patches = _footprints(part, **footprint_args)  # (n, V, T) each
        _scatter_outer_max(result, part["sample"], part["weight"], values, patches, views, n_patches)
    return result.view(out_batch, tokens, tokens)


def _coarse_voxels(weights: Tensor, affine: Tensor, edge: Tensor, out_batch: int) -> dict[str, Tensor]:
    """Pool weights onto coarse grids and list the non-air coarse voxels of every sample.

    Returns flat tensors over voxels: ``sample`` (sample index), ``weight`` (pooled
    weight), ``index`` (coarse voxel index, 3), and per sample (indexed by
    ``sample``) the coarse-index-to-world ``affine`` ``(n, 4, 4)``.
    """
    volume_batch = weights.shape[0]
    spacing = affine[:, :3, :3].norm(dim=1).to("cpu")  # (Bv, 3) mm
    sample_volume = torch.arange(out_batch) if volume_batch > 1 else torch.zeros(out_batch, dtype=torch.long)
    factors = torch.clamp(torch.round(edge[:, None] / spacing[sample_volume]), min=1).long()  # (B, 3) fine voxels per coarse
    groups: dict[tuple[int, int, int], list[int]] = {}
    for sample, factor in enumerate(factors.tolist()):
        groups.setdefault(tuple(factor), []).append(sample)
    pieces = []
    for factor, samples in groups.items():
        # A volume shared by all samples is pooled once; its voxel list is repeated per sample.
        pooled_volumes = [0] if volume_batch == 1 else samples
        source = weights[:1] if volume_batch == 1 else weights[torch.tensor(samples, device=weights.device)]
        pad = [(-size) % f for size, f in zip(source.shape[1:], factor)]
        if any(pad):
            source = F.pad(source, (0, pad[2], 0, pad[1], 0, pad[0]))
        pooled = F.avg_pool3d(source[:, None], kernel_size=factor, stride=factor)[:, 0]  # (g, d, h, w)
        occupied = torch.nonzero(pooled > 0)  # (n, 4): pooled volume row, i, j, k
        weight = pooled[occupied[:, 0], occupied[:, 1], occupied[:, 2], occupied[:, 3]]
        scale = torch.tensor(factor, dtype=torch.float64)
        coarse_to_fine = torch.eye(4, dtype=torch.float64)
        coarse_to_fine[:3, :3] = torch.diag(scale)
        coarse_to_fine[:3, 3] = (scale - 1) / 2
        coarse_affine = affine[torch.tensor(pooled_volumes, device=affine.device)] @ coarse_to_fine.to(affine.device)
        sample_index = torch.tensor(samples, device=weights.device)
        if volume_batch == 1:
            repeats = len(samples)
            count = occupied.shape[0]
            pieces.append(
                dict(
                    sample=sample_index.repeat_interleave(count),
                    weight=weight.repeat(repeats),
                    index=occupied[:, 1:].to(torch.float64).repeat(repeats, 1),
                    affine=coarse_affine[0].expand(repeats * count, 4, 4),
                )
            )
        else:
            pieces.append(
                dict(
                    sample=sample_index[occupied[:, 0]],
                    weight=weight,
                    index=occupied[:, 1:].to(torch.float64),
                    affine=coarse_affine[occupied[:, 0]],
                )
            )
    return {key: torch.cat([piece[key] for piece in pieces]) for key in pieces[0]}


def _footprints(voxels: dict[str, Tensor], *, carm: CArm, patch_size: int, rays: int) -> tuple[Tensor, Tensor]:
    """Normalised footprints of each voxel in each view, ``(n, V, T)`` values and flat patch ids."""
    sample = voxels["sample"]
    count = sample.shape[0]
    views = carm.batch_shape[1]
    carm_sample = sample if carm.batch_shape[0] > 1 else torch.zeros_like(sample)
    rows, cols = carm.height // patch_size, carm.width // patch_size
    dtype = torch.float32

    # World corners of each coarse voxel box, projected: which patches can it touch?
    offsets = torch.tensor(
        [[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], dtype=torch.float64, device=sample.device
    )
    corners_index = voxels["index"][:, None, :] + offsets  # (n, 8, 3)
    affine = voxels["affine"]
    corners_world = corners_index @ affine[:, :3, :3].transpose(1, 2) + affine[:, None, :3, 3]
    matrices = carm.projection_matrices().to(torch.float64)[carm_sample]  # (n, V, 3, 4)
    homogeneous = torch.cat([corners_world, torch.ones_like(corners_world[..., :1])], -1)
    projected = torch.einsum("nvij,ncj->nvci", matrices, homogeneous)  # (n, V, 8, 3)
    depth = projected[..., 2]
    pixel = projected[..., :2] / depth.clamp_min(1e-6)[..., None]
    in_front = (depth > 1e-3).all(-1)  # (n, V): voxel entirely in front of the source
    patch_low = torch.floor((pixel.amin(2) + 0.5) / patch_size)  # (n, V, 2) row, col of the first patch
    patch_high = torch.floor((pixel.amax(2) + 0.5) / patch_size)
    limits = torch.tensor([rows - 1, cols - 1], dtype=torch.float64, device=sample.device)
    patch_low = torch.minimum(torch.maximum(patch_low, torch.zeros_like(limits)), limits)
    patch_high = torch.minimum(torch.maximum(patch_high, torch.zeros_like(limits)), limits)
    span = torch.where(in_front[..., None], patch_high - patch_low + 1, torch.ones_like(patch_low))
    window = int(span.amax()) if span.numel() else 1  # K (host read)

    steps = torch.arange(window, device=sample.device)
    window_rows = patch_low[..., 0, None].long() + steps  # (n, V, K)
    window_cols = patch_low[..., 1, None].long() + steps
    valid = (window_rows[..., :, None] < rows) & (window_cols[..., None, :] < cols) & in_front[..., None, None]

    # Rays through an m x m split of every window patch, in coarse-index space.
    sub = (torch.arange(rays, device=sample.device, dtype=dtype) + 0.5) * (patch_size / rays) - 0.5
    pixel_rows = window_rows[..., :, None].to(dtype) * patch_size + sub  # (n, V, K, m)
    pixel_cols = window_cols[..., :, None].to(dtype) * patch_size + sub
    u, v = carm.detector_axes()
    spacing = carm.pixel_spacing[..., None]
    source = carm.source_positions()[carm_sample]  # (n, V, 3)
    center = carm.detector_centers()[carm_sample]
    du, dv = (u * spacing)[carm_sample], (v * spacing)[carm_sample]
    col_offset = pixel_cols - (carm.width - 1) / 2
    row_offset = pixel_rows - (carm.height - 1) / 2
    # direction (n, V, Kr, Kc, mr, mc, 3) = center - source + col*du + row*dv
    direction = (
        (center - source)[:, :, None, None, None, None, :]
        + col_offset[:, :, None, :, None, :, None] * du[:, :, None, None, None, None, :]
        + row_offset[:, :, :, None, :, None, None] * dv[:, :, None, None, None, None, :]
    )
    world_length = direction.norm(dim=-1)
    inverse = torch.linalg.inv(affine).to(dtype)  # (n, 4, 4) world -> coarse index
    linear = inverse[:, None, :3, :3]
    source_index = (linear @ source.unsqueeze(-1)).squeeze(-1) + inverse[:, None, :3, 3]  # (n, V, 3)
    direction_index = torch.einsum("nij,nv...j->nv...i", inverse[:, :3, :3], direction)
    box = voxels["index"].to(dtype)[:, None, None, None, None, None, :]
    origin = source_index[:, :, None, None, None, None, :]
    safe = torch.where(direction_index.abs() < 1e-9, torch.full_like(direction_index, 1e-9), direction_index)
    t_a = (box - 0.5 - origin) / safe
    t_b = (box + 0.5 - origin) / safe
    t_enter = torch.minimum(t_a, t_b).amax(-1).clamp_min(0.0)
    t_exit = torch.maximum(t_a, t_b).amin(-1).clamp_max(1.0)
    length = (t_exit - t_enter).clamp_min(0.0) * world_length  # (n, V, K, K, m, m) mm
    length = length.sum((-1, -2)) * valid  # (n, V, K, K)
    length = length.reshape(count, views, window * window)
    peak = length.amax(-1, keepdim=True)
    values = torch.where(peak > 0, length / peak.clamp_min(1e-12), torch.zeros_like(length))
    patch_ids = (window_rows[..., :, None] * cols + window_cols[..., None, :]).reshape(count, views, -1)
    patch_ids = torch.where(valid.reshape(count, views, -1), patch_ids, torch.zeros_like(patch_ids))
    nonzero = int((values > 0).sum(-1).amax()) if values.numel() else 0  # T (host read)
    keep = max(1, nonzero)
    values, order = values.topk(keep, dim=-1)
    return values, patch_ids.gather(-1, order)


def _scatter_outer_max(
    result: Tensor, sample: Tensor, weight: Tensor, values: Tensor, patches: Tensor, views: int, n_patches: int
) -> None:
    """``result.flat[b, a*N+i, c*N+j] = max(., w * p_a[i] * p_c[j])`` for all view pairs, in place."""
    tokens = views * n_patches
    view_offset = torch.arange(views, device=values.device)[None, :, None] * n_patches
    token = patches + view_offset  # (n, V, T)
    flat_token = token.reshape(token.shape[0], -1)  # (n, V*T)
    flat_value = values.reshape(values.shape[0], -1)
    products = weight[:, None, None] * flat_value[:, :, None] * flat_value[:, None, :]  # (n, VT, VT)
    index = sample[:, None, None] * (tokens * tokens) + flat_token[:, :, None] * tokens + flat_token[:, None, :]
    result.scatter_reduce_(0, index.reshape(-1), products.reshape(-1).to(result.dtype), reduce="amax", include_self=True)


# ---------------------------------------------------------------------------
# Helpers for reading and checking correspondences


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
    rows, cols = grid_shape
    n_patches = rows * cols
    unbatched = correspondence.dim() == 2
    matrix = correspondence[None] if unbatched else correspondence
    if matrix.dim() != 3 or matrix.shape[-1] != matrix.shape[-2] or matrix.shape[-1] % n_patches:
        raise ValueError(
            f"correspondence: expected (B, V*N, V*N) with N = {n_patches} patches per view, got {tuple(correspondence.shape)}"
        )
    views = matrix.shape[-1] // n_patches
    for name, view in (("view_a", view_a), ("view_b", view_b)):
        if not 0 <= view < views:
            raise ValueError(f"{name}: expected a view index in [0, {views}), got {view}")
    index = patch[0] * cols + patch[1] if isinstance(patch, tuple) else int(patch)
    if not 0 <= index < n_patches:
        raise ValueError(f"patch: expected a patch in the {rows} x {cols} grid, got {patch}")
    row = matrix[:, view_a * n_patches + index, view_b * n_patches : (view_b + 1) * n_patches]
    heat = row.reshape(-1, rows, cols)
    return heat[0] if unbatched else heat


def pixel_ray(carm: CArm, view: int, pixel: Tensor) -> tuple[Tensor, Tensor]:
    """The ray of a pixel: world ``origins (B, P, 3)`` (the source) and ``targets (B, P, 3)``.

    Args:
        carm: the C-arm, batch ``(B, V)``.
        view: the view index.
        pixel: ``(P, 2)`` or ``(B, P, 2)`` (row, column) coordinates, fractional allowed.
    """
    pixel = torch.as_tensor(pixel, dtype=carm.dtype, device=carm.device)
    if pixel.dim() == 2:
        pixel = pixel[None].expand(carm.batch_shape[0], -1, -1)
    if pixel.dim() != 3 or pixel.shape[-1] != 2:
        raise ValueError(f"pixel: expected shape (P, 2) or (B, P, 2) (row, column), got {tuple(pixel.shape)}")
    u, v = carm.detector_axes()
    spacing = carm.pixel_spacing[:, view, None, None]
    center = carm.detector_centers()[:, view, None, :]
    target = (
        center
        + (pixel[..., 1:2] - (carm.width - 1) / 2) * spacing * u[:, view, None, :]
        + (pixel[..., 0:1] - (carm.height - 1) / 2) * spacing * v[:, view, None, :]
    )
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
    for name, view in (("view_a", view_a), ("view_b", view_b)):
        if not 0 <= view < views:
            raise ValueError(f"{name}: expected a view index in [0, {views}), got {view}")
    if view_a == view_b:
        raise ValueError(f"view_b: expected a view other than view_a ({view_a})")
    source, target = pixel_ray(carm, view_a, pixel)
    near = project_points(carm, source + 0.25 * (target - source))[:, view_b]  # (B, P, 2)
    far = project_points(carm, target)[:, view_b]
    ones = torch.ones_like(near[..., :1])
    line = torch.cross(torch.cat([near, ones], -1), torch.cat([far, ones], -1), dim=-1)
    return line / line[..., :2].norm(dim=-1, keepdim=True).clamp_min(1e-12)


def patch_permutation(grid_shape: tuple[int, int], operation: str) -> Tensor:
    """Where each patch comes from when an image is flipped or rotated.

    ``operation`` acts on the image's last two dims as ``torch.flip`` (``"hflip"``:
    columns, ``"vflip"``: rows) or ``torch.rot90(k, dims=(-2, -1))`` (``"rot90"``,
    ``"rot180"``, ``"rot270"``; rotations need a square grid). Returns ``(N,)``:
    patch ``i`` of the transformed image is patch ``perm[i]`` of the original.
    """
    check_choice("operation", operation, IMAGE_OPERATIONS)
    rows, cols = grid_shape
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
    if permutations.dim() == 2:
        permutations = permutations[None].expand(correspondence.shape[0], -1, -1)
    batch, views, n_patches = permutations.shape
    if correspondence.shape != (batch, views * n_patches, views * n_patches):
        raise ValueError(
            f"correspondence: expected shape {(batch, views * n_patches, views * n_patches)} to match "
            f"permutations {tuple(permutations.shape)}, got {tuple(correspondence.shape)}"
        )
    offsets = torch.arange(views, device=permutations.device)[None, :, None] * n_patches
    tokens = (permutations.to(correspondence.device) + offsets.to(correspondence.device)).reshape(batch, -1)
    rows = correspondence.gather(1, tokens[:, :, None].expand(-1, -1, correspondence.shape[2]))
    return rows.gather(2, tokens[:, None, :].expand(-1, rows.shape[1], -1))
