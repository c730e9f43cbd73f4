"""Patch correspondence: a brute-force reference and the properties the README's correspondence section states."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from onthefly import CArm, Volume, project_points, render
from onthefly.correspondence import (
    correspondence_map,
    pixel_ray,
    epipolar_line,
    patch_correspondence,
    patch_permutation,
    permute_views_patches,
    voxel_weights,
)
from onthefly.testing import (
    assert_correspondence_valid,
    assert_epipolar_consistent,
    assert_image_operations_permute,
    assert_rigid_motion_invariant,
    assert_views_permute_blocks,
    blob_volume,
    reference_correspondence,
)
from onthefly.testing.strategies import FOOTPRINTS, Scene, scenes

SID, SDD, SPACING, PATCH, DETECTOR = 400.0, 600.0, 2.0, 8, 32
GRID = (DETECTOR // PATCH, DETECTOR // PATCH)


def make_carm(alpha, beta=0.0, gamma=0.0, isocenter=(0.0, 0.0, 0.0), sid=SID, sdd=SDD, detector=DETECTOR):
    alpha = torch.as_tensor(alpha, dtype=torch.float32)
    return CArm(
        alpha=alpha, beta=torch.as_tensor(beta, dtype=torch.float32), gamma=torch.as_tensor(gamma, dtype=torch.float32),
        sid=sid, sdd=sdd, isocenter=torch.as_tensor(isocenter, dtype=torch.float32),
        height=detector, pixel_spacing=SPACING,
    )


def test_fast_path_matches_brute_force_reference():
    volume = blob_volume(size=12, spacing=4.0, seed=1)
    carm = make_carm([0.3, 1.9, 4.0], beta=[0.0, 0.2, -0.1], gamma=[0.0, 0.1, 0.4])
    for edge, rays in [(12.0, 2), (8.0, 3)]:
        fast = patch_correspondence(volume, carm, patch_size=PATCH, coarse_voxel_size=edge, rays_per_patch=rays)
        slow = reference_correspondence(volume, carm, patch_size=PATCH, coarse_voxel_size=edge, rays_per_patch=rays)
        assert fast.shape == slow.shape == (1, 3 * 16, 3 * 16)
        assert slow.max() > 0.5
        torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-4)


def test_binary_weighting_matches_reference_and_default_edge():
    volume = blob_volume(size=12, spacing=4.0, seed=2)
    carm = make_carm([0.0, math.pi / 2])
    fast = patch_correspondence(volume, carm, patch_size=PATCH, weighting="binary", rays_per_patch=2)
    edge = PATCH * SPACING * SID / SDD  # default: one patch back-projected to the isocenter
    slow = reference_correspondence(volume, carm, patch_size=PATCH, coarse_voxel_size=edge, rays_per_patch=2,
                                    weighting="binary")
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-4)
    assert float(fast.max()) == pytest.approx(1.0, abs=1e-6)  # a fully non-air coarse voxel exists


# ---------------------------------------------------------------------------
# Properties (hypothesis over poses, detectors, patch sizes, distances, spacings, batches and footprint methods)

# Invariances under camera motions are checked for exact footprints: in symmetric poses sampled rays can graze
# voxel faces exactly, and a rounding-level change of the camera then moves a ray across a face.
EXACT = st.just(None)
ANALYTIC = st.sampled_from([None, "separable"])  # the separable footprints share these invariances


@settings(max_examples=15, deadline=None)
@given(scenes())
def test_symmetric_and_in_unit_range(scene):
    c = scene.correspondence()
    tokens = scene.carm.batch_shape[1] * scene.grid[0] * scene.grid[1]
    assert c.shape == (max(len(scene.volumes), scene.carm.batch_shape[0]), tokens, tokens)
    assert_correspondence_valid(c, scene.grid, scene.carm.batch_shape[1])


@settings(max_examples=8, deadline=None)
@given(scenes())
def test_all_air_volume_gives_zeros(scene):
    air = [Volume(hu=torch.full_like(volume.hu, -1000.0), affine=volume.affine) for volume in scene.volumes]
    assert scene.correspondence(air).abs().max() == 0


@settings(max_examples=10, deadline=None)
@given(scenes(max_batch=1), st.integers(0, 63))
def test_single_voxel_gives_rank_one_outer_product(scene, position):
    hu = torch.full((8, 8, 8), -1000.0)
    hu[2 * (position // 16) : 2 * (position // 16) + 2, 2 * ((position // 4) % 4) : 2 * ((position // 4) % 4) + 2,
       2 * (position % 4) : 2 * (position % 4) + 2] = 200.0
    single = Volume.from_tensor(hu, spacing=4.0)
    c = scene.correspondence(single, coarse_voxel_size=8.0)[0]
    weight = float(torch.sigmoid(torch.tensor(0.005 * 350.0)))
    views = scene.carm.batch_shape[1]
    p = (torch.diagonal(c) / weight).sqrt()  # one coarse voxel: C = w * outer(p, p) with p read off the diagonal
    torch.testing.assert_close(c, weight * torch.outer(p, p), atol=1e-5, rtol=1e-4)
    seen = [float(p.view(views, -1)[a].max()) for a in range(views)]
    # Normalised where seen; a footprint fades below 1 only where its best patch holds under 0.1 % of the
    # voxel's shadow (see onthefly.footprints), which needs the voxel's centre to project off the detector.
    index = torch.tensor([2 * (position // 16), 2 * ((position // 4) % 4), 2 * (position % 4)], dtype=torch.float64)
    centre = single.affine.to(torch.float64) @ torch.cat([index + 0.5, torch.ones(1, dtype=torch.float64)])
    projected = scene.carm.projection_matrices().to(torch.float64)[0] @ centre  # (V, 3)
    pixel = projected[:, :2] / projected[:, 2:]
    on_detector = ((pixel[:, 0] > -0.5) & (pixel[:, 0] < scene.carm.height - 0.5) & (pixel[:, 1] > -0.5)
                   & (pixel[:, 1] < scene.carm.width - 0.5) & (projected[:, 2] > 0))
    for view, value in enumerate(seen):
        faded = 0.0 < value < 1.0 - 1e-5
        assert not faded or not bool(on_detector[view]), (view, value)
        assert value <= 1.0 + 1e-5
    if all(value == pytest.approx(1.0, abs=1e-5) for value in seen):
        assert float(c.max()) == pytest.approx(weight, rel=1e-4)


@settings(max_examples=10, deadline=None)
@given(scenes(max_batch=1, footprints=ANALYTIC), st.floats(-math.pi, math.pi), st.tuples(*[st.floats(-50.0, 50.0)] * 3))
def test_rigid_motion_of_volume_and_cameras_changes_nothing(scene, angle, shift):
    """Turning about z and moving everything: same matrix (to float32 geometry; footprints of voxels that
    barely reach the detector are normalised by a sliver, hence the tolerance)."""
    rotation = torch.tensor(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    motion = torch.eye(4, dtype=torch.float64)
    motion[:3, :3] = rotation
    motion[:3, 3] = torch.tensor(shift, dtype=torch.float64)
    assert_rigid_motion_invariant(scene.correspondence, scene.volumes[0], scene.carm, motion, atol=5e-3)


def _leak_scene() -> Scene:
    """A scene where the footprints once leaked past a voxel's projected box (by 7e-6): projection matrices
    computed in float32 put a corner about 1e-2 pixel off, on the far side of a patch boundary."""
    carm = CArm(alpha=torch.tensor([[1.8680161237716675, 4.520444393157959]]), beta=torch.zeros(1, 2),
                gamma=torch.tensor([[3.1415927410125732, -0.0]]), sid=300.0, sdd=600.0,
                isocenter=torch.tensor([[[0.059774961322546005, 0.3206321597099304, -1.182052611174711e-12]]]),
                height=32, width=32, pixel_spacing=4.696033954620361)
    volume = blob_volume(size=12, spacing=(2.0, 2.525834560394287, 4.763664245605469), seed=0)
    return Scene(carm, [volume], 8, None)


@settings(max_examples=10, deadline=None)
@given(scenes(max_batch=1))
@example(_leak_scene())
def test_nonzero_entries_lie_on_a_common_voxel(scene):
    """Epipolar consistency: C[a,i ; b,j] > 0 only if one coarse voxel's projected box covers both patches."""
    edge = 10.0
    c = scene.correspondence(coarse_voxel_size=edge)
    assert_epipolar_consistent(c, scene.volumes[0], scene.carm, patch_size=scene.patch_size, coarse_voxel_size=edge)


