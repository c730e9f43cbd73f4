"""Hypothesis strategies for correspondence geometry: volumes, C-arms, whole scenes and sampler parameters.

Needs hypothesis (``pip install 'onthefly[testing]'``). Every strategy draws
its parameters through hypothesis only (seeds of ``torch.Generator`` included),
so failures shrink to small, reproducible examples: few views, small
detectors, the first poses of each range, the regular case before a
degenerate corner. Units: millimetres and radians, as everywhere in the library.
Bad arguments raise ``ValueError`` naming the argument when the strategy is
built, not when it is drawn from.

Example:
    >>> from hypothesis import given, settings
    >>> from onthefly.testing import assert_correspondence_valid
    >>> from onthefly.testing.strategies import scenes
    >>> @settings(max_examples=2, deadline=None)
    ... @given(scenes(max_batch=1))
    ... def test_valid(scene):
    ...     assert_correspondence_valid(scene.correspondence(), scene.grid, scene.carm.batch_shape[1])
    >>> test_valid()
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

try:
    from hypothesis import strategies as st
    from hypothesis.strategies import SearchStrategy
except ImportError as error:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "onthefly.testing.strategies needs hypothesis: pip install 'onthefly[testing]'"
    ) from error

import torch
from torch import Tensor

from .._checks import is_int
from ..correspondence import patch_correspondence
from ..geometry import CArm, rotation_matrix
from ..volume import Volume
from . import blob_volume, box_volume

__all__ = ["FOOTPRINTS", "KINDS", "CORNERS", "GRIDS", "Scene", "poses", "volumes", "carms", "scenes", "sample_params"]

poses = st.tuples(st.floats(0.0, 2 * math.pi), st.floats(-0.4, 0.4), st.floats(-math.pi, math.pi))
"""``(alpha, beta, gamma)`` in radians: any primary angle, secondary within +-0.4, any roll."""

FOOTPRINTS = st.sampled_from([None, None, "separable", 2, 3])
"""Footprint methods: exact (``None``, twice as likely), ``"separable"``, or 2 or 3 rays per patch side."""

KINDS = ("blob", "box", "phantom")
"""Kinds of :func:`volumes`: smooth random tissue, a box of known HU in air, a procedural phantom's core."""

CORNERS = ("opposite", "grazing", "tiny_magnification", "huge_magnification")
"""Degenerate C-arm corners :func:`carms` can mix in (see its docstring)."""

GRIDS = ((4, 4), (3, 5), (5, 3), (4, 2))
"""Default ``(rows, cols)`` patch grids of :func:`carms`."""

PHANTOM_REGIONS = ("forearm", "wrist", "hand")


# ---------------------------------------------------------------------------
# Argument checks (when a strategy is built)


