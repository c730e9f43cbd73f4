"""The prepared cache's format: its files, its index, and positioned, checked reads of them.

The writer is :func:`~onthefly.sampling.preparation.prepare` (its module
describes the layout: per CT a folder of ``.npy`` files and an ``entry.json``,
and an ``index.json`` listing them); the reader is
:class:`~onthefly.sampling.bank.VolumeBank`. Both take from here what the
files must agree on: the settings a CT depends on, the index's name, format
and version, the fields of an entry and their digests, the block checksums
of every file and the content hash of a CT; and the reader's side of it:
an index read and checked (:func:`read_index`, :func:`settings_from_index`),
an entry checked against its files (:class:`BankCT`), and reads of a file's
planes checked block by block against their checksums (:class:`ArrayFile`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._checks import check_choice, check_one_or_three, is_int
from ..correspondence import WEIGHTINGS
from .grids import RESAMPLE_RTOL, TISSUE_BLOCK_MM, WEIGHT_SCALE, tissue_block_voxels

__all__ = [
    "INDEX_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "BLOCK_BYTES",
    "ENTRY_FIELDS",
    "PreparationSettings",
    "ArrayFile",
    "BankCT",
    "EntryError",
    "read_index",
    "settings_from_index",
    "is_prepared_folder",
    "block_planes",
    "block_checksum",
    "field_digests",
    "index_digest",
    "content_hash",
]

INDEX_NAME = "index.json"
FORMAT = "onthefly-prepared-cts"
FORMAT_VERSION = 2
"""2: block checksums of every file, digests of every index field; 1 (header and tail hashes only) is refused."""
BLOCK_BYTES = 2**20
"""About this many bytes of whole planes make one checksummed block of a prepared file."""
ENTRY_FIELDS = ("key", "source", "patient", "shape", "affine", "spacing", "label_names", "content_hash",
                "source_stat", "settings", "files")
"""The fields of an index entry, each with a digest in its ``digests``."""



@dataclass(frozen=True)
class PreparationSettings:
    """What a prepared CT depends on besides its source; CTs prepared with other settings are redone.

    Attributes:
        spacing: ``(3,)`` voxel edges in mm every CT is resampled to (CTs already
            within 1 % of it are kept as they are, as the sampler does).
        air_threshold_hu: voxels at or below are air (tissue blocks, weights).
        weighting: ``"soft"`` or ``"binary"`` correspondence voxel weights.
    """

    spacing: tuple[float, float, float]
    air_threshold_hu: float = -900.0
    weighting: str = "soft"
    tissue_block_mm: float = TISSUE_BLOCK_MM
    weight_scale: int = WEIGHT_SCALE
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", check_one_or_three("spacing", self.spacing))
        if not isinstance(self.air_threshold_hu, (int, float)) or not math.isfinite(self.air_threshold_hu):
            raise ValueError(f"air_threshold_hu: expected a finite number (HU), got {self.air_threshold_hu!r}")
        object.__setattr__(self, "air_threshold_hu", float(self.air_threshold_hu))
        check_choice("weighting", self.weighting, WEIGHTINGS)

    @classmethod
    def create(cls, spacing, *, air_threshold_hu: float = -900.0, weighting: str = "soft") -> "PreparationSettings":
        """Settings from a spacing given as one number or three (mm)."""
        return cls(spacing=check_one_or_three("spacing", spacing), air_threshold_hu=air_threshold_hu,
                   weighting=weighting)

    def to_json(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @property
    def tissue_block(self) -> tuple[int, int, int]:
        """Voxels per tissue-block edge: :func:`~onthefly.sampling.grids.tissue_block_voxels`."""
        return tuple(tissue_block_voxels(self.spacing, self.tissue_block_mm).tolist())


# ------------------------------------------------------------------------------------- digests and checksums


def block_planes(shape: Sequence[int], itemsize: int) -> int:
    """Planes (along the first axis) per checksummed block of an array of ``shape``: about ``BLOCK_BYTES``."""
    plane_bytes = itemsize * math.prod(shape[1:])
    return max(1, min(max(1, int(shape[0])), BLOCK_BYTES // max(1, plane_bytes)))


def block_checksum(data, label: str, block: int | str) -> int:
    """CRC-32 of ``data`` (bytes of block ``block`` of the file ``label``), seeded with the label and the block,
    so equal bytes at another place or in another CT's file give another checksum."""
    return zlib.crc32(data, zlib.crc32(f"{label}#{block}".encode()))


