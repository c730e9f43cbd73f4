"""Footprints of coarse voxels on a view's patch grid (step 3 of the correspondence).

The footprint of a coarse voxel in a view is, for every patch, the integral
over the patch of the length of the ray (source to pixel) inside the voxel's
box: mm of path times detector area. :func:`voxel_footprints` returns it for
a window of ``K x K`` patches around each voxel's projection, normalised so
that its largest entry (over the detector's patches) is 1.

Three ways to compute it:

**Exact** (the default): each voxel is seen through its *paraxial camera*,
the affine map that best fits (least squares) the perspective projections of
its eight corners. Under it the voxel's shadow is a zonotope spanned by the
three projected edges ``xi_k``, and the patch integrals are volumes: the
integral over the quadrant ``{row <= r, col <= q}`` is the volume of the unit
cube ``tau in [-1/2, 1/2]^3`` below the two planes ``sum_k tau_k xi_k <= (r, q) - c``,
which :func:`cube_volume_below_planes` computes in closed form (divergence
theorem: each face's area by the same theorem in its plane, with clipped
segments only; no sampling, no sorting); below a single plane (a boundary
that crosses the shadow in one axis only) the volume is the distribution
function of a sum of three uniform variables (:func:`cube_volume_below_plane`).
Patch integrals are differences of these quadrant values at the patch corners. The paraxial camera is the only
approximation; its error grows with the square of voxel size over source
distance. Against footprints computed with 256 x 256 rays per patch through
the exact cone-beam geometry, the normalised footprints differ by at most
1.5e-3 (median 5e-4) for 13 mm cubes 750-950 mm from the source (the
sampler's geometry), and by at most 5e-3 for boxes up to 14 mm (the test's
bound). A 64 x 64-ray estimate differs from that reference by up to 5e-3
itself, where voxel faces are parallel to the rays. Footprints of voxels
whose shadow barely reaches the detector would be normalised by a sliver,
which makes them arbitrarily sensitive to rounding: exact footprints are
divided by ``max(peak, 1e-3 x whole shadow)``, so they peak at 1 as soon as
one patch holds 0.1 % of the voxel's shadow and fade continuously to 0
below that (sampled footprints alike, with the whole shadow estimated from
the voxel's volume and magnification).

**Separable** (``footprint="separable"``): the same paraxial shadow, with
each patch integral taken as the product of the shadow's two exact marginals
(the share of the shadow between the patch's row boundaries times the share
between its column boundaries), the idea of the separable-footprint CT
projectors (Long, Fessler and Balter, IEEE TMI 2010) with exact marginals in
place of their trapezoids. Exact where every projected edge is parallel to
a detector axis; elsewhere it ignores the shear of the shadow. It skips the
two-plane volumes, about half the time of the exact footprints. On crops of
the bundled CT at the sampler's scale the matrix's IoU at ``C >= 0.5`` with
64 x 64 rays per patch was 0.991 (exact: 0.998), and 0.996 with the exact
matrix on a sampler batch (mean difference 1e-3 where ``C > 0.05``, largest
0.27).

**Sampled** (``rays_per_patch=m``): ``m x m`` rays through the centres of an
``m x m`` split of each patch, each ray's chord through the box by the slab
method. An approximation, converging as ``m`` grows: on a sampler batch of the
bundled CT (B = 8, V = 2, 256 x 256, patch 16), the matrix's IoU at
``C >= 0.5`` with ``m = 16`` was 0.657, 0.906 and 0.961 for ``m`` = 2, 4 and 8.

Voxels not wholly in front of the source have no footprint. Rays are clipped
at the detector by the sampled method only; the exact method counts a voxel
that reaches past the detector plane whole (its centre must lie in front).

Static shapes: the window size ``K`` is a host integer
(:func:`footprint_window` computes the smallest that fits every voxel); the
kept entries are the ``K^2`` window patches. Nothing here reads the device.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import CArm

__all__ = ["voxel_footprints", "footprint_window", "cube_volume_below_plane", "cube_volume_below_planes",
           "footprint_bytes_per_voxel", "FOOTPRINTS"]

#: Closed-form footprint methods (``rays_per_patch=None``): the exact one and its separable approximation.
FOOTPRINTS = ("exact", "separable")

# Offsets of the 8 corners of a voxel (index units, about its centre); axis k of corner c is _CORNERS[c, k].
_CORNERS = torch.tensor(list(itertools.product((-0.5, 0.5), repeat=3)), dtype=torch.float64)


def footprint_bytes_per_voxel(views: int, window: int, rays_per_patch: int | None) -> int:
    """Bytes of intermediate tensors per coarse voxel in :func:`voxel_footprints` (an estimate)."""
    if rays_per_patch is None:
        return 4 * views * window * window * 12 * 8 + 2048 * views
    return 4 * 12 * views * window * window * rays_per_patch * rays_per_patch + 2048 * views


# ---------------------------------------------------------------------------
# Window: which patches a voxel can touch


def _projected_corners(centre: Tensor, edges: Tensor, matrices: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel coordinates ``(..., V, 8, 2)`` and depths ``(..., V, 8)`` of voxel corners, float64.

    ``centre`` ``(..., 3)`` world mm, ``edges`` ``(..., 3, 3)`` (columns: edge vectors),
    ``matrices`` ``(..., V, 3, 4)`` projection matrices.
    """
    offsets = _CORNERS.to(centre.device)
    corners = centre[..., None, :] + offsets @ edges.transpose(-1, -2)  # (..., 8, 3)
    # Broadcast products, not a batched matmul: millions of 8 x 3 by 3 x 3 products run far faster this way.
    projected = (corners[..., None, :, None, :] * matrices[..., :, None, :, :3]).sum(-1) + matrices[..., :, None, :, 3]
    depth = projected[..., 2]
    return projected[..., :2] / depth.clamp_min(1e-9)[..., None], depth


