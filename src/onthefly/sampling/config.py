"""The sampler's configuration: one frozen, validated :class:`SamplerConfig` with a stable fingerprint.

Everything that decides what batch ``step`` contains, apart from the CTs
themselves (the store) and the stream's ``seed`` and ``rank``, is a field
here. Building the config checks every setting on host values and names the
argument in its error; the later stages trust it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._checks import OMIT_WHEN, check_choice, check_one_or_three, check_positive_int, is_int, is_real
from ..augment import Augmentation
from ..correspondence import WEIGHTINGS
from ..display import Display, as_display
from ..footprints import FOOTPRINTS
from ..distributions import CardinalAngles, Distribution, as_distribution
from ..deformation import AnatomyVariation
from ..fractures import FractureConfig
from ..physics import Physics
from ..projector import METHODS
from ..volume import MU_WATER_PER_MM, check_mu_water
from .layouts import IndependentViews, ViewLayout
from .params import POSE_NAMES

__all__ = ["SamplerConfig", "MAX_REDRAWS", "describe"]

MAX_REDRAWS = 100
"""Upper bound of ``max_redraws``: each round costs host-side checks, so an always-degenerate CT cannot stall a run."""


def _number(name: str, value, *, low: float = -math.inf, high: float = math.inf, unit: str = "") -> float:
    if not is_real(value) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number{unit}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}: expected a value in [{low:g}, {high:g}]{unit}, got {value!r}")
    return float(value)


def _image_size(value) -> tuple[int, int]:
    size = (value, value) if is_int(value) else value
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"image_size: expected H or (H, W) pixels, got {value!r}")
    return (check_positive_int("image_size", size[0]), check_positive_int("image_size", size[1]))


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """What the sampler draws and makes. Keyword-only; angles in radians, lengths in mm.

    Attributes:
        views: views per sample ``V`` (at least 2).
        image_size: detector pixels ``H`` or ``(H, W)``; stored as ``(H, W)``.
        patch_size: correspondence patch ``k``; must divide ``H`` and ``W``.
        pixel_spacing: detector pixel edge (mm). Default ``None``: the crop's
            largest edge, magnified at the middle of the ``sid``/``sdd`` ranges,
            spans the detector's larger side (resolved at construction).
        crop_size: crop edge (mm), one number or three; stored as three.
        spacing: voxel spacing every CT is resampled to (mm), one or three.
        alpha, beta, gamma: per-view angle distributions: a number (constant),
            a ``(low, high)`` uniform range, a :class:`~onthefly.distributions.Distribution`
            or :class:`~onthefly.distributions.PerView`. Default ``alpha``: the
            seed method's scheme (:class:`~onthefly.distributions.CardinalAngles`).
        sid, sdd: source-to-isocenter and source-to-detector distances, the
            same forms; every ``sdd`` must exceed every ``sid``.
        isocenter_jitter: each view's isocenter is the crop centre plus a
            uniform offset in ``[-j, j]`` mm per axis.
        layout: how the views are posed (:mod:`onthefly.sampling.layouts`);
            default :class:`~onthefly.sampling.layouts.IndependentViews`.
        target: what the batch carries besides the views
            (:mod:`onthefly.sampling.targets`); default: a :class:`~onthefly.sampling.batch.DRRBatch`.
        batch_size: samples per batch ``B``.
        augmentation: an :class:`~onthefly.augment.Augmentation` (default:
            intensity only), or ``None`` (stored as ``Augmentation.none()``).
        weighting, air_threshold_hu: correspondence voxel weights
            (:func:`~onthefly.correspondence.voxel_weights`); the threshold also
            decides what the degenerate-draw checks count as tissue.
        rays_per_patch: ``None`` for the exact footprints (the default), else the
            sampled footprints' rays per patch side, an approximation
            (:func:`~onthefly.correspondence.patch_correspondence`).
        footprint: ``"exact"`` (the default) or ``"separable"``, the product of
            the exact footprint's marginals: about half the correspondence
            time, IoU 0.99 at ``C >= 0.5`` against many rays
            (:mod:`onthefly.footprints`). Only with ``rays_per_patch=None``.
        min_tissue_fraction: a crop whose non-air fraction is lower is redrawn.
        min_projection_fraction: a sample with a view in which tissue covers a
            smaller share of the patches is redrawn.
        max_redraws: redraw rounds before keeping a degenerate sample (at most
            :data:`MAX_REDRAWS`; recorded in ``params.degenerate``).
        structures: label names (or ids) projected into ``batch.labels``, or ``None``.
        return_volume: also return the crops (``batch.volume``).
        correspondence: compute the correspondence matrix.
        fractures: a :class:`~onthefly.fractures.FractureConfig`, or ``None``.
        physics: a :class:`~onthefly.physics.Physics` (spectrum, scatter, detector, noise, drawn per sample
            into ``params.physics`` and applied after rendering; the ``display`` shows its log image), or
            ``None`` (the default: monochromatic line integrals). The correspondence does not change.
        anatomy: an :class:`~onthefly.deformation.AnatomyVariation` (each crop deformed before fractures and
            rendering, drawn into ``params.anatomy``; the correspondence is that of the deformed crop), or
            ``None`` (the default). Not with ``compile=True``.
        display: how line integrals become the views' ``[0, 1]`` images: ``"radiograph"``
            (the default: local contrast and a percentile window, as a processed
            radiograph), ``"minmax"`` (per-view min-max, the default of earlier versions) or a
            :class:`~onthefly.display.Display`; stored as a ``Display``.
        method: projector method, ``"trilinear"`` or ``"siddon"``.
        mu_water: attenuation of water (1/mm).
        shard: under ``torch.distributed``, give each rank a disjoint share of
            the CTs (``None``: when there are at least as many CTs as ranks).
        compile: render and compute the correspondence through ``torch.compile``
            (static shapes: one compilation per stage, again only if a batch
            needs a larger footprint window than any before). Worth it on a GPU;
            on a CPU Inductor's code is slower than the eager path today.

    Example:
        >>> config = SamplerConfig(views=3, image_size=128, batch_size=4)
        >>> config.image_size, config.crop_size, round(config.pixel_spacing, 3)
        ((128, 128), (200.0, 200.0, 200.0), 1.93)
    """

    views: int = 2
    image_size: int | tuple[int, int] = 256
    patch_size: int = 16
    pixel_spacing: float | None = None
    crop_size: float | Sequence[float] = 200.0
    spacing: float | Sequence[float] = 1.0
    alpha: Distribution | float | tuple[float, float] = CardinalAngles()
    beta: Distribution | float | tuple[float, float] = (-math.radians(15.0), math.radians(15.0))
    gamma: Distribution | float | tuple[float, float] = 0.0
    sid: Distribution | float | tuple[float, float] = (750.0, 950.0)
    sdd: Distribution | float | tuple[float, float] = (1000.0, 1100.0)
    isocenter_jitter: float = 10.0
    layout: ViewLayout = field(default_factory=IndependentViews)
    target: object | None = None
    batch_size: int = 16
    augmentation: Augmentation | None = Augmentation()
    weighting: str = "soft"
    air_threshold_hu: float = -900.0
    rays_per_patch: int | None = None
    min_tissue_fraction: float = 0.2
    min_projection_fraction: float = 0.25
    max_redraws: int = 8
    structures: Sequence[str | int] | None = None
    return_volume: bool = False
    correspondence: bool = True
    fractures: FractureConfig | None = None
    display: str | Display = field(default="radiograph", metadata={OMIT_WHEN: Display()})
    footprint: str = field(default="exact", metadata={OMIT_WHEN: "exact"})
    physics: Physics | None = field(default=None, metadata={OMIT_WHEN: None})
    anatomy: AnatomyVariation | None = field(default=None, metadata={OMIT_WHEN: None})
    method: str = "trilinear"
    mu_water: float = MU_WATER_PER_MM
    shard: bool | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not is_int(self.views) or self.views < 2:
            raise ValueError(f"views: expected an int >= 2 (views per sample), got {self.views!r}")
        height, width = _image_size(self.image_size)
        set_(self, "image_size", (height, width))
        check_positive_int("patch_size", self.patch_size)
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"patch_size: expected a divisor of image_size {height} x {width}, got {self.patch_size}")
        check_positive_int("batch_size", self.batch_size)
        set_(self, "crop_size", check_one_or_three("crop_size", self.crop_size, what="numbers", bounds=(1e-3, 1e5)))
        set_(self, "spacing", check_one_or_three("spacing", self.spacing, what="numbers", bounds=(1e-3, 1e3)))
        self._set_distributions()
        set_(self, "isocenter_jitter", _number("isocenter_jitter", self.isocenter_jitter, low=0.0, high=1e4, unit=" mm"))
        self._set_options()
        self._set_layout_and_target()
        self._set_pixel_spacing()

    def _set_distributions(self) -> None:
        for name in POSE_NAMES:
            object.__setattr__(self, name, as_distribution(name, getattr(self, name)))
        sid_low, sid_high = self.sid.bounds()
        sdd_low, sdd_high = self.sdd.bounds()
        if not 1e-3 <= sid_low <= sid_high <= 1e5:
            raise ValueError(f"sid: expected distances in [0.001, 1e5] mm, got a range from {sid_low:g} to {sid_high:g}")
        if not sdd_high <= 1e5:
            raise ValueError(f"sdd: expected distances up to 1e5 mm, got a range reaching {sdd_high:g}")
        if sdd_low <= sid_high:
            raise ValueError(
                f"sdd: expected every source-to-detector distance to exceed every sid (the detector lies beyond "
                f"the isocenter), got sdd from {sdd_low:g} mm with sid up to {sid_high:g} mm"
            )

    def _set_layout_and_target(self) -> None:
        if not isinstance(self.layout, ViewLayout):
            raise TypeError(f"layout: expected a ViewLayout, got {type(self.layout).__name__}")
        defaults = {item.name: item.default for item in dataclasses.fields(self)}
        for name in self.layout.pose_settings:
            if getattr(self, name) != as_distribution(name, defaults[name]):
                raise ValueError(f"{name}: the layout {type(self.layout).__name__} draws it itself, so the sampler's "
                                 f"{name} would be ignored; leave it at its default, got {getattr(self, name)!r}")
        self.layout.check(self)
        from .targets import DRRTarget, TargetBuilder

        if self.target is None:
            object.__setattr__(self, "target", DRRTarget())
        if not isinstance(self.target, TargetBuilder):
            raise TypeError(f"target: expected a TargetBuilder, got {type(self.target).__name__}")
        self.target.check(self)

    def _set_options(self) -> None:
        set_ = object.__setattr__
        if self.augmentation is None:
            set_(self, "augmentation", Augmentation.none())
        if not isinstance(self.augmentation, Augmentation):
            raise TypeError(f"augmentation: expected an Augmentation or None, got {type(self.augmentation).__name__}")
        height, width = self.image_size
        if self.augmentation.turns and height != width:
            raise ValueError(f"augmentation: quarter turns need square views, got image_size {height} x {width}")
        check_choice("weighting", self.weighting, WEIGHTINGS)
        set_(self, "display", as_display(self.display))
        check_choice("method", self.method, METHODS)
        set_(self, "air_threshold_hu", _number("air_threshold_hu", self.air_threshold_hu, low=-1e4, high=1e5, unit=" HU"))
        if self.rays_per_patch is not None:
            check_positive_int("rays_per_patch", self.rays_per_patch)
            if self.rays_per_patch > 64:
                raise ValueError(f"rays_per_patch: expected at most 64 rays per patch side, got {self.rays_per_patch}")
        check_choice("footprint", self.footprint, FOOTPRINTS)
        if self.rays_per_patch is not None and self.footprint != "exact":
            raise ValueError(f"rays_per_patch, footprint: sampled footprints (rays_per_patch={self.rays_per_patch}) "
                             f"cannot be {self.footprint!r}; give one of the two")
        for name in ("min_tissue_fraction", "min_projection_fraction"):
            set_(self, name, _number(name, getattr(self, name), low=0.0, high=1.0))
        redraws = self.max_redraws
        if not is_int(redraws) or not 0 <= redraws <= MAX_REDRAWS:
            raise ValueError(f"max_redraws: expected an int in [0, {MAX_REDRAWS}], got {redraws!r}")
        set_(self, "structures", self._structure_names())
        for name in ("return_volume", "correspondence"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        if self.anatomy is not None and not isinstance(self.anatomy, AnatomyVariation):
            raise TypeError(f"anatomy: expected an AnatomyVariation or None, got {type(self.anatomy).__name__}")
        if self.anatomy is not None and self.compile:
            raise ValueError("anatomy, compile: the deformed crops' correspondence weights are pooled eagerly; "
                             "use compile=False with anatomy (the deformation itself has no graph break)")
        if self.physics is not None and not isinstance(self.physics, Physics):
            raise TypeError(f"physics: expected a Physics or None, got {type(self.physics).__name__}")
        if self.fractures is not None and not isinstance(self.fractures, FractureConfig):
            raise TypeError(f"fractures: expected a FractureConfig or None, got {type(self.fractures).__name__}")
        if self.fractures is not None and self.fractures.paired and self.batch_size % 2:
            raise ValueError(f"batch_size: expected an even size with paired fractures (a fractured sample and its "
                             f"intact twin), got {self.batch_size}")
        set_(self, "mu_water", check_mu_water(self.mu_water))
        if self.shard is not None and not isinstance(self.shard, bool):
            raise TypeError(f"shard: expected True, False or None, got {self.shard!r}")
        if not isinstance(self.compile, bool):
            raise TypeError(f"compile: expected a bool, got {self.compile!r}")

    def _structure_names(self) -> tuple[str | int, ...] | None:
        if self.structures is None:
            return None
        items = [self.structures] if isinstance(self.structures, (str, int)) else self.structures
        try:
            items = tuple(items)
        except TypeError:
            raise ValueError(f"structures: expected label names or ids, got {self.structures!r}") from None
        if not items or not all(
            (isinstance(item, str) and item) or (is_int(item) and item >= 0)
            for item in items
        ):
            raise ValueError(f"structures: expected a non-empty sequence of label names or ids >= 0, got {self.structures!r}")
        return items

    def _set_pixel_spacing(self) -> None:
        if self.pixel_spacing is None:
            sid_low, sid_high = self.sid.bounds()
            sdd_low, sdd_high = self.sdd.bounds()
            magnification = (sdd_low + sdd_high) / (sid_low + sid_high)
            value = max(self.crop_size) * magnification / max(self.image_size)
        else:
            value = self.pixel_spacing
        object.__setattr__(self, "pixel_spacing", _number("pixel_spacing", value, low=1e-3, high=1e3, unit=" mm"))

    # ------------------------------------------------------------------ derived
    @property
    def height(self) -> int:
        return self.image_size[0]

    @property
    def width(self) -> int:
        return self.image_size[1]

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(H/k, W/k)`` patches per view."""
        return (self.height // self.patch_size, self.width // self.patch_size)

    def coarse_grid(self) -> tuple[int, int, int]:
        """Coarse voxels per axis that hold any crop's correspondence grid (at the smallest pooling factor)."""
        sid_low, _ = self.sid.bounds()
        _, sdd_high = self.sdd.bounds()
        backprojected = self.patch_size * self.pixel_spacing * sid_low / sdd_high
        factors = [max(1, round(backprojected / step)) for step in self.spacing]
        return tuple(-(-count // factor) for count, factor in zip(self.crop_voxels(), factors))

    def crop_voxels(self) -> tuple[int, int, int]:
        """Voxels per crop edge at the sampler's spacing (at least one)."""
        return tuple(max(1, round(size / step)) for size, step in zip(self.crop_size, self.spacing))

    def replace(self, **changes) -> "SamplerConfig":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict:
        """The stream-defining settings as plain JSON-able values (distributions, layout and target by their fields).

        ``compile`` is left out: it changes how a batch is computed, not what it holds; so are settings added
        after the first version while they hold the value that version behaved as (``OMIT_WHEN`` in a field's
        metadata: ``display="minmax"``, ``footprint="exact"``, ``FractureConfig(paired=False)``), so earlier
        settings keep their fingerprint.
        """
        return {item.name: describe(getattr(self, item.name)) for item in dataclasses.fields(self)
                if item.name != "compile" and not _omitted(item, getattr(self, item.name))}

    def fingerprint(self) -> str:
        """A stable hash of :meth:`describe` (same settings, same fingerprint, across runs and machines)."""
        text = json.dumps(self.describe(), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _omitted(item: dataclasses.Field, value) -> bool:
    """Whether a field holds the value its ``OMIT_WHEN`` metadata names (left out of descriptions)."""
    return OMIT_WHEN in item.metadata and value == item.metadata[OMIT_WHEN]


def describe(value):
    """Plain JSON-able form of a configuration value: numbers, strings, lists, dicts with a ``type`` key."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (tuple, list)):
        return [describe(item) for item in value]
    if isinstance(value, dict):
        return {str(key): describe(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value):
        return {"type": type(value).__name__} | {
            item.name: describe(getattr(value, item.name)) for item in dataclasses.fields(value)
            if item.init and not _omitted(item, getattr(value, item.name))
        }
    if hasattr(value, "distributions"):  # PerView
        return {"type": type(value).__name__, "distributions": describe(list(value.distributions))}
    raise TypeError(f"describe: no plain form for a {type(value).__name__}")
