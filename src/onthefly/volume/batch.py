"""Batches of attenuation volumes ready to render (:class:`VolumeBatch`), zero-padded to a common shape."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import InitVar, dataclass

import torch
from torch import Tensor

from .._checks import check_int, check_ndim, check_range, check_tensor_kind
from .affines import _check_affines
from .ct import Volume
from .hounsfield import MAX_ATTENUATION_PER_MM, MU_WATER_PER_MM, attenuation_to_hu, check_mu_water, hu_to_attenuation_

__all__ = ["VolumeBatch", "as_volume_batch"]


@dataclass(frozen=True, eq=False)
class VolumeBatch:
    """``B`` attenuation volumes ready to render, zero-padded to a common shape.

    Attributes:
        attenuation: ``(B, 1, D, H, W)`` float, 1/mm, finite with magnitude at
            most 1e6 /mm; voxels past a volume's own shape are 0 (air).
        affine: ``(B, 4, 4)`` voxel-to-world matrices (mm), each as for :class:`Volume`.
        mu_water: the attenuation of water (1/mm) the attenuation was made with,
            within :data:`MU_WATER_RANGE`: HU read back from the batch
            (:attr:`hu`, the correspondence weights) use it, and a function
            given this batch with another ``mu_water`` refuses it (see
            :func:`as_volume_batch`).
        labels: optional ``(B, 1, D, H, W)`` integer label maps.
        validate: check the values (finite attenuation, valid affines), which
            reads them back to the host once; ``False`` skips that for
            tensors made from already checked volumes (shapes are always checked).

    The batch may be built directly from an attenuation tensor (for example a
    network's predicted volume, to render it differentiably).
    """

    attenuation: Tensor
    affine: Tensor
    mu_water: float = MU_WATER_PER_MM
    labels: Tensor | None = None
    validate: InitVar[bool] = True

    def __post_init__(self, validate: bool) -> None:
        if not isinstance(self.attenuation, Tensor):
            raise TypeError(f"attenuation: expected a tensor (B, 1, D, H, W), got {type(self.attenuation).__name__}")
        check_tensor_kind("attenuation", self.attenuation)
        if not self.attenuation.is_floating_point():
            raise TypeError(f"attenuation: expected a floating tensor (1/mm), got {self.attenuation.dtype}")
        check_ndim("attenuation", self.attenuation, (5,), "(B, 1, D, H, W)")
        if self.attenuation.shape[1] != 1 or min(self.attenuation.shape[:1] + self.attenuation.shape[2:]) < 1:
            raise ValueError(f"attenuation: expected shape (B, 1, D, H, W) with B, D, H, W >= 1, "
                             f"got {tuple(self.attenuation.shape)}")
        if not isinstance(self.affine, Tensor):
            raise TypeError(f"affine: expected a tensor (B, 4, 4), got {type(self.affine).__name__}")
        check_tensor_kind("affine", self.affine)
        if tuple(self.affine.shape) != (self.attenuation.shape[0], 4, 4):
            raise ValueError(
                f"affine: expected shape ({self.attenuation.shape[0]}, 4, 4) to match attenuation, "
                f"got {tuple(self.affine.shape)}"
            )
        object.__setattr__(self, "mu_water", check_mu_water(self.mu_water))
        if self.labels is not None:
            if not isinstance(self.labels, Tensor) or self.labels.is_floating_point() or self.labels.is_complex():
                raise TypeError(f"labels: expected an integer tensor (B, 1, D, H, W) or None, got {self.labels!r:.60}")
            if tuple(self.labels.shape) != tuple(self.attenuation.shape):
                raise ValueError(f"labels: expected the shape of attenuation {tuple(self.attenuation.shape)}, "
                                 f"got {tuple(self.labels.shape)}")
        if validate:
            check_range("attenuation", self.attenuation, -MAX_ATTENUATION_PER_MM, MAX_ATTENUATION_PER_MM, "1/mm")
            _check_affines("affine", self.affine)

    @classmethod
    def from_volumes(cls, volumes: Sequence[Volume], *, mu_water: float = MU_WATER_PER_MM) -> "VolumeBatch":
        """Stack volumes (of any shapes) into one zero-padded batch."""
        mu_water = check_mu_water(mu_water)
        if isinstance(volumes, Volume):
            volumes = [volumes]
        volumes = list(volumes)
        if not volumes:
            raise ValueError("volumes: expected at least one Volume, got an empty sequence")
        for index, volume in enumerate(volumes):
            if not isinstance(volume, Volume):
                raise TypeError(f"volumes[{index}]: expected a Volume, got {type(volume).__name__}")
        shape = [max(v.shape[axis] for v in volumes) for axis in range(3)]
        device = volumes[0].device
        attenuation = torch.zeros(len(volumes), 1, *shape, device=device)
        with_labels = all(v.labels is not None for v in volumes)
        narrow = with_labels and all(v.labels.dtype in (torch.uint8, torch.int8, torch.int16) for v in volumes)
        label_dtype = torch.int16 if narrow else torch.int32
        labels = torch.zeros(len(volumes), 1, *shape, dtype=label_dtype, device=device) if with_labels else None
        for index, volume in enumerate(volumes):
            d, h, w = volume.shape
            target = attenuation[index, 0, :d, :h, :w]  # converted in place: no full-size temporary
            hu_to_attenuation_(target.copy_(volume.hu[0]), mu_water=mu_water)
            if labels is not None:
                labels[index, :, :d, :h, :w] = volume.labels.to(device=device, dtype=labels.dtype)
        affine = torch.stack([v.affine for v in volumes]).to(device)
        return cls(attenuation=attenuation, affine=affine, mu_water=mu_water, labels=labels, validate=False)

    @property
    def batch_size(self) -> int:
        return self.attenuation.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)`` of the padded grid."""
        return tuple(self.attenuation.shape[2:])

    @property
    def device(self) -> torch.device:
        return self.attenuation.device

    @property
    def hu(self) -> Tensor:
        """``(B, 1, D, H, W)`` Hounsfield units (attenuation 0 reads as -1000 HU)."""
        return attenuation_to_hu(self.attenuation, mu_water=self.mu_water)

    def to(self, device: torch.device | str) -> "VolumeBatch":
        labels = None if self.labels is None else self.labels.to(device)
        return VolumeBatch(attenuation=self.attenuation.to(device), affine=self.affine.to(device),
                           mu_water=self.mu_water, labels=labels, validate=False)

    def select(self, index: int) -> "VolumeBatch":
        """The batch of one item ``index`` (``-B <= index < B``)."""
        index = check_int("index", index, minimum=-self.batch_size, maximum=self.batch_size - 1) % self.batch_size
        labels = None if self.labels is None else self.labels[index : index + 1]
        return VolumeBatch(
            attenuation=self.attenuation[index : index + 1],
            affine=self.affine[index : index + 1],
            mu_water=self.mu_water,
            labels=labels,
            validate=False,
        )


def as_volume_batch(
    volume: Volume | VolumeBatch | Sequence[Volume], *, mu_water: float | None = None
) -> VolumeBatch:
    """A :class:`VolumeBatch` from one volume, a sequence of volumes or a batch.

    ``mu_water`` (1/mm) converts the HU of volumes (default :data:`MU_WATER_PER_MM`).
    A batch already holds attenuation made with its own ``mu_water``: it is
    returned as it is when ``mu_water`` is ``None`` or equal to the batch's,
    and refused (``ValueError``) when it differs, since neither value could be
    honoured silently.
    """
    if isinstance(volume, VolumeBatch):
        if mu_water is not None and not math.isclose(check_mu_water(mu_water), volume.mu_water, rel_tol=1e-9):
            raise ValueError(
                f"mu_water: the VolumeBatch's attenuation was made with mu_water={volume.mu_water:g} /mm, got "
                f"mu_water={float(mu_water):g}; build the batch with VolumeBatch.from_volumes(..., mu_water="
                f"{float(mu_water):g}) or pass the batch's own value"
            )
        return volume
    mu_water = MU_WATER_PER_MM if mu_water is None else mu_water
    if isinstance(volume, Volume):
        return VolumeBatch.from_volumes([volume], mu_water=mu_water)
    if isinstance(volume, (list, tuple)):
        return VolumeBatch.from_volumes(volume, mu_water=mu_water)
    raise TypeError(f"volume: expected a Volume, a sequence of Volumes or a VolumeBatch, got {type(volume).__name__}")
