"""Phantoms as a source of CTs: :class:`PhantomSource` (what to generate) and :class:`PhantomStore` (the store).

A :class:`PhantomSource` names regions and a range of seeds; CT ``i`` of it is
the phantom ``(regions[i // len(seeds)], seeds[i % len(seeds)])`` of
:func:`onthefly.phantoms.phantom`. Passed as a sampler's ``volumes``, it
becomes a :class:`PhantomStore` at the sampler's spacing and device: every
sample's phantom is generated there when a batch asks for it, from its
``(region, seed)`` alone, so a batch stays a pure function of the stream's
seed, rank and step (exact resume holds), and nothing is kept beyond the few
batches a small cache covers (the draw stage's tissue checks and the make
stage's crops read the same phantoms). Memory and start-up do not depend on
the number of seeds.

Each region's phantoms are embedded, centred, in one box of air per region
(:data:`REGION_BOX_MM`, grown to the crop if the crop is larger), so the
store knows every CT's shape and affine without generating it.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_int
from ..correspondence import CoarseWeights, pool_crop_weights
from ..phantoms import LABELS, REGIONS, phantom
from ..volume import Volume, hu_to_attenuation
from .grids import needs_resampling, tissue_block_voxels, tissue_grid
from .store import VolumeStore

__all__ = ["PhantomSource", "PhantomStore", "parse_phantom_source"]

#: Each region's box of air, world mm along x, y, z: a little more than the largest phantom of the region
#: (sizes and poses vary per seed; a larger phantom would lose its ends equally, none did over seeds 0-199).
REGION_BOX_MM = {"forearm": (140.0, 130.0, 330.0), "wrist": (170.0, 150.0, 170.0), "hand": (175.0, 195.0, 265.0)}
CACHE_BYTES = 2 * 2**30
"""Default bound of the generated phantoms a :class:`PhantomStore` keeps (HU and labels; least recently used
go first): at 2 mm a box takes 2-5 MB, so a pool of a few hundred phantoms is generated once per run."""
#: What ``--volumes phantom:...`` starts with on the command line.
PHANTOM_PREFIX = "phantom:"
CLI_SEEDS = 100
"""Seeds per region of ``phantom:REGION,...`` without ``:N``: a pool the store's cache holds at the command line's
spacings (so a training run generates each phantom once; the library's own default is 10,000)."""


@dataclass(frozen=True)
class PhantomSource:
    """Procedural extremity phantoms as the CTs of a sampler: ``regions`` times ``seeds``.

    Attributes:
        regions: names from :data:`onthefly.phantoms.REGIONS` (``"forearm"``,
            ``"wrist"``, ``"hand"``), each at most once.
        seeds: a ``range`` of non-negative seeds (or a sequence of distinct ones).

    Example:
        >>> source = PhantomSource(regions=("forearm", "hand"), seeds=range(0, 1000))
        >>> len(source), source.item(1001)
        (2000, ('hand', 1))
        >>> train, held_out = source.split((0.9, 0.1))
        >>> train.seeds, held_out.seeds
        (range(0, 900), range(900, 1000))
    """

    regions: tuple[str, ...] = REGIONS
    seeds: range | tuple[int, ...] = range(0, 10_000)

    def __post_init__(self) -> None:
        regions = (self.regions,) if isinstance(self.regions, str) else self.regions
        try:
            regions = tuple(regions)
        except TypeError:
            raise TypeError(f"regions: expected region names from {list(REGIONS)}, got {self.regions!r}") from None
        if not regions or any(region not in REGIONS for region in regions) or len(set(regions)) != len(regions):
            raise ValueError(f"regions: expected distinct region names from {list(REGIONS)}, got {self.regions!r}")
        object.__setattr__(self, "regions", regions)
        seeds = self.seeds
        if not isinstance(seeds, range):
            try:
                seeds = tuple(check_int("seeds", seed, minimum=0) for seed in seeds)
            except TypeError:
                raise TypeError(f"seeds: expected a range or a sequence of ints >= 0, got {self.seeds!r}") from None
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"seeds: expected distinct seeds, got {len(seeds) - len(set(seeds))} repeated")
        if len(seeds) == 0 or min(seeds) < 0:
            raise ValueError(f"seeds: expected a non-empty range of seeds >= 0, got {self.seeds!r}")
        object.__setattr__(self, "seeds", seeds)

    def __len__(self) -> int:
        return len(self.regions) * len(self.seeds)

    def item(self, index: int) -> tuple[str, int]:
        """``(region, seed)`` of CT ``index``."""
        index = check_int("index", index, minimum=0, maximum=len(self) - 1)
        return self.regions[index // len(self.seeds)], int(self.seeds[index % len(self.seeds)])

    def split(self, fractions: Sequence[float]) -> tuple["PhantomSource", ...]:
        """Sources with disjoint, consecutive shares ``fractions`` (summing to 1) of the seeds, every region each."""
        shares = [float(f) for f in fractions]
        if not shares or any(not math.isfinite(f) or f <= 0 for f in shares) or abs(sum(shares) - 1) > 1e-6:
            raise ValueError(f"fractions: expected positive fractions summing to 1, got {list(fractions)!r}")
        count = len(self.seeds)
        if count < len(shares):
            raise ValueError(f"fractions: {len(shares)} shares of {count} seeds would leave one empty")
        bounds = [0] + [round(count * sum(shares[: i + 1])) for i in range(len(shares))]
        bounds[-1] = count
        for i in range(1, len(bounds)):  # every share keeps at least one seed
            bounds[i] = min(max(bounds[i], bounds[i - 1] + 1), count - (len(bounds) - 1 - i))
        return tuple(PhantomSource(regions=self.regions, seeds=self.seeds[a:b]) for a, b in zip(bounds, bounds[1:]))

    def describe(self) -> str:
        """``phantom:forearm,wrist[seeds 0-899]``: the command line's form, with the seeds."""
        seeds = self.seeds
        if isinstance(seeds, range) and seeds.step == 1:
            span = f"{seeds.start}-{seeds.stop - 1}"
        else:
            span = ",".join(str(seed) for seed in list(seeds)[:8]) + ("..." if len(seeds) > 8 else "")
        return f"{PHANTOM_PREFIX}{','.join(self.regions)}[seeds {span}]"


def parse_phantom_source(text: str, *, seeds: int = CLI_SEEDS) -> PhantomSource:
    """``"phantom:forearm,wrist,hand"`` (seeds ``0`` to ``seeds - 1``) or ``"phantom:hand:500"`` (500 seeds)
    as a :class:`PhantomSource`.

    Example:
        >>> parse_phantom_source("phantom:wrist,hand:500")
        PhantomSource(regions=('wrist', 'hand'), seeds=range(0, 500))
    """
    usage = (f"expected 'phantom:' followed by regions from {list(REGIONS)} (comma-separated) and optionally "
             f"':N' seeds per region, got {text!r}")
    if not isinstance(text, str) or not text.startswith(PHANTOM_PREFIX):
        raise ValueError(f"volumes: {usage}")
    body = text[len(PHANTOM_PREFIX):]
    names, _, count = body.partition(":")
    regions = tuple(name.strip() for name in names.split(",") if name.strip())
    if not regions or any(name not in REGIONS for name in regions):
        raise ValueError(f"volumes: {usage}")
    if count:
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"volumes: {usage}")
        seeds = int(count)
    return PhantomSource(regions=regions, seeds=range(0, seeds))


