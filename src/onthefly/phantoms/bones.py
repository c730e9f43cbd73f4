"""Bones as signed-distance solids: a swept shaft, blended end pieces and articular cuts.

A :class:`Bone` is evaluated in its own frame (local z along its length). Its
distance, cortical thickness and medullary share come from its :class:`~.shapes.Tube`
where it has one (long bones: the cortex is thick at mid-shaft and thin at the
ends, the marrow cavity fills the middle of the shaft) and from constants for
the carpal bones (thin cortex around cancellous bone). The builders below make
the bones of the forearm, wrist and hand from a few measurements each (mm,
radians); :mod:`.regions` draws the measurements and places the bones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .shapes import FAR, Blob, Cut, Frame, Tube, frame_along, smooth_union

__all__ = ["Bone", "radius", "ulna", "carpal", "metacarpal", "phalanx"]


@dataclass(frozen=True)
class Bone:
    """One bone: its label name, frame, optional shaft, blended pieces, cuts, and the cortical thickness (mm) of
    pieces beyond a shaft (a bone without a shaft: a carpal)."""

    name: str
    frame: Frame
    tube: Tube | None = None
    blobs: tuple[Blob, ...] = ()
    cuts: tuple[Cut, ...] = ()
    cortex: float = 0.8

    def moved(self, turn: Tensor, centre: Tensor, shift: Tensor | None = None) -> "Bone":
        """The bone rotated by ``turn (3, 3)`` about ``centre (3,)`` mm (then moved by ``shift``)."""
        return replace(self, frame=self.frame.moved(turn, centre, shift))

    def bounds(self, margin: float) -> tuple[Tensor, Tensor]:
        """World ``(low (3,), high (3,))`` mm of a box holding the bone plus ``margin`` mm."""
        if self.tube is not None:
            reach = self.tube.reach()
            lows, highs = [-reach, -reach, self.tube.start], [reach, reach, self.tube.end]
        else:
            lows, highs = [math.inf] * 3, [-math.inf] * 3
        for blob in self.blobs:
            extent = blob.reach() - math.sqrt(sum(c * c for c in blob.centre))
            for i in range(3):
                lows[i] = min(lows[i], blob.centre[i] - extent)
                highs[i] = max(highs[i], blob.centre[i] + extent)
        corners = torch.tensor([[x, y, z] for x in (lows[0], highs[0]) for y in (lows[1], highs[1])
                                for z in (lows[2], highs[2])], dtype=torch.float64)
        world = corners @ self.frame.axes.T + self.frame.origin
        return world.amin(0) - margin, world.amax(0) + margin

    def fields(self, X: Tensor, Y: Tensor, Z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Signed distance (mm), cortical thickness (mm) and medullary share at broadcast world coordinates."""
        u, v, t = self.frame.local_coordinates(X, Y, Z)
        shape = tuple(max(sizes) for sizes in zip(u.shape, v.shape, t.shape))  # all three are 3-D
        if self.tube is not None:
            distance, cortex, medulla = self.tube.distance(u, v, t)
        else:
            distance = torch.full(shape, FAR, device=u.device, dtype=u.dtype)
            cortex = torch.full(shape, self.cortex, device=u.device, dtype=u.dtype)
            medulla = torch.zeros(shape, device=u.device, dtype=u.dtype)
        for blob in self.blobs:
            distance = smooth_union(distance, blob.distance(u, v, t), blob.blend)
        for cut in self.cuts:
            distance = torch.maximum(distance, cut.distance(u, v, t))
        return distance, cortex, medulla


def _tilted(axis: tuple[float, float, float]) -> Tensor:
    """``(3, 3)`` axes of a blob whose z axis points along ``axis`` (local frame)."""
    return frame_along((0.0, 0.0, 0.0), axis).axes


# ----------------------------------------------------------------------------------------- forearm


