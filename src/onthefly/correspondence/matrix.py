"""The patch correspondence matrix (steps 3-4): footprints of the coarse voxels, scattered as maxima of products.

``C[a*N+i, b*N+j] = max_v w_v p_a^v[i] p_b^v[j]``, computed in chunks of coarse
voxels under a memory budget, eagerly or through ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import MAX_LENGTH_MM, MIN_LENGTH_MM, check_choice, check_int, check_positive_int, check_real
from ..footprints import FOOTPRINTS, footprint_bytes_per_voxel, footprint_window, voxel_footprints
from ..geometry import CArm
from ..volume import Volume, VolumeBatch
from .pooling import pool_weights
from .weights import WEIGHTINGS, CoarseWeights

__all__ = ["patch_correspondence", "default_memory_budget", "default_rays_per_patch", "DEFAULT_MEMORY_BUDGET",
           "DEVICE_MEMORY_BUDGET"]

DEFAULT_MEMORY_BUDGET = 64 * 2**20  # measured fastest on a 2-core CPU (larger chunks leave the cache)
# On an accelerator each chunk costs a few hundred kernel launches and host reads: fewer, larger chunks.
DEVICE_MEMORY_BUDGET = 512 * 2**20


def patch_correspondence(
    volume: Volume | Sequence[Volume] | VolumeBatch | CoarseWeights,
    carm: CArm,
    *,
    patch_size: int = 16,
    weighting: str = "soft",
    air_threshold_hu: float = -900.0,
    coarse_voxel_size: float | None = None,
    rays_per_patch: int | None = None,
    mu_water: float | None = None,
    memory_budget: int | None = None,
    window: int | None = None,
    compile: bool = False,
    footprint: str = "exact",
) -> Tensor:
    """Patch correspondence matrices between all views of each sample.

    Args:
        volume: one :class:`Volume` (shared), ``B`` volumes, a :class:`VolumeBatch`,
            or weights already pooled (:class:`CoarseWeights`, from :func:`pool_weights`
            or :meth:`WeightIntegral.pool`; then ``weighting``, ``air_threshold_hu``
            and ``coarse_voxel_size`` are those it was pooled with).
        carm: the cameras that render the views, batch ``(B, V)``.
        patch_size: patch edge ``k`` in pixels; must divide the detector height and width.
        weighting: ``"soft"`` or ``"binary"`` voxel weights.
        air_threshold_hu: voxels at or below this HU are air (weight 0).
        coarse_voxel_size: coarse voxel edge in mm (default: ``k dx sid / sdd``,
            the smallest over each sample's views), at most the volume's extent.
        rays_per_patch: ``None`` (default) for closed-form footprints (``footprint``);
            an int ``m`` samples ``m x m`` rays per patch instead, an
            approximation (see :mod:`onthefly.footprints` for its error).
        mu_water: attenuation of water (1/mm) to read HU back from attenuation
            (default :data:`~onthefly.volume.MU_WATER_PER_MM`; a batch keeps its own).
        memory_budget: bytes of intermediate tensors per voxel chunk; a call
            that would need more for a single coarse voxel is refused. Default:
            :data:`DEFAULT_MEMORY_BUDGET` (64 MiB, cache-sized) on the CPU,
            :data:`DEVICE_MEMORY_BUDGET` (512 MiB) on an accelerator.
        window: patches per side of the window kept around each coarse voxel's
            shadow, a host int (:func:`~onthefly.footprints.footprint_window`;
            default: computed here, which reads the cameras and the coarse grid's
            affines back when they live on a device). Smaller values cut shadows short.
        compile: run the computation through ``torch.compile`` (compiled once
            per shape, then cached; every coarse voxel is processed, air too).
            When a caller is being compiled (a whole training step), the call
            takes the traced path by itself, with no graph break, given pooled
            weights (:class:`CoarseWeights`) and ``window``, both host work done
            once outside the compiled code (pooling reads the volumes' spacings and
            the window reads the cameras; given volumes or no window, the caller's
            graph breaks there).
        footprint: ``"exact"`` (default) or ``"separable"``, the product of the
            exact footprint's row and column marginals: about half the time, IoU
            0.99 at ``C >= 0.5`` against many rays on crops of the bundled CT
            (:mod:`onthefly.footprints`). Only with ``rays_per_patch=None``.

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
    air_threshold_hu = check_real("air_threshold_hu", air_threshold_hu, unit="HU")
    if memory_budget is not None:
        check_positive_int("memory_budget", memory_budget)
    if carm.height % patch_size or carm.width % patch_size:
        raise ValueError(
            f"patch_size: expected a divisor of the detector size {carm.height} x {carm.width}, got {patch_size}"
        )
    if coarse_voxel_size is not None:
        check_real("coarse_voxel_size", coarse_voxel_size, low=MIN_LENGTH_MM, high=MAX_LENGTH_MM, unit="mm")
    check_choice("footprint", footprint, FOOTPRINTS)
    if rays_per_patch is not None:
        rays_per_patch = check_positive_int("rays_per_patch", rays_per_patch)
        if footprint != "exact":
            raise ValueError(f"rays_per_patch, footprint: sampled footprints (rays_per_patch={rays_per_patch}) "
                             f"cannot be {footprint!r}; give one of the two")
    if window is not None:
        window = check_int("window", window, minimum=1)
    if not isinstance(compile, bool):
        raise TypeError(f"compile: expected a bool, got {compile!r}")
    coarse = _coarse_weights(volume, carm, patch_size, weighting, air_threshold_hu, coarse_voxel_size, mu_water)
    views = carm.batch_shape[1]
    if window is None:
        window = footprint_window(carm, coarse.affine, tuple(coarse.weight.shape[1:]), patch_size)
    if memory_budget is None:
        memory_budget = default_memory_budget(coarse.device)
    chunk = _voxel_chunk(views, window, rays_per_patch, memory_budget)
    carm = carm.to(device=coarse.device, dtype=torch.float32)
    core = _compiled_correspondence() if compile else _correspondence
    return core(coarse.weight, coarse.affine, carm, patch_size, window, rays_per_patch, chunk, footprint)


def _coarse_weights(volume, carm: CArm, patch_size: int, weighting: str, air_threshold_hu: float,
                    coarse_voxel_size: float | None, mu_water: float | None) -> CoarseWeights:
    """Pooled weights for ``(max(B_volume, B_carm))`` samples, from volumes (cached) or as given."""
    carm_batch, views = carm.batch_shape
    if isinstance(volume, CoarseWeights):
        _check_batches(volume.batch_size, carm_batch)
        out_batch = max(volume.batch_size, carm_batch)
        if volume.batch_size == out_batch:
            return volume
        return CoarseWeights(weight=volume.weight.expand(out_batch, -1, -1, -1),
                             affine=volume.affine.expand(out_batch, -1, -1), voxel_size=volume.voxel_size.expand(out_batch))
    volume_batch = volume.batch_size if isinstance(volume, VolumeBatch) else (
        len(volume) if isinstance(volume, (list, tuple)) else 1)
    _check_batches(volume_batch, carm_batch)
    out_batch = max(volume_batch, carm_batch)
    if coarse_voxel_size is None:  # one patch back-projected to the isocenter (reads the cameras back)
        backprojected = (patch_size * carm.pixel_spacing * carm.sid / carm.sdd).expand(out_batch, views)
        edge = backprojected.amin(1).to("cpu", torch.float64)
    else:
        edge = torch.full((out_batch,), float(coarse_voxel_size), dtype=torch.float64)
    return pool_weights(volume, edge, weighting=weighting, air_threshold_hu=air_threshold_hu, mu_water=mu_water,
                        batch_size=out_batch)


def _check_batches(volume_batch: int, carm_batch: int) -> None:
    if volume_batch not in (1, carm_batch) and carm_batch != 1:
        raise ValueError(
            f"volume, carm: mismatched batch sizes, {volume_batch} volumes for {carm_batch} C-arm samples "
            "(expected equal sizes, or one of them 1)"
        )


def default_memory_budget(device: torch.device | str) -> int:
    """Bytes per voxel chunk of :func:`patch_correspondence` by default: cache-sized on the CPU, larger on an
    accelerator (where each chunk costs kernel launches and host reads, not cache misses)."""
    return DEFAULT_MEMORY_BUDGET if torch.device(device).type == "cpu" else DEVICE_MEMORY_BUDGET


def _voxel_chunk(views: int, window: int, rays_per_patch: int | None, memory_budget: int) -> int:
    """Coarse voxels per chunk under ``memory_budget``; refuses when one voxel alone exceeds it."""
    entries = views * window * window
    per_voxel = footprint_bytes_per_voxel(views, window, rays_per_patch) + 16 * entries * entries
    if per_voxel > memory_budget:
        sampled = f"rays_per_patch={rays_per_patch} rays per patch side, " if rays_per_patch is not None else ""
        raise ValueError(
            f"rays_per_patch, coarse_voxel_size, memory_budget: one coarse voxel needs about {per_voxel:.3g} bytes "
            f"({sampled}a window of {window} x {window} patches in {views} views), more than memory_budget = "
            f"{memory_budget} bytes; use fewer rays per patch (or exact footprints, rays_per_patch=None), a smaller "
            "coarse_voxel_size, or a larger memory_budget"
        )
    return max(1, memory_budget // per_voxel)


_COMPILED: dict[str, object] = {}
_TRACED_CHUNKS = 2  # at most this many voxel chunks under torch.compile


def _compiled_correspondence():
    """``torch.compile`` of :func:`_correspondence` (fullgraph, static shapes), made once per process."""
    if "correspondence" not in _COMPILED:
        _COMPILED["correspondence"] = torch.compile(_correspondence, fullgraph=True, dynamic=False)
    return _COMPILED["correspondence"]


def _correspondence(weight: Tensor, affine: Tensor, carm: CArm, patch_size: int, window: int,
                    rays_per_patch: int | None, chunk: int, footprint: str = "exact") -> Tensor:
    """``(B, V*N, V*N)`` from pooled weights ``(B, d, h, w)``, their affines ``(B, 4, 4)`` and float32 cameras."""
    batch = weight.shape[0]
    views = carm.batch_shape[1]
    n_patches = (carm.height // patch_size) * (carm.width // patch_size)
    tokens = views * n_patches
    traced = torch.compiler.is_compiling()
    sample, voxel_weight, centre = _coarse_voxels(weight, affine, compact=not traced)
    edges = affine.to(torch.float64)[:, :3, :3]  # (B, 3, 3): every voxel of a grid has its grid's edges
    if traced:  # the chunk loop is unrolled into the graph: keep it short (fused kernels need less memory)
        chunk = max(chunk, -(-sample.shape[0] // _TRACED_CHUNKS))
    camera = sample if carm.batch_shape[0] > 1 else torch.zeros_like(sample)
    result = torch.zeros(batch * tokens * tokens, device=weight.device)
    for first in range(0, sample.shape[0], chunk):
        part = slice(first, first + chunk)
        values, patches = voxel_footprints(centre[part], edges, camera[part], carm, patch_size=patch_size,
                                           window=window, rays_per_patch=rays_per_patch, edge_index=sample[part],
                                           footprint=footprint)
        _scatter_outer_max(result, sample[part], voxel_weight[part], values, patches, views, n_patches)
    return result.view(batch, tokens, tokens)


def default_rays_per_patch(backprojected: Tensor, voxel_size: Tensor, patch_size: int) -> int:
    """About two rays per coarse voxel edge at the isocenter, at least 2, at most ``patch_size``.

    The sampled footprints' former default, kept for callers that choose
    ``rays_per_patch`` themselves (the default is now exact footprints).
    ``backprojected`` and ``voxel_size`` are ``(B,)`` host tensors (mm): the
    patch back-projected to the isocenter and the coarse voxel edge per sample.
    """
    ratio = float((2 * backprojected / voxel_size).amax())
    return int(min(patch_size, max(2, round(ratio))))


def _coarse_voxels(weight: Tensor, affine: Tensor, *, compact: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Coarse voxels as flat tensors: sample index, weight and world centre ``(n, 3)`` (float64).

    ``compact`` keeps only non-air voxels (a host read of their count); otherwise all of them, in order.
    """
    batch, *grid = weight.shape
    if compact:
        occupied = torch.nonzero(weight > 0)  # (n, 4): sample, i, j, k
        sample, index = occupied[:, 0], occupied[:, 1:]
    else:
        grid_index = torch.stack(torch.meshgrid(*[torch.arange(n, device=weight.device) for n in grid], indexing="ij"), -1)
        index = grid_index.reshape(1, -1, 3).expand(batch, -1, -1).reshape(-1, 3)
        sample = torch.arange(batch, device=weight.device).repeat_interleave(grid[0] * grid[1] * grid[2])
    voxel_weight = weight[sample, index[:, 0], index[:, 1], index[:, 2]]
    voxel_affine = affine.to(torch.float64)[sample]
    centre = (voxel_affine[:, :3, :3] @ index.to(torch.float64)[..., None])[..., 0] + voxel_affine[:, :3, 3]
    return sample, voxel_weight, centre


def _scatter_outer_max(
    result: Tensor, sample: Tensor, weight: Tensor, values: Tensor, patches: Tensor, views: int, n_patches: int
) -> None:
    """``result.flat[b, a*N+i, c*N+j] = max(., w * p_a[i] * p_c[j])`` for all view pairs, in place.

    Eagerly, voxels whose footprint covers at most :data:`_FEW_PATCHES` patches
    in every view (most of them) scatter just those (a third of the products).
    """
    if not torch.compiler.is_compiling() and values.shape[-1] > _FEW_PATCHES and values.shape[0]:
        few = ((values > 0).sum(-1) <= _FEW_PATCHES).all(-1)  # (n,)
        many = torch.nonzero(~few)[:, 0]
        if len(many) < values.shape[0]:
            keep = torch.nonzero(few)[:, 0]
            position = values[keep].topk(_FEW_PATCHES, dim=-1).indices
            _scatter_products(result, sample[keep], weight[keep], values[keep].gather(-1, position),
                              patches[keep].gather(-1, position), views, n_patches)
            sample, weight, values, patches = sample[many], weight[many], values[many], patches[many]
    _scatter_products(result, sample, weight, values, patches, views, n_patches)


_FEW_PATCHES = 4  # a coarse voxel's shadow usually covers at most 2 x 2 patches of a view


def _scatter_products(result: Tensor, sample: Tensor, weight: Tensor, values: Tensor, patches: Tensor, views: int,
                      n_patches: int) -> None:
    """The scatter of :func:`_scatter_outer_max` for ``values, patches (n, V, E)``."""
    tokens = views * n_patches
    entries = views * values.shape[-1]
    view_offset = torch.arange(views, device=values.device)[None, :, None] * n_patches
    flat_token = (patches + view_offset).reshape(patches.shape[0], entries)  # (n, V*E)
    flat_value = values.reshape(values.shape[0], entries)
    products = weight[:, None, None] * flat_value[:, :, None] * flat_value[:, None, :]  # (n, VE, VE)
    index = sample[:, None, None] * (tokens * tokens) + flat_token[:, :, None] * tokens + flat_token[:, None, :]
    result.scatter_reduce_(0, index.reshape(-1), products.reshape(-1).to(result.dtype), reduce="amax", include_self=True)
