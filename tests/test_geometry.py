"""C-arm geometry: the pose convention of the README's Conventions section, and properties over random poses.

The ``test_convention_*`` tests each pin one fact of the convention against
values computed here independently (elementary rotation matrices written out
by hand, the pixel formula evaluated pixel by pixel, a ray-plane intersection).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onthefly import CArm, project_points
from onthefly.geometry import rotation_matrix
from onthefly.testing import strategies

PROPERTY = settings(max_examples=30, deadline=None)
F64 = torch.float64


# --------------------------------------------------------------------------- helpers


def rz(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=F64)


def rx(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=F64)


def ry(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=F64)


def make_carm(alpha=0.0, beta=0.0, gamma=0.0, sid=800.0, sdd=1000.0, isocenter=(0.0, 0.0, 0.0), height=5, width=None, pixel_spacing=2.0):
    """A C-arm with float64 parameters (so geometric identities hold to ~1e-9)."""
    as64 = lambda value: torch.as_tensor(value, dtype=F64)  # noqa: E731
    return CArm(
        alpha=as64(alpha), beta=as64(beta), gamma=as64(gamma), sid=as64(sid), sdd=as64(sdd),
        isocenter=as64(isocenter), height=height, width=width, pixel_spacing=as64(pixel_spacing),
    )


def pixel_grid(height: int, width: int) -> torch.Tensor:
    """``(H, W, 2)`` integer (row, column) of every pixel, as float64."""
    rows, cols = torch.meshgrid(torch.arange(height, dtype=F64), torch.arange(width, dtype=F64), indexing="ij")
    return torch.stack([rows, cols], -1)


def pinhole_projection(carm: CArm, points: torch.Tensor) -> torch.Tensor:
    """``(B, V, P, 2)`` (row, column) by intersecting source->point lines with the detector plane.

    Independent of ``projection_matrices``: built from the source, detector
    centre and axes only.
    """
    source = carm.source_positions()[..., None, :]  # (B, V, 1, 3)
    centre = carm.detector_centers()[..., None, :]
    u, v = (axis[..., None, :] for axis in carm.detector_axes())
    normal = (centre - source) / carm.sdd[..., None, None]  # unit, source -> detector
    direction = points - source  # (B, V, P, 3)
    t = carm.sdd[..., None] / (direction * normal).sum(-1)
    hit = source + t[..., None] * direction
    spacing = carm.pixel_spacing[..., None]
    column = ((hit - centre) * u).sum(-1) / spacing + (carm.width - 1) / 2
    row = ((hit - centre) * v).sum(-1) / spacing + (carm.height - 1) / 2
    return torch.stack([row, column], -1)


def near_isocenter(carm: CArm) -> torch.Tensor:
    """``(B, 5, 3)`` points within half the shortest sid of each sample's (shared) isocenter."""
    reach = 0.5 * carm.sid.amin(-1)[:, None, None] / math.sqrt(3)
    return carm.isocenter[:, 0, None, :] + reach * torch.linspace(-1.0, 1.0, 15, dtype=F64).reshape(1, 5, 3)


angles = st.floats(-math.pi, math.pi, allow_nan=False)


def carms(max_batch: int = 2, max_views: int = 3, max_pixels: int = 24, shared_isocenter: bool = False):
    """Any float64 C-arms (no volume to see): ``(B, V)`` poses with per-view sid 50-1500 mm and sdd 5-800 mm
    beyond it, detectors of 1 to ``max_pixels`` pixels a side of 0.1-5 mm, beta within +-1.2 rad, isocenters
    within +-300 mm (one per view, or one per sample with ``shared_isocenter``): the library's strategy."""
    return strategies.carms(extent=None, max_batch=max_batch, min_views=1, max_views=max_views, patch_size=1,
                            grids=st.tuples(st.integers(1, max_pixels), st.integers(1, max_pixels)),
                            sid=(50.0, 1500.0), gap=(5.0, 800.0), pixel_spacing=(0.1, 5.0), max_isocenter_offset=300.0,
                            tilt=1.2, shared_isocenter=shared_isocenter, per_view_distances=True, dtype=F64)


