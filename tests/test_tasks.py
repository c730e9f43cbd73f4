"""Task samplers (biplanar reconstruction, angular sequences, novel views) and the projection loss."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from onthefly import Augmentation, CArm, Volume, VolumeBatch, project_points, render
from onthefly.tasks import (
    CHEST_SDD_MM,
    CHEST_SID_MM,
    TARGET_ATTENUATION_SCALE,
    AngularSequenceSampler,
    BiplanarBatch,
    BiplanarSampler,
    NovelViewBatch,
    NovelViewSampler,
    ProjectionLoss,
    SequenceBatch,
    camera_to_world,
    relative_camera_pose,
)

SMALL = dict(image_size=32, patch_size=8, crop_size=150.0, spacing=6.0, batch_size=3)
F64 = torch.float64


@pytest.fixture(scope="module")
def small_ct(ct_small) -> Volume:
    """The bundled CT at about 6 mm (60 x 60 x 55 voxels)."""
    return ct_small


def make(cls, small_ct, **changes):
    return cls(**(SMALL | dict(volumes=[small_ct]) | changes))


def central_rays(carm: CArm) -> torch.Tensor:
    """``(B, V, 3)`` unit vectors from each view's isocenter towards its source."""
    direction = carm.source_positions().double() - carm.isocenter.double()
    return direction / direction.norm(dim=-1, keepdim=True)


def window(hu: torch.Tensor) -> torch.Tensor:
    return ((hu + 1000.0) / 3000.0).clamp(0.0, 1.0)


def camera_coordinates(carm: CArm, points: torch.Tensor) -> torch.Tensor:
    """``(B, V, P, 3)`` coordinates of world points ``(B, P, 3)`` in each camera frame, from the detector geometry."""
    source = carm.source_positions().double()
    u, v = (axis.double() for axis in carm.detector_axes())
    principal = carm.detector_centers().double() - source
    principal = principal / principal.norm(dim=-1, keepdim=True)
    offset = points.double()[:, None] - source[:, :, None]
    return torch.stack([(offset * axis[:, :, None]).sum(-1) for axis in (u, v, principal)], -1)


# ---------------------------------------------------------------------------
# Camera frames


def test_convention_camera_frame_is_source_u_v_principal():
    carm = CArm(alpha=torch.tensor([[0.3, 2.0]], dtype=F64), beta=torch.tensor([[0.1, -0.4]], dtype=F64), gamma=0.2,
                sid=700.0, sdd=1000.0, isocenter=(5.0, -3.0, 2.0), height=8, pixel_spacing=1.0)
    transform = camera_to_world(carm)
    u, v = carm.detector_axes()
    principal = carm.detector_centers() - carm.source_positions()
    torch.testing.assert_close(transform[..., :3, 3], carm.source_positions())
    torch.testing.assert_close(transform[..., :3, 0], u)
    torch.testing.assert_close(transform[..., :3, 1], v)
    torch.testing.assert_close(transform[..., :3, 2], principal / principal.norm(dim=-1, keepdim=True))
    assert torch.allclose(torch.linalg.det(transform[..., :3, :3]), torch.ones(1, 2, dtype=F64))  # right-handed
    # The isocenter lies on the camera's z axis at depth sid.
    iso = transform[..., :3, :3].transpose(-1, -2) @ (carm.isocenter - carm.source_positions())[..., None]
    torch.testing.assert_close(iso[..., 0], torch.tensor([[[0.0, 0.0, 700.0]] * 2], dtype=F64), atol=1e-9, rtol=0)
    relative = relative_camera_pose(carm)
    torch.testing.assert_close(relative[:, 0], torch.eye(4, dtype=F64)[None])


# ---------------------------------------------------------------------------
# Biplanar reconstruction


@pytest.mark.parametrize("lateral, side", [("left", 1.0), ("right", -1.0)])
def test_convention_biplanar_views_are_pa_and_lateral(small_ct, lateral, side):
    sampler = make(BiplanarSampler, small_ct, angle_jitter=0.0, lateral=lateral, volume_size=4)
    params = sampler.draw(0)
    rays = central_rays(params.carm(height=sampler.height, width=sampler.width, pixel_spacing=sampler.pixel_spacing))
    # PA: the source is posterior (-y); lateral "left": the source at the patient's right (+x), detector at the left.
    torch.testing.assert_close(rays[:, 0], torch.tensor([0.0, -1.0, 0.0], dtype=F64).expand(3, 3), atol=1e-12, rtol=0)
    torch.testing.assert_close(rays[:, 1], torch.tensor([side, 0.0, 0.0], dtype=F64).expand(3, 3), atol=1e-12, rtol=0)


