"""Fracture kinds on the phantoms' bones: each kind breaks its bone at its site, severities move fragments by the
drawn amounts, the chest CT keeps the generic fracture, bad settings are refused by name."""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from onthefly import hu_to_attenuation
from onthefly.fractures import (
    FRACTURE_KINDS,
    SEVERITIES,
    SEVERITY_NAMES,
    FractureConfig,
    FractureKind,
    Severity,
    apply_fractures,
    bone_geometry,
    bone_weight_table,
    draw_fractures,
    kind_geometry,
)
from onthefly.phantoms import LABELS, phantom

SPACING = 2.0
#: the region of each kind's phantom (the forearm holds the radius and ulna whole; the hand the metacarpals whole)
REGION = {"distal_radius": "wrist", "ulnar_styloid": "wrist", "radius_shaft": "forearm", "ulna_shaft": "forearm",
          "scaphoid_waist": "wrist", "metacarpal_neck": "hand", "metacarpal_shaft": "hand", "phalanx": "hand"}
SEEDS = (0, 1)


@functools.lru_cache(maxsize=None)
def arm(region: str, seed: int):
    return phantom(region, seed, spacing=SPACING)


def cut_kind(kind: str, seed: int, severity: str, *, batch: int = 2, generator_seed: int = 0):
    """Fractures of one kind and severity cut into ``batch`` copies of a phantom (no redraws)."""
    volume = arm(REGION[kind], seed)
    config = FractureConfig(probability=1.0, kinds={kind: 1.0}, severity={severity: 1.0}, kind_min_visibility=0.0)
    crops = hu_to_attenuation(volume.hu).expand(batch, -1, -1, -1).contiguous()
    labels = volume.labels.expand(batch, -1, -1, -1).contiguous()
    geometry = kind_geometry(volume.labels, volume.affine, volume.label_names, config)
    params = draw_fractures(config, batch, torch.Generator().manual_seed(generator_seed))
    result = apply_fractures(crops, volume.affine.double()[None].expand(batch, -1, -1), params, config=config,
                             labels=labels, table=bone_weight_table(volume.label_names, config),
                             geometry=geometry[None].expand(batch, -1, -1))
    return volume, config, crops, labels, result


def world_points(volume) -> torch.Tensor:
    """``(D, H, W, 3)`` world mm of every voxel centre."""
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in volume.hu.shape[1:]], indexing="ij")
    index = torch.stack(grids, -1)
    return index @ volume.affine[:3, :3].double().T + volume.affine[:3, 3].double()


def section_distance(volume, label: int, point: torch.Tensor) -> tuple[float, float]:
    """A point's distance from its bone's distal end along the bone's long axis (mm) and the bone's length, measured
    here from the label's voxels (the extreme voxel towards -z along the principal axis)."""
    points = world_points(volume)[volume.labels[0] == label]
    centred = points - points.mean(0)
    axis = torch.linalg.eigh(centred.T @ centred)[1][:, -1]
    axis = -axis if axis[2] > 0 else axis
    along = points @ axis
    return float(along.max() - point @ axis), float(along.max() - along.min())


@settings(max_examples=4, deadline=None)
@given(kind=st.sampled_from(sorted(FRACTURE_KINDS)), seed=st.sampled_from(SEEDS))
def test_each_kind_breaks_its_bone_at_its_site(kind, seed):
    volume, config, crops, labels, result = cut_kind(kind, seed, "subtle")
    spec = FRACTURE_KINDS[kind]
    assert result.fractured.all() and (result.kind == config.kind_names.index(kind)).all()
    assert (result.severity == SEVERITY_NAMES.index("subtle")).all()
    names = volume.label_names
    for b in range(2):
        index = result.center_index[b]
        label = int(labels[b, index[0], index[1], index[2]])
        assert any(names[label] == bone or names[label].startswith(bone + "_") for bone in spec.bones)
        point = volume.affine[:3, :3].double() @ index.double() + volume.affine[:3, 3].double()
        distance, length = section_distance(volume, label, point)
        low, high = spec.site
        if spec.site_unit == "length":
            low, high = low * length, high * length
        # the point moves to its section's centre (at most a voxel along the axis); voxel centres: half a diagonal
        slack = SPACING * (1 + math.sqrt(3) / 2)
        assert low - slack <= distance <= high + slack, (kind, distance, (low, high))


