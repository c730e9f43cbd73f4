"""The prepared CT cache: every CT resampled once, stored for random crop reads, and indexed.

``prepare(sources, output, spacing=1.0)`` (or ``onthefly prepare CT... --output DIR``)
reads each CT, resamples it to the sampler's spacing and writes, per CT, a
folder ``cts/<key>/`` of plain NumPy ``.npy`` files (C order, no compression):

* ``hu.npy``: ``(D, H, W)`` int16 Hounsfield units on the prepared grid (the
  resampled HU rounded to the nearest integer: at most 0.5 HU, i.e.
  ``0.5 mu_water / 1000`` = 1e-5 / mm of attenuation at 0.02 / mm, away from the
  float values).
* ``labels.npy``: ``(D, H, W)`` int16 label map, when the CT has one.
* ``tissue.npy``: ``(d, h, w)`` float32 non-air fraction (``HU > air_threshold_hu``)
  of blocks of about 8 mm, the host-side grid the sampler uses to reject
  degenerate draws.
* ``weights.npy``: ``(D + 1, H + 1, W + 1)`` uint32 summed-volume table of the
  correspondence voxel weights quantised to integers
  ``q = round(w * WEIGHT_SCALE)``, stored modulo ``2**32``. Box sums by
  inclusion-exclusion are exact modulo ``2**32``, hence exact for every box of
  at most ``MAX_BOX_VOXELS`` voxels (the pooled weights of a coarse voxel cost
  eight reads, whatever its size); the quantisation moves a pooled weight by at
  most ``0.5 / WEIGHT_SCALE`` (3e-5).
* ``entry.json``: the CT's index entry, written last: it marks the CT complete.

Every file is verifiable piece by piece: its entry holds a CRC-32 of the
file's ``.npy`` header and one of each block of about 1 MiB of whole planes
(``block_planes`` planes along the first axis), each seeded with the file's
place in the folder and the block's number, so a block damaged, moved within
the file, or taken from another CT's file fails its check. The bank checks a
block the first time it reads from it (see :mod:`onthefly.sampling.bank`).
Every entry holds a digest of each of its fields, and the index one of its
settings and of the entries' digests, so an edited index is told apart from a
prepared one.

``index.json`` lists the entries in the order of the sources, with the
preparation settings and the CTs that could not be read; it is written when a
preparation finishes (and removed when one starts), so a folder with an index is
a finished cache. A killed preparation resumes: CTs with an ``entry.json`` of
the same settings and an unchanged source are skipped.

Format version 2 (the block checksums and digests); a folder of version 1 is
refused with a message to prepare it again (``prepare`` into the same folder
redoes its CTs, no ``overwrite`` needed).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from .._checks import check_choice, is_int
from ..phantoms import SPACING_RANGE, phantom
from ..volume import Volume
from .cache_format import (
    ENTRY_FIELDS,
    FORMAT,
    FORMAT_VERSION,
    INDEX_NAME,
    PreparationSettings,
    block_checksum,
    block_planes,
    content_hash,
    field_digests,
    index_digest,
    read_index,
)
from .grids import MAX_BOX_VOXELS, WEIGHT_SCALE, at_spacing, tissue_grid, weight_table
from .phantom_store import PHANTOM_PREFIX, PhantomSource, parse_phantom_source

__all__ = [
    "PreparationSettings",
    "PreparationReport",
    "CTSource",
    "prepare",
    "expand_sources",
    "read_index",
    "INDEX_NAME",
    "WEIGHT_SCALE",
    "MAX_BOX_VOXELS",
]

LIST_SUFFIXES = (".txt", ".csv", ".lst", ".list")
_INT16 = np.iinfo(np.int16)


@dataclass(frozen=True)
class CTSource:
    """One CT to prepare.

    Attributes:
        name: how messages and the index name it (the CT's path, or ``"<volume 3>"``).
        path: CT file or DICOM series folder; ``None`` for a CT held in memory.
        labels: optional label-map file on the CT's grid.
        patient: patient id (CTs of one patient never land on both sides of a split);
            default: the CT's own name (every CT its own patient).
        item: a :class:`~onthefly.volume.Volume` or torchio ``Subject`` held in memory.
    """

    name: str
    path: Path | None = None
    labels: Path | None = None
    patient: str | None = None
    item: object = field(default=None, repr=False, compare=False)

    @cached_property
    def key(self) -> str:
        """Folder name of this CT in the cache: its file stem and a hash of its identity."""
        if self.path is not None:
            identity = f"{self.path.resolve()}|{self.labels.resolve() if self.labels else ''}"
            stem = self.path.name.split(".")[0] or "ct"
        else:
            identity = _memory_identity(self.item)
            stem = "volume"
        digest = hashlib.blake2b(identity.encode(), digest_size=6).hexdigest()
        return f"{re.sub(r'[^A-Za-z0-9_-]+', '_', stem)[:40]}-{digest}"

    def stat(self) -> dict | None:
        """Size and modification time of the source file(s), to tell a changed source; ``None`` in memory."""
        if self.path is None:
            return None
        paths = [self.path] + ([self.labels] if self.labels else [])
        stats = []
        for path in paths:
            members = sorted(path.iterdir()) if path.is_dir() else [path]
            stats += [(m.name, m.stat().st_size, m.stat().st_mtime_ns) for m in members if m.exists()]
        return {"files": len(stats), "digest": hashlib.blake2b(repr(stats).encode(), digest_size=8).hexdigest()}


@dataclass
class PreparationReport:
    """What :func:`prepare` did.

    Attributes:
        output: the prepared folder.
        prepared: names of the CTs prepared in this run.
        skipped: names of the CTs already prepared with the same settings.
        failed: ``(name, reason)`` of the CTs that could not be prepared.
    """

    output: Path
    prepared: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict:
        return {"output": str(self.output), "prepared": len(self.prepared), "skipped": len(self.skipped),
                "failed": [{"ct": name, "reason": reason} for name, reason in self.failed]}


# ---------------------------------------------------------------------------------------------- sources


def expand_sources(sources, *, patient_id: Callable[[str], str] | None = None) -> list[CTSource]:
    """The CTs that ``sources`` name, in order.

    Args:
        sources: one item or a sequence of items, each a CT file (NIfTI, NRRD,
            MHA, ...), a DICOM series folder, a glob pattern (sorted matches), a
            :class:`~onthefly.sampling.phantom_store.PhantomSource` or ``"phantom:REGION,...[:N]"``
            (one CT per phantom, each its own patient), a
            list file (``.txt``, ``.csv``, ``.lst``, ``.list``: one CT per line,
            ``ct[,labels[,patient]]``, relative to the list's folder, ``#``
            comments), a :class:`~onthefly.volume.Volume`, a torchio ``Subject``
            or ``SubjectsDataset``, or a :class:`CTSource`.
        patient_id: maps a CT's name (its path) to its patient id, for CTs whose
            patient is not given otherwise (default: each CT its own patient).

    A path that does not exist stays in the list (it is reported as unreadable
    when prepared); a glob that matches nothing raises ``ValueError``.
    """
    items = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    expanded: list[CTSource] = []
    for index, item in enumerate(items):
        expanded.extend(_expand_item(item, index))
    if patient_id is not None:
        expanded = [_with_patient(s, patient_id) for s in expanded]
    seen: dict[str, str] = {}
    for source in expanded:
        key = source.key
        if key in seen:
            raise ValueError(f"sources: the CT {source.name} is listed twice (also as {seen[key]})")
        seen[key] = source.name
    return expanded


def _with_patient(source: CTSource, patient_id: Callable[[str], str]) -> CTSource:
    if source.patient is not None:
        return source
    return CTSource(source.name, source.path, source.labels, str(patient_id(source.name)), source.item)


@dataclass(frozen=True)
class PhantomItem:
    """One procedural phantom to prepare (:func:`onthefly.phantoms.phantom` of ``region`` and ``seed``)."""

    region: str
    seed: int


PHANTOM_VERSION = 1
"""Part of a prepared phantom's identity: raise it when the phantoms' generator changes what a seed makes."""


def _expand_item(item, index: int) -> list[CTSource]:
    import torchio as tio

    if isinstance(item, str) and item.startswith(PHANTOM_PREFIX):
        item = parse_phantom_source(item)
    if isinstance(item, PhantomSource):  # generated when prepared, one at a time; its name is its identity
        return [CTSource(name=f"{PHANTOM_PREFIX}{region}:seed {seed}", patient=f"{PHANTOM_PREFIX}{region}:{seed}",
                         item=PhantomItem(region, seed))
                for region, seed in (item.item(i) for i in range(len(item)))]
    if isinstance(item, CTSource):
        return [item]
    if isinstance(item, Volume):
        return [CTSource(name=f"<volume {index}>", item=item)]
    if isinstance(item, tio.Subject):
        return [_subject_source(item, f"<subject {index}>")]
    if isinstance(item, tio.SubjectsDataset):
        return [_subject_source(s, f"<subject {index}.{i}>") for i, s in enumerate(item.dry_iter())]
    if isinstance(item, (str, Path)):
        return _expand_path(Path(item), str(item))
    raise TypeError(
        f"sources[{index}]: expected a path, glob, list file, Volume, torchio Subject or SubjectsDataset, "
        f"got {type(item).__name__}"
    )


def _expand_path(path: Path, text: str) -> list[CTSource]:
    if path.is_file() and path.name.lower().endswith(LIST_SUFFIXES):
        return _read_list_file(path)
    if not path.exists() and any(char in text for char in "*?["):
        matches = sorted(glob.glob(text, recursive=True))
        if not matches:
            raise ValueError(f"sources: the pattern {text!r} matches no file")
        return [CTSource(name=m, path=Path(m)) for m in matches]
    return [CTSource(name=text, path=path)]


def _read_list_file(path: Path) -> list[CTSource]:
    sources = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        columns = [c.strip() for c in re.split(r"[,\t]", line)]
        if len(columns) > 3 or not columns[0]:
            raise ValueError(f"sources: {path} line {number}: expected 'ct[,labels[,patient]]', got {line!r}")
        ct = _relative_to(path.parent, columns[0])
        labels = _relative_to(path.parent, columns[1]) if len(columns) > 1 and columns[1] else None
        patient = columns[2] if len(columns) > 2 and columns[2] else None
        sources.append(CTSource(name=str(ct), path=ct, labels=labels, patient=patient))
    return sources


def _relative_to(folder: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else folder / path


def _subject_source(subject, fallback: str) -> CTSource:
    images = subject.get_images(intensity_only=True)
    path = getattr(images[0], "path", None) if len(images) == 1 else None
    name = str(path) if isinstance(path, (str, Path)) else fallback
    patient = subject.get("patient") if isinstance(subject.get("patient"), str) else None
    return CTSource(name=name, patient=patient, item=subject)


def _memory_identity(item) -> str:
    """A content hash of a CT held in memory (its HU, labels and affine); a phantom's region and seed."""
    if isinstance(item, PhantomItem):
        return f"phantom|{item.region}|{item.seed}|{PHANTOM_VERSION}"
    volume = _subject_volume(item) if not isinstance(item, Volume) else item
    digest = hashlib.blake2b(digest_size=16)
    digest.update(volume.hu.detach().cpu().contiguous().numpy().tobytes())
    digest.update(volume.affine.cpu().numpy().tobytes())
    if volume.labels is not None:
        digest.update(volume.labels.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _subject_volume(subject) -> Volume:
    names = subject.get("label_names")
    return Volume.from_torchio(subject, label_names=names if isinstance(names, dict) else None)


# ------------------------------------------------------------------------------------- one CT, on disk


def _read_source(source: CTSource, spacing: float = 1.0) -> Volume:
    if isinstance(source.item, PhantomItem):
        return phantom(source.item.region, source.item.seed, spacing=min(max(spacing, SPACING_RANGE[0]),
                                                                          SPACING_RANGE[1]))
    if isinstance(source.item, Volume):
        return source.item
    if source.item is not None:
        return _subject_volume(source.item)
    return Volume.from_file(source.path, labels=source.labels)


def _as_int16(name: str, values: torch.Tensor, what: str) -> np.ndarray:
    """``values`` rounded to int16, or ``ValueError`` when they leave the int16 range (no silent clamp)."""
    low, high = (float(v) for v in torch.aminmax(values))
    if low < _INT16.min - 0.5 or high > _INT16.max + 0.5:
        raise ValueError(f"{name}: {what} span [{low:g}, {high:g}], outside the int16 range stored in the cache")
    return torch.round(values).to(torch.int16).contiguous().numpy()


def _file_record(path: Path, folder: Path) -> dict:
    """What the bank checks before and while reading a prepared array: place, layout, size, and the checksums
    of its header and of each block of ``block_planes`` planes, computed from the file as written."""
    array = np.load(path, mmap_mode="r")
    offset, dtype, shape = int(array.offset), array.dtype, tuple(int(n) for n in array.shape)
    del array
    label = path.relative_to(folder).as_posix()
    planes = block_planes(shape, dtype.itemsize)
    plane_bytes = dtype.itemsize * math.prod(shape[1:])
    checksums = []
    with open(path, "rb") as handle:
        header = handle.read(offset)
        for block in range(-(-shape[0] // planes)):
            count = min(planes, shape[0] - block * planes)
            data = handle.read(count * plane_bytes)
            if len(data) != count * plane_bytes:
                raise ValueError(f"{label}: the file ended early while it was checksummed (disk full?)")
            checksums.append(block_checksum(data, label, block))
    return {"path": label, "offset": offset, "dtype": dtype.str, "shape": list(shape), "size": path.stat().st_size,
            "header": block_checksum(header, label, "header"), "block_planes": planes, "checksums": checksums}


def prepare_one(source: CTSource, output: Path, settings: PreparationSettings) -> dict:
    """Prepare one CT into ``output/cts/<key>/`` and return its index entry (raises if it cannot be read)."""
    volume = at_spacing(_read_source(source, spacing=min(settings.spacing)), settings.spacing)
    hu = _as_int16("hu", volume.hu[0], "the resampled HU")
    labels = None if volume.labels is None else _as_int16("labels", volume.labels[0].float(), "the label values")
    hu_tensor = torch.from_numpy(hu)
    arrays = {
        "hu": hu,
        "tissue": tissue_grid(hu_tensor, settings.tissue_block, settings.air_threshold_hu).numpy(),
        "weights": weight_table(hu_tensor, weighting=settings.weighting, air_threshold_hu=settings.air_threshold_hu),
    }
    if labels is not None:
        arrays["labels"] = labels
    key = source.key
    final = output / "cts" / key
    staging = output / "cts" / f"{key}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(staging / f"{name}.npy", array)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    names = volume.label_names
    entry = {
        "key": key, "source": source.name, "patient": source.patient or source.name, "shape": list(hu.shape),
        "affine": volume.affine.tolist(), "spacing": volume.spacing.tolist(),
        "label_names": None if names is None else {str(k): v for k, v in names.items()},
        "content_hash": content_hash(hu, labels, volume.affine), "source_stat": source.stat(),
        "settings": settings.to_json(), "files": {name: _file_record(final / f"{name}.npy", output) for name in arrays},
    }
    entry["digests"] = field_digests(entry)
    _write_json(final / "entry.json", entry)
    return entry


def _write_json(path: Path, value) -> None:
    """Write JSON atomically (a temporary file, then a rename), so a kill leaves the old file or the new one."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    temporary.write_text(json.dumps(value, indent=1))
    os.replace(temporary, path)


# ----------------------------------------------------------------------------------------- the folder


def _finished_entry(source: CTSource, output: Path, settings: PreparationSettings) -> dict | None:
    """The entry of a CT already prepared with these settings from an unchanged source, else ``None``."""
    path = output / "cts" / source.key / "entry.json"
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("settings") != settings.to_json() or entry.get("source") != source.name:
        return None
    if entry.get("digests") != field_digests(entry) or set(entry["digests"]) != set(ENTRY_FIELDS):
        return None  # edited or damaged: prepared again
    if source.path is not None and entry.get("source_stat") != source.stat():
        return None
    try:
        for record in entry["files"].values():
            file = output / str(record["path"])
            if not file.is_file() or file.stat().st_size != record["size"]:
                return None
    except (AttributeError, KeyError, TypeError, OSError):
        return None
    return entry


def _check_folder(output: Path, settings: PreparationSettings, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ValueError(f"output: expected a folder, got the file {output}")
    blocking = next((parent for parent in output.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ValueError(f"output: cannot make the folder {output}: {blocking} is a file, not a folder")
    index = output / INDEX_NAME
    if index.exists() and not overwrite:
        try:
            previous = json.loads(index.read_text()).get("settings")
        except (ValueError, AttributeError):
            previous = None
        if isinstance(previous, dict):  # an older format's CTs are prepared again without asking
            previous = {key: value for key, value in previous.items() if key != "format_version"}
        ours = {key: value for key, value in settings.to_json().items() if key != "format_version"}
        if previous is not None and previous != ours:
            raise ValueError(
                f"output: {output} holds CTs prepared with settings {previous}; asked {settings.to_json()}: "
                "choose another folder, or pass overwrite=True (--overwrite) to prepare them again"
            )
    for stale in (output / "cts").glob("*.tmp-*") if (output / "cts").is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed preparation


# ------------------------------------------------------------------------------------------- prepare


def prepare(
    sources,
    output: str | Path,
    *,
    spacing: float | Sequence[float] = 1.0,
    workers: int = 1,
    air_threshold_hu: float = -900.0,
    weighting: str = "soft",
    patient_id: Callable[[str], str] | None = None,
    on_error: str = "skip",
    overwrite: bool = False,
    progress: bool | None = None,
) -> PreparationReport:
    """Resample CTs once to ``spacing`` and store them in ``output`` for :class:`~onthefly.sampling.bank.VolumeBank`.

    Args:
        sources: CTs, as :func:`expand_sources` takes them (files, DICOM folders,
            globs, list files, Volumes, torchio Subjects, a
            :class:`~onthefly.sampling.phantom_store.PhantomSource` or ``"phantom:REGION,...[:N]"``:
            phantoms generated one at a time as they are prepared).
        output: the prepared folder (created; an unfinished one is resumed).
        spacing: voxel edge(s) in mm, the sampler's ``spacing``.
        workers: CTs prepared at once, each in a thread of this process (1: one after the other).
            Reading, resampling, hashing and writing release the interpreter lock, so the threads
            run side by side; no process is started and nothing is imported again, so a plain
            script may call ``prepare(..., workers=4)`` without an ``if __name__ == "__main__"`` guard.
        air_threshold_hu, weighting: as the sampler's (tissue blocks and weights depend on them).
        patient_id: maps a CT's path to its patient id (see :func:`expand_sources`).
        on_error: ``"skip"``: CTs that cannot be read are reported (a warning
            naming each) and left out; ``"raise"``: the same, then ``ValueError``
            naming them once the others are prepared.
        overwrite: prepare into a folder that holds CTs of other settings (they are redone).
        progress: show a progress bar (default: when stderr is a terminal).

    Returns:
        a :class:`PreparationReport`; ``output/index.json`` lists the prepared CTs.

    Raises:
        ValueError: bad arguments (named); ``sources: none of the N CT(s) could be
            prepared`` when no CT is in the folder at the end (whatever ``on_error``).

    Example:
        >>> import tempfile
        >>> ct = Volume.from_tensor(torch.full((8, 8, 8), 40.0), spacing=2.0)
        >>> report = prepare([ct], tempfile.mkdtemp(), spacing=4.0)
        >>> len(report.prepared), read_index(report.output)["cts"][0]["shape"]
        (1, [4, 4, 4])
    """
    settings = PreparationSettings.create(spacing, air_threshold_hu=air_threshold_hu, weighting=weighting)
    if not is_int(workers) or workers < 1:
        raise ValueError(f"workers: expected an int >= 1 (worker processes), got {workers!r}")
    check_choice("on_error", on_error, ("skip", "raise"))
    listed = expand_sources(sources, patient_id=patient_id)
    if not listed:
        raise ValueError("sources: expected at least one CT, got none")
    output = Path(output)
    _check_folder(output, settings, overwrite)
    try:
        (output / "cts").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"output: cannot make the folder {output} ({error.strerror or error})") from None
    (output / INDEX_NAME).unlink(missing_ok=True)  # an index marks a finished preparation
    report = PreparationReport(output=output)
    entries: dict[int, dict] = {}
    todo = []
    for position, source in enumerate(listed):
        entry = _finished_entry(source, output, settings)
        if entry is None:
            todo.append(position)
        else:
            entries[position] = entry
            report.skipped.append(source.name)
    _run(listed, todo, output, settings, workers, entries, report, progress)
    order = {source.name: position for position, source in enumerate(listed)}  # threads finish in any order
    report.prepared.sort(key=order.__getitem__)
    report.failed.sort(key=lambda failure: order[failure[0]])
    ordered = [entries[p] for p in sorted(entries)]
    index = {"format": FORMAT, "version": FORMAT_VERSION, "settings": settings.to_json(), "cts": ordered,
             "failed": [{"source": name, "reason": reason} for name, reason in report.failed]}
    index["digest"] = index_digest(index)
    _write_json(output / INDEX_NAME, index)
    _report_failures(report, on_error)
    return report


def _report_failures(report: PreparationReport, on_error: str) -> None:
    if not report.failed:
        return
    lines = "\n".join(f"  {name}: {reason}" for name, reason in report.failed)
    if not report.prepared and not report.skipped:  # nothing to serve: never a quiet success
        raise ValueError(f"sources: none of the {len(report.failed)} CT(s) could be prepared:\n{lines}")
    message = f"{len(report.failed)} CT(s) could not be prepared and were left out:\n{lines}"
    if on_error == "raise":
        raise ValueError(f"sources: {message}")
    warnings.warn(message, stacklevel=3)


def _progress_bar(total: int, progress: bool | None):
    from tqdm.auto import tqdm

    quiet = not sys.stderr.isatty() if progress is None else not progress
    return tqdm(total=total, desc="prepare", unit="CT", disable=quiet, mininterval=1.0)


def _run(listed, todo, output, settings, workers, entries, report, progress) -> None:
    """Prepare the CTs at positions ``todo``, in this thread or in ``workers`` threads.

    Threads, not processes: a process pool would start interpreters that import the
    caller's script again (spawn, forkserver) and run it once per worker when it has no
    ``__main__`` guard, or fork a process whose OpenMP threads may hang the child (fork).
    The work (file reads, torch resampling, numpy sums, CRC-32, writes) releases the
    interpreter lock. Each thread's torch ops use ``cores // workers`` OpenMP threads;
    this thread's setting is restored afterwards.
    """
    with _progress_bar(len(todo), progress) as bar:
        if workers == 1 or len(todo) <= 1:
            for position in todo:
                _record(position, listed[position], _attempt(listed[position], output, settings), entries, report)
                bar.update()
            return
        threads = max(1, (os.cpu_count() or 1) // workers)
        before = torch.get_num_threads()
        try:
            with ThreadPoolExecutor(min(workers, len(todo)), thread_name_prefix="onthefly-prepare",
                                    initializer=_init_worker, initargs=(threads,)) as pool:
                futures = {pool.submit(_attempt, listed[p], output, settings): p for p in todo}
                try:
                    for future in as_completed(futures):
                        position = futures[future]
                        _record(position, listed[position], future.result(), entries, report)
                        bar.update()
                except BaseException:  # an interrupt: the CTs not started are not started
                    for future in futures:
                        future.cancel()
                    raise
        finally:
            torch.set_num_threads(before)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)  # this thread's OpenMP team (MKL's is process-wide: restored by _run)


def _attempt(source: CTSource, output: Path, settings: PreparationSettings) -> tuple[bool, object]:
    """``(True, entry)``, or ``(False, reason)`` when the CT cannot be read or prepared."""
    try:
        return True, prepare_one(source, output, settings)
    except Exception as error:  # noqa: BLE001 - any reader failure is reported with the CT's name
        return False, f"{type(error).__name__}: {error}"


def _record(position: int, source: CTSource, outcome: tuple[bool, object], entries: dict, report) -> None:
    ok, value = outcome
    if ok:
        entries[position] = value
        report.prepared.append(source.name)
    else:
        report.failed.append((source.name, str(value)))