def radius(frame: Frame, *, length: float, distal_width: float, distal_depth: float, shaft_width: float,
           shaft_depth: float, head_diameter: float, neck_diameter: float, cortex_mid: float, cortex_end: float,
           bow: float, volar_tilt: float, inclination: float, fossa_depth: float) -> Bone:
    """The radius. Local frame: origin at the centre of the distal articular surface, z towards the radial head,
    x lateral (thumb side), y anterior (palmar). ``length`` runs from the styloid tip to the head's top.

    The distal end is cut by the articular plane (``volar_tilt`` and radial ``inclination``, radians) hollowed
    into a fossa ``fossa_depth`` mm deep; the styloid is the plane's lateral corner. The shaft bows laterally by
    ``bow`` mm at 42 % of the length, flares into the distal metaphysis, narrows into the neck and ends in the
    head, a disc cupped on top; the bicipital tuberosity sits antero-medially below the neck.
    """
    a_d, b_d, a_s, b_s = distal_width / 2, distal_depth / 2, shaft_width / 2, shaft_depth / 2
    tan_i, tan_v = math.tan(inclination), math.tan(volar_tilt)
    top = length - 0.88 * a_d * tan_i  # head top; the styloid tip (lateral edge, 0.88 a_d) lies below the centre
    head_r, neck_r, head_half = head_diameter / 2, neck_diameter / 2, 0.24 * head_diameter
    neck = top - 2 * head_half
    tube = Tube.from_knots(-12.0, neck + 2.0, {
        "a": [(-12.0, a_d), (5.0, a_d), (20.0, 0.8 * a_d), (42.0, 1.15 * a_s), (70.0, a_s), (neck - 48.0, 0.95 * a_s),
              (neck - 10.0, neck_r), (neck + 2.0, neck_r)],
        "b": [(-12.0, b_d), (5.0, b_d), (20.0, 0.85 * b_d), (42.0, 1.1 * b_s), (70.0, b_s), (neck - 48.0, b_s),
              (neck - 10.0, neck_r), (neck + 2.0, neck_r)],
        "cx": [(-12.0, -0.12 * a_d), (8.0, -0.05 * a_d), (0.42 * length, bow), (neck - 25.0, 0.25 * bow), (neck, 0.0)],
        "cy": [(0.0, 0.0), (0.5 * length, -0.6), (neck, 0.0)],
        "cortex": [(15.0, cortex_end), (0.35 * length, cortex_mid), (0.62 * length, cortex_mid),
                   (neck - 20.0, cortex_end)],
        "medulla": [(0.16 * length, 0.0), (0.3 * length, 1.0), (0.68 * length, 1.0), (0.8 * length, 0.0)],
    })
    norm = math.sqrt(1 + tan_i ** 2 + tan_v ** 2)
    normal = (-tan_i / norm, tan_v / norm, -1.0 / norm)  # outward normal of the articular surface
    fossa = 2.2 * a_d
    cup = 1.6 * head_r
    blobs = (
        Blob("cylinder", (0.0, 0.0, top - head_half), (head_r, head_half, 1.8), blend=2.5),
        Blob("ellipsoid", (-0.55 * a_s, 0.45 * a_s, neck - 22.0), (0.45 * a_s + 1.5, 0.45 * a_s + 1.5, 9.0), blend=4.0),
    )
    cuts = (
        Cut("plane", normal=normal, offset=0.0),
        Cut("sphere", centre=tuple(c * (fossa - fossa_depth) for c in normal), radius=fossa),
        Cut("sphere", centre=(0.0, 0.0, top + cup - 1.8), radius=cup),
    )
    return Bone("radius", frame, tube, blobs, cuts)


def ulna(frame: Frame, *, length: float, head_diameter: float, styloid_length: float, shaft_width: float,
         shaft_depth: float, proximal_width: float, proximal_depth: float, notch_radius: float, cortex_mid: float,
         cortex_end: float) -> Bone:
    """The ulna. Local frame: origin at the centre of the ulnar head, z towards the olecranon, x lateral,
    y anterior. ``length`` runs from the styloid tip to the olecranon tip.

    The head is nearly a sphere with the styloid behind and medial to it; the shaft widens proximally into
    the olecranon and coronoid, between which the trochlear notch (radius ``notch_radius``) opens anteriorly.
    """
    r = head_diameter / 2
    tip = -(0.95 * r + styloid_length + 1.0)
    top = length + tip
    body_half = 2.1 * notch_radius
    a_s, b_s = shaft_width / 2, shaft_depth / 2
    a_p, b_p = proximal_width / 2, proximal_depth / 2
    tube = Tube.from_knots(0.3 * r, top - body_half, {
        "a": [(0.3 * r, 0.85 * r), (2.2 * r, 0.75 * a_s), (0.45 * length, a_s), (top - 3.2 * body_half, 1.1 * a_s),
              (top - 1.6 * body_half, 0.8 * a_p)],
        "b": [(0.3 * r, 0.85 * r), (2.2 * r, 0.8 * b_s), (0.45 * length, b_s), (top - 3.2 * body_half, 1.25 * b_s),
              (top - 1.6 * body_half, 0.8 * b_p)],
        "cx": [(0.0, 0.0), (0.5 * length, -1.5), (top, 0.0)],
        "cy": [(0.0, 0.0), (0.6 * length, 0.5), (top - body_half, -0.25 * b_p)],
        "cortex": [(2.0 * r, cortex_end), (0.3 * length, cortex_mid), (0.6 * length, cortex_mid),
                   (top - 2.0 * body_half, cortex_end)],
        "medulla": [(0.18 * length, 0.0), (0.3 * length, 1.0), (0.7 * length, 1.0), (0.82 * length, 0.0)],
    })
    blobs = (
        Blob("ellipsoid", (0.0, 0.0, 0.0), (r, r, 0.95 * r), blend=3.0),
        Blob("ellipsoid", (-0.45 * r, -0.4 * r, -0.95 * r - styloid_length / 2 + 1.5),
             (2.3, 2.3, styloid_length / 2 + 2.5), blend=2.0),
        Blob("ellipsoid", (0.0, -0.2 * b_p, top - body_half), (a_p, b_p, body_half), blend=6.0),
    )
    cuts = (Cut("cylinder", centre=(0.0, 0.45 * b_p + 0.45 * notch_radius, top - 0.95 * body_half),
                normal=(1.0, 0.0, 0.0), radius=notch_radius),)
    return Bone("ulna", frame, tube, blobs, cuts)


