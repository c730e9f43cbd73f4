"""DRRCorrespondenceSampler: reproducible streams, ranges, augmentation geometry, DataLoader use, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onthefly import (
    Augmentation,
    CardinalAngles,
    DRRBatch,
    DRRCorrespondenceSampler,
    Uniform,
    Volume,
    VolumeBatch,
    patch_correspondence,
    render,
)
from conftest import _assert_same_params
from onthefly.augment import apply_geometric, image_operation_maps
from onthefly.correspondence import IMAGE_OPERATIONS, permute_views_patches
from onthefly.sampling import draw

# min-max views: several tests compare the images with the line integrals scaled per view
SMALL = dict(views=2, image_size=32, patch_size=8, crop_size=150.0, spacing=6.0, batch_size=3, display="minmax")


@pytest.fixture(scope="module")
def small_ct(ct_small) -> Volume:
    """The bundled CT at 6 mm, labels kept (about 60 x 60 x 55 voxels)."""
    return ct_small


def make(small_ct, **changes) -> DRRCorrespondenceSampler:
    settings_ = dict(SMALL, volumes=[small_ct]) | changes
    return DRRCorrespondenceSampler(**settings_)


def assert_same_batch(a: DRRBatch, b: DRRBatch) -> None:
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    torch.testing.assert_close(a.correspondence, b.correspondence, rtol=0, atol=0)
    _assert_same_params(a.params, b.params)


# ---------------------------------------------------------------------------
# Batches


def test_separable_footprints_reach_the_sampler_and_keep_the_default_fingerprint(small_ct):
    """``footprint="separable"`` gives the library's separable matrix of the same crops; the default (exact)
    leaves the configuration's fingerprint as it was before the option existed."""
    sampler = make(small_ct, augmentation=None, footprint="separable")
    batch = next(iter(sampler))
    edge = (batch.params.coarse_factor[:, 0].double() * 6.0).tolist()
    for i in range(len(edge)):
        crop = small_ct.crop(batch.crop_start[i].tolist(), batch.crop_stop[i].tolist())
        expected = patch_correspondence(crop, batch.carm.select(i), patch_size=8, coarse_voxel_size=edge[i],
                                        footprint="separable")
        torch.testing.assert_close(batch.correspondence[i : i + 1], expected, atol=1e-5, rtol=1e-4)
        exact = patch_correspondence(crop, batch.carm.select(i), patch_size=8, coarse_voxel_size=edge[i])
        assert not torch.equal(expected, exact)
    default = make(small_ct, augmentation=None).config
    assert "footprint" not in default.describe() and "footprint" in sampler.config.describe()
    assert default.fingerprint() != sampler.config.fingerprint()


def test_batch_shapes_ranges_and_consistency_with_the_library(small_ct):
    sampler = make(small_ct, augmentation=None, rays_per_patch=3)
    batch = next(iter(sampler))
    b, v, h, n = 3, 2, 32, 16
    assert batch.images.shape == (b, v, 1, h, h)
    assert batch.correspondence.shape == (b, v * n, v * n)
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert (batch.images.flatten(2).amax(-1) == 1).all()  # each view spans [0, 1]
    assert torch.isfinite(batch.correspondence).all()
    torch.testing.assert_close(batch.correspondence, batch.correspondence.transpose(1, 2))
    assert batch.correspondence.max() <= 1 and batch.correspondence.min() >= 0
    assert not batch.params.degenerate.any()
    # The correspondence equals the library's own, computed from the crops themselves.
    crops = [small_ct.crop(batch.crop_start[i].tolist(), batch.crop_stop[i].tolist()) for i in range(b)]
    edge = (batch.params.coarse_factor[:, 0].double() * 6.0).tolist()
    for i in range(b):
        expected = patch_correspondence(
            crops[i], batch.carm.select(i), patch_size=8, coarse_voxel_size=edge[i], rays_per_patch=3
        )
        torch.testing.assert_close(batch.correspondence[i : i + 1], expected, atol=1e-5, rtol=1e-4)
    # The images are the crops' renders.
    rendered = render(VolumeBatch.from_volumes(crops), batch.carm)
    flat = rendered.flatten(-2)
    low, high = flat.amin(-1)[..., None, None], flat.amax(-1)[..., None, None]
    torch.testing.assert_close(batch.images, (rendered - low) / (high - low), atol=1e-5, rtol=1e-4)
    # Crop boxes and isocenters.
    assert ((batch.crop_stop - batch.crop_start) == 25).all()  # 150 mm / 6 mm
    centre = torch.stack([c.center for c in crops])
    offset = batch.carm.isocenter.double() - centre[:, None, :]
    assert offset.abs().max() <= 10.0 + 1e-4


