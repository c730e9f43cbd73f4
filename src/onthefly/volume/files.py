"""CT files read safely: NIfTI, other single-file images and DICOM series, checked before their voxels are read.

A file's header is read first and checked against its size (a truncated or
damaged file, or one claiming more than ``max_voxels`` voxels, is refused with
its name before any voxel is allocated); then the voxels are read lean.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .._checks import MIN_LENGTH_MM

__all__ = ["MAX_VOXELS", "NIFTI_SUFFIXES"]

MAX_VOXELS = 2**31
"""Largest voxel count a file read or a resampling may produce (8 GiB as float32); raise it with ``max_voxels``."""


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
