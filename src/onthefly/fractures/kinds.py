"""Fracture kinds per site and their severities: where along which bone a fracture falls, and how far it moves.

A :class:`FractureKind` names the bones it breaks (label name patterns, as
``FractureConfig.bones``), the site along the bone's long axis (a distance
from the bone's distal end, in mm or as a share of the bone's length), the
obliquity of the break, the chance of a comminuted break, the direction the
distal fragment is displaced and angulated towards (dorsal, volar or any) and
whether it shortens the bone. A :class:`Severity` gives the motion: the gap
(bone removed at the cut), the displacement across the bone, the angulation
and the shortening; a kind scales the displacement and shortening to the size
of its bone (``motion_scale``). ``docs/fractures.md`` gives the clinical sources.

The distal end of a bone is the end of its label's long axis that points
towards ``-z`` (inferior in RAS+; the phantoms' hand lies at ``-z``); see
:func:`~onthefly.fractures.bone.bone_geometry`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DEFAULT_KIND_WEIGHTS", "DEFAULT_SEVERITY_SHARES", "FRACTURE_KINDS", "SEVERITIES", "FractureKind",
           "Severity", "kind_tables"]

_DEG = math.pi / 180.0
DIRECTIONS = {"any": (0.0, 0.0, 0.0), "dorsal": (0.0, -1.0, 0.0), "volar": (0.0, 1.0, 0.0)}
"""World direction (RAS+) a distal fragment is pulled towards: dorsal is posterior (``-y``), volar anterior
(``+y``), as in the phantoms' limb frame (palm anterior in the neutral pose); ``"any"``: a drawn azimuth."""


def _pair(name: str, value, *, unit: str, low: float = 0.0, high: float = math.inf) -> tuple[float, float]:
    """A number or a ``(low, high)`` pair as a checked pair within ``[low, high]``, not inverted."""
    pair = (value, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        first, second = (float(item) for item in pair)
        ok = all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in pair)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise TypeError(f"{name}: expected a number or a (low, high) pair ({unit}), got {value!r}")
    if not (math.isfinite(first) and math.isfinite(second)) or first > second:
        raise ValueError(f"{name}: expected a finite (low, high) pair with low <= high ({unit}), got {value!r}")
    if first < low or second > high:
        raise ValueError(f"{name}: expected values in [{low:g}, {high:g}] {unit}, got ({first:g}, {second:g})")
    return (first, second)


@dataclass(frozen=True)
class FractureKind:
    """One kind of fracture: a site on some bones and the pattern of the break. Lengths in mm, angles in radians.

    Attributes:
        name: what batches record (``FractureConfig.kind_names``).
        bones: label name patterns of the bones it breaks (``"metacarpal"`` matches ``"metacarpal_3"``).
        site: ``(low, high)`` distance of the break from the bone's distal end along its long axis:
            mm with ``site_unit="mm"``, a share of the bone's length in ``[0, 1]`` with ``"length"``.
        site_unit: ``"mm"`` or ``"length"``.
        obliquity: angle between the cut's normal and the bone's axis, rad in ``[0, pi/2)``
            (under 30 degrees transverse, above oblique; near 60 degrees a long, spiral-like break).
        comminuted_probability: chance of a second cut ``fragment_length`` further along (an intermediate fragment).
        fragment_length: ``(low, high)`` mm between the two cuts of a comminuted break.
        direction: where the distal fragment is displaced and angulated towards: ``"dorsal"``, ``"volar"``
            or ``"any"`` (a drawn azimuth).
        shortens: whether the distal fragment also moves back along the bone (impaction, overlap) by the
            severity's ``shortening``.
        motion_scale: factor on the severity's displacement and shortening (small bones move less), > 0.
    """

    name: str
    bones: tuple[str, ...]
    site: tuple[float, float]
    site_unit: str = "mm"
    obliquity: tuple[float, float] = (0.0, 0.5)
    comminuted_probability: float = 0.0
    fragment_length: tuple[float, float] = (6.0, 12.0)
    direction: str = "any"
    shortens: bool = False
    motion_scale: float = 1.0

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: expected a non-empty str, got {self.name!r}")
        bones = (self.bones,) if isinstance(self.bones, str) else self.bones
        try:
            bones = tuple(bones)
        except TypeError:
            bones = ()
        if not bones or not all(isinstance(bone, str) and bone for bone in bones):
            raise ValueError(f"bones: expected label name patterns (non-empty str), got {self.bones!r}")
        set_("bones", bones)
        if self.site_unit not in ("mm", "length"):
            raise ValueError(f"site_unit: expected 'mm' or 'length', got {self.site_unit!r}")
        set_("site", _pair("site", self.site, unit=self.site_unit,
                           high=1.0 if self.site_unit == "length" else math.inf))
        set_("obliquity", _pair("obliquity", self.obliquity, unit="rad"))
        if self.obliquity[1] >= math.pi / 2:
            raise ValueError(f"obliquity: expected angles below pi/2 rad, got up to {self.obliquity[1]:g}")
        probability = self.comminuted_probability
        if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0 <= probability <= 1:
            raise ValueError(f"comminuted_probability: expected a probability in [0, 1], got {probability!r}")
        set_("comminuted_probability", float(probability))
        set_("fragment_length", _pair("fragment_length", self.fragment_length, unit="mm"))
        if self.fragment_length[0] <= 0:
            raise ValueError(f"fragment_length: expected lengths > 0 mm, got {self.fragment_length!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction: expected one of {list(DIRECTIONS)}, got {self.direction!r}")
        if not isinstance(self.shortens, bool):
            raise TypeError(f"shortens: expected a bool, got {self.shortens!r}")
        scale = self.motion_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"motion_scale: expected a finite number > 0, got {scale!r}")
        set_("motion_scale", float(scale))


