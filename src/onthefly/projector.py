"""Differentiable DRRs: line integrals of attenuation along every detector ray.

Two methods, both batched over samples and views, both differentiable with
respect to the attenuation volume and to the C-arm parameters:

``"trilinear"`` (default, fast)
    Each ray is sampled once per voxel plane along its dominant axis (the index
    axis its direction is most aligned with), at the points where it crosses
    the planes through voxel centres. There trilinear interpolation reduces to
    bilinear interpolation inside one slice (Joseph's method). The sum is
    weighted by the ray's length per slice. The step is exactly one voxel
    along the dominant axis and at most one voxel along the others. Samples
    outside the segment from source to pixel are dropped.

``"siddon"`` (exact, slow)
    The exact line integral of the piecewise-constant (nearest-voxel) volume:
    every crossing of the ray with a voxel face, each voxel weighted by its
    intersection length. The reference the benchmarks measure against.

Precision: every ray is anchored at its pixel, not at the source, and the
geometry of each view is prepared in float64, so float32 rendering stays
exact when the source is far away (up to the 1e5 mm bound of
:class:`~onthefly.geometry.CArm`).

Two execution paths give the same images:

* eager (the default): each volume's rays (those of all its views) are
  packed by dominant axis, and each chunk of slices is sampled for the rays
  of that axis by one ``grid_sample`` call per group of volumes: every ray is
  sampled once, along its own axis (rays that miss the volume's box are
  skipped: they are 0), and a slice is read once per volume, not once per
  view (memory under ``memory_budget``; under autograd, chunks are
  re-computed in the backward pass). Packing reads a few small tensors back
  to the host per call.
* traced (``compile=True``, or any ``torch.compile`` of a caller): every ray
  marches along its own axis in one fused kernel over a static number of
  slices, with masks instead of data-dependent sizes. No host reads, no graph
  breaks; Inductor fuses it into a single loop (C++ on the CPU, Triton on a GPU).

``render(..., compile=True)`` compiles once per input shape and method (the
compiled function is cached for the process); calls at fixed shapes do not
recompile.

:func:`render_channels` integrates ``C`` channels of one volume along the same
rays in the same pass (every bilinear sample reads all channels at once): the
per-material line integrals of :mod:`onthefly.physics`. Interpolation is
linear, so channel ``c`` equals a single-channel render of channel ``c``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ._checks import check_choice, check_finite, check_ndim, check_positive_int, check_tensor_kind
from .display import to_display  # noqa: F401  (re-exported: it was defined here)
from .geometry import CArm
from .volume import Volume, VolumeBatch, as_volume_batch

__all__ = ["render", "render_channels", "beer_lambert", "to_display", "METHODS"]

METHODS = ("trilinear", "siddon")
DEFAULT_MEMORY_BUDGET = 512 * 2**20
# Trilinear chunks aim at this working set: measured on a 2-core CPU, 16-32 MB
# chunks ran 2-3x faster than 512 MB ones (the grid and samples stay in cache).
_CACHE_CHUNK_BYTES = 24 * 2**20
# Traced Siddon: rays per chunk (a static loop; larger chunks keep the graph short).
_TRACED_SIDDON_RAYS = 1 << 16


def render(
    volume: Volume | Sequence[Volume] | VolumeBatch,
    carm: CArm,
    *,
    method: str = "trilinear",
    mu_water: float | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    compile: bool = False,
) -> Tensor:
    """Render DRRs: the line integral of attenuation from the source to every pixel.

    Args:
        volume: one :class:`Volume` (shared by all samples), a sequence of ``B``
            volumes, or a :class:`VolumeBatch` of ``B`` (or 1) volumes.
        carm: poses for ``(B, V)`` views (``B`` may be 1 to share poses).
        method: ``"trilinear"`` (fast) or ``"siddon"`` (exact reference).
        mu_water: attenuation of water in 1/mm, used when converting HU (default
            :data:`~onthefly.volume.MU_WATER_PER_MM`; a :class:`VolumeBatch` keeps its own).
        memory_budget: bytes of intermediate tensors per chunk (eager path).
        compile: run the traced path through ``torch.compile`` (compiled once
            per shape and method, then cached). The first call compiles (tens of
            seconds on a CPU); later calls at the same shapes reuse it.

    Returns:
        ``(B, V, 1, H, W)`` dimensionless line integrals ``sum(mu * length)``;
        ``exp(-x)`` is the transmitted fraction (:func:`beer_lambert`).

    Example:
        >>> vol = Volume.from_tensor(torch.zeros(16, 16, 16), spacing=2.0)
        >>> carm = CArm(alpha=torch.tensor([0.0, 1.57]), sid=500.0, sdd=800.0, height=32, pixel_spacing=2.0)
        >>> render(vol, carm).shape
        torch.Size([1, 2, 1, 32, 32])
    """
    _check_options(method, memory_budget, compile, carm)
    batch = as_volume_batch(volume, mu_water=mu_water)
    _check_batch_sizes(batch.batch_size, carm.batch_shape[0])
    core = _compiled_render() if compile else _render
    return core(batch.attenuation, batch.affine, carm, method, memory_budget)


def render_channels(
    values: Tensor,
    affine: Tensor,
    carm: CArm,
    *,
    method: str = "trilinear",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    compile: bool = False,
) -> Tensor:
    """Line integrals of ``C`` channels of each volume along every ray, in one pass.

    Args:
        values: ``(B, C, D, H, W)`` (or ``B = 1``, shared) floating voxel values in any unit per mm of path,
            e.g. partial densities (g/cm^3) of ``C`` materials; voxel ``(d, h, w)`` as in :class:`VolumeBatch`.
        affine: ``(B, 4, 4)`` voxel-to-world matrices (mm).
        carm, method, memory_budget, compile: as for :func:`render`.

    Returns:
        ``(B, V, C, H, W)``: ``sum(value * length in mm)`` per channel. Channel ``c`` equals
        ``render`` of a batch whose attenuation is ``values[:, c:c+1]`` (exactly for ``C = 1``).

    Example:
        >>> values = torch.rand(1, 3, 8, 8, 8)
        >>> affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))[None]
        >>> carm = CArm(alpha=0.0, sid=300.0, sdd=500.0, height=16, pixel_spacing=2.0, isocenter=(7.0, 7.0, 7.0))
        >>> render_channels(values, affine, carm).shape
        torch.Size([1, 1, 3, 16, 16])
    """
    _check_options(method, memory_budget, compile, carm)
    if not isinstance(values, Tensor) or not values.is_floating_point():
        raise TypeError(f"values: expected a floating tensor (B, C, D, H, W), got {values!r:.80}")
    check_tensor_kind("values", values)
    check_ndim("values", values, (5,), "(B, C, D, H, W)")
    if min(values.shape) < 1:
        raise ValueError(f"values: expected shape (B, C, D, H, W) with every size >= 1, got {tuple(values.shape)}")
    # Values and affines are read back to the host for their checks only in eager calls; a traced caller
    # (torch.compile) checked its inputs where they entered.
    checked = not torch.compiler.is_compiling()
    if checked:
        check_finite("values", values)
    batch = VolumeBatch(attenuation=values[:, :1], affine=affine, validate=checked)
    _check_batch_sizes(batch.batch_size, carm.batch_shape[0])
    core = _compiled_render() if compile else _render
    return core(values, batch.affine, carm, method, memory_budget)


def _check_options(method: str, memory_budget: int, compile: bool, carm: CArm) -> None:
    """The options :func:`render` and :func:`render_channels` share, checked on host values."""
    check_choice("method", method, METHODS)
    check_positive_int("memory_budget", memory_budget)
    if not isinstance(compile, bool):
        raise TypeError(f"compile: expected a bool, got {compile!r}")
    if not isinstance(carm, CArm):
        raise TypeError(f"carm: expected a CArm, got {type(carm).__name__}")


def beer_lambert(line_integrals: Tensor, *, incident: float = 1.0) -> Tensor:
    """Transmitted intensity ``incident * exp(-line_integrals)``, same shape."""
    return incident * torch.exp(-line_integrals)


def _check_batch_sizes(volume_batch: int, carm_batch: int) -> None:
    if volume_batch not in (1, carm_batch) and carm_batch != 1:
        raise ValueError(
            f"volume, carm: mismatched batch sizes, {volume_batch} volumes for {carm_batch} C-arm samples "
            "(expected equal sizes, or one of them 1)"
        )


_COMPILED: dict[str, object] = {}
# Inductor options for the traced hot path. By default Inductor writes out a pointwise result that is read
# more than 4 times or built from more than 30 operations; the traced renderer's per-sample positions, masks
# and indices are read by each of the four bilinear corners, so by default they became (slices x rays)
# buffers: 7.3 GB and 0.70 s per view for 8 views of the bundled CT at 256 x 256 on a 2-core CPU. With these
# thresholds raised they stay in registers (1.7 GB, 0.28 s per view). Indirect indices are in range by
# construction (masked with ``torch.where``), so their run-time bound checks are left out.
COMPILE_OPTIONS = {"realize_reads_threshold": 64, "realize_opcount_threshold": 1000, "assert_indirect_indexing": False}


def _compiled_render():
    """``torch.compile`` of :func:`_render` (fullgraph, static shapes), made once per process."""
    if "render" not in _COMPILED:
        _COMPILED["render"] = torch.compile(_render, fullgraph=True, dynamic=False, options=COMPILE_OPTIONS)
    return _COMPILED["render"]


def _render(attenuation: Tensor, affine: Tensor, carm: CArm, method: str, memory_budget: int) -> Tensor:
    """``(B, V, C, H, W)`` from ``(Bv, C, D, H, W)`` attenuation and ``(Bv, 4, 4)`` affines (checked inputs)."""
    rays = _prepare_rays(attenuation, affine, carm)
    traced = torch.compiler.is_compiling()
    if method == "trilinear":
        image = (_trilinear_traced_channels(attenuation, rays) if traced
                 else _trilinear_channels(attenuation, rays, memory_budget))
    else:
        image = _siddon_channels(attenuation, rays, _TRACED_SIDDON_RAYS if traced else None, memory_budget)
    b, v = rays.batch_shape
    channels = attenuation.shape[1]  # image: (C, B*V, P), channel-first
    image = image.reshape(channels, b, v, carm.height, carm.width).permute(1, 2, 0, 3, 4)
    return image.to(attenuation.dtype) if channels == 1 else image.contiguous().to(attenuation.dtype)


# ---------------------------------------------------------------------------
# Rays in voxel-index space


class _Rays:
    """Every ray of every view, in the voxel-index space of its own volume.

    ``target`` is the pixel (the ray's anchor), ``direction`` runs from the
    source to the pixel (the source is ``target - direction``), ``length`` is
    the world length of ``direction`` (mm).
    """

    def __init__(self, **fields) -> None:
        self.__dict__.update(fields)


def _prepare_rays(attenuation: Tensor, affine: Tensor, carm: CArm) -> _Rays:
    volume_batch = attenuation.shape[0]
    carm_batch, views = carm.batch_shape
    out_batch = max(volume_batch, carm_batch)
    device = attenuation.device
    dtype = torch.promote_types(attenuation.dtype, torch.float32)  # half-precision volumes: float32 geometry
    wide = carm.to(device=device, dtype=torch.float64)
    sample = torch.arange(out_batch, device=device) if volume_batch > 1 else torch.zeros(
        out_batch, dtype=torch.long, device=device
    )
    inverse = torch.linalg.inv(affine.to(device=device, dtype=torch.float64))[sample]  # (B, 4, 4)
    linear, offset = inverse[:, None, :3, :3], inverse[:, None, :3, 3]

    def expand(t: Tensor) -> Tensor:
        return t.expand(out_batch, *t.shape[1:])

    # Each view's detector as an affine map of the pixel coordinates: origin + row * step_row + col * step_col.
    corners = expand(wide.detector_points(torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])))
    origin, step_row, step_col = corners[..., 0, :], corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :]
    source = expand(wide.source_positions())

    def to_index(vectors: Tensor) -> Tensor:  # (B, V, 3) world vectors -> index vectors
        return (linear @ vectors.unsqueeze(-1)).squeeze(-1)

    origin_index = to_index(origin) + offset
    source_to_origin = origin - source
    rows = torch.arange(carm.height, device=device, dtype=dtype)[:, None].expand(-1, carm.width).reshape(-1)
    cols = torch.arange(carm.width, device=device, dtype=dtype)[None, :].expand(carm.height, -1).reshape(-1)

    def per_pixel(base: Tensor, along_row: Tensor, along_col: Tensor) -> Tensor:  # (B, V, P, 3)
        base, along_row, along_col = (t.to(dtype)[..., None, :] for t in (base, along_row, along_col))
        return base + rows[:, None] * along_row + cols[:, None] * along_col

    world_direction = per_pixel(source_to_origin, step_row, step_col)
    return _Rays(
        batch_shape=(out_batch, views),
        sample=sample[:, None].expand(out_batch, views).reshape(-1),  # (B*V,) volume of each view
        target=per_pixel(origin_index, to_index(step_row), to_index(step_col)).reshape(out_batch * views, -1, 3),
        direction=per_pixel(to_index(source_to_origin), to_index(step_row), to_index(step_col)).reshape(
            out_batch * views, -1, 3
        ),
        length=world_direction.norm(dim=-1).reshape(out_batch * views, -1),  # (B*V, P) mm per unit t
        height=carm.height,
        width=carm.width,
        volume_batch=volume_batch,
    )


def _slice_geometry(target: Tensor, direction: Tensor, axis, others) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Where rays cross the planes normal to ``axis``: in-plane index at slice 0, its change per slice,
    and the slice range ``[low, high]`` of the source->pixel segment.

    ``axis`` and ``others`` index the last dimension (ints, or index tensors for per-ray axes).
    """
    along = _take(direction, axis)
    ratio = _take(direction, others) / along[..., None]
    base = _take(target, others) - _take(target, axis)[..., None] * ratio  # anchored at the pixel
    end = _take(target, axis)
    start = end - along
    return base, ratio, torch.minimum(start, end), torch.maximum(start, end)


def _take(t: Tensor, index) -> Tensor:
    if isinstance(index, Tensor):
        return t.gather(-1, index) if index.dim() == t.dim() else t.gather(-1, index[..., None])[..., 0]
    if isinstance(index, int):
        return t[..., index]
    return t[..., list(index)]


# ---------------------------------------------------------------------------
# Trilinear, eager: rays grouped by dominant axis, slices sampled by grid_sample


def _trilinear(attenuation: Tensor, rays: _Rays, memory_budget: int) -> Tensor:
    """``(B*V, P)`` from one channel ``(Bv, D, H, W)``."""
    return _trilinear_channels(attenuation[:, None], rays, memory_budget)[0]


def _trilinear_channels(attenuation: Tensor, rays: _Rays, memory_budget: int) -> Tensor:
    """``(C, B*V, P)`` from ``(Bv, C, D, H, W)``."""
    views, pixels = rays.length.shape
    channels = attenuation.shape[1]
    # Rays are marched per volume: row u holds the rays of every view of volume u (one row when the volume
    # is shared), so each slice chunk is read once per volume, not once per view.
    volumes = 1 if rays.volume_batch == 1 else rays.batch_shape[0]
    per_row = views * pixels // volumes
    # Each ray's dominant axis; 3 for a ray that meets no voxel (it would only sample zero padding).
    dominant = torch.where(_meets_volume(rays, attenuation.shape[2:]), rays.direction.abs().argmax(-1), 3)
    dominant = dominant.reshape(volumes, per_row)
    counts = F.one_hot(dominant, 4)[..., :3].sum(1).cpu()  # (volumes, 3) rays per volume and axis, host read
    image = rays.length.new_zeros(channels, views * pixels)
    for axis in range(3):
        for rows in _row_groups(counts[:, axis]):
            width = int(counts[rows, axis].max())
            rows = rows.to(attenuation.device)
            is_dominant = dominant[rows] == axis  # (g, L)
            if width == per_row:
                order, valid = torch.arange(per_row, device=rows.device).expand(len(rows), -1), is_dominant
            elif len(rows) == 1:
                order = torch.nonzero(is_dominant[0]).reshape(1, -1)
                valid = torch.ones_like(order, dtype=torch.bool)
            else:  # each row's rays on this axis first (pixel order kept), padded to the group's largest count
                order = torch.argsort((~is_dominant).to(torch.uint8), dim=1, stable=True)[:, :width]
                valid = is_dominant.gather(1, order)
            index = rows[:, None] * per_row + order
            contribution = _march_axis(attenuation, rays, index, valid, rows, axis, memory_budget)
            image = image.index_add(1, index.reshape(-1), contribution.reshape(channels, -1))
    return image.reshape(channels, views, pixels)


def _meets_volume(rays: _Rays, shape: Sequence[int]) -> Tensor:
    """``(B*V, P)``: whether each ray's source->pixel segment meets the box ``[-1, n]`` of every index axis,
    the only place where a bilinear sample of the volume can be non-zero (slab test, a little generous)."""
    source = rays.target - rays.direction
    tiny = torch.where(rays.direction < 0, -1e-12, 1e-12)
    direction = torch.where(rays.direction.abs() < 1e-12, tiny, rays.direction)
    size = torch.tensor(shape, dtype=source.dtype, device=source.device)
    first, second = (-1.0 - source) / direction, (size - source) / direction
    enter = torch.minimum(first, second).amax(-1).clamp_min(0.0)
    leave = torch.maximum(first, second).amin(-1).clamp_max(1.0)
    return enter <= leave + 1e-3


def _row_groups(counts: Tensor) -> list[Tensor]:
    """Rows ``(g,)`` to march together along one axis, from each row's count of rays dominant on it.

    Every ray is sampled once, along its dominant axis; a group pads its rows to
    its largest count, so rows are grouped by count (each at least 3/4 of its
    group's largest).
    """
    used = torch.nonzero(counts).reshape(-1)
    order = used[torch.argsort(counts[used], descending=True, stable=True)].tolist()
    groups, current, largest = [], [], 0
    for row in order:
        count = int(counts[row])
        if current and count < 0.75 * largest:
            groups.append(torch.tensor(current))
            current = []
        if not current:
            largest = count
        current.append(row)
    if current:
        groups.append(torch.tensor(current))
    return groups


def _march_axis(
    attenuation: Tensor, rays: _Rays, index: Tensor, valid: Tensor, sample: Tensor, axis: int, memory_budget: int
) -> Tensor:
    """Sum over the voxel planes normal to ``axis`` for the rays ``index (g, w)`` (flat ray indices; row
    ``i`` samples volume ``sample[i]``), ``(channels, g, w)``; rays where ``valid`` is false are padding, weighted 0."""
    others = [a for a in range(3) if a != axis]
    channels = attenuation.shape[1]
    slices = attenuation.permute(0, 2 + axis, 1, 2 + others[0], 2 + others[1])  # (Bv, S, channels, A, C), strided
    n_slices, _, size_a, size_c = slices.shape[1:]
    rows, width = index.shape
    target, direction = rays.target.reshape(-1, 3)[index], rays.direction.reshape(-1, 3)[index]
    direction = torch.where(valid[..., None], direction, 1.0)
    base, ratio, low, high = _slice_geometry(target, direction, axis, others)
    low = torch.where(valid, low, 0.0)  # padding never calls for a mask
    high = torch.where(valid, high, float(n_slices))
    # grid_sample coordinates (align_corners=False): x -> last input dim (C), y -> (A).
    sizes = torch.tensor([size_a, size_c], dtype=base.dtype, device=base.device)
    grid_base = ((2 * base + 1) / sizes - 1).flip(-1).reshape(rows, -1)  # (g, 2w)
    grid_step = (2 * ratio / sizes).flip(-1).reshape(rows, -1)
    weight = rays.length.reshape(-1)[index] / direction[..., axis].abs() * valid  # mm of ray per slice, (g, w)
    # A chunk needs no mask only when every ray's segment covers all of its slices (host read).
    latest_start, earliest_end = torch.stack([low.amax(), high.amin()]).clamp(-1, n_slices).cpu().tolist()
    shared_volume = rays.volume_batch == 1

    element = rays.length.element_size()
    per_slice = rows * (width * ((3 + channels) * element + 1)
                        + (0 if shared_volume else channels * size_a * size_c * element))
    chunk = int(max(1, min(n_slices, min(memory_budget, _CACHE_CHUNK_BYTES) // max(per_slice, 1))))
    use_checkpoint = torch.is_grad_enabled() and (attenuation.requires_grad or grid_base.requires_grad or grid_step.requires_grad)

    total = None
    for first in range(0, n_slices, chunk):
        last = min(n_slices, first + chunk)
        args = (slices, grid_base, grid_step, low, high, sample)
        masked = not (first >= latest_start and last - 1 <= earliest_end)
        kwargs = dict(first=first, last=last, height=1, width=width, shared_volume=shared_volume, masked=masked)
        if use_checkpoint:
            partial = checkpoint(_march_chunk, *args, use_reentrant=False, **kwargs)
        else:
            partial = _march_chunk(*args, **kwargs)
        if total is None:
            total = partial
        elif use_checkpoint:
            total = total + partial
        else:
            total.add_(partial)
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
    """Unweighted sum over slices ``first:last`` of the bilinear samples, ``(channels, n, P)``."""
    views = grid_base.shape[0]
    index = torch.arange(first, last, device=slices.device, dtype=grid_base.dtype)
    count = last - first
    if shared_volume:
        # All rays sample the same slices: views are stacked along the output rows.
        grid = torch.addcmul(grid_base[None], index[:, None, None], grid_step[None])  # (c, n, 2P)
        grid = grid.view(count, views * height, width, 2)
        inputs = slices[0, first:last].to(grid.dtype)  # half-precision slices are sampled in float32
        values = F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        values = values.view(count, -1, views, height * width)
        if masked:
            outside = (index[:, None, None] < low[None]) | (index[:, None, None] > high[None])
            values = values.masked_fill(outside[:, None], 0.0)
        return values[0] if count == 1 else values.sum(0)
    grid = torch.addcmul(grid_base[:, None], index[None, :, None], grid_step[:, None])  # (n, c, 2P)
    grid = grid.view(views * count, height, width, 2)
    inputs = slices[sample, first:last].reshape(views * count, *slices.shape[2:]).to(grid.dtype)
    values = F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    values = values.view(views, count, -1, height * width)
    if masked:
        outside = (index[None, :, None] < low[:, None]) | (index[None, :, None] > high[:, None])
        values = values.masked_fill(outside[:, :, None], 0.0)
    return (values[:, 0] if count == 1 else values.sum(1)).transpose(0, 1)


# ---------------------------------------------------------------------------
# Trilinear, traced: every ray along its own axis, static slice count, one fused loop

# Row ``a``: the dominant axis ``a`` first, then the two others in increasing order.
_AXIS_ORDERS = ((0, 1, 2), (1, 0, 2), (2, 0, 1))


def _trilinear_traced(attenuation: Tensor, rays: _Rays) -> Tensor:
    """``(B*V, P)`` from one channel ``(Bv, D, H, W)``: :func:`_trilinear_traced_channels`."""
    return _trilinear_traced_channels(attenuation[:, None], rays)[0]


def _trilinear_traced_channels(attenuation: Tensor, rays: _Rays) -> Tensor:
    """``(C, B*V, P)`` from ``(Bv, C, D, H, W)``: the samples of :func:`_trilinear`, with static shapes.

    The sum runs over ``max(D, H, W)`` slices for every ray (slices outside the
    ray's axis, volume or segment are masked), slice-major so that neighbouring
    rays read neighbouring voxels; Inductor fuses it into one loop without
    materialising the ``(slices, rays)`` samples.
    """
    _, channels, *shape = attenuation.shape
    views, pixels = rays.length.shape
    device, dtype = attenuation.device, rays.length.dtype
    orders = torch.tensor(_AXIS_ORDERS, device=device)[rays.direction.abs().argmax(-1)].reshape(-1, 3)  # (R, 3)
    target, direction = rays.target.reshape(-1, 3), rays.direction.reshape(-1, 3)
    base, ratio, low, high = _slice_geometry(target, direction, orders[:, 0], orders[:, 1:])
    weight = rays.length.reshape(-1) / _take(direction, orders[:, 0]).abs()
    index_dtype = torch.int32 if attenuation.numel() < 2**31 else torch.int64
    sizes = torch.tensor(shape, device=device)[orders]  # (R, 3) slice count, then the two in-plane sizes
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1], device=device)[orders].to(index_dtype)
    volume_offset = (rays.sample * (shape[0] * shape[1] * shape[2]))[:, None].expand(-1, pixels).reshape(-1)
    flat = attenuation.transpose(0, 1).reshape(channels, -1)  # channel-first (a view for one channel)

    base_b, base_c = base.unbind(-1)
    ratio_b, ratio_c = ratio.unbind(-1)
    size_a, size_b, size_c = sizes.unbind(-1)
    stride_a, stride_b, stride_c = strides.unbind(-1)
    slice_index = torch.arange(max(shape), device=device, dtype=dtype)[:, None]  # (S, 1): rays along dim 1
    inside = (slice_index >= low) & (slice_index <= high) & (slice_index < size_a)
    position_b = base_b + slice_index * ratio_b  # (S, R), in-plane index along the two other axes
    position_c = base_c + slice_index * ratio_c
    lower_b, lower_c = torch.floor(position_b), torch.floor(position_c)
    fraction_b, fraction_c = position_b - lower_b, position_c - lower_c
    lower_b, lower_c = lower_b.to(index_dtype), lower_c.to(index_dtype)
    row = volume_offset.to(index_dtype) + slice_index.to(index_dtype) * stride_a
    samples = None
    for step_b in (0, 1):
        for step_c in (0, 1):
            b, c = lower_b + step_b, lower_c + step_c
            valid = inside & (b >= 0) & (b < size_b) & (c >= 0) & (c < size_c)
            index = torch.where(valid, row + b * stride_b + c * stride_c, 0)
            corner = (fraction_b if step_b else 1 - fraction_b) * (fraction_c if step_c else 1 - fraction_c)
            value = torch.where(valid, flat[:, index].to(dtype), 0.0) * corner
            samples = value if samples is None else samples + value
    return (samples.sum(1) * weight).reshape(channels, views, pixels)


# ---------------------------------------------------------------------------
# Siddon (exact for the nearest-voxel volume)


def _siddon(attenuation: Tensor, rays: _Rays, traced_chunk: int | None, memory_budget: int) -> Tensor:
    """``(B*V, P)`` from one channel ``(Bv, D, H, W)``: :func:`_siddon_channels`."""
    return _siddon_channels(attenuation[:, None], rays, traced_chunk, memory_budget)[0]


def _siddon_channels(attenuation: Tensor, rays: _Rays, traced_chunk: int | None, memory_budget: int) -> Tensor:
    """Exact line integrals of the nearest-voxel volume, ``(C, B*V, P)`` from ``(Bv, C, D, H, W)``.

    Each ray is parametrised by the distance (in index units) walked from its
    pixel towards the source, so the plane crossings are volume-sized numbers
    whatever the source distance.
    """
    volume_batch, channels, *shape = attenuation.shape
    views, pixels = rays.length.shape
    device, dtype = attenuation.device, rays.length.dtype
    sizes = torch.tensor(shape, device=device, dtype=dtype)
    planes = [torch.arange(size + 1, device=device, dtype=dtype) - 0.5 for size in shape]
    n_planes = sum(size + 1 for size in shape) + 2
    flat_volume = attenuation.transpose(0, 1).reshape(channels, -1)  # channel-first
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1], device=device)
    numel = shape[0] * shape[1] * shape[2]

    targets = rays.target.reshape(-1, 3)
    reach = rays.direction.norm(dim=-1).reshape(-1)  # index units from pixel to source
    unit = -rays.direction.reshape(-1, 3) / reach[:, None].clamp_min(1e-30)  # pixel -> source
    mm_per_unit = rays.length.reshape(-1) / reach.clamp_min(1e-30)
    volume_offset = (rays.sample * numel)[:, None].expand(-1, pixels).reshape(-1)
    per_ray = n_planes * ((7 + channels) * attenuation.element_size() + 4 * 8)
    chunk = traced_chunk if traced_chunk is not None else max(1, memory_budget // per_ray)
    pieces = []
    for first in range(0, targets.shape[0], chunk):
        sl = slice(first, first + chunk)
        target, step, limit = targets[sl], unit[sl], reach[sl]
        safe = torch.where(step.abs() < 1e-12, torch.full_like(step, 1e-12), step)
        t_low = (-0.5 - target) / safe
        t_high = (sizes - 0.5 - target) / safe
        t_enter = torch.minimum(t_low, t_high).amax(-1).clamp_min(0.0)
        t_exit = torch.minimum(torch.maximum(t_low, t_high).amin(-1), limit)
        t_exit = torch.maximum(t_exit, t_enter)  # a ray that misses gets an empty interval
        crossings = [(planes[a][None, :] - target[:, a, None]) / safe[:, a, None] for a in range(3)]
        alphas = torch.cat([t_enter[:, None], t_exit[:, None], *crossings], -1)
        alphas = torch.minimum(torch.maximum(alphas, t_enter[:, None]), t_exit[:, None])
        alphas = torch.sort(alphas, dim=-1).values
        segment = alphas[:, 1:] - alphas[:, :-1]
        middle = 0.5 * (alphas[:, 1:] + alphas[:, :-1])
        position = target[:, None, :] + middle[..., None] * step[:, None, :]
        voxel = torch.floor(position.detach() + 0.5).long()
        voxel = torch.minimum(voxel.clamp_min(0), (sizes.long() - 1))
        flat_index = (voxel * strides).sum(-1) + volume_offset[sl, None]
        values = flat_volume[:, flat_index].to(dtype)
        pieces.append((values * segment).sum(-1) * mm_per_unit[sl])
    return torch.cat(pieces, dim=-1).reshape(channels, views, pixels)
