"""Pooling the voxel weights onto coarse grids (step 2): from volumes, from summed tables, from crop tensors.

* :func:`pool_weights`: from volumes or a :class:`~onthefly.volume.VolumeBatch`
  (slab by slab; the last result per volume and settings is cached);
* :class:`WeightIntegral`: float64 summed-volume tables of each CT's weights,
  built once; any crop's pooled weights cost eight reads per coarse voxel (the
  sampler's fast path; the prepared cache's uint32 tables follow the same
  boundaries, :mod:`onthefly.sampling.grids`);
* :func:`pool_crop_weights`: crops that exist only as tensors (generated or deformed).
"""

from __future__ import annotations

import collections
import itertools
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_choice, check_positive, check_positive_int, check_real
from ..volume import Volume, VolumeBatch, as_volume_batch, crop_affine
from .weights import (
    WEIGHTINGS,
    CoarseWeights,
    _attenuation_weights,
    coarse_boundaries,
    coarse_grid_affine,
    coarse_voxel_size,
    voxel_weights,
)

__all__ = ["pool_weights", "WeightIntegral", "pool_crop_weights"]


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
