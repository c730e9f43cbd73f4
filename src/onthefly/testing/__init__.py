"""Checks of correspondence geometry, for your own cameras, volumes and matrices.

Plain functions that raise ``AssertionError`` with a message saying what is
wrong and where (use them in any test runner): checks of a matrix
(``assert_correspondence_valid``, ``assert_epipolar_consistent``,
``assert_points_correspond``) and of a projection (``assert_projects_like``);
metamorphic relations that change a scene in a known way and check how ``C``
follows (views permuted, the whole scene moved rigidly, the volume on a finer
grid, images flipped or turned); a slow brute-force reference for
``patch_correspondence``; small volumes and points of tissue. The hypothesis
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

from collections.abc import Callable

from .._checks import is_int
from ..correspondence import IMAGE_OPERATIONS, patch_permutation, permute_views_patches, pool_weights, voxel_weights
from ..geometry import CArm, patch_index, project_points
from ..volume import Volume

__all__ = [
    "blob_volume",
    "box_volume",
    "tissue_points",
    "finer_volume",
    "rigid_motion",
    "coarse_voxel_covers",
    "reference_correspondence",
    "assert_correspondence_valid",
    "assert_epipolar_consistent",
    "assert_points_correspond",
    "assert_projects_like",
    "assert_views_permute_blocks",
    "assert_rigid_motion_invariant",
    "assert_resampling_stable",
    "assert_image_operations_permute",
    "RIGID_MOTION_TOLERANCE",
    "RESAMPLING_MEAN_CHANGE",
]

RIGID_MOTION_TOLERANCE = 5e-3
"""Default largest change of any ``C`` entry under a rigid motion of the whole scene.

Not 0: a float32 C-arm recomputes its rotation, source and detector after the
motion, and a coarse voxel whose shadow barely reaches the detector is
normalised by a sliver of it, so such entries move by up to a few 1e-3.
"""

RESAMPLING_MEAN_CHANGE = 0.02
"""Default largest mean absolute change of ``C`` when the volume's grid is made finer (same HU field).

