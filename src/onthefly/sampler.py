"""Random multi-view DRR batches with their correspondence matrices, drawn on the fly.

:class:`DRRCorrespondenceSampler` is the entry point for training loops. Each
batch draws, per sample, a CT, a crop and ``V`` C-arm poses; renders the views
(:func:`~onthefly.projector.render`); computes the patch correspondence matrix
(:func:`~onthefly.correspondence.patch_correspondence`, fed from summed-volume
tables so a crop's pooled weights cost a few reads per coarse voxel); and
augments the images (:mod:`onthefly.augment`).

Randomness: batch ``step`` of rank ``rank`` is a pure function of
``(seed, rank, step)``. All random parameters are drawn on the host from a
generator seeded with that triple, including the checks that reject degenerate
draws (on small host-side tissue grids), so choosing a batch never waits on
the device; only the noise of intensity augmentation is drawn on the device.
Hence: same seed, same batches; resuming is setting the step; DataLoader
workers take interleaved steps of one stream.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from ._checks import check_choice, check_positive_int
from .augment import Augmentation, apply_geometric, apply_intensity, image_operation_maps
from .correspondence import WEIGHTINGS, WeightIntegral, default_rays_per_patch, patch_correspondence
from .distributions import CardinalAngles, PerView, as_distribution
from .fractures import FractureConfig, apply_fractures, bone_label_lookup, draw_fractures, fracture_window
from .geometry import CArm, project_points
from .projector import METHODS, render, to_display
from .volume import MU_WATER_PER_MM, Volume, VolumeBatch, hu_to_attenuation

__all__ = ["DRRCorrespondenceSampler", "DRRBatch"]

_TISSUE_BLOCK_MM = 8.0  # edge of the host-side tissue grid used to reject degenerate draws


@dataclass
class DRRBatch:
    """One batch of views, their correspondence matrix and everything needed to reproduce it.

    Attributes:
        images: ``(B, V, 1, H, W)`` in ``[0, 1]`` (dense is bright), augmented.
        correspondence: ``(B, V*N, V*N)`` for the augmented images (``N = (H/k)(W/k)``);
            ``None`` when the sampler was built with ``correspondence=False``.
        carm: the C-arm that rendered the views, batch ``(B, V)``.
        operations: ``(B, V)`` geometric operation applied to each rendered view
            (index into ``onthefly.correspondence.IMAGE_OPERATIONS``; 0 = none).
        volume_index: ``(B,)`` which of the sampler's volumes each sample cropped.
        crop_start, crop_stop: ``(B, 3)`` crop boxes, voxel indices of that
            (resampled) volume, ``[start, stop)``.
        crop_affine: ``(B, 4, 4)`` crop voxel-to-world matrices (mm).
        params: every drawn parameter (CPU tensors): poses, crops, tissue
            checks, augmentation; with ``step`` and ``seed`` enough to redraw the batch.
        patch_size: ``k``.
        step, seed, rank: the batch's place in its stream.
        labels: optional ``(B, V, S, H, W)`` path length (mm) through each of the
            ``structures``, geometrically augmented like the images.
        structures: names of the ``S`` label channels.
        volume: optional crops as a :class:`VolumeBatch` (attenuation, 1/mm;
            fractured where ``fracture``).
        fracture: with ``fractures``: ``(B,)`` bool, whether the sample's crop
            was fractured before rendering (the classification label).
        fracture_center: ``(B, 3)`` world mm of each fracture's centre (NaN
            where ``fracture`` is False).
        fracture_pixel: ``(B, V, 2)`` (row, column) of the centre in each
            augmented view (NaN where ``fracture`` is False).
        fracture_patch: ``(B, V)`` long, the patch (row-major over the
            ``H/k x W/k`` grid of the augmented view) holding ``fracture_pixel``;
            -1 where there is no fracture or it projects outside the view.
    """

    images: Tensor
    correspondence: Tensor | None
    carm: CArm
    operations: Tensor
    volume_index: Tensor
    crop_start: Tensor
    crop_stop: Tensor
    crop_affine: Tensor
    params: dict[str, Tensor]
    patch_size: int
    step: int
    seed: int
    rank: int
    labels: Tensor | None = None
    structures: tuple[str, ...] = ()
    volume: VolumeBatch | None = field(default=None, repr=False)
    fracture: Tensor | None = None
    fracture_center: Tensor | None = None
    fracture_pixel: Tensor | None = None
    fracture_patch: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def views(self) -> int:
        return self.images.shape[1]

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(H/k, W/k)`` patches per view."""
        return (self.images.shape[-2] // self.patch_size, self.images.shape[-1] // self.patch_size)

    def to(self, device: torch.device | str) -> "DRRBatch":
        """The batch with its tensors on ``device`` (``params`` stay on the host)."""
        return DRRBatch(**_moved(self, device))

    def project_points(self, points: Tensor) -> Tensor:
        """World points ``(B, P, 3)`` to ``(B, V, P, 2)`` (row, column) in the augmented images."""
        pixels = project_points(self.carm, points.to(self.carm.device, self.carm.dtype))
        height, width = self.images.shape[-2:]
        row, col = pixels[..., 0], pixels[..., 1]
        op = self.operations.to(pixels.device)[:, :, None].expand_as(row)
        # IMAGE_OPERATIONS: identity, hflip, vflip, rot90, rot180, rot270 (torch.flip / torch.rot90 semantics).
        new_row = torch.stack([row, row, height - 1 - row, width - 1 - col, height - 1 - row, col])
        new_col = torch.stack([col, width - 1 - col, col, row, width - 1 - col, height - 1 - row])
        pick = op[None]
        return torch.stack([new_row.gather(0, pick)[0], new_col.gather(0, pick)[0]], -1)


def _moved(batch, device: torch.device | str) -> dict:
    """A batch dataclass's fields with tensors, C-arms, volumes and inner batches on ``device`` (``params`` stay)."""
    moved = {}
    for item in fields(batch):
        value = getattr(batch, item.name)
        if item.name != "params" and isinstance(value, (Tensor, CArm, VolumeBatch, DRRBatch)):
            value = value.to(device)
        moved[item.name] = value
    return moved


@contextmanager
def _timed(timings: dict[str, float] | None, name: str, device: torch.device):
    """Add the seconds spent in the block to ``timings[name]`` (synchronising CUDA); nothing if ``timings`` is None."""
    if timings is None:
        yield
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    begin = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - begin


def _patch_index(pixel: Tensor, height: int, width: int, patch_size: int) -> Tensor:
    """``(..., 2)`` (row, column) pixels to ``(...)`` row-major patch indices; -1 outside the view or NaN."""
    row = torch.floor((pixel[..., 0] + 0.5) / patch_size)
    col = torch.floor((pixel[..., 1] + 0.5) / patch_size)
    rows, cols = height // patch_size, width // patch_size
    inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)  # False for NaN
    index = torch.where(inside, row * cols + col, torch.full_like(row, -1.0))
    return index.long()


