"""How fractures are drawn: :class:`FractureConfig`, the bones it prefers and the box it changes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._checks import OMIT_WHEN, check_one_or_three, is_int
from ..distributions import Uniform, as_distribution
from ..volume import attenuation_of_hu
from .kinds import DEFAULT_KIND_WEIGHTS, DEFAULT_SEVERITY_SHARES, FRACTURE_KINDS, SEVERITIES, FractureKind

__all__ = ["BONE_STRUCTURES", "DEFAULT_BONE_WEIGHTS", "FractureConfig", "MAX_FRACTURE_REDRAWS", "SEVERITY_NAMES",
           "fracture_window"]

SEVERITY_NAMES: tuple[str, ...] = tuple(SEVERITIES)
"""The severities' names: ``FractureResult.severity`` and ``batch.fracture_severity`` index them (-1: generic)."""

MAX_FRACTURE_REDRAWS = 100
"""Upper bound of ``FractureConfig.max_redraws`` (the sampler's own redraws have the same bound)."""

DEFAULT_BONE_WEIGHTS: Mapping[str, float] = {
    # long bones, clavicle, scapula and pelvis: a displaced fracture stands out in projection
    "humerus": 3.0, "radius": 3.0, "ulna": 3.0, "femur": 3.0, "tibia": 3.0, "fibula": 3.0,
    "clavicula": 3.0, "scapula": 2.0, "hip": 2.0, "rib": 1.0,
    "metacarpal": 1.0, "metatarsal": 1.0, "phalanges": 1.0, "patella": 1.0, "carpal": 0.5, "tarsal": 0.5,
    # the procedural phantoms' hand and wrist bones (onthefly.phantoms): phalanges one by one, the carpals by name
    # (the scaphoid, the carpal bone that breaks most often, weighted like a long bone)
    "phalanx": 1.0, "scaphoid": 2.0, "lunate": 0.5, "triquetrum": 0.5, "pisiform": 0.2, "trapezium": 0.5,
    "trapezoid": 0.3, "capitate": 0.5, "hamate": 0.5,
    # overlapped by the spine and mediastinum, or hidden inside a thick body: rarely visible
    "sternum": 0.3, "sacrum": 0.3, "skull": 0.3, "vertebrae": 0.1,
}
"""Relative chance per bone voxel of each skeletal TotalSegmentator structure (a name pattern, see below).

A label name matches a pattern when it equals it or starts with the pattern
followed by ``_`` (case-insensitive): ``"rib"`` matches ``"rib_left_1"``,
``"vertebrae"`` matches ``"vertebrae_T8"``. ``costal_cartilages`` is not bone.
"""

