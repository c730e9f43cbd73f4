"""Differentiable DRRs: line integrals of attenuation along every detector ray.

Two methods, both batched over samples and views, both differentiable with
respect to the attenuation volume and to the C-arm parameters:

``"trilinear"`` (default, fast)
    Each ray is sampled once per voxel plane along its dominant axis (the index
    axis its direction is most aligned with), at the points where it crosses
    the planes through voxel centres. There trilinear interpolation reduces to
    bilinear interpolation inside one slice, so a whole chunk of slices is
    sampled by a single 2-D ``grid_sample`` call, for all rays of all views that
    share that dominant axis. The sum is weighted by the ray's length per
    slice (Joseph's method). The step is exactly one voxel along the dominant
    axis and at most one voxel along the others. Samples outside the segment
    from source to pixel are dropped.

``"siddon"`` (exact, slow)
    The exact line integral of the piecewise-constant (nearest-voxel) volume:
    every crossing of the ray with a voxel face, each voxel weighted by its
    intersection length. The reference the benchmarks measure against.

Memory stays under ``memory_budget`` bytes of intermediate tensors (slices or
rays are processed in chunks; a trilinear chunk is at least one slice for all
views that share an axis, and at most about 24 MB, which keeps it in cache). Under autograd, trilinear chunks are
re-computed in the backward pass (activation checkpointing) so memory does not
grow with the number of slices.

Host reads: grouping rays by dominant axis reads one small ``(B*V, 3)``
boolean tensor per call, and two numbers per axis (the latest slice where a
ray starts and the earliest where one ends, so that only chunks outside that
range are masked). These are the
only device-to-host reads; the per-sample work has none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ._checks import check_choice, check_positive_int
from .geometry import CArm
from .volume import MU_WATER_PER_MM, Volume, VolumeBatch, as_volume_batch

__all__ = ["render", "beer_lambert", "to_display", "METHODS"]

METHODS = ("trilinear", "siddon")
DEFAULT_MEMORY_BUDGET = 512 * 2**20
# Trilinear chunks aim at this working set: measured on a 2-core CPU, 16-32 MB
# chunks ran 2-3x faster than 512 MB ones (the grid and samples stay in cache).
_CACHE_CHUNK_BYTES = 24 * 2**20


def render(
    volume: Volume | Sequence[Volume] | VolumeBatch,
    carm: CArm,
    *,
    method: str = "trilinear",
    mu_water: float = MU_WATER_PER_MM,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Tensor:
    """Render DRRs: the line integral of attenuation from the source to every pixel.

    Args:
        volume: one :class:`Volume` (shared by all samples), a sequence of ``B``
            volumes, or a :class:`VolumeBatch` of ``B`` (or 1) volumes.
        carm: poses for ``(B, V)`` views (``B`` may be 1 to share poses).
        method: ``"trilinear"`` (fast) or ``"siddon"`` (exact reference).
        mu_water: attenuation of water in 1/mm, used when converting HU.
        memory_budget: bytes of intermediate tensors per chunk.

    Returns:
        ``(B, V, 1, H, W)`` dimensionless line integrals ``sum(mu * length)``;
        ``exp(-x)`` is the transmitted fraction (:func:`beer_lambert`).

    Example:
        >>> vol = Volume.from_tensor(torch.zeros(16, 16, 16), spacing=2.0)
        >>> carm = CArm(alpha=torch.tensor([0.0, 1.57]), sid=500.0, sdd=800.0, height=32, pixel_spacing=2.0)
        >>> render(vol, carm).shape
        torch.Size([1, 2, 1, 32, 32])
    """
    check_choice("method", method, METHODS)
    check_positive_int("memory_budget", memory_budget)
    if not isinstance(carm, CArm):
        raise TypeError(f"carm: expected a CArm, got {type(carm).__name__}")
    batch = as_volume_batch(volume, mu_water=mu_water)
    rays = _prepare_rays(batch, carm)
    attenuation = batch.attenuation[:, 0]
    if method == "trilinear":
        image = _trilinear(attenuation, rays, memory_budget)
    else:
        image = _siddon(attenuation, rays, memory_budget)
    b, v = rays.batch_shape
    return image.reshape(b, v, 1, carm.height, carm.width)


def beer_lambert(line_integrals: Tensor, *, incident: float = 1.0) -> Tensor:
    """Transmitted intensity ``incident * exp(-line_integrals)``, same shape."""
    return incident * torch.exp(-line_integrals)


def to_display(line_integrals: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Per-image min-max scaling of ``(..., H, W)`` line integrals to ``[0, 1]``.

    Dense structures are bright, as on a radiograph. A constant image maps to 0.
    """
    flat = line_integrals.flatten(-2)
    low = flat.amin(-1, keepdim=True)[..., None]
    high = flat.amax(-1, keepdim=True)[..., None]
    return ((line_integrals - low) / (high - low).clamp_min(eps)).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------