def test_biplanar_central_rays_are_orthogonal_within_the_jitter(small_ct):
    jitter = math.radians(3.0)
    sampler = make(BiplanarSampler, small_ct, angle_jitter=jitter, volume_size=4, batch_size=16)
    deviations = []
    for step in range(3):
        params = sampler.draw(step)
        rays = central_rays(params.carm(height=sampler.height, width=sampler.width, pixel_spacing=sampler.pixel_spacing))
        angle = torch.arccos((rays[:, 0] * rays[:, 1]).sum(-1).clamp(-1, 1))
        assert ((angle - math.pi / 2).abs() <= 4 * jitter + 1e-9).all()
        offsets = params.alpha - torch.tensor([math.pi, -math.pi / 2], dtype=F64)
        for values in (offsets, params.beta, params.gamma):
            assert (values.abs() <= jitter + 1e-12).all()
        deviations.append((angle - math.pi / 2).abs())
    assert torch.cat(deviations).max() > 0.1 * jitter  # the jitter is used


def test_biplanar_batch_target_is_the_windowed_crop(small_ct):
    sampler = make(BiplanarSampler, small_ct, volume_size=25)  # 150 mm / 6 mm = 25 crop voxels: no resampling
    batch = sampler.sample(0)
    assert isinstance(batch, BiplanarBatch)
    assert batch.images.shape == (3, 2, 1, 32, 32) and batch.volume.shape == (3, 1, 25, 25, 25)
    assert batch.volume_affine.shape == (3, 4, 4) and batch.volume_affine.dtype == F64
    assert batch.drr.volume is None and batch.drr.correspondence is None
    torch.testing.assert_close(batch.volume_affine, batch.crop_affine)
    crops = [small_ct.crop(batch.drr.crop_start[i].tolist(), batch.drr.crop_stop[i].tolist()) for i in range(3)]
    for i, crop in enumerate(crops):
        torch.testing.assert_close(batch.volume[i], window(crop.hu), atol=2e-6, rtol=0)
        torch.testing.assert_close(batch.volume_affine[i], crop.affine)
        # Below the window's top (2000 HU) the scale undoes the window: volume * 0.06 / mm is the attenuation.
        inside = batch.volume[i] < 1
        attenuation = crop.attenuation()
        torch.testing.assert_close(batch.volume[i][inside] * TARGET_ATTENUATION_SCALE, attenuation[inside])
    # The PA and lateral images are renders of the crops by the batch's cameras, through the sampler's display.
    config = sampler.config
    expected = config.display(render(VolumeBatch.from_volumes(crops), batch.carm), pixel_spacing=config.pixel_spacing)
    torch.testing.assert_close(batch.images, expected, atol=1e-4, rtol=0)


def test_biplanar_target_grid_spans_the_crop_box(small_ct):
    batch = make(BiplanarSampler, small_ct, volume_size=10).sample(1)
    assert batch.volume.min() >= 0 and batch.volume.max() <= 1
    faces = torch.tensor([[-0.5, -0.5, -0.5, 1.0], [9.5, 9.5, 9.5, 1.0]], dtype=F64)
    crop_faces = torch.tensor([[-0.5, -0.5, -0.5, 1.0], [24.5, 24.5, 24.5, 1.0]], dtype=F64)
    for i in range(3):
        torch.testing.assert_close(faces @ batch.volume_affine[i].T, crop_faces @ batch.crop_affine[i].T)


def test_biplanar_target_reproduces_a_linear_ramp():
    """Box-filtered trilinear resampling keeps a linear HU ramp exact: target voxel = window(HU at its centre)."""
    shape = (40, 40, 40)
    volume = Volume.from_tensor(torch.zeros(shape), spacing=2.0)
    index = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=F64) for n in shape], indexing="ij"), -1)
    world = index @ volume.affine[:3, :3].T + volume.affine[:3, 3]

    def ramp(points: torch.Tensor) -> torch.Tensor:
        return 200.0 + points @ torch.tensor([9.0, -5.0, 3.0], dtype=F64)

    volume = Volume.from_tensor(ramp(world).float(), affine=volume.affine)
    sampler = BiplanarSampler(volumes=[volume], volume_size=8, image_size=16, patch_size=8, crop_size=60.0,
                              spacing=2.0, batch_size=2, isocenter_jitter=0.0)
    batch = sampler.sample(0)  # 30 crop voxels -> blocks of 3 -> 8 target voxels
    grid = torch.stack(torch.meshgrid(*[torch.arange(8, dtype=F64)] * 3, indexing="ij"), -1).reshape(-1, 3)
    for i in range(2):
        centres = grid @ batch.volume_affine[i, :3, :3].T + batch.volume_affine[i, :3, 3]
        expected = window(ramp(centres)).float().reshape(8, 8, 8)
        torch.testing.assert_close(batch.volume[i, 0], expected, atol=3e-5, rtol=0)


