"""Simulated fractures: the label matches the change, the CT is untouched, the targets fall on the gap."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from onthefly import (
    Augmentation,
    DRRCorrespondenceSampler,
    FractureConfig,
    Volume,
    apply_fractures,
    bone_label_lookup,
    bone_mask,
    draw_fractures,
    hu_to_attenuation,
    render,
)
from onthefly.augment import apply_geometric
from onthefly.fractures import BONE_STRUCTURES, fracture_window

NO_INTENSITY = dict(brightness=0.0, contrast=0.0, invert=0.0, gamma=0.0, noise=0.0, blur=0.0)
SETTINGS = dict(views=3, image_size=64, patch_size=16, crop_size=100.0, spacing=2.0, batch_size=6)


@pytest.fixture(scope="module")
def chest(ct) -> Volume:
    """A 160 mm cube of the bundled CT around its centre (spine, ribs), resampled to 2 mm: 80 x 80 x 81, labels kept."""
    return ct.crop_mm((0.0, 0.0, 0.0), 160.0).resample(2.0)


def make(volume: Volume, **changes) -> DRRCorrespondenceSampler:
    return DRRCorrespondenceSampler(**(dict(SETTINGS, volumes=[volume], return_volume=True, augmentation=None) | changes))


def parameters(b: int, *, normal, tangent=(1.0, 0.0, 0.0), width=2.0, extent=6.0, displacement=0.0, position=0.5):
    """Hand-set fracture parameters (as :func:`draw_fractures` returns them) shared by ``b`` samples."""
    row = lambda value: torch.tensor(value, dtype=torch.float64).expand(b, *torch.tensor(value).shape).clone()
    return dict(
        drawn=torch.ones(b, dtype=torch.bool), normal=row(normal), tangent=row(tangent), width=row(width),
        extent=row(extent), displacement=row(displacement), position=row(position),
    )


def unit_affine(b: int, spacing: float = 1.0) -> torch.Tensor:
    affine = torch.eye(4, dtype=torch.float64).repeat(b, 1, 1)
    affine[:, :3, :3] *= spacing
    return affine


# ---------------------------------------------------------------------------
# The sampler: labels, untouched CTs, targets


def test_label_matches_the_change_and_the_ct_is_untouched(chest, assert_same_params):
    fractured_sampler = make(chest, fractures=FractureConfig(probability=0.5), seed=2)
    stored = fractured_sampler.store._attenuation.clone()
    hu = chest.hu.clone()
    batch = fractured_sampler.sample(0)
    intact = make(chest, seed=2).sample(0)
    assert batch.fracture.dtype == torch.bool and batch.fracture.shape == (6,)
    assert batch.fracture.any() and not batch.fracture.all()  # both labels occur in this batch
    # The other draws are those of a sampler without fractures.
    assert_same_params(replace(batch.params, fracture=None), intact.params)
    crops, intact_crops = batch.volume.attenuation[:, 0], intact.volume.attenuation[:, 0]
    for i in range(6):
        expected = chest.crop(batch.crop_start[i].tolist(), batch.crop_stop[i].tolist()).attenuation()[0]
        assert torch.equal(intact_crops[i], expected)
        changed = int((crops[i] != expected).sum())
        if batch.fracture[i]:
            assert changed > 0
            assert not torch.equal(batch.images[i], intact.images[i])
        else:
            assert changed == 0 and torch.equal(batch.images[i], intact.images[i])
            assert batch.fracture_center[i].isnan().all() and (batch.fracture_patch[i] == -1).all()
    # Neither the sampler's stored CT nor the caller's volume changed.
    assert torch.equal(fractured_sampler.store._attenuation, stored)
    assert torch.equal(chest.hu, hu)
    # The fractured batch differs from the intact one only by the fractures.
    torch.testing.assert_close(batch.correspondence, intact.correspondence, rtol=0, atol=0)


def test_changed_voxels_were_bone_and_now_read_soft_tissue(chest):
    config = FractureConfig(probability=1.0, displacement=0.0, width=(2.0, 3.0))  # at least a voxel: some read soft
    sampler = make(chest, fractures=config, seed=5)
    batch = sampler.sample(0)
    assert sampler.fracture_bone_source == ("labels",)
    intact = make(chest, seed=5).sample(0).volume.attenuation[:, 0]
    crops = batch.volume.attenuation[:, 0]
    soft = float(hu_to_attenuation(torch.tensor(config.soft_tissue_hu)))
    lookup = bone_label_lookup(chest.label_names)
    for i in range(batch.batch_size):
        labels = chest.crop(batch.crop_start[i].tolist(), batch.crop_stop[i].tolist()).labels[0].long()
        bone = lookup[labels]
        changed = crops[i] != intact[i]
        assert changed.any() == batch.fracture[i]
        assert not (changed & ~bone).any()  # only bone changed
        # Each changed voxel was denser than soft tissue and moved towards it (by its share of the gap),
        # some all the way.
        before, after = intact[i][changed], crops[i][changed]
        assert ((after < before) & (after >= soft - 1e-7)).all()
        if batch.fracture[i]:
            assert ((after - soft).abs() < 1e-6).any()
            # The centre is a bone voxel inside the crop, at the voxel's centre.
            homogeneous = torch.cat([batch.fracture_center[i], torch.ones(1, dtype=torch.float64)])
            index = torch.linalg.solve(batch.crop_affine[i], homogeneous)[:3]
            torch.testing.assert_close(index, index.round(), atol=1e-6, rtol=0)
            assert bone[tuple(index.round().long().tolist())]


@pytest.mark.parametrize("geometric", [0.0, 1.0], ids=["plain", "flips-and-turns"])
def test_projected_centre_falls_on_the_gap(chest, geometric):
    config = FractureConfig(probability=1.0, displacement=0.0, width=(1.5, 3.0))
    augmentation = Augmentation(**NO_INTENSITY, geometric=geometric)
    batch = make(chest, fractures=config, seed=9, augmentation=augmentation).sample(0)
    intact = make(chest, seed=9).sample(0).volume
    assert batch.fracture.all()
    if geometric:
        assert (batch.operations > 0).all()
    # Line integrals of the intact minus the fractured crops: bone became soft tissue, so >= 0, and > 0 on the gap.
    drop = render(intact, batch.carm) - render(batch.volume, batch.carm)
    drop, _ = apply_geometric(drop, batch.operations)  # into the augmented images' frame
    drop = drop[:, :, 0]
    assert drop.min() > -1e-5
    pixel = batch.fracture_pixel  # (B, V, 2)
    inside = batch.fracture_patch >= 0
    assert inside.float().mean() > 0.5
    nearest = pixel.round().long().clamp(0, 63)
    for i in range(batch.batch_size):
        for v in range(batch.views):
            if not inside[i, v]:
                continue
            row, col = nearest[i, v].tolist()
            neighbourhood = drop[i, v, max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]
            assert neighbourhood.max() > 1e-3 * drop[i, v].max() > 0
            # The patch target is the patch holding the pixel.
            assert batch.fracture_patch[i, v] == (row // 16) * 4 + col // 16
    # Far from the projected centre the views are unchanged: the change lies within the fracture's reach.
    reach = math.hypot(25.0, 1.5 + 25.0) + 2.0  # mm, the disc's far edge
    magnification = (batch.carm.sdd / batch.carm.sid).max()
    radius = float(reach * magnification / batch.carm.pixel_spacing.min()) + 2
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    distance = ((rows - pixel[..., 0, None, None]) ** 2 + (cols - pixel[..., 1, None, None]) ** 2).sqrt()
    assert (drop[inside][distance[inside] > radius].abs() < 1e-5).all()


def test_reproducible_and_batches_move_between_devices(chest, assert_same_params):
    config = FractureConfig(probability=0.6)
    a = make(chest, fractures=config, seed=4).sample(3)
    b = make(chest, fractures=config, seed=4).sample(3)
    assert torch.equal(a.images, b.images) and torch.equal(a.fracture, b.fracture)
    torch.testing.assert_close(a.fracture_pixel, b.fracture_pixel, rtol=0, atol=0, equal_nan=True)
    assert_same_params(a.params, b.params)
    assert set(a.params.fracture) == {"drawn", "normal", "tangent", "width", "extent", "displacement", "position"}
    other = make(chest, fractures=config, seed=4).sample(4)
    assert not torch.equal(other.params.fracture["normal"], a.params.fracture["normal"])
    moved = a.to("cpu")
    assert torch.equal(moved.fracture_patch, a.fracture_patch) and moved.fracture.dtype == torch.bool
    assert make(chest).sample(0).fracture is None  # without fractures, no fracture fields


# ---------------------------------------------------------------------------
# Bone: label map or HU threshold


def slab_phantom(*, labelled: bool) -> Volume:
    """40^3 voxels of 2 mm: soft tissue with a faint labelled 'rib' slab (200 HU) and a dense unlabelled slab (1000 HU)."""
    hu = torch.full((40, 40, 40), 40.0)
    labels = torch.zeros(40, 40, 40, dtype=torch.uint8)
    hu[8:12] = 200.0
    labels[8:12] = 2
    hu[28:32] = 1000.0
    volume = Volume.from_tensor(hu, spacing=2.0, labels=labels if labelled else None)
    if labelled:
        volume = Volume(hu=volume.hu, affine=volume.affine, labels=volume.labels, label_names={1: "liver", 2: "rib_left_3"})
    return volume


@pytest.mark.parametrize("labelled", [True, False], ids=["label-map", "hu-threshold"])
def test_bone_comes_from_the_label_map_else_the_threshold(labelled):
    volume = slab_phantom(labelled=labelled)
    settings = dict(views=2, image_size=32, patch_size=16, crop_size=80.0, spacing=2.0, batch_size=8,
                    augmentation=None, min_tissue_fraction=0.0, min_projection_fraction=0.0, return_volume=True)
    sampler = DRRCorrespondenceSampler(volumes=[volume], fractures=FractureConfig(probability=1.0), **settings)
    assert sampler.fracture_bone_source == ("labels" if labelled else "threshold",)
    batch = sampler.sample(0)
    assert batch.fracture.all()
    centre_index = (batch.fracture_center - volume.affine[:3, 3]) / 2.0  # world -> voxel of the phantom
    slab = centre_index[:, 0]
    if labelled:  # the faint labelled slab, below the 300 HU threshold
        assert ((slab >= 8) & (slab < 12)).all()
    else:
        assert ((slab >= 28) & (slab < 32)).all()
    # A crop without bone is never fractured, whatever was drawn.
    soft = Volume.from_tensor(torch.full((40, 40, 40), 40.0), spacing=2.0)
    none = DRRCorrespondenceSampler(volumes=[soft], fractures=FractureConfig(probability=1.0), **settings).sample(0)
    plain = DRRCorrespondenceSampler(volumes=[soft], **settings).sample(0)
    assert none.params.fracture["drawn"].all() and not none.fracture.any()
    assert torch.equal(none.images, plain.images)


def test_bone_label_lookup_matches_skeletal_names(ct):
    lookup = bone_label_lookup(ct.label_names)
    bone = {name for label, name in ct.label_names.items() if lookup[label]}
    assert {"rib_left_1", "rib_right_12", "vertebrae_T8", "sternum", "sacrum", "clavicula_left", "scapula_right",
            "humerus_left", "hip_right", "femur_left", "skull"} <= bone
    assert not bone & {"liver", "heart", "spinal_cord", "costal_cartilages", "aorta", "iliac_artery_left"}
    only = bone_label_lookup(ct.label_names, ["rib_left_1", 116])
    assert {ct.label_names[i] for i in only.nonzero()[:, 0].tolist()} == {"rib_left_1", "sternum"}
    assert "rib" in BONE_STRUCTURES
    # bone_mask: by table per sample, or by threshold.
    attenuation = hu_to_attenuation(torch.tensor([[0.0, 500.0, 100.0, 2000.0]]))
    labels = torch.tensor([[0, 1, 2, 9]])
    table = torch.tensor([False, False, True])
    assert bone_mask(attenuation, labels=labels, bone_labels=table).tolist() == [[False, False, True, False]]
    assert bone_mask(attenuation).tolist() == [[False, True, False, True]]


# ---------------------------------------------------------------------------
# The cut itself (direct calls on phantoms)


def test_gap_removes_the_mass_of_a_thin_disc():
    # A bone block larger than the disc; an oblique gap thinner than a voxel still removes width x area of bone.
    crops = torch.full((1, 41, 41, 41), 0.02)
    crops[:, 5:36, 5:36, 5:36] = 0.04
    normal = torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.8]), dim=0).tolist()
    for width in (0.5, 2.0):
        params = parameters(1, normal=normal, width=width, extent=9.0)
        params["position"] = torch.tensor([0.5])  # the middle of the block
        result = apply_fractures(crops, unit_affine(1), params, config=FractureConfig(probability=1.0))
        soft = 0.02 * 1.04
        removed = float((crops - result.attenuation).sum()) / (0.04 - soft)  # mm^3 of bone turned soft tissue
        expected = math.pi * 9.0**2 * width
        assert abs(removed - expected) < 0.06 * expected
        assert result.center_index.tolist() == [[20, 20, 20]]
        torch.testing.assert_close(result.center, torch.full((1, 3), 20.0, dtype=torch.float64))
    # Every changed voxel lies within the disc (plus half a voxel's extent along the normal).
    index = torch.stack(torch.meshgrid(*[torch.arange(41.0)] * 3, indexing="ij"), -1) - 20
    n = torch.tensor(normal)
    s = index @ n
    radius = (index - s[..., None] * n).norm(dim=-1)
    changed = (result.attenuation != crops)[0]
    half_thickness = float(n.norm()) / 2
    assert (s[changed].abs() < 1.0 + half_thickness).all() and (radius[changed] < 9.0 + 1e-4).all()
    assert changed.sum() == result.changed


def test_displaced_fragment_slides_along_the_tangent_and_fades_out():
    # A bone rod along D, cut across; the far side slides along W by 2 mm at the gap, fading to 0 over `extent`.
    crops = torch.full((1, 60, 24, 24), 0.02)
    rod = ((torch.arange(24.0) - 12) ** 2)[:, None] + ((torch.arange(24.0) - 12) ** 2)[None] <= 16
    crops[0, :, rod] = 0.05
    params = parameters(1, normal=(1.0, 0.0, 0.0), tangent=(0.0, 0.0, 1.0), width=1.0, extent=10.0, displacement=2.0)
    params["position"] = torch.tensor([30.5 / 60])  # a voxel of slice 30
    result = apply_fractures(crops, unit_affine(1), params, config=FractureConfig(probability=1.0))
    assert result.center_index[0, 0] == 30
    out = result.attenuation[0] - 0.02 * 1.04  # bone above soft tissue
    weight = out.clamp_min(0).sum(1)  # (D, W) per slice, along W
    centroid = (weight * torch.arange(24.0)).sum(-1) / weight.sum(-1)
    centre_w = float(result.center_index[0, 2])
    shift = centroid - 12.0
    assert shift[:29].abs().max() < 1e-4  # the near side stays
    assert abs(float(shift[32]) - 2.0 * (1 - (2 - 0.5) / 10)) < 0.35  # slides by about 1.7 mm two voxels past the gap
    assert shift[42:].abs().max() < 1e-4  # and is back in place past the fade
    assert (shift[31:41] > 0).all() and (shift[31:41].diff() <= 1e-4).all()  # fading monotonically
    assert 0 <= centre_w < 24


def test_a_batch_equals_the_loop_over_its_samples():
    generator = torch.Generator().manual_seed(0)
    crops = 0.02 + 0.03 * (torch.rand(4, 20, 22, 24, generator=generator) > 0.7)
    affine = unit_affine(4, 1.5)
    affine[:, :3, 3] = torch.randn(4, 3, generator=generator, dtype=torch.float64) * 10
    config = FractureConfig(probability=0.7, displacement_probability=1.0, extent=(3.0, 6.0))
    params = draw_fractures(config, 4, torch.Generator().manual_seed(3))
    batch = apply_fractures(crops, affine, params, config=config)
    assert batch.fractured.any() and not batch.fractured.all()
    for i in range(4):
        single = apply_fractures(
            crops[i : i + 1], affine[i : i + 1], {k: v[i : i + 1] for k, v in params.items()}, config=config
        )
        torch.testing.assert_close(single.attenuation, batch.attenuation[i : i + 1], atol=1e-7, rtol=0)
        torch.testing.assert_close(single.center, batch.center[i : i + 1], equal_nan=True)
        assert torch.equal(single.fractured, batch.fractured[i : i + 1])
        if not batch.fractured[i]:
            assert torch.equal(batch.attenuation[i], crops[i])
    assert torch.equal(crops, 0.02 + 0.03 * (torch.rand(4, 20, 22, 24, generator=torch.Generator().manual_seed(0)) > 0.7))


def test_drawn_parameters_lie_in_their_ranges():
    config = FractureConfig(probability=0.3, width=(0.5, 3.0), extent=(8.0, 25.0), displacement=(1.0, 2.0),
                            displacement_probability=0.4)
    params = draw_fractures(config, 4000, torch.Generator().manual_seed(1))
    assert abs(params["drawn"].double().mean() - 0.3) < 0.03
    torch.testing.assert_close(params["normal"].norm(dim=-1), torch.ones(4000, dtype=torch.float64))
    torch.testing.assert_close(params["tangent"].norm(dim=-1), torch.ones(4000, dtype=torch.float64))
    assert (params["normal"] * params["tangent"]).sum(-1).abs().max() < 1e-9
    assert params["normal"].mean(0).abs().max() < 0.05  # no preferred direction
    assert ((params["width"] >= 0.5) & (params["width"] <= 3.0)).all()
    assert ((params["extent"] >= 8.0) & (params["extent"] <= 25.0)).all()
    displaced = params["displacement"] > 0
    assert abs(displaced.double().mean() - 0.4) < 0.03
    assert ((params["displacement"][displaced] >= 1.0) & (params["displacement"][displaced] <= 2.0)).all()
    assert ((params["position"] >= 0) & (params["position"] < 1)).all()
    again = draw_fractures(config, 4000, torch.Generator().manual_seed(1))
    assert all(torch.equal(params[k], again[k]) for k in params)
    assert fracture_window(config, 1.0) == (79, 79, 79)


# ---------------------------------------------------------------------------
# Bad settings


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(probability=1.5), "probability"),
        (dict(probability=-0.1), "probability"),
        (dict(displacement_probability=2.0), "displacement_probability"),
        (dict(width=(3.0, 0.5)), "width"),
        (dict(width=-1.0), "width"),
        (dict(width=(0.0, 1.0)), "width"),
        (dict(extent=(25.0, 8.0)), "extent"),
        (dict(extent=0.0), "extent"),
        (dict(displacement=-1.0), "displacement"),
        (dict(displacement=(2.0, 1.0)), "displacement"),
        (dict(width="wide"), "width"),
        (dict(soft_tissue_hu=float("nan")), "soft_tissue_hu"),
        (dict(soft_tissue_hu=400.0), "soft_tissue_hu"),
        (dict(bone_hu=float("inf")), "bone_hu"),
        (dict(structures=[]), "structures"),
        (dict(structures=[1.5]), "structures"),
    ],
)
def test_bad_settings_are_rejected_with_the_field_named(changes, message):
    with pytest.raises(ValueError, match=message):
        FractureConfig(**changes)


def test_bad_inputs_are_rejected(chest):
    with pytest.raises(TypeError, match="fractures"):
        make(chest, fractures={"probability": 1.0})
    with pytest.raises(ValueError, match="fractures"):
        make(chest, fractures=FractureConfig(structures=["no_such_bone"]))
    params = draw_fractures(FractureConfig(), 2, torch.Generator().manual_seed(0))
    crops = torch.zeros(2, 8, 8, 8)
    with pytest.raises(ValueError, match="attenuation"):
        apply_fractures(crops[0], unit_affine(2), params)
    with pytest.raises(ValueError, match="affine"):
        apply_fractures(crops, unit_affine(3), params)
    with pytest.raises(ValueError, match="params"):
        apply_fractures(crops, unit_affine(2), {k: v for k, v in params.items() if k != "normal"})
    with pytest.raises(ValueError, match="bone"):
        apply_fractures(crops, unit_affine(2), params, bone=torch.zeros(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch_size"):
        draw_fractures(FractureConfig(), 0, torch.Generator())
    with pytest.raises(ValueError, match="bone_labels"):
        bone_mask(crops, labels=torch.zeros(2, 8, 8, 8, dtype=torch.long))