def _projected_shared_corners(centre: Tensor, edges: Tensor, edge_index: Tensor, camera: Tensor,
                              carm: CArm) -> tuple[Tensor, Tensor]:
    """As :func:`_projected_corners` for voxels that share edge sets ``edges (E, 3, 3)`` (``edge_index (n,)``):
    the corners' offsets from the centre are projected once per camera and edge set, then each voxel adds
    its projected centre (homogeneous coordinates are linear)."""
    matrices = _float64_matrices(carm)  # (Bc, V, 3, 4)
    offsets = _CORNERS.to(centre.device) @ edges.transpose(-1, -2)  # (E, 8, 3) world mm
    shared = (offsets[None, :, None, :, None, :] * matrices[:, None, :, None, :, :3]).sum(-1)  # (Bc, E, V, 8, 3)
    voxel = matrices[camera]  # (n, V, 3, 4)
    centres = torch.einsum("nk,nvjk->nvj", centre, voxel[..., :3]) + voxel[..., 3]  # (n, V, 3)
    projected = centres[:, :, None, :] + shared[camera, edge_index]  # (n, V, 8, 3)
    depth = projected[..., 2]
    return projected[..., :2] / depth.clamp_min(1e-9)[..., None], depth


#: Pixels a voxel's projected box must reach into a patch for the patch to get a footprint entry (a sliver
#: thinner than this holds under 1e-6 of a pixel row of the shadow; dropping it keeps rounding from
#: putting an entry just outside the box).
_BOX_MARGIN = 1e-6


def _float64_matrices(carm: CArm) -> Tensor:
    """``(B, V, 3, 4)`` projection matrices computed in float64 from the C-arm's parameters.

    Computed in float32, a matrix's translation column (source distance times
    focal length over pixel size) carries errors of about 1e-2 pixel, enough to
    put a voxel's projected box on the wrong side of a patch boundary; the
    float32 parameters converted to float64 give the same cameras to about 1e-12 pixel.
    """
    return carm.to(dtype=torch.float64).projection_matrices()


