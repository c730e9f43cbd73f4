"""Simulated bone fractures a reader could see, cut into CT crops on the fly before they are rendered.

A fracture cuts through the whole cross-section of a bone and moves the
fragment beyond the cut as a rigid body (translation and angulation), leaving
a gap of soft tissue; the comminuted pattern cuts twice. On CTs whose labels
name the arm's bones (the procedural phantoms), each fracture is of a kind
(:mod:`~onthefly.fractures.kinds`: distal radius, ulnar styloid, radius and
ulna shafts, scaphoid waist, metacarpal neck and shaft, phalanx) placed at its
site along the bone, with a severity from obvious to subtle; elsewhere it is
the generic fracture at a bone point. Bones are chosen
where a fracture shows in projection (long bones, clavicle, scapula, pelvis and
ribs rather than the inside of vertebral bodies), and each fracture's
visibility in each view is measured, so that fractures nobody could see can be
redrawn.

The stages, as everywhere in the library, draw apart from apply:

* :mod:`~onthefly.fractures.config`: :class:`FractureConfig`;
* :mod:`~onthefly.fractures.kinds`: :class:`FractureKind`, :class:`Severity`, the built-in kinds and severities;
* :mod:`~onthefly.fractures.draw`: :func:`draw_fractures` on the host -> :class:`FractureParams`;
* :mod:`~onthefly.fractures.bone`: per-label weight tables (:func:`bone_weight_table`, once per CT)
  and per-voxel weights (:func:`bone_weights`), the bone point, the bone piece and its axis, and per CT the
  geometry of the bones kinds break (:class:`BoneGeometries`, once per CT);
* :mod:`~onthefly.fractures.cut`: :func:`apply_fractures`, the cut, the fragments' motion and the gap;
* :mod:`~onthefly.fractures.visibility`: :func:`fracture_contrast`, :func:`fracture_visibility` and
  :func:`cut_visible_fractures` (the redraw of invisible fractures).

Units: world millimetres and radians; attenuation in 1/mm
(``mu = mu_water * (1 + HU / 1000)``, :func:`~onthefly.volume.hu_to_attenuation`).
Nothing here is differentiable (the bone point is a discrete choice); use it under ``torch.no_grad()``.
"""

from .bone import (
    BoneGeometries,
    bone_geometry,
    bone_label_lookup,
    bone_weight_reader,
    bone_weight_table,
    bone_weight_tables,
    bone_weights,
    kind_geometry,
)
from .config import BONE_STRUCTURES, DEFAULT_BONE_WEIGHTS, SEVERITY_NAMES, FractureConfig, fracture_window
from .cut import FractureResult, apply_fractures
from .draw import FractureParams, draw_fractures
from .kinds import DEFAULT_KIND_WEIGHTS, DEFAULT_SEVERITY_SHARES, FRACTURE_KINDS, SEVERITIES, FractureKind, Severity
from .visibility import (
    VisibilityProbe,
    cut_visible_fractures,
    fracture_contrast,
    fracture_visibility,
    view_ranges,
    visibility_probe,
)

__all__ = [
    "BONE_STRUCTURES",
    "DEFAULT_BONE_WEIGHTS",
    "DEFAULT_KIND_WEIGHTS",
    "DEFAULT_SEVERITY_SHARES",
    "FRACTURE_KINDS",
    "SEVERITIES",
    "SEVERITY_NAMES",
    "BoneGeometries",
    "FractureConfig",
    "FractureKind",
    "FractureParams",
    "FractureResult",
    "Severity",
    "VisibilityProbe",
    "apply_fractures",
    "bone_geometry",
    "bone_label_lookup",
    "bone_weight_reader",
    "bone_weight_table",
    "bone_weight_tables",
    "bone_weights",
    "cut_visible_fractures",
    "draw_fractures",
    "fracture_contrast",
    "fracture_visibility",
    "fracture_window",
    "kind_geometry",
    "view_ranges",
    "visibility_probe",
]