@settings(max_examples=3, deadline=None)
@given(kind=st.sampled_from(["distal_radius", "radius_shaft", "metacarpal_shaft", "phalanx"]),
       seed=st.sampled_from(SEEDS))
def test_the_cut_crosses_the_whole_section_of_the_bone(kind, seed):
    """A subtle break moves nothing: exactly the bone's voxels within the gap behind the cut become soft tissue, and
    they span the bone's whole cross-section (every bone voxel next to the cut plane has one across the gap)."""
    volume, config, crops, labels, result = cut_kind(kind, seed, "subtle", batch=1)
    points = world_points(volume)
    index = result.center_index[0]
    label = labels[0, index[0], index[1], index[2]]
    point = volume.affine[:3, :3].double() @ index.double() + volume.affine[:3, 3].double()
    side = (points - point) @ result.normal[0].double()
    changed = (result.attenuation[0] - crops[0]).abs() > 1e-5  # (resampling leaves float rounding elsewhere)
    assert bool(changed.any()) and bool((labels[0][changed] == label).all())  # only the chosen bone changes
    assert bool((side[changed] >= -1e-6).all())  # behind the cut only
    # the bone's section in the cut plane lies within the cut piece (reach of the point): no part of it is left out
    same = labels[0] == label
    section = same & (side.abs() < SPACING / 2) & ((points - point).norm(dim=-1) < 1.5 * config.reach)
    assert float((points[section] - point).norm(dim=-1).max()) < config.reach - SPACING / 2
    # and every voxel of that section in the slab 0 <= s < gap (the narrowest subtle gap) became soft tissue
    dense = crops[0] > hu_to_attenuation(torch.tensor(float(config.bone_hu)))
    in_gap = same & dense & (side >= 0) & (side < 0.4) & ((points - point).norm(dim=-1) < config.reach)
    assert bool(changed[in_gap].all())
    assert bool((result.attenuation[0][in_gap] <= hu_to_attenuation(torch.tensor(config.soft_tissue_hu)) + 1e-6).all())


@settings(max_examples=3, deadline=None)
@given(kind=st.sampled_from(["distal_radius", "ulna_shaft", "metacarpal_neck"]), seed=st.sampled_from(SEEDS),
       severity=st.sampled_from(["obvious", "moderate"]))
def test_fragments_move_by_the_drawn_amounts(kind, seed, severity):
    volume, config, crops, labels, result = cut_kind(kind, seed, severity)
    spec, grade = FRACTURE_KINDS[kind], SEVERITIES[severity]
    for b in range(2):
        shift, axis = result.shift[b], result.axis[b]
        along = float(shift @ axis)
        across = float((shift - along * axis).norm())
        scale = spec.motion_scale
        assert scale * grade.translation[0] - 1e-6 <= across <= scale * grade.translation[1] + 1e-6
        shortening = scale * torch.tensor(grade.shortening) if spec.shortens else torch.zeros(2)
        assert float(shortening[0]) - 1e-6 <= -along <= float(shortening[1]) + 1e-6
        assert grade.angulation[0] - 1e-9 <= float(result.angulation[b]) <= grade.angulation[1] + 1e-9
        # the axis points distally (towards -z) and a dorsal or volar kind displaces the fragment that way
        assert float(axis[2]) < 0
        if spec.direction != "any":
            sign = -1.0 if spec.direction == "dorsal" else 1.0
            assert sign * float(shift[1] - along * axis[1]) > 0.5 * across
    # the fragment moved that way: across the axis, the bone the cut adds lies towards the drawn displacement from
    # the bone it removes
    points = world_points(volume)
    for b in range(2):
        axis, shift = result.axis[b].double(), result.shift[b].double()
        across = shift - (shift @ axis) * axis
        change = (result.attenuation[b] - crops[b]).double()
        gained, lost = change.clamp_min(0), (-change).clamp_min(0)
        centre = lambda weight: (weight[..., None] * points).sum((0, 1, 2)) / weight.sum()  # noqa: E731
        moved = centre(gained) - centre(lost)
        moved = moved - (moved @ axis) * axis
        assert float(F.cosine_similarity(moved, across, dim=0)) > 0.5, (kind, moved, across)
        assert 0.3 * float(across.norm()) < float(moved.norm()) < 3 * float(across.norm()) + 2 * SPACING


