"""Signed-distance shapes of the phantoms: frames, primitives and swept tubes.

Every shape is a signed distance in mm (negative inside, positive outside,
gradient of length about 1 near the surface), evaluated with broadcast torch
ops on a box of voxels: coordinates come as ``X (n1, 1, 1)``, ``Y (1, n2, 1)``,
``Z (1, 1, n3)`` world mm and every field returned is ``(n1, n2, n3)`` float32.

A :class:`Frame` places a shape: an origin and three orthonormal axes (the
columns of ``axes``) in the limb frame. A :class:`Tube` is a solid swept along
its frame's z axis: at height ``t`` its cross-section is an ellipse with centre
``(cx, cy)`` and semi-axes ``(a, b)`` read from a profile table, so the centre
line curves (a bow) and the cross-section changes along the length (a flared
metaphysis, a waisted neck). The same table carries the cortical thickness and
the share of medullary cavity at each height. :class:`Blob` (ellipsoid, capped
round cylinder) and :class:`Cut` (half-space, sphere, cylinder removed) complete
a bone; :class:`Capsule` (a tapered segment) is a finger's soft tissue.

Host-side geometry (frames, profiles) is float64; fields on the grid are float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

__all__ = [
    "Frame",
    "Tube",
    "Blob",
    "Cut",
    "Capsule",
    "rotation",
    "frame_along",
    "smooth_profile",
    "smooth_union",
    "ellipse_distance",
    "ellipsoid_distance",
]

Vector = tuple[float, float, float]
FAR = 1.0e4
"""Signed distance (mm) standing for "far outside" where a shape is not evaluated."""


# ----------------------------------------------------------------------------------------------- frames


def _unit(v: Sequence[float]) -> Vector:
    n = math.sqrt(sum(c * c for c in v))
    return (v[0] / n, v[1] / n, v[2] / n)


def _cross(a: Sequence[float], b: Sequence[float]) -> Vector:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def rotation(axis: Sequence[float], angle: float) -> Tensor:
    """``(3, 3)`` float64 rotation by ``angle`` radians about ``axis`` (right hand, Rodrigues)."""
    x, y, z = _unit(axis)
    c, s = math.cos(angle), math.sin(angle)
    k = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + s * k + (1.0 - c) * (k @ k)


@dataclass(frozen=True)
class Frame:
    """A local frame: ``origin (3,)`` mm and ``axes (3, 3)`` whose columns are the local x, y, z in the parent frame."""

    origin: Tensor
    axes: Tensor

    def __post_init__(self) -> None:
        # host copies read by the voxel stage: Python numbers are constants to a compiler, tensors' values are not
        object.__setattr__(self, "_origin", tuple(self.origin.tolist()))
        object.__setattr__(self, "_rows", tuple(tuple(row) for row in self.axes.T.tolist()))  # local axes in world

    def point(self, local: Sequence[float]) -> Tensor:
        """``(3,)`` parent-frame mm of a local point."""
        return self.origin + self.axes @ torch.as_tensor(local, dtype=torch.float64)

    def moved(self, turn: Tensor, centre: Tensor, shift: Tensor | None = None) -> "Frame":
        """This frame rotated by ``turn (3, 3)`` about ``centre (3,)``, then moved by ``shift (3,)`` mm."""
        origin = turn @ (self.origin - centre) + centre
        return Frame(origin if shift is None else origin + shift, turn @ self.axes)

    def local_coordinates(self, X: Tensor, Y: Tensor, Z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Local ``(u, v, t)`` of broadcast world coordinates (each ``(n1, n2, n3)`` after broadcasting)."""
        o, rows = self._origin, self._rows
        differences = (X - o[0], Y - o[1], Z - o[2])
        out = []
        for row in rows:  # terms along grid axes the local axis ignores are left out: aligned frames stay thin
            terms = [d * c for d, c in zip(differences, row) if abs(c) > 1e-12]
            total = terms[0]
            for term in terms[1:]:
                total = total + term
            out.append(total)
        return tuple(out)  # type: ignore[return-value]


def frame_along(origin: Sequence[float], direction: Sequence[float], lateral: Sequence[float] = (1.0, 0.0, 0.0)) -> Frame:
    """A frame at ``origin`` whose z axis is ``direction`` and whose x axis is ``lateral`` made orthogonal to it."""
    z = _unit(direction)
    x = _unit([lateral[i] - _dot(lateral, z) * z[i] for i in range(3)])
    y = _cross(z, x)
    axes = torch.tensor([x, y, z], dtype=torch.float64).T
    return Frame(torch.as_tensor(origin, dtype=torch.float64), axes)


# ------------------------------------------------------------------------------------------- profiles


