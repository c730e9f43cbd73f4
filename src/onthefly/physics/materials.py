"""Materials from Hounsfield units: mass density and smooth air / soft-tissue / bone fractions per voxel.

Density: the piecewise-linear calibration of Schneider, Bortfeld and
Schlegel (2000, Phys. Med. Biol. 45:459), through the points (HU, g/cm^3)

    (-1000, 0.00121) (-98, 0.93) (-97, 0.930486) (14, 1.03) (23, 1.031) (100, 1.1199) (101, 1.0762)
    (1600, 1.9642) (3000, 2.8)

(air to lung, adipose, soft tissue, the step at 100 HU where the bone
segment starts, bone), extended linearly beyond both ends and floored at 0.

Fractions (of each voxel's mass): bone rises smoothly (a C1 smoothstep) from
0 at :data:`BONE_HU` [0] = 100 HU to 1 at [1] = 1500 HU; air falls from 1 at
-1000 HU to 0 at -900 HU; soft tissue (ICRU-44) is the rest. Between -900 and
100 HU a voxel is soft tissue at its own density (lung is tissue at low
density: its attenuation per gram is tissue's). Partial densities are the
density times each fraction, so they sum to the density, and they are
differentiable in HU (the calibration is linear on each segment).
Labels, where given, override the fractions: a label mapped to a material
makes the voxel that material alone, at the density its HU gives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .._checks import check_int
from ..geometry import CArm
from ..projector import render_channels
from ..volume import Volume, VolumeBatch, as_volume_batch

__all__ = [
    "BODY_MATERIALS",
    "BONE_HU",
    "AIR_HU",
    "SCHNEIDER_2000_HU_DENSITY",
    "hu_to_density",
    "material_fractions",
    "material_densities",
    "render_materials",
]

BODY_MATERIALS = ("air", "soft_tissue", "bone")
"""The materials HU are split into, in channel order."""

SCHNEIDER_2000_HU_DENSITY = (
    (-1000.0, 0.00121), (-98.0, 0.93), (-97.0, 0.930486), (14.0, 1.03), (23.0, 1.031), (100.0, 1.1199),
    (101.0, 1.0762), (1600.0, 1.9642), (3000.0, 2.8),
)
"""(HU, g/cm^3) points of Schneider et al. (2000)'s density calibration."""

BONE_HU = (100.0, 1500.0)
"""HU where the bone fraction starts to rise and where it reaches 1."""
AIR_HU = (-1000.0, -900.0)
"""HU where the air fraction is 1 and where it reaches 0."""


def hu_to_density(hu: Tensor) -> Tensor:
    """Mass density (g/cm^3) of HU, same shape (Schneider et al. 2000; the module's description).

    Example:
        >>> from onthefly.physics import hu_to_density
        >>> [round(float(x), 4) for x in hu_to_density(torch.tensor([-1000.0, 0.0, 1000.0]))]
        [0.0012, 1.0174, 1.6088]
    """
    points = torch.tensor(SCHNEIDER_2000_HU_DENSITY, dtype=hu.dtype, device=hu.device)
    knots, values = points[:, 0], points[:, 1]
    slopes = (values[1:] - values[:-1]) / (knots[1:] - knots[:-1])  # (S,)
    segment = torch.bucketize(hu.detach(), knots[1:-1].contiguous(), right=True)  # 0..S-1, the ends extended
    return (values[segment] + slopes[segment] * (hu - knots[segment])).clamp_min(0.0)


