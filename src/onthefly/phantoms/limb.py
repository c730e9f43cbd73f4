"""One arm from its drawn parameters: every bone and soft-tissue part placed in the limb frame and posed.

The limb frame is the world's orientation (RAS+: x towards the patient's right,
y anterior, z superior) with its origin at the centre of the distal radius's
articular surface. The arm is a right arm hanging in the anatomical position:
long axis along z (the hand at -z), palm anterior (+y), radius lateral (+x,
thumb side). The hand is laid out in this neutral pose (carpal bones, rays with
their finger flexion), then posed: the wrist flexes (+: palm towards the
forearm's front) and deviates (+: radial) about the head of the capitate, the
proximal carpal row by half the angles; then the radius and everything distal
to it pronate about the axis from the ulnar head to the radial head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from . import bones as build
from .bones import Bone
from .regions import PhantomParameters
from .shapes import Capsule, Frame, Tube, ellipsoid_distance, frame_along, rotation

__all__ = ["SoftPart", "Arm", "build_arm"]

# Carpal bones in the neutral wrist (mm at a third metacarpal of 65 mm; x lateral, y palmar, z proximal, origin at
# the radius's articular centre): ellipsoids (centre, semi-axes, long-axis direction).
_CARPALS = {
    "scaphoid": [((4.5, -1.5, -8.5), (6.0, 6.0, 8.0), (7.5, 5.5, -10.5)),
                 ((12.0, 4.0, -19.0), (6.5, 6.0, 8.0), (7.5, 5.5, -10.5))],
    "lunate": [((-6.5, 0.0, -8.0), (7.5, 9.0, 7.0), (0.0, 0.0, 1.0))],
    "triquetrum": [((-17.5, -2.5, -9.5), (6.5, 5.5, 6.0), (-0.5, 0.0, -1.0))],
    "pisiform": [((-18.0, 8.5, -14.0), (4.5, 4.0, 5.5), (0.0, 0.3, -1.0))],
    "trapezium": [((15.5, 4.0, -27.0), (6.5, 7.0, 6.5), (0.5, 0.3, -1.0))],
    "trapezoid": [((6.5, -2.0, -29.0), (5.5, 7.0, 5.5), (0.0, 0.0, 1.0))],
    "capitate": [((-5.0, -0.5, -19.5), (6.5, 6.5, 6.5), (0.0, 0.0, 1.0)),
                 ((-5.0, 0.5, -28.0), (6.0, 8.5, 9.0), (0.0, 0.0, 1.0))],
    "hamate": [((-16.5, 0.0, -25.0), (6.5, 8.0, 9.0), (-0.3, 0.0, -1.0)),
               ((-15.0, 10.0, -29.0), (2.5, 4.5, 4.0), (0.0, 1.0, -0.3))],
}
_PROXIMAL_ROW = ("scaphoid", "lunate", "triquetrum", "pisiform")
_WRIST_CENTRE = (-5.0, -0.5, -19.5)  # the capitate's head
# Rays: base centre, direction, base (width, depth), shaft (width, depth), head semi-axes; mm at the same scale.
_METACARPALS = {
    1: ((19.5, 8.5, -33.0), (0.5, 0.5, -0.7), (14.0, 13.0), (9.0, 8.0), (7.5, 7.0, 6.5)),
    2: ((6.5, -1.0, -36.0), (0.1, -0.02, -1.0), (14.0, 13.0), (8.5, 8.0), (7.0, 7.5, 7.0)),
    3: ((-4.5, 0.0, -38.5), (0.0, -0.02, -1.0), (14.0, 13.0), (8.5, 8.0), (7.0, 7.5, 7.0)),
    4: ((-14.5, 1.0, -35.5), (-0.09, 0.0, -1.0), (11.0, 11.0), (7.0, 7.0), (6.0, 6.5, 6.0)),
    5: ((-22.5, 2.5, -33.5), (-0.18, 0.05, -1.0), (11.0, 10.0), (7.0, 6.5), (5.8, 6.5, 6.0)),
}
_PHALANGES = {  # base (width, depth), shaft (width, depth), head or tuft semi-axes
    "proximal": ((13.0, 9.5), (8.5, 6.0), (5.0, 3.8, 3.8)),
    "middle": ((10.5, 8.0), (7.5, 5.0), (4.2, 3.2, 3.2)),
    "distal": ((9.0, 6.5), (5.0, 3.5), (3.5, 2.2, 2.5)),
}
_FINGER_WIDTH = {1: 1.15, 2: 1.0, 3: 1.03, 4: 0.95, 5: 0.85}
_SPREAD = {1: 0.0, 2: 1.0, 3: 0.0, 4: -1.0, 5: -1.6}


@dataclass(frozen=True)
class SoftPart:
    """A piece of the limb's outline (skin surface): a tube in ``frame``, an ellipsoid of ``radii`` in ``frame``
    or a capsule; with the subcutaneous fat thickness (mm) under it and its blend width (mm)."""

    name: str
    fat: float
    blend: float
    frame: Frame | None = None
    tube: Tube | None = None
    radii: tuple[float, float, float] | None = None
    capsule: Capsule | None = None

    def distance(self, X: Tensor, Y: Tensor, Z: Tensor) -> Tensor:
        if self.capsule is not None:
            return self.capsule.distance(X, Y, Z)
        u, v, t = self.frame.local_coordinates(X, Y, Z)
        if self.tube is not None:
            return self.tube.distance(u, v, t)[0]
        return ellipsoid_distance(u, v, t, self.radii)

    def moved(self, turn: Tensor, centre: Tensor) -> "SoftPart":
        if self.capsule is not None:
            return replace(self, capsule=self.capsule.moved(turn, centre))
        return replace(self, frame=self.frame.moved(turn, centre))

    def surface_points(self) -> Tensor:
        """``(N, 3)`` limb-frame mm of points on the part's surface (its ends for a capsule: with its radius)."""
        angles = torch.linspace(0.0, 2.0 * math.pi, 25, dtype=torch.float64)[:-1]
        if self.capsule is not None:
            return torch.tensor([self.capsule.start, self.capsule.end], dtype=torch.float64)
        if self.tube is not None:
            cx, cy, a, b = self.tube.table[::4, :4].unbind(1)
            t = torch.linspace(self.tube.start, self.tube.end, self.tube.table.shape[0], dtype=torch.float64)[::4]
            u = cx[:, None] + a[:, None] * torch.cos(angles)
            v = cy[:, None] + b[:, None] * torch.sin(angles)
            local = torch.stack([u, v, t[:, None].expand_as(u)], -1).reshape(-1, 3)
        else:
            polar = torch.linspace(0.0, math.pi, 13, dtype=torch.float64)
            sphere = torch.stack([torch.sin(polar)[:, None] * torch.cos(angles), torch.sin(polar)[:, None]
                                  * torch.sin(angles), torch.cos(polar)[:, None].expand(-1, angles.numel())], -1)
            local = sphere.reshape(-1, 3) * torch.tensor(self.radii, dtype=torch.float64)
        return local @ self.frame.axes.T + self.frame.origin

    def bounds(self, low_z: float = -math.inf, high_z: float = math.inf) -> tuple[Tensor, Tensor] | None:
        """World box ``(low (3,), high (3,))`` mm of the part's surface between ``low_z`` and ``high_z`` (``None``
        if none of it lies there)."""
        points = self.surface_points()
        reach = max(self.capsule.radii) if self.capsule is not None else 0.0
        keep = (points[:, 2] >= low_z - reach) & (points[:, 2] <= high_z + reach)
        if not bool(keep.any()):
            return None
        points = points[keep]
        return points.amin(0) - reach, points.amax(0) + reach