def _paraxial(pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares affine fit of projected corners: centre ``(..., 2)`` and edge images ``(..., 3, 2)``.

    The corner offsets are orthogonal (``S^T S = 2 I``), so the fit is the mean
    of the corners and, per axis, the mean of its four projected edges.
    """
    offsets = _CORNERS.to(device=pixels.device, dtype=pixels.dtype)
    centre = pixels.mean(-2)
    edges = offsets.T @ (pixels - centre[..., None, :]) / 2.0  # (..., 3, 2)
    return centre, edges


def _patch_range(pixels: Tensor, patch_size: int, grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """The patches (row, col) the projected corners ``(..., 8, 2)`` span: first and last ``(..., 2)``,
    and the window start, the first clamped to ``[-1, grid]``.

    A window reaching past the detector runs to patch -1 at most on the near
    side and to patch ``grid`` at most on the far side: those patches lie
    outside the detector and their values are never used, but their outer
    boundaries keep every patch of the detector inside the window.
    """
    first = torch.floor((pixels.amin(-2) + 0.5) / patch_size)
    last = torch.floor((pixels.amax(-2) + 0.5) / patch_size)
    limit = torch.tensor(grid, dtype=pixels.dtype, device=pixels.device)
    start = torch.minimum(torch.maximum(first, torch.full_like(first, -1.0)), limit)
    return first, last, start


def footprint_window(carm: CArm, affine: Tensor, grid_shape: tuple[int, int, int], patch_size: int) -> int:
    """Patches per side of the smallest window that holds every coarse voxel's shadow in every view.

    A host computation (it reads ``carm`` and ``affine`` back when they live on
    a device): the sampler calls it with its host copies and passes the result
    as ``window`` to :func:`~onthefly.correspondence.patch_correspondence`.

    Args:
        carm: the cameras, batch ``(B, V)`` (or ``B = 1``).
        affine: ``(B, 4, 4)`` (or ``(1, 4, 4)``) coarse-index-to-world matrices (mm) of the coarse grids.
        grid_shape: ``(d, h, w)`` coarse voxels per axis (every voxel counts, air or not).
        patch_size: patch edge ``k`` in pixels.

    Returns:
        ``K``, at most ``max(H/k, W/k) + 2``.

    Example:
        >>> carm = CArm(alpha=torch.tensor([0.0, 1.57]), sid=500.0, sdd=800.0, height=64, pixel_spacing=1.0)
        >>> affine = torch.diag(torch.tensor([8.0, 8.0, 8.0, 1.0]))[None]
        >>> footprint_window(carm, affine, (4, 4, 4), 16)
        2
    """
    carm = carm.to(device="cpu", dtype=torch.float64)
    affine = affine.detach().to("cpu", torch.float64)
    grid = (carm.height // patch_size, carm.width // patch_size)
    # Every voxel corner is a point of the grid's lattice: project the lattice once, then take each voxel's
    # extent over its 8 corners with 2 x 2 x 2 max pools (8 times fewer projections than corner by corner).
    lattice = torch.stack(torch.meshgrid(*[torch.arange(n + 1, dtype=torch.float64) - 0.5 for n in grid_shape],
                                         indexing="ij"), -1).reshape(-1, 3)
    world = lattice @ affine[:, :3, :3].transpose(-1, -2) + affine[:, None, :3, 3]  # (B, L, 3)
    matrices = carm.projection_matrices()  # (Bc, V, 3, 4)
    projected = torch.einsum("bvij,blj->bvli", matrices[..., :3], world) + matrices[..., None, :, 3]  # (B, V, L, 3)
    depth = projected[..., 2]
    pixels = projected[..., :2] / depth.clamp_min(1e-9)[..., None]
    batch, views = projected.shape[:2]
    shape = [n + 1 for n in grid_shape]

    def pooled_max(values: Tensor) -> Tensor:  # (B, V, L) -> (B, V, d, h, w): the largest over each voxel's corners
        return F.max_pool3d(values.reshape(batch * views, 1, *shape), 2, stride=1).reshape(batch, views, -1)

    high = torch.stack([pooled_max(pixels[..., axis]) for axis in range(2)], -1)
    low = -torch.stack([pooled_max(-pixels[..., axis]) for axis in range(2)], -1)
    in_front = -pooled_max(-depth) > 1e-6
    limit = torch.tensor(grid, dtype=torch.float64)
    first = torch.floor((low + 0.5) / patch_size)
    last = torch.floor((high + 0.5) / patch_size)
    start = torch.minimum(torch.maximum(first, torch.full_like(first, -1.0)), limit)
    needed = (torch.minimum(last, limit) - start + 1).clamp_min(1.0)
    needed = torch.where(in_front[..., None], needed, torch.ones_like(needed))
    return int(needed.max())


# ---------------------------------------------------------------------------
# Exact footprints: volumes of the unit cube below one or two planes

# The 12 edges of the cube: edge axis m, then the two other axes p < q (each at -1/2 or +1/2).
_EDGES = [(m, p, q, sp, sq) for m in range(3) for p, q in [tuple(a for a in range(3) if a != m)]
          for sp in (-1.0, 1.0) for sq in (-1.0, 1.0)]
# The 6 faces: normal axis k at side s, then the two in-face axes i < j.
_FACES = [(k, s, *[a for a in range(3) if a != k]) for k in range(3) for s in (-1.0, 1.0)]
_FAR = 1e37  # stands for an unbounded parameter (bounds divided by 1e-30 stay far below it)
_ROUNDING = 1e-5  # shares of a voxel's shadow below this are rounding error
# Plane offsets are moved by these fractions of the plane's reach so that no plane lies exactly on a cube
# face or edge, where a clipped edge and a plane trace on the same line would be counted by ties of rounding
# (volumes change by a few 1e-6).
_NUDGE_FIRST, _NUDGE_SECOND = 2.718e-6, 4.142e-6
_SEEN_SHARE = 1e-3  # footprints peak at 1 once a patch holds this share of the voxel's shadow


_CUBE_CONSTANTS: dict[tuple, dict[str, Tensor]] = {}


def _cube_constants(device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
    """Selection matrices ``(3, 12)`` for edges and ``(3, 6)`` for faces, and the faces' sides ``(6,)``;
    made once per device and dtype (see :func:`_select`)."""
    key = (device, dtype)
    if key not in _CUBE_CONSTANTS:
        axis, half_sides = torch.zeros(3, 12, dtype=torch.float64), torch.zeros(3, 12, dtype=torch.float64)
        for index, (m, p, q, sp, sq) in enumerate(_EDGES):
            axis[m, index] = 1.0
            half_sides[p, index], half_sides[q, index] = 0.5 * sp, 0.5 * sq
        normal, first, second = (torch.zeros(3, 6, dtype=torch.float64) for _ in range(3))
        for index, (k, _, i, j) in enumerate(_FACES):
            normal[k, index], first[i, index], second[j, index] = 1.0, 1.0, 1.0
        side = torch.tensor([face[1] for face in _FACES], dtype=torch.float64)
        constants = dict(edge_axis=axis, edge_sides=half_sides, face_normal=normal, face_first=first,
                         face_second=second, face_side=side)
        _CUBE_CONSTANTS[key] = {name: value.to(device=device, dtype=dtype) for name, value in constants.items()}
    return _CUBE_CONSTANTS[key]


def _limits(coefficient: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For constraints ``coefficient * s <= bound``, with ``limit = (bound + nudge) * inverse``:
    ``inverse`` (never infinite), ``nudge`` (so that a zero coefficient with a zero bound keeps
    everything) and the pads that make ``limit`` an upper limit (pad 0) or leave that side open (``_FAR``)."""
    positive = coefficient >= 0
    tiny = coefficient.abs() < 1e-30
    safe = torch.where(tiny, torch.where(positive, 1e-30, -1e-30), coefficient)
    upper_pad = torch.where(positive, 0.0, _FAR)
    return safe.reciprocal(), torch.where(tiny, 1e-30, 0.0), upper_pad, _FAR - upper_pad


def _clip(low: Tensor, high: Tensor, coefficient: Tensor, bound: Tensor) -> tuple[Tensor, Tensor]:
    """Restrict the interval ``[low, high]`` of ``s`` to ``coefficient * s <= bound`` (broadcasting).

    A zero coefficient keeps everything when ``bound >= 0`` and nothing otherwise.
    """
    inverse, nudge, upper_pad, lower_pad = _limits(coefficient)
    limit = (bound + nudge) * inverse
    return torch.maximum(low, limit - lower_pad), torch.minimum(high, limit + upper_pad)


def _select(vector: Tensor, matrix: Tensor) -> Tensor:
    """``vector (M, 3) @ matrix (3, E)`` as three broadcast products: with an inner size of 3 this runs
    several times faster than a matrix product, and far faster than indexing."""
    return vector[:, :1] * matrix[0] + vector[:, 1:2] * matrix[1] + vector[:, 2:] * matrix[2]


def _edge_intervals(plane: Tensor, offset: Tensor) -> tuple[Tensor, Tensor]:
    """``[low, high]`` ``(M, 12, I)`` of each cube edge's coordinate below ``plane . tau <= offset (M, I)``."""
    constants = _cube_constants(plane.device, plane.dtype)
    fixed = _select(plane, constants["edge_sides"])  # (M, 12) the plane at the edge's two fixed coordinates
    bound = offset[:, None, :] - fixed[:, :, None]
    half = torch.full_like(bound, 0.5)
    return _clip(-half, half, _select(plane, constants["edge_axis"])[:, :, None], bound)


def _edge_heights(to_p0: Tensor) -> Tensor:
    """``(M, 12)``: per unit plane offset, the change of ``h_f1 + h_f2 = 1 - sp p0_p - sq p0_q`` of each edge."""
    return 2.0 * _select(to_p0, _cube_constants(to_p0.device, to_p0.dtype)["edge_sides"])


def _face_components(vector: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(M, 6)`` each: a vector's component along each face's normal, first and second in-face axis."""
    constants = _cube_constants(vector.device, vector.dtype)
    return tuple(_select(vector, constants[name]) for name in ("face_normal", "face_first", "face_second"))


def _traces(offset: Tensor, faces: tuple[Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
    """Traces of ``plane . tau = offset (M, I)`` on the 6 faces, clipped to each face's square
    (``faces``: the plane's :func:`_face_components`).

    Returns ``height`` (signed distance from the face centre, 0 where the plane is
    parallel to the face), ``foot_i, foot_j``, ``step_i, step_j`` (unit direction) and
    the parameter interval ``low, high`` inside the square, each ``(M, 6, I)`` (steps ``(M, 6, 1)``).
    """
    side = _cube_constants(offset.device, offset.dtype)["face_side"]
    normal_k, normal_i, normal_j = faces  # (M, 6) the trace's normal
    norm = torch.sqrt(normal_i * normal_i + normal_j * normal_j)
    exists = norm > 1e-6 * torch.sqrt(norm * norm + normal_k * normal_k)
    safe_norm = norm.clamp_min(1e-30)
    unit_i, unit_j = (normal_i / safe_norm)[:, :, None], (normal_j / safe_norm)[:, :, None]
    face_offset = offset[:, None, :] - (0.5 * side * normal_k)[:, :, None]  # (M, 6, I)
    height = face_offset / safe_norm[:, :, None]
    trace = dict(foot_i=height * unit_i, foot_j=height * unit_j, step_i=-unit_j, step_j=unit_i)
    # A line that leaves the whole square on its kept side (touching it at most, as a plane through a
    # cube face does) cuts nothing: the square's own edge already bounds the face there.
    cuts = height < 0.5 * (unit_i.abs() + unit_j.abs())
    trace["height"] = torch.where(exists[:, :, None] & cuts, height, 0.0)
    low, high = torch.full_like(height, -_FAR), torch.full_like(height, _FAR)
    for step, foot in ((trace["step_i"], trace["foot_i"]), (trace["step_j"], trace["foot_j"])):
        low, high = _clip(low, high, step, 0.5 - foot)
        low, high = _clip(low, high, -step, 0.5 + foot)
    trace["low"], trace["high"] = low, high
    return trace


def cube_volume_below_plane(a: Tensor, alpha: Tensor) -> Tensor:
    """Volume of ``{tau in [-1/2, 1/2]^3 : a . tau <= alpha_i}``: ``a (M, 3)``, ``alpha (M, I)`` -> ``(M, I)``.

    The volume is the distribution function of ``a . tau`` for ``tau`` uniform
    in the cube: a sum of three independent uniform variables of widths
    ``w1 >= w2 >= w3`` (the ``|a_k|``), a piecewise cubic. It is evaluated on the
    lower half only (``alpha <= 0``; the upper half by symmetry, ``1 - F(-alpha)``),
    where with ``y = (w1 + w2 + w3) / 2 - |alpha|`` it is
    ``(P(y) - P(y - w2) - P(y - w1)) / (6 w1 w2)``, ``P(z) = (z+^3 - (z - w3)+^3) / w3``.
    ``P`` is computed as ``min(z / w3, 1) (3 z^2 - 3 z s + s^2)``, ``s = min(z, w3)``,
    which stays exact as ``w3 -> 0``; ``w2`` is kept at least ``1e-9 w1`` (a change
    of the volume below 1e-9). ``alpha`` is nudged as in :func:`cube_volume_below_planes`
    (by ``2.7e-6 sum |a_k|``). In float64 whatever the inputs' dtype (returned in it).
    """
    dtype = torch.promote_types(a.dtype, alpha.dtype)
    widths = a.to(torch.float64).abs()
    w1, w3 = widths.amax(-1, keepdim=True).clamp_min(1e-30), widths.amin(-1, keepdim=True)
    w2 = torch.maximum(widths.sum(-1, keepdim=True) - w1 - w3, 1e-9 * w1)
    # The same nudge off faces and edges as the first plane of :func:`cube_volume_below_planes`, so that the
    # quadrant values from one and from two planes agree where they meet (patch values are their differences).
    alpha = alpha.to(torch.float64) + _NUDGE_FIRST * widths.sum(-1, keepdim=True)
    y = (0.5 * (w1 + w2 + w3) - alpha.abs()).clamp_min(0.0)

    def difference(z: Tensor) -> Tensor:  # (z+^3 - (z - w3)+^3) / w3
        z = z.clamp_min(0.0)
        s = torch.minimum(z, w3)
        ratio = torch.where(z < w3, z / w3.clamp_min(1e-300), 1.0)
        return ratio * (3.0 * z * z - 3.0 * z * s + s * s)

    lower = (difference(y) - difference(y - w2) - difference(y - w1)) / (6.0 * w1 * w2)
    return torch.where(alpha <= 0, lower, 1.0 - lower).clamp(0.0, 1.0).to(dtype)


def cube_volume_below_planes(a: Tensor, b: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """Volume of ``{tau in [-1/2, 1/2]^3 : a . tau <= alpha_i, b . tau <= beta_j}`` for every ``(i, j)``.

    Args:
        a, b: ``(M, 3)`` plane normals (not parallel).
        alpha: ``(M, I)`` and beta: ``(M, J)`` offsets.

    Returns:
        ``(M, I, J)`` volumes in ``[0, 1]``.

    Divergence theorem from a point ``p0`` on both planes: the two cut faces
    add nothing, each cube face adds ``distance(p0, face) * area / 3``; each
    face's area is, by the same theorem from the face's centre, half the sum
    over its clipped edges and clipped plane traces of distance times length.
    Every term is a segment clipped by half-planes, which stays finite for
    planes parallel to faces or edges.
    """
    alpha = alpha + _NUDGE_FIRST * a.abs().sum(-1, keepdim=True)
    beta = beta + _NUDGE_SECOND * b.abs().sum(-1, keepdim=True)
    dot_aa, dot_bb, dot_ab = (a * a).sum(-1), (b * b).sum(-1), (a * b).sum(-1)
    det = (dot_aa * dot_bb - dot_ab * dot_ab)[:, None]
    to_p0_alpha = (dot_bb[:, None] * a - dot_ab[:, None] * b) / det  # p0 = alpha * this + beta * next
    to_p0_beta = (dot_aa[:, None] * b - dot_ab[:, None] * a) / det
    low_a, high_a = _edge_intervals(a, alpha)
    low_b, high_b = _edge_intervals(b, beta)
    length = (torch.minimum(high_a[..., :, None], high_b[..., None, :])
              - torch.maximum(low_a[..., :, None], low_b[..., None, :])).clamp_min(0.0)  # (M, 12, I, J)
    heights = ((1.0 - alpha[:, None, :] * _edge_heights(to_p0_alpha)[:, :, None])[..., :, None]
               - (beta[:, None, :] * _edge_heights(to_p0_beta)[:, :, None])[..., None, :])
    volume = (length * heights).sum(1) / 12.0
    # Each plane's face components serve both terms; of p0's parts only the normal ones are needed.
    faces_a, faces_b = _face_components(a), _face_components(b)
    normal = _cube_constants(a.device, a.dtype)["face_normal"]
    p0_a, p0_b = _select(to_p0_alpha, normal), _select(to_p0_beta, normal)
    volume = volume + _clipped_trace_terms(alpha, beta, faces_a, faces_b, p0_a, p0_b)
    volume = volume + _clipped_trace_terms(beta, alpha, faces_b, faces_a, p0_b, p0_a).transpose(1, 2)
    return volume.clamp(0.0, 1.0)


def _clipped_trace_terms(offset: Tensor, other_offset: Tensor, faces: tuple[Tensor, Tensor, Tensor],
                         other_faces: tuple[Tensor, Tensor, Tensor], to_p0_normal: Tensor,
                         to_p0_other_normal: Tensor) -> Tensor:
    """``sum_f h_f h_t length / 6`` over the traces of a plane (offsets ``(M, I)``, :func:`_face_components`
    ``faces``) clipped by the other plane (offsets ``(M, J)``, ``other_faces``): ``(M, I, J)``.
    ``to_p0_normal``, ``to_p0_other_normal`` ``(M, 6)``: the face-normal components of the vectors that
    map the two offsets to the point ``p0`` on both planes."""
    side = _cube_constants(offset.device, offset.dtype)["face_side"]
    trace = _traces(offset, faces)
    # other . (foot + s step) <= other_offset - other_k side / 2, in the face's coordinates.
    other_k, other_i, other_j = (t[:, :, None] for t in other_faces)
    coefficient = (other_i * trace["step_i"] + other_j * trace["step_j"])[..., None]  # (M, 6, 1, 1)
    inverse, nudge, upper_pad, lower_pad = _limits(coefficient)
    base = 0.5 * side[:, None] * other_k + other_i * trace["foot_i"] + other_j * trace["foot_j"]  # (M, 6, I)
    limit = (other_offset[:, None, None, :] - (base[..., None] - nudge)) * inverse  # (M, 6, I, J)
    length = (torch.minimum(trace["high"][..., None], limit + upper_pad)
              - torch.maximum(trace["low"][..., None], limit - lower_pad)).clamp_min(0.0)
    # Face height from p0: 1/2 - side * p0_k, p0 = offset * to_p0 + other_offset * to_p0_other.
    near = (0.5 - side[:, None] * offset[:, None, :] * to_p0_normal[:, :, None]) * trace["height"]
    far = (side[:, None] * to_p0_other_normal[:, :, None]) * other_offset[:, None, :]  # (M, 6, J)
    return ((near[..., None] - trace["height"][..., None] * far[:, :, None, :]) * length).sum(1) / 6.0


# ---------------------------------------------------------------------------
# Footprints of voxels


def voxel_footprints(
    centre: Tensor,
    edges: Tensor,
    camera: Tensor,
    carm: CArm,
    *,
    patch_size: int,
    window: int,
    rays_per_patch: int | None = None,
    edge_index: Tensor | None = None,
    footprint: str = "exact",
) -> tuple[Tensor, Tensor]:
    """Normalised footprints of voxels in every view, on a ``window x window`` patch window.

    Args:
        centre: ``(n, 3)`` world mm of the voxel centres, float64.
        edges: ``(n, 3, 3)`` the voxels' edge vectors (columns, world mm), float64.
        camera: ``(n,)`` which sample of ``carm`` sees each voxel.
        carm: the cameras, batch ``(B, V)``.
        patch_size: patch edge ``k`` in pixels (divides the detector size).
        window: ``K``, patches per side of the window (see :func:`footprint_window`).
        rays_per_patch: ``None`` for exact footprints, else ``m`` rays per patch side.
        edge_index: ``(n,)``: ``edges`` is then ``(E, 3, 3)``, shared by the voxels
            (voxel ``i`` has ``edges[edge_index[i]]``, as all voxels of one grid do);
            their corners are projected once per camera and edge set.
        footprint: ``"exact"`` or ``"separable"`` (see the module's text), for
            ``rays_per_patch=None``; ignored by the sampled footprints.

    Returns:
        ``values (n, V, K*K)`` float32 in ``[0, 1]`` (largest entry 1 unless the
        voxel is not seen) and ``patches (n, V, K*K)`` flat patch indices (0 where
        the window leaves the detector, with value 0).
    """
    grid = (carm.height // patch_size, carm.width // patch_size)
    if edge_index is None:
        pixels, depth = _projected_corners(centre, edges, _float64_matrices(carm)[camera])
    else:
        pixels, depth = _projected_shared_corners(centre, edges, edge_index, camera, carm)
        edges = edges[edge_index] if rays_per_patch is not None else None  # the sampled footprints need them
    seen = (depth > 1e-6).all(-1) & (depth.mean(-1) < carm.sdd.to(torch.float64)[camera])  # (n, V)
    first, last, start = _patch_range(pixels, patch_size, grid)  # (n, V, 2) each
    steps = torch.arange(window, device=centre.device, dtype=torch.float64)
    window_rows, window_cols = start[..., 0, None] + steps, start[..., 1, None] + steps  # (n, V, K)
    # Patches on the detector that the projected corners' bounding box reaches into by more than
    # _BOX_MARGIN pixels: the perspective shadow lies inside that box, so nothing leaks past it, whatever
    # the paraxial approximation or rounding put there.
    first = torch.floor((pixels.amin(-2) + (0.5 + _BOX_MARGIN)) / patch_size)
    last = torch.floor((pixels.amax(-2) + (0.5 - _BOX_MARGIN)) / patch_size)
    lower, upper = first.clamp_min(0.0), torch.minimum(last, torch.tensor(grid, dtype=last.dtype, device=last.device) - 1)
    rows_in = (window_rows >= lower[..., 0, None]) & (window_rows <= upper[..., 0, None])
    cols_in = (window_cols >= lower[..., 1, None]) & (window_cols <= upper[..., 1, None])
    valid = rows_in[..., :, None] & cols_in[..., None, :] & seen[..., None, None]
    if rays_per_patch is None:
        centre_pixel, projected_edges = _paraxial(pixels)
        integrals = _exact_integrals(centre_pixel, projected_edges, window_rows, window_cols, patch_size,
                                     compact=not torch.compiler.is_compiling(), separable=footprint == "separable")
    else:
        integrals = _sampled_integrals(centre, edges, camera, carm, window_rows, window_cols, patch_size, rays_per_patch)
    integrals = torch.where(valid, integrals, 0.0).flatten(-2)  # (n, V, K*K)
    # A voxel barely on the detector is normalised by a share of its whole shadow, not by a sliver.
    whole = 1.0 if rays_per_patch is None else _sampled_shadow(edges, depth, camera, carm, patch_size, rays_per_patch)
    peak = torch.clamp_min(integrals.amax(-1, keepdim=True) - _SEEN_SHARE * whole, 0.0) + _SEEN_SHARE * whole
    values = torch.where(peak > 0, integrals / peak.clamp_min(1e-30), 0.0).to(torch.float32)
    patches = (window_rows[..., :, None] * grid[1] + window_cols[..., None, :]).flatten(-2).long()
    patches = torch.where(valid.flatten(-2), patches, 0)
    return values, patches


def _sampled_shadow(edges: Tensor, depth: Tensor, camera: Tensor, carm: CArm, patch_size: int, rays: int) -> Tensor:
    """``(n, V, 1)``: what the sampled integrals of a voxel's whole shadow add up to (mm of chord per ray,
    times rays per unit detector area, times the shadow's area): volume x magnification^2 / pixel area."""
    magnification = carm.sdd.to(torch.float64)[camera] / depth.mean(-1)  # (n, V)
    pixel = carm.pixel_spacing.to(torch.float64)[camera]
    volume = torch.linalg.det(edges).abs()[:, None]
    return (volume * (magnification / pixel) ** 2 * (rays / patch_size) ** 2)[..., None]


def _exact_integrals(centre: Tensor, edges: Tensor, window_rows: Tensor, window_cols: Tensor, patch_size: int,
                     compact: bool, separable: bool = False) -> Tensor:
    """``(n, V, K, K)`` patch integrals of the paraxial footprint (unnormalised, voxel volume 1).

    Patch integrals are differences of the quadrant integrals at the window's
    patch corners. Below the window's first boundaries there is nothing and
    past its last ones everything, so only the inner boundaries need volumes:
    one plane where a boundary crosses the shadow's bounding box in one axis,
    two planes where both do. ``compact`` evaluates those volumes only where a
    boundary crosses the shadow (data-dependent sizes, for the eager path);
    otherwise everywhere (static shapes, same values). ``separable`` takes each
    inner quadrant as the product of its two marginal shares instead (equal to the
    two-plane volume wherever a boundary misses the shadow).
    """
    n, views, window = window_rows.shape
    boundary = torch.arange(1, window, device=centre.device, dtype=torch.float64) * patch_size - 0.5
    row_offsets = ((window_rows[..., :1] * patch_size + boundary) - centre[..., 0, None]).to(torch.float32)
    col_offsets = ((window_cols[..., :1] * patch_size + boundary) - centre[..., 1, None]).to(torch.float32)
    edges = edges.to(torch.float32).reshape(n * views, 3, 2)
    row_offsets, col_offsets = row_offsets.reshape(n * views, -1), col_offsets.reshape(n * views, -1)
    rows, cols = edges[..., 0], edges[..., 1]
    reach = 0.5 * edges.abs().sum(1)  # (M, 2) half-extent of the shadow
    row_share = _marginal(rows, row_offsets, reach[:, 0, None], compact)  # (M, K-1): the share above each boundary
    col_share = _marginal(cols, col_offsets, reach[:, 1, None], compact)
    if separable:
        inner = row_share[:, :, None] * col_share[:, None, :]  # (M, K-1, K-1)
    else:
        inner = _corners(rows, cols, row_offsets, col_offsets, reach, row_share, col_share, compact)
    last_row = torch.cat([col_share, torch.ones_like(col_share[:, :1])], 1)[:, None]
    quadrant = torch.cat([torch.cat([inner, row_share[:, :, None]], 2), last_row], 1)
    quadrant = torch.nn.functional.pad(quadrant, (1, 0, 1, 0))  # nothing below the first boundaries
    patches = quadrant[:, 1:, 1:] - quadrant[:, :-1, 1:] - quadrant[:, 1:, :-1] + quadrant[:, :-1, :-1]
    # Differences of float32 volumes carry rounding errors of about 1e-6 of the voxel; smaller shares are zero.
    patches = torch.where(patches > _ROUNDING, patches, 0.0)
    return patches.reshape(n, views, window, window)


def _marginal(normal: Tensor, offsets: Tensor, reach: Tensor, compact: bool) -> Tensor:
    """``(M, I)`` share of the shadow below each boundary of one axis (0 before the shadow, 1 past it)."""
    outside = torch.where(offsets >= reach, 1.0, 0.0)
    crossing = offsets.abs() < reach
    if not compact:
        return torch.where(crossing, cube_volume_below_plane(normal, offsets), outside)
    which = torch.nonzero(crossing)  # (c, 2): voxel-view, boundary
    values = cube_volume_below_plane(normal[which[:, 0]], offsets[which[:, 0], which[:, 1], None])[:, 0]
    return outside.index_put((which[:, 0], which[:, 1]), values)


def _corners(rows: Tensor, cols: Tensor, row_offsets: Tensor, col_offsets: Tensor, reach: Tensor, row_share: Tensor,
             col_share: Tensor, compact: bool) -> Tensor:
    """``(M, I, J)`` share of the shadow in each inner quadrant; two-plane volumes where both boundaries cross it."""
    row_past = row_offsets >= reach[:, :1]  # the whole shadow lies above this row boundary
    col_past = col_offsets >= reach[:, 1:]
    from_marginals = torch.where(row_past[:, :, None], col_share[:, None, :],
                                 torch.where(col_past[:, None, :], row_share[:, :, None], 0.0))
    crossing = (row_offsets.abs() < reach[:, :1])[:, :, None] & (col_offsets.abs() < reach[:, 1:])[:, None, :]
    if not compact:
        return torch.where(crossing, cube_volume_below_planes(rows, cols, row_offsets, col_offsets), from_marginals)
    which = torch.nonzero(crossing)  # (c, 3): voxel-view, row boundary, col boundary
    voxel = which[:, 0]
    values = cube_volume_below_planes(rows[voxel], cols[voxel], row_offsets[voxel, which[:, 1], None],
                                      col_offsets[voxel, which[:, 2], None])[:, 0, 0]
    return from_marginals.index_put((voxel, which[:, 1], which[:, 2]), values)


def _sampled_integrals(centre: Tensor, edges: Tensor, camera: Tensor, carm: CArm, window_rows: Tensor,
                       window_cols: Tensor, patch_size: int, rays: int) -> Tensor:
    """``(n, V, K, K)`` summed chord lengths (mm) of ``rays x rays`` rays per window patch.

    Computed in each voxel's own index space (its box is ``[0, 1]^3``), broadcast over
    ``(V, Kr, Kc, mr, mc, n)`` with voxels last so the elementwise loops run over long rows.
    """
    n = centre.shape[0]
    dtype = torch.float32
    sub = (torch.arange(rays, device=centre.device, dtype=torch.float64) + 0.5) * (patch_size / rays) - 0.5
    pixel_rows = window_rows[..., :, None] * patch_size + sub  # (n, V, K, m)
    pixel_cols = window_cols[..., :, None] * patch_size + sub
    # The detector as an affine map of pixel coordinates, per view (the pixel-centre convention of CArm).
    wide = carm.to(dtype=torch.float64)
    frame = wide.detector_points(torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))[camera]  # (n, V, 3, 3)
    origin, step_row, step_col = frame[..., 0, :], frame[..., 1, :] - frame[..., 0, :], frame[..., 2, :] - frame[..., 0, :]
    source = wide.source_positions()[camera]  # (n, V, 3)
    inverse = torch.linalg.inv(edges)  # (n, 3, 3) world vectors -> voxel index vectors
    corner = centre - 0.5 * edges.sum(-1)  # world position of the voxel's low corner

    def index_vector(world: Tensor) -> Tensor:  # (n, V, 3) -> voxel index units
        return (inverse[:, None] @ world[..., None])[..., 0]

    base = origin - source  # direction = base + row * step_row + col * step_col (source -> pixel)
    base_index, row_index, col_index = (index_vector(t).to(dtype) for t in (base, step_row, step_col))
    origin_index = index_vector(source - corner[:, None]).to(dtype)  # source relative to the box [0, 1]^3
    rows6 = pixel_rows.to(dtype).permute(1, 2, 3, 0).contiguous()[:, :, None, :, None, :]  # (V, Kr, 1, mr, 1, n)
    cols6 = pixel_cols.to(dtype).permute(1, 2, 3, 0).contiguous()[:, None, :, None, :, :]  # (V, 1, Kc, 1, mc, n)

    def scalar(values: Tensor) -> Tensor:  # (n, V) -> (V, 1, 1, 1, 1, n)
        return values.transpose(0, 1).contiguous()[:, None, None, None, None, :]

    base_w, row_w, col_w = (t.to(dtype) for t in (base, step_row, step_col))
    # |direction| in world mm (the detector axes are orthogonal).
    world_length = (
        scalar((base_w * base_w).sum(-1))
        + cols6 * (2 * scalar((base_w * col_w).sum(-1)) + cols6 * scalar((col_w * col_w).sum(-1)))
        + rows6 * (2 * scalar((base_w * row_w).sum(-1)) + rows6 * scalar((row_w * row_w).sum(-1)))
    ).sqrt_()
    t_enter = t_exit = None
    for axis in range(3):
        component = scalar(base_index[..., axis]) + cols6 * scalar(col_index[..., axis]) + rows6 * scalar(row_index[..., axis])
        component = torch.where(component.abs() < 1e-9, torch.full_like(component, 1e-9), component)
        step = component.reciprocal_()  # t per unit index along this axis
        low = step * scalar(-origin_index[..., axis])  # t where the ray crosses the box's low face on this axis
        high = low + step
        near, far = torch.minimum(low, high), torch.maximum(low, high)
        t_enter = near if t_enter is None else torch.maximum(t_enter, near)
        t_exit = far if t_exit is None else torch.minimum(t_exit, far)
    length = (t_exit.clamp_max_(1.0) - t_enter.clamp_min_(0.0)).clamp_min_(0.0).mul_(world_length)
    return length.sum((3, 4)).permute(3, 0, 1, 2).reshape(n, -1, window_rows.shape[-1], window_cols.shape[-1])