@settings(max_examples=10, deadline=None)
@given(scenes(max_batch=1), st.tuples(*[st.integers(0, 2)] * 3), st.tuples(*[st.integers(1, 2)] * 3), FOOTPRINTS)
def test_patches_whose_rays_miss_the_volume_have_empty_rows(scene, start, blocks, rays):
    """A patch whose DRR is empty around it (no ray near it meets tissue) has an empty row; patches
    whose every pixel sees tissue do not. The tissue is a box on the coarse grid, so coarse voxels are all
    tissue or all air."""
    hu = torch.full((12, 12, 12), -1000.0)
    stop = [3 * (s + b) for s, b in zip(start, blocks)]
    hu[3 * start[0] : stop[0], 3 * start[1] : stop[1], 3 * start[2] : stop[2]] = 100.0
    volume = Volume.from_tensor(hu, spacing=3.0)
    footprint = dict(footprint="separable") if rays == "separable" else dict(rays_per_patch=rays)
    c = patch_correspondence(volume, scene.carm, patch_size=scene.patch_size, coarse_voxel_size=9.0, **footprint)[0]
    drr = render(volume, scene.carm)[0, :, 0]  # (V, H, W)
    patch_sums = torch.nn.functional.avg_pool2d(drr[:, None], scene.patch_size)[:, 0]
    dilated = torch.nn.functional.max_pool2d(patch_sums[:, None], 3, stride=1, padding=1)[:, 0]
    empty = (dilated == 0).reshape(-1)
    covered = (-torch.nn.functional.max_pool2d(-drr[:, None], scene.patch_size)[:, 0] > 0).reshape(-1)
    if bool(empty.any()):
        assert c[empty].abs().max() == 0
    if bool(covered.any()) and rays in (None, "separable"):  # closed forms see every patch a shadow overlaps
        assert (c[covered].amax(1) > 0).all()