def _stream_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (stable across runs and platforms)."""
    digest = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _load_volume(item, index: int) -> list[Volume]:
    import torchio as tio

    if isinstance(item, Volume):
        return [item]
    if isinstance(item, (str, Path)):
        return [Volume.from_file(item)]
    if isinstance(item, tio.Subject):
        return [Volume.from_torchio(item)]
    if isinstance(item, tio.SubjectsDataset):
        return [Volume.from_torchio(subject) for subject in item.dry_iter()]
    raise TypeError(
        f"volumes[{index}]: expected a path, Volume, torchio Subject or SubjectsDataset, got {type(item).__name__}"
    )


class DRRCorrespondenceSampler(IterableDataset):
    """An endless, seeded stream of multi-view DRR batches with patch correspondence matrices.

    Every argument is keyword-only. Angles are radians, lengths millimetres.

    Args:
        volumes: CTs to draw from: paths, :class:`Volume`, torchio ``Subject``
            or ``SubjectsDataset`` (a single item or a sequence); any sizes.
        views: views per sample ``V`` (at least 2).
        image_size: detector pixels, ``H`` or ``(H, W)``.
        patch_size: correspondence patch ``k``; must divide ``H`` and ``W``.
        pixel_spacing: detector pixel edge (mm). Default: the crop's largest
            edge, magnified at the middle of the ``sid``/``sdd`` ranges, spans
            the detector's larger side.
        crop_size: crop edge (mm), one number or three; every crop lies inside its CT.
        spacing: isotropic (or 3-value) voxel spacing all CTs are resampled to
            once, at construction (mm); CTs already within 1 % of it are kept as they are.
        alpha, beta, gamma: primary, secondary and in-plane angle distributions
            per view: a number (constant), a ``(low, high)`` uniform range, a
            :class:`~onthefly.distributions.Distribution`, or
            :class:`~onthefly.distributions.PerView` (one per view). Default ``alpha``: the
            seed method's scheme (:class:`~onthefly.distributions.CardinalAngles`).
        sid, sdd: source-to-isocenter and source-to-detector distance per view:
            number, range or distribution; every ``sdd`` must exceed every ``sid``.
        isocenter_jitter: each view's isocenter is the crop centre plus a uniform
            offset in ``[-j, j]`` mm per axis.
        batch_size: samples per batch ``B``.
        device: where volumes live and batches are made.
        seed: stream seed.
        rank: stream rank (default: the ``torch.distributed`` rank when a process
            group is initialised, else 0); each rank has its own stream.
        augmentation: :class:`~onthefly.augment.Augmentation` (default: intensity
            only), or ``None`` for none.
        weighting, air_threshold_hu: correspondence voxel weights
            (:func:`~onthefly.correspondence.voxel_weights`).
        rays_per_patch: rays per patch side for the footprints (default: as
            :func:`~onthefly.correspondence.patch_correspondence` chooses, the
            largest any sample of the batch needs).
        min_tissue_fraction: a crop whose non-air fraction is lower is redrawn.
        min_projection_fraction: a view in which tissue covers a smaller fraction
            of the patches is redrawn (with its whole sample).
        max_redraws: redraw rounds before keeping a degenerate sample (recorded
            in ``params["degenerate"]``).
        structures: label names (or ids) to project into ``batch.labels``
            (needs CTs with label maps); ``None`` for none.
        return_volume: also return the crops (``batch.volume``).
        correspondence: compute the correspondence matrix (``False``: ``batch.correspondence``
            is ``None``, for tasks that do not use it).
        fractures: a :class:`~onthefly.fractures.FractureConfig` to cut simulated
            fractures into the crops before rendering (``batch.fracture`` and
            the ``batch.fracture_*`` targets); ``None`` for none. Bone comes from
            a CT's label map where its label names match the config's
            structures, else from the HU threshold. The correspondence is that
            of the intact crops.
        steps: number of batches an iteration yields (default: endless).
        method: projector method, ``"trilinear"`` or ``"siddon"``.
        mu_water: attenuation of water (1/mm).

    Example:
        >>> sampler = DRRCorrespondenceSampler(volumes=[example_volume()], views=2, batch_size=4)
        >>> batch = next(iter(sampler))
        >>> batch.images.shape, batch.correspondence.shape
        (torch.Size([4, 2, 1, 256, 256]), torch.Size([4, 512, 512]))
    """

    def __init__(
        self,
        *,
        volumes,
        views: int = 2,
        image_size: int | tuple[int, int] = 256,
        patch_size: int = 16,
        pixel_spacing: float | None = None,
        crop_size: float | Sequence[float] = 200.0,
        spacing: float | Sequence[float] = 1.0,
        alpha=CardinalAngles(),
        beta=(-math.radians(15.0), math.radians(15.0)),
        gamma=0.0,
        sid=(750.0, 950.0),
        sdd=(1000.0, 1100.0),
        isocenter_jitter: float = 10.0,
        batch_size: int = 16,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int | None = None,
        augmentation: Augmentation | None = Augmentation(),
        weighting: str = "soft",
        air_threshold_hu: float = -900.0,
        rays_per_patch: int | None = None,
        min_tissue_fraction: float = 0.2,
        min_projection_fraction: float = 0.25,
        max_redraws: int = 8,
        structures: Sequence[str | int] | None = None,
        return_volume: bool = False,
        correspondence: bool = True,
        fractures: FractureConfig | None = None,
        steps: int | None = None,
        method: str = "trilinear",
        mu_water: float = MU_WATER_PER_MM,
    ) -> None:
        super().__init__()
        # ---- plain settings
        if isinstance(views, bool) or not isinstance(views, int) or views < 2:
            raise ValueError(f"views: expected an int >= 2 (views per sample), got {views!r}")
        self.views = views
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2:
            raise ValueError(f"image_size: expected H or (H, W), got {image_size!r}")
        self.height = check_positive_int("image_size", size[0])
        self.width = check_positive_int("image_size", size[1])
        self.patch_size = check_positive_int("patch_size", patch_size)
        if self.height % patch_size or self.width % patch_size:
            raise ValueError(f"patch_size: expected a divisor of image_size {self.height} x {self.width}, got {patch_size}")
        self.batch_size = check_positive_int("batch_size", batch_size)
        if steps is not None:
            check_positive_int("steps", steps)
        self.steps = steps
        self.max_redraws = max_redraws if max_redraws == 0 else check_positive_int("max_redraws", max_redraws)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {seed!r}")
        self.seed = seed
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            raise ValueError(f"rank: expected an int >= 0 or None, got {rank!r}")
        self._rank = rank
        self.device = torch.device(device)
        self.method = check_choice("method", method, METHODS)
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS)
        self.air_threshold_hu = float(air_threshold_hu)
        self.rays_per_patch = None if rays_per_patch is None else check_positive_int("rays_per_patch", rays_per_patch)
        self.mu_water = float(mu_water)
        for name, value in (("min_tissue_fraction", min_tissue_fraction), ("min_projection_fraction", min_projection_fraction)):
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a fraction in [0, 1], got {value!r}")
        self.min_tissue_fraction = float(min_tissue_fraction)
        self.min_projection_fraction = float(min_projection_fraction)
        if augmentation is not None and not isinstance(augmentation, Augmentation):
            raise TypeError(f"augmentation: expected an Augmentation or None, got {type(augmentation).__name__}")
        self.augmentation = augmentation or Augmentation.none()
        if self.augmentation.turns and self.height != self.width:
            raise ValueError(
                f"augmentation: quarter turns need square views, got image_size {self.height} x {self.width}"
            )
        self.return_volume = bool(return_volume)
        self.correspondence = bool(correspondence)
        if fractures is not None and not isinstance(fractures, FractureConfig):
            raise TypeError(f"fractures: expected a FractureConfig or None, got {type(fractures).__name__}")
        self.fractures = fractures

        # ---- distributions
        self.alpha = as_distribution("alpha", alpha)
        self.beta = as_distribution("beta", beta)
        self.gamma = as_distribution("gamma", gamma)
        self.sid = as_distribution("sid", sid)
        self.sdd = as_distribution("sdd", sdd)
        for name in ("alpha", "beta", "gamma", "sid", "sdd"):
            distribution = getattr(self, name)
            if isinstance(distribution, PerView) and len(distribution) != views:
                raise ValueError(f"{name}: expected one distribution per view ({views}), got {len(distribution)}")
        sid_low, sid_high = self.sid.bounds()
        sdd_low, sdd_high = self.sdd.bounds()
        if sid_low <= 0:
            raise ValueError(f"sid: expected distances > 0 mm, got a range reaching {sid_low:g}")
        if sdd_low <= sid_high:
            raise ValueError(
                f"sdd: expected every source-to-detector distance to exceed every sid (the detector lies beyond "
                f"the isocenter), got sdd from {sdd_low:g} mm with sid up to {sid_high:g} mm"
            )
        if not isinstance(isocenter_jitter, (int, float)) or not math.isfinite(isocenter_jitter) or isocenter_jitter < 0:
            raise ValueError(f"isocenter_jitter: expected a number >= 0 (mm), got {isocenter_jitter!r}")
        self.isocenter_jitter = float(isocenter_jitter)

        # ---- volumes
        items = list(volumes) if isinstance(volumes, (list, tuple)) else [volumes]
        loaded: list[Volume] = []
        for index, item in enumerate(items):
            loaded.extend(_load_volume(item, index))
        if not loaded:
            raise ValueError("volumes: expected at least one CT volume, got an empty list")
        spacing_t = torch.as_tensor(spacing, dtype=torch.float64).reshape(-1)
        if spacing_t.numel() not in (1, 3) or not bool(torch.isfinite(spacing_t).all() and (spacing_t > 0).all()):
            raise ValueError(f"spacing: expected one or three positive numbers (mm), got {spacing!r}")
        self.spacing = spacing_t.expand(3).clone()
        loaded = [
            v if torch.allclose(v.spacing, self.spacing, rtol=0.01, atol=0) else v.resample(self.spacing.tolist())
            for v in loaded
        ]
        crop_t = torch.as_tensor(crop_size, dtype=torch.float64).reshape(-1)
        if crop_t.numel() not in (1, 3) or not bool(torch.isfinite(crop_t).all() and (crop_t > 0).all()):
            raise ValueError(f"crop_size: expected one or three positive numbers (mm), got {crop_size!r}")
        self.crop_size = crop_t.expand(3).clone()
        self.crop_voxels = torch.clamp(torch.round(self.crop_size / self.spacing), min=1).long()  # (3,)
        shapes = torch.tensor([v.shape for v in loaded], dtype=torch.long)  # (n, 3)
        for index, shape in enumerate(shapes):
            if bool((self.crop_voxels > shape).any()):
                extent = (shape.double() * self.spacing).tolist()
                raise ValueError(
                    f"crop_size: expected a crop inside every volume, but {self.crop_size.tolist()} mm is larger than "
                    f"volume {index} ({', '.join(f'{e:.0f}' for e in extent)} mm at the sampler's spacing)"
                )
        self.shapes = shapes
        self.affines = torch.stack([v.affine.to(torch.float64) for v in loaded])  # (n, 4, 4), CPU
        self._structures(loaded, structures)
        self._stack_volumes(loaded)
        self._bone_maps(loaded)

        # ---- detector
        if pixel_spacing is None:
            magnification = (sdd_low + sdd_high) / (sid_low + sid_high)
            pixel_spacing = float(self.crop_size.max()) * magnification / max(self.height, self.width)
        if not isinstance(pixel_spacing, (int, float)) or not math.isfinite(pixel_spacing) or pixel_spacing <= 0:
            raise ValueError(f"pixel_spacing: expected a positive number (mm), got {pixel_spacing!r}")
        self.pixel_spacing = float(pixel_spacing)

        self._next_step = 0
        self._pixel_maps = image_operation_maps(self.height, self.width, self.device)

    # ------------------------------------------------------------------ set-up
    def _structures(self, loaded: list[Volume], structures) -> None:
        self.structures: tuple[str, ...] = ()
        self._structure_ids = torch.zeros(0, len(loaded), dtype=torch.long)
        if structures is None:
            return
        if isinstance(structures, (str, int)):
            structures = [structures]
        if any(v.labels is None for v in loaded):
            raise ValueError("structures: every volume needs a label map to project structures")
        names, ids = [], []
        for item in structures:
            per_volume = []
            for v in loaded:
                lookup = {name: label for label, name in (v.label_names or {}).items()}
                if isinstance(item, int) and not isinstance(item, bool):
                    per_volume.append(item)
                elif item in lookup:
                    per_volume.append(lookup[item])
                else:
                    raise ValueError(f"structures: no structure named {item!r} in a volume's label names")
            names.append(str(item))
            ids.append(per_volume)
        self.structures = tuple(names)
        self._structure_ids = torch.tensor(ids, dtype=torch.long)  # (S, n)

    def _stack_volumes(self, loaded: list[Volume]) -> None:
        device = self.device
        grid = self.shapes.amax(0).tolist()
        self._attenuation = torch.zeros(len(loaded), *grid, device=device)
        self._labels = None
        if self.structures:
            self._labels = torch.zeros(len(loaded), *grid, dtype=torch.int16, device=device)
        for index, v in enumerate(loaded):
            d, h, w = v.shape
            self._attenuation[index, :d, :h, :w] = hu_to_attenuation(v.hu[0].to(device), mu_water=self.mu_water)
            if self._labels is not None:
                self._labels[index, :d, :h, :w] = v.labels[0].to(device=device, dtype=torch.int16)
        self._integral = WeightIntegral(
            loaded, weighting=self.weighting, air_threshold_hu=self.air_threshold_hu, device=device
        )
        # Host-side tissue fractions on blocks of about 8 mm, for the degenerate-draw checks.
        block = torch.clamp(torch.round(_TISSUE_BLOCK_MM / self.spacing), min=1).long()
        self._block = block
        block_grid = [-(-g // int(b)) for g, b in zip(grid, block.tolist())]
        self._tissue = torch.zeros(len(loaded), *block_grid)
        for index, v in enumerate(loaded):
            tissue = (v.hu[0] > self.air_threshold_hu).float()
            pooled = F.avg_pool3d(tissue[None, None], tuple(block.tolist()), ceil_mode=True)[0, 0]
            d, h, w = pooled.shape
            self._tissue[index, :d, :h, :w] = pooled

    def _bone_maps(self, loaded: list[Volume]) -> None:
        """Per-volume bone masks for fractures: label map where its names match, else the HU threshold."""
        self._bone = None
        self.fracture_bone_source: tuple[str, ...] = ()
        if self.fractures is None:
            return
        config = self.fractures
        grid = self.shapes.amax(0).tolist()
        self._bone = torch.zeros(len(loaded), *grid, dtype=torch.bool, device=self.device)
        sources = []
        for index, v in enumerate(loaded):
            d, h, w = v.shape
            lookup = None
            if v.labels is not None:
                lookup = bone_label_lookup(v.label_names, config.bone_structures, size=int(v.labels.max()) + 1)
            if lookup is not None and bool(lookup.any()):
                mask = lookup.to(self.device)[v.labels[0].to(self.device).long().clamp_min(0)]
                sources.append("labels")
            else:
                mask = v.hu[0].to(self.device) > config.bone_hu
                sources.append("threshold")
            self._bone[index, :d, :h, :w] = mask
        if config.structures is not None and "labels" not in sources:
            raise ValueError(
                f"fractures: none of the structures {list(config.structures)} is in any volume's label map"
            )
        self.fracture_bone_source = tuple(sources)
        self._fracture_window = fracture_window(config, self.spacing)

    # ------------------------------------------------------------------ streams
    @property
    def rank(self) -> int:
        """This stream's rank: the ``rank`` argument, else the distributed rank, else 0."""
        if self._rank is not None:
            return self._rank
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank()
        return 0

    @property
    def grid_shape(self) -> tuple[int, int]:
        return (self.height // self.patch_size, self.width // self.patch_size)

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("len(): the sampler is endless (steps=None)")
        return max(0, self.steps - self._next_step)

    def state_dict(self, after: DRRBatch | None = None) -> dict:
        """The stream position: ``{"seed", "rank", "step"}``.

        ``step`` is the next batch this sampler will yield; with ``after``, the
        batch following that one (use it when batches come through DataLoader
        workers, whose progress the main process does not see).
        """
        step = self._next_step if after is None else after.step + 1
        return {"seed": self.seed, "rank": self.rank, "step": step}

    def load_state_dict(self, state: dict) -> None:
        """Resume the stream at ``state["step"]`` (the seed and rank must match this sampler's)."""
        for key in ("seed", "rank"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"state: saved {key} {state[key]} differs from this sampler's {getattr(self, key)}")
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"state: expected a step >= 0, got {step!r}")
        self._next_step = step

    def __iter__(self) -> Iterator[DRRBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None and self.device.type != "cpu":
            raise RuntimeError(
                f"device: DataLoader workers cannot draw batches on {self.device}; use device='cpu' with workers, "
                "or iterate the sampler directly on the accelerator"
            )
        step = self._next_step + worker
        while self.steps is None or step < self.steps:
            batch = self.sample(step)
            step += workers
            if info is None:
                self._next_step = step
            yield batch

    # ------------------------------------------------------------------ drawing
    def draw(self, step: int) -> dict[str, Tensor]:
        """The random parameters of batch ``step`` (host tensors), degenerate draws redrawn."""
        generator = torch.Generator().manual_seed(_stream_seed(self.seed, self.rank, step, 0))
        params = self._draw_once(generator)
        bad = ~params["valid"]
        rounds = 0
        while bool(bad.any()) and rounds < self.max_redraws:
            fresh = self._draw_once(generator)
            for key, value in params.items():
                mask = bad.view(-1, *([1] * (value.dim() - 1)))
                params[key] = torch.where(mask, fresh[key], value)
            bad = ~params["valid"]
            rounds += 1
        params["degenerate"] = ~params.pop("valid")
        aug_generator = torch.Generator().manual_seed(_stream_seed(self.seed, self.rank, step, 1))
        for key, value in self.augmentation.draw(self.batch_size, self.views, aug_generator).items():
            params[f"aug_{key}"] = value
        if self.fractures is not None:
            fracture_generator = torch.Generator().manual_seed(_stream_seed(self.seed, self.rank, step, 3))
            for key, value in draw_fractures(self.fractures, self.batch_size, fracture_generator).items():
                params[f"fracture_{key}"] = value
        return params

    def _draw_once(self, generator: torch.Generator) -> dict[str, Tensor]:
        b, v = self.batch_size, self.views
        n_volumes = self.shapes.shape[0]
        volume = torch.randint(n_volumes, (b,), generator=generator)
        room = self.shapes[volume] - self.crop_voxels + 1  # (B, 3) start choices
        start = (torch.rand(b, 3, generator=generator, dtype=torch.float64) * room).long().clamp_max(room - 1)
        stop = start + self.crop_voxels
        poses = self._draw_poses(generator)
        alpha, beta, gamma, sid, sdd = (poses[key] for key in ("alpha", "beta", "gamma", "sid", "sdd"))
        jitter = (torch.rand(b, v, 3, generator=generator, dtype=torch.float64) * 2 - 1) * self.isocenter_jitter
        affine = self.affines[volume]
        centre_index = torch.cat([(start + stop - 1).double() / 2, torch.ones(b, 1, dtype=torch.float64)], -1)
        centre = (affine @ centre_index[..., None])[:, :3, 0]
        isocenter = centre[:, None, :] + jitter
        params = dict(
            volume=volume, crop_start=start, crop_stop=stop, alpha=alpha, beta=beta, gamma=gamma,
            sid=sid, sdd=sdd, isocenter=isocenter,
        )
        tissue, coverage = self._tissue_checks(params)
        params["tissue_fraction"] = tissue
        params["projection_fraction"] = coverage
        params["valid"] = (tissue >= self.min_tissue_fraction) & (coverage.amin(1) >= self.min_projection_fraction)
        return params

    def _draw_poses(self, generator: torch.Generator) -> dict[str, Tensor]:
        """``alpha, beta, gamma`` (rad) and ``sid, sdd`` (mm), ``(B, V)`` float64 each, from the host generator.

        Task samplers override this to impose their own view layouts (for
        example two orthogonal views, or evenly spaced angles around an axis);
        crops, isocenter jitter, degenerate-draw checks and redraws stay as they are.
        """
        shape = (self.batch_size, self.views)
        return {name: getattr(self, name).sample(shape, generator) for name in ("alpha", "beta", "gamma", "sid", "sdd")}

    def _tissue_checks(self, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Host estimates: the crop's non-air fraction ``(B,)`` and, per view, the fraction of patches tissue covers ``(B, V)``."""
        block = self._block
        start, stop, volume = params["crop_start"], params["crop_stop"], params["volume"]
        first = -(-start // block)  # first block wholly inside the crop
        count = torch.clamp((self.crop_voxels // block) - 1, min=1)  # blocks per axis, inside every crop
        steps = [torch.arange(int(n)) for n in count.tolist()]
        i = (first[:, 0, None] + steps[0]).clamp_max(self._tissue.shape[1] - 1)
        j = (first[:, 1, None] + steps[1]).clamp_max(self._tissue.shape[2] - 1)
        k = (first[:, 2, None] + steps[2]).clamp_max(self._tissue.shape[3] - 1)
        fraction = self._tissue[volume[:, None, None, None], i[:, :, None, None], j[:, None, :, None], k[:, None, None, :]]
        tissue = fraction.flatten(1).mean(1).double()
        # Block centres (world) of the tissue blocks, projected into every view.
        grid = torch.stack(torch.meshgrid(*[s.double() for s in steps], indexing="ij"), -1).reshape(-1, 3)
        block_index = (first[:, None, :].double() + grid) * block.double() + (block.double() - 1) / 2  # (B, P, 3)
        affine = self.affines[volume]
        world = block_index @ affine[:, :3, :3].transpose(1, 2) + affine[:, None, :3, 3]
        carm = self._carm(params)
        pixels = project_points(carm, world)  # (B, V, P, 2)
        rows, cols = self.grid_shape
        patch_row = torch.floor((pixels[..., 0] + 0.5) / self.patch_size)
        patch_col = torch.floor((pixels[..., 1] + 0.5) / self.patch_size)
        inside = (patch_row >= 0) & (patch_row < rows) & (patch_col >= 0) & (patch_col < cols)
        solid = (fraction.flatten(1) > 0.5)[:, None, :] & inside
        patch = torch.where(solid, patch_row * cols + patch_col, torch.full_like(patch_row, rows * cols)).long()
        hits = torch.zeros(*patch.shape[:2], rows * cols + 1)
        hits.scatter_add_(2, patch, torch.ones_like(patch, dtype=hits.dtype))
        coverage = (hits[..., :-1] > 0).double().mean(-1)
        return tissue, coverage

    def _carm(self, params: dict[str, Tensor]) -> CArm:
        return CArm(
            alpha=params["alpha"], beta=params["beta"], gamma=params["gamma"], sid=params["sid"], sdd=params["sdd"],
            isocenter=params["isocenter"], height=self.height, width=self.width, pixel_spacing=self.pixel_spacing,
        )

    # ------------------------------------------------------------------ batches
    def sample(self, step: int, *, timings: dict[str, float] | None = None) -> DRRBatch:
        """Batch ``step`` of this sampler's stream (the same batch every time).

        ``timings``, if given, receives the seconds spent drawing, rendering,
        cutting fractures (with ``fractures``), computing correspondence and
        augmenting (with device synchronisation, so only pass it when measuring).
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step: expected an int >= 0, got {step!r}")
        device = self.device

        def timed(name: str):
            return _timed(timings, name, device)

        with timed("draw"):
            params = self.draw(step)
            carm_host = self._carm(params)
            carm = carm_host.to(device=device, dtype=torch.float32)
            volume, start, stop = params["volume"], params["crop_start"], params["crop_stop"]
            to_crop = torch.eye(4, dtype=torch.float64).repeat(self.batch_size, 1, 1)
            to_crop[:, :3, 3] = start.double()
            crop_affine = self.affines[volume] @ to_crop
            backprojected = (self.patch_size * self.pixel_spacing * params["sid"] / params["sdd"]).amin(1)  # (B,)
            factor = torch.clamp(torch.round(backprojected[:, None] / self.spacing), min=1).long()  # (B, 3)
            params["coarse_factor"] = factor

        with torch.no_grad():
            with timed("render"):
                index = self._crop_index(volume, start)
                crops = self._attenuation[index]  # (B, d, h, w)
            fractures = None
            if self.fractures is not None:
                with timed("fractures"):
                    drawn = {key[9:]: value for key, value in params.items() if key.startswith("fracture_")}
                    fractures = apply_fractures(
                        crops, crop_affine.to(device), drawn, config=self.fractures, bone=self._bone[index],
                        mu_water=self.mu_water, window=self._fracture_window,
                    )
                    crops = fractures.attenuation
            with timed("render"):
                batch_volume = VolumeBatch(
                    attenuation=crops[:, None], affine=crop_affine.to(device), mu_water=self.mu_water
                )
                images = to_display(render(batch_volume, carm, method=self.method))
                labels = self._render_labels(index, crop_affine, carm_host) if self.structures else None
            with timed("correspondence"):
                correspondence = None
                if self.correspondence:
                    coarse = self._integral.pool(volume, start, stop, factor)
                    rays = self.rays_per_patch or default_rays_per_patch(backprojected, coarse.voxel_size, self.patch_size)
                    correspondence = patch_correspondence(
                        coarse, carm, patch_size=self.patch_size, rays_per_patch=rays
                    )
            with timed("augmentation"):
                aug = {key[4:]: value for key, value in params.items() if key.startswith("aug_")}
                noise = torch.Generator(device=device).manual_seed(_stream_seed(self.seed, self.rank, step, 2))
                images = apply_intensity(images, aug, noise)
                operations = aug["operation"]
                if self.augmentation.geometric > 0:
                    images, correspondence = apply_geometric(
                        images, operations, correspondence=correspondence, patch_size=self.patch_size,
                        maps=self._pixel_maps,
                    )
                    if labels is not None:
                        labels, _ = apply_geometric(labels, operations, maps=self._pixel_maps)

        batch = DRRBatch(
            images=images,
            correspondence=correspondence,
            carm=carm,
            operations=operations.to(device),
            volume_index=volume.to(device),
            crop_start=start.to(device),
            crop_stop=stop.to(device),
            crop_affine=crop_affine.to(device),
            params=params,
            patch_size=self.patch_size,
            step=step,
            seed=self.seed,
            rank=self.rank,
            labels=labels,
            structures=self.structures,
            volume=batch_volume if self.return_volume else None,
        )
        if fractures is not None:
            pixel = batch.project_points(fractures.center[:, None, :])[:, :, 0]  # (B, V, 2)
            batch.fracture = fractures.fractured
            batch.fracture_center = fractures.center
            batch.fracture_pixel = pixel
            batch.fracture_patch = _patch_index(pixel, self.height, self.width, self.patch_size)
        return batch

    def _crop_index(self, volume: Tensor, start: Tensor) -> tuple[Tensor, ...]:
        """Advanced-indexing tuple that gathers every sample's crop from the stacked volumes."""
        device = self.device
        volume, start = volume.to(device), start.to(device)
        d, h, w = self.crop_voxels.tolist()
        i = start[:, 0, None] + torch.arange(d, device=device)
        j = start[:, 1, None] + torch.arange(h, device=device)
        k = start[:, 2, None] + torch.arange(w, device=device)
        return (volume[:, None, None, None], i[:, :, None, None], j[:, None, :, None], k[:, None, None, :])

    def _render_labels(self, index: tuple[Tensor, ...], crop_affine: Tensor, carm_host: CArm) -> Tensor:
        """``(B, V, S, H, W)`` path lengths (mm) through each structure of each crop."""
        structures = self._structure_ids.shape[0]
        labels = self._labels[index]  # (B, d, h, w)
        ids = self._structure_ids.to(self.device)[:, index[0][:, 0, 0, 0]]  # (S, B)
        masks = (labels[:, None] == ids.T[:, :, None, None, None]).float()  # (B, S, d, h, w)
        b = labels.shape[0]
        batch = VolumeBatch(
            attenuation=masks.reshape(b * structures, 1, *labels.shape[1:]),
            affine=crop_affine.repeat_interleave(structures, 0).to(self.device),
        )
        repeated = CArm(
            **{
                name: getattr(carm_host, name).repeat_interleave(structures, 0)
                for name in ("alpha", "beta", "gamma", "sid", "sdd", "isocenter", "pixel_spacing")
            },
            height=self.height,
            width=self.width,
        ).to(device=self.device, dtype=torch.float32)
        paths = render(batch, repeated, method=self.method)  # (B*S, V, 1, H, W)
        return paths.view(b, structures, self.views, self.height, self.width).transpose(1, 2)