def _pair(name: str, value, *, low: float = -math.inf, high: float = math.inf, unit: str = "") -> tuple[float, float]:
    """A ``(low, high)`` range, or a scalar as ``(v, v)``, within ``[low, high]``."""
    items = (value, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        first, second = (float(item) for item in items)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number or a (low, high) pair{unit}, got {value!r}") from None
    if not (math.isfinite(first) and math.isfinite(second) and low <= first <= second <= high):
        raise ValueError(f"{name}: expected low <= high within [{low:g}, {high:g}]{unit}, got {value!r}")
    return first, second


def _count(name: str, value, *, minimum: int) -> int:
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def _choices(name: str, value, allowed: Sequence[str]) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    if any(item not in allowed for item in items):
        raise ValueError(f"{name}: expected names from {list(allowed)}, got {list(items)}")
    return items


def _floats(low: float, high: float) -> SearchStrategy:
    return st.just(low) if low == high else st.floats(low, high)


# ---------------------------------------------------------------------------
# Volumes


@functools.lru_cache(maxsize=32)
def _phantom(region: str, seed: int, spacing: float) -> Volume:
    from ..phantoms import phantom  # noqa: PLC0415 - the phantom generator is only needed for this kind

    return phantom(region, seed, spacing=spacing)


def _phantom_core(region: str, seed: int, spacing: float, size: int) -> Volume:
    """``size^3`` voxels (fewer along a thinner axis) of a phantom around the soft tissue nearest its centre.

    Centred on that voxel (a hand's or a wrist's middle may be air between
    bones and fingers), then on the world origin.
    """
    whole = _phantom(region, seed, spacing)
    shape = torch.tensor(whole.shape)
    tissue = (whole.hu[0] > -200).nonzero()
    middle = (shape - 1).double() / 2
    centre = tissue[((tissue.double() - middle) ** 2).sum(-1).argmin()] if tissue.shape[0] else middle.long()
    start = (centre - size // 2).clamp(min=0)
    start = torch.minimum(start, (shape - size).clamp(min=0))
    stop = torch.minimum(start + size, shape)
    core = whole.crop(start.tolist(), stop.tolist())
    labels = None if core.labels is None else core.labels[0].clone()
    return Volume.from_tensor(core.hu[0].clone(), spacing=spacing, labels=labels)


def volumes(*, sizes: Sequence[int] = (8, 10, 12), spacing=(2.0, 5.0), kinds: Sequence[str] = ("blob", "box"),
            max_offset: float = 0.0, rotated: bool = False, phantom_spacing: Sequence[float] = (4.0,),
            phantom_regions: Sequence[str] = PHANTOM_REGIONS) -> SearchStrategy[Volume]:
    """Small random volumes in HU, with anisotropic spacing, off-centre and rotated affines on request.

    Args:
        sizes: voxels per axis to choose from (the same on every axis; at least 2).
        spacing: ``(low, high)`` voxel edge in mm, drawn per axis (or a scalar for isotropic voxels);
            blob and box volumes.
        kinds: any of :data:`KINDS`: ``"blob"`` (smooth tissue with air pockets and
            bone-like cores, :func:`~onthefly.testing.blob_volume`), ``"box"`` (air
            with one box of known HU in [0, 1000], :func:`~onthefly.testing.box_volume`),
            ``"phantom"`` (the central ``size^3`` voxels of a procedural forearm, wrist
            or hand, :func:`onthefly.phantom`, seeds 0 to 99, at an isotropic spacing from
            ``phantom_spacing``: coarse, so cheap, about 0.05 s per new phantom at 4 mm (0.5 s at 3 mm),
            the last 32 cached; its labels kept; give such tests ``deadline=None``, as hypothesis' slow-draw
            health check allows five deadlines of drawing).
        max_offset: the volume's centre lies within +-``max_offset`` mm of the
            world origin on each axis (0: centred).
        rotated: turn the volume about its centre by a random rotation (Euler
            angles ``Rz Rx Ry``, each in +-pi; the identity first when shrinking).
        phantom_spacing: the isotropic spacings (mm) phantoms are generated at, in [0.25, 4] (default 4 mm).
        phantom_regions: the phantom regions to choose from.

    Returns:
        a :class:`~onthefly.Volume` of ``(1, n, n, n)`` HU in [-1000, 1500] (phantoms:
        up to ``n`` per axis, their own HU, cortical bone up to about 1900).
    """
    sizes = tuple(_count("sizes", n, minimum=2) for n in sizes)
    if not sizes:
        raise ValueError("sizes: expected at least one size, got none")
    edges = _pair("spacing", spacing, low=1e-3, high=1e3, unit=" mm")
    kinds = _choices("kinds", kinds, KINDS)
    if not kinds:
        raise ValueError(f"kinds: expected at least one of {list(KINDS)}, got none")
    offset = _pair("max_offset", max_offset, low=0.0, high=1e4, unit=" mm")[1]
    phantom_spacing = tuple(_pair("phantom_spacing", s, low=0.25, high=4.0, unit=" mm")[0] for s in phantom_spacing)
    regions = _choices("phantom_regions", phantom_regions, PHANTOM_REGIONS)
    if "phantom" in kinds and (not phantom_spacing or not regions):
        raise ValueError("phantom_spacing, phantom_regions: expected at least one of each for kind 'phantom'")
    isotropic = not isinstance(spacing, (tuple, list))
    return _volumes(sizes, edges, isotropic, kinds, offset, bool(rotated), phantom_spacing, regions)


@st.composite
def _volumes(draw, sizes, edges, isotropic, kinds, max_offset, rotated, phantom_spacing, regions) -> Volume:
    size = draw(st.sampled_from(list(sizes)))
    spacing = (edges[0],) * 3 if isotropic else tuple(draw(_floats(*edges)) for _ in range(3))
    kind = draw(st.sampled_from(list(kinds)))
    offset = [draw(st.floats(-max_offset, max_offset)) if max_offset > 0 else 0.0 for _ in range(3)]
    if kind == "blob":
        volume = blob_volume(size=size, spacing=spacing, seed=draw(st.integers(0, 10_000)))
    elif kind == "box":
        start = [draw(st.integers(0, size - 2)) for _ in range(3)]
        stop = [draw(st.integers(s + 1, size)) for s in start]
        volume = box_volume((size,) * 3, start, stop, hu=draw(st.floats(0.0, 1000.0)), spacing=spacing)
    else:
        region, seed = draw(st.sampled_from(list(regions))), draw(st.integers(0, 99))
        volume = _phantom_core(region, seed, draw(st.sampled_from(list(phantom_spacing))), size)
    motion = torch.eye(4, dtype=torch.float64)
    if rotated:
        angles = [torch.tensor(draw(st.floats(-math.pi, math.pi)), dtype=torch.float64) for _ in range(3)]
        motion[:3, :3] = rotation_matrix(*angles)
    motion[:3, 3] = torch.tensor(offset, dtype=torch.float64)
    if rotated or any(offset):
        centre = volume.center.double()  # the origin (every kind is centred), up to rounding
        motion[:3, 3] += centre - motion[:3, :3] @ centre
        volume = Volume(hu=volume.hu, affine=motion.to(volume.affine.dtype) @ volume.affine, labels=volume.labels,
                        label_names=volume.label_names)
    return volume


# ---------------------------------------------------------------------------
# C-arms


def carms(*, extent: float | None = 48.0, max_batch: int = 2, min_views: int = 2, max_views: int = 3,
          patch_size: int = 8, grids=GRIDS, sid=(250.0, 600.0), gap=(150.0, 400.0), field_of_view=(0.8, 1.6),
          pixel_spacing=None, max_isocenter_offset: float = 6.0, tilt: float = 0.4, shared_isocenter: bool = True,
          per_view_distances: bool = False, dtype: torch.dtype = torch.float32,
          corners: Sequence[str] = ()) -> SearchStrategy[CArm]:
    """C-arms of ``(B, V)`` views that all see a volume of ``extent`` mm centred near the origin.

    Ranges and units (the defaults suit :func:`volumes`' 8-12 voxels of 2-5 mm):
    ``alpha`` in [0, 2 pi], ``beta`` in +-``tilt``, ``gamma`` in +-pi (radians);
    distances in mm; the pixel spacing follows from the field of view unless
    ``pixel_spacing`` is given.

    Args:
        extent: the largest edge of the volume to see, mm; every source lies
            outside the volume's bounding sphere (``sid`` must start beyond
            ``sqrt(3) (extent / 2 + max_isocenter_offset)``). ``None``: no volume,
            any cameras (then ``pixel_spacing`` is required).
        max_batch: ``B`` from 1 to this.
        min_views, max_views: ``V`` in this range.
        patch_size: pixels per patch edge; detectors are whole patch grids.
        grids: ``(rows, cols)`` patch grids to choose from (detector ``rows * patch_size`` x
            ``cols * patch_size`` pixels), or a hypothesis strategy of such pairs.
        sid: ``(low, high)`` source-to-isocenter distance, mm.
        gap: ``(low, high)`` of ``sdd - sid``, mm (> 0, so ``sdd > sid``).
        field_of_view: ``(low, high)`` field of view at the isocenter over ``extent``;
            above ``1 + 2 * max_isocenter_offset / extent`` every view sees the whole volume.
        pixel_spacing: ``(low, high)`` mm, drawn per view instead of from the field of view.
        max_isocenter_offset: isocenters within +-this many mm of the origin per axis.
        tilt: largest ``|beta|``, radians (below pi / 2).
        shared_isocenter: one isocenter per sample (the views turn about it); else one per view.
        per_view_distances: ``sid`` and ``gap`` drawn per view; else one per C-arm.
        dtype: ``torch.float32`` or ``torch.float64``.
        corners: degenerate cases from :data:`CORNERS` to mix in; each C-arm is
            the regular case or one of them (the regular case first when shrinking):

            * ``"opposite"``: view 1 looks from exactly the other side of view 0
              (alpha + pi, -beta, the same isocenter): 180 degrees apart, parallel rays;
            * ``"grazing"``: every view axis-aligned (alpha and gamma multiples of
              pi / 2, beta 0 or +-pi / 2), so rays run along voxel faces;
            * ``"tiny_magnification"``: ``sdd / sid`` in [1.001, 1.02] (the detector
              almost at the isocenter);
            * ``"huge_magnification"``: ``sdd / sid`` in [5, 20] with the source just
              outside the volume (``sid`` 1.05 to 1.5 bounding radii).

    Returns:
        a :class:`~onthefly.CArm` of ``dtype``.
    """
    max_batch = _count("max_batch", max_batch, minimum=1)
    min_views = _count("min_views", min_views, minimum=1)
    max_views = _count("max_views", max_views, minimum=min_views)
    patch_size = _count("patch_size", patch_size, minimum=1)
    if isinstance(grids, SearchStrategy):
        grid_strategy = grids
    else:
        grids = [tuple(grid) for grid in grids]
        if not grids or any(len(g) != 2 or any(not is_int(n) or n < 1 for n in g)
                            for g in grids):
            raise ValueError(f"grids: expected (rows, cols) pairs of positive ints, got {grids!r}")
        grid_strategy = st.sampled_from(grids)
    sid = _pair("sid", sid, low=1e-3, high=1e5, unit=" mm")
    gap = _pair("gap", gap, low=1e-3, high=1e5, unit=" mm")
    field_of_view = _pair("field_of_view", field_of_view, low=1e-3, high=1e3)
    if pixel_spacing is not None:
        pixel_spacing = _pair("pixel_spacing", pixel_spacing, low=1e-3, high=1e3, unit=" mm")
    offset = _pair("max_isocenter_offset", max_isocenter_offset, low=0.0, high=1e4, unit=" mm")[1]
    tilt = _pair("tilt", tilt, low=0.0, high=math.pi / 2 - 1e-3, unit=" rad")[1]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")
    corners = _choices("corners", corners, CORNERS)
    if extent is None:
        if pixel_spacing is None:
            raise ValueError("pixel_spacing: expected a (low, high) range in mm when extent is None (no volume)")
        radius = 0.0
    else:
        extent = _pair("extent", extent, low=1e-3, high=1e5, unit=" mm")[0]
        radius = math.sqrt(3) * (extent / 2 + offset)
        if sid[0] <= radius:
            raise ValueError(f"sid: expected distances beyond the volume's bounding radius {radius:.4g} mm (extent "
                             f"{extent:g} mm, isocenters within +-{offset:g} mm) so that sources lie outside it, "
                             f"got {sid}")
    if "opposite" in corners and max_views < 2:
        raise ValueError(f"corners: 'opposite' needs two views or more, got max_views {max_views}")
    if sid[1] * 20 > 1e5 and "huge_magnification" in corners:
        raise ValueError(f"sid: huge magnification (20x) of sid up to {sid[1]:g} mm exceeds the 1e5 mm sdd bound")
    return _carms(extent, radius, max_batch, min_views, max_views, patch_size, grid_strategy, sid, gap, field_of_view,
                  pixel_spacing, offset, tilt, bool(shared_isocenter), bool(per_view_distances), dtype, corners)


@st.composite
def _carms(draw, extent, radius, max_batch, min_views, max_views, patch_size, grids, sid, gap, field_of_view,
           pixel_spacing, max_isocenter_offset, tilt, shared_isocenter, per_view_distances, dtype, corners) -> CArm:
    rows, cols = draw(grids)
    batch, views = draw(st.integers(1, max_batch)), draw(st.integers(min_views, max_views))
    corner = draw(st.sampled_from(("regular", *corners))) if corners else "regular"
    if corner == "opposite" and views < 2:
        views = 2
    distances = views if per_view_distances else 1
    if corner == "huge_magnification":
        distance = [draw(st.floats(1.05, 1.5)) * max(radius, sid[0] / 20) for _ in range(distances)]
        detector_gap = [d * (draw(st.floats(5.0, 20.0)) - 1) for d in distance]
    else:
        distance = [draw(_floats(*sid)) for _ in range(distances)]
        if corner == "tiny_magnification":
            detector_gap = [d * (draw(st.floats(1.001, 1.02)) - 1) for d in distance]
        else:
            detector_gap = [draw(_floats(*gap)) for _ in range(distances)]
    distance_t = torch.tensor(distance, dtype=torch.float64)
    gap_t = torch.tensor(detector_gap, dtype=torch.float64)
    if pixel_spacing is None:
        # A field of view at the isocenter of `field_of_view` times the extent, for the smallest magnification.
        pixel = draw(_floats(*field_of_view)) * extent * float(((distance_t + gap_t) / distance_t).min()) / (
            max(rows, cols) * patch_size)
        pixels = torch.tensor(pixel, dtype=torch.float64)
    else:
        pixels = torch.tensor([[draw(_floats(*pixel_spacing)) for _ in range(views)] for _ in range(batch)],
                              dtype=torch.float64)
    angles = [[_pose(draw, corner, tilt) for _ in range(views)] for _ in range(batch)]
    if corner == "opposite":
        for sample in angles:
            alpha, beta, _ = sample[0]
            sample[1] = (alpha + math.pi, -beta, sample[1][2])
    alpha, beta, gamma = (torch.tensor([[pose[i] for pose in sample] for sample in angles], dtype=torch.float64)
                          for i in range(3))
    centres = 1 if shared_isocenter else views
    iso = torch.tensor([[[draw(_floats(-max_isocenter_offset, max_isocenter_offset)) for _ in range(3)]
                         for _ in range(centres)] for _ in range(batch)], dtype=torch.float64)
    if corner == "opposite" and not shared_isocenter:
        iso[:, 1] = iso[:, 0]
    return CArm(alpha=alpha.to(dtype), beta=beta.to(dtype), gamma=gamma.to(dtype), sid=distance_t.to(dtype),
                sdd=(distance_t + gap_t).to(dtype), isocenter=iso.to(dtype), height=rows * patch_size,
                width=cols * patch_size, pixel_spacing=pixels.to(dtype))


def _pose(draw, corner: str, tilt: float) -> tuple[float, float, float]:
    if corner == "grazing":
        quarter = st.integers(0, 3).map(lambda k: k * math.pi / 2)
        return draw(quarter), draw(st.sampled_from([0.0, math.pi / 2, -math.pi / 2])), draw(quarter)
    return draw(st.floats(0.0, 2 * math.pi)), draw(_floats(-tilt, tilt)), draw(st.floats(-math.pi, math.pi))


# ---------------------------------------------------------------------------
# Scenes


@dataclass
class Scene:
    """Cameras, volumes and the options of ``patch_correspondence`` that belong together.

    Attributes:
        carm: ``(B, V)`` views.
        volumes: ``B`` volumes (one per sample).
        patch_size: pixels per patch edge; divides the detector's height and width.
        footprint: ``None`` (exact footprints), ``"separable"``, or an int: rays per patch side.
    """

    carm: CArm
    volumes: list
    patch_size: int
    footprint: int | str | None

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` patches per view."""
        return self.carm.height // self.patch_size, self.carm.width // self.patch_size

    def correspondence(self, volume=None, carm=None, **options) -> Tensor:
        """``patch_correspondence`` of the scene, ``(B, V*N, V*N)``; ``volume``, ``carm`` and ``options`` override."""
        if self.footprint == "separable":
            footprint = dict(footprint="separable")
        else:
            footprint = dict(rays_per_patch=self.footprint)
        options = dict(patch_size=self.patch_size) | footprint | options
        return patch_correspondence(self.volumes if volume is None else volume, self.carm if carm is None else carm,
                                    **options)


def scenes(max_views: int = 3, max_batch: int = 2, footprints: SearchStrategy = FOOTPRINTS) -> SearchStrategy[Scene]:
    """Random scenes: cameras, detectors, patch sizes and anisotropic blob volumes that fit together.

    Patch size 4 or 8 pixels; 2 x 4 to 5 x 5 patches per view; ``B`` from 1 to
    ``max_batch``; ``V`` from 2 to ``max_views``; sid 250-600 mm, sdd 150-400 mm
    beyond it; volumes of 8-12 voxels of 2-5 mm per axis
    (:func:`~onthefly.testing.blob_volume`, centred); a field of view at the
    isocenter of 0.8-1.6 times the volume's extent; isocenters within +-6 mm;
    ``footprints`` draws the footprint method (default :data:`FOOTPRINTS`).

    Returns:
        a :class:`Scene`.
    """
    _count("max_views", max_views, minimum=2)
    _count("max_batch", max_batch, minimum=1)
    if not isinstance(footprints, SearchStrategy):
        raise ValueError(f"footprints: expected a hypothesis strategy of footprint methods, got {footprints!r}")
    return _scenes(max_views, max_batch, footprints)


@st.composite
def _scenes(draw, max_views: int, max_batch: int, footprints: SearchStrategy) -> Scene:
    patch = draw(st.sampled_from([4, 8]))
    rows, cols = draw(st.sampled_from(GRIDS))
    batch, views = draw(st.integers(1, max_batch)), draw(st.integers(2, max_views))
    sid, gap = draw(st.floats(250.0, 600.0)), draw(st.floats(150.0, 400.0))
    spacing = tuple(draw(st.floats(2.0, 5.0)) for _ in range(3))
    size = draw(st.sampled_from([8, 10, 12]))
    extent = size * max(spacing)
    # A field of view at the isocenter from 0.8 to 1.6 times the volume's extent.
    pixel = draw(st.floats(0.8, 1.6)) * extent * (sid + gap) / (sid * max(rows, cols) * patch)
    angles = [[draw(poses) for _ in range(views)] for _ in range(batch)]
    alpha, beta, gamma = (torch.tensor([[pose[i] for pose in sample] for sample in angles]) for i in range(3))
    iso = torch.tensor([[draw(st.floats(-6.0, 6.0)) for _ in range(3)] for _ in range(batch)])[:, None, :]
    carm = CArm(alpha=alpha, beta=beta, gamma=gamma, sid=sid, sdd=sid + gap, isocenter=iso, height=rows * patch,
                width=cols * patch, pixel_spacing=pixel)
    seeds = [draw(st.integers(0, 10_000)) for _ in range(batch)]
    return Scene(carm, [blob_volume(size=size, spacing=spacing, seed=seed) for seed in seeds], patch, draw(footprints))


# ---------------------------------------------------------------------------
# The sampler's typed parameters


def sample_params(sampler) -> SearchStrategy:
    """Valid :class:`~onthefly.sampling.params.SampleParams` for a sampler: any CT, crop and poses it could draw.

    Where :meth:`~onthefly.DRRCorrespondenceSampler.draw` follows its
    generators, this strategy lets hypothesis choose, so a test of code that
    takes parameters (``sampler.make_batch(params)``, your own consumer of
    ``SampleParams``) reaches every corner of the configuration and shrinks to
    a small one: CT indices in the store (the rank's shard is not applied),
    crop boxes anywhere inside their CT (whole voxels), every pose angle and
    distance within its distribution's bounds (radians, mm; an unbounded
    distribution, such as the default jittered cardinal ``alpha``, is sampled
    with a hypothesis-drawn seed, as is a view layout other than independent
    views), isocenters at the crop centre plus a jitter within
    ``+-isocenter_jitter`` mm, and the augmentation, fractures, physics and
    anatomy drawn by the configuration from hypothesis-drawn seeds. Samples
    that fail the sampler's tissue checks are kept and flagged in
    ``params.degenerate`` (the sampler would redraw them).

    Args:
        sampler: a :class:`~onthefly.DRRCorrespondenceSampler` (its ``config`` and ``store`` are read).

    Returns:
        a strategy of ``SampleParams`` on the host, ``B = config.batch_size``, ``V = config.views``.
    """
    config, store = getattr(sampler, "config", None), getattr(sampler, "store", None)
    if config is None or store is None:
        raise TypeError(f"sampler: expected a DRRCorrespondenceSampler (with config and store), "
                        f"got {type(sampler).__name__}")
    if len(store) < 1:
        raise ValueError("sampler: its store holds no CT")
    crop = torch.tensor(config.crop_voxels())
    if bool((store.shapes < crop).any()):
        raise ValueError(f"sampler: crops of {tuple(crop.tolist())} voxels do not fit every CT of its store "
                         f"(shapes down to {tuple(store.shapes.amin(0).tolist())})")
    return _sample_params(config, store)


@st.composite
def _sample_params(draw, config, store):
    from ..sampling.draw import paired_params, tissue_checks  # noqa: PLC0415 - the sampler's own checks, reused
    from ..sampling.layouts import IndependentViews  # noqa: PLC0415
    from ..sampling.params import POSE_NAMES, SampleParams  # noqa: PLC0415

    batch, views = config.batch_size, config.views
    seeds = st.integers(0, 2**32 - 1)
    volume = torch.tensor([draw(st.integers(0, len(store) - 1)) for _ in range(batch)], dtype=torch.long)
    crop = torch.tensor(config.crop_voxels())
    room = store.shapes[volume] - crop
    start = torch.tensor([[draw(st.integers(0, int(r))) for r in row] for row in room], dtype=torch.long)
    stop = start + crop
    extras = {}
    if isinstance(config.layout, IndependentViews):
        pose = {}
        for name in POSE_NAMES:
            distribution = getattr(config, name)
            low, high = distribution.bounds()
            if math.isfinite(low) and math.isfinite(high):
                values = [[draw(_floats(low, high)) for _ in range(views)] for _ in range(batch)]
                pose[name] = torch.tensor(values, dtype=torch.float64)
            else:
                pose[name] = distribution.sample((batch, views), torch.Generator().manual_seed(draw(seeds)))
    else:
        pose, extras = config.layout.draw(config, batch, torch.Generator().manual_seed(draw(seeds)))
    jitter_range = config.isocenter_jitter
    centres = 1 if config.layout.shared_isocenter else views
    jitter = torch.tensor([[[draw(_floats(-jitter_range, jitter_range)) for _ in range(3)] for _ in range(centres)]
                           for _ in range(batch)], dtype=torch.float64).expand(batch, views, 3)
    affine = store.affines[volume]
    centre_index = torch.cat([(start + stop - 1).double() / 2, torch.ones(batch, 1, dtype=torch.float64)], -1)
    isocenter = (affine @ centre_index[..., None])[:, None, :3, 0] + jitter
    backprojected = (config.patch_size * config.pixel_spacing * pose["sid"] / pose["sdd"]).amin(1)
    factor = torch.clamp(torch.round(backprojected[:, None] / store.spacing), min=1).long()
    params = SampleParams(
        step=draw(st.integers(0, 2**31 - 1)), seed=draw(st.integers(0, 2**31 - 1)), rank=0, volume_index=volume,
        crop_start=start, crop_stop=stop, **{name: pose[name] for name in POSE_NAMES}, isocenter=isocenter.clone(),
        coarse_factor=factor, tissue_fraction=torch.zeros(batch, dtype=torch.float64),
        projection_fraction=torch.zeros(batch, views, dtype=torch.float64),
        degenerate=torch.zeros(batch, dtype=torch.bool), layout=extras,
    )
    tissue, coverage = tissue_checks(config, store, params)
    degenerate = (tissue < config.min_tissue_fraction) | (coverage.amin(1) < config.min_projection_fraction)
    params = replace(params, tissue_fraction=tissue, projection_fraction=coverage, degenerate=degenerate)

    def generator() -> torch.Generator:
        return torch.Generator().manual_seed(draw(seeds))

    augmentation = config.augmentation.draw(batch, views, generator())
    fracture = physics = anatomy = None
    if config.fractures is not None:
        from ..fractures import draw_fractures  # noqa: PLC0415

        fracture = draw_fractures(config.fractures, batch, generator())
    if config.physics is not None:
        physics = config.physics.draw(batch, generator())
    if config.anatomy is not None:
        anatomy = config.anatomy.draw(batch, generator())
    params = replace(params, augmentation=augmentation, fracture=fracture, physics=physics, anatomy=anatomy)
    if config.fractures is not None and config.fractures.paired:
        params = paired_params(params)
    return params
