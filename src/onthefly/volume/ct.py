"""One CT volume (:class:`Volume`): Hounsfield units on a voxel grid placed in the world by an affine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import (
    as_tensor,
    check_finite,
    check_int,
    check_length,
    check_ndim,
    check_position,
    check_range,
    check_tensor_kind,
)
from .affines import _affine_from_spacing, _check_affines
from .files import MAX_VOXELS, _check_path, _read_image
from .hounsfield import HU_RANGE, MU_WATER_PER_MM, hu_to_attenuation

__all__ = ["Volume"]


def _as_labels(name: str, labels, shape: tuple[int, ...]) -> Tensor:
    """An integer label map of ``shape`` (non-negative whole values; floats holding whole numbers are converted)."""
    labels = as_tensor(name, labels) if not isinstance(labels, Tensor) else check_tensor_kind(name, labels)
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name}: expected the shape of hu {tuple(shape)}, got {tuple(labels.shape)}")
    if labels.numel() == 0:
        return labels.to(torch.uint8)
    if labels.is_floating_point():
        check_finite(name, labels)
        if not bool((labels == labels.round()).all()):
            raise ValueError(f"{name}: expected whole label values, got fractional ones (e.g. {float(labels.flatten()[0])})")
    elif labels.dtype == torch.bool:
        labels = labels.to(torch.uint8)
    smallest, largest = (float(v) for v in torch.aminmax(labels))
    if smallest < 0:
        raise ValueError(f"{name}: expected label values >= 0, got minimum {smallest:g}")
    if largest > 2**31 - 1:
        raise ValueError(f"{name}: expected label values below 2^31, got maximum {largest:g}")
    if labels.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64):
        return labels
    return labels.to(torch.uint8 if largest <= 255 else torch.int16 if largest <= 32767 else torch.int32)


@dataclass(frozen=True, eq=False)
class Volume:
    """One CT volume.

    Attributes:
        hu: ``(1, D, H, W)`` float Hounsfield units, finite, within ``HU_RANGE`` (-1e5 to 1e6).
        affine: ``(4, 4)`` float64 voxel-index-to-world matrix (mm), bottom row
            ``(0, 0, 0, 1)``; voxel spacings (its column norms) within 1e-3 to
            1e5 mm and its translation within 1e5 mm of the origin.
        labels: optional ``(1, D, H, W)`` integer label map (values >= 0) on the same grid.
        label_names: optional ``{label: structure name}``.

    Build one with :meth:`from_file`, :meth:`from_torchio`, :meth:`from_tensor`
    or :func:`example_volume`. Integer HU become float32, an affine given in
    another dtype or on another device becomes float64 on the CPU.
    """

    hu: Tensor
    affine: Tensor
    labels: Tensor | None = None
    label_names: dict[int, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.hu, Tensor):
            raise TypeError(f"hu: expected a tensor of shape (1, D, H, W), got {type(self.hu).__name__}")
        check_tensor_kind("hu", self.hu)
        check_ndim("hu", self.hu, (4,), "(1, D, H, W)")
        if self.hu.shape[0] != 1 or min(self.hu.shape[1:]) < 1:
            raise ValueError(f"hu: expected shape (1, D, H, W) with D, H, W >= 1, got {tuple(self.hu.shape)}")
        if not self.hu.is_floating_point():
            object.__setattr__(self, "hu", self.hu.float())
        check_range("hu", self.hu, HU_RANGE[0], HU_RANGE[1], "HU")
        affine = as_tensor("affine", self.affine, dtype=torch.float64)
        if tuple(affine.shape) != (4, 4):
            raise ValueError(f"affine: expected shape (4, 4), got {tuple(affine.shape)}")
        _check_affines("affine", affine)
        object.__setattr__(self, "affine", affine.to("cpu", torch.float64))
        if self.labels is not None:
            object.__setattr__(self, "labels", _as_labels("labels", self.labels, tuple(self.hu.shape)))
        if self.label_names is not None and not isinstance(self.label_names, dict):
            raise TypeError(f"label_names: expected a dict {{label: name}} or None, got {type(self.label_names).__name__}")

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_tensor(
        cls,
        hu: Tensor,
        *,
        affine: Tensor | None = None,
        spacing: float | Sequence[float] | Tensor | None = None,
        origin: Sequence[float] | Tensor | None = None,
        labels: Tensor | None = None,
    ) -> "Volume":
        """A volume from a ``(D, H, W)`` or ``(1, D, H, W)`` tensor (or array, or nested list) of HU.

        Give either ``affine`` (4 x 4, voxel to world mm) or ``spacing`` (mm, a
        scalar or 3 values, each within 1e-3 to 1e5 mm) with an optional
        ``origin`` (world mm of voxel 0; default: the volume centred on the world origin).

        Example:
            >>> v = Volume.from_tensor(torch.zeros(8, 8, 8), spacing=2.0)
            >>> v.shape, v.spacing.tolist()
            ((8, 8, 8), [2.0, 2.0, 2.0])
        """
        hu = as_tensor("hu", hu, dtype=torch.float32)
        check_ndim("hu", hu, (3, 4), "(D, H, W) or (1, D, H, W)")
        if hu.dim() == 3:
            hu = hu.unsqueeze(0)
        hu = hu.float()
        if labels is not None:
            labels = labels if isinstance(labels, Tensor) else as_tensor("labels", labels)
            if labels.dim() == 3:
                labels = labels.unsqueeze(0)
        if affine is not None and spacing is not None:
            raise ValueError("affine, spacing: give one of them, not both")
        if affine is None:
            spacing_t = _three_values("spacing", 1.0 if spacing is None else spacing)
            check_length("spacing", spacing_t)
            if origin is None:
                extent = (torch.tensor(hu.shape[1:], dtype=torch.float64) - 1) * spacing_t
                origin_t = -extent / 2
                check_position("spacing (the centred volume's corner, voxels times spacing / 2)", origin_t)
            else:
                origin_t = as_tensor("origin", origin, dtype=torch.float64).flatten().double()
                if origin_t.numel() != 3:
                    raise ValueError(f"origin: expected 3 values (mm), got {origin_t.numel()}")
                check_position("origin", origin_t)
            affine = _affine_from_spacing(spacing_t, origin_t)
        return cls(hu=hu, affine=affine, labels=labels)

    @classmethod
    def from_torchio(cls, image, *, labels=None, label_names: dict[int, str] | None = None) -> "Volume":
        """A volume from a torchio ``ScalarImage`` or ``Subject``.

        A ``Subject`` must hold exactly one ``ScalarImage`` (the CT); its first
        ``LabelMap``, if any, becomes the label map.
        """
        import torchio as tio

        if isinstance(image, tio.Subject):
            scalars = image.get_images(intensity_only=True)
            if len(scalars) != 1:
                raise ValueError(f"image: expected a Subject with one ScalarImage, found {len(scalars)}")
            maps = [im for im in image.get_images(intensity_only=False) if isinstance(im, tio.LabelMap)]
            if labels is None and maps:
                labels = maps[0]
            image = scalars[0]
        if not isinstance(image, tio.ScalarImage):
            raise TypeError(f"image: expected a torchio ScalarImage or Subject, got {type(image).__name__}")
        if image.data.shape[0] != 1:
            raise ValueError(f"image: expected one channel (a CT), got {image.data.shape[0]} channels")
        label_tensor = None
        if labels is not None:
            label_tensor = labels.data if isinstance(labels, tio.Image) else as_tensor("labels", labels)
        return cls(
            hu=image.data.float(),
            affine=torch.as_tensor(image.affine, dtype=torch.float64),
            labels=label_tensor,
            label_names=label_names,
        )

    @classmethod
    def from_file(
        cls, path: str | Path, *, labels: str | Path | None = None, max_voxels: int = MAX_VOXELS
    ) -> "Volume":
        """A volume from a NIfTI (``.nii``, ``.nii.gz``), another single-file format torchio reads
        (NRRD, MHA, ...) or a DICOM folder, with an optional label map file on the same grid.

        Files are checked before their voxels are read: a 3-D scalar image (a
        trailing axis of size 1 is dropped), a voxel count that the file can
        hold and that is at most ``max_voxels``; a DICOM folder must hold one
        series whose every file is one of its slices, with regular slice
        spacing. Errors name the file and what was expected.
        """
        path = _check_path("path", path)
        label_path = None if labels is None else _check_path("labels", labels)
        max_voxels = check_int("max_voxels", max_voxels, minimum=1)
        hu, affine = _read_image("path", path, max_voxels)
        label_tensor = None
        if label_path is not None:
            label_tensor, _ = _read_image("labels", label_path, max_voxels, labels=True)
            if tuple(label_tensor.shape) != tuple(hu.shape):
                raise ValueError(f"labels: the label map {label_path} has shape {tuple(label_tensor.shape[1:])}, "
                                 f"expected the CT's {tuple(hu.shape[1:])}")
        try:
            return cls(hu=hu, affine=affine, labels=label_tensor)
        except ValueError as error:
            raise ValueError(f"path: {path}: {error}") from error

    # ---------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)`` voxels."""
        return tuple(self.hu.shape[1:])

    @property
    def spacing(self) -> Tensor:
        """``(3,)`` voxel edge lengths in mm along D, H, W."""
        return self.affine[:3, :3].norm(dim=0)

    @property
    def center(self) -> Tensor:
        """``(3,)`` world mm of the volume's centre (midpoint of the corner voxel centres)."""
        index = (torch.tensor(self.shape, dtype=torch.float64) - 1) / 2
        return self.affine[:3, :3] @ index + self.affine[:3, 3]

    @property
    def device(self) -> torch.device:
        return self.hu.device

    def world_corners(self) -> Tensor:
        """``(8, 3)`` world mm of the corners of the voxel box (voxel faces, not centres)."""
        lo = torch.full((3,), -0.5, dtype=torch.float64)
        hi = torch.tensor(self.shape, dtype=torch.float64) - 0.5
        corners = torch.stack(torch.meshgrid(*[torch.stack([lo[i], hi[i]]) for i in range(3)], indexing="ij"), -1)
        corners = corners.reshape(8, 3)
        return corners @ self.affine[:3, :3].T + self.affine[:3, 3]

    def attenuation(self, *, mu_water: float = MU_WATER_PER_MM) -> Tensor:
        """``(1, D, H, W)`` attenuation in 1/mm (see :func:`hu_to_attenuation`)."""
        return hu_to_attenuation(self.hu, mu_water=mu_water)

    def to(self, device: torch.device | str) -> "Volume":
        labels = None if self.labels is None else self.labels.to(device)
        return _derived(self, hu=self.hu.to(device), labels=labels)

    # ------------------------------------------------------------ crop, resample
    def crop(self, start: Sequence[int], stop: Sequence[int]) -> "Volume":
        """The sub-volume ``hu[:, start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]`` with its affine.

        ``start`` and ``stop`` are 3 whole voxel indices each (ints, numpy integers
        or integer tensors); the box must lie inside the volume and be non-empty.
        """
        start_t, stop_t = _voxel_index("start", start), _voxel_index("stop", stop)
        for axis, (lo, hi, size) in enumerate(zip(start_t, stop_t, self.shape)):
            if not (0 <= lo < hi <= size):
                raise ValueError(
                    f"start, stop: the crop box [{start_t}, {stop_t}) leaves the volume of shape "
                    f"{self.shape} (axis {axis}: expected 0 <= start < stop <= {size})"
                )
        slices = tuple(slice(lo, hi) for lo, hi in zip(start_t, stop_t))
        affine = self.affine.clone()
        affine[:3, 3] = self.affine[:3, :3] @ torch.tensor(start_t, dtype=torch.float64) + self.affine[:3, 3]
        labels = None if self.labels is None else self.labels[(slice(None), *slices)]
        return _derived(self, hu=self.hu[(slice(None), *slices)], affine=affine, labels=labels)

    def crop_mm(self, center: Sequence[float] | Tensor, size: float | Sequence[float] | Tensor) -> "Volume":
        """The voxel-aligned crop that covers the world box ``center +- size / 2`` (mm).

        The box must lie inside the volume.
        """
        center_t = as_tensor("center", center, dtype=torch.float64).flatten().double()
        size_t = _three_values("size", size)
        if center_t.numel() != 3:
            raise ValueError(f"center: expected 3 values (world mm), got {center_t.numel()}")
        check_position("center", center_t)
        check_length("size", size_t)
        inverse = torch.linalg.inv(self.affine)
        offsets = torch.stack(torch.meshgrid(*[torch.tensor([-0.5, 0.5], dtype=torch.float64)] * 3, indexing="ij"), -1)
        corners = center_t + offsets.reshape(8, 3) * size_t
        index = corners @ inverse[:3, :3].T + inverse[:3, 3]
        start = torch.floor(index.min(0).values + 0.5).long()
        stop = torch.ceil(index.max(0).values + 0.5).long()
        inside = bool((start >= 0).all()) and all(int(hi) <= size for hi, size in zip(stop, self.shape))
        if not inside:
            raise ValueError(
                f"center, size: the box {center_t.tolist()} +- {(size_t / 2).tolist()} mm leaves the volume "
                f"(voxels [{start.tolist()}, {stop.tolist()}) of shape {self.shape})"
            )
        return self.crop(start.tolist(), stop.tolist())

    def resample(self, spacing: float | Sequence[float], *, max_voxels: int = MAX_VOXELS) -> "Volume":
        """Resample HU (trilinear) and labels (nearest) to the given spacing in mm.

        The new grid covers the same box (voxel faces) as the old one; its
        spacing is the requested one up to the rounding of the voxel count.
        The output's voxel count is estimated first: above ``max_voxels``
        (default 2^31, 8 GiB as float32) it raises ``ValueError`` with the estimate.
        """
        spacing_t = _three_values("spacing", spacing)
        check_length("spacing", spacing_t)
        max_voxels = check_int("max_voxels", max_voxels, minimum=1)
        old_shape = torch.tensor(self.shape, dtype=torch.float64)
        estimate = torch.clamp(torch.round(old_shape * self.spacing / spacing_t), min=1)
        voxels = float(estimate.prod())
        if voxels > max_voxels:
            raise ValueError(
                f"spacing: resampling {self.shape} voxels of {[round(s, 4) for s in self.spacing.tolist()]} mm to "
                f"{spacing_t.tolist()} mm gives {[int(n) for n in estimate.tolist()]} = {voxels:.3g} voxels "
                f"({voxels * 4 / 2**30:.3g} GiB as float32), above max_voxels={max_voxels}; "
                "give a larger spacing (or raise max_voxels)"
            )
        new_shape = estimate.long()
        hu = F.interpolate(self.hu[None], size=tuple(new_shape.tolist()), mode="trilinear", align_corners=False)[0]
        labels = None
        if self.labels is not None:
            labels = F.interpolate(
                self.labels[None].float(), size=tuple(new_shape.tolist()), mode="nearest-exact"
            )[0].to(self.labels.dtype)
        scale = old_shape / new_shape.double()  # old index = scale * new index + (scale - 1) / 2
        index_map = torch.eye(4, dtype=torch.float64)
        index_map[:3, :3] = torch.diag(scale)
        index_map[:3, 3] = (scale - 1) / 2
        return Volume(hu=hu, affine=self.affine @ index_map, labels=labels, label_names=self.label_names)

    def centered(self) -> "Volume":
        """The same volume moved so that its centre sits at the world origin."""
        affine = self.affine.clone()
        affine[:3, 3] -= self.center
        return _derived(self, affine=affine)