def _smoothstep(x: Tensor, low: float, high: float) -> Tensor:
    t = ((x - low) / (high - low)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def material_fractions(hu: Tensor) -> Tensor:
    """Mass fractions of :data:`BODY_MATERIALS` ``(..., 3)`` of HU ``(...)``, summing to 1, C1-smooth in HU."""
    bone = _smoothstep(hu, *BONE_HU)
    air = 1.0 - _smoothstep(hu, *AIR_HU)
    return torch.stack([air, 1.0 - air - bone, bone], -1)


def _label_table(label_materials: Mapping[int, str], materials: Sequence[str], device) -> Tensor:
    """``(L, 1 + M)``: for each label, 1 in the first column where it is mapped, then the one-hot material."""
    if not isinstance(label_materials, Mapping):
        raise TypeError(f"label_materials: expected a mapping label -> material name, got {type(label_materials).__name__}")
    size = 1 + max((check_int("label_materials (a label)", label, minimum=0) for label in label_materials), default=0)
    table = torch.zeros(size, 1 + len(materials), device=device)
    for label, name in label_materials.items():
        if name not in materials:
            raise ValueError(f"label_materials: expected material names from {list(materials)}, got {name!r} "
                             f"for label {label}")
        table[label, 0] = 1.0
        table[label, 1 + list(materials).index(name)] = 1.0
    return table


def material_densities(hu: Tensor, *, labels: Tensor | None = None,
                       label_materials: Mapping[int, str] | None = None) -> Tensor:
    """Partial densities of air, soft tissue and bone per voxel.

    Args:
        hu: ``(B, 1, D, H, W)`` Hounsfield units.
        labels: optional ``(B, 1, D, H, W)`` integer labels.
        label_materials: ``{label: material name}`` (names from :data:`BODY_MATERIALS`) for the labels that
            decide a voxel's material; other labels, and all voxels without ``labels``, use the HU fractions.

    Returns:
        ``(B, 3, D, H, W)`` g/cm^3 (channels as :data:`BODY_MATERIALS`), summing to :func:`hu_to_density`.

    Example:
        >>> from onthefly.physics import material_densities
        >>> densities = material_densities(torch.tensor([-1000.0, 40.0, 2000.0]).reshape(1, 1, 1, 1, 3))
        >>> densities.shape, densities[0, :, 0, 0].mul(1000).round().tolist()  # mg/cm^3: air, tissue, bone
        (torch.Size([1, 3, 1, 1, 3]), [[1.0, 0.0, 0.0], [0.0, 1051.0, 0.0], [0.0, 0.0, 2203.0]])
    """
    if not isinstance(hu, Tensor) or not hu.is_floating_point():
        raise TypeError(f"hu: expected a floating tensor (B, 1, D, H, W) of Hounsfield units, got {hu!r:.60}")
    if hu.dim() != 5 or hu.shape[1] != 1:
        raise ValueError(f"hu: expected shape (B, 1, D, H, W), got {tuple(hu.shape)}")
    fractions = material_fractions(hu[:, 0]).movedim(-1, 1)  # (B, 3, D, H, W)
    if labels is not None and label_materials:
        if not isinstance(labels, Tensor) or labels.is_floating_point() or tuple(labels.shape) != tuple(hu.shape):
            raise ValueError(f"labels: expected an integer tensor of shape {tuple(hu.shape)}, got {labels!r:.60}")
        table = _label_table(label_materials, BODY_MATERIALS, hu.device).to(hu.dtype)
        index = labels[:, 0].long().clamp(0, table.shape[0] - 1)
        known = (labels[:, 0] >= 0) & (labels[:, 0] < table.shape[0])
        row = table[index] * known[..., None]  # (B, D, H, W, 1 + M)
        assigned = row[..., :1].movedim(-1, 1)
        fractions = fractions * (1.0 - assigned) + row[..., 1:].movedim(-1, 1)
    return fractions * hu_to_density(hu)


def render_materials(volume: Volume | Sequence[Volume] | VolumeBatch, carm: CArm, *,
                     label_materials: Mapping[int, str] | None = None, method: str = "trilinear",
                     compile: bool = False) -> Tensor:
    """Per-material line integrals of CT volumes: ``(B, V, 3, H, W)`` g/cm^2 (air, soft tissue, bone).

    The HU of each volume become partial densities (:func:`material_densities`),
    integrated along every ray in one projector pass
    (:func:`~onthefly.projector.render_channels`), mm converted to cm.

    Args:
        volume: a :class:`Volume`, a sequence of ``B`` volumes or a :class:`VolumeBatch`
            (whose attenuation is converted back to HU with its ``mu_water``; air below -1000 HU is -1000).
        carm: poses for ``(B, V)`` views.
        label_materials: optional ``{label: material}``, used with the volumes' labels.
        method, compile: as for :func:`~onthefly.projector.render`.

    Example:
        >>> from onthefly.physics import render_materials
        >>> volume = Volume.from_tensor(torch.full((16, 16, 16), 0.0), spacing=2.0)
        >>> carm = CArm(alpha=0.0, sid=300.0, sdd=500.0, height=8, pixel_spacing=2.0, isocenter=(15.0, 15.0, 15.0))
        >>> lines = render_materials(volume, carm)
        >>> lines.shape, round(float(lines[0, 0, 1, 4, 4]), 2)  # 32 mm of water-like tissue: 1.018 g/cm^3 * 3.2 cm
        (torch.Size([1, 1, 3, 8, 8]), 3.26)
    """
    batch = as_volume_batch(volume)
    hu = 1000.0 * (batch.attenuation / batch.mu_water - 1.0)
    densities = material_densities(hu, labels=batch.labels, label_materials=label_materials)
    return 0.1 * render_channels(densities, batch.affine, carm, method=method, compile=compile)