The library's matrix does not change (below 1e-5) when ``coarse_voxel_size``
is a whole number of voxels on both grids: the coarse grid is the same. When
the coarse edge snaps to whole voxels differently on the two grids (the
default edge, one patch back-projected, or an edge that is no multiple of an
anisotropic spacing), the coarse grid itself changes, and so does ``C``: over
30 scenes of :func:`~onthefly.testing.strategies.scenes` made twice as fine,
a mean change of 0.01 (median; 0.09 at worst) with a 10 mm edge and of 0.05
(0.18 at worst) with the default edge. Pass such a method's tolerance explicitly.
"""


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


def tissue_points(volume: Volume, count: int, *, seed: int = 0, air_threshold_hu: float = -900.0) -> Tensor:
    """Centres of ``count`` voxels of ``volume`` above ``air_threshold_hu``, drawn with replacement.

    Points inside tissue, for :func:`assert_points_correspond`.

    Args:
        volume: HU with its affine.
        count: how many points (at least 1).
        seed: seed of the ``torch.Generator`` that picks the voxels.
        air_threshold_hu: voxels at or below this HU are air and never picked.

    Returns:
        ``(count, 3)`` float64 world mm.

    Raises:
        ValueError: if ``count`` is not positive or the volume has no voxel above the threshold.
    """
    if not is_int(count) or count < 1:
        raise ValueError(f"count: expected a positive int, got {count!r}")
    tissue = (volume.hu[0] > air_threshold_hu).nonzero()
    if tissue.shape[0] == 0:
        raise ValueError(f"volume: no voxel above air_threshold_hu {air_threshold_hu:g} HU "
                         f"(HU range [{float(volume.hu.min()):g}, {float(volume.hu.max()):g}]); no tissue to pick")
    generator = torch.Generator().manual_seed(seed)
    picked = tissue[torch.randint(tissue.shape[0], (count,), generator=generator)].double()
    affine = volume.affine.double().cpu()
    return picked.cpu() @ affine[:3, :3].T + affine[:3, 3]


def finer_volume(volume: Volume, factor: int) -> Volume:
    """The same HU field on a grid ``factor`` times finer per axis: each voxel split into ``factor^3`` copies.

    The volume occupies the same box in the world (voxel ``0``'s centre moves
    by ``-(factor - 1) / (2 factor)`` voxels along each axis); labels are split alike.

    Example:
        >>> fine = finer_volume(blob_volume(size=8, spacing=4.0), 2)
        >>> fine.shape, fine.spacing.tolist()
        ((16, 16, 16), [2.0, 2.0, 2.0])
    """
    if not is_int(factor) or factor < 1:
        raise ValueError(f"factor: expected a positive int, got {factor!r}")

    def split(values: Tensor) -> Tensor:
        for axis in (1, 2, 3):
            values = values.repeat_interleave(factor, dim=axis)
        return values

    affine = volume.affine.clone()
    linear = affine[:3, :3].clone()
    affine[:3, 3] = affine[:3, 3] - linear @ torch.full((3,), (factor - 1) / (2 * factor), dtype=affine.dtype,
                                                        device=affine.device)
    affine[:3, :3] = linear / factor
    labels = None if volume.labels is None else split(volume.labels)
    return Volume(hu=split(volume.hu), affine=affine, labels=labels, label_names=volume.label_names)


# ---------------------------------------------------------------------------
# Geometry helpers


def _single_sample(name: str, carm: CArm) -> None:
    if carm.batch_shape[0] != 1:
        raise ValueError(f"{name}: expected a C-arm with one sample (B = 1), got B = {carm.batch_shape[0]}; "
                         f"pass carm.select(b) for each sample")


def _check_motion(motion) -> Tensor:
    if not isinstance(motion, Tensor):
        raise TypeError(f"motion: expected a (4, 4) tensor (a rigid transform, world mm), got {type(motion).__name__}")
    if tuple(motion.shape) != (4, 4):
        raise ValueError(f"motion: expected shape (4, 4), got {tuple(motion.shape)}")
    matrix = motion.detach().double().cpu()
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError("motion: expected finite values, got NaN or infinity")
    rotation = matrix[:3, :3]
    orthogonality = float((rotation @ rotation.T - torch.eye(3, dtype=torch.float64)).abs().max())
    bottom = matrix[3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    if orthogonality > 1e-6 or float(torch.linalg.det(rotation)) <= 0 or float(bottom.abs().max()) > 0:
        raise ValueError(f"motion: expected a rigid transform [[R, t], [0, 0, 0, 1]] with R a rotation "
                         f"(R R^T = I, det R = +1), got |R R^T - I| up to {orthogonality:.3g}, det R = "
                         f"{float(torch.linalg.det(rotation)):.6g} and bottom row {matrix[3].tolist()}")
    return matrix


def rigid_motion(volume: Volume | Sequence[Volume], carm: CArm, motion: Tensor) -> tuple[Volume | list[Volume], CArm]:
    """Move a whole scene, volume(s) and C-arm together, by the rigid transform ``motion``.

    Every voxel and every camera moves as ``x -> R x + t``: the volume's affine
    becomes ``motion @ affine``, each view's rotation ``R @ Rz(alpha) Rx(beta)
    Ry(gamma)`` (read back as new angles) and its isocenter ``R c + t``. Images,
    and so correspondence matrices, do not change.

    Args:
        volume: one volume or a sequence of them.
        carm: the cameras ``(B, V)``.
        motion: ``(4, 4)`` ``[[R, t], [0, 0, 0, 1]]``, ``R`` a rotation, ``t`` in mm.

    Returns:
        the moved volume(s) (a list for a sequence) and the moved C-arm (its dtype and device).
    """
    matrix = _check_motion(motion)
    rotation, shift = matrix[:3, :3], matrix[:3, 3]

    def move(item: Volume) -> Volume:
        moved = matrix.to(device=item.affine.device, dtype=item.affine.dtype) @ item.affine
        return Volume(hu=item.hu, affine=moved, labels=item.labels, label_names=item.label_names)

    moved_volume = move(volume) if isinstance(volume, Volume) else [move(item) for item in volume]
    turned = rotation @ carm.rotation().double().cpu()  # (B, V, 3, 3)
    beta = torch.asin(turned[..., 2, 1].clamp(-1.0, 1.0))
    alpha = torch.atan2(-turned[..., 0, 1], turned[..., 1, 1])
    gamma = torch.atan2(-turned[..., 2, 0], turned[..., 2, 2])
    isocenter = carm.isocenter.double().cpu() @ rotation.T + shift
    device, dtype = carm.device, carm.dtype
    moved_carm = CArm(alpha=alpha.to(device, dtype), beta=beta.to(device, dtype), gamma=gamma.to(device, dtype),
                      sid=carm.sid, sdd=carm.sdd, isocenter=isocenter.to(device, dtype), height=carm.height,
                      width=carm.width, pixel_spacing=carm.pixel_spacing)
    return moved_volume, moved_carm


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


def _largest(difference: Tensor) -> tuple[int, int, int]:
    b, i, j = (int(x) for x in (difference == difference.max()).nonzero()[0])
    return b, i, j


def assert_points_correspond(correspondence: Tensor, carm: CArm, points: Tensor, patch_size: int, *,
                             min_value: float = 0.0) -> None:
    """Assert that the patches a 3-D point inside tissue projects to are matched: ``C > min_value`` there.

    For every point and every pair of views ``(a, b)`` (``a = b`` too) in
    which it projects onto the detector (in front of the source), the entry
    ``C[a*N+i, b*N+j]`` of the patches ``i``, ``j`` that hold its projections
    must exceed ``min_value``. With the library's exact or separable
    footprints this holds for every point inside a voxel above the air
    threshold (:func:`tissue_points` draws such points); sampled footprints
    (``rays_per_patch``) can miss a voxel whose shadow covers a sliver of a patch.

    Args:
        correspondence: ``(B, V*N, V*N)`` or ``(V*N, V*N)``.
        carm: the cameras ``(B, V)`` the matrix was made for.
        points: ``(P, 3)`` (shared) or ``(B, P, 3)`` world mm, inside tissue.
        patch_size: patch edge, pixels.
        min_value: the value an entry must exceed (0: any match; 0.5 for a binarised target).

    Raises:
        AssertionError: naming the first point, the two views and patches, and the entry.
    """
    c = _batched(correspondence)
    batch, views = carm.batch_shape
    rows, cols = carm.height // patch_size, carm.width // patch_size
    n_patches = rows * cols
    if tuple(c.shape) != (batch, views * n_patches, views * n_patches):
        raise AssertionError(f"correspondence: expected shape ({batch}, {views * n_patches}, {views * n_patches}) for a "
                             f"C-arm of B = {batch}, V = {views} and {rows} x {cols} patches of {patch_size} pixels, "
                             f"got {tuple(correspondence.shape)}")
    world = torch.as_tensor(points, dtype=torch.float64)
    if world.dim() == 2:
        world = world[None].expand(batch, -1, -1)
    if world.dim() != 3 or world.shape[-1] != 3 or world.shape[0] != batch:
        raise ValueError(f"points: expected shape (P, 3) or ({batch}, P, 3), got {tuple(world.shape)}")
    pixels, depth = project_points(carm.to(dtype=torch.float64), world.to(carm.device), return_depth=True)
    patches = patch_index(pixels, (carm.height, carm.width), patch_size)  # (B, V, P), -1 off the detector
    patches = torch.where(depth > 0, patches, torch.full_like(patches, -1)).cpu()
    host = c.detach().cpu()
    for sample in range(batch):
        tokens = patches[sample] + torch.arange(views)[:, None] * n_patches  # (V, P)
        seen = patches[sample] >= 0
        for a in range(views):
            for b in range(views):
                both = seen[a] & seen[b]
                values = host[sample, tokens[a], tokens[b]]
                failing = both & ~(values > min_value)
                if bool(failing.any()):
                    point = int(failing.nonzero()[0])
                    i, j = int(patches[sample, a, point]), int(patches[sample, b, point])
                    where = [round(float(x), 2) for x in world[sample, point]]
                    raise AssertionError(
                        f"correspondence: {int(failing.sum())} of {int(both.sum())} points seen by views {a} and {b} "
                        f"of sample {sample} are not matched (C <= {min_value:g}); the first, point {point} at "
                        f"{where} mm, projects to patch {i} of view {a} and patch {j} of view {b}, but "
                        f"C[{a * n_patches + i}, {b * n_patches + j}] = {float(values[point]):g}. Was C made with other "
                        f"cameras (sid, sdd, pixel spacing, detector axes, view order) or another patch_size, or do "
                        f"the points lie in air?")


def assert_projects_like(project: Callable[[CArm, Tensor], Tensor], carm: CArm, points: Tensor, *,
                         atol: float = 1e-3) -> None:
    """Assert that your projection ``project(carm, points)`` agrees with :func:`~onthefly.project_points`.

    Compared in pixels, for the points in front of every source. When they
    differ, the message says how: a constant shift (a half-pixel offset: the
    library's pixel ``(0, 0)`` is the *centre* of the top-left pixel), a
    mirrored axis (a detector axis of the wrong sign), rows and columns
    swapped, or a scaling about the image centre (a wrong magnification: sid
    and sdd swapped, or the pixel spacing).

    Args:
        project: your function; returns ``(B, V, P, 2)`` (row, column) pixels.
        carm: the cameras ``(B, V)``.
        points: ``(P, 3)`` or ``(B, P, 3)`` world mm.
        atol: largest allowed difference, pixels.
    """
    expected, depth = project_points(carm.to(dtype=torch.float64), torch.as_tensor(points, dtype=torch.float64),
                                     return_depth=True)
    got = project(carm, points)
    if not isinstance(got, Tensor):
        raise AssertionError(f"project: expected a tensor (B, V, P, 2) of (row, column) pixels, got {type(got).__name__}")
    if tuple(got.shape) != tuple(expected.shape):
        raise AssertionError(f"project: expected shape {tuple(expected.shape)} (B, V, P, (row, column)), "
                             f"got {tuple(got.shape)}")
    front = (depth > 0).all(1, keepdim=True).expand_as(depth)  # (B, V, P): points in front of every source
    if not bool(front.any()):
        return
    got = got.detach().double().cpu()[front.cpu()]  # (M, 2)
    expected = expected.cpu()[front.cpu()]
    difference = got - expected
    error = difference.abs().max(-1).values
    if not bool(torch.isfinite(got).all()) or float(error.max()) > atol:
        worst = int(error.argmax()) if bool(torch.isfinite(error).all()) else int((~torch.isfinite(error)).nonzero()[0])
        centre = torch.tensor([(carm.height - 1) / 2, (carm.width - 1) / 2], dtype=torch.float64)
        raise AssertionError(
            f"project: differs from onthefly.project_points by up to {float(error.max()):.4g} pixels (atol {atol:g}) "
            f"over {int(front.sum())} point projections; the worst is (row, column) "
            f"{[round(float(x), 3) for x in got[worst]]} against {[round(float(x), 3) for x in expected[worst]]}. "
            + _projection_diagnosis(got, expected, centre, atol, carm))


def _projection_diagnosis(got: Tensor, expected: Tensor, centre: Tensor, atol: float, carm: CArm) -> str:
    """What the difference between two sets of (row, column) pixels looks like, in words."""
    tolerance = max(10 * atol, 1e-2)
    shift = (got - expected).mean(0)
    if float((got - expected - shift).abs().max()) < tolerance:
        return (f"It is a constant shift of (row, column) = ({float(shift[0]):.3g}, {float(shift[1]):.3g}) pixels: a "
                f"half-pixel offset? Pixel (0, 0) is the centre of the top-left pixel; the detector centre is at "
                f"((H - 1) / 2, (W - 1) / 2) = ({float(centre[0]):g}, {float(centre[1]):g}).")
    size = torch.tensor([carm.height - 1, carm.width - 1], dtype=torch.float64)
    for axis, name, hint in ((1, "columns", "u = R @ (-1, 0, 0)"), (0, "rows", "v = R @ (0, 0, -1)")):
        mirrored = expected.clone()
        mirrored[:, axis] = size[axis] - expected[:, axis]
        if float((got - mirrored).abs().max()) < tolerance:
            return f"Its {name} are mirrored (a detector axis of the wrong sign? the library's is {hint})."
    if float((got - expected.flip(-1)).abs().max()) < tolerance:
        return "Its rows and columns are swapped (the library returns (row, column), row first)."
    relative, reference = got - centre, expected - centre
    scale = float((relative * reference).sum() / (reference * reference).sum().clamp_min(1e-12))
    if float((relative - scale * reference).abs().max()) < tolerance:
        ratios = [float(r) for r in (carm.sdd / carm.sid).flatten()[:1]]
        return (f"It is the library's projection scaled by {scale:.4g} about the detector centre: a wrong "
                f"magnification (sid and sdd swapped? sdd / sid = {ratios[0]:.4g} here), or a wrong pixel spacing.")
    length, reference_length = relative.norm(dim=-1), reference.norm(dim=-1)
    away = reference_length > 1.0  # a direction is read only a pixel or more from the centre
    cosine = (relative * reference).sum(-1) / (length * reference_length).clamp_min(1e-12)
    if bool(away.any()) and bool((cosine[away] > 1 - 1e-6).all()):
        ratio = length[away] / reference_length[away]
        return (f"Each point lies on the right line through the detector centre but at {float(ratio.min()):.4g} to "
                f"{float(ratio.max()):.4g} times the distance, a factor that changes with the point's depth: a wrong "
                f"source or detector distance (sid and sdd swapped?).")
    return "No simple pattern (shift, mirror, swap, scale) explains it; compare a single view and point by hand."


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



# ---------------------------------------------------------------------------
# Metamorphic relations: change the scene in a known way, check how C changes


Correspond = Callable[[Volume | Sequence[Volume], CArm], Tensor]
"""Your code under test: ``correspond(volume, carm) -> C (B, V*N, V*N)``."""


def _close(name: str, got: Tensor, expected: Tensor, atol: float, n_patches: int, what: str) -> None:
    got, expected = _batched(got), _batched(expected)
    if got.shape != expected.shape:
        raise AssertionError(f"{name}: expected the shape {tuple(expected.shape)} of the matrix before, "
                             f"got {tuple(got.shape)}")
    difference = (got.detach().double() - expected.detach().double()).abs()
    if not bool(torch.isfinite(difference).all()) or float(difference.max()) > atol:
        difference = torch.nan_to_num(difference, nan=float("inf"))
        b, i, j = _largest(difference)
        raise AssertionError(f"{name}: {what} changed C by up to {float(difference.max()):.4g} (atol {atol:g}); "
                             f"{int((difference > atol).sum())} entries off, the largest at sample {b}, "
                             f"{_token(i, n_patches)} x {_token(j, n_patches)}: {float(got[b, i, j]):.4g} vs "
                             f"{float(expected[b, i, j]):.4g} before")


def _patches_per_view(carm: CArm, correspondence: Tensor) -> int:
    return _batched(correspondence).shape[-1] // carm.batch_shape[1]


def assert_rigid_motion_invariant(correspond: Correspond, volume: Volume | Sequence[Volume], carm: CArm,
                                  motion: Tensor, *, atol: float = RIGID_MOTION_TOLERANCE) -> None:
    """Assert that moving the whole scene (volume and C-arm together, :func:`rigid_motion`) leaves ``C`` unchanged.

    Catches code that assumes something about the world frame: an axis-aligned
    volume, an isocenter at the origin, angles read in the world instead of the camera.

    Args:
        correspond: your ``correspond(volume, carm) -> (B, V*N, V*N)``.
        volume, carm: the scene.
        motion: ``(4, 4)`` rigid transform (rotation and mm translation).
        atol: largest allowed change of any entry (default :data:`RIGID_MOTION_TOLERANCE`).
    """
    before = correspond(volume, carm)
    after = correspond(*rigid_motion(volume, carm, motion))
    _close("correspond", after, before, atol, _patches_per_view(carm, before),
           "moving the volume and the C-arm together by a rigid motion")


def assert_resampling_stable(correspond: Correspond, volume: Volume, carm: CArm, *, factor: int = 2,
                             mean_change: float = RESAMPLING_MEAN_CHANGE, max_change: float | None = None) -> None:
    """Assert that the same volume on a finer grid (:func:`finer_volume`) changes ``C`` by at most a stated amount.

    The object does not change, only its sampling, so ``C`` may move only as
    much as your method's discretisation does: the mean absolute change at most
    ``mean_change`` and, if given, every entry's at most ``max_change``.

    Args:
        correspond: your ``correspond(volume, carm) -> (B, V*N, V*N)``.
        volume: one volume; carm: its cameras.
        factor: voxels per original voxel edge on the finer grid.
        mean_change: largest mean absolute change (default :data:`RESAMPLING_MEAN_CHANGE`).
        max_change: largest change of any entry, or ``None`` (not checked).
    """
    before = _batched(correspond(volume, carm))
    after = _batched(correspond(finer_volume(volume, factor), carm))
    if after.shape != before.shape:
        raise AssertionError(f"correspond: expected the shape {tuple(before.shape)} on the finer grid, got "
                             f"{tuple(after.shape)}")
    difference = (after.detach().double() - before.detach().double()).abs()
    mean = float(difference.mean())
    if not mean <= mean_change:
        raise AssertionError(f"correspond: the same volume on a {factor}x finer grid changed C by {mean:.4g} on "
                             f"average (mean_change {mean_change:g}); largest change {float(difference.max()):.4g}. "
                             f"Does your code depend on the voxel size (a step, a threshold, a pooling in voxels)?")
    if max_change is not None:
        _close("correspond", after, before, max_change, _patches_per_view(carm, before),
               f"the same volume on a {factor}x finer grid")


def _operation_permutations(operations, batch: int, views: int, grid_shape: tuple[int, int]) -> Tensor:
    if isinstance(operations, Tensor):
        codes = operations.detach().cpu()
        if codes.is_floating_point() or codes.dim() not in (1, 2):
            raise ValueError(f"operations: expected integer codes (V,) or (B, V) into IMAGE_OPERATIONS, "
                             f"got {codes.dtype} of shape {tuple(codes.shape)}")
        codes = codes.expand(batch, views) if codes.dim() == 1 else codes
        if tuple(codes.shape) != (batch, views) or bool(((codes < 0) | (codes >= len(IMAGE_OPERATIONS))).any()):
            raise ValueError(f"operations: expected codes in [0, {len(IMAGE_OPERATIONS)}) of shape ({batch}, {views}), "
                             f"got shape {tuple(codes.shape)} and values {codes.unique().tolist()}")
        names = [[IMAGE_OPERATIONS[int(code)] for code in row] for row in codes]
    else:
        names = list(operations)
        if len(names) != views or not all(isinstance(name, str) for name in names):
            raise ValueError(f"operations: expected {views} operation names (one per view) from "
                             f"{list(IMAGE_OPERATIONS)}, got {names!r}")
        names = [names] * batch
    return torch.stack([torch.stack([patch_permutation(grid_shape, name) for name in row]) for row in names])


def assert_image_operations_permute(correspondence: Tensor, transformed: Tensor, operations,
                                    grid_shape: tuple[int, int], *, atol: float = 1e-6) -> None:
    """Assert that ``transformed`` is ``C`` after flipping or turning each view's image by ``operations``.

    The library's augmentation (:func:`~onthefly.augment.apply_geometric`)
    moves each view's patches as its image moves, so patch ``i`` of a
    transformed view is patch ``perm[i]`` of the original
    (:func:`~onthefly.correspondence.patch_permutation`), and
    ``transformed[a*N+i, b*N+j] == C[a*N+perm_a[i], b*N+perm_b[j]]``.

    Args:
        correspondence: ``C`` before, ``(B, V*N, V*N)`` or ``(V*N, V*N)``.
        transformed: after.
        operations: one name per view from ``IMAGE_OPERATIONS`` (``"identity"``,
            ``"hflip"``, ``"vflip"``, ``"rot90"``, ``"rot180"``, ``"rot270"``:
            ``torch.flip`` / ``torch.rot90`` on the image's last two dims), or
            integer codes ``(V,)`` or ``(B, V)`` as in ``AugmentationParams.operation``.
        grid_shape: ``(rows, cols)`` patches per view.
        atol: absolute tolerance.
    """
    c = _batched(correspondence)
    n_patches = int(grid_shape[0]) * int(grid_shape[1])
    batch, views = c.shape[0], c.shape[-1] // n_patches
    permutations = _operation_permutations(operations, batch, views, grid_shape).to(c.device)
    expected = permute_views_patches(c, permutations)
    _close("transformed", transformed, expected, atol, n_patches,
           "compared with C permuted as the image operations move the patches, it")
