"""Hypothesis strategies for correspondence geometry: volumes, C-arms and whole scenes.

Needs hypothesis (``pip install 'onthefly[testing]'``). Every strategy draws
its parameters through hypothesis only (seeds of ``torch.Generator`` included),
so failures shrink to small, reproducible examples: few views, small
detectors, the first poses of each range.

Example:
    >>> from hypothesis import given, settings
    >>> from onthefly.testing import assert_correspondence_valid
    >>> from onthefly.testing.strategies import scenes
    >>> @settings(max_examples=2, deadline=None)
    ... @given(scenes(max_batch=1))
    ... def test_valid(scene):
    ...     assert_correspondence_valid(scene.correspondence(), scene.grid, scene.carm.batch_shape[1])
    >>> test_valid()
"""

from __future__ import annotations

import math
from dataclasses import dataclass

try:
    from hypothesis import strategies as st
except ImportError as error:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "onthefly.testing.strategies needs hypothesis: pip install 'onthefly[testing]'"
    ) from error

import torch
from torch import Tensor

from ..correspondence import patch_correspondence
from ..geometry import CArm
from ..volume import Volume
from . import blob_volume, box_volume

__all__ = ["FOOTPRINTS", "Scene", "poses", "volumes", "carms", "scenes"]

poses = st.tuples(st.floats(0.0, 2 * math.pi), st.floats(-0.4, 0.4), st.floats(-math.pi, math.pi))
"""``(alpha, beta, gamma)`` in radians: any primary angle, secondary within +-0.4, any roll."""

FOOTPRINTS = st.sampled_from([None, None, "separable", 2, 3])
"""Footprint methods: exact (``None``, twice as likely), ``"separable"``, or 2 or 3 rays per patch side."""


@st.composite
def volumes(draw, *, sizes=(8, 10, 12), spacing=(2.0, 5.0), kinds=("blob", "box"), max_offset: float = 0.0) -> Volume:
    """Small random volumes in HU with anisotropic spacing.

    Args:
        sizes: voxels per axis to choose from (the same on every axis).
        spacing: ``(low, high)`` voxel edge in mm, drawn per axis (or a scalar for isotropic voxels).
        kinds: ``"blob"`` (smooth tissue with air pockets and bone-like cores,
            :func:`~onthefly.testing.blob_volume`) and/or ``"box"`` (air with one
            box of known HU in [0, 1000], :func:`~onthefly.testing.box_volume`).
        max_offset: the volume's centre lies within +-``max_offset`` mm of the
            world origin on each axis (0: centred).

    Returns:
        a :class:`~onthefly.Volume` of ``(1, n, n, n)`` HU in [-1000, 1500].
    """
    size = draw(st.sampled_from(list(sizes)))
    if isinstance(spacing, (int, float)):
        edges = (float(spacing),) * 3
    else:
        edges = tuple(draw(st.floats(*spacing)) for _ in range(3))
    kind = draw(st.sampled_from(list(kinds)))
    offset = [draw(st.floats(-max_offset, max_offset)) if max_offset > 0 else 0.0 for _ in range(3)]
    if kind == "blob":
        volume = blob_volume(size=size, spacing=edges, seed=draw(st.integers(0, 10_000)))
    else:
        start = [draw(st.integers(0, size - 2)) for _ in range(3)]
        stop = [draw(st.integers(s + 1, size)) for s in start]
        volume = box_volume((size,) * 3, start, stop, hu=draw(st.floats(0.0, 1000.0)), spacing=edges)
    if any(offset):
        affine = volume.affine.clone()
        affine[:3, 3] += torch.tensor(offset, dtype=affine.dtype)
        volume = Volume(hu=volume.hu, affine=affine)
    return volume


@st.composite
def carms(draw, *, extent: float = 48.0, max_batch: int = 2, min_views: int = 2, max_views: int = 3,
          patch_size: int = 8, grids=((4, 4), (3, 5), (5, 3), (4, 2)), sid=(250.0, 600.0), gap=(150.0, 400.0),
          field_of_view=(0.8, 1.6), max_isocenter_offset: float = 6.0) -> CArm:
    """C-arms of ``(B, V)`` views that all see a volume of ``extent`` mm centred near the origin.

    Args:
        extent: the largest edge of the volume to see, mm.
        max_batch: ``B`` from 1 to this.
        min_views, max_views: ``V`` in this range.
        patch_size: pixels per patch edge; detectors are whole patch grids.
        grids: ``(rows, cols)`` patch grids to choose from (detector ``rows * patch_size`` x ``cols * patch_size``).
        sid: ``(low, high)`` source-to-isocenter distance, mm (one per C-arm).
        gap: ``(low, high)`` of ``sdd - sid``, mm (> 0, so ``sdd > sid``).
        field_of_view: ``(low, high)`` field of view at the isocenter over ``extent``;
            above ``1 + 2 * max_isocenter_offset / extent`` every view sees the whole volume.
        max_isocenter_offset: each sample's isocenter within +-this many mm of the origin per axis.

    Returns:
        a float32 :class:`~onthefly.CArm` with poses from :data:`poses`, one isocenter per sample.
    """
    rows, cols = draw(st.sampled_from(list(grids)))
    batch, views = draw(st.integers(1, max_batch)), draw(st.integers(min_views, max_views))
    distance, detector_gap = draw(st.floats(*sid)), draw(st.floats(*gap))
    pixel = draw(st.floats(*field_of_view)) * extent * (distance + detector_gap) / (
        distance * max(rows, cols) * patch_size)
    return _carm(draw, batch, views, distance, detector_gap, rows, cols, patch_size, pixel, max_isocenter_offset)