BONE_STRUCTURES: tuple[str, ...] = tuple(DEFAULT_BONE_WEIGHTS)
"""The skeletal structure name patterns (the keys of :data:`DEFAULT_BONE_WEIGHTS`)."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _range(name: str, value, *, unit: str, minimum: float = 0.0, strict: bool = False) -> tuple[float, float]:
    """A number or a ``(low, high)`` pair as a checked ``(low, high)`` pair, all ``>= minimum`` (``>`` if strict)."""
    distribution = as_distribution(name, value)  # checks the type, finiteness and order
    if not isinstance(distribution, Uniform):
        raise TypeError(f"{name}: expected a number or a (low, high) pair ({unit}), got {value!r}")
    low, high = distribution.bounds()
    if low < minimum or (strict and low <= minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{name}: expected values {bound} {unit}, got ({low:g}, {high:g})")
    return (low, high)


def _number(name: str, value, *, unit: str, low: float = -math.inf, high: float = math.inf) -> float:
    if not _is_number(value) or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name}: expected a finite number in [{low:g}, {high:g}] {unit}, got {value!r}".replace("  ", " "))
    return float(value)


def _bone_weights(value) -> tuple[tuple[str | int, float], ...] | None:
    """``None``, names/ids (weight 1 each) or ``{name or id: weight}`` as ``((key, weight), ...)``."""
    if value is None:
        return None
    if isinstance(value, str) or is_int(value):
        value = (value,)
    items = tuple(value.items()) if isinstance(value, Mapping) else tuple((key, 1.0) for key in value)
    good_key = lambda key: (isinstance(key, str) and key) or (is_int(key) and key >= 0)
    if not items or not all(good_key(key) and _is_number(weight) and math.isfinite(weight) and weight >= 0
                            for key, weight in items):
        raise ValueError("bones: expected label names or ids, or {name or id: weight >= 0}, at least one, "
                         f"got {value!r}")
    if not any(weight > 0 for _, weight in items):
        raise ValueError(f"bones: expected at least one positive weight, got {value!r}")
    return tuple((key, float(weight)) for key, weight in items)


def _kinds(value) -> tuple[tuple[FractureKind, float], ...] | None:
    """``None``, or ``{kind name or FractureKind: weight}`` as ``((FractureKind, weight), ...)`` (may be empty)."""
    if value is None:
        return None
    if isinstance(value, tuple) and all(isinstance(item, tuple) and len(item) == 2 for item in value):
        value = dict(value)  # the stored form (dataclasses.replace passes it back)
    if not isinstance(value, Mapping):
        raise TypeError(f"kinds: expected None or {{kind name or FractureKind: weight >= 0}}, got {value!r}")
    kinds = []
    for key, weight in value.items():
        if isinstance(key, str) and key not in FRACTURE_KINDS:
            raise ValueError(f"kinds: unknown kind {key!r}; expected names from {list(FRACTURE_KINDS)} "
                             "or FractureKind objects")
        if not isinstance(key, (str, FractureKind)):
            raise TypeError(f"kinds: expected kind names or FractureKind objects as keys, got {key!r}")
        if not _is_number(weight) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"kinds: expected weights >= 0, got {weight!r} for {key!r}")
        kinds.append((FRACTURE_KINDS[key] if isinstance(key, str) else key, float(weight)))
    names = [kind.name for kind, _ in kinds]
    if len(set(names)) != len(names):
        raise ValueError(f"kinds: expected distinct kind names, got {names}")
    if kinds and not any(weight > 0 for _, weight in kinds):
        raise ValueError(f"kinds: expected at least one positive weight (or an empty mapping for no kinds), "
                         f"got {value!r}")
    return tuple(kinds)


def _severity(value) -> tuple[tuple[str, float], ...] | None:
    """``None`` or ``{severity name: share}`` (shares >= 0 summing to 1) as ``((name, share), ...)`` over all severities."""
    if value is None:
        return None
    if isinstance(value, tuple) and all(isinstance(item, tuple) and len(item) == 2 for item in value):
        value = dict(value)  # the stored form
    if not isinstance(value, Mapping):
        raise TypeError(f"severity: expected None or {{severity name: share}}, got {value!r}")
    unknown = [key for key in value if key not in SEVERITIES]
    if unknown:
        raise ValueError(f"severity: unknown severities {unknown}; expected names from {list(SEVERITIES)}")
    if not all(_is_number(share) and math.isfinite(share) and share >= 0 for share in value.values()):
        raise ValueError(f"severity: expected shares >= 0, got {dict(value)!r}")
    total = sum(float(share) for share in value.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"severity: expected shares summing to 1, got {dict(value)!r} (sum {total:g})")
    return tuple((name, float(value.get(name, 0.0))) for name in SEVERITIES)


@dataclass(frozen=True)
class FractureConfig:
    """How fractures are drawn. Lengths in mm, angles in radians; a range is a number or a ``(low, high)`` pair.

    A fracture cuts the bone through a chosen bone point with a plane (simple
    pattern) or two planes (comminuted), removes a gap of bone behind each cut
    (filled with soft tissue), and moves the fragment beyond the cut as a rigid
    body (translation across the bone's axis, angulation about a hinge in the
    cut plane); the motion is rigid within ``reach / 2`` of the bone point along
    the bone and fades to nothing at ``reach``, where the bone stays in place.

    Attributes:
        probability: chance that a sample is fractured (a crop without bone is never fractured).
        comminuted_probability: chance of the comminuted pattern (two cuts: an
            intermediate fragment with its own motion) instead of the simple one.
        gap: width of the bone removed behind each cut, mm (> 0).
        obliquity: angle between the cut's normal and the bone's axis, rad in
            ``[0, pi/2)`` (0: transverse; larger: oblique).
        translation: shift of each moving fragment across the bone's axis, mm (>= 0).
        angulation: rotation of each moving fragment about a hinge in its cut plane, rad in ``[0, pi/2]``.
        fragment_length: length of the comminuted pattern's intermediate fragment along the bone's axis, mm (> 0).
        reach: radius of the region a fracture may change around its bone point, mm (> 0);
            sizes the box of voxels it computes (:func:`fracture_window`).
        bones: which bones and how often: ``None`` for :data:`DEFAULT_BONE_WEIGHTS`,
            label names (patterns) or ids with weight 1, or ``{name or id: weight}``;
            stored as ``((name or id, weight), ...)``.
        bone_hu: bone threshold, HU: CTs without a matching label map take voxels
            above it as bone (bone points, and the bone piece connected to the point).
        soft_tissue_hu: what the gap and the place a fragment leaves become, HU (below ``bone_hu``).
        min_visibility: redraw a fracture whose visibility (:func:`fracture_visibility`,
            the largest display change it causes in any view) is below this, in ``[0, 1)``; 0: never.
        max_redraws: candidates beyond the first drawn per sample for those redraws (at most 100);
            a sample whose candidates all stay below ``min_visibility`` keeps its most
            visible one and is flagged (``FractureResult.invisible``).
        kinds: fracture kinds per site (:mod:`~onthefly.fractures.kinds`) and how often each is drawn:
            ``None`` for :data:`~onthefly.fractures.kinds.DEFAULT_KIND_WEIGHTS` (distal radius, ulnar
            styloid, radius and ulna shafts, scaphoid waist, metacarpal neck and shaft, phalanges),
            ``{name or FractureKind: weight}``, or ``{}`` for none. Per sample a kind is drawn among those
            whose site (on a bone of a label map) lies in the crop; where none does (a CT without these
            bones, such as a chest CT) the fracture is the generic one these other settings describe.
            Kinds set their own site, obliquity, comminution and motion (``gap``, ``obliquity``,
            ``translation``, ``angulation``, ``fragment_length`` and ``comminuted_probability`` above
            apply to the generic fracture only).
        severity: shares of the severities of kind fractures (:data:`~onthefly.fractures.kinds.SEVERITIES`:
            ``"obvious"``, ``"moderate"``, ``"subtle"``), summing to 1; ``None`` for
            :data:`~onthefly.fractures.kinds.DEFAULT_SEVERITY_SHARES`.
        kind_min_visibility: ``min_visibility`` for fractures of a kind, in ``[0, 1)``: a kind fracture
            below it is redrawn (up to ``max_redraws`` times) at another place of the same kind's site,
            with the same kind and severity, so that the recorded shares stay those drawn; 0: never.
            The generic fracture keeps ``min_visibility``.
        paired: the sampler's batches come in pairs: the second half of a batch
            repeats the first half's CTs, crops, cameras and augmentation without
            fractures, and the first half is fractured with ``probability`` (so the
            fracture, and the pixel noise of an intensity augmentation, which is
            drawn per view, are the only differences within a pair; the batch size
            must be even). For training; evaluate on unpaired batches.

    Example:
        >>> config = FractureConfig(probability=1.0, translation=(2.0, 4.0), bones=["rib", "clavicula"])
        >>> config.translation, config.candidates
        ((2.0, 4.0), 1)
    """

    probability: float = 0.5
    comminuted_probability: float = 0.25
    gap: float | tuple[float, float] = (1.5, 4.0)
    obliquity: float | tuple[float, float] = (0.0, 0.6)
    translation: float | tuple[float, float] = (4.0, 10.0)
    angulation: float | tuple[float, float] = (0.05, 0.4)
    fragment_length: float | tuple[float, float] = (6.0, 12.0)
    reach: float = 20.0
    bones: Mapping[str | int, float] | Sequence[str | int] | None = None
    bone_hu: float = 300.0
    soft_tissue_hu: float = 40.0
    min_visibility: float = 0.0
    max_redraws: int = 4
    paired: bool = field(default=False, metadata={OMIT_WHEN: False})
    kinds: Mapping[str | FractureKind, float] | None = field(default=None, metadata={OMIT_WHEN: None})
    severity: Mapping[str, float] | None = field(default=None, metadata={OMIT_WHEN: None})
    kind_min_visibility: float = field(default=0.1, metadata={OMIT_WHEN: 0.1})

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)
        set_("probability", _number("probability", self.probability, unit="(a probability)", low=0.0, high=1.0))
        set_("comminuted_probability", _number("comminuted_probability", self.comminuted_probability,
                                               unit="(a probability)", low=0.0, high=1.0))
        set_("gap", _range("gap", self.gap, unit="mm", strict=True))
        set_("obliquity", _range("obliquity", self.obliquity, unit="rad"))
        set_("translation", _range("translation", self.translation, unit="mm"))
        set_("angulation", _range("angulation", self.angulation, unit="rad"))
        set_("fragment_length", _range("fragment_length", self.fragment_length, unit="mm", strict=True))
        if self.obliquity[1] >= math.pi / 2:
            raise ValueError(f"obliquity: expected angles below pi/2 rad (a cut along the bone is no cut), "
                             f"got up to {self.obliquity[1]:g}")
        if self.angulation[1] > math.pi / 2:
            raise ValueError(f"angulation: expected angles up to pi/2 rad, got up to {self.angulation[1]:g}")
        set_("reach", _number("reach", self.reach, unit="mm", low=0.0))
        if self.reach <= 0:
            raise ValueError(f"reach: expected a length > 0 mm, got {self.reach!r}")
        set_("bone_hu", _number("bone_hu", self.bone_hu, unit="HU"))
        set_("soft_tissue_hu", _number("soft_tissue_hu", self.soft_tissue_hu, unit="HU"))
        if self.soft_tissue_hu >= self.bone_hu:
            raise ValueError(f"soft_tissue_hu: expected a value below bone_hu ({self.bone_hu:g} HU), "
                             f"got {self.soft_tissue_hu:g}")
        set_("min_visibility", _number("min_visibility", self.min_visibility, unit="(display units)", low=0.0))
        if self.min_visibility >= 1.0:
            raise ValueError(f"min_visibility: expected a value in [0, 1) (the display spans [0, 1], no fracture "
                             f"can change it by more), got {self.min_visibility!r}")
        if not is_int(self.max_redraws) or not 0 <= self.max_redraws <= MAX_FRACTURE_REDRAWS:
            raise ValueError(f"max_redraws: expected an int from 0 to {MAX_FRACTURE_REDRAWS} (each redraw renders "
                             f"the batch's views once more), got {self.max_redraws!r}")
        set_("bones", _bone_weights(self.bones))
        if not isinstance(self.paired, bool):
            raise TypeError(f"paired: expected a bool, got {self.paired!r}")
        set_("kind_min_visibility", _number("kind_min_visibility", self.kind_min_visibility,
                                            unit="(display units)", low=0.0))
        if self.kind_min_visibility >= 1.0:
            raise ValueError(f"kind_min_visibility: expected a value in [0, 1), got {self.kind_min_visibility!r}")
        set_("kinds", _kinds(self.kinds))
        set_("severity", _severity(self.severity))

    @property
    def bone_weights(self) -> tuple[tuple[str | int, float], ...]:
        """``((name pattern or label id, weight), ...)``: ``bones`` or :data:`DEFAULT_BONE_WEIGHTS`."""
        return tuple(DEFAULT_BONE_WEIGHTS.items()) if self.bones is None else self.bones

    @property
    def kind_weights(self) -> tuple[tuple[FractureKind, float], ...]:
        """``((FractureKind, weight), ...)``: ``kinds`` or the built-in kinds with their default weights."""
        if self.kinds is None:
            return tuple((FRACTURE_KINDS[name], weight) for name, weight in DEFAULT_KIND_WEIGHTS.items())
        return self.kinds

    @property
    def kind_names(self) -> tuple[str, ...]:
        """The kinds' names: ``FractureResult.kind`` and ``batch.fracture_kind`` index them (-1: the generic fracture)."""
        return tuple(kind.name for kind, _ in self.kind_weights)

    @property
    def severity_shares(self) -> tuple[float, ...]:
        """Share of each of :data:`~onthefly.fractures.kinds.SEVERITIES`, in their order."""
        shares = dict(DEFAULT_SEVERITY_SHARES) if self.severity is None else dict(self.severity)
        return tuple(float(shares.get(name, 0.0)) for name in SEVERITIES)

    @property
    def candidates(self) -> int:
        """Fractures drawn per sample: ``1 + max_redraws`` with ``min_visibility > 0``, else 1 (see also
        :attr:`kind_candidates`)."""
        return 1 + self.max_redraws if self.min_visibility > 0 else 1

    @property
    def kind_candidates(self) -> int:
        """Candidates per sample with kinds: at least :attr:`candidates`, ``1 + max_redraws`` with
        ``kind_min_visibility > 0`` (the first :attr:`candidates` are drawn as without kinds)."""
        redraws = bool(self.kind_weights) and self.kind_min_visibility > 0
        return max(self.candidates, 1 + self.max_redraws if redraws else 1)


def attenuation_of(hu: float, mu_water: float) -> float:
    """:func:`~onthefly.volume.attenuation_of_hu`: one host number, 1/mm (no tensor: safe inside compiled code)."""
    return attenuation_of_hu(hu, mu_water)


def fracture_window(config: FractureConfig, spacing: Sequence[float] | Tensor) -> tuple[int, int, int]:
    """Voxels per axis of the box around a bone point that holds every voxel a fracture may change.

    A fracture changes voxels within ``config.reach`` mm of its bone point only,
    so the box is ``2 * ceil(reach / spacing) + 1`` voxels per axis.

    Args:
        config: the fracture settings.
        spacing: ``(3,)`` voxel edges along the crop's D, H, W axes, mm (or one number).

    Returns:
        odd sizes ``(d, h, w)`` (:func:`apply_fractures` caps them at the crop's shape).

    Example:
        >>> fracture_window(FractureConfig(reach=10.0), (1.0, 1.0, 2.5))
        (21, 21, 9)
    """
    edges = check_one_or_three("spacing", spacing, what="positive voxel edges")
    return tuple(2 * math.ceil(config.reach / edge - 1e-9) + 1 for edge in edges)
