"""The stream: :class:`DRRCorrespondenceSampler`, a thin ``IterableDataset`` over drawing and making.

Batch ``step`` of rank ``rank`` is ``make_batch(draw(config, store, step, seed, rank), store, config)``:
a pure function of the seed, the rank, the step, the configuration and the CTs.
Hence: same seed, same batches; resuming is setting the step; DataLoader
workers take interleaved steps of one stream; every distributed rank has its
own stream (and, by default, its own share of the CTs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .._checks import is_int
from .config import SamplerConfig
from .draw import candidate_volumes, draw
from .make import BatchMaker, timed
from .params import SampleParams
from .sources import open_store
from .store import VolumeStore

__all__ = ["DRRCorrespondenceSampler", "config_differences"]


def _config(settings: dict) -> SamplerConfig:
    try:
        return SamplerConfig(**settings)
    except TypeError as error:
        known = set(SamplerConfig.__dataclass_fields__)
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"{', '.join(unknown)}: unknown sampler setting(s); expected some of "
                            f"{', '.join(sorted(known))}") from None
        raise error


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _world_size() -> int:
    if _distributed():
        return torch.distributed.get_world_size()
    return 1


def config_differences(saved: dict, current: dict) -> dict[str, tuple]:
    """``{field: (saved, current)}`` for the fields of two :meth:`SamplerConfig.describe` dicts that differ."""
    names = sorted(set(saved) | set(current))
    return {name: (saved.get(name), current.get(name)) for name in names if saved.get(name) != current.get(name)}


class DRRCorrespondenceSampler(IterableDataset):
    """An endless, seeded stream of multi-view DRR batches with patch correspondence matrices.

    Every argument is keyword-only. Angles are radians, lengths millimetres.

    Args:
        volumes: the CTs: paths, :class:`~onthefly.volume.Volume`, torchio
            ``Subject`` or ``SubjectsDataset`` (an item or a sequence; any sizes
            and spacings, resampled once at construction and kept on ``device``),
            or a :class:`~onthefly.sampling.store.VolumeStore` such as a
            :class:`~onthefly.sampling.bank.VolumeBank` over a prepared folder.
        device: where batches are made (and resident CTs live).
        seed: stream seed.
        rank: stream rank (default: the ``torch.distributed`` rank when a process
            group is initialised, else 0); each rank has its own stream. Under an
            initialised process group it must be below the world size.
        steps: number of batches an iteration yields (default: endless).
        config: a :class:`~onthefly.sampling.config.SamplerConfig` (then no ``settings``).
        **settings: the :class:`~onthefly.sampling.config.SamplerConfig` fields
            (``views``, ``image_size``, ``patch_size``, ``crop_size``, ``spacing``,
            ``alpha``... ``sdd``, ``batch_size``, ``augmentation``, ``fractures``,
            ``structures``, ``layout``, ``target``, ...), validated there.

    Example:
        >>> sampler = DRRCorrespondenceSampler(volumes=[example_volume()], views=2, image_size=64, spacing=4.0,
        ...                                    batch_size=4)
        >>> batch = next(iter(sampler))
        >>> batch.images.shape, batch.correspondence.shape  # N = (64 / 16)^2 = 16 patches per view
        (torch.Size([4, 2, 1, 64, 64]), torch.Size([4, 32, 32]))
    """

    def __init__(self, *, volumes, device: torch.device | str = "cpu", seed: int = 0, rank: int | None = None,
                 steps: int | None = None, config: SamplerConfig | None = None, **settings) -> None:
        super().__init__()
        if not is_int(seed):
            raise TypeError(f"seed: expected an int, got {seed!r}")
        if rank is not None and (not is_int(rank) or rank < 0):
            raise ValueError(f"rank: expected an int >= 0 or None, got {rank!r}")
        if rank is not None and _distributed() and rank >= _world_size():
            world = _world_size()
            raise ValueError(f"rank: expected an int below the process group's world size {world} (ranks 0 to "
                             f"{world - 1}), got {rank}")
        if steps is not None and (not is_int(steps) or steps < 1):
            raise ValueError(f"steps: expected a positive int or None, got {steps!r}")
        if config is not None and not isinstance(config, SamplerConfig):
            raise TypeError(f"config: expected a SamplerConfig or None, got {type(config).__name__}")
        if config is not None and settings:
            raise TypeError(f"config, {', '.join(sorted(settings))}: give a SamplerConfig or its fields, not both")
        self.config = config if config is not None else _config(settings)
        self.seed, self._rank, self.steps = seed, rank, steps
        config = self.config
        needs_labels = config.structures is not None or config.fractures is not None
        self.store = open_store(volumes, spacing=config.spacing, device=device, mu_water=config.mu_water,
                                air_threshold_hu=config.air_threshold_hu, weighting=config.weighting,
                                labels=needs_labels)
        _check_store(self.store, config)
        self.store.check_crop(config.crop_voxels(), config.spacing)
        self.device = self.store.device
        self._maker = BatchMaker(config, self.store)
        self._next_step = 0

    # ------------------------------------------------------------------ settings
    @property
    def rank(self) -> int:
        """This stream's rank: the ``rank`` argument, else the distributed rank, else 0."""
        if self._rank is not None:
            return self._rank
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank()
        return 0

    views = property(lambda self: self.config.views, doc="Views per sample ``V``.")
    height = property(lambda self: self.config.height, doc="Detector rows ``H``.")
    width = property(lambda self: self.config.width, doc="Detector columns ``W``.")
    patch_size = property(lambda self: self.config.patch_size, doc="Patch edge ``k`` (pixels).")
    batch_size = property(lambda self: self.config.batch_size, doc="Samples per batch ``B``.")
    pixel_spacing = property(lambda self: self.config.pixel_spacing, doc="Detector pixel edge (mm).")
    grid_shape = property(lambda self: self.config.grid_shape, doc="``(H/k, W/k)`` patches per view.")
    fractures = property(lambda self: self.config.fractures, doc="The fracture settings, or ``None``.")
    structures = property(lambda self: self._maker.structures, doc="Names of the projected label structures.")
    fracture_bone_source = property(lambda self: self._maker.bone_source,
                                    doc="Per CT, where fractures find bone: ``'labels'`` or ``'threshold'`` (HU).")

    @property
    def batch_type(self) -> type:
        """The type of the batches this stream yields."""
        return self.config.target.batch_type

    @property
    def batch_fields(self) -> tuple[str, ...]:
        """The batch fields that are never ``None`` in this stream (see :func:`~onthefly.sampling.batch.require_fields`)."""
        return self.config.target.fields(self.config)

    def fingerprint(self) -> str:
        """A stable hash of the configuration and the CTs: equal fingerprints, equal streams for equal seeds."""
        text = f"{self.config.fingerprint()}:{self.store.fingerprint()}"
        return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("len(): the sampler is endless (steps=None)")
        return max(0, self.steps - self._next_step)

    # ------------------------------------------------------------------ resume
    def state_dict(self, after=None) -> dict:
        """The stream position and identity.

        ``{"seed", "rank", "step", "config", "fingerprint", "store"}``: ``step`` is
        the next batch this sampler yields (with ``after``, the batch following
        that one: use it when batches come through DataLoader workers, whose
        progress the main process does not see); ``config`` the plain settings
        (:meth:`SamplerConfig.describe`); ``fingerprint`` and ``store`` identify
        the configuration with the CTs, and the CTs alone.
        """
        step = self._next_step if after is None else after.step + 1
        return {"seed": self.seed, "rank": self.rank, "step": step, "config": self.config.describe(),
                "fingerprint": self.fingerprint(), "store": self.store.fingerprint()}

    def load_state_dict(self, state: dict, *, allow_config_change: bool = False) -> None:
        """Resume the stream at ``state["step"]``.

        The seed and rank must match, and so must the configuration and the CTs
        (when the state records them): a state from another configuration is
        refused with the fields that differ, unless ``allow_config_change``.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state: expected a dict from state_dict(), got {type(state).__name__}")
        for key in ("seed", "rank"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"state: saved {key} {state[key]} differs from this sampler's {getattr(self, key)}")
        step = state.get("step")
        if not is_int(step) or step < 0:
            raise ValueError(f"state: expected a step >= 0, got {step!r}")
        if not allow_config_change:
            differences = config_differences(state["config"], self.config.describe()) if "config" in state else {}
            if differences:
                listed = "; ".join(f"{name}: saved {old!r}, now {new!r}" for name, (old, new) in differences.items())
                raise ValueError(f"state: the stream was saved with another configuration ({listed}); "
                                 "pass allow_config_change=True to resume anyway")
            if "store" in state and state["store"] != self.store.fingerprint():
                raise ValueError("state: the stream was saved with other CTs (their fingerprints differ); "
                                 "pass allow_config_change=True to resume anyway")
        self._next_step = step

    def seek(self, step: int) -> None:
        """Make ``step`` the next batch this sampler yields (and the position :meth:`state_dict` records)."""
        _check_step(step)
        self._next_step = step

    # ------------------------------------------------------------------ batches
    def candidates(self) -> torch.Tensor:
        """The CT indices this rank draws from (its own share under ``torch.distributed``, see ``shard``)."""
        return candidate_volumes(self.store, rank=self.rank, world=_world_size(), shard=self.config.shard)

    def draw(self, step: int) -> SampleParams:
        """The drawn parameters of batch ``step`` (host tensors), degenerate draws redrawn."""
        _check_step(step)
        return draw(self.config, self.store, step, seed=self.seed, rank=self.rank, candidates=self.candidates())

    def make_batch(self, params: SampleParams, *, timings: dict[str, float] | None = None):
        """The batch of ``params`` (from :meth:`draw` of this sampler, or any sampler with the same config and CTs)."""
        if not isinstance(params, SampleParams):
            raise TypeError(f"params: expected SampleParams from draw(), got {type(params).__name__}")
        return self._maker.make(params, timings=timings)

    def sample(self, step: int, *, timings: dict[str, float] | None = None):
        """Batch ``step`` of this stream (the same batch every time).

        ``timings``, if given, receives the seconds spent drawing, rendering,
        cutting fractures, computing correspondence, augmenting and building the
        task's target (with device synchronisation: only pass it when measuring).
        """
        _check_step(step)
        with timed(timings, "draw", self.device):
            params = self.draw(step)
        return self.make_batch(params, timings=timings)

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None and self.device.type != "cpu":
            raise RuntimeError(
                f"device: DataLoader workers cannot make batches on {self.device}; use device='cpu' with workers, "
                "or iterate the sampler directly on the accelerator (onthefly.Prefetcher overlaps it with training)"
            )
        step = self._next_step + worker
        while self.steps is None or step < self.steps:
            batch = self.sample(step)
            step += workers
            if info is None:
                self._next_step = step
            yield batch


def _check_step(step) -> None:
    if not is_int(step) or step < 0:
        raise ValueError(f"step: expected an int >= 0, got {step!r}")


def _check_store(store: VolumeStore, config: SamplerConfig) -> None:
    """A store passed in must hold the CTs as this configuration asks (spacing, attenuation, weights)."""
    asked = torch.tensor(config.spacing, dtype=torch.float64)
    if not torch.allclose(store.spacing.double(), asked, rtol=1e-6, atol=0):
        raise ValueError(f"spacing: the CTs are stored at {store.spacing.tolist()} mm, the sampler asks "
                         f"{list(config.spacing)} mm; prepare them at the sampler's spacing (or change spacing)")
    for name in ("mu_water", "air_threshold_hu", "weighting"):
        if getattr(store, name) != getattr(config, name):
            raise ValueError(f"{name}: the CTs were prepared with {getattr(store, name)!r}, the sampler asks "
                             f"{getattr(config, name)!r}")
