"""Evaluating an arm on a voxel grid: the region's box, the bone and outline fields, tissues, HU and labels.

The grid is processed in slabs along z (at most :data:`SLAB_VOXELS` voxels
each), so memory stays bounded at fine spacings. In each slab every bone of the
region is evaluated inside its own box only; the two smallest bone distances
per voxel ``d1 <= d2`` give the bone that wins the voxel and its distance to the
joint beside it: the winner keeps ``s = max(d1, (d1 - d2) / 2 + gap / 2)``, so
two bones never overlap and face each other across a joint space of ``gap`` mm
(congruent joint surfaces, whatever the pose). The skin surface is the smooth
union of the outline parts, pushed out where needed so that every bone lies
under skin and some fat.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..volume import Volume
from .limb import Arm, build_arm
from .regions import LABELS, REGION_BONES, PhantomParameters, stable_seed
from .shapes import FAR, smooth_union
from .tissues import AIR_HU, TrabecularTexture, coverage

__all__ = ["SLAB_VOXELS", "region_box", "generate"]

SLAB_VOXELS = 6_000_000
"""Largest number of voxels evaluated at once (the z-slab size follows from it)."""
COVER_MM = 4.5
"""Least soft tissue (mm) over any bone: the skin surface is pushed out to this distance where it runs closer."""
WRIST_ABOVE_MM, WRIST_BELOW_MM = 60.0, 22.0
"""The wrist region's box: from this far above the radius's articular centre to this far below the carpus."""


def region_box(arm: Arm, region: str) -> tuple[Tensor, Tensor]:
    """``(low (3,), high (3,))`` limb-frame mm of the region's box."""
    names = REGION_BONES[region]
    bounds = {name: arm.bones[name].bounds(0.0) for name in names}
    carpal_low = min(float(bounds[n][0][2]) for n in ("scaphoid", "lunate", "capitate", "hamate", "trapezium",
                                                      "trapezoid", "triquetrum", "pisiform") if n in bounds) \
        if region != "forearm" else 0.0
    if region == "forearm":
        low_z = min(float(b[0][2]) for b in bounds.values()) - 3.0
        high_z = max(float(b[1][2]) for b in bounds.values()) + 5.0
    elif region == "wrist":
        low_z, high_z = carpal_low - WRIST_BELOW_MM, WRIST_ABOVE_MM
    else:
        high_z = max(float(bounds[n][1][2]) for n in names if not n.startswith(("metacarpal", "phalanx"))) + 4.0
        low_z = min(float(part.bounds()[0][2]) for part in arm.soft) - 2.0
    lows, highs = [], []
    for part in arm.soft:
        bounds = part.bounds(low_z, high_z)
        if bounds is not None:
            lows.append(bounds[0])
            highs.append(bounds[1])
    low = torch.stack(lows).amin(0) - 3.0
    high = torch.stack(highs).amax(0) + 3.0
    low[2], high[2] = low_z, high_z
    return low, high


@dataclass
class _Grid:
    """Voxel centres along each axis (limb frame, mm) on the device, and the voxel edge."""

    axes: tuple[Tensor, Tensor, Tensor]
    first: Tensor  # (3,) float64 limb mm of voxel 0
    voxel: float
    shape: tuple[int, int, int]

    def index_range(self, low: Tensor, high: Tensor, axis: int, clip: tuple[int, int]) -> tuple[int, int]:
        start = math.floor((float(low[axis]) - float(self.first[axis])) / self.voxel)
        stop = math.ceil((float(high[axis]) - float(self.first[axis])) / self.voxel) + 1
        return max(start, clip[0]), min(stop, clip[1])

    def box(self, low: Tensor, high: Tensor, z_clip: tuple[int, int]) -> tuple[slice, slice, slice] | None:
        ranges = [self.index_range(low, high, 0, (0, self.shape[0])), self.index_range(low, high, 1, (0, self.shape[1])),
                  self.index_range(low, high, 2, z_clip)]
        if any(stop <= start for start, stop in ranges):
            return None
        return tuple(slice(start, stop) for start, stop in ranges)

    def coordinates(self, box: tuple[slice, slice, slice]) -> tuple[Tensor, Tensor, Tensor]:
        x, y, z = (axis[s] for axis, s in zip(self.axes, box))
        return x[:, None, None], y[None, :, None], z[None, None, :]