# Rays in voxel-index space


class _Rays:
    """Every ray of every view, in the voxel-index space of its own volume."""

    def __init__(self, **fields) -> None:
        self.__dict__.update(fields)


def _prepare_rays(batch: VolumeBatch, carm: CArm) -> _Rays:
    volume_batch = batch.batch_size
    carm_batch, views = carm.batch_shape
    if volume_batch not in (1, carm_batch) and carm_batch != 1:
        raise ValueError(
            f"volume, carm: mismatched batch sizes, {volume_batch} volumes for {carm_batch} C-arm samples "
            "(expected equal sizes, or one of them 1)"
        )
    out_batch = max(volume_batch, carm_batch)
    dtype = batch.attenuation.dtype
    carm = carm.to(device=batch.device, dtype=dtype)
    sample = torch.arange(out_batch, device=batch.device) if volume_batch > 1 else torch.zeros(
        out_batch, dtype=torch.long, device=batch.device
    )
    inverse = torch.linalg.inv(batch.affine.double()).to(dtype)[sample]  # (B, 4, 4)
    linear, offset = inverse[:, None, :3, :3], inverse[:, None, :3, 3]

    def to_index(points: Tensor) -> Tensor:  # (B, V, 3) world -> index
        return (linear @ points.unsqueeze(-1)).squeeze(-1) + offset

    def expand(t: Tensor) -> Tensor:
        return t.expand(out_batch, *t.shape[1:])

    source = expand(carm.source_positions())
    center = expand(carm.detector_centers())
    u, v = carm.detector_axes()
    spacing = expand(carm.pixel_spacing)[..., None]
    u, v = expand(u) * spacing, expand(v) * spacing
    rows = torch.arange(carm.height, device=batch.device, dtype=dtype) - (carm.height - 1) / 2
    cols = torch.arange(carm.width, device=batch.device, dtype=dtype) - (carm.width - 1) / 2
    grid_rows = rows[:, None].expand(-1, carm.width).reshape(-1)  # (P,), row-major
    grid_cols = cols[None, :].expand(carm.height, -1).reshape(-1)

    def per_pixel(origin: Tensor, du: Tensor, dv: Tensor) -> Tensor:  # (B, V, P, 3)
        return origin[..., None, :] + grid_cols[:, None] * du[..., None, :] + grid_rows[:, None] * dv[..., None, :]

    world_direction = per_pixel(center - source, u, v)
    source_index = to_index(source)
    index_direction = per_pixel(
        to_index(center) - source_index, (linear @ u.unsqueeze(-1)).squeeze(-1), (linear @ v.unsqueeze(-1)).squeeze(-1)
    )
    return _Rays(
        batch_shape=(out_batch, views),
        sample=sample[:, None].expand(out_batch, views).reshape(-1),  # (B*V,) volume of each view
        source=source_index.reshape(-1, 3),  # (B*V, 3)
        direction=index_direction.reshape(out_batch * views, -1, 3),  # (B*V, P, 3), source -> pixel
        length=world_direction.norm(dim=-1).reshape(out_batch * views, -1),  # (B*V, P) mm per unit t
        height=carm.height,
        width=carm.width,
        volume_batch=volume_batch,
    )