# ----------------------------------------------------------------------- conventions


@pytest.mark.parametrize("alpha, beta, gamma", [(0.3, 0.0, 0.0), (0.0, 0.4, 0.0), (0.0, 0.0, -0.7), (2.4, -0.3, 1.1)])
def test_convention_rotation_is_rz_rx_ry(alpha, beta, gamma):
    expected = rz(alpha) @ rx(beta) @ ry(gamma)
    got = rotation_matrix(*(torch.tensor(a, dtype=F64) for a in (alpha, beta, gamma)))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(make_carm(alpha, beta, gamma).rotation()[0, 0], expected, rtol=0, atol=1e-12)


def test_convention_zero_pose_is_ap_with_source_anterior():
    isocenter = torch.tensor([10.0, -20.0, 30.0], dtype=F64)
    carm = make_carm(sid=700.0, sdd=1100.0, isocenter=isocenter)
    source, centre = carm.source_positions()[0, 0], carm.detector_centers()[0, 0]
    u, v = (axis[0, 0] for axis in carm.detector_axes())
    # +y is anterior in RAS+: the source is in front of the patient, the detector behind.
    torch.testing.assert_close(source, isocenter + torch.tensor([0.0, 700.0, 0.0], dtype=F64))
    torch.testing.assert_close(centre, isocenter + torch.tensor([0.0, -400.0, 0.0], dtype=F64))
    torch.testing.assert_close(u, torch.tensor([-1.0, 0.0, 0.0], dtype=F64))
    torch.testing.assert_close(v, torch.tensor([0.0, 0.0, -1.0], dtype=F64))


def test_convention_positive_quarter_turn_puts_source_at_patient_left():
    carm = make_carm(alpha=[math.pi / 2, -math.pi / 2], sid=800.0, sdd=1000.0)
    source = carm.source_positions()[0]
    # RAS+: the patient's left is -x.
    torch.testing.assert_close(source[0], torch.tensor([-800.0, 0.0, 0.0], dtype=F64), rtol=0, atol=1e-9)
    torch.testing.assert_close(source[1], torch.tensor([800.0, 0.0, 0.0], dtype=F64), rtol=0, atol=1e-9)


def test_convention_patient_right_projects_to_image_left_and_superior_to_top():
    height, width = 9, 11
    carm = make_carm(height=height, width=width, pixel_spacing=1.0)
    points = torch.tensor([[40.0, 0.0, 0.0], [-40.0, 0.0, 0.0], [0.0, 0.0, 40.0], [0.0, 0.0, -40.0]], dtype=F64)
    right, left, superior, inferior = project_points(carm, points)[0, 0]
    assert right[1] < (width - 1) / 2 < left[1]
    assert superior[0] < (height - 1) / 2 < inferior[0]
    # Points on the principal ray land on the centre pixel.
    torch.testing.assert_close(right[0], torch.tensor((height - 1) / 2, dtype=F64))
    torch.testing.assert_close(superior[1], torch.tensor((width - 1) / 2, dtype=F64))


@pytest.mark.parametrize("alpha, beta, gamma", [(0.0, 0.0, 0.0), (0.9, -0.4, 0.25)])
def test_convention_pixel_centres(alpha, beta, gamma):
    height, width, spacing, sid, sdd = 4, 6, 1.7, 600.0, 950.0
    isocenter = torch.tensor([5.0, -7.0, 12.0], dtype=F64)
    carm = make_carm(alpha, beta, gamma, sid=sid, sdd=sdd, isocenter=isocenter, height=height, width=width, pixel_spacing=spacing)
    rotation = rz(alpha) @ rx(beta) @ ry(gamma)
    centre = isocenter + rotation @ torch.tensor([0.0, sid - sdd, 0.0], dtype=F64)
    u = rotation @ torch.tensor([-1.0, 0.0, 0.0], dtype=F64)
    v = rotation @ torch.tensor([0.0, 0.0, -1.0], dtype=F64)
    positions = carm.pixel_positions()
    assert positions.shape == (1, 1, height, width, 3)
    for r in range(height):
        for q in range(width):
            expected = centre + (q - (width - 1) / 2) * spacing * u + (r - (height - 1) / 2) * spacing * v
            torch.testing.assert_close(positions[0, 0, r, q], expected, rtol=0, atol=1e-9)


