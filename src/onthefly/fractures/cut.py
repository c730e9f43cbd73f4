"""Applying fractures: the cut, the fragment motion and the gap, batched over samples on the crops' device.

Per sample, in world millimetres relative to the bone point ``p`` (``x`` the
offset of a voxel centre from ``p``, ``a`` the bone's axis, :func:`bone_axis`):

* the **bone piece** is the bone holding ``p`` (:func:`bone_component`) within
  ``reach`` of ``p``;
* **cut** ``c`` is the plane through ``p`` (cut 0) or through ``p + L a`` (cut 1,
  comminuted only) whose normal ``n_c`` leans ``obliquity_c`` from ``a``; with
  ``s_c`` the signed distance to it, the piece with ``s_0 >= 0`` is lifted out
  (its voxels become soft tissue, or keep a lower value they had);
* the **fragments** are the lifted piece beyond each cut's gap: fragment 0
  has ``s_0 >= gap_0`` (and, comminuted, ``s_1 < 0``), fragment 1 has
  ``s_1 >= gap_1``; so a slab ``gap_c`` thick behind each cut stays soft tissue;
* each fragment moves as a rigid body ``M(y) = h + R (y - h) + t``: rotation
  ``R`` by ``angulation_c`` about a hinge axis in its cut plane through ``h`` (where
  ``a`` meets the fragment's face), then translation ``t`` across ``a``. The motion
  is rigid within ``reach / 2`` of ``p`` along the axis and fades linearly to none
  at ``reach`` (and near the sphere of radius ``reach``), so the bone stays whole
  where the box ends and each cross-section moves as one. Each output voxel
  reads the fragment at ``x + f(x) (M^-1(x) - x)`` (trilinear resampling of the
  intact box), ``f`` the fade; where a moved fragment covers a voxel in part it
  mixes with what lies beneath.

Only a box of ``window`` voxels around ``p`` is computed and written back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..volume import MU_WATER_PER_MM
from .bone import bone_axis, bone_component, bone_weight_reader, choose_bone_points, choose_kind_points
from .config import FractureConfig, attenuation_of, fracture_window
from .draw import FractureParams
from .kinds import SLOTS, KindTables, kind_tables

__all__ = ["FractureResult", "apply_fractures"]

_LATTICE_MM = 4.0
"""Edge (mm) of the cells a bone point is first chosen among (:func:`~onthefly.fractures.bone.choose_bone_points`)."""


@dataclass
class FractureResult:
    """What :func:`apply_fractures` returns (tensors on the crops' device).

    Attributes:
        attenuation: ``(B, D, H, W)`` fractured crops, 1/mm (a new tensor;
            samples without a fracture equal the input).
        fractured: ``(B,)`` bool, the label: drawn and the crop holds a bone point.
        center: ``(B, 3)`` world mm of the fracture: the centroid of the change it
            makes (weighted by ``|change|``), NaN where not fractured.
        center_index: ``(B, 3)`` long voxel index of the bone point (on cut 0) in the crop (0 without bone).
        axis: ``(B, 3)`` unit vector, world frame: the bone's axis at the bone point.
        box_start: ``(B, 3)`` long, first voxel of the changed box in the crop.
        box_change: ``(B, d, h, w)`` fractured minus intact attenuation in the box, 1/mm.
        box_affine: ``(B, 4, 4)`` the box's voxel-to-world matrices, mm.
        changed: ``(B,)`` long, how many voxels changed.
        choice: ``(B,)`` long, the candidate each sample used (see :class:`FractureParams`).
        contrast: ``(B, V)`` largest change of the line integrals in each view
            (:func:`fracture_contrast`), when the visibility step ran; else ``None``.
        invisible: ``(B,)`` bool, fractured samples whose every candidate stayed
            below ``min_visibility`` (they keep their most visible one); ``None`` without that step.
        kind: ``(B,)`` long index into ``config.kind_names`` of the fracture's kind; -1 for the generic
            fracture (no kind's site in the crop) and where not fractured.
        severity: ``(B,)`` long index into :data:`~onthefly.fractures.config.SEVERITY_NAMES`; -1 where ``kind`` is.
        shift: ``(B, 3)`` world mm, the translation of the (distal) fragment's motion, shortening included.
        angulation: ``(B,)`` rad, that fragment's rotation about its hinge.
        normal: ``(B, 3)`` unit normal of the first cut (the fragment lies on its positive side), world frame.
    """

    attenuation: Tensor
    fractured: Tensor
    center: Tensor
    center_index: Tensor
    axis: Tensor
    box_start: Tensor
    box_change: Tensor
    box_affine: Tensor
    changed: Tensor
    choice: Tensor
    contrast: Tensor | None = None
    invisible: Tensor | None = None
    kind: Tensor | None = None
    severity: Tensor | None = None
    shift: Tensor | None = None
    angulation: Tensor | None = None
    normal: Tensor | None = None


@dataclass
class _Box:
    """The box of voxels around each bone point."""

    index: tuple[Tensor, Tensor, Tensor, Tensor]  # advanced index of the box in the crops
    start: Tensor  # (B, 3) long, first voxel of the box in the crop
    seed: Tensor  # (B, 3) long, the bone point's index in the box
    original: Tensor  # (B, d, h, w) the intact box

    @property
    def offsets(self) -> list[Tensor]:
        """Three ``(B, n_a)`` voxel offsets from the bone point along the box's axes (the box's dtype)."""
        return [(torch.arange(n, device=self.seed.device) - self.seed[:, a, None]).to(self.original.dtype)
                for a, n in enumerate(self.original.shape[1:])]


def _check_inputs(attenuation, affine, params, bone, labels) -> None:
    if not isinstance(attenuation, Tensor) or attenuation.dim() != 4 or not attenuation.is_floating_point():
        shape = tuple(attenuation.shape) if isinstance(attenuation, Tensor) else type(attenuation).__name__
        raise ValueError(f"attenuation: expected a float tensor of shape (B, D, H, W), got {shape}")
    batch = attenuation.shape[0]
    if not isinstance(affine, Tensor) or tuple(affine.shape) != (batch, 4, 4):
        shape = tuple(affine.shape) if isinstance(affine, Tensor) else type(affine).__name__
        raise ValueError(f"affine: expected shape ({batch}, 4, 4), got {shape}")
    if not isinstance(params, FractureParams):
        raise TypeError(f"params: expected FractureParams (from draw_fractures), got {type(params).__name__}")
    if params.batch_size != batch:
        raise ValueError(f"params: expected {batch} samples (the crops'), got {params.batch_size}")
    for name, value in (("bone", bone), ("labels", labels)):
        if value is not None and (not isinstance(value, Tensor) or value.shape != attenuation.shape):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name}: expected the shape of attenuation {tuple(attenuation.shape)}, got {shape}")


def _gather_box(attenuation: Tensor, rows: Tensor, center_index: Tensor, window: Sequence[int]) -> _Box:
    """The box of ``window`` voxels around the bone point of crops ``rows (M,)``, shifted to lie inside the crop."""
    dims = attenuation.shape[1:]
    device = attenuation.device
    axes, starts = [], []
    for axis, (size, extent) in enumerate(zip(window, dims)):
        size = min(int(size), extent)
        start = (center_index[:, axis] - size // 2).clamp(0, extent - size)
        axes.append(start[:, None] + torch.arange(size, device=device))  # (B, size)
        starts.append(start)
    index = (rows[:, None, None, None], axes[0][:, :, None, None], axes[1][:, None, :, None], axes[2][:, None, None, :])
    start = torch.stack(starts, -1)
    return _Box(index=index, start=start, seed=center_index - start, original=attenuation[index])


def _separable(first: Tensor, second: Tensor, third: Tensor) -> Tensor:
    """``first[a] + second[b] + third[c]`` over the box, ``(B, d, h, w)``, from per-axis ``(B, n)`` terms."""
    return first[:, :, None, None] + second[:, None, :, None] + third[:, None, None, :]


def _linear_field(box: _Box, coefficients: Tensor, constant: Tensor | None = None) -> Tensor:
    """``coefficients . offset + constant`` over the box, ``(B, d, h, w)`` (``coefficients (B, 3)`` per voxel step)."""
    terms = [o * coefficients[:, a, None].to(o.dtype) for a, o in enumerate(box.offsets)]
    if constant is not None:
        terms[0] = terms[0] + constant.to(terms[0].dtype)[:, None]
    return _separable(*terms)


def _distance(box: _Box, linear: Tensor) -> Tensor:
    """``|x|`` over the box, mm: the quadratic form of ``linear^T linear`` as three pairwise tables."""
    gram = (linear.transpose(1, 2) @ linear).to(box.original.dtype)
    o0, o1, o2 = box.offsets
    g = lambda a, b: gram[:, a, b, None, None]
    first = g(0, 0) * o0[:, :, None] ** 2 + 2 * g(0, 1) * o0[:, :, None] * o1[:, None, :] + g(1, 1) * o1[:, None, :] ** 2
    second = 2 * g(0, 2) * o0[:, :, None] * o2[:, None, :] + g(2, 2) * o2[:, None, :] ** 2
    third = 2 * g(1, 2) * o1[:, :, None] * o2[:, None, :]
    square = first[..., None] + second[:, :, None, :] + third[:, None, :, :]
    return square.clamp_min_(0).sqrt_()


def _frame(axis: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit vectors completing ``axis (B, 3)`` to a right-handed orthonormal frame."""
    helper = torch.eye(3, dtype=axis.dtype, device=axis.device)[axis.abs().argmin(-1)]  # the least aligned world axis
    first = F.normalize(torch.linalg.cross(axis, helper), dim=-1)
    return first, torch.linalg.cross(axis, first)


def _across(frame: tuple[Tensor, Tensor], azimuth: Tensor) -> Tensor:
    """Unit vectors ``(B, 2, 3)`` across the axis at ``azimuth (B, 2)`` rad."""
    first, second = frame
    return torch.cos(azimuth)[..., None] * first[:, None] + torch.sin(azimuth)[..., None] * second[:, None]


def _rotation(axis: Tensor, angle: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` by ``angle`` about unit ``axis (..., 3)`` (Rodrigues)."""
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(*axis.shape, 3)
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device)
    sin, cos = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    return eye + sin * cross + (1 - cos) * (cross @ cross)


def _cuts(axis: Tensor, params: FractureParams) -> tuple[Tensor, Tensor]:
    """Each cut's unit normal ``(B, 2, 3)`` and its offset ``(B, 2)``: cut ``c`` is ``n_c . x = offset_c``.

    Cut 0 passes through the bone point, cut 1 through ``fragment_length * axis``.
    """
    obliquity = params.obliquity[:, 0]
    normal = torch.cos(obliquity)[..., None] * axis[:, None] + torch.sin(obliquity)[..., None] * _across(
        _frame(axis), params.tilt_direction[:, 0])
    length = params.fragment_length[:, 0, None]  # (B, 1)
    return normal, torch.cat([torch.zeros_like(length), length * (normal[:, 1] * axis).sum(-1, keepdim=True)], -1)


def _motions(axis: Tensor, normal: Tensor, params: FractureParams, pull: Tensor | None = None,
             shortening: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Each fragment's rigid motion: hinge ``h (B, 2, 3)``, rotation ``R (B, 2, 3, 3)``, translation ``t (B, 2, 3)``.

    The hinge is where the axis meets the fragment's face (``s_c = gap_c``); the
    hinge axis is the drawn direction across the bone, turned into the cut plane.
    Where ``pull (B, 3)`` (world) has a part across the axis, fragment 0 is
    displaced towards it and angulated so that its far end moves towards it;
    ``shortening (B,)`` mm moves fragment 0 back along the axis.
    """
    frame = _frame(axis)
    cosine = (normal * axis[:, None]).sum(-1)  # cos(obliquity) > 0
    start = torch.cat([torch.zeros_like(params.fragment_length[:, 0, None]), params.fragment_length[:, 0, None]], -1)
    hinge = (start + params.gap[:, 0] / cosine)[..., None] * axis[:, None]
    hinge_axis = _across(frame, params.hinge_direction[:, 0])
    across = _across(frame, params.translation_direction[:, 0])
    if pull is not None:
        towards = pull.to(axis.dtype) - (pull.to(axis.dtype) * axis).sum(-1, keepdim=True) * axis
        pulled = (towards.norm(dim=-1, keepdim=True) > 1e-6)[:, None]  # (B, 1, 1)
        towards = F.normalize(towards, dim=-1, eps=1e-12)
        first = torch.tensor([True, False], device=axis.device).view(1, 2, 1)
        across = torch.where(pulled & first, towards[:, None], across)
        hinge_axis = torch.where(pulled & first, torch.linalg.cross(axis, towards)[:, None], hinge_axis)
    hinge_axis = F.normalize(hinge_axis - (hinge_axis * normal).sum(-1, keepdim=True) * normal, dim=-1)
    rotation = _rotation(hinge_axis, params.angulation[:, 0])
    translation = params.translation[:, 0, :, None] * across
    if shortening is not None:
        back = torch.stack([-shortening.to(axis.dtype)[:, None] * axis, torch.zeros_like(axis)], 1)
        translation = translation + back
    return hinge, rotation, translation


def _inverse(matrix: Tensor) -> Tensor:
    """Inverses of ``(B, 3, 3)`` matrices by their adjugate (no LAPACK call, no error check: no host sync)."""
    rows = matrix.unbind(-2)
    adjugate = torch.stack([torch.linalg.cross(rows[1], rows[2]), torch.linalg.cross(rows[2], rows[0]),
                            torch.linalg.cross(rows[0], rows[1])], -1)
    determinant = (rows[0] * adjugate[..., 0]).sum(-1)
    return adjugate / determinant[:, None, None]


def _motion_in_steps(linear: Tensor, hinge: Tensor, rotation: Tensor, translation: Tensor) -> tuple[Tensor, Tensor]:
    """The inverse motion as a voxel-step field ``P o + q`` (``P (B, 3, 3)``, ``q (B, 3)``).

    A voxel at offset ``o`` (``x = A o``) reads the fragment at ``M^-1(x) = h + R^T (x - h - t)``,
    that is at offset ``o + P o + q`` with ``P = A^-1 R^T A - I``, ``q = A^-1 (h - R^T (h + t))``.
    """
    inverse = _inverse(linear)
    back = rotation.transpose(-1, -2)
    matrix = inverse @ back @ linear - torch.eye(3, dtype=linear.dtype, device=linear.device)
    shift = (inverse @ (hinge[..., None] - back @ (hinge + translation)[..., None]))[..., 0]
    return matrix, shift


def _source_coordinates(box: _Box, fade: Tensor, matrix: Tensor, shift: Tensor) -> list[Tensor]:
    """``grid_sample`` coordinates, one ``(B, d, h, w)`` field per box axis (D, H, W), where each voxel
    reads the fragment: offset ``o + fade (P o + q)``, normalised to ``[-1, 1]`` over the box."""
    coordinates = []
    for c, (offset, size) in enumerate(zip(box.offsets, box.original.shape[1:])):
        half = max(size - 1, 1) / 2
        here = ((offset + box.seed[:, c, None].to(offset.dtype)) / half - 1).view(-1, *[size if a == c else 1
                                                                                         for a in range(3)])
        moved = _linear_field(box, matrix[:, c] / half, shift[:, c] / half)
        coordinates.append(torch.addcmul(here, fade, moved))
    return coordinates


def _fragment(piece: Tensor, side: Sequence[Tensor], params: FractureParams) -> tuple[Tensor, Tensor]:
    """The lifted piece (``s_0 >= 0``) and the fragments beyond the gaps, ``(B, d, h, w)`` bool each.

    ``side``: each voxel's signed distance to cut 0 and cut 1, mm. The
    fragments are the lifted piece past gap 0, less gap 1 (comminuted only).
    """
    gap = params.gap[:, 0].to(side[0].dtype)
    second_gap = torch.where(params.comminuted[:, 0], gap[:, 1], 0.0).view(-1, 1, 1, 1)  # none: an empty slab
    lifted = piece & (side[0] >= 0)
    in_second_gap = (side[1] >= 0) & (side[1] < second_gap)
    fragment = piece & (side[0] >= gap[:, 0].view(-1, 1, 1, 1)) & ~in_second_gap
    return lifted, fragment


def _fade(distance: Tensor, along: Tensor, reach: float) -> Tensor:
    """How much of its motion each voxel takes, in ``[0, 1]``: all of it within ``reach / 2`` of the bone point
    along the axis (``along``, mm), none at ``reach``; and none from ``reach`` on, fading from ``3 reach / 4``
    (``distance`` from the bone point, mm), so that a whole cross-section moves together."""
    axial = ((reach - along.abs()) / (reach / 2)).clamp_(0, 1)
    return torch.minimum(axial, ((reach - distance) / (reach / 4)).clamp_(0, 1))


def _move_fragments(original: Tensor, lifted: Tensor, fragment: Tensor, coordinates: Sequence[Tensor],
                    soft: float) -> Tensor:
    """The box with the lifted piece turned to soft tissue and the fragments drawn at their moved places.

    Each voxel reads the fragments at ``coordinates`` (per box axis); where the
    moved fragments cover it in part, they mix with the soft tissue or bone beneath.
    """
    base = torch.where(lifted, original.clamp_max(soft), original)
    mask = fragment.to(original.dtype)
    layers = torch.stack([original * mask, mask], 1)
    grid = torch.stack(coordinates[::-1], -1)  # grid_sample wants (x, y, z) = (W, H, D)
    sampled = F.grid_sample(layers, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return torch.addcmul(sampled[:, 0], base, 1 - sampled[:, 1])


def apply_fractures(
    attenuation: Tensor,
    affine: Tensor,
    params: FractureParams,
    *,
    config: FractureConfig = FractureConfig(),
    bone: Tensor | None = None,
    labels: Tensor | None = None,
    table: Tensor | None = None,
    mu_water: float = MU_WATER_PER_MM,
    window: Sequence[int] | None = None,
    choice: Tensor | None = None,
    samples: Tensor | None = None,
    within: float | None = None,
    inplace: bool = False,
    geometry: Tensor | None = None,
) -> FractureResult:
    """Cut the drawn fractures into a batch of crops, all samples at once, on their device.

    See the module's description for the model. A sample is fractured where
    ``params.drawn`` and its crop has a bone point (positive ``bone`` weight).
    No host reads, no loop over samples, shapes fixed by the inputs' shapes
    (compile-clean at fixed shapes); use under ``torch.no_grad()``.

    Args:
        attenuation: ``(B, D, H, W)`` crops, 1/mm. Not modified unless ``inplace``.
        affine: ``(B, 4, 4)`` crop voxel-to-world matrices, mm.
        params: :func:`draw_fractures` output (host or device tensors).
        config: the settings (``reach``, ``bone_hu``, ``soft_tissue_hu``).
        bone: ``(B, D, H, W)`` bone-point weights or a bool mask; default: from
            ``labels`` and ``table`` (:func:`bone_weight_reader`), else voxels above ``config.bone_hu``.
        labels: ``(B, D, H, W)`` integer label crops: the bone piece is the bone
            point's label; ``None``: the dense voxels connected to the bone point.
        table: with ``labels``: per-label weights ``(L,)`` or ``(B, L)`` (:func:`bone_weight_table`).
        mu_water: attenuation of water, 1/mm.
        window: box size ``(d, h, w)`` in voxels (default :func:`fracture_window`
            from the affine's spacing, read on the host: pass it on an accelerator).
        choice: ``(M,)`` long candidate per cut sample (default: candidate 0).
        samples: ``(M,)`` long, the crops to cut (default all). Choose them on the
            host (for example the drawn ones, ``params.drawn.nonzero()``): the
            work then scales with ``M``, and shapes stay fixed by host values.
        inplace: write the fractures into ``attenuation`` itself (saves a copy of
            the crops; ``result.attenuation`` is then ``attenuation``).
        geometry: with ``labels``: ``(B, L, 5 + n)`` per crop's CT the bone geometry of
            :class:`~onthefly.fractures.bone.BoneGeometries` (``n = len(config.kind_names)``): each sample
            then takes a fracture kind whose site the crop holds (``params.kind_draw``), else the generic
            fracture. ``None``: generic fractures only.

    Returns:
        a :class:`FractureResult`.

    Example:
        >>> crops = torch.full((2, 40, 40, 40), 0.02); crops[:, :, 16:24, 16:24] = 0.04  # a bone rod along D
        >>> affine = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
        >>> config = FractureConfig(probability=1.0, reach=12.0)
        >>> from onthefly.fractures import draw_fractures
        >>> params = draw_fractures(config, 2, torch.Generator().manual_seed(0))
        >>> result = apply_fractures(crops, affine, params, config=config)
        >>> result.attenuation.shape, result.fractured.tolist(), result.box_change.shape
        (torch.Size([2, 40, 40, 40]), [True, True], torch.Size([2, 25, 25, 25]))
    """
    return FractureCutter(attenuation, affine, params, config=config, bone=bone, labels=labels, table=table,
                          mu_water=mu_water, window=window, samples=samples, within=within,
                          geometry=geometry).cut(choice).result(inplace=inplace)


class FractureCutter:
    """The set-up shared by every candidate of a batch: inputs checked, bone points of all candidates chosen.

    ``FractureCutter(...).cut(choice)`` cuts one candidate per sample (a :class:`CutBoxes`);
    :func:`apply_fractures` is ``FractureCutter(...).cut(choice).result()``. The
    visibility step cuts candidate after candidate from one set-up and writes
    back only the chosen boxes. Arguments as :func:`apply_fractures`.
    """

    def __init__(self, attenuation: Tensor, affine: Tensor, params: FractureParams, *, config: FractureConfig,
                 bone: Tensor | None = None, labels: Tensor | None = None, table: Tensor | None = None,
                 mu_water: float = MU_WATER_PER_MM, window: Sequence[int] | None = None,
                 samples: Tensor | None = None, within: float | None = None, geometry: Tensor | None = None) -> None:
        _check_inputs(attenuation, affine, params, bone, labels)
        kinds = len(config.kind_weights)
        if geometry is not None and (labels is None or params.kind_draw is None):
            raise ValueError("geometry: needs labels and parameters drawn with kinds (draw_fractures)")
        if geometry is not None and (geometry.dim() != 3 or geometry.shape[0] != attenuation.shape[0]
                                     or geometry.shape[2] != 5 + kinds):
            raise ValueError(f"geometry: expected shape ({attenuation.shape[0]}, L, {5 + kinds}) "
                             f"(BoneGeometries.rows), got {tuple(geometry.shape)}")
        if window is None:
            window = fracture_window(config, affine[:, :3, :3].detach().double().cpu().norm(dim=1).amin(0))
        window = tuple(int(w) for w in window)
        if len(window) != 3 or min(window) < 1:
            raise ValueError(f"window: expected three positive voxel counts, got {window!r}")
        device = attenuation.device
        batch = attenuation.shape[0]
        rows = torch.arange(batch, device=device) if samples is None else samples.to(device=device, dtype=torch.long)
        if rows.dim() != 1:
            raise ValueError(f"samples: expected a 1-D index of crops, got shape {tuple(rows.shape)}")
        self.attenuation, self.affine, self.rows = attenuation, affine.to(device), rows
        self.params = params.to(device) if samples is None else params.to(device).rows(rows)
        self.labels, self.config, self.window = labels, config, window
        self.threshold = attenuation_of(config.bone_hu, mu_water)
        self.soft = attenuation_of(config.soft_tissue_hu, mu_water)
        if bone is not None:
            read = lambda index: bone[index].float()  # noqa: E731
        else:
            read = bone_weight_reader(attenuation, config=config, labels=labels, table=table, mu_water=mu_water)
        if within is not None:
            if isinstance(within, bool) or not isinstance(within, (int, float)) or not within > 0:
                raise ValueError(f"within: expected a distance > 0 (mm) or None, got {within!r}")
            read = _within(read, self.affine, attenuation.shape[1:], float(within))
        # bone points on a lattice of about _LATTICE_MM (the voxel size follows from the box: reach / half its width)
        lattice = max(1, round(_LATTICE_MM * (min(window) - 1) / (2 * config.reach)))
        self.geometry = None if geometry is None or kinds == 0 else geometry.to(device)
        if self.geometry is None and self.params.candidates > config.candidates:  # kinds' redraws: not here
            self.params = self.params.first(config.candidates)
        self.kind = torch.full((len(rows), self.params.candidates), -1, dtype=torch.long, device=device)
        self.shortening = torch.zeros(len(rows), self.params.candidates, dtype=torch.float64, device=device)
        self.pull = torch.zeros(len(rows), self.params.candidates, 3, dtype=torch.float64, device=device)
        if len(rows) == 0:  # nothing to cut
            self.points = torch.zeros(0, self.params.candidates, 3, dtype=torch.long, device=device)
            self.has_bone = torch.zeros(0, dtype=torch.bool, device=device)
            return
        local = lambda index: read((rows[index[0]], *index[1:]))  # noqa: E731
        shape = (len(rows), *attenuation.shape[1:])
        if self.geometry is None:
            self.points, self.has_bone = choose_bone_points(local, shape, self.params.position, lattice=lattice)
            return
        tables = kind_tables(config.kind_weights)
        sites = _site_reader(labels, self.affine, self.geometry, tables, within, attenuation.shape[1:])
        self.points, self.has_bone, self.kind = choose_kind_points(
            local, lambda index: sites((rows[index[0]], *index[1:])), shape, self.params.position,
            self.params.kind_draw, tables.weights, lattice=lattice)
        self.params, self.shortening, self.pull = _resolve_kinds(self.params, self.kind, tables)

    def cut(self, choice: Tensor | None = None) -> "CutBoxes":
        """Cut candidate ``choice (M,)`` (default 0) of every cut sample into its box (nothing written back yet)."""
        if choice is None:
            choice = torch.zeros(len(self.rows), dtype=torch.long, device=self.attenuation.device)
        center_index = self.points.gather(1, choice.view(-1, 1, 1).expand(-1, 1, 3))[:, 0]
        chosen = self.params.select(choice)
        fractured = chosen.drawn & self.has_bone
        kind = torch.where(fractured, self.kind.gather(1, choice[:, None])[:, 0], -1)
        severity = (torch.where(kind >= 0, chosen.severity[:, 0], -1) if chosen.severity is not None
                    else torch.full_like(kind, -1))
        if self.geometry is not None and len(self.rows) > 0:
            center_index = _centre_of_section(self, center_index, kind)
        box = _gather_box(self.attenuation, self.rows, center_index, self.window)
        if len(self.rows) == 0:
            axis = torch.zeros(0, 3, dtype=self.affine.dtype, device=self.affine.device)
            return CutBoxes(self.attenuation, self.affine, self.rows, box, box.original, axis, center_index, fractured,
                            choice, kind, severity, axis, axis[:, 0], axis)
        box_labels = None if self.labels is None else self.labels[box.index]
        affine = self.affine[self.rows]
        motion = None
        if self.geometry is not None:
            label = self.labels[self.rows, center_index[:, 0], center_index[:, 1], center_index[:, 2]].long()
            label = torch.where((label >= 0) & (label < self.geometry.shape[1]), label, 0)
            distal = self.geometry[self.rows, label, :3]
            motion = _KindMotion(distal=torch.where(kind[:, None] >= 0, distal, 0.0),
                                 pull=self.pull.gather(1, choice.view(-1, 1, 1).expand(-1, 1, 3))[:, 0],
                                 shortening=self.shortening.gather(1, choice[:, None])[:, 0])
        out, axis, normal, shift = _cut_box(box, affine, chosen, box_labels, config=self.config,
                                            threshold=self.threshold, soft=self.soft, kind=motion)
        out = torch.where(fractured.view(-1, 1, 1, 1), out, box.original)
        return CutBoxes(self.attenuation, self.affine, self.rows, box, out, axis, center_index, fractured, choice,
                        kind, severity, shift, chosen.angulation[:, 0, 0], normal)


def _centre_of_section(cutter: "FractureCutter", center_index: Tensor, kind: Tensor) -> Tensor:
    """The bone points of kind fractures moved to the centroid of their bone's cross-section (the voxels of the
    point's label within a voxel of the plane across the bone's axis through the point), where that centroid is a
    voxel of the same label; so the cut crosses the whole section within ``reach`` of the point."""
    box = _gather_box(cutter.attenuation, cutter.rows, center_index, cutter.window)
    labels = cutter.labels[box.index]
    label = labels[torch.arange(len(cutter.rows), device=labels.device), box.seed[:, 0], box.seed[:, 1], box.seed[:, 2]]
    ids = torch.where((label >= 0) & (label < cutter.geometry.shape[1]), label.long(), 0)
    axis = cutter.geometry[cutter.rows, ids, :3]
    linear = cutter.affine[cutter.rows, :3, :3].to(axis.dtype)
    along = _linear_field(box, (linear.transpose(1, 2) @ axis[..., None])[..., 0].to(box.original.dtype))
    section = ((labels == label.view(-1, 1, 1, 1)) & (along.abs() <= _section_half_width(linear))).to(along.dtype)
    offsets = box.offsets
    mass = section.sum((1, 2, 3)).clamp_min(1.0)
    mean = torch.stack([(section.sum(tuple(b + 1 for b in range(3) if b != a)) * offsets[a]).sum(1) for a in range(3)],
                       -1) / mass[:, None]
    moved = (center_index + mean.round().long()).clamp_min(0)
    moved = torch.minimum(moved, torch.tensor(cutter.attenuation.shape[1:], device=moved.device) - 1)
    same = cutter.labels[cutter.rows, moved[:, 0], moved[:, 1], moved[:, 2]] == label
    return torch.where(((kind >= 0) & same)[:, None], moved, center_index)


def _section_half_width(linear: Tensor) -> Tensor:
    """Half the thickness (mm) of the slab a cross-section is measured in: the largest voxel edge, ``(B, 1, 1, 1)``."""
    return linear.norm(dim=1).amax(1).view(-1, 1, 1, 1)


def _ball(affine: Tensor, shape: Sequence[int], radius: float) -> Callable[[tuple], Tensor]:
    """Whether voxels (an advanced index ``(crop, d, h, w)``) lie within ``radius`` (mm) of their crop's centre."""
    gram = affine[:, :3, :3].transpose(1, 2) @ affine[:, :3, :3]  # (B, 3, 3)

    def inside(index: tuple) -> Tensor:
        offsets = [index[a + 1] - (shape[a] - 1) / 2 for a in range(3)]
        g = lambda a, b: gram[:, a, b][index[0]].to(offsets[0].dtype)  # noqa: E731
        return sum(g(a, b) * offsets[a] * offsets[b] for a in range(3) for b in range(3)) <= radius**2

    return inside


def _within(read: Callable[[tuple], Tensor], affine: Tensor, shape: Sequence[int], radius: float
            ) -> Callable[[tuple], Tensor]:
    """``read`` with the weights of voxels farther than ``radius`` (mm) from their crop's centre set to 0."""
    inside = _ball(affine, shape, radius)
    return lambda index: read(index) * inside(index)


def _site_reader(labels: Tensor, affine: Tensor, geometry: Tensor, tables: KindTables, within: float | None,
                 shape: Sequence[int]) -> Callable[[tuple], Tensor]:
    """Per voxel (an advanced index ``(crop, d, h, w)``) and kind, 1 where the voxel lies on the kind's site:
    its label is one of the kind's bones (``geometry``'s flags) and its distance from the bone's distal end
    along the bone's axis (mm, or a share of the length) lies in the kind's window; ``(..., n)`` float."""
    site = tables.site.to(device=geometry.device)
    in_length = tables.site_in_length.to(geometry.device)
    linear, origin = affine[:, :3, :3].to(geometry.dtype), affine[:, :3, 3].to(geometry.dtype)
    inside = None if within is None else _ball(affine, shape, within)

    def read(index: tuple) -> Tensor:
        ids = labels[index].long()
        ids = torch.where((ids >= 0) & (ids < geometry.shape[1]), ids, 0)
        rows = index[0].expand_as(ids)
        row = geometry[rows, ids]  # (..., 5 + n)
        axis = row[..., :3]
        # x . axis = sum_c (A[:, c] . axis) i_c + origin . axis, with the voxel's index i
        step = (linear[rows] * axis[..., :, None]).sum(-2)  # (..., 3): per index step, mm along the axis
        voxel = [index[a + 1].expand_as(ids).to(geometry.dtype) for a in range(3)]
        along = sum(step[..., a] * voxel[a] for a in range(3)) + (origin[rows] * axis).sum(-1)
        distance = row[..., 3] - along  # from the distal end, mm
        coordinate = torch.where(in_length, distance[..., None] / row[..., 4:5].clamp_min(1e-6), distance[..., None])
        on_site = (row[..., 5:] > 0.5) & (coordinate >= site[:, 0]) & (coordinate <= site[:, 1])
        if inside is not None:
            on_site = on_site & inside(index)[..., None]
        return on_site.float()

    return read


def _cut_box(box: _Box, affine: Tensor, params: FractureParams, box_labels: Tensor | None, *,
             config: FractureConfig, threshold: float, soft: float, kind: "_KindMotion | None" = None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fractured box ``(B, d, h, w)``, the bone's axis ``(B, 3)``, cut 0's normal ``(B, 3)`` and fragment 0's
    translation ``(B, 3)`` (every sample; the caller keeps the fractured).

    One resampling serves both fragments: a voxel reads fragment 1 (comminuted
    only) where its source under fragment 1's motion lies past the middle of
    gap 1, else fragment 0. With ``kind``, the axis points distally where its
    ``distal`` direction is set (so fragment 0 is the distal one), which
    ``pull`` and ``shortening`` then move.
    """
    linear = affine[:, :3, :3]
    distance = _distance(box, linear)
    steps = math.ceil(max(box.original.shape[1:]) / 2)
    piece = bone_component(box.original > threshold, box_labels, box.seed, steps=steps) & (distance < config.reach)
    axis = bone_axis(piece, box.offsets, linear)
    if kind is not None:
        axis = torch.where((axis * kind.distal.to(axis.dtype)).sum(-1, keepdim=True) < 0, -axis, axis)
    normal, offset = _cuts(axis, params)
    per_step = linear.transpose(1, 2)[:, None] @ normal[..., None]  # (B, 2, 3, 1) mm along each normal per step
    side = [_linear_field(box, per_step[:, c, :, 0], -offset[:, c]) for c in range(2)]
    lifted, fragment = _fragment(piece, side, params)
    hinge, rotation, translation = _motions(axis, normal, params, None if kind is None else kind.pull,
                                            None if kind is None else kind.shortening)
    fade = _fade(distance, _linear_field(box, (linear.transpose(1, 2) @ axis[..., None])[..., 0]), config.reach)
    matrix, shift = _motion_in_steps(linear, hinge[:, 0], rotation[:, 0], translation[:, 0])
    coordinates = _source_coordinates(box, fade, matrix, shift)
    if config.comminuted_probability > 0:
        matrix, shift = _motion_in_steps(linear, hinge[:, 1], rotation[:, 1], translation[:, 1])
        along = per_step[:, 1, :, 0]  # the source's distance to cut 1: s_1 + fade (k . (P o + q)), k = A^T n_1
        moved = _linear_field(box, (matrix.transpose(1, 2) @ along[..., None])[..., 0], (along * shift).sum(-1))
        middle = torch.where(params.comminuted[:, 0], params.gap[:, 0, 1] / 2, math.inf).to(fade.dtype)
        past = torch.addcmul(side[1], fade, moved) >= middle.view(-1, 1, 1, 1)
        others = _source_coordinates(box, fade, matrix, shift)
        coordinates = [torch.where(past, other, mine) for other, mine in zip(others, coordinates)]
    return _move_fragments(box.original, lifted, fragment, coordinates, soft), axis, normal[:, 0], translation[:, 0]


@dataclass
class _KindMotion:
    """What a kind adds to one candidate's cut: ``distal (M, 3)`` the bone's distal axis (0: generic, any
    sign), ``pull (M, 3)`` where the distal fragment goes (0: a drawn azimuth), ``shortening (M,)`` mm."""

    distal: Tensor
    pull: Tensor
    shortening: Tensor


def _resolve_kinds(params: FractureParams, kind: Tensor, tables: KindTables) -> tuple[FractureParams, Tensor, Tensor]:
    """The sizes of each candidate's kind and severity from its uniform draws (``params.shape``): the parameters
    with the kind candidates' values in place of the generic ones, their shortening ``(M, K)`` mm and pull
    ``(M, K, 3)`` (zeros for generic candidates)."""
    device = params.position.device
    ranges = tables.ranges.to(device)[kind.clamp_min(0), params.severity]  # (M, K, P, 2)
    low, high = ranges.unbind(-1)
    value = dict(zip(SLOTS, (low + (high - low) * params.shape).unbind(-1)))
    is_kind = kind >= 0
    pick = lambda mine, generic: torch.where(is_kind.view(*kind.shape, *([1] * (generic.dim() - 2))),  # noqa: E731
                                             mine.to(generic.dtype), generic)
    pair = lambda first, second: torch.stack([value[first], value[second]], -1)  # noqa: E731
    resolved = replace(
        params,
        comminuted=pick(params.shape[..., SLOTS.index("comminuted")] < low[..., SLOTS.index("comminuted")],
                        params.comminuted),
        fragment_length=pick(value["fragment_length"], params.fragment_length),
        gap=pick(pair("gap", "second_gap"), params.gap),
        obliquity=pick(pair("obliquity", "obliquity"), params.obliquity),
        translation=pick(pair("translation", "second_translation"), params.translation),
        angulation=pick(pair("angulation", "second_angulation"), params.angulation),
    )
    shortening = torch.where(is_kind, value["shortening"], 0.0)
    pull = torch.where(is_kind[..., None], tables.pull.to(device)[kind.clamp_min(0)], 0.0)
    return resolved, shortening, pull


@dataclass
class CutBoxes:
    """One candidate per cut sample cut into its box, not yet written back into the crops.

    ``rows (M,)`` are the cut crops; every other tensor but the crops and their
    affines has ``M`` rows.
    """

    attenuation: Tensor  # (B, D, H, W) the intact crops
    affine: Tensor  # (B, 4, 4)
    rows: Tensor  # (M,) long
    box: _Box
    out: Tensor  # (M, d, h, w) the fractured box
    axis: Tensor  # (M, 3)
    center_index: Tensor  # (M, 3)
    fractured: Tensor  # (M,)
    choice: Tensor  # (M,)
    kind: Tensor  # (M,) long, -1: generic
    severity: Tensor  # (M,) long, -1: generic
    shift: Tensor  # (M, 3)
    angulation: Tensor  # (M,)
    normal: Tensor  # (M, 3)

    @property
    def change(self) -> Tensor:
        """``(M, d, h, w)`` fractured minus intact attenuation in each box, 1/mm."""
        return self.out - self.box.original

    @property
    def box_affine(self) -> Tensor:
        """``(M, 4, 4)`` voxel-to-world matrices of the boxes."""
        affine = self.affine[self.rows]
        box_affine = affine.clone()
        box_affine[:, :3, 3] = (affine[:, :3, :3] @ self.box.start.to(affine.dtype)[..., None])[..., 0] + affine[:, :3, 3]
        return box_affine

    @property
    def point(self) -> Tensor:
        """``(M, 3)`` world mm of each bone point (also where not fractured)."""
        affine = self.affine[self.rows]
        return (affine[:, :3, :3] @ self.center_index.to(affine.dtype)[..., None])[..., 0] + affine[:, :3, 3]

    @property
    def change_centre(self) -> Tensor:
        """``(M, 3)`` world mm: the centroid of the change (weighted by ``|change|``); the bone point where none."""
        weight = self.change.abs()
        marginals = [weight.sum((2, 3)), weight.sum((1, 3)), weight.sum((1, 2))]
        total = marginals[0].sum(1, keepdim=True)
        index = torch.stack([(m * torch.arange(m.shape[1], device=m.device, dtype=m.dtype)).sum(1) for m in marginals],
                            -1) / total.clamp_min(1e-12)
        affine = self.box_affine
        centre = (affine[:, :3, :3] @ index.to(affine.dtype)[..., None])[..., 0] + affine[:, :3, 3]
        return torch.where(total > 0, centre, self.point)

    def where(self, better: Tensor, other: "CutBoxes") -> "CutBoxes":
        """Each sample's candidate from ``other`` where ``better (M,)``, else from this one."""
        pick = lambda new, old: torch.where(better.view(-1, *([1] * (old.dim() - 1))), new, old)
        box = _Box(index=tuple(pick(n, o) for n, o in zip(other.box.index, self.box.index)),
                   start=pick(other.box.start, self.box.start), seed=pick(other.box.seed, self.box.seed),
                   original=pick(other.box.original, self.box.original))
        return CutBoxes(self.attenuation, self.affine, self.rows, box, pick(other.out, self.out),
                        pick(other.axis, self.axis), pick(other.center_index, self.center_index),
                        pick(other.fractured, self.fractured), pick(other.choice, self.choice),
                        pick(other.kind, self.kind), pick(other.severity, self.severity),
                        pick(other.shift, self.shift), pick(other.angulation, self.angulation),
                        pick(other.normal, self.normal))

    def spread(self, value: Tensor, fill: float | bool = 0) -> Tensor:
        """``value (M, ...)`` of the cut samples as ``(B, ...)``, ``fill`` for the others."""
        whole = value.new_full((self.attenuation.shape[0], *value.shape[1:]), fill)
        whole[self.rows] = value
        return whole

    def result(self, *, inplace: bool = False) -> FractureResult:
        """Write the boxes back into a copy of the crops (or into the crops, ``inplace``) and describe them."""
        attenuation = self.attenuation if inplace else self.attenuation.clone()
        attenuation[self.box.index] = self.out
        fractured = self.spread(self.fractured, False)
        center = self.spread(self.change_centre.to(self.affine.dtype), float("nan"))
        center = torch.where(fractured[:, None], center, torch.full_like(center, float("nan")))
        change = self.change
        box_affine = self.affine.clone()
        box_affine[self.rows] = self.box_affine
        return FractureResult(
            attenuation=attenuation, fractured=fractured, center=center, center_index=self.spread(self.center_index),
            axis=self.spread(self.axis), box_start=self.spread(self.box.start), box_change=self.spread(change),
            box_affine=box_affine, changed=self.spread((change != 0).flatten(1).sum(1)), choice=self.spread(self.choice),
            kind=self.spread(self.kind, -1), severity=self.spread(self.severity, -1),
            shift=self.spread(self.shift.to(self.affine.dtype)), angulation=self.spread(self.angulation),
            normal=self.spread(self.normal.to(self.affine.dtype)),
        )
