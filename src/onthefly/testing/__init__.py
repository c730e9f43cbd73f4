"""Checks of correspondence geometry, for your own cameras, volumes and matrices.

Plain functions that raise ``AssertionError`` with a message saying what is
wrong and where (use them in any test runner), a slow brute-force reference
for ``patch_correspondence``, and a small random volume. The hypothesis
strategies that draw scenes to check live in :mod:`onthefly.testing.strategies`
(``pip install 'onthefly[testing]'``); this module needs no hypothesis.

Conventions are the library's (README, "The correspondence matrix"): an
``H x W`` view with patch size ``k`` has ``N = (H/k) * (W/k)`` patches,
row-major; token ``a * N + i`` is patch ``i`` of view ``a``.

Example:
    >>> import torch
    >>> from onthefly import CArm, patch_correspondence
    >>> from onthefly.testing import blob_volume, assert_correspondence_valid, assert_epipolar_consistent
    >>> volume = blob_volume(size=8, spacing=4.0, seed=0)
    >>> carm = CArm(alpha=torch.tensor([0.0, 1.5]), sid=400.0, sdd=600.0, height=16, pixel_spacing=4.0)
    >>> c = patch_correspondence(volume, carm, patch_size=8, coarse_voxel_size=8.0)
    >>> c.shape  # (B, V*N, V*N) with N = 2 * 2 patches
    torch.Size([1, 8, 8])
    >>> assert_correspondence_valid(c, grid_shape=(2, 2), views=2)
    >>> assert_epipolar_consistent(c, volume, carm, patch_size=8, coarse_voxel_size=8.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..correspondence import pool_weights, voxel_weights
from ..geometry import CArm, project_points
from ..volume import Volume

__all__ = [
    "blob_volume",
    "box_volume",
    "coarse_voxel_covers",
    "reference_correspondence",
    "assert_correspondence_valid",
    "assert_epipolar_consistent",
    "assert_views_permute_blocks",
]


# ---------------------------------------------------------------------------
# Volumes


def blob_volume(size: int = 12, spacing: float | Sequence[float] = 4.0, seed: int = 0,
                air_fraction: float = 0.4) -> Volume:
    """A random ``(1, size, size, size)`` volume: smooth tissue with air pockets and bone-like cores.

    Args:
        size: voxels per axis (at least 2).
        spacing: voxel edge in mm, a scalar or ``(d, h, w)``.
        seed: seed of the ``torch.Generator`` drawing the noise (same seed, same volume).
        air_fraction: roughly the fraction of voxels that are air (HU -1000), in [0, 1].

    Returns:
        a :class:`~onthefly.Volume` in HU within [-1000, 1500], centred on the world origin.
    """
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 1, size // 2, size // 2, size // 2, generator=generator)
    smooth = torch.nn.functional.interpolate(noise, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0]
    hu = (smooth - air_fraction) * 2500.0  # air where smooth < ~air_fraction
    hu = hu.clamp(-1000.0, 1500.0)
    return Volume.from_tensor(hu, spacing=spacing)


def box_volume(shape: Sequence[int], start: Sequence[int], stop: Sequence[int], *, hu: float = 100.0,
               spacing: float | Sequence[float] = 4.0, origin: Sequence[float] | None = None) -> Volume:
    """Air (HU -1000) of ``shape`` voxels with the box ``[start, stop)`` (voxel indices) set to ``hu``.

    The box has a known attenuation, so tests can say which patches must see it.
    ``spacing`` in mm; ``origin``: world mm of voxel 0 (default: the volume centred on the origin).
    """
    values = torch.full(tuple(shape), -1000.0)
    values[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]] = hu
    return Volume.from_tensor(values, spacing=spacing, origin=origin)


# ---------------------------------------------------------------------------
# Geometry helpers


def _single_sample(name: str, carm: CArm) -> None:
    if carm.batch_shape[0] != 1:
        raise ValueError(f"{name}: expected a C-arm with one sample (B = 1), got B = {carm.batch_shape[0]}; "
                         f"pass carm.select(b) for each sample")


def coarse_voxel_covers(volume: Volume, carm: CArm, coarse_voxel_size: float, patch_size: int, *,
                        air_threshold_hu: float | None = None) -> Tensor:
    """Which patches the projected bounding box of each coarse voxel covers.

    Args:
        volume: the volume; its coarse voxels are those of
            ``pool_weights(volume, coarse_voxel_size)`` (edge in mm).
        carm: one sample (``B = 1``) of ``V`` views.
        coarse_voxel_size: coarse voxel edge, mm.
        patch_size: patch edge, pixels (divides the detector's height and width).
        air_threshold_hu: if given, coarse voxels that hold no voxel above it
            (all air, weight 0) cover nothing.

    Returns:
        ``(V, voxels, N)`` bool, voxels in the pooled grid's row-major order.
    """
    _single_sample("carm", carm)
    threshold = dict() if air_threshold_hu is None else dict(air_threshold_hu=air_threshold_hu)
    pooled = pool_weights(volume, coarse_voxel_size, **threshold)
    index = torch.stack(torch.meshgrid(*[torch.arange(n) for n in pooled.weight.shape[1:]], indexing="ij"), -1)
    corners = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)],
                           dtype=torch.float64)
    affine = pooled.affine[0].double()
    world = (index.reshape(-1, 1, 3).double() + corners) @ affine[:3, :3].T + affine[:3, 3]
    views = carm.batch_shape[1]
    pixels = project_points(carm.to(dtype=torch.float64), world.reshape(1, -1, 3))[0].reshape(views, -1, 8, 2)
    low = torch.floor((pixels.amin(2) + 0.5) / patch_size)
    high = torch.floor((pixels.amax(2) + 0.5) / patch_size)
    rows, cols = carm.height // patch_size, carm.width // patch_size
    patch_rc = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), -1).reshape(-1, 2)
    covers = ((patch_rc[None, None] >= low[:, :, None]) & (patch_rc[None, None] <= high[:, :, None])).all(-1)
    if air_threshold_hu is not None:
        covers &= (pooled.weight[0].reshape(-1) > 0).to(covers.device)[None, :, None]
    return covers


def reference_correspondence(volume: Volume, carm: CArm, *, patch_size: int, coarse_voxel_size: float,
                             rays_per_patch: int, weighting: str = "soft",
                             air_threshold_hu: float = -900.0) -> Tensor:
    """The correspondence matrix by brute force: a Python loop over coarse voxels, dense footprints.

    Slow (seconds for a 12^3 volume) and plain, as a reference for
    ``patch_correspondence(..., rays_per_patch=rays_per_patch)``: each coarse
    voxel's footprint in a view is the summed length of ``rays_per_patch^2``
    rays per patch inside the voxel's cube, normalised to a maximum of 1, and
    ``C = max_v w_v * outer(p_v, p_v)``, all in float64.

    Args:
        volume: HU ``(1, D, H, W)`` with its affine.
        carm: one sample (``B = 1``) of ``V`` views.
        patch_size: patch edge, pixels.
        coarse_voxel_size: coarse voxel edge, mm (rounded to whole voxels per axis).
        rays_per_patch: rays per patch side (at least 1).
        weighting, air_threshold_hu: as ``patch_correspondence``.

    Returns:
        ``(1, V*N, V*N)`` float32.
    """
    _single_sample("carm", carm)
    if rays_per_patch < 1:
        raise ValueError(f"rays_per_patch: expected at least 1, got {rays_per_patch}")
    views = carm.batch_shape[1]
    hu = volume.hu[0].double()
    weights = voxel_weights(hu, weighting=weighting, air_threshold_hu=air_threshold_hu)
    factors = [max(1, round(coarse_voxel_size / float(s))) for s in volume.spacing]
    padded = torch.zeros(*[math.ceil(n / f) * f for n, f in zip(weights.shape, factors)], dtype=torch.float64)
    padded[: weights.shape[0], : weights.shape[1], : weights.shape[2]] = weights
    d, h, w = [n // f for n, f in zip(padded.shape, factors)]
    pooled = padded.reshape(d, factors[0], h, factors[1], w, factors[2]).mean((1, 3, 5))
    rows, cols = carm.height // patch_size, carm.width // patch_size
    n_patches = rows * cols
    # Sub-ray targets for every patch (dense), world mm, float64.
    u, v = [axis.double() for axis in carm.detector_axes()]
    sub = (torch.arange(rays_per_patch, dtype=torch.float64) + 0.5) * patch_size / rays_per_patch - 0.5
    pixel_rows = (torch.arange(rows, dtype=torch.float64)[:, None] * patch_size + sub).reshape(rows, 1, rays_per_patch, 1)
    pixel_cols = (torch.arange(cols, dtype=torch.float64)[:, None] * patch_size + sub).reshape(1, cols, 1, rays_per_patch)
    affine = volume.affine.double()
    inverse = torch.linalg.inv(affine)
    sources, centers = carm.source_positions()[0].double(), carm.detector_centers()[0].double()
    footprints = []  # per voxel: (weight, (V, N) footprints)
    for i in range(d):
        for j in range(h):
            for k in range(w):
                weight = float(pooled[i, j, k])
                if weight <= 0:
                    continue
                lo = torch.tensor([i * factors[0], j * factors[1], k * factors[2]], dtype=torch.float64) - 0.5
                hi = lo + torch.tensor(factors, dtype=torch.float64)
                per_view = []
                for a in range(views):
                    spacing = float(carm.pixel_spacing[0, a])
                    target = (centers[a]
                              + ((pixel_cols - (carm.width - 1) / 2) * spacing)[..., None] * u[0, a]
                              + ((pixel_rows - (carm.height - 1) / 2) * spacing)[..., None] * v[0, a])
                    direction = target - sources[a]  # (rows, cols, m, m, 3)
                    origin = inverse[:3, :3] @ sources[a] + inverse[:3, 3]
                    voxel_direction = direction @ inverse[:3, :3].T
                    with torch.no_grad():
                        t1 = (lo - origin) / voxel_direction
                        t2 = (hi - origin) / voxel_direction
                    enter = torch.minimum(t1, t2).amax(-1).clamp_min(0)
                    leave = torch.maximum(t1, t2).amin(-1).clamp_max(1)
                    length = ((leave - enter).clamp_min(0) * direction.norm(dim=-1)).sum((-1, -2)).reshape(-1)
                    peak = length.max()
                    per_view.append(length / peak if peak > 0 else length)
                footprints.append((weight, torch.stack(per_view)))
    matrix = torch.zeros(views * n_patches, views * n_patches, dtype=torch.float64)
    for weight, p in footprints:
        flat = p.reshape(-1)
        matrix = torch.maximum(matrix, weight * torch.outer(flat, flat))
    return matrix.float()[None]


# ---------------------------------------------------------------------------
# Checks


def _batched(correspondence: Tensor) -> Tensor:
    if not isinstance(correspondence, Tensor):
        raise AssertionError(f"correspondence: expected a tensor (B, V*N, V*N), got {type(correspondence).__name__}")
    if correspondence.dim() == 2:
        return correspondence[None]
    if correspondence.dim() != 3:
        raise AssertionError(f"correspondence: expected shape (B, V*N, V*N) or (V*N, V*N), "
                             f"got {tuple(correspondence.shape)}")
    return correspondence


def _token(index: int, n_patches: int) -> str:
    return f"view {index // n_patches} patch {index % n_patches} (token {index})"


def assert_correspondence_valid(correspondence: Tensor, grid_shape: tuple[int, int], views: int, *,
                                atol: float = 1e-6) -> None:
    """Assert that ``C`` has the shape, range and symmetry of a correspondence matrix.

    Args:
        correspondence: ``(B, V*N, V*N)`` or ``(V*N, V*N)``.
        grid_shape: ``(rows, cols)`` patches per view, ``N = rows * cols``.
        views: ``V``.
        atol: tolerance of the range [0, 1] and of the symmetry.

    Raises:
        AssertionError: naming the first failing property and the token pair where it fails.
    """
    c = _batched(correspondence)
    n_patches = int(grid_shape[0]) * int(grid_shape[1])
    tokens = views * n_patches
    if tuple(c.shape[1:]) != (tokens, tokens):
        raise AssertionError(f"correspondence: expected shape (B, {tokens}, {tokens}) for {views} views of "
                             f"{grid_shape[0]} x {grid_shape[1]} patches, got {tuple(correspondence.shape)}; "
                             f"is the patch size or the detector size different from the renderer's?")
    if not c.is_floating_point():
        raise AssertionError(f"correspondence: expected floating point values, got {c.dtype}")
    finite = torch.isfinite(c)
    if not bool(finite.all()):
        b, i, j = (int(x) for x in (~finite).nonzero()[0])
        raise AssertionError(f"correspondence: {int((~finite).sum())} non-finite entries, the first at sample {b}, "
                             f"{_token(i, n_patches)} x {_token(j, n_patches)}: {float(c[b, i, j])}")
    low, high = float(c.min()), float(c.max())
    if low < -atol or high > 1 + atol:
        where = (c < -atol) | (c > 1 + atol)
        b, i, j = (int(x) for x in where.nonzero()[0])
        raise AssertionError(f"correspondence: expected values in [0, 1], got [{low:g}, {high:g}]; first outside at "
                             f"sample {b}, {_token(i, n_patches)} x {_token(j, n_patches)}: {float(c[b, i, j]):g}")
    asymmetry = (c - c.transpose(1, 2)).abs()
    if float(asymmetry.max()) > atol:
        b, i, j = (int(x) for x in (asymmetry == asymmetry.max()).nonzero()[0])
        raise AssertionError(f"correspondence: not symmetric, C[a*N+i, b*N+j] must equal C[b*N+j, a*N+i]; the largest "
                             f"difference {float(asymmetry.max()):g} is at sample {b}, {_token(i, n_patches)} x "
                             f"{_token(j, n_patches)} ({float(c[b, i, j]):g} vs {float(c[b, j, i]):g})")


def assert_epipolar_consistent(correspondence: Tensor, volume: Volume | Sequence[Volume], carm: CArm, *,
                               patch_size: int, coarse_voxel_size: float, air_threshold_hu: float = -900.0) -> None:
    """Assert that ``C`` is non-zero only between patches that one non-air coarse voxel's projected box covers.

    A non-zero ``C[a*N+i, b*N+j]`` means some coarse voxel with tissue lies in the frusta
    of patch ``i`` of view ``a`` and patch ``j`` of view ``b``, so its
    projected bounding box (:func:`coarse_voxel_covers`) covers both. A matrix
    computed with other cameras than ``carm`` (a wrong ``sid``/``sdd``, a
    flipped detector axis, views in another order) breaks this.

    Args:
        correspondence: ``(B, V*N, V*N)`` or ``(V*N, V*N)``.
        volume: one volume, or ``B`` volumes (one per sample).
        carm: the cameras, ``(B, V)`` (a ``B = 1`` C-arm with a 2-d matrix).
        patch_size: patch edge, pixels.
        coarse_voxel_size: coarse voxel edge, mm, as given to ``patch_correspondence``.
        air_threshold_hu: as given to ``patch_correspondence``: coarse voxels with no voxel above it are air.
    """
    c = _batched(correspondence)
    batch, views = carm.batch_shape
    volumes = [volume] * batch if isinstance(volume, Volume) else list(volume)
    rows, cols = carm.height // patch_size, carm.width // patch_size
    n_patches = rows * cols
    if c.shape[0] != batch or len(volumes) != batch or tuple(c.shape[1:]) != (views * n_patches,) * 2:
        raise AssertionError(f"correspondence: expected shape ({batch}, {views * n_patches}, {views * n_patches}) "
                             f"and {batch} volume(s) for a C-arm of B = {batch}, V = {views} and {rows} x {cols} "
                             f"patches; got shape {tuple(correspondence.shape)} and {len(volumes)} volume(s)")
    for sample in range(batch):
        covers = coarse_voxel_covers(volumes[sample], carm.select(sample), coarse_voxel_size, patch_size,
                                     air_threshold_hu=air_threshold_hu).double()
        for a in range(views):
            for b in range(views):
                block = c[sample, a * n_patches : (a + 1) * n_patches, b * n_patches : (b + 1) * n_patches]
                shared = (covers[a].T @ covers[b]) > 0  # (N, N): some voxel covers both
                stray = (block != 0) & ~shared
                if bool(stray.any()):
                    i, j = (int(x) for x in stray.nonzero()[0])
                    raise AssertionError(
                        f"correspondence: {int(stray.sum())} non-zero entries of block (view {a}, view {b}) of sample "
                        f"{sample} join patches that no non-air coarse voxel's projected box covers together, the first "
                        f"C[{a * n_patches + i}, {b * n_patches + j}] = {float(block[i, j]):g} (patch {i} of view {a}, "
                        f"patch {j} of view {b}); was C made with other cameras (sid, sdd, detector axes, view "
                        f"order), another volume or another patch_size/coarse_voxel_size?")


def assert_views_permute_blocks(correspondence: Tensor, permuted: Tensor, order: Sequence[int],
                                grid_shape: tuple[int, int], *, atol: float = 1e-6) -> None:
    """Assert that ``permuted`` (C of the views in ``order``) is ``C`` with its blocks in that order.

    ``permuted`` is the matrix of ``carm.select_views(order)``; then
    ``permuted[a*N+i, b*N+j] == C[order[a]*N+i, order[b]*N+j]``.

    Args:
        correspondence, permuted: ``(B, V*N, V*N)`` or ``(V*N, V*N)``.
        order: the views' new order, a permutation of ``range(V)``.
        grid_shape: ``(rows, cols)`` patches per view.
        atol: absolute tolerance.
    """
    c, moved = _batched(correspondence), _batched(permuted)
    n_patches = int(grid_shape[0]) * int(grid_shape[1])
    if sorted(order) != list(range(c.shape[-1] // n_patches)):
        raise AssertionError(f"order: expected a permutation of range({c.shape[-1] // n_patches}), got {list(order)}")
    if c.shape != moved.shape:
        raise AssertionError(f"permuted: expected the shape of correspondence {tuple(c.shape)}, got {tuple(moved.shape)}")
    tokens = torch.cat([torch.arange(n_patches) + a * n_patches for a in order]).to(c.device)
    expected = c[:, tokens][:, :, tokens]
    difference = (moved - expected).abs()
    if float(difference.max()) > atol:
        b, i, j = (int(x) for x in (difference == difference.max()).nonzero()[0])
        raise AssertionError(f"permuted: differs from the correspondence with its view blocks in order {list(order)} "
                             f"by up to {float(difference.max()):g} at sample {b}, {_token(i, n_patches)} x "
                             f"{_token(j, n_patches)}: {float(moved[b, i, j]):g} vs {float(expected[b, i, j]):g}")