@settings(max_examples=10, deadline=None)
@given(scenes(max_views=4), st.randoms(use_true_random=False))
def test_permuting_views_permutes_blocks(scene, rnd):
    views = scene.carm.batch_shape[1]
    order = list(range(views))
    rnd.shuffle(order)
    c = scene.correspondence()
    permuted = scene.correspondence(carm=scene.carm.select_views(order))
    assert_views_permute_blocks(c, permuted, order, scene.grid, atol=1e-6)


def rebuilt(carm: CArm, **changes) -> CArm:
    fields = dict(alpha=carm.alpha, beta=carm.beta, gamma=carm.gamma, sid=carm.sid, sdd=carm.sdd,
                  isocenter=carm.isocenter, height=carm.height, width=carm.width, pixel_spacing=carm.pixel_spacing)
    return CArm(**(fields | changes))


@settings(max_examples=10, deadline=None)
@given(scenes(max_batch=1, footprints=ANALYTIC), st.sampled_from([1, 2, 3]))
def test_in_plane_rotation_of_a_view_equals_rot90_of_its_patches(scene, quarter_turns):
    """Rolling view 0 by k quarter turns (gamma) rotates its image by rot90(-k): C follows the patch permutation."""
    if quarter_turns % 2 and scene.grid[0] != scene.grid[1]:
        scene = Scene(rebuilt(scene.carm, width=scene.carm.height), scene.volumes, scene.patch_size, scene.footprint)
    c = scene.correspondence()
    views = scene.carm.batch_shape[1]
    operation = {1: "rot270", 2: "rot180", 3: "rot90"}[quarter_turns]
    gamma = scene.carm.gamma.clone()
    gamma[:, 0] = gamma[:, 0] + quarter_turns * math.pi / 2
    rolled = scene.correspondence(carm=rebuilt(scene.carm, gamma=gamma))
    assert_image_operations_permute(c, rolled, [operation] + ["identity"] * (views - 1), scene.grid, atol=5e-3)