def smooth_profile(t: Tensor, knots: Sequence[tuple[float, float]]) -> Tensor:
    """Values at heights ``t`` through ``(height, value)`` knots: constant outside, smoothstep between knots.

    Example:
        >>> smooth_profile(torch.tensor([0.0, 5.0, 10.0, 20.0]), [(0.0, 1.0), (10.0, 3.0)]).tolist()
        [1.0, 2.0, 3.0, 3.0]
    """
    heights = torch.tensor([k[0] for k in knots], dtype=torch.float64)
    values = torch.tensor([k[1] for k in knots], dtype=torch.float64)
    t = t.to(torch.float64)
    index = torch.searchsorted(heights, t).clamp(1, len(knots) - 1)
    t0, t1 = heights[index - 1], heights[index]
    s = ((t - t0) / (t1 - t0).clamp_min(1e-9)).clamp(0.0, 1.0)
    s = s * s * (3.0 - 2.0 * s)
    return values[index - 1] + (values[index] - values[index - 1]) * s


def smooth_union(a: Tensor, b: Tensor, k: float) -> Tensor:
    """Polynomial smooth minimum of two distances with blend width ``k`` mm (``min`` when ``k`` is 0)."""
    if k <= 0:
        return torch.minimum(a, b)
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def ellipse_distance(du: Tensor, dv: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
    """Approximate signed distance to an ellipse of semi-axes ``a``, ``b`` (exact gradient on the curve)."""
    k0 = torch.sqrt((du / a) ** 2 + (dv / b) ** 2)
    k1 = torch.sqrt((du / (a * a)) ** 2 + (dv / (b * b)) ** 2)
    inside = -torch.minimum(torch.as_tensor(a), torch.as_tensor(b)) if isinstance(a, Tensor) else -min(a, b)
    return torch.where(k1 > 1e-6, k0 * (k0 - 1.0) / k1.clamp_min(1e-6), inside)


def ellipsoid_distance(u: Tensor, v: Tensor, w: Tensor, radii: Sequence[float]) -> Tensor:
    """Approximate signed distance to an axis-aligned ellipsoid centred at the origin (exact gradient on it)."""
    a, b, c = radii
    k0 = torch.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
    k1 = torch.sqrt((u / (a * a)) ** 2 + (v / (b * b)) ** 2 + (w / (c * c)) ** 2)
    return torch.where(k1 > 1e-6, k0 * (k0 - 1.0) / k1.clamp_min(1e-6), torch.full_like(k0, -min(radii)))


# ----------------------------------------------------------------------------------------------- tube

TUBE_COLUMNS = ("cx", "cy", "a", "b", "cortex", "medulla")


@dataclass(frozen=True)
class Tube:
    """A solid swept along its frame's z axis from ``start`` to ``end`` mm (flat caps).

    ``table (K, 6)`` holds, at ``K`` evenly spaced heights from ``start`` to ``end``:
    the cross-section centre ``cx, cy`` (mm), its semi-axes ``a`` (local x) and ``b``
    (local y) in mm, the cortical thickness (mm) and the medullary share (0: cancellous
    bone, 1: marrow cavity). ``slope (K,)`` divides the cross-section distance by
    ``sqrt(1 + r'(t)^2 + c'(t)^2)`` so that a flaring wall keeps a distance gradient of about 1.
    """

    start: float
    end: float
    table: Tensor
    slope: Tensor

    @classmethod
    def from_knots(cls, start: float, end: float, knots: dict[str, Sequence[tuple[float, float]]],
                   step: float = 0.5) -> "Tube":
        """A tube whose columns follow ``knots[column]`` (:func:`smooth_profile`), sampled every ``step`` mm or
        finer; a missing column is 0."""
        samples = max(3, math.ceil((end - start) / step) + 1)
        t = torch.linspace(start, end, samples, dtype=torch.float64)
        columns = [smooth_profile(t, knots[name]) if name in knots else torch.zeros_like(t) for name in TUBE_COLUMNS]
        table = torch.stack(columns, 1)
        step = (end - start) / (samples - 1)
        gradient = torch.gradient(table[:, :4], spacing=step, dim=0)[0]
        slope = torch.sqrt(1.0 + (gradient[:, 2:4] ** 2).amax(1) + (gradient[:, 0:2] ** 2).sum(1))
        return cls(start, end, table, 1.0 / slope)

    def at(self, t: Tensor) -> list[Tensor]:
        """The 6 table columns and the slope factor at heights ``t (...)``, each ``(...)``: the nearest of the
        table's samples (clamped at the ends; :meth:`from_knots` samples every 0.5 mm or finer)."""
        table = torch.cat([self.table, self.slope[:, None]], 1).to(device=t.device, dtype=t.dtype)
        count = table.shape[0]
        index = ((t - self.start) * ((count - 1) / (self.end - self.start)) + 0.5).clamp(0.0, count - 1.0).long()
        return [torch.take(table[:, c].contiguous(), index) for c in range(table.shape[1])]

    def distance(self, u: Tensor, v: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Signed distance, cortical thickness and medullary share at local ``(u, v, t)``."""
        cx, cy, a, b, cortex, medulla, slope = self.at(t)
        radial = ellipse_distance(u - cx, v - cy, a, b) * slope
        axial = torch.maximum(self.start - t, t - self.end)
        outside = torch.sqrt(radial.clamp_min(0.0) ** 2 + axial.clamp_min(0.0) ** 2)
        return outside + torch.maximum(radial, axial).clamp_max(0.0), cortex, medulla

    def reach(self) -> float:
        """Largest distance (mm) of the surface from the z axis."""
        cx, cy, a, b = self.table[:, :4].abs().unbind(1)
        return float((torch.maximum(a, b) + torch.sqrt(cx ** 2 + cy ** 2)).max())


# ------------------------------------------------------------------------------------------ blobs, cuts


@dataclass(frozen=True)
class Blob:
    """A convex piece in a bone's local frame: ``"ellipsoid"`` (``size`` = 3 semi-axes) or ``"cylinder"``
    (``size`` = radius, half height, edge rounding; axis along the blob's z), centred at ``centre``, its axes the
    columns of ``axes`` (local frame), joined to the rest with blend width ``blend`` mm."""

    kind: str
    centre: Vector
    size: Vector
    axes: Tensor = field(default_factory=lambda: torch.eye(3, dtype=torch.float64))
    blend: float = 3.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rows", tuple(tuple(row) for row in self.axes.T.tolist()))

    def distance(self, u: Tensor, v: Tensor, t: Tensor) -> Tensor:
        rows = self._rows
        du, dv, dt = u - self.centre[0], v - self.centre[1], t - self.centre[2]
        p, q, r = (du * row[0] + dv * row[1] + dt * row[2] for row in rows)
        if self.kind == "ellipsoid":
            return ellipsoid_distance(p, q, r, self.size)
        radius, half, rounding = self.size
        radial = torch.sqrt(p * p + q * q) - (radius - rounding)
        axial = r.abs() - (half - rounding)
        outside = torch.sqrt(radial.clamp_min(0.0) ** 2 + axial.clamp_min(0.0) ** 2)
        return outside + torch.maximum(radial, axial).clamp_max(0.0) - rounding

    def reach(self) -> float:
        """Distance (mm) from the local origin that bounds the blob."""
        extent = max(self.size) if self.kind == "ellipsoid" else math.hypot(self.size[0], self.size[1])
        return math.sqrt(sum(c * c for c in self.centre)) + extent


@dataclass(frozen=True)
class Cut:
    """Material removed from a bone, in its local frame: ``"plane"`` (keeps ``normal . p <= offset``; ``normal``
    a unit vector), ``"sphere"`` (removes the ball of ``radius`` about ``centre``) or ``"cylinder"`` (removes the
    infinite cylinder of ``radius`` about the line through ``centre`` along ``normal``)."""

    kind: str
    centre: Vector = (0.0, 0.0, 0.0)
    normal: Vector = (0.0, 0.0, 1.0)
    radius: float = 0.0
    offset: float = 0.0

    def distance(self, u: Tensor, v: Tensor, t: Tensor) -> Tensor:
        """Signed distance of the kept region (negative where material is kept)."""
        n = self.normal
        if self.kind == "plane":
            return u * n[0] + v * n[1] + t * n[2] - self.offset
        du, dv, dt = u - self.centre[0], v - self.centre[1], t - self.centre[2]
        if self.kind == "sphere":
            return self.radius - torch.sqrt(du * du + dv * dv + dt * dt)
        along = du * n[0] + dv * n[1] + dt * n[2]
        return self.radius - torch.sqrt((du * du + dv * dv + dt * dt - along * along).clamp_min(0.0))


@dataclass(frozen=True)
class Capsule:
    """A segment from ``start`` to ``end`` (mm, limb frame) with radius ``radii[0]`` at the start tapering to
    ``radii[1]`` at the end: the soft tissue of a finger segment."""

    start: Vector
    end: Vector
    radii: tuple[float, float]

    def distance(self, X: Tensor, Y: Tensor, Z: Tensor) -> Tensor:
        a, b = self.start, self.end
        ab = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
        length2 = max(_dot(ab, ab), 1e-9)
        px, py, pz = X - a[0], Y - a[1], Z - a[2]
        s = ((px * ab[0] + py * ab[1] + pz * ab[2]) / length2).clamp(0.0, 1.0)
        dx, dy, dz = px - s * ab[0], py - s * ab[1], pz - s * ab[2]
        return torch.sqrt(dx * dx + dy * dy + dz * dz) - (self.radii[0] + (self.radii[1] - self.radii[0]) * s)

    def moved(self, turn: Tensor, centre: Tensor) -> "Capsule":
        start = (turn @ (torch.tensor(self.start, dtype=torch.float64) - centre) + centre).tolist()
        end = (turn @ (torch.tensor(self.end, dtype=torch.float64) - centre) + centre).tolist()
        return replace(self, start=tuple(start), end=tuple(end))

    def bounds(self) -> tuple[Tensor, Tensor]:
        points = torch.tensor([self.start, self.end], dtype=torch.float64)
        reach = max(self.radii)
        return points.amin(0) - reach, points.amax(0) + reach