def generate(parameters: PhantomParameters, spacing: float, device: torch.device, *,
             fractions: bool = False) -> Volume | tuple[Volume, dict[str, Tensor]]:
    """The phantom of ``parameters`` on a grid of ``spacing`` mm on ``device`` (arguments already checked).

    With ``fractions``, also the per-voxel tissue shares ``{"cortical", "inner", "medulla", "skin", "fat", "muscle",
    "air", "texture"}`` (each ``(D, H, W)``; ``inner`` is the bone inside the cortex, split into marrow by
    ``medulla``), for tests.
    """
    plan = _Plan.of(parameters, spacing, device)
    shape, bone_labels = plan.grid.shape, plan.bone_labels
    hu = torch.empty(shape, dtype=torch.float32, device=device)
    labels = torch.empty(shape, dtype=torch.uint8, device=device)
    shares: dict[str, list[Tensor]] = {}
    for layout in plan.slabs():
        z0, z1 = layout.z_range
        fields = plan.voxels(layout, fractions)
        hu[:, :, z0:z1], labels[:, :, z0:z1] = fields.pop("hu"), fields.pop("labels")
        for name, value in fields.items():
            shares.setdefault(name, []).append(value)
    centre, first = plan.centre, plan.grid.first
    present = {int(v) for v in bone_labels.tolist()} | {LABELS[n] for n in ("skin", "fat", "muscle")}
    label_names = {value: name for name, value in LABELS.items() if value in present}
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] *= spacing
    affine[:3, 3] = first - centre  # the box's centre is the world origin
    volume = Volume(hu=hu[None], affine=affine, labels=labels[None], label_names=label_names)
    if not fractions:
        return volume
    return volume, {name: torch.cat(parts, 2) for name, parts in shares.items()}


@dataclass
class _SlabLayout:
    """What the host decides for one slab before its voxels are computed: the grid boxes of each bone and each
    outline part (``None``: outside the slab), the texture's box in the slab, and the slab's CT noise."""

    z_range: tuple[int, int]
    bone_boxes: list[tuple[slice, slice, slice] | None]
    soft_boxes: list[tuple[slice, slice, slice] | None]
    texture_box: tuple[tuple[int, int, int], tuple[int, int, int]] | None
    noise: Tensor


