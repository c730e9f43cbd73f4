"""Patch-level many-to-many correspondence matrices between views.

Definition (the README's "The correspondence matrix"): for an ``H x W`` view and
patch size ``k`` there are ``N = (H/k)(W/k)`` patches, row-major; tokens of all
views are concatenated view-major, token ``a*N + i`` is patch ``i`` of view ``a``.

1. Weight every voxel: 0 for air (``HU <= air_threshold_hu``, default -900),
   else ``sigmoid(0.005 (HU + 150))`` (``weighting="soft"``) or 1 (``"binary"``).
2. Average-pool the weights onto a coarse grid; the default coarse voxel edge
   is one patch back-projected to the isocenter, ``k dx sid / sdd``, the
   smallest over the sample's views.
3. Footprint ``p_a^v[i]`` of coarse voxel ``v`` in view ``a``: the integral
   over patch ``i`` of the length (mm) of the rays inside the voxel's box,
   normalised so that ``max_i p_a^v[i] = 1``. Exact by default (closed form,
   :mod:`onthefly.footprints`); ``footprint="separable"`` approximates it by
   the product of its exact row and column marginals (about half the time);
   ``rays_per_patch=m`` samples ``m x m`` rays per patch instead (an
   approximation).
4. ``C[a*N+i, b*N+j] = max_v w_v p_a^v[i] p_b^v[j]`` for all view pairs.

The cameras are the rendering cameras (:class:`~onthefly.geometry.CArm`).

Computation: a coarse voxel's shadow covers a few patches per view, so each
voxel keeps the ``K x K`` window of patches around its shadow (``K`` is a
host integer that bounds every shadow, :func:`~onthefly.footprints.footprint_window`),
and the outer products of its entries for every view pair are scattered into
``C`` with ``scatter_reduce(..., "amax")``, batched over samples, views and
voxels. Not differentiable (runs under ``torch.no_grad``).

Host reads and static shapes: the eager path drops air voxels first (one
host read of their count). Under ``torch.compile`` (``compile=True``, or a
caller's compiled function) every coarse voxel is processed (air voxels add
zeros), so sizes depend only on shapes and on ``window``; with ``window``
given (and the pooled weights from :meth:`WeightIntegral.pool` with
``grid_shape``), the call reads nothing back from the device and traces
without graph breaks.
"""

from __future__ import annotations

import collections
import itertools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import (
    MAX_LENGTH_MM,
    MIN_LENGTH_MM,
    check_choice,
    check_int,
    check_ndim,
    check_positive,
    check_positive_int,
    check_real,
)
from .footprints import FOOTPRINTS, footprint_bytes_per_voxel, footprint_window, voxel_footprints
from .geometry import CArm, project_points
from .volume import Volume, VolumeBatch, as_volume_batch, attenuation_of_hu, crop_affine

__all__ = [
    "patch_correspondence",
    "pool_weights",
    "CoarseWeights",
    "WeightIntegral",
    "coarse_grid_affine",
    "coarse_boundaries",
    "coarse_voxel_size",
    "voxel_weights",
    "correspondence_map",
    "epipolar_line",
    "pixel_ray",
    "patch_permutation",
    "permute_views_patches",
    "default_rays_per_patch",
    "WEIGHTINGS",
    "IMAGE_OPERATIONS",
]

WEIGHTINGS = ("soft", "binary")
IMAGE_OPERATIONS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")
DEFAULT_MEMORY_BUDGET = 64 * 2**20  # measured fastest on a 2-core CPU (larger chunks leave the cache)
# On an accelerator each chunk costs a few hundred kernel launches and host reads: fewer, larger chunks.
DEVICE_MEMORY_BUDGET = 512 * 2**20


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


_POOL_SLAB_BYTES = 64 * 2**20