@settings(max_examples=10, deadline=None)
@given(scenes(max_batch=1, footprints=ANALYTIC), st.sampled_from(["hflip", "vflip"]))
def test_mirrored_scene_flips_every_view(scene, operation):
    """Mirroring the world in x (or z) and the cameras with it (alpha, gamma -> -alpha, -gamma; or beta, gamma
    -> -beta, -gamma) flips every image left-right (or up-down): C follows the patch permutation."""
    axis = 0 if operation == "hflip" else 2
    mirror = torch.eye(4, dtype=torch.float64)
    mirror[axis, axis] = -1.0
    carm, volume = scene.carm, scene.volumes[0]
    iso = carm.isocenter.clone()
    iso[..., axis] = -iso[..., axis]
    if operation == "hflip":
        mirrored_carm = rebuilt(carm, alpha=-carm.alpha, gamma=-carm.gamma, isocenter=iso)
    else:
        mirrored_carm = rebuilt(carm, beta=-carm.beta, gamma=-carm.gamma, isocenter=iso)
    mirrored = Volume(hu=volume.hu, affine=mirror @ volume.affine)
    image, flipped = render(volume, carm)[0, :, 0], render(mirrored, mirrored_carm)[0, :, 0]
    torch.testing.assert_close(flipped, image.flip(-1 if operation == "hflip" else -2), atol=1e-4, rtol=1e-3)  # pin
    assert_image_operations_permute(scene.correspondence(volume), scene.correspondence(mirrored, mirrored_carm),
                                    [operation] * carm.batch_shape[1], scene.grid, atol=5e-3)


def test_convention_rot90_of_image_matches_gamma_roll():
    """Pin: adding +pi/2 to gamma rotates the rendered image as torch.rot90(k=-1, dims=(-2, -1)) (clockwise)."""
    volume = blob_volume(size=12, seed=3)
    carm = make_carm([0.4])
    rolled = make_carm([0.4], gamma=[math.pi / 2])
    image = render(volume, carm)[0, 0, 0]
    torch.testing.assert_close(render(volume, rolled)[0, 0, 0], torch.rot90(image, -1, dims=(-2, -1)), atol=1e-4, rtol=1e-3)


def test_flips_permute_heat_maps_like_images():
    c = torch.rand(1, 32, 32)
    c = (c + c.transpose(1, 2)) / 2
    for operation in ("hflip", "vflip", "rot90", "rot180", "rot270"):
        perms = torch.stack([patch_permutation(GRID, operation), patch_permutation(GRID, "identity")])
        moved = permute_views_patches(c, perms)
        for patch in range(16):
            # The heat map of view 0 (seen from view 1) transforms like the image.
            heat = correspondence_map(c, 1, patch, 0, grid_shape=GRID)[0]
            transformed = {"hflip": heat.flip(-1), "vflip": heat.flip(-2), "rot90": torch.rot90(heat, 1),
                           "rot180": torch.rot90(heat, 2), "rot270": torch.rot90(heat, 3)}[operation]
            torch.testing.assert_close(correspondence_map(moved, 1, patch, 0, grid_shape=GRID)[0], transformed)


@settings(max_examples=8, deadline=None)
@given(scenes(max_batch=2).filter(lambda scene: len(scene.volumes) == 2))
def test_batch_equals_loop(scene):
    batched = scene.correspondence()
    for b, volume in enumerate(scene.volumes):
        single = scene.correspondence(volume, scene.carm.select(b))
        torch.testing.assert_close(batched[b : b + 1], single, atol=1e-6, rtol=0)
    shared = scene.correspondence(scene.volumes[0])  # one volume seen by every sample's cameras
    torch.testing.assert_close(shared[0:1], scene.correspondence(scene.volumes[0], scene.carm.select(0)))


