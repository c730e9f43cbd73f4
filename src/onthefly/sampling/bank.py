"""``VolumeBank``: the sampler's CTs served from a prepared cache, in memory that does not grow with their number.

Residency: none of a CT stays in the process. Every batch reads its crops
straight from the prepared ``.npy`` files with explicit positioned reads (one
read per crop plane, in a few threads), converts them to attenuation and sends
them to the device; the pooled correspondence weights come from eight reads per
coarse voxel of the CT's summed-weight table; the tissue grids used to reject
degenerate draws are small and kept in a cache bounded by ``memory_budget``.
Reads are not memory mappings, so the file pages the kernel caches are not
counted in the process's resident memory; the kernel's page cache is the CT
cache, shared by every process and rank of the machine, and given back under
memory pressure.

Measured on a 2-core CPU (bundled CT at 1 mm, 16 crops of 200 mm): reading the
crops takes 0.12 s per batch from the page cache and 0.35 s from disk, against
0.65 s for gathering them from the sampler's resident float32 stack; the
pooled weights of 16 crops take 0.015 s from the tables, 0.7 s if computed from
the crops.

A batch depends only on ``(seed, rank, step)`` and the configuration: the bank
has no rounds or pools, so :meth:`VolumeBank.available` returns every candidate.

Integrity: at opening, every index entry is checked against the digests of its
fields written at preparation, against the index's settings (spacing, the
affine's column norms) and against the size of each file its shape implies; at
the first read of a file its ``.npy`` header is checked, and at the first read
from a block of planes (about 1 MiB) the whole block is read and compared with
its CRC-32 from the preparation (verified blocks are remembered, so later reads
are plain positioned reads of the crop's rows). A damaged block, or a file of
another CT, raises ``ValueError`` naming the CT and the file before any of its
values leaves the bank. :meth:`VolumeBank.verify` checks every block of every file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._checks import check_choice, is_int
from ..correspondence import WEIGHTINGS, CoarseWeights, coarse_grid_affine, coarse_voxel_size
from ..volume import MU_WATER_PER_MM, check_mu_water, crop_affine, hu_to_attenuation_
from .cache_format import (
    INDEX_NAME,
    ArrayFile,
    BankCT,
    content_hash,
    index_digest,
    is_prepared_folder,
    read_index,
    settings_from_index,
)
from .grids import MAX_BOX_VOXELS, pooled_from_table, table_corners
from .partition import patient_split, shard_positions
from .preparation import prepare
from .store import VolumeStore

__all__ = ["VolumeBank", "parse_bytes", "is_prepared_folder"]

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(name: str, value: int | float | str) -> int:
    """A byte count from an int or a string such as ``"2GB"``, ``"512 MiB"`` or ``"1.5g"`` (GB = 10**9, GiB = 2**30).

    Example:
        >>> parse_bytes("memory_budget", "2GB"), parse_bytes("memory_budget", "1 KiB")
        (2000000000, 1024)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{name}: expected bytes as a number or a string like '2GB', got {type(value).__name__}")
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(f"{name}: expected bytes like '2GB', '512MiB' or 2000000000, got {value!r}")
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a number of bytes >= 0, got {value!r}")
    return int(value)


class _TemporaryCache:
    """A temporary prepared folder, removed when the last bank using it is collected."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="onthefly-cache-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)


class _TissueCache:
    """Least-recently-used cache of whole tissue grids, at most ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self._grids: OrderedDict[int, Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, index: int, load) -> Tensor:
        with self._lock:
            if index in self._grids:
                self._grids.move_to_end(index)
                return self._grids[index]
        grid = load()
        size = grid.numel() * grid.element_size()
        with self._lock:
            if size <= self.budget and index not in self._grids:
                while self.bytes + size > self.budget:
                    _, evicted = self._grids.popitem(last=False)
                    self.bytes -= evicted.numel() * evicted.element_size()
                self._grids[index] = grid
                self.bytes += size
        return grid


# ------------------------------------------------------------------------------------------------ bank


