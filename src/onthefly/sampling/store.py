"""The CT store: where the sampling pipeline reads CTs from.

A store serves, for any sample, its crop of attenuation (and label map), the
host-side tissue blocks that reject degenerate draws, and the correspondence
weights of the crop pooled onto the coarse grid. The pipeline reads CTs only
through :class:`VolumeStore`'s methods, so where the CTs live (resident on the
device, or on disk in a prepared cache) is the store's business.

* :class:`ResidentStore`: every CT resampled once at construction and kept on
  the sampler's device (padded to a common shape), with summed-volume tables of
  the correspondence weights. Fast for a few CTs; memory grows with their number.
* :class:`~onthefly.sampling.bank.VolumeBank`: CTs from a prepared cache on
  disk, memory bounded whatever their number.

:func:`~onthefly.sampling.sources.open_store` builds the right one from what a
user passes as ``volumes``; :mod:`~onthefly.sampling.grids` holds the rules
every store follows (resampling, tissue grid).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from ..correspondence import CoarseWeights, WeightIntegral
from ..volume import Volume, hu_to_attenuation
from .grids import at_spacing, tissue_block_voxels, tissue_grid

__all__ = ["VolumeStore", "ResidentStore"]


class VolumeStore:
    """The CTs a sampler draws from, at one voxel spacing.

    Attributes (set by subclasses):
        spacing: ``(3,)`` float64 mm, the spacing every CT is stored at.
        mu_water: attenuation of water (1/mm) of the crops.
        air_threshold_hu: HU at or below which a voxel is air (tissue blocks, weights).
        weighting: correspondence voxel weighting, ``"soft"`` or ``"binary"``.
        shapes: ``(n, 3)`` long, voxels ``(D, H, W)`` of each CT (CPU).
        affines: ``(n, 4, 4)`` float64 voxel-to-world matrices (mm, CPU).
        label_names: per CT, ``{label id: name}`` or ``None``.
        has_labels: whether every CT has a label map.
        tissue_block: ``(3,)`` long, voxels per tissue-block edge.
        device: where crops and pooled weights are made.
    """

    spacing: Tensor
    mu_water: float
    air_threshold_hu: float
    weighting: str
    shapes: Tensor
    affines: Tensor
    label_names: tuple
    has_labels: bool
    tissue_block: Tensor
    device: torch.device

    def __len__(self) -> int:
        return int(self.shapes.shape[0])

    def name(self, index: int) -> str:
        """The CT's source, for messages."""
        return f"volumes[{index}]"

    def fingerprint(self) -> str:
        """A stable hash of the CT set and its preparation."""
        raise NotImplementedError

    def available(self, step: int, candidates: Tensor) -> Tensor:
        """The CTs of ``candidates`` (CPU long) that batch ``step`` may draw from: all of them here."""
        return candidates

    def tissue_blocks(self, volume_index: Tensor, first_block: Tensor, count: tuple[int, int, int]) -> Tensor:
        """``(B, c0, c1, c2)`` float32 CPU: the non-air fraction of tissue blocks ``[first, first + count)`` per sample."""
        raise NotImplementedError

    def crops(self, volume_index: Tensor, start: Tensor, size: tuple[int, int, int], *, device=None,
              labels: bool = False) -> tuple[Tensor, Tensor | None]:
        """Crops ``[start, start + size)``: attenuation ``(B, d, h, w)`` float32 1/mm and labels ``(B, d, h, w)`` int16."""
        raise NotImplementedError

    def pooled_weights(self, volume_index: Tensor, start: Tensor, stop: Tensor, factor: Tensor, *,
                       grid_shape: tuple[int, int, int] | None = None) -> CoarseWeights:
        """The correspondence weights of each crop average-pooled by ``factor`` ``(B, 3)`` (see :func:`pool_weights`).

        ``grid_shape``, when given, is the coarse grid to fill (at least every
        crop's; the rest is air): the same shape every batch, for ``torch.compile``.
        """
        raise NotImplementedError

    def check_crop(self, crop_voxels: Sequence[int], spacing: Sequence[float]) -> None:
        """Raise ``ValueError`` naming the first CT smaller than the crop."""
        crop = torch.tensor(list(crop_voxels), dtype=torch.long)
        small = (self.shapes < crop).any(1).nonzero()
        if small.numel():
            index = int(small[0, 0])
            extent = ", ".join(f"{float(n) * float(s):.0f}" for n, s in zip(self.shapes[index], self.spacing))
            asked = ", ".join(f"{float(n) * float(s):.0f}" for n, s in zip(crop, spacing))
            raise ValueError(
                f"crop_size: expected a crop inside every CT, but the crop ({asked} mm) is larger than "
                f"{self.name(index)} ({extent} mm at the sampler's spacing)"
            )