def test_convention_project_points_returns_row_column_at_pixel_centres():
    height, width = 5, 8  # not square: a row/column swap changes the shape of the answer
    carm = make_carm(alpha=0.4, beta=0.2, gamma=-0.3, height=height, width=width, pixel_spacing=1.3)
    pixels = carm.pixel_positions()[0, 0].reshape(-1, 3)
    projected = project_points(carm, pixels)
    assert projected.shape == (1, 1, height * width, 2)
    torch.testing.assert_close(projected[0, 0], pixel_grid(height, width).reshape(-1, 2), rtol=0, atol=1e-8)
    # The top-left pixel is (0, 0); one step along u is one column, along v one row.
    u, v = (axis[0, 0] for axis in carm.detector_axes())
    steps = torch.stack([pixels[0] + 1.3 * u, pixels[0] + 1.3 * v])
    torch.testing.assert_close(project_points(carm, steps)[0, 0], torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64))


# ------------------------------------------------------------------------ properties


@PROPERTY
@given(carm=carms())
def test_source_to_detector_distance_is_sdd(carm):
    distance = (carm.source_positions() - carm.detector_centers()).norm(dim=-1)
    torch.testing.assert_close(distance, carm.sdd, rtol=1e-10, atol=1e-9)
    to_isocenter = (carm.source_positions() - carm.isocenter).norm(dim=-1)
    torch.testing.assert_close(to_isocenter, carm.sid, rtol=1e-10, atol=1e-9)


@PROPERTY
@given(carm=carms())
def test_detector_axes_are_orthonormal_and_perpendicular_to_principal_axis(carm):
    u, v = carm.detector_axes()
    principal = carm.detector_centers() - carm.source_positions()
    principal = principal / principal.norm(dim=-1, keepdim=True)
    dot = lambda a, b: (a * b).sum(-1)  # noqa: E731
    ones, zeros = torch.ones_like(carm.sid), torch.zeros_like(carm.sid)
    for value, expected in [(dot(u, u), ones), (dot(v, v), ones), (dot(u, v), zeros), (dot(u, principal), zeros), (dot(v, principal), zeros)]:
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-12)
    # (u, v, principal) is right-handed: u x v points from the source towards the detector.
    torch.testing.assert_close(torch.linalg.cross(u, v), principal, rtol=0, atol=1e-12)


@PROPERTY
@given(carm=carms())
def test_pixel_positions_project_to_their_own_grid(carm):
    b, v = carm.batch_shape
    positions = carm.pixel_positions()
    assert positions.shape == (b, v, carm.height, carm.width, 3)
    expected = pixel_grid(carm.height, carm.width).reshape(-1, 2)
    for view in range(v):
        points = positions[:, view].reshape(b, -1, 3)
        projected = project_points(carm, points)[:, view]
        torch.testing.assert_close(projected, expected.expand_as(projected), rtol=0, atol=1e-6)


@PROPERTY
@given(carm=carms(max_views=2, max_pixels=12), t=st.floats(1e-3, 1.0))
def test_every_point_on_a_ray_projects_to_its_pixel(carm, t):
    b, v = carm.batch_shape
    source, targets = carm.rays()
    points = source + t * (targets - source)  # (B, V, H, W, 3)
    expected = pixel_grid(carm.height, carm.width).reshape(-1, 2)
    for view in range(v):
        pixels, depth = project_points(carm, points[:, view].reshape(b, -1, 3), return_depth=True)
        torch.testing.assert_close(pixels[:, view], expected.expand(b, -1, -1), rtol=0, atol=1e-5)
        # Depth along the principal axis: t * sdd for every pixel of the view.
        torch.testing.assert_close(depth[:, view], (t * carm.sdd[:, view, None]).expand_as(depth[:, view]), rtol=1e-9, atol=1e-9)