class PhantomStore(VolumeStore):
    """The store of a :class:`PhantomSource` at one spacing and device (see the module's description).

    Args:
        source: the regions and seeds.
        spacing: ``(3,)`` mm; phantoms are generated at the finest of the three
            and resampled when they differ.
        device: where phantoms are generated and crops served.
        mu_water, air_threshold_hu, weighting: as :class:`~onthefly.sampling.config.SamplerConfig`.
        cache_bytes: bound of the generated phantoms kept (:data:`CACHE_BYTES`).
    """

    def __init__(self, source: PhantomSource, *, spacing: Sequence[float], device: torch.device | str = "cpu",
                 mu_water: float, air_threshold_hu: float, weighting: str, cache_bytes: int = CACHE_BYTES) -> None:
        if not isinstance(source, PhantomSource):
            raise TypeError(f"volumes: expected a PhantomSource, got {type(source).__name__}")
        self.source = source
        self.spacing = torch.tensor(list(spacing), dtype=torch.float64)
        self.device = torch.device(device)
        self.mu_water, self.air_threshold_hu, self.weighting = float(mu_water), float(air_threshold_hu), weighting
        self.tissue_block = tissue_block_voxels(self.spacing)
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[int, tuple[Tensor, Tensor, Tensor]] = OrderedDict()
        self._cached_bytes = 0
        boxes = {region: torch.ceil(torch.tensor(REGION_BOX_MM[region], dtype=torch.float64) / self.spacing).long()
                 for region in source.regions}
        self._names = {label: name for name, label in LABELS.items()}  # one label map for every region
        self._set_boxes(boxes)
        self.has_labels = True

    def _set_boxes(self, boxes: dict[str, Tensor]) -> None:
        self._boxes = boxes
        per_region = len(self.source.seeds)
        self.shapes = torch.stack([boxes[region] for region in self.source.regions]).repeat_interleave(per_region, 0)
        affines = []
        for region in self.source.regions:
            affine = torch.eye(4, dtype=torch.float64)
            affine[:3, :3] = torch.diag(self.spacing)
            affine[:3, 3] = -(boxes[region].double() - 1) * self.spacing / 2  # the box centred on the world origin
            affines.append(affine)
        self.affines = torch.stack(affines).repeat_interleave(per_region, 0)
        self.label_names = _SameNames(self._names, len(self.source))
        self._cache.clear()
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.source)

    def name(self, index: int) -> str:
        region, seed = self.source.item(index)
        return f"phantom {region} seed {seed}"

    def fingerprint(self) -> str:
        digest = hashlib.blake2b(digest_size=12)
        digest.update(repr((self.source.regions, _seed_key(self.source.seeds))).encode())
        digest.update(self.spacing.numpy().tobytes())
        for region in self.source.regions:
            digest.update(self._boxes[region].numpy().tobytes())
        return digest.hexdigest()

    def check_crop(self, crop_voxels: Sequence[int], spacing: Sequence[float]) -> None:
        """Grow each region's box of air to hold the crop (phantoms are smaller than many crops)."""
        crop = torch.tensor(list(crop_voxels), dtype=torch.long)
        if any(bool((box < crop).any()) for box in self._boxes.values()):
            self._set_boxes({region: torch.maximum(box, crop) for region, box in self._boxes.items()})

    # ------------------------------------------------------------------ generation
    def _generate(self, region: str, seed: int) -> Volume:
        finest = float(self.spacing.min())
        volume = phantom(region, seed, spacing=finest, device=self.device)
        # the 1 % rule, its tolerance taken relative to the generated (finest) edge
        if needs_resampling(self.spacing, torch.full((3,), finest, dtype=torch.float64)):
            volume = volume.resample(self.spacing.tolist())
        return volume

    def _entry(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """CT ``index`` in its box: HU and labels ``(D, H, W)`` on the device, and its tissue grid (CPU)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        region, seed = self.source.item(index)
        generated = self._generate(region, seed)
        box = self._boxes[region].tolist()
        hu = torch.full(box, -1000.0, device=self.device)
        labels = torch.zeros(box, dtype=torch.int16, device=self.device)
        target, origin = [], []
        for size, length in zip(box, generated.shape):
            offset = (size - length) // 2  # centred; a phantom larger than its box loses its ends equally
            target.append(slice(max(offset, 0), max(offset, 0) + min(size, length)))
            origin.append(slice(max(-offset, 0), max(-offset, 0) + min(size, length)))
        hu[tuple(target)] = generated.hu[0][tuple(origin)].to(self.device)
        if generated.labels is not None:
            labels[tuple(target)] = generated.labels[0][tuple(origin)].to(device=self.device, dtype=torch.int16)
        tissue = tissue_grid(hu, self.tissue_block.tolist(), self.air_threshold_hu).cpu()
        entry = (hu, labels, tissue)
        self._cache[index] = entry
        self._cached_bytes += _bytes(entry)
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            self._cached_bytes -= _bytes(self._cache.popitem(last=False)[1])
        return entry

    # ------------------------------------------------------------------ the store contract
    def tissue_blocks(self, volume_index: Tensor, first_block: Tensor, count: tuple[int, int, int]) -> Tensor:
        rows = []
        for sample, index in enumerate(volume_index.tolist()):
            tissue = self._entry(index)[2]
            limits = tissue.shape
            axes = [(first_block[sample, a] + torch.arange(count[a])).clamp_max(limits[a] - 1) for a in range(3)]
            rows.append(tissue[axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]])
        return torch.stack(rows)

    def _hu_crops(self, volume_index: Tensor, start: Tensor, size: Sequence[Sequence[int]]) -> list[Tensor]:
        crops = []
        for index, (i, j, k), (d, h, w) in zip(volume_index.tolist(), start.tolist(), size):
            crops.append(self._entry(index)[0][i:i + d, j:j + h, k:k + w])
        return crops

    def crops(self, volume_index: Tensor, start: Tensor, size: tuple[int, int, int], *, device=None,
              labels: bool = False) -> tuple[Tensor, Tensor | None]:
        sizes = [size] * len(volume_index)
        out = hu_to_attenuation(torch.stack(self._hu_crops(volume_index, start, sizes)), mu_water=self.mu_water)
        out_labels = None
        if labels:
            d, h, w = size
            out_labels = torch.stack([self._entry(index)[1][i:i + d, j:j + h, k:k + w]
                                      for index, (i, j, k) in zip(volume_index.tolist(), start.tolist())])
        if device is not None:
            out = out.to(device)
            out_labels = None if out_labels is None else out_labels.to(device)
        return out, out_labels

    def pooled_weights(self, volume_index: Tensor, start: Tensor, stop: Tensor, factor: Tensor, *,
                       grid_shape: tuple[int, int, int] | None = None) -> CoarseWeights:
        """Pooled from summed tables of the crops alone (not of whole phantoms: a fraction of the memory)."""
        crops = self._hu_crops(volume_index, start, (stop - start).tolist())
        affines = self.affines[volume_index].clone()
        affines[:, :3, 3] += (affines[:, :3, :3] @ start.to(torch.float64)[..., None])[..., 0]  # first voxels
        return pool_crop_weights(crops, affines, factor, weighting=self.weighting,
                                 air_threshold_hu=self.air_threshold_hu, device=self.device, grid_shape=grid_shape)


def _bytes(entry: tuple[Tensor, ...]) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in entry)


class _SameNames(Sequence):
    """``label_names`` of a :class:`PhantomStore`: one ``{label: name}`` for every CT (no list of n copies)."""

    def __init__(self, names: dict[int, str], count: int) -> None:
        self._names, self._count = names, count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._names] * len(range(*index.indices(self._count)))
        if not -self._count <= index < self._count:
            raise IndexError(f"label_names: index {index} out of range for {self._count} CTs")
        return self._names


def _seed_key(seeds) -> tuple:
    if isinstance(seeds, range):
        return ("range", seeds.start, seeds.stop, seeds.step)
    return ("seeds",) + tuple(seeds)
