"""A toy matcher checked with ``assert_epipolar_consistent``: it may only match patches that see common tissue.

The toy matcher matches two patches when the centre of one coarse voxel of
tissue projects into both. Its variant with a planted bug (the columns of
every view mirrored, a detector axis of the wrong sign) still gives a valid
looking, symmetric matrix of zeros and ones; the epipolar check fails it
(``tests/test_testing.py`` shows that it does).

Run: ``pytest examples/property_tests/test_toy_matcher.py``.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings

from onthefly import project_points
from onthefly.correspondence import pool_weights
from onthefly.geometry import patch_index
from onthefly.testing import assert_correspondence_valid, assert_epipolar_consistent, assert_views_permute_blocks
from onthefly.testing.strategies import scenes

EDGE = 10.0  # coarse voxel edge, mm


def toy_matcher(volume, carm, *, patch_size: int, coarse_voxel_size: float, mirror_columns: bool = False):
    """``(1, V*N, V*N)``: 1 where the centre of a coarse voxel with tissue projects into both patches, else 0."""
    pooled = pool_weights(volume, coarse_voxel_size)
    weight, affine = pooled.weight[0], pooled.affine[0].double()
    index = torch.stack(torch.meshgrid(*[torch.arange(n) for n in weight.shape], indexing="ij"), -1)
    centres = index[weight > 0].double() @ affine[:3, :3].T + affine[:3, 3]  # (P, 3) world mm
    pixels = project_points(carm.to(dtype=torch.float64), centres)[0]  # (V, P, 2)
    if mirror_columns:  # the planted bug
        pixels = torch.stack([pixels[..., 0], carm.width - 1 - pixels[..., 1]], -1)
    patches = patch_index(pixels, (carm.height, carm.width), patch_size)  # (V, P), -1 off the detector
    views, n_patches = carm.batch_shape[1], (carm.height // patch_size) * (carm.width // patch_size)
    seen = torch.zeros(views, n_patches + 1, centres.shape[0])
    seen.scatter_(1, torch.where(patches >= 0, patches, n_patches)[:, None, :], 1.0)
    tokens = seen[:, :n_patches].reshape(views * n_patches, -1)  # which voxel centres each token sees
    return ((tokens @ tokens.T) > 0).float()[None]


def matcher_property(matcher, **options):
    """The property test of ``matcher(volume, carm, patch_size=, coarse_voxel_size=)``."""

    @settings(**({"max_examples": 10, "deadline": None} | options))
    @given(scene=scenes(max_batch=1))
    def test(scene):
        volume, carm, patch = scene.volumes[0], scene.carm, scene.patch_size
        c = matcher(volume, carm, patch_size=patch, coarse_voxel_size=EDGE)
        assert_correspondence_valid(c, scene.grid, views=carm.batch_shape[1])
        assert_epipolar_consistent(c, volume, carm, patch_size=patch, coarse_voxel_size=EDGE)
        order = list(range(carm.batch_shape[1]))[::-1]
        swapped = matcher(volume, carm.select_views(order), patch_size=patch, coarse_voxel_size=EDGE)
        assert_views_permute_blocks(c, swapped, order, scene.grid)

    return test


test_toy_matcher_is_epipolar_consistent = matcher_property(toy_matcher)
