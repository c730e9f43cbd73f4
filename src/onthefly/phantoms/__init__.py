"""Procedural extremity phantoms: CT volumes of a forearm, a wrist or a hand, generated per seed.

No extremity CT ships with the library, so it makes them: ``phantom(region,
seed)`` returns a :class:`~onthefly.volume.Volume` (HU, affine, labels) of a
right adult arm, different for every seed and bit-identical for the same seed
on the same device. See ``docs/phantoms.md`` for pictures and the full tables.

Anatomy (limb frame = world orientation, RAS+ mm; long axis along z with the
hand at -z, palm anterior (+y) in the neutral pose, radius lateral (+x)):

* bones are swept solids along curved centre lines whose cross-sections
  change along the length (:mod:`.shapes`, :mod:`.bones`): the radius bows
  laterally, flares into its distal metaphysis, whose articular surface is
  tilted (volar tilt, radial inclination) and hollowed into a fossa, and
  narrows into a neck under a cupped head; the ulna widens proximally into the
  olecranon and coronoid around the trochlear notch, and ends distally in its
  head and styloid; eight carpal bones; five metacarpals; phalanges with
  condylar heads and sockets (two for the thumb, three for each finger);
* each bone has a cortical shell thick at mid-shaft and thin at the ends, a
  marrow cavity in the middle of long shafts and cancellous bone with a
  trabecular texture elsewhere (:mod:`.tissues`); bone labels cover the whole bone;
* bones never overlap: neighbours face each other across a joint space of
  soft tissue (1.3-2.2 mm) whatever the pose (:mod:`.generate`);
* soft tissue: muscle under subcutaneous fat under skin;
* pose per seed: pronation, wrist flexion/extension and radial/ulnar
  deviation, finger flexion and spread.

Measurements drawn per seed (``PARAMETERS`` in :mod:`.regions`; ranges in mm
unless stated, every one with its source):

* radius length 220-270 (Mall et al. 2001, Forensic Sci Int 117:23); ulna
  240-290, about 20 mm longer than the radius (Mall et al. 2001);
* distal radius 29-36 wide and 19-24 deep, shaft 12-16 x 9.5-12.5, head
  diameter 19-25, neck 11-14; ulnar head 15-19, shaft 10-14 x 11-15, proximal
  ulna 20-26 x 24-30, trochlear notch radius 10-13, styloid 2-5 (Standring
  (ed.) 2016, Gray's Anatomy, 41st ed.);
* radial bow of the centre line 6-11 at 42 % of the length (after the
  maximum radial bow of about 15 mm at 60 % of Schemitsch & Richards 1992,
  J Bone Joint Surg Am 74:1068, measured to the cortex);
* volar tilt 6-16 degrees, radial inclination 18-26 degrees (normal values
  about 11 and 22 degrees: Medoff 2005, Hand Clin 21:279); ulnar variance -2
  to +2 (Palmer, Glisson & Werner 1982, J Hand Surg Am 7:376);
* cortical thickness at mid-shaft: radius and ulna 2-4 (Rauch & Schoenau
  2008, J Musculoskelet Neuronal Interact 8:217), metacarpals 1.5-2.6 (Barnett
  & Nordin 1960, Clin Radiol 11:166), phalanges 0.9-1.6; at the ends and in
  carpal bones 0.5-1.0 (Boutroy et al. 2005, J Clin Endocrinol Metab 90:6508);
* hand bone lengths: the third metacarpal 58-72 and every other hand bone in
  adult proportion to it (``HAND_BONE_RATIOS``; Garn et al. 1972, Radiology
  105:375; Buryanov & Kotiuk 2010, Int J Morphol 28:755); carpal sizes after
  Gray's Anatomy (scaphoid about 27-31 long: Heinzelmann et al. 2007, J Hand
  Surg Am 32:1005), scaled with the hand;
* joint spaces 1.3-2.2 (Pfeil et al. 2007, Skeletal Radiol 36:853; Gilula
  1979, AJR 133:503);
* skin 1.0-2.0 (Laurent et al. 2007, Vaccine 25:6423); subcutaneous fat 3-8 on
  the forearm and 2-4.5 on the hand (Mueller et al. 2016, Br J Sports Med
  50:45); wrist circumference 145-185, forearm circumference 240-300, hand
  breadth 75-95 (Gordon et al. 2014, ANSUR II); hand thickness 24-32
  (NASA-STD-3000, 1995);
* pose: pronation -10 to 35 degrees, wrist flexion -25 to 30 degrees, deviation
  -15 (ulnar) to 10 (radial) degrees, finger flexion up to 30 (MCP), 40 (PIP)
  and 20 (DIP) degrees, all within the functional ranges (Morrey et al. 1981,
  J Bone Joint Surg Am 63:872; Ryu et al. 1991, J Hand Surg Am 16:409; Hume
  et al. 1990, J Hand Surg Am 15:240).

CT numbers drawn per seed (HU; published range in brackets; sources in
:mod:`.tissues`): cortical bone 1300-1800 (1000-1900; Schneider, Bortfeld &
Schlegel 2000, Phys Med Biol 45:459; Kalender 2011, Computed Tomography, 3rd
ed.), cancellous bone (texture average) 180-350 (150-400; Schreiber et al.
2011, J Bone Joint Surg Am 93:1057), marrow -110 to -70 (-120 to -50), fat
-115 to -85 (-120 to -80; Kvist et al. 1988, Am J Clin Nutr 48:1351), muscle
35-55 (30-60; Goodpaster et al. 2000, J Appl Physiol 89:104), skin 10-50
(0-60), air -1000; Gaussian CT noise of 10-20 HU standard deviation (Kalender
2011). Every boundary has partial volume: a tissue at signed distance ``d``
covers ``clamp(0.5 - d / h, 0, 1)`` of a voxel of edge ``h``.

Example:
    >>> volume = phantom("forearm", 0, spacing=4.0)
    >>> volume.hu.shape[0], volume.label_names[LABELS["radius"]]
    (1, 'radius')
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._checks import check_int, check_real
from ..volume import Volume
from .generate import generate
from .regions import (
    BONES,
    HAND_BONE_RATIOS,
    LABELS,
    PARAMETERS,
    REGION_BONES,
    REGIONS,
    SOFT_TISSUES,
    PhantomParameters,
    draw_parameters,
)

__all__ = [
    "REGIONS",
    "REGION_BONES",
    "BONES",
    "SOFT_TISSUES",
    "LABELS",
    "PARAMETERS",
    "HAND_BONE_RATIOS",
    "SPACING_RANGE",
    "PhantomParameters",
    "phantom",
    "phantoms",
    "phantom_parameters",
    "phantom_from_parameters",
]

SPACING_RANGE = (0.25, 4.0)
"""Accepted voxel edge, mm."""


def _check_region(region) -> str:
    if not isinstance(region, str):
        raise TypeError(f"region: expected one of {list(REGIONS)}, got {type(region).__name__} {region!r}")
    if region not in REGIONS:
        raise ValueError(f"region: expected one of {list(REGIONS)}, got {region!r}")
    return region


def _check_seed(seed) -> int:
    return check_int("seed", seed, minimum=0)


def _check_spacing(spacing) -> float:
    return check_real("spacing", spacing, low=SPACING_RANGE[0], high=SPACING_RANGE[1], unit="mm")


def _check_device(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device: expected None, a str or a torch.device, got {type(device).__name__} {device!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"device: expected a device such as 'cpu' or 'cuda', got {device!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device} was asked for but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device: {device} was asked for but there are {torch.cuda.device_count()} CUDA devices")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected a CPU or CUDA device, got {device}")
    return device


def phantom_parameters(region: str, seed: int) -> PhantomParameters:
    """Every measurement, pose angle and CT number of the phantom ``(region, seed)`` (mm, radians, HU).

    Drawn with a ``torch.Generator`` seeded by a SHA-256 hash of ``(region, seed)``; each value within its
    range in :data:`PARAMETERS`.

    Example:
        >>> params = phantom_parameters("hand", 3)
        >>> round(params["metacarpal_3_length"]) in range(58, 73)
        True
    """
    return draw_parameters(_check_region(region), _check_seed(seed))


def phantom_from_parameters(parameters: PhantomParameters, *, spacing: float = 1.0, device=None) -> Volume:
    """The phantom of drawn ``parameters`` (:func:`phantom_parameters`), on a grid of ``spacing`` mm on ``device``."""
    if not isinstance(parameters, PhantomParameters):
        raise TypeError(f"parameters: expected PhantomParameters, got {type(parameters).__name__}")
    missing = sorted(set(PARAMETERS) - set(parameters.values))
    if missing:
        raise ValueError(f"parameters: missing values {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    _check_region(parameters.region)
    return generate(parameters, _check_spacing(spacing), _check_device(device))


def phantom(region: str, seed: int, *, spacing: float = 1.0, device=None) -> Volume:
    """A procedural CT of a ``region`` of an adult right arm, drawn from ``seed``.

    Args:
        region: ``"forearm"`` (radius and ulna, elbow to wrist), ``"wrist"`` (distal radius and ulna, the eight
            carpal bones, the metacarpal bases) or ``"hand"`` (carpal bones, metacarpals, phalanges).
        seed: a non-negative int; the same ``(region, seed)`` gives the same phantom (bit-identical on one device).
        spacing: voxel edge in mm, within :data:`SPACING_RANGE` (0.25 to 4 mm).
        device: where to build the tensors (``None``: the CPU).

    Returns:
        a :class:`~onthefly.volume.Volume`: ``hu (1, D, H, W)`` float32 Hounsfield units (D along x, H along y,
        W along z), ``affine (4, 4)`` (``spacing`` on the diagonal, the box centred on the world origin),
        ``labels (1, D, H, W)`` uint8 with ``label_names`` ``{value: name}`` for the region's bones and
        ``"skin"``, ``"fat"``, ``"muscle"`` (0: air; values in :data:`LABELS`).

    Example:
        >>> volume = phantom("wrist", 7, spacing=4.0)
        >>> sorted(volume.label_names.values())[:3]
        ['capitate', 'fat', 'hamate']
    """
    region = _check_region(region)
    seed = _check_seed(seed)
    spacing = _check_spacing(spacing)
    device = _check_device(device)
    return generate(draw_parameters(region, seed), spacing, device)


def phantoms(region: str, seeds: Sequence[int], *, spacing: float = 1.0, device=None) -> list[Volume]:
    """:func:`phantom` for each of ``seeds`` (a list of volumes of different shapes; one call per seed).

    Example:
        >>> [v.hu.shape[0] for v in phantoms("hand", [0, 1], spacing=4.0)]
        [1, 1]
    """
    region = _check_region(region)
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise TypeError(f"seeds: expected a sequence of non-negative ints, got {type(seeds).__name__}")
    checked = [check_int(f"seeds[{i}]", seed, minimum=0) for i, seed in enumerate(seeds)]
    spacing = _check_spacing(spacing)
    device = _check_device(device)
    return [generate(draw_parameters(region, seed), spacing, device) for seed in checked]
