"""Simulated fractures: the cut crosses the bone, fragments move rigidly, visibility is measured, bad input refused."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from onthefly import (
    DISPLAYS,
    CArm,
    DRRCorrespondenceSampler,
    Volume,
    VolumeBatch,
    hu_to_attenuation,
    render,
    to_display,
)
from onthefly.fractures import (
    DEFAULT_BONE_WEIGHTS,
    FractureConfig,
    FractureParams,
    apply_fractures,
    bone_label_lookup,
    bone_weight_table,
    bone_weight_tables,
    bone_weights,
    cut_visible_fractures,
    draw_fractures,
    fracture_contrast,
    fracture_visibility,
    fracture_window,
    view_ranges,
    visibility_probe,
)
from onthefly.fractures.bone import bone_axis, bone_component, choose_bone_points
from onthefly.sampling import SamplerConfig

SOFT = 0.02 * 1.04  # soft_tissue_hu = 40 at mu_water = 0.02
BONE = 0.02 * 1.8  # an 800 HU bone


# ---------------------------------------------------------------------------
# Phantoms and hand-set parameters


def rod_phantom(batch: int = 1, *, length: int = 64, size: int = 28, radius: float = 4.0) -> torch.Tensor:
    """``(B, length, size, size)`` soft tissue with a bone rod of ``radius`` voxels along D through the centre."""
    centre = (size - 1) / 2
    grid = torch.arange(size, dtype=torch.float32) - centre
    rod = grid[:, None] ** 2 + grid[None, :] ** 2 <= radius**2
    crops = torch.full((batch, length, size, size), SOFT)
    crops[:, :, rod] = BONE
    return crops


def unit_affine(batch: int, spacing: float = 1.0) -> torch.Tensor:
    affine = torch.eye(4, dtype=torch.float64).repeat(batch, 1, 1)
    affine[:, :3, :3] *= spacing
    return affine


def hand_params(batch: int = 1, candidates: int = 1, **values) -> FractureParams:
    """Fracture parameters with every sample and candidate set to ``values`` (defaults: a plain transverse cut)."""
    settings = dict(position=0.5, comminuted=False, fragment_length=8.0, gap=(2.0, 2.0), obliquity=(0.0, 0.0),
                    tilt_direction=(0.0, 0.0), translation=(0.0, 0.0), translation_direction=(0.0, 0.0),
                    angulation=(0.0, 0.0), hinge_direction=(0.0, 0.0)) | values
    fields = {}
    for name, value in settings.items():
        tensor = torch.tensor(value, dtype=torch.bool if name == "comminuted" else torch.float64)
        fields[name] = tensor.expand(batch, candidates, *tensor.shape).clone()
    return FractureParams(drawn=torch.ones(batch, dtype=torch.bool), **fields)


def rod_point(crops: torch.Tensor, slice_: int) -> float:
    """The ``position`` that picks a rod voxel in slice ``slice_`` (lattice 4: one rod voxel per cell)."""
    weights = (crops[0] > 0.03).float()
    lattice = weights[2::4, 2::4, 2::4]  # the cells' centre voxels
    cell_slice = torch.arange(lattice.shape[0]).repeat_interleave(lattice[0].numel()).view(lattice.shape)
    before = (lattice * (cell_slice < slice_ // 4)).sum()
    return float((before + 0.5) / lattice.sum())


def slice_centroid(crops: torch.Tensor) -> torch.Tensor:
    """``(D, 2)`` (H, W) centroid of the bone above soft tissue in every slice of one crop ``(D, H, W)``."""
    excess = (crops - SOFT).clamp_min(0)
    grid = torch.arange(crops.shape[1], dtype=torch.float32)
    mass = excess.sum((1, 2)).clamp_min(1e-12)
    return torch.stack([(excess.sum(2) * grid).sum(1) / mass, (excess.sum(1) * grid).sum(1) / mass], -1)


# ---------------------------------------------------------------------------
# Configuration and drawing


def test_drawn_parameters_lie_in_their_ranges_and_draw_the_same_count_whatever_the_outcome():
    config = FractureConfig(probability=0.3, comminuted_probability=0.4, translation=(1.0, 2.0), angulation=(0.1, 0.2),
                            min_visibility=0.05, max_redraws=2)
    params = draw_fractures(config, 3000, torch.Generator().manual_seed(1))
    assert params.translation.shape == (3000, 3, 2) and params.position.shape == (3000, 3) == (3000, config.candidates)
    assert abs(params.drawn.double().mean() - 0.3) < 0.03 and abs(params.comminuted.double().mean() - 0.4) < 0.03
    for name, (low, high) in (("translation", (1.0, 2.0)), ("angulation", (0.1, 0.2)), ("gap", config.gap),
                              ("obliquity", config.obliquity), ("fragment_length", config.fragment_length)):
        value = getattr(params, name)
        assert low <= float(value.min()) and float(value.max()) <= high, name
    for name in ("tilt_direction", "translation_direction", "hinge_direction"):
        value = getattr(params, name)
        assert 0 <= float(value.min()) and float(value.max()) < 2 * math.pi and float(value.max()) > 6.0
    # The generator ends in the same state whatever the probabilities: each call draws the same values.
    states = []
    for probability in (0.0, 1.0):
        generator = torch.Generator().manual_seed(5)
        draw_fractures(replace(config, probability=probability, comminuted_probability=probability), 7, generator)
        states.append(torch.rand(4, generator=generator))
    assert torch.equal(*states)
    again = draw_fractures(config, 3000, torch.Generator().manual_seed(1))
    assert torch.equal(again.translation, params.translation) and torch.equal(again.drawn, params.drawn)


def test_parameters_move_select_and_take_rows():
    params = draw_fractures(FractureConfig(min_visibility=0.1, max_redraws=3), 5, torch.Generator().manual_seed(0))
    assert params.candidates == 4 and params.batch_size == 5
    chosen = params.select(torch.tensor([0, 3, 1, 2, 0]))
    assert chosen.candidates == 1 and torch.equal(chosen.translation[1, 0], params.translation[1, 3])
    assert torch.equal(chosen.drawn, params.drawn)
    rows = params.rows(torch.tensor([4, 1]))
    assert rows.batch_size == 2 and torch.equal(rows.position, params.position[[4, 1]])
    assert params.to("cpu").gap.device.type == "cpu"
    with pytest.raises(Exception):
        params.drawn = torch.zeros(5, dtype=torch.bool)  # frozen


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(translation=-1.0), "translation"),
        (dict(translation=(5.0, 2.0)), "translation"),
        (dict(translation=(-2.0, 2.0)), "translation"),
        (dict(angulation=-0.1), "angulation"),
        (dict(angulation=(0.4, 0.1)), "angulation"),
        (dict(angulation=(0.0, 2.0)), "angulation"),
        (dict(gap=0.0), "gap"),
        (dict(gap=(3.0, 1.0)), "gap"),
        (dict(obliquity=(0.0, 1.6)), "obliquity"),
        (dict(fragment_length=0.0), "fragment_length"),
        (dict(reach=0.0), "reach"),
        (dict(reach=float("nan")), "reach"),
        (dict(probability=1.5), "probability"),
        (dict(comminuted_probability=-0.1), "comminuted_probability"),
        (dict(soft_tissue_hu=400.0), "soft_tissue_hu"),
        (dict(bone_hu=float("inf")), "bone_hu"),
        (dict(min_visibility=1.0), "min_visibility"),
        (dict(min_visibility=-0.1), "min_visibility"),
        (dict(max_redraws=-1), "max_redraws"),
        (dict(max_redraws=True), "max_redraws"),
        (dict(max_redraws=101), "max_redraws"),
        (dict(max_redraws=10**9), "max_redraws"),
        (dict(bones=[]), "bones"),
        (dict(bones={"rib": -1.0}), "bones"),
        (dict(bones={"rib": 0.0}), "bones"),
        (dict(bones=[1.5]), "bones"),
    ],
)
def test_bad_settings_are_rejected_with_the_field_named(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        FractureConfig(**changes)


def test_translation_range_type_is_checked():
    with pytest.raises(TypeError, match="translation"):
        FractureConfig(translation="far")


# ---------------------------------------------------------------------------
# Bones: weights by label name, the bone point, the bone piece and its axis


def test_bone_weights_follow_label_names(ct):
    table = bone_weight_table(ct.label_names, FractureConfig())
    weight = {name: float(table[label]) for label, name in ct.label_names.items()}
    assert weight["rib_left_3"] == DEFAULT_BONE_WEIGHTS["rib"] == 1.0
    assert weight["clavicula_right"] == weight["humerus_left"] == 3.0 and weight["scapula_left"] == 2.0
    assert weight["vertebrae_T8"] < 0.2 * weight["rib_left_3"]  # away from the vertebral bodies
    assert weight["liver"] == weight["costal_cartilages"] == weight["spinal_cord"] == 0.0
    only = bone_weight_table(ct.label_names, FractureConfig(bones={"clavicula": 2.0, 116: 0.5}))
    assert {ct.label_names[i] for i in only.nonzero()[:, 0].tolist()} == {"clavicula_left", "clavicula_right", "sternum"}
    assert float(only[116]) == 0.5
    lookup = bone_label_lookup(ct.label_names)
    assert bool(lookup[ct.label_names and 92]) and not bool(lookup[5])  # rib_left_1, liver


def test_bone_names_that_match_nothing_are_refused_with_the_names(ct):
    with pytest.raises(ValueError, match="no_such_bone"):
        bone_weight_tables([ct.label_names], FractureConfig(bones=["no_such_bone", "liverish"]))
    with pytest.raises(ValueError, match="label maps"):
        bone_weight_tables([None], FractureConfig(bones=["rib"]))
    tables = bone_weight_tables([ct.label_names, None], FractureConfig(bones=["rib"]))
    assert tables.shape[0] == 2 and not bool(tables[1].any())  # a CT without labels: the HU threshold


def test_bone_points_follow_the_weights_and_skip_crops_without_bone():
    weights = torch.zeros(2, 16, 16, 16)
    weights[0, 2:6, 2:6, 2:6] = 1.0
    weights[0, 10:14, 10:14, 10:14] = 3.0
    position = torch.rand(2, 4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    index, has_bone = choose_bone_points(lambda i: weights[i], weights.shape, position)
    assert has_bone.tolist() == [True, False]
    picked = weights[0][index[0, :, 0], index[0, :, 1], index[0, :, 2]]
    assert bool((picked > 0).all())
    assert abs(float((picked == 3.0).double().mean()) - 0.75) < 0.03  # three times as likely
    hu = torch.tensor([[[[0.0, 500.0, 500.0, 500.0]]]])
    labels = torch.tensor([[[[0, 0, 2, 3]]]])
    table = bone_weight_table({2: "rib_left_1", 3: "vertebrae_T8"}, FractureConfig())
    weights = bone_weights(hu_to_attenuation(hu), config=FractureConfig(), labels=labels, table=table)
    assert torch.allclose(weights, torch.tensor([[[[0.0, 0.0, 1.0, 0.1]]]]))
    assert bone_weights(hu_to_attenuation(hu), config=FractureConfig()).tolist() == [[[[0.0, 1.0, 1.0, 1.0]]]]


def test_the_bone_piece_is_the_seeds_label_or_its_connected_dense_voxels():
    dense = torch.zeros(1, 20, 20, 20, dtype=torch.bool)
    dense[0, :, 2:6, 2:6] = True  # a rod
    dense[0, :, 12:16, 12:16] = True  # another, apart
    labels = torch.zeros(1, 20, 20, 20, dtype=torch.int16)
    labels[0, :, 2:6, 2:6] = 7
    labels[0, :, 12:16, 12:16] = 9
    seed = torch.tensor([[10, 3, 3]])
    by_label = bone_component(dense, labels, seed, steps=10)
    by_density = bone_component(dense, None, seed, steps=10)
    for piece in (by_label, by_density):
        assert bool(piece[0, :, 2:6, 2:6].all()) and not bool(piece[0, :, 12:16, 12:16].any())


def test_the_bone_axis_is_the_rods_direction():
    direction = torch.nn.functional.normalize(torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), dim=0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(24.0, dtype=torch.float64) - 12] * 3, indexing="ij"), -1)
    along = grid @ direction
    piece = ((grid - along[..., None] * direction).norm(dim=-1) < 2.5)[None]
    offsets = [torch.arange(24.0, dtype=torch.float64)[None] - 12] * 3
    spacing = torch.diag(torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64))[None]  # anisotropic voxels
    axis = bone_axis(piece, offsets, spacing)
    world = torch.nn.functional.normalize(spacing[0] @ direction, dim=0)
    assert float((axis[0] @ world).abs()) > 0.995


# ---------------------------------------------------------------------------
# The cut


def test_the_gap_crosses_the_whole_bone_and_becomes_soft_tissue():
    crops = rod_phantom()
    config = FractureConfig(probability=1.0, reach=12.0)
    params = hand_params(position=rod_point(crops, 32), gap=(3.0, 3.0))
    result = apply_fractures(crops, unit_affine(1), params, config=config)
    assert bool(result.fractured[0]) and abs(int(result.center_index[0, 0]) - 32) <= 2
    assert float(result.axis[0, 0].abs()) > 0.99  # the rod runs along D
    point = int(result.center_index[0, 0])
    bone = (result.attenuation[0] - SOFT).clamp_min(0).sum((1, 2))  # bone per slice
    gap = range(point + 1, point + 3) if float(result.axis[0, 0]) > 0 else range(point - 2, point)
    for slice_ in gap:  # every voxel of the rod's cross-section is cut
        assert float(bone[slice_]) < 1e-4
    far = [s for s in range(64) if abs(s - point) > 14]
    torch.testing.assert_close(result.attenuation[0, far], crops[0, far])  # nothing beyond the reach
    assert float(result.attenuation.min()) >= SOFT - 1e-6 and float(result.attenuation.max()) <= BONE + 1e-6


def test_the_fragment_moves_rigidly_across_the_axis_and_back_in_place_at_the_reach():
    crops = rod_phantom()
    config = FractureConfig(probability=1.0, reach=16.0, comminuted_probability=0.0)
    params = hand_params(position=rod_point(crops, 32), gap=(1.0, 1.0), translation=(3.0, 3.0))
    result = apply_fractures(crops, unit_affine(1), params, config=config)
    point, sign = int(result.center_index[0, 0]), float(result.axis[0, 0].sign())
    centroid, original = slice_centroid(result.attenuation[0]), slice_centroid(crops[0])
    shift = (centroid - original).norm(dim=-1)
    near = [point + int(sign) * k for k in (3, 4, 5, 6)]  # beyond the gap, in the rigid zone
    assert torch.allclose(shift[near], torch.full((4,), 3.0), atol=0.35)
    behind = [point - int(sign) * k for k in (2, 4, 8)]
    assert float(shift[behind].max()) < 1e-4  # the other side stays
    assert float(shift[point + int(sign) * 17]) < 1e-3  # back in place past the reach
    fading = shift[[point + int(sign) * k for k in (8, 10, 12, 14)]]
    assert bool((fading.diff() < 0).all())  # and fades in between


def test_angulation_turns_the_fragment_about_its_hinge():
    crops = rod_phantom(length=72, size=40)
    angle = 0.25
    config = FractureConfig(probability=1.0, reach=24.0, comminuted_probability=0.0)
    params = hand_params(position=rod_point(crops, 36), gap=(1.0, 1.0), angulation=(angle, angle))
    result = apply_fractures(crops, unit_affine(1), params, config=config)
    point, sign = int(result.center_index[0, 0]), int(result.axis[0, 0].sign())
    shift = (slice_centroid(result.attenuation[0]) - slice_centroid(crops[0])).norm(dim=-1)
    distances = torch.tensor([4.0, 7.0, 10.0])  # from the bone point, in the rigid zone (reach / 2 = 12)
    measured = shift[[point + sign * int(d) for d in distances]]
    slope = float(((measured - measured[0]) / (distances - distances[0]))[1:].mean())
    assert abs(slope - math.tan(angle)) < 0.08  # the offset grows as tan(angle) along the fragment


def test_the_comminuted_pattern_cuts_twice():
    crops = rod_phantom(length=72)
    config = FractureConfig(probability=1.0, reach=20.0)
    params = hand_params(position=rod_point(crops, 36), comminuted=True, fragment_length=9.0, gap=(2.0, 2.0))
    result = apply_fractures(crops, unit_affine(1), params, config=config)
    bone = (result.attenuation[0] - SOFT).clamp_min(0).sum((1, 2))
    empty = (bone < 1e-4).nonzero()[:, 0].tolist()
    runs = [s for s in empty if s - 1 not in empty]
    assert len(runs) == 2, empty  # two gaps
    assert 8 <= abs(runs[1] - runs[0]) <= 11


def test_only_the_chosen_bone_changes():
    crops = rod_phantom(size=40)
    crops[:, :, 30:36, 30:36] = BONE  # a second bone, close but apart
    labels = torch.zeros(crops.shape, dtype=torch.int16)
    labels[crops > 0.03] = 1
    labels[:, :, 30:36, 30:36] = 2
    table = torch.tensor([0.0, 1.0, 0.0])  # only label 1 may be chosen
    config = FractureConfig(probability=1.0, reach=20.0)
    params = hand_params(position=0.4, translation=(4.0, 4.0), translation_direction=(0.8, 0.8))
    for extra in (dict(labels=labels, table=table), dict()):
        result = apply_fractures(crops, unit_affine(1), params, config=config, **extra)
        changed = result.attenuation[0] != crops[0]
        assert bool(changed.any())
        assert not bool(changed[:, 29:37, 29:37].any())  # the other bone is untouched


def test_a_batch_equals_the_loop_and_a_subset_equals_its_rows():
    generator = torch.Generator().manual_seed(0)
    crops = rod_phantom(4, length=40, size=24) + 0.002 * torch.rand(4, 40, 24, 24, generator=generator)
    affine = unit_affine(4, 1.5)
    affine[:, :3, 3] = torch.randn(4, 3, generator=generator, dtype=torch.float64) * 10
    config = FractureConfig(probability=0.7, reach=10.0, comminuted_probability=0.5)
    params = draw_fractures(config, 4, torch.Generator().manual_seed(3))
    batch = apply_fractures(crops, affine, params, config=config)
    assert bool(batch.fractured.any()) and not bool(batch.fractured.all())
    for i in range(4):
        single = apply_fractures(crops[i : i + 1], affine[i : i + 1], params.rows(torch.tensor([i])), config=config)
        torch.testing.assert_close(single.attenuation, batch.attenuation[i : i + 1], atol=1e-6, rtol=0)
        torch.testing.assert_close(single.center, batch.center[i : i + 1], equal_nan=True)
        if not batch.fractured[i]:
            assert torch.equal(batch.attenuation[i], crops[i]) and bool(batch.center[i].isnan().all())
    drawn = params.drawn.nonzero()[:, 0]
    subset = apply_fractures(crops, affine, params, config=config, samples=drawn)
    torch.testing.assert_close(subset.attenuation, batch.attenuation, atol=1e-6, rtol=0)
    assert torch.equal(subset.fractured, batch.fractured)
    copy = crops.clone()
    in_place = apply_fractures(copy, affine, params, config=config, inplace=True)
    assert in_place.attenuation is copy and torch.equal(copy, batch.attenuation)
    none = apply_fractures(crops, affine, params, config=config, samples=torch.zeros(0, dtype=torch.long))
    assert torch.equal(none.attenuation, crops) and not bool(none.fractured.any())


def test_the_fracture_centre_is_the_centroid_of_its_change():
    crops = rod_phantom()
    config = FractureConfig(probability=1.0, reach=16.0, comminuted_probability=0.0)
    params = hand_params(position=rod_point(crops, 32), translation=(4.0, 4.0))
    result = apply_fractures(crops, unit_affine(1, 1.5), params, config=config)
    change = (result.attenuation[0] - crops[0]).abs()
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in change.shape], indexing="ij")
    centroid = torch.stack([(g * change).sum() / change.sum() for g in grids]) * 1.5  # world mm (origin 0)
    torch.testing.assert_close(result.center[0], centroid, atol=1e-3, rtol=0)


@pytest.mark.slow
def test_apply_fractures_has_no_graph_break():
    crops = rod_phantom(2, length=24, size=20)
    config = FractureConfig(probability=1.0, reach=6.0)
    params = draw_fractures(config, 2, torch.Generator().manual_seed(0))
    labels = (crops > 0.03).to(torch.int16)
    table = torch.tensor([0.0, 1.0])
    explanation = torch._dynamo.explain(apply_fractures)(crops, unit_affine(2), params, config=config, labels=labels,
                                                         table=table, window=(13, 13, 13))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_bad_inputs_are_rejected():
    params = draw_fractures(FractureConfig(), 2, torch.Generator().manual_seed(0))
    crops = torch.zeros(2, 8, 8, 8)
    with pytest.raises(ValueError, match="attenuation"):
        apply_fractures(crops[0], unit_affine(2), params)
    with pytest.raises(ValueError, match="affine"):
        apply_fractures(crops, unit_affine(3), params)
    with pytest.raises(TypeError, match="params"):
        apply_fractures(crops, unit_affine(2), {"drawn": params.drawn})
    with pytest.raises(ValueError, match="params"):
        apply_fractures(crops, unit_affine(2), params.rows(torch.tensor([0])))
    with pytest.raises(ValueError, match="bone"):
        apply_fractures(crops, unit_affine(2), params, bone=torch.zeros(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="labels"):
        apply_fractures(crops, unit_affine(2), params, labels=torch.zeros(2, 8, 8), table=torch.ones(3))
    with pytest.raises(ValueError, match="table"):
        apply_fractures(crops, unit_affine(2), params, labels=torch.zeros(2, 8, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="window"):
        apply_fractures(crops, unit_affine(2), params, window=(3, 3))
    with pytest.raises(ValueError, match="samples"):
        apply_fractures(crops, unit_affine(2), params, samples=torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size"):
        draw_fractures(FractureConfig(), 0, torch.Generator())
    with pytest.raises(TypeError, match="config"):
        draw_fractures({"probability": 1.0}, 2, torch.Generator())
    with pytest.raises(ValueError, match="spacing"):
        fracture_window(FractureConfig(), (1.0, -1.0, 1.0))


# ---------------------------------------------------------------------------
# Visibility


@pytest.fixture(scope="module")
def rib_scene():
    """A tilted bone rod in a soft-tissue slab, two views, a fracture with a displaced fragment."""
    crops = rod_phantom(2, length=48, size=48, radius=3.0)
    affine = unit_affine(2)
    affine[:, :3, 3] = -23.5
    carm = CArm(alpha=torch.tensor([[0.3, 1.7], [2.5, 4.0]]), beta=0.2, sid=600.0, sdd=900.0, height=64,
                pixel_spacing=1.2)
    config = FractureConfig(probability=1.0, reach=12.0, comminuted_probability=0.0)
    params = hand_params(2, position=rod_point(crops, 24), translation=(4.0, 4.0), translation_direction=(0.5, 0.5))
    probe = visibility_probe(config, spacing=1.0, pixel_spacing=1.2, sid=600.0, sdd=900.0, image_size=64,
                             crop_radius=35.0, stride=1)
    return crops, affine, carm, config, params, probe


def test_contrast_and_visibility_match_the_rendered_change(rib_scene):
    crops, affine, carm, config, params, probe = rib_scene
    result = apply_fractures(crops, affine, params, config=config)
    intact = render(VolumeBatch(attenuation=crops[:, None], affine=affine), carm)
    fractured = render(VolumeBatch(attenuation=result.attenuation[:, None], affine=affine), carm)
    exact = (fractured - intact).abs().flatten(2).amax(-1)
    contrast = fracture_contrast(result, carm, probe=probe)
    assert bool((exact > 0.02).all())
    torch.testing.assert_close(contrast, exact, rtol=0.06, atol=1e-3)
    visibility = fracture_visibility(contrast, fractured)
    display = (to_display(fractured) - to_display(intact)).abs().flatten(2).amax(-1)
    torch.testing.assert_close(visibility, display, rtol=0.1, atol=2e-3)
    coarse = visibility_probe(config, spacing=1.0, pixel_spacing=1.2, sid=600.0, sdd=900.0, image_size=64,
                              crop_radius=35.0, stride=3)
    estimate = fracture_contrast(result, carm, probe=coarse)
    assert bool((estimate <= contrast * 1.001).all()) and bool((estimate >= 0.85 * contrast).all())
    ranges = view_ranges(crops, affine, carm)
    flat = intact.flatten(2)
    torch.testing.assert_close(ranges, flat.amax(-1) - flat.amin(-1), rtol=0.15, atol=0)


def test_contrast_through_a_display_matches_the_displayed_change(rib_scene):
    crops, affine, carm, config, params, _ = rib_scene
    display = DISPLAYS["radiograph"]
    probe = visibility_probe(config, spacing=1.0, pixel_spacing=1.2, sid=600.0, sdd=900.0, image_size=64,
                             crop_radius=35.0, display=display)
    result = apply_fractures(crops, affine, params, config=config)
    intact = render(VolumeBatch(attenuation=crops[:, None], affine=affine), carm)
    fractured = render(VolumeBatch(attenuation=result.attenuation[:, None], affine=affine), carm)
    shown = (display(fractured, pixel_spacing=1.2) - display(intact, pixel_spacing=1.2)).abs().flatten(2).amax(-1)
    visibility = fracture_visibility(fracture_contrast(result, carm, probe=probe),
                                     display.width(fractured[:, :, 0], pixel_spacing=1.2))
    torch.testing.assert_close(visibility, shown, rtol=0.1, atol=2e-3)
    plain = fracture_visibility(fracture_contrast(result, carm, probe=replace(probe, display=None)), fractured)
    assert bool((visibility > plain).all())  # the processed display shows the break more
    ranges = view_ranges(crops, affine, carm, display=display, pixel_spacing=1.2)  # a coarse render loses fine detail
    torch.testing.assert_close(ranges, display.width(intact[:, :, 0], pixel_spacing=1.2), rtol=0.25, atol=0)
    with pytest.raises(ValueError, match="pixel_spacing"):
        view_ranges(crops, affine, carm, display=display)


def test_invisible_fractures_are_redrawn_or_flagged(rib_scene):
    crops, affine, carm, config, _, probe = rib_scene
    # Candidate 0 moves nothing and leaves a thin gap; candidate 1 shifts the fragment by 6 mm.
    params = hand_params(2, 3, position=rod_point(crops, 24), gap=(1.0, 1.0))
    params = replace(params, translation=params.translation.clone())
    params.translation[:, 1] = 6.0
    ranges = view_ranges(crops, affine, carm)
    plain = cut_visible_fractures(crops, affine, params, carm, config=config, probe=probe)
    visible = replace(config, min_visibility=0.9 * float(fracture_visibility(plain.contrast, ranges).amax(1).max())
                      + 0.01, max_redraws=2)
    low = fracture_visibility(plain.contrast, ranges).amax(1)
    result = cut_visible_fractures(crops, affine, params, carm, config=visible, probe=probe, view_range=ranges)
    assert result.choice.tolist() == [1, 1] and not bool(result.invisible.any())
    assert bool((fracture_visibility(result.contrast, ranges).amax(1) > low).all())
    unreachable = replace(config, min_visibility=0.99, max_redraws=2)  # no draw reaches it: flagged, no hang
    flagged = cut_visible_fractures(crops, affine, params, carm, config=unreachable, probe=probe, view_range=ranges)
    assert flagged.invisible.tolist() == [True, True] and flagged.fractured.all()
    assert flagged.choice.tolist() == [1, 1]  # the most visible candidate is kept
    with pytest.raises(ValueError, match="view_range"):
        cut_visible_fractures(crops, affine, params, carm, config=visible, probe=probe)


def test_bad_probe_settings_are_rejected():
    config = FractureConfig()
    good = dict(spacing=1.0, pixel_spacing=1.0, sid=800.0, sdd=1000.0, image_size=64)
    for name, value in (("pixel_spacing", -1.0), ("sid", float("nan")), ("crop_radius", -3.0), ("stride", 0),
                        ("spacing", 0.0)):
        with pytest.raises(ValueError, match=name):
            visibility_probe(config, **(good | {name: value}))
    with pytest.raises(ValueError, match="factor"):
        view_ranges(torch.zeros(1, 4, 4, 4), unit_affine(1), CArm(sid=800.0, sdd=1000.0, height=8, pixel_spacing=1.0),
                    factor=0)
    with pytest.raises(ValueError, match="line_integrals"):
        fracture_visibility(torch.zeros(2, 3), torch.zeros(2, 2))


# ---------------------------------------------------------------------------
# In the sampler


SETTINGS = dict(views=2, image_size=64, patch_size=16, crop_size=100.0, spacing=2.0, batch_size=6)


@pytest.fixture(scope="module")
def chest(ct) -> Volume:
    """A 160 mm cube of the bundled CT around its centre (spine, ribs), resampled to 2 mm, labels kept."""
    return ct.crop_mm((0.0, 0.0, 0.0), 160.0).resample(2.0)


def make(volume: Volume, **changes) -> DRRCorrespondenceSampler:
    return DRRCorrespondenceSampler(**(SETTINGS | dict(volumes=[volume], return_volume=True, augmentation=None)
                                       | changes))


@pytest.mark.slow
@pytest.mark.parametrize("shown_as", ["minmax", "radiograph"])
def test_sampler_batches_carry_visibility_and_leave_the_ct_untouched(chest, shown_as):
    sampler = make(chest, fractures=FractureConfig(probability=0.5), seed=2, display=shown_as)
    stored = sampler.store._attenuation.clone()
    batch = sampler.sample(0)
    intact = make(chest, seed=2, display=shown_as).sample(0)
    assert sampler.fracture_bone_source == ("labels",)
    assert batch.fracture.any() and not batch.fracture.all()
    assert batch.fracture_visibility.shape == (6, 2) and batch.fracture_invisible.shape == (6,)
    assert torch.equal(sampler.store._attenuation, stored)  # the crops were cut, never the store
    lines = render(batch.volume, batch.carm)
    difference = (sampler.config.display(lines, pixel_spacing=sampler.config.pixel_spacing) - intact.images).abs()
    display = difference.flatten(2).amax(-1)
    for i in range(6):
        if batch.fracture[i]:
            assert not torch.equal(batch.images[i], intact.images[i])
            torch.testing.assert_close(batch.fracture_visibility[i], display[i], rtol=0.15, atol=3e-3)
            for view in range(2):  # the targets fall on the change: its pixel holds a good share of the largest
                row, col = batch.fracture_pixel[i, view].round().long().clamp(0, 63).tolist()
                near = difference[i, view, 0, max(row - 8, 0) : row + 9, max(col - 8, 0) : col + 9]
                assert float(near.max()) >= 0.5 * float(display[i, view])
        else:
            assert torch.equal(batch.images[i], intact.images[i])
            assert float(batch.fracture_visibility[i].abs().max()) == 0.0
    again = make(chest, fractures=FractureConfig(probability=0.5), seed=2, display=shown_as).sample(0)
    assert torch.equal(again.images, batch.images) and torch.equal(again.fracture_visibility, batch.fracture_visibility)


@pytest.mark.slow
def test_sampler_redraws_invisible_fractures(chest):
    config = FractureConfig(probability=1.0, min_visibility=0.03, max_redraws=3)
    batch = make(chest, fractures=config, seed=4).sample(0)
    visible = batch.fracture_visibility.amax(1)
    assert bool(((visible >= 0.9 * 0.03) | batch.fracture_invisible | ~batch.fracture).all())
    plain = make(chest, fractures=replace(config, min_visibility=0.0), seed=4).sample(0)
    assert float(visible[batch.fracture].median()) >= float(plain.fracture_visibility.amax(1)[plain.fracture].median())


def test_sampler_refuses_bones_no_ct_has(chest):
    with pytest.raises(ValueError, match="no_such_bone"):
        make(chest, fractures=FractureConfig(bones=["no_such_bone"]))
    unlabelled = Volume.from_tensor(chest.hu[0], spacing=2.0)
    with pytest.raises(ValueError, match="label maps"):
        make(unlabelled, fractures=FractureConfig(bones=["rib"]))
    sampler = make(unlabelled, fractures=FractureConfig(probability=1.0))
    assert sampler.fracture_bone_source == ("threshold",)


def test_paired_batches_repeat_each_sample_intact(chest):
    sampler = make(chest, fractures=FractureConfig(probability=1.0, paired=True), seed=2, batch_size=8)
    batch = sampler.sample(0)
    first, second = slice(0, 4), slice(4, 8)
    for name in ("volume_index", "crop_start", "alpha", "beta", "sid", "sdd", "isocenter"):
        value = getattr(batch.params, name)
        assert torch.equal(value[first], value[second]), name
    assert batch.fracture[first].any() and not batch.fracture[second].any()
    same = ~batch.fracture[first]  # a twin without bone in reach: identical views
    assert torch.equal(batch.images[first][same], batch.images[second][same])
    changed = (batch.images[first] - batch.images[second]).abs().flatten(1).amax(1)
    assert bool((changed[batch.fracture[first]] > 0.005).all())
    assert float(batch.fracture_visibility[second].abs().max()) == 0.0
    unpaired = make(chest, fractures=FractureConfig(probability=1.0), seed=2, batch_size=8).sample(0)
    assert torch.equal(unpaired.params.crop_start[first], batch.params.crop_start[first])  # the same first half


def test_paired_fractures_need_an_even_batch_and_keep_old_fingerprints():
    with pytest.raises(ValueError, match="batch_size: expected an even size"):
        SamplerConfig(batch_size=5, fractures=FractureConfig(paired=True))
    with pytest.raises(TypeError, match="paired"):
        FractureConfig(paired=1)
    plain = SamplerConfig(batch_size=4, fractures=FractureConfig())
    assert "paired" not in plain.describe()["fractures"]
    assert SamplerConfig(batch_size=4, fractures=FractureConfig(paired=True)).fingerprint() != plain.fingerprint()