@pytest.mark.parametrize("sampled", [False, True], ids=["exact", "sampled"])
def test_finer_coarse_grids_converge(sampled):
    """Towards the volume's own voxels (2 mm here), C approaches its finest-grid value (sampled footprints
    with about two rays per coarse voxel edge, so that small voxels are not missed between rays)."""
    volume = blob_volume(size=24, spacing=2.0, seed=6, air_fraction=0.3)
    carm = make_carm([0.3, 1.7])
    backprojected = PATCH * SPACING * SID / SDD

    def rays(edge: float) -> int | None:
        return max(2, round(2 * backprojected / edge)) if sampled else None

    results = [patch_correspondence(volume, carm, patch_size=PATCH, coarse_voxel_size=edge, rays_per_patch=rays(edge))
               for edge in (16.0, 8.0, 4.0, 2.0)]
    distance = [float((result - results[-1]).abs().mean()) for result in results[:-1]]
    assert distance[0] > 2 * distance[1] and distance[0] > 2 * distance[2]
    assert max(distance[1:]) < 0.1


def test_epipolar_line_passes_through_projections_of_the_ray():
    carm = make_carm([0.2, 1.5, 2.9], beta=[0.0, 0.3, -0.2])
    pixel = torch.tensor([[3.0, 20.0], [17.5, 9.25]])
    line = epipolar_line(carm, 0, pixel, 2)  # (1, 2, 3)
    source, target = pixel_ray(carm, 0, pixel)
    for t in (0.3, 0.6, 0.9):
        points = project_points(carm, source + t * (target - source))[:, 2]  # (1, 2, 2)
        distance = (line[..., 0] * points[..., 0] + line[..., 1] * points[..., 1] + line[..., 2]).abs()
        assert float(distance.max()) < 1e-3
    # A point of view 0 lies on its own projection: pixel_ray hits the pixel.
    torch.testing.assert_close(project_points(carm, target)[:, 0], pixel[None], atol=1e-3, rtol=0)


def test_correspondence_map_shape_and_values():
    volume = blob_volume(size=12, seed=7)
    carm = make_carm([0.0, 1.6])
    c = patch_correspondence(volume, carm, patch_size=PATCH)
    heat = correspondence_map(c, 0, (1, 2), 1, grid_shape=GRID)
    assert heat.shape == (1, *GRID)
    torch.testing.assert_close(heat.reshape(-1), c[0, 6, 16:])
    assert correspondence_map(c[0], 0, 6, 1, grid_shape=GRID).shape == GRID


# ---------------------------------------------------------------------------
# Bad input


def test_patch_size_must_divide_detector():
    with pytest.raises(ValueError, match="patch_size"):
        patch_correspondence(blob_volume(), make_carm([0.0, 1.0]), patch_size=5)


def test_zero_views_rejected():
    with pytest.raises(ValueError, match="empty"):
        make_carm(torch.zeros(1, 0))


def test_mismatched_batch_rejected():
    volumes = [blob_volume(seed=1), blob_volume(seed=2), blob_volume(seed=3)]
    carm = CArm(alpha=torch.zeros(2, 2), sid=SID, sdd=SDD, height=DETECTOR, pixel_spacing=SPACING)
    with pytest.raises(ValueError, match="mismatched batch"):
        patch_correspondence(volumes, carm, patch_size=PATCH)


def test_bad_options_rejected():
    volume, carm = blob_volume(), make_carm([0.0, 1.0])
    with pytest.raises(ValueError, match="weighting"):
        patch_correspondence(volume, carm, weighting="fuzzy", patch_size=PATCH)
    with pytest.raises(ValueError, match="coarse_voxel_size"):
        patch_correspondence(volume, carm, coarse_voxel_size=0.0, patch_size=PATCH)
    with pytest.raises(ValueError, match="rays_per_patch"):
        patch_correspondence(volume, carm, rays_per_patch=0, patch_size=PATCH)
    with pytest.raises(ValueError, match="view_b"):
        epipolar_line(carm, 0, torch.zeros(1, 2), 0)
    with pytest.raises(ValueError, match="patch"):
        correspondence_map(torch.zeros(1, 32, 32), 0, 99, 1, grid_shape=GRID)
    with pytest.raises(ValueError, match="operation"):
        patch_permutation(GRID, "shear")