def _carm(draw, batch, views, sid, gap, rows, cols, patch_size, pixel, max_isocenter_offset) -> CArm:
    angles = [[draw(poses) for _ in range(views)] for _ in range(batch)]
    alpha, beta, gamma = (torch.tensor([[pose[i] for pose in sample] for sample in angles]) for i in range(3))
    iso = torch.tensor([[draw(st.floats(-max_isocenter_offset, max_isocenter_offset)) for _ in range(3)]
                        for _ in range(batch)])[:, None, :]
    return CArm(alpha=alpha, beta=beta, gamma=gamma, sid=sid, sdd=sid + gap, isocenter=iso,
                height=rows * patch_size, width=cols * patch_size, pixel_spacing=pixel)


@dataclass
class Scene:
    """Cameras, volumes and the options of ``patch_correspondence`` that belong together.

    Attributes:
        carm: ``(B, V)`` views.
        volumes: ``B`` volumes (one per sample).
        patch_size: pixels per patch edge; divides the detector's height and width.
        footprint: ``None`` (exact footprints), ``"separable"``, or an int: rays per patch side.
    """

    carm: CArm
    volumes: list
    patch_size: int
    footprint: int | str | None

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` patches per view."""
        return self.carm.height // self.patch_size, self.carm.width // self.patch_size

    def correspondence(self, volume=None, carm=None, **options) -> Tensor:
        """``patch_correspondence`` of the scene, ``(B, V*N, V*N)``; ``volume``, ``carm`` and ``options`` override."""
        if self.footprint == "separable":
            footprint = dict(footprint="separable")
        else:
            footprint = dict(rays_per_patch=self.footprint)
        options = dict(patch_size=self.patch_size) | footprint | options
        return patch_correspondence(self.volumes if volume is None else volume, self.carm if carm is None else carm,
                                    **options)


@st.composite
def scenes(draw, max_views: int = 3, max_batch: int = 2, footprints=FOOTPRINTS) -> Scene:
    """Random scenes: cameras, detectors, patch sizes and anisotropic blob volumes that fit together.

    Patch size 4 or 8 pixels; 2 x 4 to 5 x 5 patches per view; ``B`` from 1 to
    ``max_batch``; ``V`` from 2 to ``max_views``; sid 250-600 mm, sdd 150-400 mm
    beyond it; volumes of 8-12 voxels of 2-5 mm per axis
    (:func:`~onthefly.testing.blob_volume`, centred); a field of view at the
    isocenter of 0.8-1.6 times the volume's extent; isocenters within +-6 mm;
    ``footprints`` draws the footprint method (default :data:`FOOTPRINTS`).

    Returns:
        a :class:`Scene`.
    """
    patch = draw(st.sampled_from([4, 8]))
    rows, cols = draw(st.sampled_from([(4, 4), (3, 5), (5, 3), (4, 2)]))
    batch, views = draw(st.integers(1, max_batch)), draw(st.integers(2, max_views))
    sid, gap = draw(st.floats(250.0, 600.0)), draw(st.floats(150.0, 400.0))
    spacing = tuple(draw(st.floats(2.0, 5.0)) for _ in range(3))
    size = draw(st.sampled_from([8, 10, 12]))
    extent = size * max(spacing)
    # A field of view at the isocenter from 0.8 to 1.6 times the volume's extent.
    pixel = draw(st.floats(0.8, 1.6)) * extent * (sid + gap) / (sid * max(rows, cols) * patch)
    carm = _carm(draw, batch, views, sid, gap, rows, cols, patch, pixel, 6.0)
    seeds = [draw(st.integers(0, 10_000)) for _ in range(batch)]
    return Scene(carm, [blob_volume(size=size, spacing=spacing, seed=seed) for seed in seeds], patch, draw(footprints))