@dataclass(frozen=True)
class Arm:
    """Every bone (by name) and soft-tissue part of one posed arm, limb frame, mm."""

    bones: dict[str, Bone]
    soft: tuple[SoftPart, ...]


def _forearm(p: PhantomParameters) -> tuple[Bone, Bone, Tensor, Tensor]:
    """The radius and ulna in the neutral pose, and the pronation axis's ends (ulnar head, radial head centres)."""
    a_d = p["radius_distal_width"] / 2
    tan_i = math.tan(p["radial_inclination"])
    top = p["radius_length"] - 0.88 * a_d * tan_i
    radius_frame = frame_along((0.0, 0.0, 0.0), (-1.0, 2.0, top))
    radius = build.radius(
        radius_frame, length=p["radius_length"], distal_width=p["radius_distal_width"],
        distal_depth=p["radius_distal_depth"], shaft_width=p["radius_shaft_width"], shaft_depth=p["radius_shaft_depth"],
        head_diameter=p["radius_head_diameter"], neck_diameter=p["radius_neck_diameter"], cortex_mid=p["cortex_radius"],
        cortex_end=p["cortex_end"], bow=p["radius_bow"], volar_tilt=p["volar_tilt"], inclination=p["radial_inclination"],
        fossa_depth=p["radius_fossa_depth"])
    radial_head = radius_frame.point((0.0, 0.0, top - 0.24 * p["radius_head_diameter"]))
    r = p["ulna_head_diameter"] / 2
    dome = 1.12 * a_d * tan_i - p["ulnar_variance"]  # the radius's ulnar corner, less the ulnar variance
    head = (-(0.9 * a_d + r + p["joint_gap"]), -0.15 * p["radius_distal_depth"], dome + 0.95 * r)
    ulna_frame = frame_along(head, (2.0, -6.0, p["ulna_length"]))
    ulna = build.ulna(
        ulna_frame, length=p["ulna_length"], head_diameter=p["ulna_head_diameter"],
        styloid_length=p["ulna_styloid_length"], shaft_width=p["ulna_shaft_width"], shaft_depth=p["ulna_shaft_depth"],
        proximal_width=p["ulna_proximal_width"], proximal_depth=p["ulna_proximal_depth"],
        notch_radius=p["ulna_notch_radius"], cortex_mid=p["cortex_ulna"], cortex_end=p["cortex_end"])
    return radius, ulna, torch.tensor(head, dtype=torch.float64), radial_head