def test_helpers_refuse_patches_views_grids_and_permutations_out_of_range():
    c = torch.zeros(1, 32, 32)
    for patch in (16, -1, (4, 0), (0, -1), (1, 2, 3)):
        with pytest.raises(ValueError, match="patch"):
            correspondence_map(c, 0, patch, 1, grid_shape=GRID)
    for grid in ((0, 4), (4, -2), (4,)):
        with pytest.raises(ValueError, match="grid_shape"):
            correspondence_map(c, 0, 0, 1, grid_shape=grid)
    with pytest.raises(ValueError, match="grid_shape"):
        patch_permutation((0, 4), "hflip")
    carm = make_carm([0.0, 1.0])
    for view in (-1, 2):
        with pytest.raises(ValueError, match="view"):
            pixel_ray(carm, view, torch.zeros(1, 2))
    with pytest.raises(TypeError, match="view"):
        pixel_ray(carm, 0.5, torch.zeros(1, 2))
    repeated = torch.stack([torch.zeros(16, dtype=torch.long), torch.arange(16)])
    with pytest.raises(ValueError, match="permutations"):
        permute_views_patches(c, repeated)
    with pytest.raises(TypeError, match="permutations"):
        permute_views_patches(c, torch.stack([torch.arange(16.0)] * 2))
    out_of_range = torch.stack([torch.arange(1, 17), torch.arange(16)])
    with pytest.raises(ValueError, match="permutations"):
        permute_views_patches(c, out_of_range)


def test_pixel_ray_hits_the_pixel_with_the_pixel_centre_convention():
    carm = make_carm([0.3, 2.0], beta=[0.1, -0.2], gamma=[0.0, 0.5])
    pixel = torch.tensor([[0.0, 0.0], [31.0, 31.0], [12.5, 3.25]])
    for view in range(2):
        source, target = pixel_ray(carm, view, pixel)
        torch.testing.assert_close(source[0, 0], carm.source_positions()[0, view])
        torch.testing.assert_close(target[0, :2], carm.pixel_positions()[0, view][[0, 31], [0, 31]], atol=1e-3, rtol=0)


def test_pool_weights_refuses_zero_batches_and_nan_thresholds():
    from onthefly.correspondence import pool_weights

    with pytest.raises(ValueError, match="batch_size"):
        pool_weights(blob_volume(), 8.0, batch_size=0)
    with pytest.raises(ValueError, match="air_threshold_hu"):
        pool_weights(blob_volume(), 8.0, air_threshold_hu=float("nan"))
    with pytest.raises(ValueError, match="air_threshold_hu"):
        patch_correspondence(blob_volume(), make_carm([0.0, 1.0]), patch_size=PATCH, air_threshold_hu=float("nan"))


def test_memory_is_estimated_before_allocating():
    volume, carm = blob_volume(), make_carm([0.0, 1.0])
    with pytest.raises(ValueError, match=r"rays_per_patch.*bytes.*memory_budget"):
        patch_correspondence(volume, carm, patch_size=PATCH, rays_per_patch=10**6)
    with pytest.raises(ValueError, match="coarse_voxel_size"):
        patch_correspondence(volume, carm, patch_size=PATCH, coarse_voxel_size=1e4)  # larger than the volume
    with pytest.raises(ValueError, match="memory_budget"):
        patch_correspondence(volume, carm, patch_size=PATCH, memory_budget=1000)
    with pytest.raises(ValueError, match="window"):
        patch_correspondence(volume, carm, patch_size=PATCH, window=0)
    fine = Volume.from_tensor(torch.full((24, 24, 24), 100.0), spacing=0.02)  # 0.48 mm: factor 1 per default edge
    assert patch_correspondence(fine, make_carm([0.0, 1.0]), patch_size=PATCH, coarse_voxel_size=0.4).max() > 0


def test_pooled_weights_are_cached_until_the_volume_changes():
    from onthefly.correspondence import pool_weights

    volume = blob_volume(size=12, seed=11)
    first = pool_weights(volume, 8.0)
    assert pool_weights(volume, 8.0) is first  # same tensor, same settings: served from the cache
    assert pool_weights(volume, 8.0, weighting="binary") is not first
    other = Volume(hu=volume.hu.clone(), affine=volume.affine)
    again = pool_weights(other, 8.0)  # equal values in another tensor: computed, and equal
    assert again is not first
    torch.testing.assert_close(again.weight, first.weight)
    volume.hu.add_(300.0)  # modified in place: the cache must not answer
    changed = pool_weights(volume, 8.0)
    assert changed is not first and not torch.equal(changed.weight, first.weight)