# ------------------------------------------------------------------------------------------- carpus


def carpal(name: str, frame: Frame, pieces: list[tuple[tuple[float, float, float], tuple[float, float, float],
                                                       tuple[float, float, float]]], *, cortex: float,
           blend: float = 4.0) -> Bone:
    """A carpal bone: ellipsoids ``(centre, semi-axes, long-axis direction)`` in its frame, blended together."""
    blobs = tuple(Blob("ellipsoid", centre, radii, _tilted(direction), blend=blend) for centre, radii, direction in pieces)
    return Bone(name, frame, None, blobs, (), cortex)


# ------------------------------------------------------------------------------------------- the rays


def metacarpal(name: str, frame: Frame, *, length: float, base: tuple[float, float], shaft: tuple[float, float],
               head: tuple[float, float, float], cortex_mid: float, cortex_end: float) -> Bone:
    """A metacarpal. Local frame: origin at the centre of the base, z towards the head (distal), y palmar.
    ``base`` and ``shaft`` are (width, depth) mm; ``head`` the semi-axes of the head (mm)."""
    hz = head[2]
    tube = Tube.from_knots(0.0, length - hz, {
        "a": [(0.0, base[0] / 2), (0.12 * length, base[0] / 2), (0.35 * length, shaft[0] / 2),
              (0.7 * length, shaft[0] / 2), (length - hz, 0.85 * head[0])],
        "b": [(0.0, base[1] / 2), (0.12 * length, base[1] / 2), (0.35 * length, shaft[1] / 2),
              (0.7 * length, shaft[1] / 2), (length - hz, 0.85 * head[1])],
        "cy": [(0.0, 0.0), (0.5 * length, -0.08 * shaft[1]), (length, 0.0)],
        "cortex": [(0.1 * length, cortex_end), (0.4 * length, cortex_mid), (0.6 * length, cortex_mid),
                   (0.88 * length, cortex_end)],
        "medulla": [(0.22 * length, 0.0), (0.35 * length, 1.0), (0.65 * length, 1.0), (0.78 * length, 0.0)],
    })
    blobs = (Blob("ellipsoid", (0.0, 0.06 * head[1], length - hz), head, blend=2.5),)
    return Bone(name, frame, tube, blobs)


def phalanx(name: str, frame: Frame, *, length: float, base: tuple[float, float], shaft: tuple[float, float],
            head: tuple[float, float, float], socket: float, cortex_mid: float, cortex_end: float,
            distal: bool = False) -> Bone:
    """A phalanx. Local frame: origin at the centre of the base, z distal, y palmar. The base is hollowed into a
    socket of radius ``socket`` mm about the joint centre ``socket`` mm proximal to it; ``head`` is the trochlea
    (or, with ``distal``, the ungual tuft) at the far end, semi-axes mm. ``length`` runs from the socket's rim to
    the tip."""
    hz = head[2]
    rim = 0.2 * socket  # the socket's rim reaches this far proximal of the base centre
    end = length - rim - hz
    tube = Tube.from_knots(-rim, end, {
        "a": [(0.0, base[0] / 2), (0.15 * length, base[0] / 2), (0.45 * length, shaft[0] / 2),
              (0.7 * length, shaft[0] / 2), (end, (0.6 if distal else 0.85) * head[0])],
        "b": [(0.0, base[1] / 2), (0.15 * length, base[1] / 2), (0.45 * length, shaft[1] / 2),
              (0.7 * length, shaft[1] / 2), (end, (0.6 if distal else 0.85) * head[1])],
        "cy": [(0.0, 0.0), (0.5 * length, 0.08 * shaft[1]), (length, 0.0)],
        "cortex": [(0.12 * length, cortex_end), (0.45 * length, cortex_mid), (0.6 * length, cortex_mid),
                   (0.88 * length, cortex_end)],
        "medulla": [(0.3 * length, 0.0), (0.42 * length, 0.0 if distal else 1.0), (0.6 * length, 0.0 if distal else 1.0),
                    (0.72 * length, 0.0)],
    })
    blobs = (Blob("ellipsoid", (0.0, 0.1 * head[1] if distal else 0.0, end), head, blend=2.0),)
    cuts = (Cut("sphere", centre=(0.0, 0.0, -socket), radius=socket),)
    return Bone(name, frame, tube, blobs, cuts)