def test_the_chest_ct_keeps_the_generic_fracture(ct):
    """No kind's bones in a chest CT's labels: the default configuration cuts exactly what it cut before kinds."""
    config = FractureConfig(probability=1.0)
    plain = replace(config, kinds={})
    params = draw_fractures(config, 6, torch.Generator().manual_seed(3))
    before = draw_fractures(plain, 6, torch.Generator().manual_seed(3))
    for name in ("position", "gap", "translation", "angulation", "obliquity", "hinge_direction"):
        assert torch.equal(getattr(params, name)[:, :1], getattr(before, name)), name
    assert kind_geometry(ct.labels, ct.affine, ct.label_names, config)[:, 5:].abs().sum() == 0
    crops = torch.full((2, 40, 40, 40), 0.02)
    crops[:, :, 16:24, 16:24] = 0.04
    affine = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    with_kinds = apply_fractures(crops, affine, params.rows(torch.tensor([0, 1])), config=replace(config, reach=12.0))
    without = apply_fractures(crops, affine, before.rows(torch.tensor([0, 1])), config=replace(plain, reach=12.0))
    assert torch.equal(with_kinds.attenuation, without.attenuation) and (with_kinds.kind == -1).all()


def test_kinds_and_severities_are_drawn_with_their_shares():
    config = FractureConfig(kinds={"phalanx": 1.0, "scaphoid_waist": 3.0},
                            severity={"obvious": 0.2, "moderate": 0.3, "subtle": 0.5})
    params = draw_fractures(config, 4000, torch.Generator().manual_seed(0))
    shares = torch.bincount(params.severity[:, 0], minlength=3).double() / 4000
    torch.testing.assert_close(shares, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), atol=0.03, rtol=0)
    # redraw candidates keep the sample's kind and severity draws
    assert params.kind_draw.shape == (4000, 5) and bool((params.kind_draw == params.kind_draw[:, :1]).all())
    assert bool((params.severity == params.severity[:, :1]).all())


def test_bone_geometry_finds_the_distal_end_and_cut_ends():
    wrist = arm("wrist", 0)
    rows = bone_geometry(wrist.labels, wrist.affine, [LABELS["radius"], LABELS["metacarpal_3"]])
    radius, metacarpal = rows[LABELS["radius"]], rows[LABELS["metacarpal_3"]]
    assert float(radius[2]) < -0.9 and float(metacarpal[2]) < -0.9  # axes along the arm, pointing to the hand
    # the wrist phantom cuts the radius above the joint and the metacarpals below their bases
    assert radius[5] == 1 and radius[6] == 0 and metacarpal[5] == 0 and metacarpal[6] == 1