# ---------------------------------------------------------------------------
# Projection loss


def cube_affine(batch: int, size: int, spacing: float) -> torch.Tensor:
    affine = torch.eye(4, dtype=F64)
    affine[:3, :3] *= spacing
    affine[:3, 3] = -(size - 1) / 2 * spacing + torch.tensor([3.0, -2.0, 1.0], dtype=F64)
    return affine.expand(batch, 4, 4).clone()


def test_convention_projection_loss_views_are_pa_lateral_axial():
    loss = ProjectionLoss(height=16)
    carm = loss.carm((8, 8, 8), cube_affine(2, 8, 5.0))
    rays = central_rays(carm)
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    torch.testing.assert_close(rays, expected.expand(2, 3, 3), atol=1e-12, rtol=0)
    torch.testing.assert_close(carm.isocenter.double(), torch.tensor([3.0, -2.0, 1.0], dtype=F64).expand(2, 3, 3))


def test_projection_loss_frames_the_volume_and_renders_like_the_projector():
    loss = ProjectionLoss(height=16, width=24, angles=[(0.3, 0.2), (2.0, -0.5, 0.1)])
    affine = cube_affine(2, 6, 7.0)
    carm = loss.carm((6, 6, 6), affine)
    corners = torch.tensor([[a, b, c] for a in (-0.5, 5.5) for b in (-0.5, 5.5) for c in (-0.5, 5.5)], dtype=F64)
    world = corners @ affine[0, :3, :3].T + affine[0, :3, 3]
    pixels = project_points(carm, world[None].expand(2, -1, -1))
    assert (pixels[..., 0] >= -0.5).all() and (pixels[..., 0] <= 15.5).all()
    assert (pixels[..., 1] >= -0.5).all() and (pixels[..., 1] <= 23.5).all()
    assert (pixels[..., 0].amin(-1) < 1.0).any() or (pixels[..., 1].amin(-1) < 1.0).any()  # tight, not loose
    volume = torch.rand(2, 1, 6, 6, 6, generator=torch.Generator().manual_seed(0))
    expected = render(VolumeBatch(attenuation=volume * TARGET_ATTENUATION_SCALE, affine=affine), carm)
    torch.testing.assert_close(loss.project(volume, affine), expected)


def test_projection_loss_is_zero_for_identical_volumes_and_positive_otherwise(small_ct):
    batch = make(BiplanarSampler, small_ct, volume_size=12).sample(0)
    loss = ProjectionLoss(height=16)
    predicted = batch.volume.clone().requires_grad_(True)
    assert float(loss(predicted, batch.volume, batch.volume_affine).detach()) == 0.0
    other = loss(predicted * 0.8, batch.volume, batch.volume_affine)
    assert float(other.detach()) > 0
    other.backward()
    assert predicted.grad is not None and float(predicted.grad.abs().sum()) > 0
    shifted = loss(torch.roll(batch.volume, 2, dims=-1), batch.volume, batch.volume_affine)
    assert float(shifted) > 0


def test_projection_loss_gradcheck(single_thread):
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(1, 1, 4, 4, 4, generator=generator, dtype=F64)
    predicted = (target + 0.2 + 0.5 * torch.rand(target.shape, generator=generator, dtype=F64)).requires_grad_(True)
    affine = cube_affine(1, 4, 10.0)
    loss = ProjectionLoss(height=8, sid=200.0, sdd=300.0, method="trilinear")
    assert torch.autograd.gradcheck(lambda volume: loss(volume, target, affine), (predicted,))