def field_digests(entry: dict) -> dict:
    """A short digest of each field of an index entry (its canonical JSON), to tell an edited entry."""
    return {name: _digest(entry[name]) for name in ENTRY_FIELDS if name in entry}


def index_digest(index: dict) -> str:
    """Digest of an index's format, settings, failures and its entries' field digests (order included)."""
    return _digest({"format": index.get("format"), "version": index.get("version"), "settings": index.get("settings"),
                    "failed": index.get("failed"), "cts": [entry.get("digests") if isinstance(entry, dict) else entry
                                                           for entry in index.get("cts", [])]})


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, allow_nan=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def content_hash(hu: np.ndarray, labels: np.ndarray | None, affine: torch.Tensor) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(hu.shape).encode())
    digest.update(hu.tobytes())
    digest.update(affine.numpy().astype("<f8").tobytes())
    if labels is not None:
        digest.update(labels.tobytes())
    return digest.hexdigest()



def read_index(folder: str | Path) -> dict:
    """The ``index.json`` of a prepared folder, checked for its format.

    Raises ``FileNotFoundError`` for a folder that does not exist or holds no
    index (never prepared, or a preparation that did not finish), and
    ``ValueError`` for an index of another format or version, or one without
    its settings, entries or digest. (The entries are checked by the bank:
    :class:`~onthefly.sampling.bank.VolumeBank` names the CT and the field.)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"volumes: no such folder: {folder}")
    path = folder / INDEX_NAME
    if not path.is_file():
        unfinished = (folder / "cts").is_dir()
        raise FileNotFoundError(
            f"volumes: {folder} has no {INDEX_NAME}: "
            + ("its preparation did not finish; run `onthefly prepare` again with the same CTs (it resumes)"
               if unfinished else "it is not a prepared cache (make one with `onthefly prepare CT... --output DIR`)")
        )
    try:
        index = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"volumes: {path} is not valid JSON ({error}); prepare the folder again") from error
    if not isinstance(index, dict):
        raise ValueError(f"volumes: {path} holds a JSON {type(index).__name__}, not a prepared index; prepare the folder again")
    if index.get("format") == FORMAT and index.get("version") == 1:
        raise ValueError(
            f"volumes: {path} was written by an older onthefly (format version 1, whose files carry no block "
            f"checksums); prepare the folder again (`onthefly prepare` with the same CTs and --output {folder}: "
            "its CTs are redone)"
        )
    if index.get("format") != FORMAT or index.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"volumes: {path} has format {index.get('format')!r} version {index.get('version')!r}; "
            f"expected {FORMAT!r} version {FORMAT_VERSION}: prepare the folder again"
        )
    for key, kind in (("settings", dict), ("cts", list), ("failed", list), ("digest", str)):
        if not isinstance(index.get(key), kind):
            found = "missing" if key not in index else f"a {type(index[key]).__name__}"
            raise ValueError(f"volumes: {path}: its field {key!r} is {found}, expected a {kind.__name__}; "
                             "prepare the folder again")
    return index


# --------------------------------------------------------------------------------------- reading the files


_DTYPES = {"hu": "<i2", "labels": "<i2", "weights": "<u4", "tissue": "<f4"}
"""The prepared files and the dtype of each."""


class EntryError(ValueError):
    """An index entry that does not describe its prepared files (the message names the CT and the field)."""


@dataclass(frozen=True)
class ArrayFile:
    """One prepared ``.npy`` array: where its data start, its layout, and its checksums.

    ``verified`` marks the blocks of ``block_planes`` planes already read whole and
    found equal to their checksum (in this process or before it was forked/pickled).
    """

    path: Path
    label: str
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]
    size: int
    header: int
    block_planes: int
    checksums: tuple[int, ...]
    verified: bytearray = field(compare=False, repr=False)

    @classmethod
    def from_record(cls, folder: Path, record: dict, ct: str, name: str) -> "ArrayFile":
        try:
            shape = tuple(_integer(n) for n in record["shape"])
            planes = _integer(record["block_planes"])
            checksums = tuple(_integer(c) for c in record["checksums"])
            file = cls(folder / str(record["path"]), str(record["path"]), _integer(record["offset"]),
                       np.dtype(record["dtype"]), shape, _integer(record["size"]), _integer(record["header"]),
                       planes, checksums, bytearray(len(checksums)))
        except (KeyError, TypeError, ValueError) as error:
            raise EntryError(f"volumes: {folder / INDEX_NAME}: the entry of CT {ct}: files.{name} is malformed "
                              f"({type(error).__name__}: {error}); prepare the folder again") from None
        expected_blocks = -(-shape[0] // planes) if shape and shape[0] > 0 and planes > 0 else -1
        problems = []
        if file.dtype.str != _DTYPES.get(name, file.dtype.str):
            problems.append(f"dtype {file.dtype.str}, expected {_DTYPES[name]}")
        if len(shape) != 3 or min(shape) < 1:
            problems.append(f"shape {list(shape)}, expected three positive sizes")
        elif file.size != file.offset + math.prod(shape) * file.dtype.itemsize:
            problems.append(f"size {file.size} bytes, but {file.offset} + {list(shape)} x {file.dtype.itemsize} bytes "
                            f"= {file.offset + math.prod(shape) * file.dtype.itemsize}")
        if planes < 1 or len(checksums) != expected_blocks:
            problems.append(f"{len(checksums)} block checksums of {planes} planes for {shape[:1]} planes")
        if Path(file.label).name != f"{name}.npy" or Path(file.label).is_absolute() or ".." in Path(file.label).parts:
            problems.append(f"path {file.label!r}, expected cts/<key>/{name}.npy")
        if problems:
            raise EntryError(f"volumes: {folder / INDEX_NAME}: the entry of CT {ct}: files.{name} has {'; '.join(problems)}; "
                              "prepare the folder again")
        return file

    def check_present(self, ct: str) -> None:
        """``FileNotFoundError`` if the file is gone, ``ValueError`` if its size changed (a stat, no read)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise FileNotFoundError(
                f"volumes: the prepared file {self.path} of CT {ct} was deleted; run `onthefly prepare` again"
            ) from None
        if size != self.size:
            raise ValueError(
                f"volumes: the prepared file {self.path} of CT {ct} changed since it was indexed "
                f"({size} bytes, indexed {self.size}); run `onthefly prepare` again"
            )

    def check_content(self, ct: str) -> None:
        """``ValueError`` if the array header differs from the index (one small read)."""
        self.check_present(ct)
        with open(self.path, "rb") as handle:
            header = handle.read(self.offset)
            handle.seek(0)
            try:
                major, _ = np.lib.format.read_magic(handle)
                reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = reader(handle)
                offset = handle.tell()
            except ValueError:
                shape, dtype, offset = None, None, None
        if (block_checksum(header, self.label, "header") != self.header or shape is None
                or tuple(shape) != self.shape or dtype != self.dtype or offset != self.offset):
            raise ValueError(
                f"volumes: the prepared file {self.path} of CT {ct} changed since it was indexed (its .npy header "
                "differs); run `onthefly prepare` again"
            )

    @property
    def plane_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def read_block(self, handle, block: int, ct: str, *, remember: bool = True) -> np.ndarray:
        """``(n, H, W)`` planes of block ``block``, read whole and checked against its checksum."""
        first = block * self.block_planes
        count = min(self.block_planes, self.shape[0] - first)
        out = np.empty((count, *self.shape[1:]), dtype=self.dtype)
        got = _read_into(handle, memoryview(out).cast("B"), self.offset + first * self.plane_bytes)
        if got != out.nbytes:
            raise ValueError(f"volumes: the prepared file {self.path} of CT {ct} ended early (truncated?); "
                             "run `onthefly prepare` again")
        if block_checksum(memoryview(out).cast("B"), self.label, block) != self.checksums[block]:
            raise ValueError(
                f"volumes: the prepared file {self.path} of CT {ct} changed since it was indexed: planes "
                f"{first}-{first + count - 1} differ from their checksum (damaged, or another CT's file); "
                "run `onthefly prepare` again"
            )
        if remember:
            self.verified[block] = 1
        return out

    def read_planes(self, planes: Sequence[int], row_lo: int, row_hi: int, ct: str) -> np.ndarray:
        """``(P, row_hi - row_lo, W)`` rows ``[row_lo, row_hi)`` of planes ``planes`` of a ``(D, H, W)`` array.

        Planes of a block not yet verified come from the whole block, read once and checked.
        """
        _, height, width = self.shape
        out = np.empty((len(planes), row_hi - row_lo, width), dtype=self.dtype)
        plane_bytes = out[0].nbytes
        stride = height * width * self.dtype.itemsize
        fresh: dict[int, np.ndarray] = {}
        with open(self.path, "rb", buffering=0) as handle:
            for position, plane in enumerate(planes):
                block = plane // self.block_planes
                if not self.verified[block] or block in fresh:
                    if block not in fresh:
                        fresh[block] = self.read_block(handle, block, ct)
                    out[position] = fresh[block][plane - block * self.block_planes, row_lo:row_hi]
                    continue
                start = self.offset + plane * stride + row_lo * width * self.dtype.itemsize
                got = _read_into(handle, memoryview(out[position]).cast("B"), start)
                if got != plane_bytes:
                    raise ValueError(f"volumes: {self.path} ended early (truncated?); run `onthefly prepare` again")
        return out