@PROPERTY
@given(carm=carms(shared_isocenter=True), seed=st.integers(0, 2**31 - 1))
def test_projection_matrices_agree_with_pinhole_and_project_points(carm, seed):
    b, v = carm.batch_shape
    generator = torch.Generator().manual_seed(seed)
    # Points within 0.9 sid of the isocenter: always in front of the source.
    offsets = torch.randn(b, 1, 7, 3, generator=generator, dtype=F64)
    offsets = offsets / offsets.norm(dim=-1, keepdim=True) * torch.rand(b, 1, 7, 1, generator=generator, dtype=F64)
    points = carm.isocenter[:, :1, None, :] + 0.9 * carm.sid.amin(-1)[:, None, None, None] * offsets  # (B, 1, P, 3)
    points = points[:, 0]  # (B, P, 3)
    expected = pinhole_projection(carm, points[:, None])
    matrices = carm.projection_matrices()
    assert matrices.shape == (b, v, 3, 4)
    homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], -1)
    projected = torch.einsum("bvij,bpj->bvpi", matrices, homogeneous)
    assert bool((projected[..., 2] > 0).all()), "points in front of the source have positive depth"
    scale = 1 + expected.abs()
    torch.testing.assert_close((projected[..., :2] / projected[..., 2:]) / scale, expected / scale, rtol=0, atol=1e-8)
    torch.testing.assert_close(project_points(carm, points) / scale, expected / scale, rtol=0, atol=1e-8)


@PROPERTY
@given(carm=carms(max_pixels=8, shared_isocenter=True), offset=st.lists(st.floats(-500.0, 500.0), min_size=3, max_size=3))
def test_moving_the_isocenter_translates_the_whole_c_arm(carm, offset):
    offset = torch.tensor(offset, dtype=F64)
    moved = CArm(
        alpha=carm.alpha, beta=carm.beta, gamma=carm.gamma, sid=carm.sid, sdd=carm.sdd,
        isocenter=carm.isocenter + offset, height=carm.height, width=carm.width, pixel_spacing=carm.pixel_spacing,
    )
    torch.testing.assert_close(moved.rotation(), carm.rotation())
    torch.testing.assert_close(moved.source_positions(), carm.source_positions() + offset)
    torch.testing.assert_close(moved.detector_centers(), carm.detector_centers() + offset)
    torch.testing.assert_close(moved.pixel_positions(), carm.pixel_positions() + offset)
    points = near_isocenter(carm)
    torch.testing.assert_close(project_points(moved, points + offset), project_points(carm, points), rtol=1e-7, atol=1e-6)


@PROPERTY
@given(carm=carms(max_pixels=8, shared_isocenter=True), turn=angles)
def test_rotating_world_about_z_is_a_change_of_alpha(carm, turn):
    """Rz(turn) applied to the points and the isocenter equals adding ``turn`` to alpha."""
    rotation = rz(turn)
    turned = CArm(
        alpha=carm.alpha + turn, beta=carm.beta, gamma=carm.gamma, sid=carm.sid, sdd=carm.sdd,
        isocenter=carm.isocenter @ rotation.T, height=carm.height, width=carm.width, pixel_spacing=carm.pixel_spacing,
    )
    torch.testing.assert_close(turned.source_positions(), carm.source_positions() @ rotation.T)
    torch.testing.assert_close(turned.pixel_positions(), carm.pixel_positions() @ rotation.T)
    points = near_isocenter(carm)
    torch.testing.assert_close(project_points(turned, points @ rotation.T), project_points(carm, points), rtol=1e-7, atol=1e-6)


# ----------------------------------------------------------------- batches and shapes


def test_pose_parameters_broadcast_to_batch_and_views():
    alpha = torch.tensor([0.0, 0.5, 1.0], dtype=F64)  # (V,)
    isocenter = torch.arange(2 * 3 * 3, dtype=F64).reshape(2, 3, 3)  # (B, V, 3)
    carm = CArm(alpha=alpha, sid=500.0, sdd=torch.tensor([[700.0], [800.0]], dtype=F64), isocenter=isocenter, height=4, width=6, pixel_spacing=1.0)
    assert carm.batch_shape == (2, 3)
    assert carm.pixel_positions().shape == (2, 3, 4, 6, 3)
    assert carm.projection_matrices().shape == (2, 3, 3, 4)
    torch.testing.assert_close(carm.sdd, torch.tensor([[700.0] * 3, [800.0] * 3], dtype=F64))
    # select / select_views give the same geometry as the full C-arm.
    torch.testing.assert_close(carm.select(1).source_positions()[0], carm.source_positions()[1])
    torch.testing.assert_close(carm.select_views([2, 0]).pixel_positions(), carm.pixel_positions()[:, [2, 0]])