def _derived(volume: Volume, **changes) -> Volume:
    """``volume`` with some fields replaced by values derived from its checked ones (a part of its voxels,
    a move): the new affine is checked, the voxel values are not scanned again."""
    fields = dict(hu=volume.hu, affine=volume.affine, labels=volume.labels, label_names=volume.label_names) | changes
    if "affine" in changes:
        _check_affines("affine", fields["affine"])
    derived = object.__new__(Volume)
    for name, value in fields.items():
        object.__setattr__(derived, name, value)
    return derived


def _three_values(name: str, value) -> Tensor:
    """A scalar or 3 values (mm) as a ``(3,)`` float64 tensor."""
    values = as_tensor(name, value, dtype=torch.float64).flatten().double()
    if values.numel() == 1:
        values = values.repeat(3)
    if values.numel() != 3:
        raise ValueError(f"{name}: expected a scalar or 3 values (mm), got {values.numel()} values")
    return values


def _voxel_index(name: str, value) -> list[int]:
    """3 whole voxel indices (ints, numpy integers, an integer tensor), refusing fractions and NaN."""
    if isinstance(value, Tensor):
        check_tensor_kind(name, value)
        if value.is_floating_point():
            raise TypeError(f"{name}: expected 3 whole voxel indices, got a {value.dtype} tensor")
        value = value.flatten().tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) and not hasattr(value, "__len__"):
        raise TypeError(f"{name}: expected 3 voxel indices, got {type(value).__name__}")
    items = list(value)
    if len(items) != 3:
        raise ValueError(f"{name}: expected 3 voxel indices, got {len(items)}")
    return [check_int(f"{name}[{axis}]", item) for axis, item in enumerate(items)]
