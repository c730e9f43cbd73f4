"""onthefly.testing: the checks pass on the library's own matrices and catch planted bugs; the strategies draw valid scenes."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from onthefly import CArm, Volume, patch_correspondence, project_points, render
from onthefly.correspondence import IMAGE_OPERATIONS, patch_permutation, permute_views_patches
from onthefly.geometry import rotation_matrix
from onthefly.testing import (
    assert_correspondence_valid,
    assert_epipolar_consistent,
    assert_image_operations_permute,
    assert_points_correspond,
    assert_projects_like,
    assert_resampling_stable,
    assert_rigid_motion_invariant,
    assert_views_permute_blocks,
    blob_volume,
    box_volume,
    coarse_voxel_covers,
    finer_volume,
    reference_correspondence,
    rigid_motion,
    tissue_points,
)
from onthefly.testing.strategies import carms, sample_params, scenes, volumes

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


# ---------------------------------------------------------------------------
# More strategies: phantoms, rotated and off-centre affines, degenerate C-arm corners, sampler parameters


@settings(max_examples=8, deadline=None)
@given(volumes(max_offset=20.0, rotated=True))
def test_rotated_volumes_keep_their_spacing_and_centre(volume):
    linear = volume.affine[:3, :3].double() / volume.spacing.double()
    torch.testing.assert_close(linear.T @ linear, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
    assert float(torch.linalg.det(linear)) > 0
    assert all(n <= 12 for n in volume.shape) and float(volume.center.abs().max()) <= 20.0 * 3**0.5 + 1e-3
    assert float(volume.hu.max()) > -900  # every kind holds tissue


@settings(max_examples=4, deadline=None)
@given(volumes(kinds=("phantom",), sizes=(10,), rotated=True, max_offset=5.0))
def test_phantom_volumes_are_cores_of_procedural_phantoms(volume):
    """About 0.05 s per phantom at 4 mm on a quiet machine (a few seconds when the cores are shared)."""
    assert all(n <= 10 for n in volume.shape) and torch.allclose(volume.spacing, torch.full((3,), 4.0, dtype=torch.float64))
    assert volume.labels is not None and float(volume.hu.max()) > -200  # soft tissue at least


def is_corner(carm: CArm, corner: str) -> bool:
    """Whether ``carm`` is an example of the degenerate ``corner`` (float64 cameras)."""
    magnification = carm.sdd / carm.sid
    if corner == "opposite":  # view 1 looks from the other side of view 0's isocenter
        sources = carm.source_positions()
        return bool(torch.allclose(sources[:, 1] + sources[:, 0], 2 * carm.isocenter[:, 0], atol=1e-6))
    if corner == "grazing":  # every camera axis along a world axis
        rotation = carm.rotation().abs()
        return bool((rotation.round() - rotation).abs().max() < 1e-9)
    if corner == "tiny_magnification":
        return float(magnification.max()) <= 1.02
    return float(magnification.min()) >= 5.0 and float(carm.sid.max()) <= 1.5 * 3**0.5 * 30.0 + 1e-6


@pytest.mark.parametrize("corner", ["opposite", "grazing", "tiny_magnification", "huge_magnification"])
def test_carm_corners_are_drawn_and_are_what_they_say(corner):
    strategy = carms(corners=(corner,), dtype=torch.float64)
    example = find(strategy, lambda carm: is_corner(carm, corner), settings=settings(max_examples=200, database=None))
    assert is_corner(example, corner)


@settings(max_examples=12, deadline=None)
@given(carms(corners=("opposite", "grazing", "tiny_magnification", "huge_magnification"), dtype=torch.float64))
def test_carm_corners_see_the_volume_from_outside(carm):
    magnification = carm.sdd / carm.sid
    assert 1.001 <= float(magnification.min()) and float(magnification.max()) <= 20.0
    # Sources outside the bounding sphere of a 48 mm cube whose centre is within 6 mm of the origin.
    assert float((carm.source_positions() - carm.isocenter).norm(dim=-1).min()) > 3**0.5 * 30.0
    pixels = project_points(carm, torch.zeros(carm.batch_shape[0], 1, 3, dtype=torch.float64))
    assert bool((pixels >= -0.5).all()) and bool((pixels[..., 0] <= carm.height - 0.5).all())
    assert bool((pixels[..., 1] <= carm.width - 0.5).all())


def test_strategies_refuse_bad_arguments_naming_them():
    for call, name in [
        (lambda: volumes(kinds=("cloud",)), "kinds"),
        (lambda: volumes(spacing=(5.0, 2.0)), "spacing"),
        (lambda: volumes(sizes=(1,)), "sizes"),
        (lambda: volumes(sizes=(8.5,)), "sizes"),
        (lambda: volumes(max_offset=-1.0), "max_offset"),
        (lambda: volumes(phantom_spacing=(8.0,), kinds=("phantom",)), "phantom_spacing"),
        (lambda: carms(corners=("sideways",)), "corners"),
        (lambda: carms(sid=(20.0, 600.0)), "sid"),
        (lambda: carms(max_views=1, min_views=1, corners=("opposite",)), "corners"),
        (lambda: carms(extent=None), "pixel_spacing"),
        (lambda: carms(tilt=2.0), "tilt"),
        (lambda: carms(grids=[(0, 4)]), "grids"),
        (lambda: carms(dtype=torch.float16), "dtype"),
        (lambda: scenes(max_views=1), "max_views"),
    ]:
        with pytest.raises(ValueError, match=name):
            call()
    with pytest.raises(TypeError, match="sampler"):
        sample_params(object())


class StoreOf:
    """A stand-in store of CTs of the given shapes (what sample_params reads before drawing)."""

    def __init__(self, shapes):
        self.shapes = torch.tensor(shapes, dtype=torch.long).reshape(-1, 3)

    def __len__(self):
        return self.shapes.shape[0]


def test_sample_params_refuses_stores_it_cannot_crop():
    config = small_sampler().config  # crops of 10 voxels
    for shapes, message in [([], "no CT"), ([[16, 16, 16], [16, 8, 16]], r"crops of \(10, 10, 10\) voxels")]:
        with pytest.raises(ValueError, match=f"sampler: .*{message}"):
            sample_params(SimpleNamespace(config=config, store=StoreOf(shapes)))


@functools.lru_cache(maxsize=1)
def small_sampler():
    from onthefly import DRRCorrespondenceSampler

    return DRRCorrespondenceSampler(volumes=[blob_volume(size=16, spacing=4.0, seed=seed) for seed in range(2)],
                                    views=2, image_size=32, patch_size=8, crop_size=40.0, spacing=4.0, batch_size=2,
                                    sid=(300.0, 500.0), sdd=(600.0, 700.0), isocenter_jitter=5.0,
                                    augmentation=None)  # intensity noise is drawn per batch, not per sample


@settings(max_examples=4, deadline=None)
@given(st.data())
def test_sample_params_are_valid_and_a_batch_equals_its_rows(data):
    sampler = small_sampler()
    params = data.draw(sample_params(sampler))
    assert params.alpha.shape == (2, 2) and bool((params.sdd > params.sid).all())
    assert bool((params.sid >= 300.0).all()) and bool((params.sdd <= 700.0).all())
    assert bool((params.crop_start >= 0).all()) and bool((params.crop_stop <= sampler.store.shapes[params.volume_index]).all())
    batch = sampler.make_batch(params)
    assert_correspondence_valid(batch.correspondence, (4, 4), 2)
    for b in range(2):
        single = sampler.make_batch(params.rows(torch.tensor([b])))
        torch.testing.assert_close(single.images[0], batch.images[b], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(single.correspondence[0], batch.correspondence[b], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------
# Points, projections and metamorphic relations


@settings(max_examples=10, deadline=None)
@given(scenes(max_batch=1, footprints=st.sampled_from([None, "separable"])), st.integers(0, 1000))
def test_points_of_tissue_are_matched_in_the_librarys_matrices(scene, seed):
    points = tissue_points(scene.volumes[0], 24, seed=seed)
    assert_points_correspond(scene.correspondence(), scene.carm, points, scene.patch_size)


def test_points_check_catches_mirrored_views_and_other_distances():
    volume, carm = off_centre_box(), two_views()
    points = tissue_points(volume, 40)
    c = correspondence(volume, carm)
    assert_points_correspond(c, carm, points, PATCH, min_value=0.0)
    perms = torch.stack([patch_permutation(GRID, "vflip"), patch_permutation(GRID, "identity")])
    with pytest.raises(AssertionError, match=r"views 0 and 0 .*not matched"):
        assert_points_correspond(permute_views_patches(c, perms), carm, points, PATCH)
    with pytest.raises(AssertionError, match="not matched"):
        assert_points_correspond(correspondence(volume, two_views(sid=400.0)), carm, points, PATCH)
    with pytest.raises(ValueError, match="points"):
        assert_points_correspond(c, carm, points[:, :2], PATCH)
    with pytest.raises(AssertionError, match="shape"):
        assert_points_correspond(c, carm, points, 4)


def test_tissue_points_lie_in_tissue_and_refuse_air():
    volume = off_centre_box()
    points = tissue_points(volume, 30, seed=4)
    index = (points - volume.affine[:3, 3].double()) @ torch.linalg.inv(volume.affine[:3, :3].double()).T
    voxels = index.round().long()
    assert bool((volume.hu[0][voxels[:, 0], voxels[:, 1], voxels[:, 2]] > -900).all())
    with pytest.raises(ValueError, match="no voxel above"):
        tissue_points(box_volume((4, 4, 4), (0, 0, 0), (1, 1, 1), hu=-1000.0), 3)
    with pytest.raises(ValueError, match="count"):
        tissue_points(volume, 0)


def test_projection_check_names_the_kind_of_error():
    carm, points = two_views(), tissue_points(off_centre_box(), 20)
    assert_projects_like(project_points, carm, points)

    def mirrored(c, p):
        pixels = project_points(c, p)
        return torch.stack([c.height - 1 - pixels[..., 0], pixels[..., 1]], -1)

    for wrong, message in [
        (lambda c, p: project_points(c, p) + 0.5, "half-pixel offset"),
        (mirrored, "rows are mirrored"),
        (lambda c, p: project_points(c, p).flip(-1), "swapped"),
        (lambda c, p: project_points(two_views(pixel_spacing=5.0), p), "magnification"),
        (lambda c, p: project_points(two_views(sid=300.0), p), "sid and sdd swapped"),
        (lambda c, p: project_points(c, p)[..., :1], r"shape \(1, 2, 20, 2\)"),
    ]:
        with pytest.raises(AssertionError, match=message):
            assert_projects_like(wrong, carm, points)


@settings(max_examples=8, deadline=None)
@given(volumes(max_offset=10.0, rotated=True), carms(max_batch=1), st.tuples(*[st.floats(-math.pi, math.pi)] * 3),
       st.tuples(*[st.floats(-80.0, 80.0)] * 3), st.sampled_from(["exact", "separable"]))
def test_rigid_motion_moves_images_not_and_keeps_the_librarys_matrices(volume, carm, angles, shift, footprint):
    motion = torch.eye(4, dtype=torch.float64)
    motion[:3, :3] = rotation_matrix(*(torch.tensor(a, dtype=torch.float64) for a in angles))
    motion[:3, 3] = torch.tensor(shift, dtype=torch.float64)
    moved_volume, moved_carm = rigid_motion(volume, carm, motion)
    torch.testing.assert_close(render(moved_volume, moved_carm), render(volume, carm), atol=2e-3, rtol=2e-3)
    assert_rigid_motion_invariant(
        lambda v, c: patch_correspondence(v, c, patch_size=8, coarse_voxel_size=10.0, footprint=footprint),
        volume, carm, motion)


def test_rigid_motion_check_catches_code_that_ignores_the_affine():
    volume, carm = off_centre_box(), two_views()
    motion = torch.eye(4, dtype=torch.float64)
    motion[:3, :3] = rotation_matrix(*(torch.tensor(a, dtype=torch.float64) for a in (0.8, 0.3, -0.5)))

    def axis_aligned(v, c):  # reads the voxels as if the volume were never rotated
        return correspondence(Volume.from_tensor(v.hu, spacing=v.spacing.tolist()), c)

    assert_rigid_motion_invariant(correspondence, volume, carm, motion)
    with pytest.raises(AssertionError, match="rigid motion changed C"):
        assert_rigid_motion_invariant(axis_aligned, volume, carm, motion)
    for bad in (torch.eye(3), 2 * torch.eye(4), torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0]))):
        with pytest.raises(ValueError, match="motion"):
            rigid_motion(volume, carm, bad)


@settings(max_examples=8, deadline=None)
@given(volumes(spacing=4.0, kinds=("blob", "box", "phantom"), phantom_spacing=(4.0,)), carms(max_batch=1),
       st.sampled_from([2, 3]))
def test_finer_grids_of_the_same_volume_keep_the_matrix(volume, carm, factor):
    """With a coarse edge of whole voxels on both grids (8 mm: 2 voxels of 4 mm, 4 or 6 finer ones), C stays put."""
    fine = finer_volume(volume, factor)
    assert fine.shape == tuple(n * factor for n in volume.shape)
    torch.testing.assert_close(fine.center, volume.center)
    assert_resampling_stable(lambda v, c: patch_correspondence(v, c, patch_size=8, coarse_voxel_size=8.0), volume, carm,
                             factor=factor, mean_change=1e-5, max_change=1e-4)


def test_resampling_check_catches_a_coarse_edge_in_voxels():
    volume, carm = blob_volume(size=12, spacing=4.0, seed=5), two_views()

    def in_voxels(v, c):  # the coarse edge given in voxels, not mm: it shrinks with the spacing
        return patch_correspondence(v, c, patch_size=PATCH, coarse_voxel_size=3 * float(v.spacing[0]))

    assert_resampling_stable(correspondence, volume, carm)
    with pytest.raises(AssertionError, match="finer grid changed C by"):
        assert_resampling_stable(in_voxels, volume, carm)
    with pytest.raises(ValueError, match="factor"):
        finer_volume(volume, 0)


@settings(max_examples=8, deadline=None)
@given(scenes(max_batch=2), st.data())
def test_augmentations_geometric_operations_permute_c_as_checked(scene, data):
    from onthefly.augment import apply_geometric

    batch, views = len(scene.volumes), scene.carm.batch_shape[1]
    square = scene.grid[0] == scene.grid[1] and scene.carm.height == scene.carm.width
    codes = st.sampled_from(range(6) if square else (0, 1, 2, 4))
    operation = torch.tensor([[data.draw(codes) for _ in range(views)] for _ in range(batch)])
    c = scene.correspondence()
    images = render(scene.volumes, scene.carm)
    _, moved = apply_geometric(images, operation, correspondence=c, patch_size=scene.patch_size)
    assert_image_operations_permute(c, moved, operation, scene.grid)
    names = [IMAGE_OPERATIONS[int(code)] for code in operation[0]]
    assert_image_operations_permute(c[:1], moved[:1], names, scene.grid)


def test_image_operation_check_catches_the_wrong_operation_and_bad_names():
    c = correspondence(off_centre_box(), two_views())
    flipped = permute_views_patches(c, torch.stack([patch_permutation(GRID, "hflip"), patch_permutation(GRID, "identity")]))
    assert_image_operations_permute(c, flipped, ["hflip", "identity"], GRID)
    with pytest.raises(AssertionError, match="image operations"):
        assert_image_operations_permute(c, flipped, ["vflip", "identity"], GRID)
    with pytest.raises(ValueError, match="operations"):
        assert_image_operations_permute(c, flipped, ["hflip"], GRID)
    with pytest.raises(ValueError, match="operations"):
        assert_image_operations_permute(c, flipped, torch.tensor([[1, 9]]), GRID)


# ---------------------------------------------------------------------------
# The examples in examples/property_tests, and planted bugs


def example_module(name: str):
    path = Path(__file__).resolve().parents[1] / "examples" / "property_tests" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"property_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NO_SHRINK = dict(phases=[Phase.explicit, Phase.reuse, Phase.generate])  # the first failure is enough here


def test_toy_matcher_with_its_planted_bug_fails_the_epipolar_check():
    example = example_module("test_toy_matcher")
    buggy = functools.partial(example.toy_matcher, mirror_columns=True)
    with pytest.raises(AssertionError, match="no non-air coarse voxel's projected box covers"):
        example.matcher_property(buggy, **NO_SHRINK)()


def test_crop_and_resize_with_its_planted_bug_fails():
    example = example_module("test_crop_and_resize")
    buggy = functools.partial(example.crop_and_resize, wrong_spacing=True)
    with pytest.raises(AssertionError, match="not close"):
        example.augmentation_property(buggy, **NO_SHRINK)()


def mutant(bug: str):
    """A copy of the example's hand-written projection with one planted bug."""
    pinhole_project = example_module("test_pinhole_projection").pinhole_project

    def project(carm, points):
        if bug == "swapped_distances":  # sid and sdd given the other way round (sdd - sid kept as the gap)
            carm = CArm(alpha=carm.alpha, beta=carm.beta, gamma=carm.gamma, sid=carm.sdd, sdd=2 * carm.sdd - carm.sid,
                        isocenter=carm.isocenter, height=carm.height, width=carm.width,
                        pixel_spacing=carm.pixel_spacing)
        pixels = pinhole_project(carm, points)
        if bug == "flipped_axis":
            pixels = torch.stack([pixels[..., 0], carm.width - 1 - pixels[..., 1]], -1)
        if bug == "half_pixel":  # the detector centre at (H / 2, W / 2) instead of ((H - 1) / 2, (W - 1) / 2)
            pixels = pixels + 0.5
        return pixels

    return project


@pytest.mark.parametrize("bug", ["flipped_axis", "half_pixel", "swapped_distances"])
def test_mutants_of_a_projection_are_caught_within_the_default_examples(bug):
    example = example_module("test_pinhole_projection")
    calls, project = [], mutant(bug)

    def counted(carm, points):
        calls.append(1)
        return project(carm, points)

    diagnosis = {"flipped_axis": "columns are mirrored", "half_pixel": "half-pixel offset",
                 "swapped_distances": "sid and sdd swapped"}[bug]
    with pytest.raises(AssertionError, match=f"differs from onthefly.project_points.*{diagnosis}"):
        example.projection_property(counted, **NO_SHRINK)()
    # The property test runs 25 examples (hypothesis' own default is 100); each mutant fails within them.
    assert len(calls) <= 25