@pytest.mark.parametrize(("changes", "message"), [
    (dict(kinds={"no_such_kind": 1.0}), "kinds: unknown kind 'no_such_kind'"),
    (dict(kinds={"phalanx": -1.0}), "kinds: expected weights >= 0"),
    (dict(kinds={"phalanx": 0.0}), "kinds: expected at least one positive weight"),
    (dict(kinds=["phalanx"]), "kinds: expected None or"),
    (dict(severity={"obvious": 0.5, "subtle": 0.4}), "severity: expected shares summing to 1"),
    (dict(severity={"huge": 1.0}), "severity: unknown severities"),
    (dict(severity={"obvious": 1.5, "subtle": -0.5}), "severity: expected shares >= 0"),
    (dict(kind_min_visibility=1.0), "kind_min_visibility"),
    (dict(kind_min_visibility=-0.1), "kind_min_visibility"),
])
def test_bad_kind_settings_are_refused_by_name(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        FractureConfig(**changes)


@pytest.mark.parametrize(("changes", "message"), [
    (dict(site=(40.0, 15.0)), "site: expected a finite .* low <= high"),
    (dict(site=(-5.0, 15.0)), "site: expected values in"),
    (dict(site=(0.2, 1.5), site_unit="length"), "site: expected values in"),
    (dict(site_unit="inch"), "site_unit"),
    (dict(bones=()), "bones"),
    (dict(obliquity=(0.0, 2.0)), "obliquity"),
    (dict(direction="sideways"), "direction"),
    (dict(motion_scale=0.0), "motion_scale"),
    (dict(comminuted_probability=1.5), "comminuted_probability"),
])
def test_bad_kinds_are_refused_by_name(changes, message):
    settings_ = dict(name="custom", bones=("radius",), site=(15.0, 40.0)) | changes
    with pytest.raises((ValueError, TypeError), match=message):
        FractureKind(**settings_)


@pytest.mark.parametrize(("changes", "message"), [
    (dict(gap=(0.0, 1.0)), "gap: expected widths > 0"),
    (dict(translation=(3.0, 1.0)), "translation: expected a finite"),
    (dict(angulation=(-0.1, 0.2)), "angulation: expected values in"),
])
def test_bad_severities_are_refused_by_name(changes, message):
    settings_ = dict(gap=(1.0, 2.0), translation=(1.0, 2.0), angulation=(0.0, 0.1)) | changes
    with pytest.raises((ValueError, TypeError), match=message):
        Severity(**settings_)


def test_a_custom_kind_is_used_by_name():
    custom = FractureKind("radius_midshaft", ("radius",), site=(0.45, 0.55), site_unit="length")
    config = FractureConfig(kinds={custom: 1.0, "phalanx": 1.0})
    assert config.kind_names == ("radius_midshaft", "phalanx")
    with pytest.raises(ValueError, match="kinds: expected distinct kind names"):
        FractureConfig(kinds={custom: 1.0, replace(custom, site=(0.1, 0.2)): 1.0})


def test_redraws_are_bounded_and_keep_the_kind():
    """With kind_min_visibility, at most max_redraws further candidates, all of the sample's kind."""
    config = FractureConfig(probability=1.0, kinds={"phalanx": 1.0}, max_redraws=2)
    assert config.kind_candidates == 3 and config.candidates == 1
    params = draw_fractures(config, 3, torch.Generator().manual_seed(0))
    assert params.position.shape == (3, 3)
    with pytest.raises(ValueError, match="max_redraws"):
        FractureConfig(max_redraws=101)


@pytest.mark.slow
def test_kind_fractures_have_no_graph_break():
    volume = arm("hand", 0)
    config = FractureConfig(probability=1.0, kinds={"phalanx": 1.0, "metacarpal_neck": 1.0}, kind_min_visibility=0.0)
    crops = hu_to_attenuation(volume.hu)[:, :40, :40, :40].expand(2, -1, -1, -1).contiguous()
    labels = volume.labels[:, :40, :40, :40].expand(2, -1, -1, -1).contiguous()
    geometry = kind_geometry(volume.labels, volume.affine, volume.label_names, config)[None].expand(2, -1, -1)
    params = draw_fractures(config, 2, torch.Generator().manual_seed(0))
    explanation = torch._dynamo.explain(apply_fractures)(
        crops, volume.affine.double()[None].expand(2, -1, -1), params, config=config, labels=labels,
        table=bone_weight_table(volume.label_names, config), geometry=geometry, window=(21, 21, 21))
    assert explanation.graph_break_count == 0, explanation.break_reasons
