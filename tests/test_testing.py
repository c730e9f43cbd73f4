"""onthefly.testing: the checks pass on the library's own matrices and catch planted bugs; the strategies draw valid scenes."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from hypothesis import given, settings

from onthefly import CArm, patch_correspondence, patch_permutation, permute_views_patches, project_points, render
from onthefly.testing import (
    assert_correspondence_valid,
    assert_epipolar_consistent,
    assert_views_permute_blocks,
    blob_volume,
    box_volume,
    coarse_voxel_covers,
    reference_correspondence,
)
from onthefly.testing.strategies import carms, scenes, volumes

PATCH, EDGE, GRID = 8, 8.0, (4, 4)


def off_centre_box():
    """A box of tissue in one corner of a 12^3 volume of 4 mm: a scene without mirror symmetries."""
    return box_volume((12, 12, 12), (1, 2, 7), (5, 5, 11), hu=200.0, spacing=4.0)


def two_views(sid=200.0, sdd=600.0, pixel_spacing=6.0) -> CArm:
    """A 64 mm field of view at the isocenter with the default distances."""
    return CArm(alpha=torch.tensor([[0.3, 1.9]]), beta=torch.tensor([[0.1, -0.2]]), sid=sid, sdd=sdd, height=32,
                pixel_spacing=pixel_spacing)


def correspondence(volume, carm):
    return patch_correspondence(volume, carm, patch_size=PATCH, coarse_voxel_size=EDGE)


def test_checks_pass_on_the_librarys_matrices():
    volume, carm = off_centre_box(), two_views()
    c = correspondence(volume, carm)
    assert c.max() > 0.5
    assert_correspondence_valid(c, GRID, 2)
    assert_correspondence_valid(c[0], GRID, 2)  # one sample without its batch dim
    assert_epipolar_consistent(c, volume, carm, patch_size=PATCH, coarse_voxel_size=EDGE)
    swapped = correspondence(volume, carm.select_views([1, 0]))
    assert_views_permute_blocks(c, swapped, [1, 0], GRID)


def test_epipolar_check_catches_a_flipped_detector_axis():
    volume, carm = off_centre_box(), two_views()
    c = correspondence(volume, carm)
    # Patches of view 0 read with their columns in reverse: a detector u axis of the wrong sign.
    perms = torch.stack([patch_permutation(GRID, "hflip"), patch_permutation(GRID, "identity")])
    flipped = permute_views_patches(c, perms)
    assert_correspondence_valid(flipped, GRID, 2)  # still a valid-looking matrix
    with pytest.raises(AssertionError, match=r"block \(view 0, view 0\).*other cameras"):
        assert_epipolar_consistent(flipped, volume, carm, patch_size=PATCH, coarse_voxel_size=EDGE)


def test_epipolar_check_catches_sid_mixed_up_with_the_isocenter_to_detector_distance():
    volume, carm = off_centre_box(), two_views(sid=400.0, sdd=600.0, pixel_spacing=3.0)
    mixed_up = two_views(sid=200.0, sdd=600.0, pixel_spacing=3.0)  # sdd - sid given as sid: twice the magnification
    assert_epipolar_consistent(correspondence(volume, carm), volume, carm, patch_size=PATCH, coarse_voxel_size=EDGE)
    with pytest.raises(AssertionError, match="non-zero entries"):
        assert_epipolar_consistent(correspondence(volume, mixed_up), volume, carm, patch_size=PATCH,
                                   coarse_voxel_size=EDGE)


def test_epipolar_check_catches_a_matrix_of_another_volume():
    carm = two_views()
    moved = box_volume((12, 12, 12), (7, 7, 1), (11, 11, 5), hu=200.0, spacing=4.0)  # the box in the other corner
    with pytest.raises(AssertionError, match="another volume"):
        assert_epipolar_consistent(correspondence(moved, carm), off_centre_box(), carm, patch_size=PATCH,
                                   coarse_voxel_size=EDGE)


def test_validity_check_catches_asymmetry_range_non_finite_and_shape():
    c = correspondence(off_centre_box(), two_views())
    asymmetric = c.clone()
    asymmetric[0, 3, 20] = 0.5 if float(c[0, 3, 20]) != 0.5 else 0.25
    with pytest.raises(AssertionError, match=r"not symmetric.*view 0 patch 3 \(token 3\) x view 1 patch 4"):
        assert_correspondence_valid(asymmetric, GRID, 2)
    with pytest.raises(AssertionError, match=r"\[0, 1\]"):
        assert_correspondence_valid(c * 1.5 + 0.1, GRID, 2)
    with pytest.raises(AssertionError, match=r"\[0, 1\]"):
        assert_correspondence_valid(-c - 0.1, GRID, 2)
    not_finite = c.clone()
    not_finite[0, 5, 5] = float("nan")
    with pytest.raises(AssertionError, match="non-finite.*token 5"):
        assert_correspondence_valid(not_finite, GRID, 2)
    with pytest.raises(AssertionError, match=r"shape \(B, 48, 48\).*patch size"):
        assert_correspondence_valid(c, GRID, 3)
    with pytest.raises(AssertionError, match="shape"):
        assert_correspondence_valid(c[0, 0], GRID, 2)
    with pytest.raises(AssertionError, match="tensor"):
        assert_correspondence_valid(c.tolist(), GRID, 2)
    with pytest.raises(AssertionError, match="shape"):
        assert_epipolar_consistent(c[:, :16, :16], off_centre_box(), two_views(), patch_size=PATCH,
                                   coarse_voxel_size=EDGE)


def test_permutation_check_catches_the_wrong_order():
    volume, carm = off_centre_box(), two_views()
    c = correspondence(volume, carm)
    with pytest.raises(AssertionError, match=r"order \[0, 1\]"):
        assert_views_permute_blocks(c, correspondence(volume, carm.select_views([1, 0])), [0, 1], GRID)
    with pytest.raises(AssertionError, match="permutation of range"):
        assert_views_permute_blocks(c, c, [0, 0], GRID)


def test_reference_agrees_with_the_library_and_covers_its_entries():
    volume = blob_volume(size=8, spacing=4.0, seed=3)
    carm = CArm(alpha=torch.tensor([0.2, 1.4]), sid=400.0, sdd=600.0, height=16, pixel_spacing=4.0)
    fast = patch_correspondence(volume, carm, patch_size=PATCH, coarse_voxel_size=EDGE, rays_per_patch=2)
    slow = reference_correspondence(volume, carm, patch_size=PATCH, coarse_voxel_size=EDGE, rays_per_patch=2)
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-4)
    assert_epipolar_consistent(slow, volume, carm, patch_size=PATCH, coarse_voxel_size=EDGE)
    covers = coarse_voxel_covers(volume, carm, EDGE, PATCH)
    assert covers.shape == (2, 64, 4) and covers.dtype == torch.bool and bool(covers.any(-1).all())


def test_helpers_refuse_batches():
    volume, carm = off_centre_box(), CArm(alpha=torch.zeros(2, 2), sid=400.0, sdd=600.0, height=16, pixel_spacing=4.0)
    with pytest.raises(ValueError, match=r"carm: .*B = 2"):
        reference_correspondence(volume, carm, patch_size=PATCH, coarse_voxel_size=EDGE, rays_per_patch=1)
    with pytest.raises(ValueError, match=r"carm: .*B = 2"):
        coarse_voxel_covers(volume, carm, EDGE, PATCH)
    with pytest.raises(ValueError, match="rays_per_patch"):
        reference_correspondence(volume, carm.select(0), patch_size=PATCH, coarse_voxel_size=EDGE, rays_per_patch=0)


def test_strategies_name_the_extra_when_hypothesis_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    monkeypatch.delitem(sys.modules, "onthefly.testing.strategies", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'onthefly\[testing\]'"):
        importlib.import_module("onthefly.testing.strategies")


# ---------------------------------------------------------------------------
# The strategies draw what their docstrings say


@settings(max_examples=8, deadline=None)
@given(volumes(max_offset=20.0))
def test_volumes_are_small_anisotropic_and_in_hu_range(volume):
    assert volume.hu.shape[1:] in {(n, n, n) for n in (8, 10, 12)}
    assert float(volume.hu.min()) >= -1000 and float(volume.hu.max()) <= 1500
    assert all(2.0 <= float(s) <= 5.0 for s in volume.spacing)
    centre = volume.affine.double() @ torch.tensor([*((n - 1) / 2 for n in volume.shape), 1.0], dtype=torch.float64)
    assert float(centre[:3].abs().max()) <= 20.0 + 1e-4


@settings(max_examples=8, deadline=None)
@given(carms(extent=48.0, max_isocenter_offset=6.0))
def test_carms_see_the_volume_centre_from_every_view(carm):
    assert bool((carm.sdd > carm.sid).all())
    b, v = carm.batch_shape
    assert 1 <= b <= 2 and 2 <= v <= 3 and carm.height % 8 == 0 and carm.width % 8 == 0
    pixels = project_points(carm, torch.zeros(b, 1, 3))  # (B, V, 1, 2): (row, column)
    assert bool((pixels >= 0).all()) and bool((pixels[..., 0] <= carm.height - 1).all())
    assert bool((pixels[..., 1] <= carm.width - 1).all())


@settings(max_examples=5, deadline=None)
@given(scenes(max_batch=2))
def test_scenes_are_consistent_and_give_valid_matrices(scene):
    batch, views = scene.carm.batch_shape
    assert len(scene.volumes) == batch and scene.carm.height % scene.patch_size == 0
    assert scene.carm.width % scene.patch_size == 0 and scene.footprint in (None, "separable", 2, 3)
    c = scene.correspondence(coarse_voxel_size=10.0)
    assert_correspondence_valid(c, scene.grid, views)
    assert_epipolar_consistent(c, scene.volumes, scene.carm, patch_size=scene.patch_size, coarse_voxel_size=10.0)
    assert float(render(scene.volumes, scene.carm).amax(dim=(-2, -1)).min()) > 0  # every view sees tissue