# ---------------------------------------------------------------------------
# Pooled weights: from volumes, and from summed-volume tables of crops.


@settings(max_examples=12, deadline=None)
@given(
    st.integers(0, 10_000),
    st.tuples(*[st.integers(0, 5)] * 3),
    st.tuples(*[st.integers(3, 12)] * 3),
    st.tuples(*[st.integers(1, 5)] * 3),
)
def test_weight_integral_pools_crops_like_pool_weights(seed, start, size, factor):
    from onthefly.correspondence import WeightIntegral, pool_weights

    volume = blob_volume(size=18, spacing=2.0, seed=seed)
    table = WeightIntegral(volume)
    start_t = torch.tensor([start])
    stop_t = torch.minimum(start_t + torch.tensor([size]), torch.tensor([volume.shape]))
    pooled = table.pool(torch.tensor([0]), start_t, stop_t, torch.tensor([factor]))
    crop = volume.crop(start_t[0].tolist(), stop_t[0].tolist())
    # pool_weights takes an edge in mm: with 2 mm voxels, factor f means 2f mm, isotropic only.
    if len(set(factor)) == 1:
        direct = pool_weights(crop, 2.0 * factor[0])
        assert direct.weight.shape == pooled.weight.shape
        torch.testing.assert_close(pooled.weight, direct.weight, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(pooled.affine, direct.affine)
    # Against a direct mean of the voxel weights, any factors.
    weights = voxel_weights(crop.hu[0].double())
    d, h, w = pooled.weight.shape[1:]
    padded = torch.zeros(d * factor[0], h * factor[1], w * factor[2], dtype=torch.float64)
    padded[: weights.shape[0], : weights.shape[1], : weights.shape[2]] = weights
    expected = padded.view(d, factor[0], h, factor[1], w, factor[2]).mean((1, 3, 5))
    torch.testing.assert_close(pooled.weight[0].double(), expected, atol=1e-6, rtol=1e-5)
    # The coarse voxel centres: coarse (0, 0, 0) is the centre of the crop's first f x f x f block.
    first_block_centre = crop.affine.double() @ torch.tensor([*(torch.tensor(factor) - 1) / 2, 1.0], dtype=torch.float64)
    torch.testing.assert_close(pooled.affine[0, :, 3], first_block_centre)
    mean = table.box_mean(torch.tensor([0]), start_t, stop_t)
    torch.testing.assert_close(mean, weights.mean()[None], atol=1e-6, rtol=1e-6)


def test_correspondence_from_pooled_weights_equals_from_volumes():
    from onthefly.correspondence import WeightIntegral

    volumes = [blob_volume(size=20, spacing=2.0, seed=seed) for seed in range(2)]
    table = WeightIntegral(volumes)
    starts = torch.tensor([[2, 0, 3], [0, 4, 1]])
    stops = starts + torch.tensor([[14, 16, 12], [16, 12, 15]])
    crops = [volumes[b].crop(starts[b].tolist(), stops[b].tolist()) for b in range(2)]
    carm = make_carm(alpha=[[0.3, 1.9], [-0.7, 2.4]], beta=[[0.1, -0.2], [0.0, 0.3]])
    edge = 8.0
    factor = torch.full((2, 3), 4)
    pooled = table.pool(torch.tensor([0, 1]), starts, stops, factor)
    fast = patch_correspondence(pooled, carm, patch_size=PATCH, rays_per_patch=3)
    direct = patch_correspondence(crops, carm, patch_size=PATCH, coarse_voxel_size=edge, rays_per_patch=3)
    assert direct.abs().sum() > 0
    torch.testing.assert_close(fast, direct, atol=1e-5, rtol=1e-4)


def test_weight_integral_rejects_crops_outside_the_volume():
    from onthefly.correspondence import WeightIntegral

    table = WeightIntegral(blob_volume(size=10, spacing=2.0))
    with pytest.raises(ValueError, match="start, stop"):
        table.pool(torch.tensor([0]), torch.tensor([[0, 0, 0]]), torch.tensor([[11, 5, 5]]), torch.tensor([[2, 2, 2]]))
    with pytest.raises(ValueError, match="volumes"):
        WeightIntegral([])