def _ray(k: int, p: PhantomParameters, scale: float) -> tuple[list[Bone], list[SoftPart]]:
    """Metacarpal ``k`` and its phalanges (flexed), with the finger's soft-tissue capsules."""
    base, direction, base_size, shaft, head = _METACARPALS[k]
    base = tuple(scale * c for c in base)
    if k == 1:  # the thumb flexes across the palm: its palmar side faces medially
        z = torch.tensor(direction, dtype=torch.float64)
        z = z / z.norm()
        wanted = torch.tensor([-1.0, 0.3, 0.0], dtype=torch.float64)
        lateral = torch.linalg.cross(wanted - (wanted @ z) * z, z).tolist()
    else:
        lateral = (-1.0, 0.0, 0.0)  # local y (z x x) is then palmar
    frame = frame_along(base, direction, lateral)
    length = p[f"metacarpal_{k}_length"]
    head = tuple(scale * c for c in head)
    bones_out = [build.metacarpal(
        f"metacarpal_{k}", frame, length=length, base=tuple(scale * c for c in base_size),
        shaft=tuple(scale * c for c in shaft), head=head, cortex_mid=p["cortex_metacarpal"], cortex_end=p["cortex_end"])]
    soft = []
    joint = frame.point((0.0, 0.06 * head[1], length - head[2]))
    axes = frame.axes
    width = scale * _FINGER_WIDTH[k]
    segments = (("proximal", "mcp"), ("distal", "dip")) if k == 1 else (
        ("proximal", "mcp"), ("middle", "pip"), ("distal", "dip"))
    for segment, joint_name in segments:
        turn = rotation(axes[:, 0], -p[f"flexion_{joint_name}_{k}"])  # towards local +y, the palm
        if segment == "proximal":
            turn = rotation(axes[:, 1], _SPREAD[k] * p["finger_spread"]) @ turn
        axes = turn @ axes
        socket = max(head[1], head[2]) + p["joint_gap"]
        origin = joint + axes[:, 2] * socket
        seg_base, seg_shaft, seg_head = _PHALANGES[segment]
        if k == 1 and segment == "distal":
            seg_base, seg_shaft, seg_head = (11.0, 7.5), (6.5, 4.5), (4.5, 2.8, 3.0)
        seg_head = tuple(width * c for c in seg_head)
        segment_length = p[f"phalanx_{segment}_{k}_length"]
        phalanx_frame = Frame(origin, axes)
        bones_out.append(build.phalanx(
            f"phalanx_{segment}_{k}", phalanx_frame, length=segment_length,
            base=tuple(width * c for c in seg_base), shaft=tuple(width * c for c in seg_shaft), head=seg_head,
            socket=socket, cortex_mid=p["cortex_phalanx"], cortex_end=p["cortex_end"], distal=segment == "distal"))
        rim = 0.2 * socket
        far = phalanx_frame.point((0.0, 0.0, segment_length - rim - seg_head[2]))
        soft_radius = p["finger_soft"]
        end_radius = width * seg_base[0] / 2 * (0.75 if segment == "distal" else 0.85) + soft_radius
        if segment == "distal":
            far = phalanx_frame.point((0.0, 0.25 * seg_base[1] * width, segment_length - rim + 0.8 * soft_radius
                                       - end_radius))
        start = tuple(joint.tolist())
        soft.append(SoftPart(f"finger_{k}_{segment}", 0.8 * p["fat_hand"], 4.0,
                             capsule=Capsule(start, tuple(far.tolist()),
                                             (width * seg_base[0] / 2 + soft_radius, end_radius))))
        joint = far if segment == "distal" else phalanx_frame.point((0.0, 0.0, segment_length - rim - seg_head[2]))
        head = seg_head
    return bones_out, soft


