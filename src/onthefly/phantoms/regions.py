"""The regions, their bones, and the per-seed draw of every measurement, pose angle and CT number.

``draw_parameters(region, seed)`` seeds a ``torch.Generator`` from a SHA-256
hash of ``(region, seed)`` (stable across processes and machines, unlike
Python's ``hash``) and draws every entry of :data:`PARAMETERS` in its order:
sizes share one body-size quantile (a tall arm has long bones, wide joints and
long fingers; each measurement varies around it), pose angles and CT numbers
are drawn on their own. Every value lies in its documented range.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .tissues import DRAWN_HU, NOISE_STD_HU, TEXTURE_CONTRAST

__all__ = [
    "REGIONS",
    "REGION_BONES",
    "BONES",
    "SOFT_TISSUES",
    "LABELS",
    "PARAMETERS",
    "HAND_BONE_RATIOS",
    "PhantomParameters",
    "draw_parameters",
    "stable_seed",
]

REGIONS = ("forearm", "wrist", "hand")
"""The regions :func:`~onthefly.phantoms.phantom` makes."""

CARPALS = ("scaphoid", "lunate", "triquetrum", "pisiform", "trapezium", "trapezoid", "capitate", "hamate")
METACARPALS = tuple(f"metacarpal_{k}" for k in range(1, 6))
PHALANGES = (tuple(f"phalanx_proximal_{k}" for k in range(1, 6)) + tuple(f"phalanx_middle_{k}" for k in range(2, 6))
             + tuple(f"phalanx_distal_{k}" for k in range(1, 6)))
BONES = ("radius", "ulna") + CARPALS + METACARPALS + PHALANGES
"""Every bone of the arm model, in label order."""
SOFT_TISSUES = ("skin", "fat", "muscle")
LABELS: dict[str, int] = {"skin": 1, "fat": 2, "muscle": 3} | {name: 10 + i for i, name in enumerate(BONES)}
"""Label value of every structure, the same in every region (0: air). A phantom's ``label_names`` holds the
soft tissues and the bones of its region."""

REGION_BONES: dict[str, tuple[str, ...]] = {
    "forearm": ("radius", "ulna"),
    "wrist": ("radius", "ulna") + CARPALS + METACARPALS,
    "hand": CARPALS + METACARPALS + PHALANGES,
}
"""The bones present in each region. The wrist cuts the radius and ulna about 60 mm above the joint and the
metacarpals about 22 mm below the carpus (their bases); every other bone is whole."""

MC3 = (58.0, 72.0)
"""Length of the third metacarpal, mm: Garn et al. 1972 (adult standards); every hand bone length scales with it."""
HAND_BONE_RATIOS: dict[str, float] = {
    "metacarpal_1": 0.71, "metacarpal_2": 1.05, "metacarpal_3": 1.0, "metacarpal_4": 0.89, "metacarpal_5": 0.83,
    "phalanx_proximal_1": 0.50, "phalanx_proximal_2": 0.62, "phalanx_proximal_3": 0.69, "phalanx_proximal_4": 0.65,
    "phalanx_proximal_5": 0.52, "phalanx_middle_2": 0.36, "phalanx_middle_3": 0.43, "phalanx_middle_4": 0.41,
    "phalanx_middle_5": 0.30, "phalanx_distal_1": 0.36, "phalanx_distal_2": 0.27, "phalanx_distal_3": 0.29,
    "phalanx_distal_4": 0.28, "phalanx_distal_5": 0.26,
}
"""Length of each hand bone over the third metacarpal's (mean adult proportions after Garn et al. 1972 and
Buryanov & Kotiuk 2010)."""

_DEG = math.pi / 180.0


@dataclass(frozen=True)
class Parameter:
    """One drawn value: its range ``(low, high)`` (mm, radians or HU), its unit, how it is drawn (``"body"``:
    around the body-size quantile; ``"hand"``: around the hand-size quantile; ``"free"``: on its own) and its source."""

    low: float
    high: float
    unit: str
    kind: str
    source: str


def _p(low, high, unit, kind, source) -> Parameter:
    if unit == "rad":
        low, high = low * _DEG, high * _DEG
    return Parameter(float(low), float(high), unit, kind, source)


_GRAY = "Standring (ed.) 2016, Gray's Anatomy, 41st ed."
PARAMETERS: dict[str, Parameter] = {
    # forearm bones
    "radius_length": _p(220, 270, "mm", "body", "Mall et al. 2001, Forensic Sci Int 117:23 (adult radius lengths)"),
    "ulna_length": _p(240, 290, "mm", "body", "Mall et al. 2001 (ulna about 20 mm longer than the radius)"),
    "radius_distal_width": _p(29, 36, "mm", "body", _GRAY),
    "radius_distal_depth": _p(19, 24, "mm", "body", _GRAY),
    "radius_shaft_width": _p(12, 16, "mm", "body", _GRAY),
    "radius_shaft_depth": _p(9.5, 12.5, "mm", "body", _GRAY),
    "radius_head_diameter": _p(19, 25, "mm", "body", _GRAY),
    "radius_neck_diameter": _p(11, 14, "mm", "body", _GRAY),
    "radius_bow": _p(6, 11, "mm", "free", "Schemitsch & Richards 1992, J Bone Joint Surg Am 74:1068 (radial bow)"),
    "volar_tilt": _p(6, 16, "rad", "free", "Medoff 2005, Hand Clin 21:279 (volar tilt about 11 degrees)"),
    "radial_inclination": _p(18, 26, "rad", "free", "Medoff 2005 (radial inclination about 22 degrees)"),
    "radius_fossa_depth": _p(1.5, 3.0, "mm", "free", _GRAY),
    "ulnar_variance": _p(-2, 2, "mm", "free", "Palmer, Glisson & Werner 1982, J Hand Surg Am 7:376"),
    "ulna_head_diameter": _p(15, 19, "mm", "body", _GRAY),
    "ulna_styloid_length": _p(2, 5, "mm", "free", _GRAY),
    "ulna_shaft_width": _p(10, 14, "mm", "body", _GRAY),
    "ulna_shaft_depth": _p(11, 15, "mm", "body", _GRAY),
    "ulna_proximal_width": _p(20, 26, "mm", "body", _GRAY),
    "ulna_proximal_depth": _p(24, 30, "mm", "body", _GRAY),
    "ulna_notch_radius": _p(10, 13, "mm", "body", _GRAY),
    "cortex_radius": _p(2.0, 4.0, "mm", "free", "Rauch & Schoenau 2008, J Musculoskelet Neuronal Interact 8:217"),
    "cortex_ulna": _p(2.0, 4.0, "mm", "free", "Rauch & Schoenau 2008 (forearm shaft cortex 2-4 mm)"),
    "cortex_end": _p(0.6, 1.0, "mm", "free", "Boutroy et al. 2005, J Clin Endocrinol Metab 90:6508 (distal radius)"),
    # hand
    **{f"{name}_length": _p(ratio * MC3[0], ratio * MC3[1], "mm", "hand", "Garn et al. 1972, Radiology 105:375")
       for name, ratio in HAND_BONE_RATIOS.items()},
    "cortex_metacarpal": _p(1.5, 2.6, "mm", "free", "Barnett & Nordin 1960, Clin Radiol 11:166"),
    "cortex_phalanx": _p(0.9, 1.6, "mm", "free", "Barnett & Nordin 1960 (scaled to phalangeal widths)"),
    "cortex_carpal": _p(0.5, 0.9, "mm", "free", "Boutroy et al. 2005 (thin cortex of cancellous bones)"),
    "joint_gap": _p(1.3, 2.2, "mm", "free", "Pfeil et al. 2007, Skeletal Radiol 36:853; Gilula 1979, AJR 133:503"),
    # pose
    "pronation": _p(-10, 35, "rad", "free", "within the 0-80 degrees of active pronation, Morrey et al. 1981"),
    "wrist_flexion": _p(-25, 30, "rad", "free", "within the active range, Ryu et al. 1991, J Hand Surg Am 16:409"),
    "wrist_deviation": _p(-15, 10, "rad", "free", "radial (+) / ulnar (-), Ryu et al. 1991"),
    "grip": _p(0, 1, "", "free", "shared finger flexion"),
    **{f"flexion_{joint}_{k}": _p(0, top, "rad", "free", "within the active range, Hume et al. 1990, J Hand Surg Am 15:240")
       for joint, top, rays in (("mcp", 30, range(1, 6)), ("pip", 40, range(2, 6)), ("dip", 20, range(1, 6)))
       for k in rays},
    "finger_spread": _p(-4, 6, "rad", "free", "finger abduction"),
    # soft tissue
    "skin_thickness": _p(1.0, 2.0, "mm", "free", "Laurent et al. 2007, Vaccine 25:6423 (1.5-2.5 mm with dermis)"),
    "fat_forearm": _p(3.0, 8.0, "mm", "free", "Mueller et al. 2016, Br J Sports Med 50:45 (brachioradialis site)"),
    "fat_hand": _p(2.0, 4.5, "mm", "free", "Mueller et al. 2016"),
    "finger_soft": _p(3.0, 4.5, "mm", "hand", "soft tissue around the phalanges, from finger widths, NASA-STD-3000"),
    "wrist_circumference": _p(145, 185, "mm", "body", "Gordon et al. 2014, ANSUR II (female to male means)"),
    "forearm_circumference": _p(240, 300, "mm", "body", "Gordon et al. 2014, ANSUR II"),
    "hand_breadth": _p(75, 95, "mm", "hand", "Gordon et al. 2014, ANSUR II"),
    "hand_thickness": _p(24, 32, "mm", "hand", "NASA-STD-3000 1995, vol. 1 sec. 3 (hand thickness at metacarpal III)"),
    # CT numbers and noise
    **{f"hu_{tissue}": _p(low, high, "HU", "free", "see tissues.py") for tissue, (low, high) in DRAWN_HU.items()},
    "noise_std": _p(*NOISE_STD_HU, "HU", "free", "Kalender 2011, Computed Tomography, 3rd ed."),
    "texture_contrast": _p(*TEXTURE_CONTRAST, "", "free", "trabecular contrast at about 1 mm voxels"),
}
"""Every value a phantom draws: ``name -> Parameter(low, high, unit, kind, source)`` (angles in radians)."""


@dataclass(frozen=True)
class PhantomParameters:
    """The drawn values of one phantom: ``values[name]`` for every name of :data:`PARAMETERS` (mm, radians, HU),
    plus the ``region`` and ``seed`` they were drawn for."""

    region: str
    seed: int
    values: Mapping[str, float]

    def __getitem__(self, name: str) -> float:
        return self.values[name]


def stable_seed(region: str, seed: int, stream: str = "parameters") -> int:
    """A 63-bit generator seed from ``(region, seed, stream)`` by SHA-256 (the same on every machine and run)."""
    digest = hashlib.sha256(f"onthefly.phantoms/{region}/{seed}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def draw_parameters(region: str, seed: int) -> PhantomParameters:
    """Draw every entry of :data:`PARAMETERS` for ``(region, seed)`` (arguments already checked).

    Example:
        >>> p = draw_parameters("forearm", 0)
        >>> 220.0 <= p["radius_length"] <= 270.0
        True
    """
    generator = torch.Generator().manual_seed(stable_seed(region, seed))

    def uniform(count: int) -> list[float]:
        return torch.rand(count, generator=generator, dtype=torch.float64).tolist()

    body, hand_offset = uniform(2)
    hand = min(max(body + 0.4 * (hand_offset - 0.5), 0.0), 1.0)
    shared = {"body": (body, 0.4), "hand": (hand, 0.12)}
    jitters = uniform(len(PARAMETERS))
    values = {}
    for (name, parameter), jitter in zip(PARAMETERS.items(), jitters):
        if parameter.kind == "free":
            quantile = jitter
        else:
            centre, spread = shared[parameter.kind]
            quantile = min(max(centre + spread * (jitter - 0.5), 0.0), 1.0)
        values[name] = parameter.low + (parameter.high - parameter.low) * quantile
    # the ulna follows the radius (same quantile, small jitter) so it stays about 20 mm longer
    radius_q = (values["radius_length"] - PARAMETERS["radius_length"].low) / 50.0
    ulna = PARAMETERS["ulna_length"]
    own = jitters[list(PARAMETERS).index("ulna_length")]
    ulna_q = min(max(radius_q + 0.12 * (own - 0.5), 0.0), 1.0)
    values["ulna_length"] = ulna.low + (ulna.high - ulna.low) * ulna_q
    # fingers flex together: each joint's share of its range follows the shared grip (mostly a relaxed hand)
    for name in values:
        if name.startswith("flexion_"):
            top = PARAMETERS[name].high
            values[name] = top * min(max(values["grip"] ** 2 + 0.3 * (values[name] / top - 0.5), 0.0), 1.0)
    return PhantomParameters(region, seed, values)