def test_projection_loss_bad_inputs():
    with pytest.raises(ValueError, match="angles"):
        ProjectionLoss(angles=[])
    with pytest.raises(ValueError, match=r"angles\[1\]"):
        ProjectionLoss(angles=[(0.0, 0.0), (1.0,)])
    with pytest.raises(ValueError, match="sdd"):
        ProjectionLoss(sid=1000.0, sdd=900.0)
    with pytest.raises(ValueError, match="pixel_spacing"):
        ProjectionLoss(pixel_spacing=-1.0)
    with pytest.raises(ValueError, match="method"):
        ProjectionLoss(method="nearest")
    loss = ProjectionLoss(height=8)
    with pytest.raises(ValueError, match="predicted, target"):
        loss(torch.rand(1, 1, 4, 4, 4), torch.rand(1, 1, 5, 4, 4), cube_affine(1, 4, 1.0))
    with pytest.raises(ValueError, match="predicted"):
        loss(torch.rand(1, 4, 4, 4), torch.rand(1, 4, 4, 4), cube_affine(1, 4, 1.0))
    with pytest.raises(ValueError, match="volume_affine"):
        loss(torch.rand(2, 1, 4, 4, 4), torch.rand(2, 1, 4, 4, 4), cube_affine(1, 4, 1.0))


# ---------------------------------------------------------------------------
# Angular sequences


def test_sequence_even_angles_step_by_arc_over_t(small_ct):
    sampler = make(AngularSequenceSampler, small_ct, views=6, arc=(1.0, 3.0), batch_size=4)
    params = sampler.draw(0)
    alpha = params.alpha
    steps = alpha.diff(dim=1)
    torch.testing.assert_close(steps, (params.layout["arc"] / 6)[:, None].expand(4, 5))
    torch.testing.assert_close(alpha[:, 0], params.layout["start"])
    assert ((params.layout["arc"] >= 1.0) & (params.layout["arc"] <= 3.0)).all()
    assert ((params.layout["start"] >= 0) & (params.layout["start"] <= 2 * math.pi)).all()
    # One C-arm per sample: beta, gamma, sid, sdd and the isocenter are shared by the views.
    for name in ("beta", "gamma", "sid", "sdd"):
        assert (getattr(params, name) == getattr(params, name)[:, :1]).all()
    assert (params.isocenter == params.isocenter[:, :1]).all()
    full = make(AngularSequenceSampler, small_ct, views=8, batch_size=2).draw(0)
    torch.testing.assert_close(full.alpha.diff(dim=1), torch.full((2, 7), 2 * math.pi / 8, dtype=F64))


def test_sequence_random_angles_are_sorted_within_the_arc(small_ct):
    sampler = make(AngularSequenceSampler, small_ct, views=7, angular_spacing="random", arc=1.5, batch_size=8)
    for step in range(3):
        params = sampler.draw(step)
        alpha, start = params.alpha, params.layout["start"][:, None]
        assert (alpha.diff(dim=1) >= 0).all()
        assert ((alpha >= start) & (alpha < start + 1.5)).all()
        assert alpha.diff(dim=1).std() > 0  # not evenly spaced


def test_sequence_around_x_sweeps_beta(small_ct):
    sampler = make(AngularSequenceSampler, small_ct, views=4, axis="x", arc=1.0, start=-0.5, alpha=(0.0, 1.0))
    batch = sampler.sample(0)
    assert isinstance(batch, SequenceBatch)
    assert batch.images.shape == (3, 4, 1, 32, 32) and batch.angles.shape == (3, 4) and batch.length == 4
    torch.testing.assert_close(batch.angles, batch.params.beta.float())
    torch.testing.assert_close(batch.params.beta, (-0.5 + torch.arange(4, dtype=F64) / 4).expand(3, 4))
    assert (batch.params.alpha == batch.params.alpha[:, :1]).all()


def test_convention_chest_sequence_starts_at_pa_with_standing_distances(small_ct):
    sampler = make(AngularSequenceSampler, small_ct, views=4, chest=True, arc=math.radians(40))
    assert CHEST_SDD_MM > CHEST_SID_MM
    batch = sampler.sample(0)
    params = batch.params
    assert (params.sid == CHEST_SID_MM).all() and (params.sdd == CHEST_SDD_MM).all()
    assert (params.alpha[:, 0] == math.pi).all() and (params.beta == 0).all()
    rays = central_rays(batch.carm)
    torch.testing.assert_close(rays[:, 0], torch.tensor([0.0, -1.0, 0.0], dtype=F64).expand(3, 3), atol=1e-6, rtol=0)
    # Explicit settings win over the chest defaults.
    custom = make(AngularSequenceSampler, small_ct, views=3, chest=True, sid=1500.0, sdd=1700.0).draw(0)
    assert (custom.sid == 1500.0).all() and (custom.sdd == 1700.0).all()