@dataclass(frozen=True)
class Severity:
    """How far a fracture's fragments move (mm, rad; ``(low, high)`` ranges, drawn uniformly).

    Attributes:
        gap: bone removed at each cut, mm (> 0).
        translation: displacement of the distal fragment across the bone's axis, mm (times the kind's ``motion_scale``).
        angulation: rotation of the distal fragment about a hinge in the cut plane, rad.
        shortening: motion of the distal fragment back along the axis (kinds that shorten), mm (times ``motion_scale``).
    """

    gap: tuple[float, float]
    translation: tuple[float, float]
    angulation: tuple[float, float]
    shortening: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        for name, unit, high in (("gap", "mm", math.inf), ("translation", "mm", math.inf),
                                 ("angulation", "rad", math.pi / 2), ("shortening", "mm", math.inf)):
            object.__setattr__(self, name, _pair(name, getattr(self, name), unit=unit, high=high))
        if self.gap[0] <= 0:
            raise ValueError(f"gap: expected widths > 0 mm, got {self.gap!r}")


SEVERITIES: dict[str, Severity] = {
    # displaced: several mm, angulated 10-30 degrees (the range the AAOS guideline's thresholds fall in)
    "obvious": Severity(gap=(1.5, 3.0), translation=(2.5, 6.0), angulation=(10 * _DEG, 30 * _DEG),
                        shortening=(2.0, 5.0)),
    # minimally displaced: 1-2.5 mm, 3-10 degrees
    "moderate": Severity(gap=(1.0, 2.0), translation=(1.0, 2.5), angulation=(3 * _DEG, 10 * _DEG),
                         shortening=(0.5, 2.0)),
    # non-displaced: a cortical break narrower than 1 mm, nothing moves
    "subtle": Severity(gap=(0.4, 1.0), translation=(0.0, 0.0), angulation=(0.0, 0.0)),
}
"""The severities by name, from obvious down to subtle (``FractureConfig.severity`` gives their shares)."""

DEFAULT_SEVERITY_SHARES: Mapping[str, float] = {"obvious": 0.5, "moderate": 0.35, "subtle": 0.15}
"""How often each severity is drawn by default."""