def _integer(value) -> int:
    if not is_int(value):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _read_into(handle, buffer: memoryview, offset: int) -> int:
    """Read ``len(buffer)`` bytes at ``offset`` into ``buffer``; the number read."""
    if hasattr(os, "preadv"):
        return os.preadv(handle.fileno(), [buffer], offset)
    handle.seek(offset)
    return handle.readinto(buffer)


@dataclass(frozen=True)
class BankCT:
    """One CT of a bank, as its index entry describes it."""

    name: str
    patient: str
    shape: tuple[int, int, int]
    affine: tuple
    label_names: dict[int, str] | None
    content_hash: str
    files: dict[str, ArrayFile]

    @classmethod
    def from_entry(cls, folder: Path, entry: dict, settings: dict, position: int) -> "BankCT":
        """The CT of index entry ``position``, checked against the digests of its fields, the index's
        settings and its files' records (``ValueError`` naming the CT and the field)."""
        if not isinstance(entry, dict):
            raise EntryError(f"volumes: {folder / INDEX_NAME}: entry {position} is a {type(entry).__name__}, not a CT entry; "
                              "prepare the folder again")
        ct = str(entry.get("source", f"number {position}"))
        missing = [name for name in ENTRY_FIELDS if name not in entry]
        if missing or not isinstance(entry.get("digests"), dict):
            raise EntryError(f"volumes: {folder / INDEX_NAME}: the entry of CT {ct} lacks "
                              f"{', '.join(missing) if missing else 'digests'}; prepare the folder again")
        edited = [name for name, digest in field_digests(entry).items() if entry["digests"].get(name) != digest]
        if edited:
            raise EntryError(f"volumes: {folder / INDEX_NAME}: the entry of CT {ct}: its field(s) {', '.join(edited)} differ from what "
                              "the preparation wrote (index.json edited or damaged); prepare the folder again")
        for key, value in settings.items():
            if not isinstance(entry["settings"], dict) or entry["settings"].get(key) != value:
                theirs = entry["settings"].get(key) if isinstance(entry["settings"], dict) else None
                raise EntryError(f"volumes: {folder / INDEX_NAME}: CT {ct} was prepared with settings.{key} = {theirs!r}, but the index's "
                                  f"settings say {value!r}; prepare the folder again")
        try:
            shape = tuple(_integer(n) for n in entry["shape"])
            affine = np.array(entry["affine"], dtype=np.float64)
            names = entry["label_names"]
            label_names = None if names is None else {int(k): str(v) for k, v in names.items()}
            records = dict(entry["files"])
        except (TypeError, ValueError, AttributeError) as error:
            raise EntryError(f"volumes: {folder / INDEX_NAME}: the entry of CT {ct} is malformed ({error}); prepare the folder again") \
                from None
        files = {name: ArrayFile.from_record(folder, record, ct, name) for name, record in records.items()}
        _check_geometry(folder, ct, shape, affine, entry["spacing"], settings, files)
        return cls(name=ct, patient=str(entry["patient"]), shape=shape,
                   affine=tuple(tuple(row) for row in affine.tolist()), label_names=label_names,
                   content_hash=str(entry["content_hash"]), files=files)


