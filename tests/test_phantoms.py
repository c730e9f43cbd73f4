"""Procedural extremity phantoms (``onthefly.phantoms``): determinism, anatomy, CT numbers, partial volume, input checks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from onthefly.phantoms import (
    BONES,
    LABELS,
    PARAMETERS,
    REGION_BONES,
    REGIONS,
    SOFT_TISSUES,
    phantom,
    phantom_from_parameters,
    phantom_parameters,
    phantoms,
)
from onthefly.phantoms.generate import _Plan, generate
from onthefly.phantoms.regions import draw_parameters
from onthefly.phantoms.tissues import PUBLISHED_HU
from onthefly.volume import Volume

SEEDS = st.integers(0, 10**6)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: a phantom is a few thousand tensor operations, and on a shared 2-core machine waiting
    OpenMP threads made them 5-30x slower (as ``conftest.single_thread``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(region: str, seed: int, spacing: float):
    volume, shares = generate(draw_parameters(region, seed), spacing, torch.device("cpu"), fractions=True)
    return volume, shares, draw_parameters(region, seed)


@pytest.fixture(scope="module")
def built():
    """Each region at 1 mm (seed 11) with its tissue shares and parameters."""
    return {region: _build(region, 11, 1.0) for region in REGIONS}


def _world_points(volume: Volume, mask: torch.Tensor) -> torch.Tensor:
    """``(N, 3)`` world mm of the voxels of a ``(D, H, W)`` mask."""
    index = mask.nonzero().double()
    return index @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def _length_along_axis(volume: Volume, mask: torch.Tensor) -> float:
    """Extent (mm) of a mask along its principal axis, counting whole voxels."""
    points = _world_points(volume, mask)
    centred = points - points.mean(0)
    axis = torch.linalg.eigh(centred.T @ centred).eigenvectors[:, -1]
    projection = centred @ axis
    return float(projection.max() - projection.min()) + float(volume.spacing[0])


# ---------------------------------------------------------------------------------------------- determinism


def test_same_seed_is_bit_identical_and_seeds_differ():
    first, again, other = phantom("wrist", 5, spacing=2.0), phantom("wrist", 5, spacing=2.0), phantom("wrist", 6, spacing=2.0)
    assert torch.equal(first.hu, again.hu) and torch.equal(first.labels, again.labels)
    assert torch.equal(first.affine, again.affine) and first.label_names == again.label_names
    assert first.shape != other.shape or not torch.equal(first.hu, other.hu)
    assert phantom_parameters("wrist", 5).values != phantom_parameters("wrist", 6).values


def test_regions_draw_apart_and_parameters_rebuild_the_phantom():
    assert phantom_parameters("forearm", 3).values != phantom_parameters("hand", 3).values
    rebuilt = phantom_from_parameters(phantom_parameters("hand", 3), spacing=3.0)
    assert torch.equal(rebuilt.hu, phantom("hand", 3, spacing=3.0).hu)


def test_a_batch_equals_a_loop():
    batch = phantoms("forearm", [1, 2], spacing=3.0)
    for volume, seed in zip(batch, (1, 2)):
        single = phantom("forearm", seed, spacing=3.0)
        assert torch.equal(volume.hu, single.hu) and torch.equal(volume.labels, single.labels)


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, region=st.sampled_from(REGIONS))
def test_every_parameter_lies_in_its_documented_range(seed, region):
    values = phantom_parameters(region, seed).values
    assert set(values) == set(PARAMETERS)
    for name, parameter in PARAMETERS.items():
        assert parameter.low - 1e-9 <= values[name] <= parameter.high + 1e-9, name
    assert 15.0 <= values["ulna_length"] - values["radius_length"] <= 26.0


# ---------------------------------------------------------------------------------------------- conventions


def test_convention_limb_along_z_palm_anterior_radius_lateral(built):
    forearm, _, _ = built["forearm"]
    labels = forearm.labels[0]
    radius = _world_points(forearm, labels == LABELS["radius"])
    ulna = _world_points(forearm, labels == LABELS["ulna"])
    assert float(radius[:, 0].mean()) > float(ulna[:, 0].mean()) + 10  # radius lateral (+x, the right arm's outside)
    assert float(ulna[:, 2].max()) > float(radius[:, 2].max()) + 5  # the olecranon is the most proximal (+z)
    extent = forearm.world_corners().amax(0) - forearm.world_corners().amin(0)
    assert float(extent[2]) > 2 * float(extent[:2].max())  # long axis along z
    wrist, _, _ = built["wrist"]
    pisiform = _world_points(wrist, wrist.labels[0] == LABELS["pisiform"]).mean(0)
    triquetrum = _world_points(wrist, wrist.labels[0] == LABELS["triquetrum"]).mean(0)
    assert float(pisiform[1]) > float(triquetrum[1])  # the pisiform is palmar: the palm faces +y
    hand, _, _ = built["hand"]
    thumb = _world_points(hand, hand.labels[0] == LABELS["metacarpal_1"]).mean(0)
    little = _world_points(hand, hand.labels[0] == LABELS["metacarpal_5"]).mean(0)
    tip = _world_points(hand, hand.labels[0] == LABELS["phalanx_distal_3"]).mean(0)
    base = _world_points(hand, hand.labels[0] == LABELS["metacarpal_3"]).mean(0)
    assert float(thumb[0]) > float(little[0])  # thumb lateral
    assert float(tip[2]) < float(base[2])  # the fingers point distally (-z)
    for volume in (forearm, wrist, hand):
        assert float(volume.center.abs().max()) <= float(volume.spacing[0])  # centred on the world origin


# ---------------------------------------------------------------------------------------------- anatomy


@pytest.mark.parametrize("region", REGIONS)
def test_every_bone_is_present_whole_and_connected(built, region):
    volume, _, _ = built[region]
    assert volume.hu.dtype == torch.float32 and volume.labels.shape == volume.hu.shape
    expected = set(REGION_BONES[region]) | set(SOFT_TISSUES)
    assert set(volume.label_names.values()) == expected
    assert set(volume.labels.unique().tolist()) == {0} | {LABELS[name] for name in expected}
    labels = volume.labels[0].numpy()
    for name in REGION_BONES[region]:
        mask = labels == LABELS[name]
        _, components = ndimage.label(mask)
        assert components == 1, f"{name}: {components} components"
        volume_ml = mask.sum() * float(volume.spacing.prod()) / 1000
        low = 0.2 if name.startswith(("phalanx_distal", "phalanx_middle", "pisiform")) else 0.5
        assert low <= volume_ml <= 120, f"{name}: {volume_ml:.2f} ml"


@pytest.mark.parametrize("region", REGIONS)
def test_bones_keep_a_joint_space(built, region):
    """No two different bones touch through a voxel face (joint spaces of 1.3 mm or more at 1 mm voxels)."""
    labels = built[region][0].labels[0].long()
    is_bone = labels >= min(LABELS[name] for name in BONES)
    for axis in range(3):
        a, b = labels.narrow(axis, 0, labels.shape[axis] - 1), labels.narrow(axis, 1, labels.shape[axis] - 1)
        both = is_bone.narrow(axis, 0, labels.shape[axis] - 1) & is_bone.narrow(axis, 1, labels.shape[axis] - 1)
        assert not bool((both & (a != b)).any())


@settings(max_examples=4, deadline=None)
@given(seed=SEEDS)
def test_forearm_bone_lengths(seed):
    volume = phantom("forearm", seed, spacing=1.5)
    p = phantom_parameters("forearm", seed)
    for name in ("radius", "ulna"):
        length = _length_along_axis(volume, volume.labels[0] == LABELS[name])
        assert abs(length - p[f"{name}_length"]) <= 4.0, (name, length, p[f"{name}_length"])
        assert PARAMETERS[f"{name}_length"].low - 4 <= length <= PARAMETERS[f"{name}_length"].high + 4


@settings(max_examples=3, deadline=None)
@given(seed=SEEDS)
def test_hand_bone_lengths(seed):
    volume = phantom("hand", seed, spacing=1.0)
    p = phantom_parameters("hand", seed)
    for name in REGION_BONES["hand"]:
        length = _length_along_axis(volume, volume.labels[0] == LABELS[name])
        if name.startswith(("metacarpal", "phalanx")):
            assert abs(length - p[f"{name}_length"]) <= 3.0, (name, length, p[f"{name}_length"])
        else:  # carpal bones: 10 (pisiform) to 31 mm (scaphoid)
            assert 8.0 <= length <= 36.0, (name, length)


def _cortex_estimate(volume, shares, name: str, fraction: float) -> float:
    """Cortical thickness (mm) of a bone in the axial slice at ``fraction`` of its z-extent: the difference of the
    radii of circles with the bone's and its marrow space's areas (partial volume counted)."""
    mask = volume.labels[0] == LABELS[name]
    z = mask.nonzero()[:, 2]
    k = int(z.min() + fraction * (z.max() - z.min()))
    near = torch.from_numpy(ndimage.binary_dilation(mask[:, :, k].numpy(), iterations=2))
    area = float(volume.spacing[0]) ** 2
    cortical = float(shares["cortical"][:, :, k][near].sum()) * area
    inner = float(shares["inner"][:, :, k][near].sum()) * area
    return math.sqrt((cortical + inner) / math.pi) - math.sqrt(inner / math.pi)


@settings(max_examples=4, deadline=None)
@given(seed=SEEDS)
@example(seed=576)  # a short radius (223 mm), thick mid-shaft cortex (3.8 mm): once measured at 6 % of its length
def test_cortex_is_thick_at_mid_shaft_and_thin_at_the_ends(seed):
    volume, shares, p = _build("forearm", seed, 1.0)
    for name in ("radius", "ulna"):
        middle = _cortex_estimate(volume, shares, name, 0.5)
        assert 1.7 <= middle <= 4.3, (name, middle)
        assert abs(middle - p[f"cortex_{name}"]) <= 0.7, (name, middle, p[f"cortex_{name}"])
    # The distal metaphysis, at 10 % of the length: nearer the end, the cross-section cuts the tilted articular
    # surface's subchondral plate (volar tilt and radial inclination span about 12 mm along the axis), and the
    # estimate measures that plate, not the cortex (seed 576: 1.8 mm at 3-6 %, 1.05 mm at 8-10 %).
    assert _cortex_estimate(volume, shares, "radius", 0.10) < 1.5


# ---------------------------------------------------------------------------------------------- CT appearance


@pytest.mark.parametrize("region", REGIONS)
def test_tissue_means_lie_in_their_published_ranges(built, region):
    volume, shares, p = built[region]
    hu, labels = volume.hu[0], volume.labels[0]
    pure = {
        "cortical": shares["cortical"] > 0.999,
        "cancellous": (shares["inner"] > 0.999) & (shares["medulla"] < 0.001),
        "skin": shares["skin"] > 0.999,
    }
    if region != "hand":
        pure["marrow"] = (shares["inner"] > 0.999) & (shares["medulla"] > 0.999)
    for name in ("fat", "muscle"):  # by label, two voxels from any other label
        eroded = ndimage.binary_erosion((labels == LABELS[name]).numpy(), iterations=2)
        pure[name] = torch.from_numpy(eroded) & (shares[name] > 0.999)
    for name, mask in pure.items():
        assert int(mask.sum()) >= 30, f"{name}: only {int(mask.sum())} pure voxels"
        mean = float(hu[mask].mean())
        low, high = PUBLISHED_HU[name]
        assert low <= mean <= high, f"{name}: mean {mean:.1f} HU outside [{low}, {high}]"
        if name != "cancellous":  # a uniform tissue: its drawn value plus zero-mean noise
            assert abs(mean - p[f"hu_{name}"]) <= 4 * p["noise_std"] / math.sqrt(int(mask.sum())) + 1.0
    air = shares["air"] > 0.999
    assert abs(float(hu[air].mean()) + 1000.0) < 2.0
    assert abs(float(hu[air].std()) - p["noise_std"]) < 1.0  # Gaussian CT noise of the drawn strength
    assert 10.0 <= p["noise_std"] <= 20.0


@pytest.mark.parametrize("region", REGIONS)
def test_partial_volume_no_jump_from_air_to_bone(built, region):
    hu = built[region][0].hu[0]
    for axis in range(3):
        a, b = hu.narrow(axis, 0, hu.shape[axis] - 1), hu.narrow(axis, 1, hu.shape[axis] - 1)
        assert not bool((((a < -900) & (b > 1000)) | ((b < -900) & (a > 1000))).any())
    # the skin's edge passes through intermediate values (partial volume, not a staircase)
    assert int(((hu > -800) & (hu < -300)).sum()) > 0.2 * int(((hu > -300) & (hu < 100)).sum()) ** (2 / 3)


def test_trabecular_texture_has_spatial_variance(built):
    volume, shares, p = built["wrist"]
    cancellous = (shares["inner"] > 0.999) & (shares["medulla"] < 0.001)
    values = volume.hu[0][cancellous]
    assert float(values.std()) > 3 * p["noise_std"]  # far more than the noise: a texture, not a constant
    texture = shares["texture"]
    smooth = torch.from_numpy(ndimage.uniform_filter(texture.numpy(), size=3))
    assert float((texture - smooth)[cancellous].std()) > 0.05  # varies from voxel to voxel inside the bone
    lower, upper = PUBLISHED_HU["marrow"][0], PUBLISHED_HU["cortical"][1]
    assert lower <= float(values.min()) and float(values.max()) <= upper + 100


def test_labels_follow_the_hu(built):
    volume, _, _ = built["forearm"]
    hu, labels = volume.hu[0], volume.labels[0]
    assert float(hu[labels == 0].mean()) < -900
    bone = labels >= LABELS["radius"]
    assert float(hu[bone].mean()) > 300


def test_coarser_voxels_keep_the_anatomy(built):
    fine = built["forearm"][0]
    coarse = phantom("forearm", 11, spacing=2.0)
    for name in ("radius", "ulna"):
        volumes = [float((v.labels[0] == LABELS[name]).sum()) * float(v.spacing.prod()) for v in (fine, coarse)]
        assert abs(volumes[0] - volumes[1]) <= 0.12 * volumes[0], name


@pytest.mark.parametrize("region", REGIONS)
def test_the_voxel_stage_traces_without_a_graph_break(region):
    """The host fixes each slab's layout (boxes, noise); the voxel stage that follows is only tensor arithmetic:
    a compiler traces all of it in one graph, and what it traces gives the eager phantom's values."""
    plan = _Plan.of(phantom_parameters(region, 3), 4.0, torch.device("cpu"))
    layout = next(plan.slabs())
    eager = plan.voxels(layout)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda slab: plan.voxels(slab)["hu"])(layout)
    assert explanation.graph_break_count == 0, [str(b.reason)[:200] for b in explanation.break_reasons]
    assert explanation.graph_count == 1
    assert torch.equal(eager["hu"], plan.voxels(layout)["hu"])  # the layout is read, not consumed
    z0, z1 = layout.z_range
    whole = phantom(region, 3, spacing=4.0)
    assert torch.equal(whole.hu[0, :, :, z0:z1], eager["hu"])
    assert torch.equal(whole.labels[0, :, :, z0:z1], eager["labels"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_builds_on_the_device_and_repeats():
    first = phantom("hand", 2, spacing=1.0, device="cuda")
    again = phantom("hand", 2, spacing=1.0, device="cuda")
    assert first.hu.device.type == "cuda" and first.labels.device.type == "cuda"
    assert torch.equal(first.hu, again.hu) and torch.equal(first.labels, again.labels)
    cpu = phantom("hand", 2, spacing=1.0)
    assert torch.equal(first.labels.cpu(), cpu.labels) or float((first.labels.cpu() != cpu.labels).float().mean()) < 1e-3


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(region="knee"), ValueError, "region"),
    (dict(region=3), TypeError, "region"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=True), TypeError, "seed"),
    (dict(seed="3"), TypeError, "seed"),
    (dict(spacing=0.1), ValueError, "spacing"),
    (dict(spacing=5.0), ValueError, "spacing"),
    (dict(spacing=float("nan")), ValueError, "spacing"),
    (dict(spacing=float("inf")), ValueError, "spacing"),
    (dict(spacing=0.0), ValueError, "spacing"),
    (dict(spacing="1"), TypeError, "spacing"),
    (dict(device="nonsense"), ValueError, "device"),
    (dict(device=3), TypeError, "device"),
    (dict(device="meta"), ValueError, "device"),
])
def test_bad_input_is_refused_by_name(kwargs, error, name):
    arguments = dict(region="forearm", seed=0, spacing=2.0) | kwargs
    region, seed = arguments.pop("region"), arguments.pop("seed")
    with pytest.raises(error, match=name):
        phantom(region, seed, **arguments)


def test_bad_input_of_the_other_entry_points():
    with pytest.raises(ValueError, match="region.*forearm"):
        phantom_parameters("elbow", 0)
    with pytest.raises(TypeError, match="seeds"):
        phantoms("hand", 3)
    with pytest.raises(ValueError, match=r"seeds\[1\]"):
        phantoms("hand", [0, -2])
    with pytest.raises(TypeError, match="parameters"):
        phantom_from_parameters({"region": "hand"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_refused_by_name():
    with pytest.raises(ValueError, match="device"):
        phantom("hand", 0, device="cuda")