class VolumeBank(VolumeStore):
    """CTs read from a prepared cache, for :class:`~onthefly.DRRCorrespondenceSampler` (``volumes=bank``).

    Memory does not grow with the number of CTs: crops are read from the
    cache's files for every batch (see the module documentation); only small
    per-CT numbers (shapes, affines) and a bounded cache of tissue grids stay.

    Args:
        source: a prepared folder (``onthefly prepare``), or CTs to prepare
            into ``cache`` first (anything :func:`~onthefly.sampling.preparation.prepare` takes).
        spacing: voxel edge(s) in mm. For a prepared folder, checked against its
            spacing (``None``: the folder's); for CTs, the spacing to prepare
            them at (``None``: 1 mm, the sampler's default).
        memory_budget: bytes (or ``"2GB"``) the bank keeps between batches
            (:attr:`resident_bytes`: the tissue-grid cache) at most.
        mu_water: attenuation of water (1/mm) for :meth:`crops`.
        weighting, air_threshold_hu: must match the preparation's (``None``: the
            preparation's); CTs are prepared with them.
        cache: folder to prepare CTs into (default: a temporary folder, removed
            with the bank); ignored for a prepared folder.
        workers: CTs prepared at once (threads; see :func:`~onthefly.sampling.preparation.prepare`).
        on_error: for CTs that cannot be read: ``"skip"`` (a warning names
            them) or ``"raise"`` (``ValueError`` naming them).
        read_threads: threads reading crops (default: up to 4, one per core).
        device: where :meth:`pooled_weights` puts the weights (:meth:`crops` takes its own).

    Example:
        >>> from onthefly import Volume
        >>> ct = Volume.from_tensor(torch.full((24, 24, 24), 40.0), spacing=2.0)
        >>> bank = VolumeBank([ct], spacing=2.0)
        >>> attenuation, _ = bank.crops(torch.tensor([0]), torch.tensor([[2, 2, 2]]), (8, 8, 8), device="cpu")
        >>> len(bank), attenuation.shape
        (1, torch.Size([1, 8, 8, 8]))
    """

    def __init__(
        self,
        source,
        *,
        spacing: float | Sequence[float] | None = None,
        memory_budget: int | str = "2GB",
        mu_water: float = MU_WATER_PER_MM,
        weighting: str | None = None,
        air_threshold_hu: float | None = None,
        cache: str | Path | None = None,
        workers: int = 1,
        on_error: str = "skip",
        read_threads: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        budget = parse_bytes("memory_budget", memory_budget)
        mu_water = check_mu_water(mu_water)
        if read_threads is None:
            read_threads = max(1, min(4, os.cpu_count() or 1))
        if not is_int(read_threads) or read_threads < 1:
            raise ValueError(f"read_threads: expected an int >= 1, got {read_threads!r}")
        folder, keepalive = _prepared_folder(
            source, cache=cache, spacing=1.0 if spacing is None else spacing, workers=workers, on_error=on_error,
            air_threshold_hu=-900.0 if air_threshold_hu is None else air_threshold_hu,
            weighting="soft" if weighting is None else weighting,
        )
        index = read_index(folder)
        settings = settings_from_index(index["settings"], folder)
        cts = [BankCT.from_entry(folder, entry, index["settings"], position) for position, entry in enumerate(index["cts"])]
        if index["digest"] != index_digest(index):
            raise ValueError(f"volumes: {folder / INDEX_NAME}: its settings, list of CTs or failures differ from what the "
                             "preparation wrote (edited or damaged); prepare the folder again")
        if not cts:
            failed = "; ".join(f"{f['source']}: {f['reason']}" for f in index.get("failed", []))
            raise ValueError(f"volumes: {folder} holds no prepared CT" + (f" (could not read: {failed})" if failed else ""))
        self._setup(folder, settings, cts, budget, float(mu_water), read_threads, keepalive, torch.device(device))
        if spacing is not None:
            self.check_spacing(spacing)
        self._check_settings(weighting, air_threshold_hu)
        for ct in cts:
            for file in ct.files.values():
                file.check_present(ct.name)

    def _setup(self, folder, settings, cts, budget, mu_water, read_threads, keepalive, device) -> None:
        self.folder = folder
        self.device = device
        self.settings = settings
        self._cts = tuple(cts)
        self.memory_budget = budget
        self.mu_water = mu_water
        self.weighting = settings.weighting
        self.air_threshold_hu = settings.air_threshold_hu
        self.spacing = torch.tensor(settings.spacing, dtype=torch.float64)
        self.tissue_block = torch.tensor(settings.tissue_block, dtype=torch.long)
        self.shapes = torch.tensor([ct.shape for ct in cts], dtype=torch.long).reshape(-1, 3)
        self.affines = torch.tensor([ct.affine for ct in cts], dtype=torch.float64).reshape(-1, 4, 4)
        self.label_names = tuple(ct.label_names for ct in cts)
        self.has_labels = all("labels" in ct.files for ct in cts)
        self._read_threads = read_threads
        self._keepalive = keepalive
        self._tissue = _TissueCache(budget)
        self._checked: set[tuple[int, str]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = None

    def _check_settings(self, weighting: str | None, air_threshold_hu: float | None) -> None:
        if weighting is not None and check_choice("weighting", weighting, WEIGHTINGS) != self.weighting:
            raise ValueError(
                f"weighting: the cache {self.folder} was prepared with weighting {self.weighting!r}, asked {weighting!r}; "
                "prepare the CTs again with that weighting (into another folder)"
            )
        if air_threshold_hu is not None and float(air_threshold_hu) != self.air_threshold_hu:
            raise ValueError(
                f"air_threshold_hu: the cache {self.folder} was prepared with {self.air_threshold_hu:g} HU, "
                f"asked {air_threshold_hu!r}; prepare the CTs again with that threshold (into another folder)"
            )

    # ---------------------------------------------------------------------------------- description
    def __repr__(self) -> str:
        spacing = " x ".join(f"{s:g}" for s in self.settings.spacing)
        return f"VolumeBank({len(self)} CTs at {spacing} mm from {self.folder})"

    def name(self, index: int) -> str:
        """The source of CT ``index`` (its path), for messages."""
        return self._cts[self._check_index(index)].name

    def patient(self, index: int) -> str:
        """The patient id of CT ``index``."""
        return self._cts[self._check_index(index)].patient

    def _check_index(self, index: int) -> int:
        if not is_int(index) or not 0 <= index < len(self):
            raise IndexError(f"index: expected an int in [0, {len(self)}), got {index!r}")
        return index

    def fingerprint(self) -> str:
        """A stable hash of the CTs (their content hashes, in order) and the preparation settings."""
        payload = json.dumps({"settings": self.settings.to_json(), "cts": [ct.content_hash for ct in self._cts]})
        return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()

    @property
    def resident_bytes(self) -> int:
        """Bytes the bank holds between batches (its tissue-grid cache); never above ``memory_budget``."""
        return self._tissue.bytes

    # --------------------------------------------------------------------------------------- checks
    def check_spacing(self, spacing: float | Sequence[float] | Tensor) -> None:
        """``ValueError`` unless ``spacing`` (mm) is the spacing the CTs were prepared at."""
        asked = torch.as_tensor(spacing, dtype=torch.float64).reshape(-1).expand(3)
        if not torch.allclose(asked, self.spacing, rtol=1e-6, atol=0):
            raise ValueError(
                f"spacing: the cache {self.folder} holds CTs prepared at {self.spacing.tolist()} mm, the sampler asks "
                f"{asked.tolist()} mm; prepare them at that spacing (`onthefly prepare ... --spacing`) into another folder"
            )

    def too_small(self, crop_voxels: Sequence[int] | Tensor) -> list[int]:
        """Indices of the CTs smaller than a crop of ``crop_voxels`` ``(3,)`` voxels along some axis."""
        crop = torch.as_tensor(crop_voxels, dtype=torch.long).reshape(3)
        return torch.nonzero((self.shapes < crop).any(1)).flatten().tolist()

    def check_crop(self, crop_voxels: Sequence[int] | Tensor, spacing: Sequence[float] | None = None) -> None:
        """``ValueError`` naming the CTs smaller than a crop of ``crop_voxels`` ``(3,)`` voxels, with both sizes.

        ``spacing`` (mm, default: the bank's) only sets the crop's size in mm in the message.
        """
        small = self.too_small(crop_voxels)
        if not small:
            return
        crop = [int(c) for c in torch.as_tensor(crop_voxels).reshape(3)]
        spacing = self.settings.spacing if spacing is None else [float(s) for s in spacing]
        crop_mm = " x ".join(f"{c * s:g}" for c, s in zip(crop, spacing))
        listed = "; ".join(f"{self.name(i)} ({' x '.join(map(str, self._cts[i].shape))} voxels)" for i in small[:5])
        more = f" and {len(small) - 5} more" if len(small) > 5 else ""
        raise ValueError(
            f"crop_size: the crop of {' x '.join(map(str, crop))} voxels ({crop_mm} mm) is larger than "
            f"{len(small)} CT(s): {listed}{more}; use a smaller crop, or leave them out with bank.fitting(crop_voxels)"
        )

    def fitting(self, crop_voxels: Sequence[int] | Tensor) -> "VolumeBank":
        """The bank of the CTs that hold a crop of ``crop_voxels`` ``(3,)`` voxels."""
        small = set(self.too_small(crop_voxels))
        return self._subset([i for i in range(len(self)) if i not in small], "crop_voxels")

    def verify(self) -> None:
        """Read every prepared file of every CT (HU, labels, weight table, tissue grid) and compare each block
        with its checksum, each header with the index, and the HU, labels and affine with the CT's content
        hash (slow: reads the whole cache). ``ValueError`` naming the CT and the file."""
        for position, ct in enumerate(self._cts):
            for file in ct.files.values():
                try:
                    file.check_content(ct.name)
                    with open(file.path, "rb", buffering=0) as handle:
                        for block in range(len(file.checksums)):
                            file.read_block(handle, block, ct.name)
                except ValueError as error:
                    raise ValueError(f"volumes: the prepared CT {ct.name} changed since it was indexed: {error}") from None
            hu = np.load(ct.files["hu"].path)
            labels = np.load(ct.files["labels"].path) if "labels" in ct.files else None
            if content_hash(hu, labels, self.affines[position]) != ct.content_hash:
                raise ValueError(f"volumes: the prepared CT {ct.name} changed since it was indexed; prepare it again")

    # ------------------------------------------------------------------------------------ sub-banks
    def _subset(self, positions: Sequence[int], argument: str, device: torch.device | None = None) -> "VolumeBank":
        if not positions:
            raise ValueError(f"{argument}: the selection leaves no CT of the {len(self)} in the bank")
        bank = object.__new__(VolumeBank)
        bank._setup(self.folder, self.settings, [self._cts[p] for p in positions], self.memory_budget,
                    self.mu_water, self._read_threads, self._keepalive, device or self.device)
        return bank

    def to(self, device: torch.device | str) -> "VolumeBank":
        """The same bank serving ``device`` (``self`` if it already does)."""
        device = torch.device(device)
        return self if device == self.device else self._subset(range(len(self)), "device", device)

    def shard(self, rank: int, world: int) -> "VolumeBank":
        """CTs ``rank, rank + world, ...``: disjoint banks for the ``world`` ranks of a distributed run."""
        return self._subset(shard_positions(len(self), rank, world), "rank")

    def split(self, fractions: Sequence[float], *, seed: int) -> tuple["VolumeBank", ...]:
        """Disjoint banks holding about ``fractions`` of the CTs each, never one patient in two of them.

        Patients are shuffled with ``seed`` and given in turn to the bank whose
        share of CTs is not yet reached.

        Example:
            >>> from onthefly import Volume
            >>> cts = [Volume.from_tensor(torch.full((8, 8, 8), 40.0 + i), spacing=2.0) for i in range(5)]
            >>> train, held_out = VolumeBank(cts, spacing=2.0).split((0.8, 0.2), seed=0)
            >>> len(train), len(held_out)
            (4, 1)
        """
        members = patient_split([ct.patient for ct in self._cts], fractions, seed=seed)
        return tuple(self._subset(sorted(chosen), "fractions") for chosen in members)

    # -------------------------------------------------------------------------------------- drawing
    # available() is VolumeStore's: every candidate may be drawn at every step (no rounds of resident CTs);
    # crops are read when a batch is made (the Prefetcher overlaps that with training).

    def tissue_blocks(self, volume_index: Tensor, first_block: Tensor, count: Sequence[int]) -> Tensor:
        """Non-air fraction of tissue blocks ``[first_block, first_block + count)`` of CT ``volume_index[b]``.

        Args:
            volume_index: ``(B,)`` CPU long.
            first_block: ``(B, 3)`` CPU long, block indices (blocks of :attr:`tissue_block` voxels).
            count: blocks per axis ``(c0, c1, c2)``; indices past a CT's grid read its last block.

        Returns:
            ``(B, c0, c1, c2)`` float32 CPU, fractions in [0, 1].
        """
        volume_index, first_block = self._check_indices(volume_index, first_block, "first_block")
        count = _check_size("count", count)
        out = torch.empty(volume_index.shape[0], *count)
        for b, (ct, first) in enumerate(zip(volume_index.tolist(), first_block.tolist())):
            grid = self._tissue.get(ct, lambda ct=ct: self._load_tissue(ct))
            index = [torch.arange(f, f + n).clamp(0, g - 1) for f, n, g in zip(first, count, grid.shape)]
            out[b] = grid[index[0][:, None, None], index[1][None, :, None], index[2][None, None, :]]
        return out

    def _load_tissue(self, ct: int) -> Tensor:
        file = self._checked_file(ct, "tissue")
        grid = file.read_planes(range(file.shape[0]), 0, file.shape[1], self._cts[ct].name)
        if not bool(np.isfinite(grid).all()) or grid.min() < 0 or grid.max() > 1:
            raise ValueError(f"volumes: the prepared file {file.path} of CT {self._cts[ct].name} holds tissue fractions "
                             "outside [0, 1]; run `onthefly prepare` again")
        return torch.from_numpy(grid)

    # -------------------------------------------------------------------------------------- batches
    def crops(
        self, volume_index: Tensor, start: Tensor, size: Sequence[int], *, device=None, labels: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Crops ``[start, start + size)`` of CTs ``volume_index``, as attenuation on ``device``.

        Args:
            volume_index: ``(B,)`` CPU long.
            start: ``(B, 3)`` CPU long voxel indices; every box must lie inside its CT.
            size: ``(d, h, w)`` voxels.
            device: where the crops go (default: :attr:`device`).
            labels: also return the label maps' crops (needs :attr:`has_labels`).

        Returns:
            ``(B, d, h, w)`` float32 attenuation ``mu_water (1 + HU / 1000)`` clamped at 0
            (1/mm), and ``(B, d, h, w)`` int16 labels or ``None``.
        """
        volume_index, start = self._check_indices(volume_index, start, "start")
        size = _check_size("size", size)
        self._check_boxes(volume_index, start, start + torch.tensor(size), "start, size")
        if labels and not self.has_labels:
            missing = next(self.name(i) for i, ct in enumerate(self._cts) if "labels" not in ct.files)
            raise ValueError(f"labels: every CT needs a label map, and {missing} has none")
        device = self.device if device is None else torch.device(device)
        on_host = device.type == "cpu"
        batch = volume_index.shape[0]
        pinned = not on_host and device.type == "cuda"
        hu = torch.empty(batch, *size, dtype=torch.float32 if on_host else torch.int16, pin_memory=pinned)
        label_maps = torch.empty(batch, *size, dtype=torch.int16, pin_memory=pinned) if labels else None

        def read(b: int) -> tuple[np.ndarray, np.ndarray | None]:
            ct, corner = int(volume_index[b]), start[b].tolist()
            label_box = self._read_box(ct, "labels", corner, size) if labels else None
            return self._read_box(ct, "hu", corner, size), label_box

        def use(b: int, boxes: tuple[np.ndarray, np.ndarray | None]) -> None:
            hu[b].copy_(torch.from_numpy(boxes[0]))
            if on_host:
                hu_to_attenuation_(hu[b], mu_water=self.mu_water)
            if label_maps is not None:
                label_maps[b].copy_(torch.from_numpy(boxes[1]))

        self._pipeline(read, use, batch)
        attenuation = hu if on_host else hu_to_attenuation_(hu.to(device).float(), mu_water=self.mu_water)
        return attenuation, None if label_maps is None else label_maps.to(device)

    def _read_box(self, ct: int, name: str, corner: Sequence[int], size: Sequence[int]) -> np.ndarray:
        file = self._checked_file(ct, name)
        planes = range(corner[0], corner[0] + size[0])
        rows = file.read_planes(planes, corner[1], corner[1] + size[1], self._cts[ct].name)
        return rows[:, :, corner[2] : corner[2] + size[2]]

    def pooled_weights(self, volume_index: Tensor, start: Tensor, stop: Tensor, factor: Tensor, *,
                       grid_shape: tuple[int, int, int] | None = None) -> CoarseWeights:
        """Correspondence weights of crops ``[start, stop)`` average-pooled by ``factor``, on :attr:`device`.

        As :meth:`~onthefly.correspondence.WeightIntegral.pool`: each sample's
        coarse grid starts at its crop's first voxel, partial coarse voxels at
        the far edges count the missing voxels as air, grids are zero-padded to
        the batch's largest. Weights are exact to 3e-5 (the tables' quantisation).

        Args:
            volume_index: ``(B,)`` CPU long.
            start, stop: ``(B, 3)`` CPU long crop boxes inside each CT.
            factor: ``(B, 3)`` CPU long fine voxels per coarse voxel edge (at most
                ``MAX_BOX_VOXELS`` fine voxels per coarse voxel).
            grid_shape: the coarse grid ``(d, h, w)`` to fill (at least every
                sample's; the rest is air), for static shapes; default the batch's largest.

        Returns:
            :class:`~onthefly.correspondence.CoarseWeights`: weight ``(B, d, h, w)``,
            affine ``(B, 4, 4)`` (coarse index to world mm), voxel_size ``(B,)`` mm.
        """
        volume_index, start = self._check_indices(volume_index, start, "start")
        stop, factor = (torch.as_tensor(t) for t in (stop, factor))
        for name, tensor in (("stop", stop), ("factor", factor)):
            if tuple(tensor.shape) != tuple(start.shape) or tensor.dtype != torch.long or tensor.device.type != "cpu":
                raise ValueError(f"{name}: expected a {tuple(start.shape)} CPU long tensor, got "
                                 f"{tuple(tensor.shape)} {tensor.dtype} on {tensor.device}")
        self._check_boxes(volume_index, start, stop, "start, stop")
        if bool((factor < 1).any()) or bool((factor.prod(1) > MAX_BOX_VOXELS).any()):
            raise ValueError(f"factor: expected pooling factors >= 1 with at most {MAX_BOX_VOXELS} voxels per "
                             f"coarse voxel, got {factor.tolist()}")
        cells = -(-(stop - start) // factor)  # (B, 3) coarse voxels per sample
        grid = cells.amax(0).tolist()
        if grid_shape is not None:
            if len(grid_shape) != 3 or any(int(g) < n for g, n in zip(grid_shape, grid)):
                raise ValueError(f"grid_shape: expected at least {tuple(grid)} coarse voxels, got {grid_shape!r}")
            grid = [int(g) for g in grid_shape]
        weight = torch.zeros(start.shape[0], *grid)

        def read(b: int) -> tuple[np.ndarray, list[Tensor]]:
            return self._table_corners(int(volume_index[b]), start[b], stop[b], factor[b])

        def use(b: int, table: tuple[np.ndarray, list[Tensor]]) -> None:
            try:
                pooled = pooled_from_table(*table, factor[b])
            except ValueError:  # a weight above 1: only a table that is not the prepared one gives it
                ct = int(volume_index[b])
                raise ValueError(f"volumes: the prepared file {self._cts[ct].files['weights'].path} of CT "
                                 f"{self._cts[ct].name} gives a pooled weight above 1; run `onthefly prepare` again") \
                    from None
            n0, n1, n2 = pooled.shape
            weight[b, :n0, :n1, :n2] = pooled

        self._pipeline(read, use, start.shape[0])
        affine = coarse_grid_affine(crop_affine(self.affines[volume_index], start), factor)
        voxel_size = coarse_voxel_size(factor, self.affines[volume_index, :3, :3].norm(dim=1))
        return CoarseWeights(weight=weight.to(self.device), affine=affine.to(self.device), voxel_size=voxel_size)

    def _table_corners(self, ct: int, start: Tensor, stop: Tensor, factor: Tensor) -> tuple[np.ndarray, list[Tensor]]:
        """Summed-table rows at the coarse voxel boundaries of one crop, and the boundaries per axis.

        Boundaries: ``start, start + f, ...`` clipped to ``stop`` (the last coarse voxel may be partial);
        every box sum is below ``2**32``, so the table's sums modulo ``2**32`` give it exactly.
        """
        corners = table_corners(start, stop, factor)
        file = self._checked_file(ct, "weights")
        rows = file.read_planes(corners[0].tolist(), int(corners[1][0]), int(corners[1][-1]) + 1, self._cts[ct].name)
        return rows, corners

    # -------------------------------------------------------------------------------------- helpers
    def _checked_file(self, ct: int, name: str) -> ArrayFile:
        """The prepared file ``name`` of CT ``ct``, its header checked once per process (its blocks as they are read)."""
        file = self._cts[ct].files[name]
        key = (os.getpid(), ct, name)
        if key not in self._checked:
            file.check_content(self._cts[ct].name)
            self._checked.add(key)
        return file

    def _pipeline(self, read, use, count: int) -> None:
        """``use(b, read(b))`` for ``b`` in order, the reads a few samples ahead on the read threads.

        ``read`` only reads files (the threads wait on the disk, not on the
        interpreter); ``use`` does the tensor work on the calling thread, so
        torch's own threads are not oversubscribed.
        """
        if self._read_threads == 1 or count == 1:
            for b in range(count):
                use(b, read(b))
            return
        if self._executor is None or self._executor_pid != os.getpid():  # threads do not survive a fork
            self._executor = ThreadPoolExecutor(self._read_threads, thread_name_prefix="onthefly-read")
            self._executor_pid = os.getpid()
        window = 2 * self._read_threads
        pending = {b: self._executor.submit(read, b) for b in range(min(window, count))}
        for b in range(count):
            value = pending.pop(b).result()
            if b + window < count:
                pending[b + window] = self._executor.submit(read, b + window)
            use(b, value)

    def _check_indices(self, volume_index, boxes, name: str) -> tuple[Tensor, Tensor]:
        volume_index = torch.as_tensor(volume_index)
        boxes = torch.as_tensor(boxes)
        if volume_index.dim() != 1 or volume_index.dtype != torch.long or volume_index.device.type != "cpu":
            raise ValueError(f"volume_index: expected a (B,) CPU long tensor, got {tuple(volume_index.shape)} "
                             f"{volume_index.dtype} on {volume_index.device}")
        if tuple(boxes.shape) != (volume_index.shape[0], 3) or boxes.dtype != torch.long or boxes.device.type != "cpu":
            raise ValueError(f"{name}: expected a ({volume_index.shape[0]}, 3) CPU long tensor, got "
                             f"{tuple(boxes.shape)} {boxes.dtype} on {boxes.device}")
        if bool(((volume_index < 0) | (volume_index >= len(self))).any()):
            raise ValueError(f"volume_index: expected indices in [0, {len(self)}), got {volume_index.tolist()}")
        return volume_index, boxes

    def _check_boxes(self, volume_index: Tensor, start: Tensor, stop: Tensor, name: str) -> None:
        shapes = self.shapes[volume_index]
        bad = ((start < 0) | (stop > shapes) | (stop <= start)).any(1)
        if bool(bad.any()):
            b = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"{name}: the box [{start[b].tolist()}, {stop[b].tolist()}) leaves CT {self.name(int(volume_index[b]))} "
                f"of {tuple(shapes[b].tolist())} voxels (sample {b})"
            )

    def __getstate__(self) -> dict:
        """Pickled for DataLoader workers: without threads, caches, or the ownership of a temporary folder."""
        state = dict(self.__dict__)
        state.update(_executor=None, _executor_pid=None, _keepalive=None, _tissue=None, _checked=set())
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._tissue = _TissueCache(self.memory_budget)


def _check_size(name: str, size: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(size)
    if len(values) != 3 or any(not is_int(v) or v < 1 for v in values):
        raise ValueError(f"{name}: expected three positive ints (voxels), got {size!r}")
    return values


def _prepared_folder(source, *, cache, **settings) -> tuple[Path, _TemporaryCache | None]:
    """The prepared folder ``source`` names, or one that CTs ``source`` are prepared into (and its owner if temporary)."""
    if isinstance(source, (str, Path)) and not Path(source).exists() and not any(c in str(source) for c in "*?["):
        raise FileNotFoundError(f"volumes: no such prepared folder or CT file: {source}")
    if is_prepared_folder(source):
        return Path(source), None
    keepalive = _TemporaryCache() if cache is None else None
    folder = keepalive.path if keepalive is not None else Path(cache)
    prepare(source, folder, progress=False, **settings)
    return folder, keepalive