FRACTURE_KINDS: dict[str, FractureKind] = {
    kind.name: kind for kind in (
        # Colles-type: a transverse or oblique break of the distal metaphysis, the distal fragment tilted dorsally
        # and impacted; sometimes comminuted
        FractureKind("distal_radius", ("radius",), site=(15.0, 40.0), obliquity=(0.0, 0.5),
                     comminuted_probability=0.25, fragment_length=(5.0, 10.0), direction="dorsal", shortens=True),
        # the tip of the ulna, often broken with the distal radius
        FractureKind("ulnar_styloid", ("ulna",), site=(2.0, 6.0), obliquity=(0.0, 0.4), motion_scale=0.4),
        # diaphyseal breaks: transverse, oblique or long and spiral-like; displaced, angulated, overlapping
        FractureKind("radius_shaft", ("radius",), site=(70.0, 160.0), obliquity=(0.0, 1.05),
                     comminuted_probability=0.15, shortens=True),
        FractureKind("ulna_shaft", ("ulna",), site=(70.0, 170.0), obliquity=(0.0, 1.05),
                     comminuted_probability=0.15, shortens=True),
        FractureKind("scaphoid_waist", ("scaphoid",), site=(0.4, 0.6), site_unit="length", obliquity=(0.0, 0.5),
                     motion_scale=0.5),
        # boxer's-type neck fracture: the head tilted towards the palm (apex dorsal)
        FractureKind("metacarpal_neck", ("metacarpal",), site=(0.12, 0.22), site_unit="length",
                     obliquity=(0.0, 0.35), direction="volar", motion_scale=0.6),
        FractureKind("metacarpal_shaft", ("metacarpal",), site=(0.3, 0.7), site_unit="length",
                     obliquity=(0.0, 1.05), direction="volar", shortens=True, motion_scale=0.7),
        FractureKind("phalanx", ("phalanx",), site=(0.25, 0.75), site_unit="length", obliquity=(0.0, 0.8),
                     motion_scale=0.6),
    )
}
"""The built-in kinds by name (``FractureConfig(kinds={name: weight})``)."""

DEFAULT_KIND_WEIGHTS: Mapping[str, float] = {
    "distal_radius": 4.0, "ulnar_styloid": 0.5, "radius_shaft": 1.0, "ulna_shaft": 1.0, "scaphoid_waist": 1.5,
    "metacarpal_neck": 1.5, "metacarpal_shaft": 1.0, "phalanx": 2.0,
}
"""Relative frequency of each built-in kind where its site lies in the crop (the distal radius commonest)."""

SLOTS = ("gap", "second_gap", "obliquity", "translation", "second_translation", "angulation", "second_angulation",
         "shortening", "fragment_length", "comminuted")
"""The per-candidate uniform draws (``FractureParams.shape``) a kind turns into sizes, in this order."""


@dataclass(frozen=True)
class KindTables:
    """A configuration's kinds as tensors (host, float64), for the cut.

    Attributes:
        weights: ``(n,)`` each kind's weight.
        site: ``(n, 2)`` the site window; ``site_in_length``: ``(n,)`` bool, the window is a share of the length.
        ranges: ``(n, S, len(SLOTS), 2)`` the range each uniform draw maps to, per kind and severity
            (``comminuted``: the probability twice).
        pull: ``(n, 3)`` world direction of the distal fragment's displacement and angulation (0: drawn azimuth).
        patterns: per kind its bone name patterns.
    """

    weights: Tensor
    site: Tensor
    site_in_length: Tensor
    ranges: Tensor
    pull: Tensor
    patterns: tuple[tuple[str, ...], ...]


def kind_tables(kinds: tuple[tuple[FractureKind, float], ...]) -> KindTables:
    """The :class:`KindTables` of ``((kind, weight), ...)`` (``FractureConfig.kinds``) over :data:`SEVERITIES`."""
    ranges = torch.zeros(len(kinds), len(SEVERITIES), len(SLOTS), 2, dtype=torch.float64)
    for k, (kind, _) in enumerate(kinds):
        for s, severity in enumerate(SEVERITIES.values()):
            scale = kind.motion_scale
            shortening = tuple(scale * v for v in severity.shortening) if kind.shortens else (0.0, 0.0)
            # a subtle break is never comminuted: nothing moves, a second crack would not show either
            comminuted = kind.comminuted_probability if severity.translation[1] > 0 else 0.0
            values = {"gap": severity.gap, "second_gap": severity.gap, "obliquity": kind.obliquity,
                      "translation": tuple(scale * v for v in severity.translation),
                      "second_translation": tuple(scale * v for v in severity.translation),
                      "angulation": severity.angulation, "second_angulation": severity.angulation,
                      "shortening": shortening, "fragment_length": kind.fragment_length,
                      "comminuted": (comminuted, comminuted)}
            ranges[k, s] = torch.tensor([values[slot] for slot in SLOTS], dtype=torch.float64)
    return KindTables(
        weights=torch.tensor([weight for _, weight in kinds], dtype=torch.float64).reshape(-1),
        site=torch.tensor([kind.site for kind, _ in kinds], dtype=torch.float64).reshape(-1, 2),
        site_in_length=torch.tensor([kind.site_unit == "length" for kind, _ in kinds], dtype=torch.bool),
        ranges=ranges,
        pull=torch.tensor([DIRECTIONS[kind.direction] for kind, _ in kinds], dtype=torch.float64).reshape(-1, 3),
        patterns=tuple(kind.bones for kind, _ in kinds),
    )