def test_project_points_shared_points_equal_per_sample_points():
    carm = make_carm(alpha=[[0.2, 1.0], [-0.5, 2.0]], sid=[[600.0, 650.0], [700.0, 750.0]], sdd=1000.0, height=7)
    points = torch.tensor([[1.0, 2.0, 3.0], [-30.0, 10.0, 5.0]], dtype=F64)
    shared = project_points(carm, points)
    per_sample = project_points(carm, points.expand(2, -1, -1))
    assert shared.shape == (2, 2, 2, 2)
    torch.testing.assert_close(shared, per_sample)
    for b in range(2):
        torch.testing.assert_close(project_points(carm.select(b), points)[0], shared[b])


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("sdd", [800.0, 799.0, 10.0])
def test_sdd_not_beyond_sid_raises(sdd):
    with pytest.raises(ValueError, match="sdd"):
        CArm(sid=800.0, sdd=sdd, height=8, pixel_spacing=1.0)


def test_sdd_not_beyond_sid_in_one_view_raises():
    with pytest.raises(ValueError, match="sdd"):
        CArm(sid=torch.tensor([500.0, 900.0]), sdd=850.0, height=8, pixel_spacing=1.0)


@pytest.mark.parametrize("size, name", [(dict(height=0), "height"), (dict(height=8, width=0), "width"), (dict(height=-3), "height")])
def test_zero_size_detector_raises(size, name):
    with pytest.raises(ValueError, match=name):
        CArm(sid=800.0, sdd=1000.0, pixel_spacing=1.0, **size)


def test_non_integer_detector_size_raises():
    with pytest.raises(TypeError, match="height"):
        CArm(sid=800.0, sdd=1000.0, height=8.0, pixel_spacing=1.0)


@pytest.mark.parametrize(
    "changes, name",
    [
        (dict(sid=0.0), "sid"),
        (dict(sid=-100.0, sdd=1000.0), "sid"),
        (dict(pixel_spacing=0.0), "pixel_spacing"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(beta=float("inf")), "beta"),
        (dict(isocenter=(0.0, 0.0)), "isocenter"),
        (dict(alpha=torch.zeros(2, 2, 2)), "alpha"),
        (dict(alpha=torch.zeros(3), beta=torch.zeros(2)), "alpha, beta"),
    ],
)
def test_bad_pose_raises_naming_the_argument(changes, name):
    arguments = dict(sid=800.0, sdd=1000.0, height=8, pixel_spacing=1.0) | changes
    with pytest.raises(ValueError, match=name):
        CArm(**arguments)


@pytest.mark.parametrize("shape", [(5, 2), (5,), (1, 2, 5, 3), (3, 5, 3)])
def test_project_points_wrong_shape_raises(shape):
    carm = make_carm(alpha=[[0.0], [1.0]])  # B = 2: a batch of 3 points does not match
    with pytest.raises(ValueError, match="points"):
        project_points(carm, torch.zeros(shape, dtype=F64))


@pytest.mark.parametrize("points", ["origin", None, [["a", "b", "c"]]])
def test_project_points_non_numeric_raises(points):
    with pytest.raises(TypeError, match="points"):
        project_points(make_carm(), points)


def test_project_points_accepts_lists_and_arrays():
    carm = make_carm(alpha=[[0.3, 1.2]])
    expected = project_points(carm, torch.tensor([[1.0, -2.0, 3.0]]))
    torch.testing.assert_close(project_points(carm, [[1.0, -2.0, 3.0]]), expected)
    torch.testing.assert_close(project_points(carm, np.array([[1, -2, 3]])), expected)