class ResidentStore(VolumeStore):
    """Every CT resampled to ``spacing`` once and kept on ``device``, padded to a common shape.

    Args:
        volumes: the CTs (:class:`Volume`), any shapes and spacings; a CT
            already within 1 % of ``spacing`` is kept as it is.
        spacing: ``(3,)`` mm.
        device: where the CTs live.
        mu_water, air_threshold_hu, weighting: as :class:`~onthefly.sampling.config.SamplerConfig`.
        labels: keep the label maps (for structures or fractures).
        names: one name per CT for messages (default ``volumes[i]``).
    """

    def __init__(self, volumes: Sequence[Volume], *, spacing: Sequence[float], device: torch.device | str = "cpu",
                 mu_water: float, air_threshold_hu: float, weighting: str, labels: bool = False,
                 names: Sequence[str] | None = None) -> None:
        self.spacing = torch.tensor(list(spacing), dtype=torch.float64)
        self.device = torch.device(device)
        self.mu_water, self.air_threshold_hu, self.weighting = float(mu_water), float(air_threshold_hu), weighting
        volumes = [at_spacing(v, self.spacing) for v in volumes]
        self._names = list(names) if names is not None else [f"volumes[{i}]" for i in range(len(volumes))]
        self.shapes = torch.tensor([v.shape for v in volumes], dtype=torch.long)
        self.affines = torch.stack([v.affine.to(torch.float64) for v in volumes])
        self.label_names = tuple(v.label_names for v in volumes)
        self.has_labels = all(v.labels is not None for v in volumes)
        self.tissue_block = tissue_block_voxels(self.spacing)
        self._fingerprint = _volumes_fingerprint(volumes, self.spacing)
        self._stack(volumes, labels and self.has_labels)

    def _stack(self, volumes: list[Volume], labels: bool) -> None:
        grid = self.shapes.amax(0).tolist()
        self._attenuation = torch.zeros(len(volumes), *grid, device=self.device)
        self._labels = torch.zeros(len(volumes), *grid, dtype=torch.int16, device=self.device) if labels else None
        block = tuple(self.tissue_block.tolist())
        self._tissue = torch.zeros(len(volumes), *[-(-g // b) for g, b in zip(grid, block)])
        for index, volume in enumerate(volumes):
            d, h, w = volume.shape
            self._attenuation[index, :d, :h, :w] = hu_to_attenuation(volume.hu[0].to(self.device),
                                                                    mu_water=self.mu_water)
            if self._labels is not None:
                self._labels[index, :d, :h, :w] = volume.labels[0].to(device=self.device, dtype=torch.int16)
            pooled = tissue_grid(volume.hu[0], block, self.air_threshold_hu)
            self._tissue[index, : pooled.shape[0], : pooled.shape[1], : pooled.shape[2]] = pooled
        self._integral = WeightIntegral(volumes, weighting=self.weighting, air_threshold_hu=self.air_threshold_hu,
                                        device=self.device)

    def name(self, index: int) -> str:
        return self._names[index]

    def fingerprint(self) -> str:
        return self._fingerprint

    def tissue_blocks(self, volume_index: Tensor, first_block: Tensor, count: tuple[int, int, int]) -> Tensor:
        limits = self._tissue.shape[1:]
        axes = [(first_block[:, a, None] + torch.arange(count[a])).clamp_max(limits[a] - 1) for a in range(3)]
        return self._tissue[volume_index[:, None, None, None], axes[0][:, :, None, None], axes[1][:, None, :, None],
                            axes[2][:, None, None, :]]

    def crops(self, volume_index: Tensor, start: Tensor, size: tuple[int, int, int], *, device=None,
              labels: bool = False) -> tuple[Tensor, Tensor | None]:
        attenuation = _gather_crops(self._attenuation, volume_index, start, size)
        label_crops = (_gather_crops(self._labels, volume_index, start, size)
                       if labels and self._labels is not None else None)
        if device is not None:
            attenuation = attenuation.to(device)
            label_crops = None if label_crops is None else label_crops.to(device)
        return attenuation, label_crops

    def pooled_weights(self, volume_index: Tensor, start: Tensor, stop: Tensor, factor: Tensor, *,
                       grid_shape: tuple[int, int, int] | None = None) -> CoarseWeights:
        return self._integral.pool(volume_index, start, stop, factor, grid_shape=grid_shape)


def _gather_crops(stack: Tensor, volume_index: Tensor, start: Tensor, size: tuple[int, int, int]) -> Tensor:
    """Boxes ``[start, start + size)`` of ``stack[volume_index]``: ``(B, *size)``, a new tensor.

    With host indices (the sampler's) each box is one strided slice copy,
    several times faster than an advanced-indexing gather of the same voxels
    (which stays the path for indices that live on a device or are traced).
    """
    if start.device.type == "cpu" and volume_index.device.type == "cpu" and not torch.compiler.is_compiling():
        d, h, w = size
        boxes = [stack[v, i:i + d, j:j + h, k:k + w] for v, (i, j, k) in zip(volume_index.tolist(), start.tolist())]
        if boxes:
            return torch.stack(boxes)
    return stack[_crop_index(volume_index.to(stack.device), start.to(stack.device), size)]


def _crop_index(volume_index: Tensor, start: Tensor, size: tuple[int, int, int]) -> tuple[Tensor, ...]:
    """Advanced-indexing tuple gathering ``[start, start + size)`` of CT ``volume_index`` for every sample."""
    device = start.device
    i, j, k = (start[:, axis, None] + torch.arange(size[axis], device=device) for axis in range(3))
    return (volume_index[:, None, None, None], i[:, :, None, None], j[:, None, :, None], k[:, None, None, :])


def _volumes_fingerprint(volumes: Sequence[Volume], spacing: Tensor) -> str:
    """A hash of every CT's shape, affine and a strided sample of its values, and the spacing."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(spacing.numpy().tobytes())
    for volume in volumes:
        digest.update(str(volume.shape).encode())
        digest.update(volume.affine.numpy().tobytes())
        digest.update(volume.hu[0, ::7, ::7, ::7].contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()