# ---------------------------------------------------------------------------
# Trilinear slice marching


def _trilinear(attenuation: Tensor, rays: _Rays, memory_budget: int) -> Tensor:
    views, pixels = rays.length.shape
    dominant = rays.direction.abs().argmax(-1)  # (B*V, P)
    uses_axis = F.one_hot(dominant, 3).amax(1).bool()  # (B*V, 3)
    uses_axis_host = uses_axis.to("cpu", non_blocking=False)
    image = attenuation.new_zeros(views, pixels)
    for axis in range(3):
        members = torch.nonzero(uses_axis_host[:, axis]).squeeze(1).to(attenuation.device)
        if members.numel() == 0:
            continue
        contribution = _march_axis(attenuation, rays, members, axis, dominant[members] == axis, memory_budget)
        image = image.index_add(0, members, contribution)
    return image


def _march_axis(
    attenuation: Tensor, rays: _Rays, members: Tensor, axis: int, is_dominant: Tensor, memory_budget: int
) -> Tensor:
    """Sum over the voxel planes normal to ``axis`` for the rays of views ``members``."""
    others = [a for a in range(3) if a != axis]
    slices = attenuation.permute(0, 1 + axis, 1 + others[0], 1 + others[1])  # (Bv, S, A, C), a strided view
    n_slices, size_a, size_c = slices.shape[1:]
    direction = rays.direction[members]  # (n, P, 3)
    source = rays.source[members]  # (n, 3)
    along = direction[..., axis]
    along = torch.where(is_dominant, along, torch.ones_like(along))  # other rays are weighted 0 below
    ratio = direction[..., others] / along[..., None]  # in-plane index change per slice, (n, P, 2)
    base = source[:, None, others] - source[:, None, axis, None] * ratio  # in-plane index at slice 0
    # grid_sample coordinates (align_corners=False): x -> last input dim (C), y -> (A).
    sizes = torch.tensor([size_a, size_c], dtype=base.dtype, device=base.device)
    grid_base = ((2 * base + 1) / sizes - 1).flip(-1).reshape(len(members), -1)  # (n, 2P)
    grid_step = (2 * ratio / sizes).flip(-1).reshape(len(members), -1)
    weight = rays.length[members] / along.abs() * is_dominant  # mm of ray per slice, (n, P)
    start = source[:, axis, None]
    end = start + direction[..., axis]
    low, high = torch.minimum(start, end), torch.maximum(start, end)  # slices inside [source, pixel]
    # A chunk needs no mask only when every ray's segment covers all of its slices.
    latest_start, earliest_end = torch.stack([low.amax(), high.amin()]).to("cpu").tolist()
    sample = rays.sample[members]
    shared_volume = rays.volume_batch == 1

    element = attenuation.element_size()
    per_slice = len(members) * (rays.length.shape[1] * (4 * element + 1) + (0 if shared_volume else size_a * size_c * element))
    chunk = int(max(1, min(n_slices, min(memory_budget, _CACHE_CHUNK_BYTES) // max(per_slice, 1))))
    use_checkpoint = torch.is_grad_enabled() and (attenuation.requires_grad or grid_base.requires_grad or grid_step.requires_grad)

    total = None
    for first in range(0, n_slices, chunk):
        last = min(n_slices, first + chunk)
        args = (slices, grid_base, grid_step, low, high, sample)
        masked = not (first >= latest_start and last - 1 <= earliest_end)
        kwargs = dict(first=first, last=last, height=rays.height, width=rays.width, shared_volume=shared_volume, masked=masked)
        if use_checkpoint:
            partial = checkpoint(_march_chunk, *args, use_reentrant=False, **kwargs)
        else:
            partial = _march_chunk(*args, **kwargs)
        total = partial if total is None else total + partial
    return total * weight


def _march_chunk(
    slices: Tensor,
    grid_base: Tensor,
    grid_step: Tensor,
    low: Tensor,
    high: Tensor,
    sample: Tensor,
    *,
    first: int,
    last: int,
    height: int,
    width: int,
    shared_volume: bool,
    masked: bool,
) -> Tensor:
    """Unweighted sum over slices ``first:last`` of the bilinear samples, ``(n, P)``."""
    views = grid_base.shape[0]
    index = torch.arange(first, last, device=slices.device, dtype=grid_base.dtype)
    count = last - first
    if shared_volume:
        # All rays sample the same slices: views are stacked along the output rows.
        grid = torch.addcmul(grid_base[None], index[:, None, None], grid_step[None])  # (c, n, 2P)
        grid = grid.view(count, views * height, width, 2)
        values = F.grid_sample(slices[0, first:last, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        values = values.view(count, views, height * width)
        if masked:
            outside = (index[:, None, None] < low[None]) | (index[:, None, None] > high[None])
            values = values.masked_fill(outside, 0.0)
        return values.sum(0)
    grid = torch.addcmul(grid_base[:, None], index[None, :, None], grid_step[:, None])  # (n, c, 2P)
    grid = grid.view(views * count, height, width, 2)
    inputs = slices[sample, first:last].reshape(views * count, 1, *slices.shape[2:])
    values = F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    values = values.view(views, count, height * width)
    if masked:
        outside = (index[None, :, None] < low[:, None]) | (index[None, :, None] > high[:, None])
        values = values.masked_fill(outside, 0.0)
    return values.sum(1)


# ---------------------------------------------------------------------------
# Siddon (exact for the nearest-voxel volume)


def _siddon(attenuation: Tensor, rays: _Rays, memory_budget: int) -> Tensor:
    volume_batch, *shape = attenuation.shape
    views, pixels = rays.length.shape
    dtype = attenuation.dtype
    sizes = torch.tensor(shape, device=attenuation.device, dtype=dtype)
    planes = [torch.arange(size + 1, device=attenuation.device, dtype=dtype) - 0.5 for size in shape]
    n_planes = sum(size + 1 for size in shape) + 2
    flat_volume = attenuation.reshape(-1)
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1], device=attenuation.device)
    numel = shape[0] * shape[1] * shape[2]

    sources = rays.source[:, None, :].expand(-1, pixels, -1).reshape(-1, 3)
    directions = rays.direction.reshape(-1, 3)
    lengths = rays.length.reshape(-1)
    volume_offset = (rays.sample * numel)[:, None].expand(-1, pixels).reshape(-1)
    per_ray = n_planes * (8 * attenuation.element_size() + 4 * 8)
    chunk = max(1, memory_budget // per_ray)
    pieces = []
    for first in range(0, sources.shape[0], chunk):
        sl = slice(first, first + chunk)
        source, direction = sources[sl], directions[sl]
        safe = torch.where(direction.abs() < 1e-12, torch.full_like(direction, 1e-12), direction)
        t_low = (-0.5 - source) / safe
        t_high = (sizes - 0.5 - source) / safe
        t_enter = torch.minimum(t_low, t_high).amax(-1).clamp_min(0.0)
        t_exit = torch.maximum(t_low, t_high).amin(-1).clamp_max(1.0)
        t_exit = torch.maximum(t_exit, t_enter)  # a ray that misses gets an empty interval
        crossings = [(planes[a][None, :] - source[:, a, None]) / safe[:, a, None] for a in range(3)]
        alphas = torch.cat([t_enter[:, None], t_exit[:, None], *crossings], -1)
        alphas = torch.minimum(torch.maximum(alphas, t_enter[:, None]), t_exit[:, None])
        alphas = torch.sort(alphas, dim=-1).values
        segment = alphas[:, 1:] - alphas[:, :-1]
        middle = 0.5 * (alphas[:, 1:] + alphas[:, :-1])
        position = source[:, None, :] + middle[..., None] * direction[:, None, :]
        voxel = torch.floor(position.detach() + 0.5).long()
        voxel = torch.minimum(voxel.clamp_min(0), (sizes.long() - 1))
        flat_index = (voxel * strides).sum(-1) + volume_offset[sl, None]
        values = flat_volume[flat_index]
        pieces.append((values * segment).sum(-1) * lengths[sl])
    return torch.cat(pieces).reshape(views, pixels)