@dataclass
class _Plan:
    """The host part of a phantom: its arm, grid, bones with their boxes, the texture, and the noise generator."""

    parameters: PhantomParameters
    arm: Arm
    grid: _Grid
    centre: Tensor
    bones: list
    bone_bounds: list
    soft_bounds: list
    bone_labels: Tensor
    union: tuple[slice, slice, slice] | None
    texture: TrabecularTexture
    generator: torch.Generator

    @classmethod
    def of(cls, p: PhantomParameters, spacing: float, device: torch.device) -> "_Plan":
        arm = build_arm(p)
        low, high = region_box(arm, p.region)
        centre = (low + high) / 2
        shape = tuple(int(math.ceil(float(high[i] - low[i]) / spacing)) + 1 for i in range(3))
        first = centre - (torch.tensor(shape, dtype=torch.float64) - 1) / 2 * spacing
        axes = tuple((first[i] + spacing * torch.arange(shape[i], dtype=torch.float64)).to(device, torch.float32)
                     for i in range(3))
        grid = _Grid(axes, first, spacing, shape)
        margin = max(p["joint_gap"] + 2.0 * spacing + 2.0, COVER_MM + 2.0 + spacing)
        names = REGION_BONES[p.region]
        bones = [arm.bones[name] for name in names]
        bone_bounds = [bone.bounds(margin) for bone in bones]
        soft_bounds = [part.bounds() for part in arm.soft]
        bone_labels = torch.tensor([LABELS[name] for name in names], dtype=torch.uint8, device=device)
        generator = torch.Generator(device=device).manual_seed(stable_seed(p.region, p.seed, "fields"))
        union_low = torch.stack([b[0] for b in bone_bounds]).amin(0)
        union_high = torch.stack([b[1] for b in bone_bounds]).amax(0)
        union = grid.box(union_low, union_high, (0, shape[2]))
        texture = TrabecularTexture(tuple(s.start for s in union), tuple(s.stop for s in union), spacing, generator,
                                    device)
        return cls(p, arm, grid, centre, bones, bone_bounds, soft_bounds, bone_labels, union, texture, generator)

    def slabs(self) -> Iterator[_SlabLayout]:
        """Each slab's layout in z order (its noise drawn from the generator as it is reached)."""
        depth, height, length = self.grid.shape
        slab = max(1, SLAB_VOXELS // (depth * height))
        for z0 in range(0, length, slab):
            yield _slab_layout(self.grid, (z0, min(z0 + slab, length)), self.bone_bounds, self.arm, self.soft_bounds,
                               self.union, self.generator)

    def voxels(self, layout: _SlabLayout, fractions: bool = False) -> dict[str, Tensor]:
        """The fields of one slab (:func:`_slab`)."""
        return _slab(self.parameters, self.grid, layout, self.bones, self.bone_labels, self.arm, self.texture,
                     fractions)


def _slab_layout(grid: _Grid, z_range: tuple[int, int], bone_bounds, arm: Arm, soft_bounds, union,
                 generator: torch.Generator) -> _SlabLayout:
    """The host part of a slab (boxes from the bones' bounds, noise drawn from ``generator`` in slab order)."""
    z0, z1 = z_range
    bone_boxes = [grid.box(low, high, z_range) for low, high in bone_bounds]
    soft_boxes = [grid.box(low - part.blend, high + part.blend, z_range) for part, (low, high) in zip(arm.soft,
                                                                                                     soft_bounds)]
    texture_box = None
    if union is not None and min(union[2].stop, z1) > max(union[2].start, z0):
        texture_box = ((union[0].start, union[1].start, max(union[2].start, z0)),
                       (union[0].stop, union[1].stop, min(union[2].stop, z1)))
    noise = torch.randn((grid.shape[0], grid.shape[1], z1 - z0), generator=generator, device=grid.axes[0].device,
                        dtype=torch.float32)
    return _SlabLayout(z_range, bone_boxes, soft_boxes, texture_box, noise)


def _slab(p: PhantomParameters, grid: _Grid, layout: _SlabLayout, bones, bone_labels: Tensor, arm: Arm,
          texture: TrabecularTexture, fractions: bool) -> dict[str, Tensor]:
    """HU and labels (and, with ``fractions``, tissue shares) of the slab's voxels (all x, y).

    Only tensor arithmetic on the layout the host fixed (:func:`_slab_layout`): no value is read back, so a
    compiler traces it without a graph break (tests/test_phantoms.py checks it).
    """
    z0, z1 = layout.z_range
    device = grid.axes[0].device
    shape = (grid.shape[0], grid.shape[1], z1 - z0)
    h = grid.voxel

    def full(value: float, dtype=torch.float32) -> Tensor:
        return torch.full(shape, value, dtype=dtype, device=device)

    # bones: the nearest two distances, the winner, its cortex thickness and medullary share
    d1, d2, cortex, medulla = full(FAR), full(FAR), full(1.0), full(0.0)
    winner = torch.zeros(shape, dtype=torch.long, device=device)
    for index, (bone, box) in enumerate(zip(bones, layout.bone_boxes)):
        if box is None:
            continue
        local = (box[0], box[1], slice(box[2].start - z0, box[2].stop - z0))
        distance, thickness, share = bone.fields(*grid.coordinates(box))
        first, second = d1[local], d2[local]
        closer = distance < first
        d2[local] = torch.where(closer, first, torch.minimum(second, distance))
        d1[local] = torch.where(closer, distance, first)
        winner[local] = torch.where(closer, index, winner[local])
        cortex[local] = torch.where(closer, thickness, cortex[local])
        medulla[local] = torch.where(closer, share, medulla[local])
    surface = torch.maximum(d1, 0.5 * (d1 - d2) + 0.5 * p["joint_gap"])

    # skin surface and the fat thickness under it
    outline, fat = full(FAR), full(p["fat_forearm"])
    for part, box in zip(arm.soft, layout.soft_boxes):
        if box is None:
            continue
        local = (box[0], box[1], slice(box[2].start - z0, box[2].stop - z0))
        distance = part.distance(*grid.coordinates(box))
        current = outline[local]
        fat[local] = torch.where(distance < current, part.fat, fat[local])
        outline[local] = smooth_union(current, distance, part.blend)
    skin = p["skin_thickness"]
    outline = smooth_union(outline, d1 - COVER_MM, 2.0)  # every bone under skin and some fat

    # trabecular texture inside the bones' union box
    network = full(texture.mean)
    if layout.texture_box is not None:
        (x0, y0, start), (x1, y1, stop) = layout.texture_box
        network[x0:x1, y0:y1, start - z0:stop - z0] = texture.block(*layout.texture_box)

    bone = coverage(surface, h)
    inner = coverage(surface + cortex, h)
    cortical = bone - inner
    marrow, mean = p["hu_marrow"], p["hu_cancellous"]
    cancellous = mean + p["texture_contrast"] * (mean - marrow) * (network / texture.mean - 1.0)
    inner_hu = medulla * marrow + (1.0 - medulla) * cancellous
    outer, below_skin, muscle = coverage(outline, h), coverage(outline + skin, h), coverage(outline + skin + fat, h)
    soft = 1.0 - bone
    shares = {"air": soft * (1.0 - outer), "skin": soft * (outer - below_skin), "fat": soft * (below_skin - muscle),
              "muscle": soft * muscle}
    hu = (cortical * p["hu_cortical"] + inner * inner_hu + shares["air"] * AIR_HU + shares["skin"] * p["hu_skin"]
          + shares["fat"] * p["hu_fat"] + shares["muscle"] * p["hu_muscle"])
    hu = hu + p["noise_std"] * layout.noise

    # the soft tissue a voxel's centre lies in (skin thinner than a voxel is still labelled where a centre meets it)
    soft_label = torch.where(outline + skin + fat <= 0, LABELS["muscle"],
                             torch.where(outline + skin <= 0, LABELS["fat"], torch.where(outline <= 0, LABELS["skin"], 0)))
    labels = torch.where(bone >= 0.5, bone_labels[winner], soft_label.to(torch.uint8))
    out = {"hu": hu, "labels": labels}
    if fractions:
        out |= {"cortical": cortical, "inner": inner, "medulla": medulla, "texture": network} | shares
    return out