# ---------------------------------------------------------------------------
# Novel views


def test_novel_view_relative_pose_maps_source_frame_to_target_frames(small_ct):
    sampler = make(NovelViewSampler, small_ct, targets=2, relative_beta=(-0.2, 0.2), isocenter_jitter=10.0)
    batch = sampler.sample(0)
    assert isinstance(batch, NovelViewBatch)
    assert batch.source.shape == (3, 1, 1, 32, 32) and batch.targets.shape == (3, 2, 1, 32, 32)
    assert batch.relative_pose.shape == (3, 2, 4, 4) and batch.relative_angles.shape == (3, 2, 3)
    points = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=F64).expand(3, 20, 3) * 100
    points = torch.cat([points, batch.carm.source_positions()[:, :1].double()], 1)  # also the source itself
    coords = camera_coordinates(batch.carm, points)  # (B, 3, P, 3)
    homogeneous = torch.cat([coords[:, :1], torch.ones_like(coords[:, :1, :, :1])], -1)  # source frame
    mapped = torch.einsum("bmij,bpj->bmpi", batch.relative_pose.double(), homogeneous[:, 0])[..., :3]
    torch.testing.assert_close(mapped[:, :, :-1], coords[:, 1:, :-1], atol=2e-3, rtol=1e-5)
    # The source camera's origin lands on its position seen from each target; the target's own origin maps back.
    torch.testing.assert_close(batch.relative_pose[..., :3, 3].double(), coords[:, 1:, -1], atol=2e-3, rtol=1e-5)
    target_origin = torch.linalg.inv(batch.relative_pose.double())[..., :3, 3]  # target source in source frame
    target_sources = batch.carm.source_positions()[:, 1:].double()
    seen_from_source = camera_coordinates(batch.carm.select_views([0]), target_sources)[:, 0]
    torch.testing.assert_close(target_origin, seen_from_source, atol=2e-3, rtol=1e-5)
    # Relative angles are the drawn ones; the C-arm only turns (gamma, sid, sdd and isocenter shared).
    params = batch.params
    expected = torch.stack([params.layout["relative_alpha"], params.layout["relative_beta"], torch.zeros(3, 2, dtype=F64)], -1)
    torch.testing.assert_close(batch.relative_angles.double(), expected, atol=1e-6, rtol=0)
    assert ((params.layout["relative_alpha"].abs() <= math.pi / 2) & (params.layout["relative_beta"].abs() <= 0.2)).all()
    for name in ("gamma", "sid", "sdd"):
        assert (getattr(params, name) == getattr(params, name)[:, :1]).all()
    assert (params.isocenter == params.isocenter[:, :1]).all()


def test_novel_view_correspondence_blocks(small_ct):
    batch = make(NovelViewSampler, small_ct, targets=2).sample(1)
    n = 16
    assert batch.correspondence.shape == (3, 3 * n, 3 * n)
    torch.testing.assert_close(batch.correspondence, batch.correspondence.transpose(1, 2))
    blocks = batch.source_target_correspondence
    assert blocks.shape == (3, 2, n, n) and blocks.max() > 0.5
    for m in range(2):
        torch.testing.assert_close(blocks[:, m], batch.correspondence[:, (m + 1) * n : (m + 2) * n, :n].transpose(1, 2))
    assert make(NovelViewSampler, small_ct, correspondence=False).sample(0).correspondence is None


def test_novel_view_target_resolution_keeps_the_field_of_view(small_ct):
    low = make(NovelViewSampler, small_ct, targets=1).sample(2)
    high = make(NovelViewSampler, small_ct, targets=1, target_size=64).sample(2)
    assert high.targets.shape == (3, 1, 1, 64, 64) and high.source.shape == (3, 1, 1, 32, 32)
    torch.testing.assert_close(high.source, low.source)
    assert high.target_carm.batch_shape == (3, 1) and high.target_carm.height == 64
    points = torch.randn(1, 30, 3, generator=torch.Generator().manual_seed(1)) * 60
    at_source_size = project_points(high.carm.select_views([1]), points.expand(3, -1, -1))
    at_target_size = project_points(high.target_carm, points.expand(3, -1, -1))
    torch.testing.assert_close((at_target_size + 0.5) / 64, (at_source_size + 0.5) / 32, atol=1e-5, rtol=1e-5)
    # The high-resolution target, pooled 2 x 2, looks like the low-resolution one.
    pooled = torch.nn.functional.avg_pool2d(high.targets[:, 0], 2)
    assert (pooled - low.targets[:, 0]).abs().mean() < 0.03