def _check_geometry(folder: Path, ct: str, shape: tuple, affine: np.ndarray, spacing, settings: dict, files: dict) -> None:
    """The entry's shape against its files', its affine against the prepared spacing (the column norms)."""
    if len(shape) != 3 or min(shape, default=0) < 1:
        raise EntryError(f"volumes: {folder / INDEX_NAME}: the entry of CT {ct}: shape {list(shape)} is not three positive sizes")
    unknown = sorted(set(files) - set(_DTYPES))
    if unknown or not {"hu", "weights", "tissue"} <= set(files):
        raise EntryError(f"volumes: {folder / INDEX_NAME}: the entry of CT {ct}: files {sorted(files)}, expected hu, weights, "
                          "tissue and optionally labels; prepare the folder again")
    block = tissue_block_voxels(settings["spacing"], float(settings["tissue_block_mm"])).tolist()
    expected = {"hu": shape, "labels": shape, "weights": tuple(n + 1 for n in shape),
                "tissue": tuple(-(-n // b) for n, b in zip(shape, block))}
    for name, file in files.items():
        if file.shape != expected[name]:
            raise EntryError(f"volumes: {folder / INDEX_NAME}: the entry of CT {ct}: shape {list(shape)} does not match its file "
                              f"{name}.npy of {list(file.shape)} (expected {list(expected[name])}); prepare the folder again")
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or not np.array_equal(affine[3], [0.0, 0.0, 0.0, 1.0]):
        raise EntryError(f"volumes: {folder / INDEX_NAME}: the entry of CT {ct}: affine is not a finite 4 x 4 voxel-to-world "
                          f"matrix ending in [0, 0, 0, 1]; prepare the folder again")
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    prepared = np.array(settings["spacing"], dtype=np.float64)
    # prepare() keeps CTs within RESAMPLE_RTOL of the spacing as they are (as the sampler does); 1 % of it for rounding
    if not np.allclose(norms, prepared, rtol=RESAMPLE_RTOL * 1.01, atol=0) or abs(np.linalg.det(affine[:3, :3])) < 1e-3 * norms.prod():
        raise EntryError(f"volumes: {folder / INDEX_NAME}: the entry of CT {ct}: affine has voxel edges {norms.round(6).tolist()} mm "
                          f"(its column norms), but the CTs were prepared at {prepared.tolist()} mm; prepare the folder again")
    try:
        listed = np.array(spacing, dtype=np.float64).reshape(3)
    except (TypeError, ValueError):
        listed = None
    if listed is None or not np.allclose(listed, norms, rtol=1e-6, atol=0):
        raise EntryError(f"volumes: {folder / INDEX_NAME}: the entry of CT {ct}: spacing {spacing!r} differs from its affine's "
                          f"voxel edges {norms.round(6).tolist()} mm; prepare the folder again")



def is_prepared_folder(source) -> bool:
    """Whether ``source`` names a prepared folder: one with an index or a ``cts`` folder, or an empty one.

    (Any other folder is a DICOM series.)
    """
    return isinstance(source, (str, Path)) and Path(source).is_dir() and (
        (Path(source) / INDEX_NAME).exists() or (Path(source) / "cts").is_dir() or not any(Path(source).iterdir())
    )



def settings_from_index(saved: dict, folder: Path) -> PreparationSettings:
    """The preparation settings an index holds: every field present and equal to what this version writes."""
    reference = PreparationSettings.create(1.0).to_json()
    missing = [key for key in reference if key not in saved]
    unknown = [key for key in saved if key not in reference]
    if missing or unknown:
        what = "; ".join(part for part in (f"lacks {', '.join(missing)}" if missing else "",
                                           f"has unknown {', '.join(unknown)}" if unknown else "") if part)
        raise ValueError(f"volumes: {folder / INDEX_NAME}: its settings {what}; prepare the folder again")
    try:
        settings = PreparationSettings.create(saved["spacing"], air_threshold_hu=saved["air_threshold_hu"],
                                              weighting=saved["weighting"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"volumes: {folder / INDEX_NAME}: settings.{error}; prepare the folder again") from None
    for key, value in settings.to_json().items():
        if saved[key] != value:
            raise ValueError(f"volumes: {folder / INDEX_NAME}: settings.{key} is {saved[key]!r}, this version of "
                             f"onthefly writes {value!r}; prepare the folder again")
    return settings