def test_project_points_half_precision_is_computed_in_float32():
    carm = CArm(alpha=torch.tensor([0.0, 1.0]), sid=800.0, sdd=1000.0, height=256, pixel_spacing=1.0)
    points = torch.tensor([[10.0, 20.0, 30.0], [-60.0, 5.0, 90.0]])
    half = project_points(carm, points.half(), return_depth=True)
    single = project_points(carm, points.half().float(), return_depth=True)
    for got, expected in zip(half, single):
        assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
        torch.testing.assert_close(got, expected)


def test_project_points_carm_of_another_type_raises():
    with pytest.raises(TypeError, match="carm"):
        project_points("carm", torch.zeros(1, 3))


@pytest.mark.parametrize(
    "changes, name",
    [
        (dict(sid=1e30, sdd=2e30), "sid"),
        (dict(sdd=1e30), "sdd"),
        (dict(sid=1e-6, sdd=1000.0), "sid"),
        (dict(pixel_spacing=1e38), "pixel_spacing"),
        (dict(pixel_spacing=1e-5), "pixel_spacing"),
        (dict(isocenter=(0.0, 1e30, 0.0)), "isocenter"),
        (dict(isocenter=(0.0, float("nan"), 0.0)), "isocenter"),
        (dict(alpha=1e30), "alpha"),
        (dict(gamma=-1e4), "gamma"),
        (dict(height=10**6), "height"),
    ],
)
def test_pose_outside_the_physical_bounds_raises(changes, name):
    arguments = dict(sid=800.0, sdd=1000.0, height=8, pixel_spacing=1.0) | changes
    with pytest.raises(ValueError, match=name):
        CArm(**arguments)


@pytest.mark.parametrize(
    "changes, name",
    [
        (dict(alpha=torch.tensor([1j])), "alpha"),
        (dict(sid=torch.empty(2, device="meta")), "sid"),
        (dict(pixel_spacing="1 mm"), "pixel_spacing"),
        (dict(isocenter=None), "isocenter"),
    ],
)
def test_pose_of_the_wrong_kind_raises(changes, name):
    arguments = dict(sid=800.0, sdd=1000.0, height=8, pixel_spacing=1.0) | changes
    with pytest.raises(TypeError, match=name):
        CArm(**arguments)


def test_numpy_numbers_and_lists_are_accepted_as_poses():
    reference = CArm(alpha=torch.tensor([0.0, 0.5]), sid=800.0, sdd=1000.0, height=8, width=6, pixel_spacing=1.5)
    carm = CArm(alpha=[0, 0.5], sid=np.float32(800), sdd=np.int64(1000), height=np.int64(8), width=np.int32(6),
                pixel_spacing=np.float64(1.5))
    assert (carm.height, carm.width) == (8, 6) and isinstance(carm.height, int)
    torch.testing.assert_close(carm.pixel_positions(), reference.pixel_positions())


def test_half_precision_poses_are_held_in_float32():
    carm = CArm(alpha=torch.tensor([0.5], dtype=torch.float16), sid=torch.tensor(800.0, dtype=torch.float16),
                sdd=1000.0, height=8, pixel_spacing=1.0)
    assert carm.dtype == torch.float32


def test_convention_one_dimensional_parameters_are_views():
    views = CArm(alpha=torch.rand(16), sid=800.0, sdd=1000.0, height=4, pixel_spacing=1.0)
    assert views.batch_shape == (1, 16)
    samples = CArm(alpha=torch.rand(16, 1), sid=800.0, sdd=1000.0, height=4, pixel_spacing=1.0)
    assert samples.batch_shape == (16, 1)
    mixed = CArm(alpha=torch.rand(16, 1), beta=torch.rand(3), sid=800.0, sdd=1000.0, height=4, pixel_spacing=1.0)
    assert mixed.batch_shape == (16, 3)


def test_half_precision_infinity_is_refused():
    # 1e5 mm, the bound, is itself infinite in float16: the check compares in float64.
    with pytest.raises(ValueError, match="sdd"):
        CArm(sid=800.0, sdd=torch.tensor(float("inf"), dtype=torch.float16), height=4, pixel_spacing=1.0)