def test_rank_at_or_above_the_world_size_is_refused(small_ct, tmp_path):
    """Under a process group of one rank, rank 1 would draw rank 0's CTs: refused at construction, by name."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="rank: expected an int below the process group's world size 1"):
            make(small_ct, rank=1)
        assert make(small_ct, rank=0).rank == 0
    finally:
        dist.destroy_process_group()


def test_same_seed_same_batches_other_seed_or_rank_differs(small_ct):
    first = [batch for batch, _ in zip(make(small_ct, seed=3), range(2))]
    again = [batch for batch, _ in zip(make(small_ct, seed=3), range(2))]
    for a, b in zip(first, again):
        assert_same_batch(a, b)
    assert [b.step for b in first] == [0, 1]
    other_seed = make(small_ct, seed=4).sample(0)
    other_rank = make(small_ct, seed=3, rank=1).sample(0)
    for other in (other_seed, other_rank):
        assert not torch.equal(other.params.alpha, first[0].params.alpha)
        assert not torch.equal(other.images, first[0].images)
    assert not torch.equal(first[0].params.alpha, first[1].params.alpha)


def test_resume_continues_the_exact_stream(small_ct):
    sampler = make(small_ct, seed=7)
    stream = iter(sampler)
    for _ in range(2):
        next(stream)
    state = sampler.state_dict()
    assert state["step"] == 2
    expected = [next(stream) for _ in range(2)]
    resumed = make(small_ct, seed=7)
    resumed.load_state_dict(state)
    got = [batch for batch, _ in zip(resumed, range(2))]
    for a, b in zip(expected, got):
        assert a.step == b.step
        assert_same_batch(a, b)
    with pytest.raises(ValueError, match="seed"):
        make(small_ct, seed=8).load_state_dict(state)


def test_steps_bounds_the_iteration(small_ct):
    sampler = make(small_ct, steps=3, batch_size=1)
    assert [batch.step for batch in sampler] == [0, 1, 2]
    assert list(sampler) == []  # the stream is used up
    sampler.load_state_dict({"seed": 0, "rank": 0, "step": 1})
    assert len(sampler) == 2


@pytest.mark.slow
def test_dataloader_workers_interleave_one_stream(small_ct):
    sampler = make(small_ct, steps=4, batch_size=2, augmentation=Augmentation(noise=0.0))
    loader = torch.utils.data.DataLoader(sampler, batch_size=None, num_workers=2)
    batches = list(loader)
    assert [b.step for b in batches] == [0, 1, 2, 3]
    for batch in batches:
        assert_same_batch(batch, sampler.sample(batch.step))
    # Workers take different steps, hence different batches.
    assert not torch.equal(batches[0].images, batches[1].images)
    assert sampler.state_dict(after=batches[-1])["step"] == 4


def test_dataloader_without_workers(small_ct):
    sampler = make(small_ct, steps=2, batch_size=1)
    batches = list(torch.utils.data.DataLoader(sampler, batch_size=None))
    assert [b.step for b in batches] == [0, 1]


# ---------------------------------------------------------------------------
# Parameters


@settings(max_examples=25, deadline=None)
@given(
    st.floats(-3.0, 3.0), st.floats(0.0, 2.0), st.floats(-0.5, 0.5), st.floats(0.0, 0.5),
    st.floats(300.0, 800.0), st.floats(0.0, 200.0), st.floats(1.0, 300.0), st.floats(0.0, 20.0),
    st.integers(0, 2**31),
)
def test_drawn_parameters_lie_in_their_ranges(a0, a_width, b0, b_width, sid0, sid_width, gap, jitter, seed):
    sid = (sid0, sid0 + sid_width)
    sdd = (sid[1] + gap, sid[1] + gap + 100.0)
    sampler = _range_sampler()
    config = sampler.config.replace(alpha=Uniform(a0, a0 + a_width), beta=Uniform(b0, b0 + b_width), sid=Uniform(*sid),
                                    sdd=Uniform(*sdd), isocenter_jitter=jitter)
    store = sampler.store
    params = draw(config, store, 0, seed=seed)  # the drawing stage alone, a pure function of its inputs
    assert ((params.alpha >= a0) & (params.alpha <= a0 + a_width)).all()
    assert ((params.beta >= b0) & (params.beta <= b0 + b_width)).all()
    assert ((params.sid >= sid[0]) & (params.sid <= sid[1])).all()
    assert ((params.sdd >= sdd[0]) & (params.sdd <= sdd[1])).all()
    assert (params.sdd > params.sid).all()
    assert (params.crop_start >= 0).all() and (params.crop_stop <= store.shapes[params.volume_index]).all()
    centre_index = (params.crop_start + params.crop_stop - 1).double() / 2
    affine = store.affines[params.volume_index]
    centre = (centre_index[:, None, :] @ affine[:, :3, :3].transpose(1, 2))[:, 0] + affine[:, :3, 3]
    assert (params.isocenter - centre[:, None, :]).abs().max() <= jitter + 1e-9
    aug = Augmentation()
    assert (params.augmentation.brightness.abs() <= aug.brightness).all()
    assert ((params.augmentation.contrast >= 1 - aug.contrast) & (params.augmentation.contrast <= 1 + aug.contrast)).all()
    torch.testing.assert_close(draw(config, store, 0, seed=seed).alpha, params.alpha, rtol=0, atol=0)


_RANGE = {}


def _range_sampler() -> DRRCorrespondenceSampler:
    """One small sampler reused by the hypothesis test (its configuration is replaced per example)."""
    if "sampler" not in _RANGE:
        hu = torch.full((40, 40, 40), 40.0)
        _RANGE["sampler"] = DRRCorrespondenceSampler(
            volumes=[Volume.from_tensor(hu, spacing=5.0)], views=3, image_size=32, patch_size=8, crop_size=100.0,
            spacing=5.0, batch_size=8,
        )
    return _RANGE["sampler"]


def test_cardinal_angle_scheme_weights():
    angles = CardinalAngles(jitter=0.0).sample((20000,), torch.Generator().manual_seed(0))
    quarter = torch.round(angles / (math.pi / 2)).long()
    frequencies = torch.bincount(quarter, minlength=4).double() / angles.numel()
    torch.testing.assert_close(frequencies, torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64), atol=0.015, rtol=0)
    jittered = CardinalAngles().sample((20000,), torch.Generator().manual_seed(1))
    residual = jittered - torch.round(jittered / (math.pi / 2)) * (math.pi / 2)
    assert abs(float(residual.std()) - math.radians(5.0)) < math.radians(0.3)


def test_degenerate_crops_are_redrawn():
    # Tissue fills one half of a 120 mm air box; 60 mm crops often miss it.
    hu = torch.full((40, 40, 40), -1000.0)
    hu[:20] = 50.0
    volume = Volume.from_tensor(hu, spacing=3.0)
    sampler = DRRCorrespondenceSampler(
        volumes=[volume], views=2, image_size=32, patch_size=8, crop_size=60.0, spacing=3.0, batch_size=16,
        min_tissue_fraction=0.5, augmentation=None,
    )
    params = sampler.draw(0)
    assert not params.degenerate.any()
    assert (params.tissue_fraction >= 0.5).all()
    # The exact tissue fraction of each crop (from the volume) agrees with the host estimate's verdict.
    for start, stop in zip(params.crop_start, params.crop_stop):
        box = hu[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
        assert (box > -900).float().mean() > 0.3
    unchecked = DRRCorrespondenceSampler(
        volumes=[volume], views=2, image_size=32, patch_size=8, crop_size=60.0, spacing=3.0, batch_size=16,
        min_tissue_fraction=0.0, min_projection_fraction=0.0, augmentation=None,
    )
    assert (unchecked.draw(0).tissue_fraction < 0.5).any()  # without the check, air crops occur


# ---------------------------------------------------------------------------
# Augmentation


def test_geometric_augmentation_permutes_images_and_correspondence(small_ct):
    plain = make(small_ct, augmentation=None, seed=11).sample(0)
    flipped_sampler = make(
        small_ct, seed=11, augmentation=Augmentation(brightness=0.0, contrast=0.0, invert=0.0, gamma=0.0, noise=0.0, blur=0.0, geometric=1.0),
    )
    flipped = flipped_sampler.sample(0)
    assert (flipped.operations > 0).all()
    torch.testing.assert_close(flipped.params.alpha, plain.params.alpha)  # same geometry draws
    expected_images, expected_c = apply_geometric(
        plain.images, flipped.operations, correspondence=plain.correspondence, patch_size=8
    )
    torch.testing.assert_close(flipped.images, expected_images)
    torch.testing.assert_close(flipped.correspondence, expected_c)
    # And directly: each view's image is the torch.flip / torch.rot90 of the plain one.
    for b in range(plain.batch_size):
        for v in range(plain.views):
            op = IMAGE_OPERATIONS[int(flipped.operations[b, v])]
            image = plain.images[b, v]
            if op == "hflip":
                image = image.flip(-1)
            elif op == "vflip":
                image = image.flip(-2)
            elif op.startswith("rot"):
                image = torch.rot90(image, int(op[3:]) // 90, dims=(-2, -1))
            torch.testing.assert_close(flipped.images[b, v], image)


@pytest.mark.parametrize("operation", list(range(len(IMAGE_OPERATIONS))))
def test_projected_points_follow_the_augmented_image(operation):
    # One dense voxel in air: its projection is the brightest pixel of each augmented view.
    hu = torch.full((31, 31, 31), -1000.0)
    hu[19, 12, 16] = 3000.0
    volume = Volume.from_tensor(hu, spacing=4.0)
    sampler = DRRCorrespondenceSampler(
        volumes=[volume], views=3, image_size=32, patch_size=8, crop_size=124.0, spacing=4.0, batch_size=2,
        augmentation=Augmentation(brightness=0.0, contrast=0.0, invert=0.0, gamma=0.0, noise=0.0, blur=0.0,
                                  geometric=1.0, operations=(IMAGE_OPERATIONS[operation],) if operation else ("hflip",)),
        min_tissue_fraction=0.0, min_projection_fraction=0.0, beta=(-0.3, 0.3), isocenter_jitter=5.0,
        rays_per_patch=8,  # one ray per pixel: the pixel that sees the voxel has a ray through its coarse box
        display="minmax",  # the voxel's pixel stays the one brightest (a percentile window saturates several)
    )
    batch = sampler.sample(0)
    point = (volume.affine @ torch.tensor([19.0, 12.0, 16.0, 1.0], dtype=torch.float64))[:3]
    pixel = batch.project_points(point.float().expand(2, 1, 3))[:, :, 0]  # (B, V, 2)
    flat = batch.images[:, :, 0].flatten(-2).argmax(-1)
    brightest = torch.stack([flat // 32, flat % 32], -1).float()
    assert (pixel - brightest).abs().max() <= 1.0
    # The brightest pixel's patch correspondence row is non-empty towards every view.
    n = 16
    patch = (brightest // 8).long()
    token = torch.arange(3)[None] * n + patch[..., 0] * 4 + patch[..., 1]  # (B, V)
    for b in range(2):
        rows = batch.correspondence[b][token[b]][:, token[b]]
        assert (rows > 0).all()


def test_intensity_augmentation_keeps_correspondence_and_range(small_ct):
    plain = make(small_ct, augmentation=None, seed=5).sample(1)
    strong = make(small_ct, seed=5, augmentation=Augmentation(brightness=0.3, contrast=0.5, invert=0.5, gamma=0.5,
                                                               noise=0.05, blur=1.5)).sample(1)
    torch.testing.assert_close(strong.correspondence, plain.correspondence)
    assert not torch.allclose(strong.images, plain.images)
    assert strong.images.min() >= 0 and strong.images.max() <= 1
    # Inverted views correlate negatively with the plain render.
    inverted = strong.params.augmentation.invert
    if inverted.any():
        b, v = inverted.nonzero()[0].tolist()
        a, p = strong.images[b, v].flatten(), plain.images[b, v].flatten()
        assert torch.corrcoef(torch.stack([a, p]))[0, 1] < 0


def test_operation_maps_match_patch_permutations():
    maps = image_operation_maps(4, 4)
    image = torch.arange(16.0).view(1, 1, 1, 4, 4)
    for code, op in enumerate(IMAGE_OPERATIONS):
        out, _ = apply_geometric(image, torch.tensor([[code]]), maps=maps)
        expected = image[0, 0, 0]
        if op == "hflip":
            expected = expected.flip(-1)
        elif op == "vflip":
            expected = expected.flip(-2)
        elif op.startswith("rot"):
            expected = torch.rot90(expected, int(op[3:]) // 90)
        torch.testing.assert_close(out[0, 0, 0], expected)
    c = torch.rand(1, 32, 32)
    perms = torch.stack([maps[1], maps[3]])[None]  # hflip view 0, rot90 view 1
    permuted = permute_views_patches(c, perms)
    assert permuted[0, 0, 16] == c[0, int(maps[1][0]), 16 + int(maps[3][0])]


# ---------------------------------------------------------------------------
# Labels and crops


def test_structure_projections(small_ct):
    names = small_ct.label_names
    rib = next(name for name in names.values() if "rib" in name)
    sampler = make(small_ct, structures=["vertebrae_T8", rib] if "vertebrae_T8" in names.values() else [rib],
                   return_volume=True, augmentation=None)
    batch = sampler.sample(0)
    s = len(sampler.structures)
    assert batch.labels.shape == (3, 2, s, 32, 32)
    assert batch.volume.attenuation.shape == (3, 1, 25, 25, 25)
    assert (batch.labels >= 0).all()
    # A structure's projection is non-zero exactly where its voxels project (checked through render).
    label_id = next(k for k, v in names.items() if v == sampler.structures[0])
    crops = [small_ct.crop(batch.crop_start[i].tolist(), batch.crop_stop[i].tolist()) for i in range(3)]
    masks = torch.stack([(c.labels[0] == label_id).float() for c in crops])[:, None]
    expected = render(VolumeBatch(attenuation=masks, affine=batch.crop_affine), batch.carm)[:, :, 0]
    torch.testing.assert_close(batch.labels[:, :, 0], expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------
# Bad settings


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(volumes=[]), "volumes"),
        (dict(crop_size=1000.0), "crop_size"),
        (dict(views=1), "views"),
        (dict(sid=(900.0, 800.0)), "sid"),
        (dict(beta=(0.5, -0.5)), "beta"),
        (dict(sid=(700.0, 1000.0), sdd=(950.0, 1100.0)), "sdd"),
        (dict(sid=900.0, sdd=900.0), "sdd"),
        (dict(patch_size=5), "patch_size"),
        (dict(batch_size=0), "batch_size"),
        (dict(spacing=-1.0), "spacing"),
        (dict(image_size=(32, 64), augmentation=Augmentation(geometric=0.5)), "quarter turns"),
        (dict(structures=["no such organ"]), "structures"),
        (dict(min_tissue_fraction=1.5), "min_tissue_fraction"),
        (dict(volumes=[42]), "volumes"),
    ],
)
def test_bad_settings_are_rejected_with_the_argument_named(small_ct, changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make(small_ct, **changes)


def test_bad_augmentation_settings():
    with pytest.raises(ValueError, match="contrast"):
        Augmentation(contrast=1.5)
    with pytest.raises(ValueError, match="invert"):
        Augmentation(invert=2.0)
    with pytest.raises(ValueError, match="operations"):
        Augmentation(operations=("shear",))
    with pytest.raises(ValueError, match="inverted"):
        Uniform(2.0, 1.0)


def test_per_view_distributions_and_no_correspondence(small_ct):
    from onthefly import PerView

    sampler = make(small_ct, views=3, alpha=PerView([0.0, (1.5, 1.6), 3.0]), correspondence=False, augmentation=None)
    batch = sampler.sample(0)
    alpha = batch.params.alpha
    assert (alpha[:, 0] == 0).all() and ((alpha[:, 1] >= 1.5) & (alpha[:, 1] <= 1.6)).all() and (alpha[:, 2] == 3).all()
    assert batch.correspondence is None and batch.images.shape[1] == 3
    with pytest.raises(ValueError, match="alpha"):
        make(small_ct, views=2, alpha=PerView([0.0, 1.0, 2.0]))


def test_physics_draws_typed_parameters_and_leaves_the_geometry_alone(small_ct):
    """physics=Physics(...): drawn per sample into params.physics (seeded: the same batch twice), applied after
    rendering; the correspondence (geometric) and the poses equal those of the same stream without physics."""
    from onthefly.physics import Physics, PhysicsParams

    plain = make(small_ct, seed=7, display="radiograph")
    physical = make(small_ct, seed=7, display="radiograph", physics=Physics(kv=(60.0, 90.0), dose=(5e3, 1e4)))
    assert plain.config.fingerprint() == make(small_ct, seed=7, display="radiograph", physics=None).config.fingerprint()
    assert physical.config.fingerprint() != plain.config.fingerprint()
    a, b = plain.sample(0), physical.sample(0)
    params = b.params.physics
    assert isinstance(params, PhysicsParams) and params.kv.shape == (SMALL["batch_size"],)
    assert bool(((params.kv >= 60.0) & (params.kv <= 90.0)).all())
    torch.testing.assert_close(b.correspondence, a.correspondence, rtol=0, atol=0)
    torch.testing.assert_close(b.params.alpha, a.params.alpha, rtol=0, atol=0)
    assert b.images.shape == a.images.shape and not torch.equal(b.images, a.images)
    assert float(b.images.min()) >= 0.0 and float(b.images.max()) <= 1.0
    again = physical.make_batch(physical.draw(0))
    torch.testing.assert_close(again.images, b.images, rtol=0, atol=0)
    with pytest.raises(TypeError, match="physics"):
        make(small_ct, physics="xray")
