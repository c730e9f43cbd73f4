"""Footprints: the closed-form cube volumes, exact footprints against many rays, the window bound.

References here never come from the code under test: volumes of the cube
from closed forms (planes along the axes) or a fine midpoint rule with the
third coordinate integrated exactly; footprints from the sampled method with
many rays (its chord lengths are checked against a brute-force loop in
``test_correspondence.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onthefly import CArm, Volume
from onthefly.correspondence import patch_correspondence, pool_weights
from onthefly.footprints import (
    cube_volume_below_plane,
    cube_volume_below_planes,
    footprint_window,
    voxel_footprints,
)

F64 = torch.float64


def midpoint_volume(a: torch.Tensor, b: torch.Tensor, alpha: float, beta: float, cells: int = 400) -> float:
    """``vol{tau in [-1/2, 1/2]^3: a.tau <= alpha, b.tau <= beta}``: midpoint rule over ``tau_0, tau_1``,
    the ``tau_2`` interval found exactly (``a_2`` and ``b_2`` must be non-zero)."""
    t = (torch.arange(cells, dtype=F64) + 0.5) / cells - 0.5
    t0, t1 = torch.meshgrid(t, t, indexing="ij")
    low, high = torch.full_like(t0, -0.5), torch.full_like(t0, 0.5)
    for normal, offset in ((a, alpha), (b, beta)):
        limit = (offset - normal[0] * t0 - normal[1] * t1) / normal[2]
        if normal[2] > 0:
            high = torch.minimum(high, limit)
        else:
            low = torch.maximum(low, limit)
    return float((high - low).clamp_min(0).mean())


# --------------------------------------------------------------------------- cube volumes


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-3.0, 3.0), min_size=6, max_size=6), st.floats(-0.6, 0.6), st.floats(-0.6, 0.6))
def test_cube_volume_matches_a_midpoint_rule(normals, alpha_fraction, beta_fraction):
    a, b = torch.tensor(normals[:3], dtype=F64), torch.tensor(normals[3:], dtype=F64)
    if min(abs(float(a[2])), abs(float(b[2]))) < 0.2 or float(torch.linalg.cross(a, b).norm()) < 0.3:
        return  # the reference needs a_2, b_2 away from 0 and planes that are not parallel
    alpha, beta = alpha_fraction * float(a.abs().sum()), beta_fraction * float(b.abs().sum())
    expected = midpoint_volume(a, b, alpha, beta)
    for dtype, tolerance in ((F64, 2e-4), (torch.float32, 3e-4)):
        got = cube_volume_below_planes(a[None].to(dtype), b[None].to(dtype), torch.tensor([[alpha]], dtype=dtype),
                                       torch.tensor([[beta]], dtype=dtype))
        assert abs(float(got) - expected) < tolerance
    one = cube_volume_below_plane(a[None], torch.tensor([[alpha]], dtype=F64))
    assert abs(float(one) - midpoint_volume(a, b, alpha, 1e9)) < 2e-4


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_cube_volume_of_planes_along_the_axes(dtype):
    """Normals along the cube's axes and planes on the cube's faces (the ties of the divergence formula):
    products of clamps, to the few 1e-6 by which offsets are nudged off faces."""
    offsets = torch.tensor([-0.7, -0.5, -0.2, 0.0, 0.3, 0.5, 0.8], dtype=dtype)
    share = (offsets + 0.5).clamp(0, 1)  # of a centred unit interval, below +t or above -t alike
    axes = torch.eye(3, dtype=dtype)
    for first in range(3):
        for second in range(3):
            if first == second:
                continue
            for sign in (1.0, -1.0):
                volume = cube_volume_below_planes(axes[first][None], sign * axes[second][None], offsets[None], offsets[None])
                torch.testing.assert_close(volume[0], share[:, None] * share[None, :], atol=2e-5, rtol=0)
    one = cube_volume_below_plane(axes, offsets[None].expand(3, -1))
    torch.testing.assert_close(one, share[None].expand(3, -1), atol=2e-5, rtol=0)


def test_cube_volume_complement_and_range():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(200, 3, generator=generator, dtype=F64)
    a[:50, 0] = 0.0
    a[50:80, 1:] = 0.0
    alpha = (torch.rand(200, 5, generator=generator, dtype=F64) - 0.5) * 2 * a.abs().sum(-1, keepdim=True)
    below, above = cube_volume_below_plane(a, alpha), cube_volume_below_plane(-a, -alpha)
    torch.testing.assert_close(below + above, torch.ones_like(below), atol=2e-5, rtol=0)
    assert float(below.min()) >= 0 and float(below.max()) <= 1


def trapezoid_cdf(w1: float, w2: float, x: torch.Tensor) -> torch.Tensor:
    """Distribution function of ``U1 w1 + U2 w2`` (``U`` uniform in [-1/2, 1/2], ``w1 > 0``): the box
    distribution function of ``U1 w1`` averaged over ``U2`` by the midpoint rule."""
    t = (torch.arange(4000, dtype=F64) + 0.5) / 4000 - 0.5
    return ((x[:, None] - w2 * t[None, :]) / w1 + 0.5).clamp(0, 1).mean(-1)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_cube_volume_below_a_plane_with_vanishing_components(dtype):
    """Normals with one or two (near) zero components (views along a voxel's edges or faces): the volume
    is a trapezoid's or a box's distribution function, with no blow-up from dividing by the small widths."""
    x = torch.linspace(-1.6, 1.6, 41, dtype=F64)
    box = (x + 0.5).clamp(0, 1)
    for normal, expected in (((1.0, 0.0, 0.0), box), ((0.0, -1.0, 1e-9), box), ((1.0, 1e-7, 1e-8), box),
                             ((0.0, 1.0, -2.0), trapezoid_cdf(2.0, 1.0, x)),
                             ((2.0, 1e-6, 1.0), trapezoid_cdf(2.0, 1.0, x))):
        got = cube_volume_below_plane(torch.tensor([normal], dtype=dtype), x[None].to(dtype))[0]
        # box: exact to the few 1e-6 by which offsets are nudged off faces; trapezoid: to the midpoint rule
        torch.testing.assert_close(got.to(F64), expected, atol=2e-4 if expected is not box else 1e-5, rtol=0)


# --------------------------------------------------------------------------- footprints

PATCH = 8


def camera(alpha, beta, gamma, *, detector=64, spacing=1.5, sid=400.0, sdd=650.0) -> CArm:
    return CArm(alpha=torch.tensor(alpha), beta=torch.tensor(beta), gamma=torch.tensor(gamma), sid=sid, sdd=sdd,
                height=detector, pixel_spacing=spacing)


def random_voxels(count: int, seed: int, edge: float = 8.0, spread: float = 20.0):
    generator = torch.Generator().manual_seed(seed)
    centre = (torch.rand(count, 3, generator=generator, dtype=F64) - 0.5) * 2 * spread
    scales = edge * (0.6 + 0.8 * torch.rand(count, 3, generator=generator, dtype=F64))  # anisotropic boxes
    return centre, torch.diag_embed(scales)


def inside_detector(patches_values: torch.Tensor, patches: torch.Tensor, grid: int) -> torch.Tensor:
    """Voxel-views whose footprint stays off the detector's border patches (no shadow cut by the edge)."""
    rows, cols = patches // grid, patches % grid
    border = (rows == 0) | (rows == grid - 1) | (cols == 0) | (cols == grid - 1)
    return ~((patches_values > 0) & border).any(-1)


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_footprints_match_many_rays(seed):
    """Stated error of the paraxial camera, at the sampler's scale (voxels of 6-14 mm, 850 mm from the source):
    within 5e-3 of 256 x 256 rays per patch (the error grows with (edge / distance)^2); 64 x 64 rays,
    themselves off by up to 5e-3 where faces are parallel to rays, agree within 1e-2."""
    carm = camera([0.4, 2.1], [0.2, -0.25], [0.0, 0.7], detector=96, sid=850.0, sdd=1050.0, spacing=1.0)  # the sampler's scale
    centre, edges = random_voxels(24, seed, edge=10.0, spread=20.0)
    which = torch.zeros(len(centre), dtype=torch.long)
    exact, patches = voxel_footprints(centre, edges, which, carm, patch_size=PATCH, window=4)
    dense, dense_patches = voxel_footprints(centre, edges, which, carm, patch_size=PATCH, window=4, rays_per_patch=256)
    coarse, _ = voxel_footprints(centre, edges, which, carm, patch_size=PATCH, window=4, rays_per_patch=64)
    assert torch.equal(patches, dense_patches)
    keep = inside_detector(exact, patches, carm.height // PATCH)
    assert int(keep.sum()) > 30
    assert float((exact - dense).abs()[keep].max()) < 5e-3
    assert float((exact - coarse).abs()[keep].max()) < 1e-2
    assert float(exact.amax(-1)[keep].min()) == 1.0  # normalised: every seen voxel peaks at 1


def test_sampled_footprints_converge_to_exact():
    """The error of m x m rays per patch against the exact footprints falls as m grows (on a fixed case)."""
    carm = camera([0.3, 1.7], [0.1, -0.2], [0.2, 0.0])
    centre, edges = random_voxels(40, 3)
    which = torch.zeros(len(centre), dtype=torch.long)
    exact, _ = voxel_footprints(centre, edges, which, carm, patch_size=PATCH, window=3)
    errors = []
    for rays in (1, 2, 4, 8, 16):
        sampled, _ = voxel_footprints(centre, edges, which, carm, patch_size=PATCH, window=3, rays_per_patch=rays)
        errors.append(float((sampled - exact).abs().mean()))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.1 * errors[0]


def test_separable_footprints_have_the_exact_marginals():
    """The separable footprint is the product of the exact footprint's row and column marginals: summed over
    columns (rows) both give the same share of the shadow per patch row (column), while the patches themselves
    differ where the shadow is sheared."""
    carm = camera([0.4, 2.1], [0.2, -0.25], [0.0, 0.7], detector=96, sid=850.0, sdd=1050.0, spacing=1.0)
    centre, edges = random_voxels(24, 0, edge=10.0, spread=20.0)
    which = torch.zeros(len(centre), dtype=torch.long)
    exact, patches = voxel_footprints(centre, edges, which, carm, patch_size=PATCH, window=4)
    separable, separable_patches = voxel_footprints(centre, edges, which, carm, patch_size=PATCH, window=4,
                                                    footprint="separable")
    assert torch.equal(patches, separable_patches)
    keep = inside_detector(exact, patches, carm.height // PATCH)
    assert int(keep.sum()) > 30

    def shares(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = values[keep].reshape(-1, 4, 4)
        grid = grid / grid.sum((1, 2), keepdim=True)
        return grid.sum(2), grid.sum(1)

    for got, expected in zip(shares(separable), shares(exact)):
        torch.testing.assert_close(got, expected, atol=5e-5, rtol=0)  # shares below 1e-5 are dropped
    assert float((separable - exact).abs()[keep].max()) > 0.05  # an approximation, not the exact footprint


def test_separable_footprints_are_exact_for_shadows_along_the_detector_axes():
    """A box seen head-on by a (nearly) parallel beam: each edge projects along a detector axis or to a point,
    the shadow's row and column are independent, and the product of marginals is the exact footprint."""
    carm = camera([0.0], [0.0], [0.0], detector=96, sid=9e4, sdd=9e4 + 300.0, spacing=1.0)
    centre, edges = random_voxels(24, 4, edge=10.0, spread=20.0)
    which = torch.zeros(len(centre), dtype=torch.long)
    exact, patches = voxel_footprints(centre, edges, which, carm, patch_size=PATCH, window=4)
    separable, _ = voxel_footprints(centre, edges, which, carm, patch_size=PATCH, window=4, footprint="separable")
    assert int((exact > 0).sum(-1).max()) >= 4  # shadows that straddle patch corners
    torch.testing.assert_close(separable, exact, atol=1e-4, rtol=0)


@pytest.mark.parametrize("rays", [None, 2], ids=["exact", "sampled"])
def test_shared_edge_sets_give_the_per_voxel_footprints(rays):
    """Voxels that name their edges by ``edge_index`` (grids of several samples, several cameras) get the
    footprints of the same edges given voxel by voxel."""
    carm = camera([[0.3, 1.7], [2.5, 4.0], [1.0, 0.2]], [[0.1, -0.2], [0.0, 0.3], [0.2, 0.1]], [[0.2, 0.0], [0.1, 0.4], [0.0, 0.0]])
    edge_sets = torch.stack([torch.diag(torch.tensor(e, dtype=F64)) for e in ([6.0, 8.0, 7.0], [9.0, 5.0, 6.5], [7.0, 7.0, 7.0])])
    edge_sets[1, 0, 1] = 2.0  # a sheared grid
    centre, _ = random_voxels(30, 5)
    edge_index = torch.arange(30) % 3
    camera_index = (edge_index + 1) % 3  # edge sets and cameras paired differently
    shared = voxel_footprints(centre, edge_sets, camera_index, carm, patch_size=PATCH, window=4, rays_per_patch=rays,
                              edge_index=edge_index)
    alone = voxel_footprints(centre, edge_sets[edge_index], camera_index, carm, patch_size=PATCH, window=4,
                             rays_per_patch=rays)
    assert float(alone[0].amax(-1).min()) > 0  # every voxel is seen
    torch.testing.assert_close(shared[0], alone[0], rtol=0, atol=1e-5)
    assert torch.equal(shared[1], alone[1])


def test_window_holds_every_shadow():
    """With footprint_window's K nothing is cut off (a larger window changes nothing); K - 1 cuts some shadow."""
    volume = Volume.from_tensor(torch.full((12, 10, 14), 200.0), spacing=(4.0, 5.0, 3.0))
    carm = camera([[0.5, 2.0, 4.1]], [[0.3, -0.1, 0.0]], [[0.2, 0.0, 1.0]], detector=48, spacing=2.0)
    pooled = pool_weights(volume, 9.0)
    window = footprint_window(carm, pooled.affine, tuple(pooled.weight.shape[1:]), PATCH)
    assert window >= 2
    exact = patch_correspondence(pooled, carm, patch_size=PATCH, window=window)
    torch.testing.assert_close(patch_correspondence(pooled, carm, patch_size=PATCH, window=window + 2), exact)
    assert not torch.equal(patch_correspondence(pooled, carm, patch_size=PATCH, window=window - 1), exact)


def test_voxels_behind_the_source_or_the_detector_have_no_footprint():
    carm = camera([0.0], [0.0], [0.0], sid=400.0, sdd=650.0)  # source at y = +400, detector plane at y = -250
    centre = torch.tensor([[0.0, 500.0, 0.0], [0.0, -300.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)
    edges = torch.diag_embed(torch.full((3, 3), 8.0, dtype=F64))
    values, _ = voxel_footprints(centre, edges, torch.zeros(3, dtype=torch.long), carm, patch_size=PATCH, window=3)
    assert float(values[:2].abs().max()) == 0.0
    assert float(values[2].max()) == 1.0


@pytest.mark.slow
def test_closed_form_matrices_agree_with_many_rays_on_the_bundled_ct(ct):
    """Crops of the bundled CT at the sampler's scale: IoU of C >= 0.5 with 64 x 64 rays per patch >= 0.97,
    for the exact footprints and for their separable approximation."""
    crop = ct.crop_mm(ct.center, 120.0).resample(3.0)
    carm = CArm(alpha=torch.tensor([[0.2, 1.9]]), beta=torch.tensor([[0.1, -0.15]]), sid=800.0, sdd=1000.0,
                height=128, pixel_spacing=1.5)
    pooled = pool_weights(crop, 12.0)
    dense = patch_correspondence(pooled, carm, patch_size=16, rays_per_patch=64, memory_budget=2**30)
    reference = dense >= 0.5
    assert int(reference.sum()) > 50
    for footprint, largest in (("exact", 0.05), ("separable", 0.35)):
        matrix = patch_correspondence(pooled, carm, patch_size=16, footprint=footprint)
        strong = matrix >= 0.5
        assert float((strong & reference).sum() / (strong | reference).sum()) >= 0.97, footprint
        assert float((matrix - dense).abs().max()) < largest, footprint


def test_footprint_window_equals_the_largest_shadow_corner_by_corner():
    """The lattice shortcut of :func:`footprint_window` against each voxel's 8 projected corners, per sample."""
    import itertools

    from onthefly import project_points
    from onthefly.footprints import footprint_window

    generator = torch.Generator().manual_seed(0)
    for trial in range(24):
        batch, views = 1 + trial % 3, 1 + (trial // 3) % 3
        draw = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
        sid = 200 + 600 * draw(batch, views)
        patch = (4, 8, 16)[trial % 3]
        size = patch * (1 + trial % 5)
        carm = CArm(alpha=6.28 * draw(batch, views), beta=draw(batch, views) - 0.5, sid=sid,
                    sdd=sid + 100 + 300 * draw(batch, views), height=size, pixel_spacing=0.5 + 3 * float(draw(1)),
                    isocenter=(draw(batch, views, 3) - 0.5) * 50)
        grid = tuple(1 + int(n) for n in 5 * draw(3))
        affine = torch.eye(4, dtype=torch.float64).repeat(batch, 1, 1)
        affine[:, :3, :3] *= 3 + 20 * draw(batch, 1, 1)
        affine[:, :3, 3] = (draw(batch, 3) - 0.5) * 80
        largest = 1
        offsets = torch.tensor(list(itertools.product((-0.5, 0.5), repeat=3)), dtype=torch.float64)
        limit = torch.tensor([size // patch] * 2, dtype=torch.float64)
        for sample in range(batch):
            for index in itertools.product(*[range(n) for n in grid]):
                world = (torch.tensor(index, dtype=torch.float64) + offsets) @ affine[sample, :3, :3].T
                pixels, depth = project_points(carm.select(sample), (world + affine[sample, :3, 3])[None],
                                               return_depth=True)
                if bool((depth <= 1e-6).any()):
                    continue
                first = torch.floor((pixels.amin(-2) + 0.5) / patch)
                last = torch.floor((pixels.amax(-2) + 0.5) / patch)
                start = torch.minimum(torch.maximum(first, torch.full_like(first, -1.0)), limit)
                largest = max(largest, int((torch.minimum(last, limit) - start + 1).max()))
        assert footprint_window(carm, affine, grid, patch) == largest, trial
