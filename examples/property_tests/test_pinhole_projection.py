"""A hand-written pinhole projection, checked against ``onthefly.project_points`` over random C-arms.

The projection below is written from the convention in the README (source,
detector centre and axes from the C-arm's angles and distances), as you would
write your own for a registration or a reconstruction. The property test
draws C-arms of every shape (1 to 64 pixels a side, any angles, sid 50-1500
mm, per-view distances and isocenters) and points near the isocenter, and
``assert_projects_like`` says how a wrong projection differs (a shift, a
mirrored axis, a scale).

Run: ``pytest examples/property_tests/test_pinhole_projection.py``.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onthefly import CArm
from onthefly.testing import assert_projects_like
from onthefly.testing.strategies import carms

CAMERAS = carms(extent=60.0, max_batch=2, min_views=1, max_views=3, patch_size=1,
                grids=st.tuples(st.integers(1, 64), st.integers(1, 64)), sid=(110.0, 1500.0), gap=(5.0, 800.0),
                pixel_spacing=(0.1, 5.0), max_isocenter_offset=6.0, tilt=1.2, shared_isocenter=False,
                per_view_distances=True, dtype=torch.float64)
"""C-arms that see a 60 mm cube around the origin (sources outside it); distances in mm, angles in radians."""

POINTS = st.lists(st.tuples(*[st.floats(-30.0, 30.0)] * 3), min_size=1, max_size=8)
"""1 to 8 world points (mm) inside that cube."""


def pinhole_project(carm: CArm, points: torch.Tensor) -> torch.Tensor:
    """``(B, V, P, 2)`` (row, column) pixels of ``points (P, 3)`` world mm: my own projection."""
    alpha, beta, gamma = carm.alpha, carm.beta, carm.gamma  # (B, V) radians
    ca, sa, cb, sb, cg, sg = alpha.cos(), alpha.sin(), beta.cos(), beta.sin(), gamma.cos(), gamma.sin()
    zero, one = torch.zeros_like(alpha), torch.ones_like(alpha)
    rz = torch.stack([ca, -sa, zero, sa, ca, zero, zero, zero, one], -1).unflatten(-1, (3, 3))
    rx = torch.stack([one, zero, zero, zero, cb, -sb, zero, sb, cb], -1).unflatten(-1, (3, 3))
    ry = torch.stack([cg, zero, sg, zero, one, zero, -sg, zero, cg], -1).unflatten(-1, (3, 3))
    rotation = rz @ rx @ ry  # (B, V, 3, 3)
    axis = rotation[..., :, 1]  # R @ (0, 1, 0): from the isocenter towards the source
    source = carm.isocenter + carm.sid[..., None] * axis
    centre = carm.isocenter + (carm.sid - carm.sdd)[..., None] * axis  # the detector's centre
    u, v = -rotation[..., :, 0], -rotation[..., :, 2]  # column and row directions on the detector
    ray = points.to(source.dtype)[None, None] - source[..., None, :]  # (B, V, P, 3)
    along = (ray * -axis[..., None, :]).sum(-1)  # distance along the principal axis
    hit = source[..., None, :] + ray * (carm.sdd[..., None] / along)[..., None]
    offset = hit - centre[..., None, :]
    spacing = carm.pixel_spacing[..., None]
    column = (offset * u[..., None, :]).sum(-1) / spacing + (carm.width - 1) / 2
    row = (offset * v[..., None, :]).sum(-1) / spacing + (carm.height - 1) / 2
    return torch.stack([row, column], -1)


def projection_property(project, **options):
    """The property test of a projection function ``project(carm, points)``; ``options`` go to ``settings``."""

    @settings(**({"max_examples": 25, "deadline": None} | options))
    @given(carm=CAMERAS, points=POINTS)
    def test(carm, points):
        assert_projects_like(project, carm, torch.tensor(points, dtype=torch.float64), atol=1e-6)

    return test


test_pinhole_projection_matches_the_library = projection_property(pinhole_project)