def _pool_slabs(attenuation: Tensor, factor: Sequence[int], weigh) -> Tensor:
    """Mean of ``weigh(attenuation)`` over ``factor`` blocks (missing voxels past the far edges count as air).

    ``attenuation`` is ``(g, D, H, W)``; the weights are computed one slab of
    whole coarse planes at a time, so no full-size weight volume is made. A
    block larger than the volume is summed over the voxels that exist.
    """
    groups, depth, height, width = attenuation.shape
    fd = factor[0]
    kernel = tuple(min(f, n) for f, n in zip(factor, (depth, height, width)))
    plane_bytes = min(fd, depth) * height * width * attenuation.element_size() * groups
    planes = max(1, _POOL_SLAB_BYTES // max(plane_bytes, 1))
    volume = float(factor[0]) * float(factor[1]) * float(factor[2])
    pieces = []
    for first in range(0, -(-depth // fd), planes):
        weights = weigh(attenuation[:, first * fd : (first + planes) * fd])[:, None]
        slab_kernel = (min(kernel[0], weights.shape[2]), kernel[1], kernel[2])
        sums = F.avg_pool3d(weights, slab_kernel, stride=tuple(factor), ceil_mode=True, divisor_override=1)
        pieces.append(sums[:, 0] / volume)
    return torch.cat(pieces, 1)


class _PooledCache:
    """The pooled weights of the last few volumes, keyed by the identity and version of their tensors.

    Weighting and pooling a whole CT costs far more than the footprints; a
    volume pooled again with the same settings (same tensor objects, not
    modified in place since) is served from here. Entries hold weak references
    to the input tensors, so a freed tensor never matches a new one.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.entries: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        self.counter = itertools.count()

    def get(self, tensors: Sequence[Tensor], settings: tuple):
        for key, (refs, versions, cached_settings, value) in list(self.entries.items()):
            alive = [ref() for ref in refs]
            if any(item is None for item in alive):
                del self.entries[key]
                continue
            if (cached_settings == settings and len(alive) == len(tensors)
                    and all(item is tensor for item, tensor in zip(alive, tensors))
                    and all(tensor._version == version for tensor, version in zip(tensors, versions))):
                self.entries.move_to_end(key)
                return value
        return None

    def put(self, tensors: Sequence[Tensor], settings: tuple, value) -> None:
        self.entries[next(self.counter)] = ([weakref.ref(t) for t in tensors], [t._version for t in tensors], settings, value)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()


_POOLED = _PooledCache()


def _volume_tensors(volume) -> tuple[list[Tensor], tuple] | None:
    """The tensors the pooled weights of ``volume`` depend on, and its host-side settings (or None)."""
    if isinstance(volume, VolumeBatch):
        return [volume.attenuation, volume.affine], ("batch", volume.mu_water)
    items = [volume] if isinstance(volume, Volume) else list(volume) if isinstance(volume, (list, tuple)) else None
    if not items or not all(isinstance(item, Volume) for item in items):
        return None
    affines = tuple(tuple(item.affine.flatten().tolist()) for item in items)  # Volume affines live on the host
    return [item.hu for item in items], ("volumes", affines)


def _check_coarse_edge(edges: Tensor, extent: float) -> None:
    largest = float(edges.max())
    if largest > extent:
        raise ValueError(
            f"coarse_voxel_size: expected at most the volume's largest extent, {extent:g} mm (a coarse voxel larger "
            f"than the volume pools it all into one weight and leaves no correspondence to find), got {largest:g} mm"
        )


@torch.no_grad()
def pool_weights(
    volume: Volume | Sequence[Volume] | VolumeBatch,
    coarse_voxel_size: float | Sequence[float] | Tensor,
    *,
    weighting: str = "soft",
    air_threshold_hu: float = -900.0,
    mu_water: float | None = None,
    batch_size: int | None = None,
) -> CoarseWeights:
    """Weigh the voxels of each volume and average-pool them onto a coarse grid.

    Args:
        volume: one :class:`Volume`, ``B`` volumes, or a :class:`VolumeBatch`.
        coarse_voxel_size: coarse voxel edge (mm), one number or one per sample,
            at most the volume's largest extent. Each coarse voxel spans
            ``round(edge / spacing)`` fine voxels per axis (at least one); the
            grid starts at the volume's first voxel and is zero-padded at the far edges.
        weighting, air_threshold_hu: as :func:`voxel_weights`.
        mu_water: attenuation of water (1/mm), to read HU back from attenuation
            (default :data:`~onthefly.volume.MU_WATER_PER_MM`; a batch keeps its own).
        batch_size: number of samples ``B`` (default: the number of volumes, or
            the number of edges). A single volume is pooled once per distinct
            edge and shared by the samples.

    Returns:
        :class:`CoarseWeights` with one grid per sample. The last few results
        are cached, keyed by the identity and version of the input tensors
        (pooling the same CT again costs nothing).

    Example:
        >>> pooled = pool_weights(Volume.from_tensor(torch.zeros(16, 16, 16), spacing=2.0), 8.0)
        >>> tuple(pooled.weight.shape)
        (1, 4, 4, 4)
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    air_threshold_hu = check_real("air_threshold_hu", air_threshold_hu, unit="HU")
    edges = torch.as_tensor(coarse_voxel_size, dtype=torch.float64).reshape(-1).cpu()
    check_positive("coarse_voxel_size", edges)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    found = _volume_tensors(volume)
    settings = None
    if found is not None:
        settings = (found[1], tuple(edges.tolist()), batch_size, weighting, air_threshold_hu, mu_water)
        cached = _POOLED.get(found[0], settings)
        if cached is not None:
            return cached
    batch = as_volume_batch(volume, mu_water=mu_water)
    pooled = _pool_batch(batch, edges, weighting, air_threshold_hu, batch_size)
    if found is not None:
        _POOLED.put(found[0], settings, pooled)
    return pooled


def _pool_batch(batch: VolumeBatch, edges: Tensor, weighting: str, air_threshold_hu: float,
                batch_size: int | None) -> CoarseWeights:
    samples = batch_size if batch_size is not None else max(batch.batch_size, edges.numel())
    for name, count in (("volume", batch.batch_size), ("coarse_voxel_size", edges.numel())):
        if count not in (1, samples):
            raise ValueError(f"{name}: expected 1 or {samples} entries (one per sample), got {count}")
    edges = edges.expand(samples)
    volume_batch = batch.batch_size
    spacing = batch.affine[:, :3, :3].norm(dim=1).to("cpu", torch.float64)  # (Bv, 3) mm
    _check_coarse_edge(edges, float((spacing * torch.tensor(batch.shape, dtype=torch.float64)).max()))
    sample_volume = torch.arange(samples) if volume_batch > 1 else torch.zeros(samples, dtype=torch.long)
    factors = torch.clamp(torch.round(edges[:, None] / spacing[sample_volume]), min=1).long()  # (B, 3)
    groups: dict[tuple[int, int, int], list[int]] = {}
    for sample, factor in enumerate(factors.tolist()):
        groups.setdefault(tuple(factor), []).append(sample)
    grid = [-(-batch.shape[axis] // int(factors[:, axis].min())) for axis in range(3)]
    weight = torch.zeros(samples, *grid, dtype=batch.attenuation.dtype, device=batch.device)

    def weigh(attenuation: Tensor) -> Tensor:
        return _attenuation_weights(
            attenuation, mu_water=batch.mu_water, weighting=weighting, air_threshold_hu=air_threshold_hu
        )

    for factor, members in groups.items():
        index = torch.tensor(members, device=batch.device)
        source = batch.attenuation[:1, 0] if volume_batch == 1 else batch.attenuation[index, 0]
        pooled = _pool_slabs(source, factor, weigh)
        d, h, w = pooled.shape[1:]
        weight[index, :d, :h, :w] = pooled.expand(len(members), -1, -1, -1) if volume_batch == 1 else pooled
    affine = coarse_grid_affine(batch.affine.to(torch.float64)[sample_volume.to(batch.device)], factors.to(batch.device))
    voxel_size = coarse_voxel_size(factors, spacing[sample_volume])
    return CoarseWeights(weight=weight, affine=affine, voxel_size=voxel_size)


class WeightIntegral:
    """Summed-volume tables of the correspondence weights of one or more volumes.

    Built once per CT, they give the pooled weights of any box-aligned crop at
    any pooling factor with eight reads per coarse voxel, whatever the crop's
    size: the sampler's path, where every sample has its own crop. Tables are
    float64, ``8 (D+1)(H+1)(W+1)`` bytes per volume.

    Args:
        volumes: one :class:`Volume` or several (of any shapes; tables are
            zero-padded to a common shape).
        weighting, air_threshold_hu: as :func:`voxel_weights`.
        device: where the tables live (default: the first volume's device).
    """

    def __init__(
        self,
        volumes: Volume | Sequence[Volume],
        *,
        weighting: str = "soft",
        air_threshold_hu: float = -900.0,
        device: torch.device | str | None = None,
    ) -> None:
        check_choice("weighting", weighting, WEIGHTINGS)
        volumes = [volumes] if isinstance(volumes, Volume) else list(volumes)
        if not volumes:
            raise ValueError("volumes: expected at least one Volume, got an empty sequence")
        for index, item in enumerate(volumes):
            if not isinstance(item, Volume):
                raise TypeError(f"volumes[{index}]: expected a Volume, got {type(item).__name__}")
        device = torch.device(device) if device is not None else volumes[0].device
        shape = [max(v.shape[axis] for v in volumes) + 1 for axis in range(3)]
        self.tables = torch.zeros(len(volumes), *shape, dtype=torch.float64, device=device)
        for index, item in enumerate(volumes):
            weights = voxel_weights(item.hu[0].to(device), weighting=weighting, air_threshold_hu=air_threshold_hu)
            d, h, w = item.shape
            table = self.tables[index, 1 : d + 1, 1 : h + 1, 1 : w + 1]
            torch.cumsum(weights.to(torch.float64), 0, out=table)
            torch.cumsum(table, 1, out=table)
            torch.cumsum(table, 2, out=table)
        self.shapes = torch.tensor([v.shape for v in volumes], dtype=torch.long)  # (n, 3), CPU
        self.affines = torch.stack([v.affine.to(torch.float64) for v in volumes]).to(device)
        self.spacings = self.affines[:, :3, :3].norm(dim=1).cpu()  # (n, 3)
        self.weighting = weighting
        self.air_threshold_hu = air_threshold_hu

    @property
    def device(self) -> torch.device:
        return self.tables.device

    def __len__(self) -> int:
        return self.tables.shape[0]

    def box_mean(self, volume_index: Tensor, start: Tensor, stop: Tensor) -> Tensor:
        """Mean weight of the voxel boxes ``[start, stop)`` of volumes ``volume_index``: ``(B,)``."""
        volume_index, start, stop = (torch.as_tensor(t).long().to(self.device) for t in (volume_index, start, stop))
        total = self._box_sums(volume_index, start.unbind(-1), stop.unbind(-1))
        count = (stop - start).clamp_min(0).prod(-1).to(total.dtype)
        return total / count.clamp_min(1)

    def _box_sums(self, volume: Tensor, lows: Sequence[Tensor], highs: Sequence[Tensor]) -> Tensor:
        """Sums over boxes ``[low, high)`` per axis; ``lows``/``highs`` broadcast against ``(B, ...)``."""
        _, size0, size1, size2 = self.tables.shape
        flat = self.tables.view(-1)
        base = volume.view(-1, *([1] * (lows[0].dim() - 1))) * (size0 * size1 * size2)
        total = torch.zeros((), dtype=self.tables.dtype, device=self.device)
        for corner in itertools.product((0, 1), repeat=3):
            first, second, third = (lows[a] if c else highs[a] for a, c in enumerate(corner))
            sign = -1.0 if sum(corner) % 2 else 1.0
            total = total + sign * flat[base + (first * size1 + second) * size2 + third]
        return total

    @torch.no_grad()
    def pool(self, volume_index: Tensor, start: Tensor, stop: Tensor, factor: Tensor, *,
             grid_shape: tuple[int, int, int] | None = None) -> CoarseWeights:
        """Pooled weights of crops, as :func:`pool_weights` would give for the cropped volumes.

        Args:
            volume_index: ``(B,)`` which volume each sample crops.
            start, stop: ``(B, 3)`` crop boxes in voxel indices of that volume
                (``0 <= start < stop <= shape``).
            factor: ``(B, 3)`` fine voxels per coarse voxel edge.
            grid_shape: the coarse grid ``(d, h, w)`` to fill, at least
                ``ceil((stop - start) / factor)`` per axis (coarse voxels past a
                crop are air). Given, the call reads nothing back and has static
                shapes (for ``torch.compile``); the boxes are then the caller's
                to check. Default: read from ``stop - start`` and ``factor``
                (pass CPU tensors, as the sampler does, to keep the device free
                of host reads), and the boxes are checked.
        """
        volume_index, start, stop, factor = (torch.as_tensor(t).long() for t in (volume_index, start, stop, factor))
        batch = volume_index.shape[0]
        if grid_shape is None:
            grid_shape = self._checked_grid(volume_index, start, stop, factor)
        device = self.device
        voxel_size = coarse_voxel_size(factor.cpu(), self.spacings[volume_index.cpu()])
        volume_index, start, stop, factor = (t.to(device) for t in (volume_index, start, stop, factor))
        lows, highs = [], []
        for axis, count in enumerate(grid_shape):
            shape = [batch, 1, 1, 1]
            shape[axis + 1] = count
            bounds = coarse_boundaries(start[:, axis], stop[:, axis], factor[:, axis], count)  # (B, n + 1)
            lows.append(bounds[:, :-1].reshape(shape))
            highs.append(bounds[:, 1:].reshape(shape))
        sums = self._box_sums(volume_index, lows, highs)  # (B, d, h, w)
        # Any non-air voxel weighs more than 0.01; smaller sums are rounding error of the tables.
        sums = torch.where(sums > 1e-3, sums, torch.zeros_like(sums))
        weight = (sums / factor.prod(-1).to(torch.float64).view(-1, 1, 1, 1)).to(torch.float32)
        affine = coarse_grid_affine(crop_affine(self.affines[volume_index], start), factor)
        return CoarseWeights(weight=weight, affine=affine, voxel_size=voxel_size)

    def _checked_grid(self, volume_index: Tensor, start: Tensor, stop: Tensor, factor: Tensor) -> tuple[int, int, int]:
        batch = volume_index.shape[0]
        for name, tensor in (("start", start), ("stop", stop), ("factor", factor)):
            if tuple(tensor.shape) != (batch, 3):
                raise ValueError(f"{name}: expected shape ({batch}, 3), got {tuple(tensor.shape)}")
        if start.device.type == "cpu" and stop.device.type == "cpu":
            shapes = self.shapes[volume_index.cpu()]
            if bool((start < 0).any() or (stop > shapes).any() or (stop <= start).any()):
                raise ValueError("start, stop: expected 0 <= start < stop <= the volume's shape for every crop")
        if bool((factor < 1).any()):
            raise ValueError("factor: expected positive pooling factors")
        return tuple((-(-(stop - start) // factor)).amax(0).tolist())


@torch.no_grad()
def pool_crop_weights(hu: Sequence[Tensor], affines: Tensor, factor: Tensor, *, weighting: str = "soft",
                      air_threshold_hu: float = -900.0, device: torch.device | str | None = None,
                      grid_shape: tuple[int, int, int] | None = None) -> CoarseWeights:
    """Pooled weights of crops that exist only as tensors (generated or deformed, no CT's tables to read).

    Args:
        hu: ``B`` crops ``(d, h, w)`` of HU, each its own volume.
        affines: ``(B, 4, 4)`` their voxel-to-world matrices (mm).
        factor: ``(B, 3)`` fine voxels per coarse voxel edge.
        weighting, air_threshold_hu: as :func:`voxel_weights`.
        device: where the pooled weights live (default: the crops').
        grid_shape: as :meth:`WeightIntegral.pool`.

    Returns:
        what :meth:`WeightIntegral.pool` gives for the whole of each crop.
    """
    volumes = [Volume(hu=crop[None].cpu(), affine=affine) for crop, affine in zip(hu, affines.to(torch.float64))]
    integral = WeightIntegral(volumes, weighting=weighting, air_threshold_hu=air_threshold_hu,
                              device=device if device is not None else hu[0].device)
    size = integral.shapes
    return integral.pool(torch.arange(len(volumes)), torch.zeros_like(size), size, factor, grid_shape=grid_shape)


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


def _check_grid_shape(grid_shape) -> tuple[int, int]:
    if not isinstance(grid_shape, (tuple, list)) or len(grid_shape) != 2:
        raise ValueError(f"grid_shape: expected (rows, cols) of patches, got {grid_shape!r}")
    return check_int("grid_shape", grid_shape[0], minimum=1), check_int("grid_shape", grid_shape[1], minimum=1)


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