def _hand(p: PhantomParameters, scale: float) -> tuple[dict[str, Bone], list[SoftPart]]:
    """Carpal bones, rays and the hand's outline in the neutral pose."""
    origin = Frame(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    out = {}
    for name, pieces in _CARPALS.items():
        scaled = [(tuple(scale * c for c in centre), tuple(scale * r for r in radii), direction)
                  for centre, radii, direction in pieces]
        out[name] = build.carpal(name, origin, scaled, cortex=p["cortex_carpal"])
    soft = []
    for k in range(1, 6):
        ray_bones, ray_soft = _ray(k, p, scale)
        out.update({bone.name: bone for bone in ray_bones})
        soft += ray_soft
    # the palm: a flattened tube from the wrist to the knuckles, centred on the rays 2-5
    heads = torch.stack([out[f"metacarpal_{k}"].frame.point((0, 0, p[f"metacarpal_{k}_length"])) for k in range(2, 6)])
    bases = torch.stack([out[f"metacarpal_{k}"].frame.origin for k in range(2, 6)])
    knuckles, carpometacarpal = float(heads[:, 2].mean()), float(bases[:, 2].mean())
    half_breadth, half_thickness = p["hand_breadth"] / 2, p["hand_thickness"] / 2
    wrist_a = p["wrist_circumference"] / 5.23
    palm = Tube.from_knots(knuckles - 3.0, 8.0, {
        "a": [(knuckles - 3.0, 0.92 * half_breadth), (knuckles + 8.0, half_breadth), (carpometacarpal + 5.0,
              0.9 * half_breadth), (8.0, 0.85 * wrist_a)],
        "b": [(knuckles - 3.0, 0.75 * half_thickness), (knuckles + 8.0, 0.95 * half_thickness),
              (carpometacarpal, half_thickness), (8.0, 0.62 * wrist_a)],
        "cx": [(knuckles, float(heads[:, 0].mean())), (carpometacarpal, float(bases[:, 0].mean())), (8.0, -8.0)],
        "cy": [(knuckles, 3.0), (carpometacarpal, 4.0), (8.0, 0.0)],
    })
    soft.append(SoftPart("palm", p["fat_hand"], 8.0, origin, tube=palm))
    for k, offset, radii in ((1, (-3.0, 4.0), (11.0, 10.0)), (5, (-2.0, 6.0), (9.0, 8.5))):
        mc = out[f"metacarpal_{k}"]
        length = p[f"metacarpal_{k}_length"]
        centre = mc.frame.point((scale * offset[0], scale * offset[1], 0.45 * length))
        soft.append(SoftPart("thenar" if k == 1 else "hypothenar", p["fat_hand"], 6.0,
                             Frame(centre, mc.frame.axes), radii=(scale * radii[0], scale * radii[1], 0.55 * length + 6)))
    return out, soft


def _forearm_outline(p: PhantomParameters) -> SoftPart:
    """The forearm's skin surface: an elliptic tube along z, narrow and flat at the wrist, round below the elbow."""
    length = p["ulna_length"]
    wrist_a, forearm_a = p["wrist_circumference"] / 5.23, p["forearm_circumference"] / 5.69
    wrist_b, forearm_b = 0.62 * wrist_a, 0.8 * forearm_a
    tube = Tube.from_knots(-25.0, length + 40.0, {  # its distal end tapers inside the palm
        "a": [(-25.0, 0.75 * wrist_a), (0.0, wrist_a), (15.0, wrist_a), (0.45 * length, 0.5 * (wrist_a + forearm_a)),
              (0.75 * length, forearm_a), (length + 40.0, 0.95 * forearm_a)],
        "b": [(-25.0, 0.75 * wrist_b), (0.0, wrist_b), (15.0, wrist_b), (0.45 * length, 0.5 * (wrist_b + forearm_b)),
              (0.75 * length, forearm_b), (length + 40.0, 0.95 * forearm_b)],
        "cx": [(0.0, -8.5), (0.75 * length, -11.0)],
        "cy": [(0.0, 0.0), (0.75 * length, 0.15 * forearm_b)],
    })
    origin = Frame(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    return SoftPart("forearm", p["fat_forearm"], 10.0, origin, tube=tube)


def build_arm(p: PhantomParameters) -> Arm:
    """Every bone and outline part of the arm drawn in ``p``, posed, in the limb frame (mm)."""
    scale = p["metacarpal_3_length"] / 65.0
    radius, ulna, ulnar_head, radial_head = _forearm(p)
    hand_bones, hand_soft = _hand(p, scale)
    centre = torch.tensor(_WRIST_CENTRE, dtype=torch.float64) * scale
    flexion, deviation = p["wrist_flexion"], p["wrist_deviation"]
    full = rotation((0.0, 1.0, 0.0), -deviation) @ rotation((1.0, 0.0, 0.0), flexion)
    half = rotation((0.0, 1.0, 0.0), -deviation / 2) @ rotation((1.0, 0.0, 0.0), flexion / 2)
    for name, bone in hand_bones.items():
        hand_bones[name] = bone.moved(half if name in _PROXIMAL_ROW else full, centre)
    hand_soft = [part.moved(full, centre) for part in hand_soft]
    pronation = rotation(radial_head - ulnar_head, p["pronation"])
    moved = {"radius": radius.moved(pronation, ulnar_head), "ulna": ulna}
    moved.update({name: bone.moved(pronation, ulnar_head) for name, bone in hand_bones.items()})
    soft = (_forearm_outline(p), *(part.moved(pronation, ulnar_head) for part in hand_soft))
    return Arm(moved, soft)