def test_novel_view_augments_the_source_only(small_ct):
    plain = make(NovelViewSampler, small_ct).sample(0)
    augmented = make(NovelViewSampler, small_ct, augmentation=Augmentation(brightness=0.3, noise=0.05)).sample(0)
    torch.testing.assert_close(augmented.targets, plain.targets, atol=1e-5, rtol=0)
    assert (augmented.source - plain.source).abs().mean() > 1e-3


# ---------------------------------------------------------------------------
# Streams


@pytest.mark.parametrize(
    "cls, settings, field",
    [
        (BiplanarSampler, dict(volume_size=8), "volume"),
        (AngularSequenceSampler, dict(views=3, angular_spacing="random"), "images"),
        (NovelViewSampler, dict(targets=1, target_size=16), "targets"),
    ],
)
def test_same_seed_same_batches(small_ct, cls, settings, field, assert_same_params):
    first = make(cls, small_ct, seed=3, **settings)
    batch = next(iter(first))
    assert type(batch) is type(first.sample(0)) and batch.step == 0
    again = make(cls, small_ct, seed=3, **settings).sample(0)
    other = make(cls, small_ct, seed=4, **settings).sample(0)
    torch.testing.assert_close(getattr(batch, field), getattr(again, field), rtol=0, atol=0)
    assert_same_params(batch.params, again.params)
    assert not torch.equal(batch.params.alpha, other.params.alpha)
    assert first.state_dict(after=batch)["step"] == 1


# ---------------------------------------------------------------------------
# Bad settings


@pytest.mark.parametrize(
    "cls, changes, message",
    [
        (BiplanarSampler, dict(volume_size=1), "volume_size"),
        (BiplanarSampler, dict(volume_size=16.0), "volume_size"),
        (BiplanarSampler, dict(angle_jitter=-0.1), "angle_jitter"),
        (BiplanarSampler, dict(angle_jitter=1.0), "angle_jitter"),
        (BiplanarSampler, dict(lateral="up"), "lateral"),
        (BiplanarSampler, dict(views=3), "views"),
        (BiplanarSampler, dict(alpha=0.0), "alpha"),
        (BiplanarSampler, dict(augmentation=Augmentation(geometric=0.5)), "augmentation"),
        (BiplanarSampler, dict(sid=900.0, sdd=850.0), "sdd"),
        (AngularSequenceSampler, dict(views=1), "views"),
        (AngularSequenceSampler, dict(angular_spacing="log"), "angular_spacing"),
        (AngularSequenceSampler, dict(arc=0.0), "arc"),
        (AngularSequenceSampler, dict(arc=(1.0, 7.0)), "arc"),
        (AngularSequenceSampler, dict(arc=(2.0, 1.0)), "arc"),
        (AngularSequenceSampler, dict(start=(3.0, 1.0)), "start"),
        (AngularSequenceSampler, dict(axis="y"), "axis"),
        (AngularSequenceSampler, dict(chest=True, sid=1800.0), "sdd"),
        (AngularSequenceSampler, dict(alpha=0.3), "alpha"),
        (AngularSequenceSampler, dict(axis="x", beta=0.3), "beta"),
        (NovelViewSampler, dict(targets=0), "targets"),
        (NovelViewSampler, dict(target_size=1024), "target_size"),
        (NovelViewSampler, dict(target_size=36), "target_size"),
        (NovelViewSampler, dict(target_size=(64, 32)), "target_size"),
        (NovelViewSampler, dict(relative_angle=(1.0, -1.0)), "relative_angle"),
        (NovelViewSampler, dict(relative_beta=(0.5, 0.1)), "relative_beta"),
        (NovelViewSampler, dict(views=3), "views"),
    ],
)
def test_bad_settings_are_rejected_with_the_argument_named(small_ct, cls, changes, message):
    with pytest.raises(ValueError, match=message):
        make(cls, small_ct, **changes)


# ---------------------------------------------------------------------------
# Examples


@pytest.mark.parametrize("name", ["biplanar_reconstruction", "angular_sequence", "novel_view"])
def test_examples_run_a_few_steps(tmp_path, name):
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path / "summary.json"
    summary = module.main(["--steps", "2", "--log-every", "1", "--output", str(output)])
    saved = json.loads(output.read_text())
    assert saved["steps"] == summary["steps"] == 2
    assert math.isfinite(saved["first_loss"]) and math.isfinite(saved["last_loss"])
