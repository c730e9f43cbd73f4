"""Patch-level many-to-many correspondence matrices between views.

Definition (DESIGN.md, "Correspondence ground truth"): for an ``H x W`` view and
patch size ``k`` there are ``N = (H/k)(W/k)`` patches, row-major; tokens of all
views are concatenated view-major, token ``a*N + i`` is patch ``i`` of view ``a``.

1. Weight every voxel: 0 for air (``HU <= air_threshold_hu``, default -900),
   else ``sigmoid(0.005 (HU + 150))`` (``weighting="soft"``) or 1 (``"binary"``).
2. Average-pool the weights onto a coarse grid; the default coarse voxel edge
   is one patch back-projected to the isocenter, ``k dx sid / sdd``, the
   smallest over the sample's views.
3. Footprint ``p_a^v[i]`` of coarse voxel ``v`` in view ``a``: the summed
   length (mm) of patch ``i``'s rays inside the voxel's box, between source and
   detector, each patch sampled by ``m x m`` rays through the centres of an
   ``m x m`` split of the patch; normalised so ``max_i p_a^v[i] = 1``.
4. ``C[a*N+i, b*N+j] = max_v w_v p_a^v[i] p_b^v[j]`` for all view pairs.

The cameras are the rendering cameras (:class:`~onthefly.geometry.CArm`).

Computation: a coarse voxel projects onto a few patches per view, so for each
voxel and view only a ``K x K`` window of patches around its projection is
tested (``K`` bounds every voxel's projected box), the ``T`` non-zero entries
are kept, and the outer products for every view pair are scattered into ``C``
with ``scatter_reduce(..., "amax")``, batched over samples, views and voxels.
Host reads: the voxel count after dropping air, and the sizes ``K`` and ``T``
(three integers per call). Not differentiable (runs under ``torch.no_grad``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_choice, check_ndim, check_positive, check_positive_int
from .geometry import CArm, project_points
from .volume import MU_WATER_PER_MM, Volume, VolumeBatch, as_volume_batch

__all__ = [
    "patch_correspondence",
    "pool_weights",
    "CoarseWeights",
    "WeightIntegral",
    "voxel_weights",
    "correspondence_map",
    "epipolar_line",
    "pixel_ray",
    "patch_permutation",
    "permute_views_patches",
    "WEIGHTINGS",
    "IMAGE_OPERATIONS",
]

WEIGHTINGS = ("soft", "binary")
IMAGE_OPERATIONS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")
DEFAULT_MEMORY_BUDGET = 64 * 2**20  # measured fastest on a 2-core CPU (larger chunks leave the cache)


def voxel_weights(hu: Tensor, *, weighting: str = "soft", air_threshold_hu: float = -900.0) -> Tensor:
    """Correspondence weight of each voxel (step 1), same shape as ``hu``.

    Air (``hu <= air_threshold_hu``) gets exactly 0; other voxels get
    ``sigmoid(0.005 (hu + 150))`` (``"soft"``) or 1 (``"binary"``).
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    tissue = hu > air_threshold_hu
    if weighting == "binary":
        return tissue.to(hu.dtype)
    return torch.sigmoid(0.005 * (hu + 150.0)) * tissue


def _attenuation_weights(attenuation: Tensor, *, mu_water: float, weighting: str, air_threshold_hu: float) -> Tensor:
    """:func:`voxel_weights` computed from attenuation in three passes over the volume.

    ``HU = 1000 (mu / mu_water - 1)``, so ``0.005 (HU + 150) = 5 mu / mu_water - 4.25``
    and ``HU > t`` is ``mu > mu_water (1 + t / 1000)`` (attenuation 0 reads as -1000 HU).
    """
    air = attenuation <= mu_water * (1.0 + air_threshold_hu / 1000.0)
    if air_threshold_hu < -1000.0:
        air = torch.zeros_like(air)
    if weighting == "binary":
        return (~air).to(attenuation.dtype)
    weights = attenuation * (5.0 / mu_water)  # in-place from here: one new tensor in all
    return weights.sub_(4.25).sigmoid_().masked_fill_(air, 0.0)


def _coarse_to_fine(factor: Tensor) -> Tensor:
    """``(..., 4, 4)`` maps from coarse voxel index to fine voxel index (coarse voxel centres)."""
    factor = factor.to(torch.float64)
    matrix = torch.zeros(*factor.shape[:-1], 4, 4, dtype=torch.float64, device=factor.device)
    matrix[..., [0, 1, 2], [0, 1, 2]] = factor
    matrix[..., :3, 3] = (factor - 1) / 2
    matrix[..., 3, 3] = 1.0
    return matrix


@dataclass(frozen=True, eq=False)
class CoarseWeights:
    """Correspondence weights pooled onto one coarse voxel grid per sample (steps 1-2).

    Attributes:
        weight: ``(B, d, h, w)`` mean voxel weight of each coarse voxel; 0 is air
            (and padding, where samples have grids of different sizes).
        affine: ``(B, 4, 4)`` coarse-index-to-world matrices (mm), float64.
        voxel_size: ``(B,)`` smallest coarse voxel edge of each sample (mm), a CPU
            float64 tensor (it sets the default rays per patch without reading the device).

    Built by :func:`pool_weights` (from volumes) or :meth:`WeightIntegral.pool`
    (from crops of precomputed volumes, the sampler's fast path); accepted by
    :func:`patch_correspondence` in place of a volume.
    """

    weight: Tensor
    affine: Tensor
    voxel_size: Tensor

    def __post_init__(self) -> None:
        check_ndim("weight", self.weight, (4,), "(B, d, h, w)")
        batch = self.weight.shape[0]
        if tuple(self.affine.shape) != (batch, 4, 4):
            raise ValueError(f"affine: expected shape ({batch}, 4, 4) to match weight, got {tuple(self.affine.shape)}")
        if tuple(self.voxel_size.shape) != (batch,):
            raise ValueError(f"voxel_size: expected shape ({batch},), got {tuple(self.voxel_size.shape)}")

    @property
    def batch_size(self) -> int:
        return self.weight.shape[0]

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def to(self, device: torch.device | str) -> "CoarseWeights":
        return CoarseWeights(weight=self.weight.to(device), affine=self.affine.to(device), voxel_size=self.voxel_size)


_POOL_SLAB_BYTES = 64 * 2**20


def _pool_slabs(attenuation: Tensor, factor: Sequence[int], weigh) -> Tensor:
    """Mean of ``weigh(attenuation)`` over ``factor`` blocks, zero-padded at the far edges.

    ``attenuation`` is ``(g, D, H, W)``; the weights are computed one slab of
    whole coarse planes at a time, so no full-size weight volume is made.
    """
    groups, depth, height, width = attenuation.shape
    fd, fh, fw = factor
    plane_bytes = fd * height * width * attenuation.element_size() * groups
    planes = max(1, _POOL_SLAB_BYTES // max(plane_bytes, 1))
    pieces = []
    for first in range(0, -(-depth // fd), planes):
        weights = weigh(attenuation[:, first * fd : (first + planes) * fd])[:, None]
        short = [max(0, f - n) for f, n in zip(factor, weights.shape[2:])]  # a slab thinner than one block
        if any(short):
            weights = F.pad(weights, (0, short[2], 0, short[1], 0, short[0]))
        # Windows past the far edges count the missing voxels as air (zero weight).
        pieces.append(F.avg_pool3d(weights, tuple(factor), ceil_mode=True, divisor_override=fd * fh * fw)[:, 0])
    return torch.cat(pieces, 1)


@torch.no_grad()
def pool_weights(
    volume: Volume | Sequence[Volume] | VolumeBatch,
    coarse_voxel_size: float | Sequence[float] | Tensor,
    *,
    weighting: str = "soft",
    air_threshold_hu: float = -900.0,
    mu_water: float = MU_WATER_PER_MM,
    batch_size: int | None = None,
) -> CoarseWeights:
    """Weigh the voxels of each volume and average-pool them onto a coarse grid.

    Args:
        volume: one :class:`Volume`, ``B`` volumes, or a :class:`VolumeBatch`.
        coarse_voxel_size: coarse voxel edge (mm), one number or one per sample.
            Each coarse voxel spans ``round(edge / spacing)`` fine voxels per axis
            (at least one); the grid starts at the volume's first voxel and is
            zero-padded at the far edges.
        weighting, air_threshold_hu: as :func:`voxel_weights`.
        mu_water: attenuation of water (1/mm), to read HU back from attenuation.
        batch_size: number of samples ``B`` (default: the number of volumes, or
            the number of edges). A single volume is pooled once per distinct
            edge and shared by the samples.

    Returns:
        :class:`CoarseWeights` with one grid per sample.
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    batch = as_volume_batch(volume, mu_water=mu_water)
    edges = torch.as_tensor(coarse_voxel_size, dtype=torch.float64).reshape(-1).cpu()
    check_positive("coarse_voxel_size", edges)
    samples = batch_size or max(batch.batch_size, edges.numel())
    for name, count in (("volume", batch.batch_size), ("coarse_voxel_size", edges.numel())):
        if count not in (1, samples):
            raise ValueError(f"{name}: expected 1 or {samples} entries (one per sample), got {count}")
    edges = edges.expand(samples)
    volume_batch = batch.batch_size
    spacing = batch.affine[:, :3, :3].norm(dim=1).to("cpu", torch.float64)  # (Bv, 3) mm
    sample_volume = torch.arange(samples) if volume_batch > 1 else torch.zeros(samples, dtype=torch.long)
    factors = torch.clamp(torch.round(edges[:, None] / spacing[sample_volume]), min=1).long()  # (B, 3)
    groups: dict[tuple[int, int, int], list[int]] = {}
    for sample, factor in enumerate(factors.tolist()):
        groups.setdefault(tuple(factor), []).append(sample)
    grid = [-(-batch.shape[axis] // int(factors[:, axis].min())) for axis in range(3)]
    weight = torch.zeros(samples, *grid, dtype=batch.attenuation.dtype, device=batch.device)

    def weigh(attenuation: Tensor) -> Tensor:
        return _attenuation_weights(
            attenuation, mu_water=batch.mu_water, weighting=weighting, air_threshold_hu=air_threshold_hu
        )

    for factor, members in groups.items():
        index = torch.tensor(members, device=batch.device)
        source = batch.attenuation[:1, 0] if volume_batch == 1 else batch.attenuation[index, 0]
        pooled = _pool_slabs(source, factor, weigh)
        d, h, w = pooled.shape[1:]
        weight[index, :d, :h, :w] = pooled.expand(len(members), -1, -1, -1) if volume_batch == 1 else pooled
    affine = batch.affine.to(torch.float64)[sample_volume.to(batch.device)] @ _coarse_to_fine(factors).to(batch.device)
    voxel_size = (factors * spacing[sample_volume]).amin(1)
    return CoarseWeights(weight=weight, affine=affine, voxel_size=voxel_size)


class WeightIntegral:
    """Summed-volume tables of the correspondence weights of one or more volumes.

    Built once per CT, they give the pooled weights of any box-aligned crop at
    any pooling factor with eight reads per coarse voxel, whatever the crop's
    size: the sampler's path, where every sample has its own crop. Tables are
    float64, ``8 (D+1)(H+1)(W+1)`` bytes per volume.

    Args:
        volumes: one :class:`Volume` or several (of any shapes; tables are
            zero-padded to a common shape).
        weighting, air_threshold_hu: as :func:`voxel_weights`.
        device: where the tables live (default: the first volume's device).
    """

    def __init__(
        self,
        volumes: Volume | Sequence[Volume],
        *,
        weighting: str = "soft",
        air_threshold_hu: float = -900.0,
        device: torch.device | str | None = None,
    ) -> None:
        check_choice("weighting", weighting, WEIGHTINGS)
        volumes = [volumes] if isinstance(volumes, Volume) else list(volumes)
        if not volumes:
            raise ValueError("volumes: expected at least one Volume, got an empty sequence")
        for index, item in enumerate(volumes):
            if not isinstance(item, Volume):
                raise TypeError(f"volumes[{index}]: expected a Volume, got {type(item).__name__}")
        device = torch.device(device) if device is not None else volumes[0].device
        shape = [max(v.shape[axis] for v in volumes) + 1 for axis in range(3)]
        self.tables = torch.zeros(len(volumes), *shape, dtype=torch.float64, device=device)
        for index, item in enumerate(volumes):
            weights = voxel_weights(item.hu[0].to(device), weighting=weighting, air_threshold_hu=air_threshold_hu)
            d, h, w = item.shape
            table = self.tables[index, 1 : d + 1, 1 : h + 1, 1 : w + 1]
            torch.cumsum(weights.to(torch.float64), 0, out=table)
            torch.cumsum(table, 1, out=table)
            torch.cumsum(table, 2, out=table)
        self.shapes = torch.tensor([v.shape for v in volumes], dtype=torch.long)  # (n, 3), CPU
        self.affines = torch.stack([v.affine.to(torch.float64) for v in volumes]).to(device)
        self.spacings = self.affines[:, :3, :3].norm(dim=1).cpu()  # (n, 3)
        self.weighting = weighting
        self.air_threshold_hu = air_threshold_hu

    @property
    def device(self) -> torch.device:
        return self.tables.device

    def __len__(self) -> int:
        return self.tables.shape[0]

    def box_mean(self, volume_index: Tensor, start: Tensor, stop: Tensor) -> Tensor:
        """Mean weight of the voxel boxes ``[start, stop)`` of volumes ``volume_index``: ``(B,)``."""
        volume_index, start, stop = (torch.as_tensor(t).long().to(self.device) for t in (volume_index, start, stop))
        total = self._box_sums(volume_index, start.unbind(-1), stop.unbind(-1))
        count = (stop - start).clamp_min(0).prod(-1).to(total.dtype)
        return total / count.clamp_min(1)

    def _box_sums(self, volume: Tensor, lows: Sequence[Tensor], highs: Sequence[Tensor]) -> Tensor:
        """Sums over boxes ``[low, high)`` per axis; ``lows``/``highs`` broadcast against ``(B, ...)``."""
        _, size0, size1, size2 = self.tables.shape
        flat = self.tables.view(-1)
        base = volume.view(-1, *([1] * (lows[0].dim() - 1))) * (size0 * size1 * size2)
        total = torch.zeros((), dtype=self.tables.dtype, device=self.device)
        for corner in itertools.product((0, 1), repeat=3):
            first, second, third = (lows[a] if c else highs[a] for a, c in enumerate(corner))
            sign = -1.0 if sum(corner) % 2 else 1.0
            total = total + sign * flat[base + (first * size1 + second) * size2 + third]
        return total

    @torch.no_grad()
    def pool(self, volume_index: Tensor, start: Tensor, stop: Tensor, factor: Tensor) -> CoarseWeights:
        """Pooled weights of crops, as :func:`pool_weights` would give for the cropped volumes.

        Args:
            volume_index: ``(B,)`` which volume each sample crops.
            start, stop: ``(B, 3)`` crop boxes in voxel indices of that volume
                (``0 <= start < stop <= shape``).
            factor: ``(B, 3)`` fine voxels per coarse voxel edge.

        The grid shape is read from ``stop - start`` and ``factor``: pass CPU
        tensors (as the sampler does) to keep the device free of host reads.
        """
        volume_index, start, stop, factor = (torch.as_tensor(t).long() for t in (volume_index, start, stop, factor))
        batch = volume_index.shape[0]
        for name, tensor in (("start", start), ("stop", stop), ("factor", factor)):
            if tuple(tensor.shape) != (batch, 3):
                raise ValueError(f"{name}: expected shape ({batch}, 3), got {tuple(tensor.shape)}")
        if start.device.type == "cpu" and stop.device.type == "cpu":
            shapes = self.shapes[volume_index.cpu()]
            if bool((start < 0).any() or (stop > shapes).any() or (stop <= start).any()):
                raise ValueError("start, stop: expected 0 <= start < stop <= the volume's shape for every crop")
        if bool((factor < 1).any()):
            raise ValueError("factor: expected positive pooling factors")
        grid = (-(-(stop - start) // factor)).amax(0).tolist()
        device = self.device
        volume_index, start, stop, factor = (t.to(device) for t in (volume_index, start, stop, factor))
        lows, highs = [], []
        for axis, count in enumerate(grid):
            shape = [batch, 1, 1, 1]
            shape[axis + 1] = count
            low = start[:, axis, None] + torch.arange(count, device=device) * factor[:, axis, None]  # (B, n)
            high = torch.minimum(low + factor[:, axis, None], stop[:, axis, None])
            lows.append(torch.minimum(low, stop[:, axis, None]).view(shape))
            highs.append(high.view(shape))
        sums = self._box_sums(volume_index, lows, highs)  # (B, d, h, w)
        # Any non-air voxel weighs more than 0.01; smaller sums are rounding error of the tables.
        sums = torch.where(sums > 1e-3, sums, torch.zeros_like(sums))
        weight = (sums / factor.prod(-1).to(torch.float64).view(-1, 1, 1, 1)).to(torch.float32)
        to_crop = torch.eye(4, dtype=torch.float64, device=device).repeat(batch, 1, 1)
        to_crop[:, :3, 3] = start.to(torch.float64)
        affine = self.affines[volume_index] @ to_crop @ _coarse_to_fine(factor)
        voxel_size = (factor.cpu().to(torch.float64) * self.spacings[volume_index.cpu()]).amin(1)
        return CoarseWeights(weight=weight, affine=affine, voxel_size=voxel_size)


@torch.no_grad()
def patch_correspondence(
    volume: Volume | Sequence[Volume] | VolumeBatch | CoarseWeights,
    carm: CArm,
    *,
    patch_size: int = 16,
    weighting: str = "soft",
    air_threshold_hu: float = -900.0,
    coarse_voxel_size: float | None = None,
    rays_per_patch: int | None = None,
    mu_water: float = MU_WATER_PER_MM,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Tensor:
    """Patch correspondence matrices between all views of each sample.

    Args:
        volume: one :class:`Volume` (shared), ``B`` volumes, a :class:`VolumeBatch`,
            or weights already pooled (:class:`CoarseWeights`, from :func:`pool_weights`
            or :meth:`WeightIntegral.pool`; then ``weighting``, ``air_threshold_hu``
            and ``coarse_voxel_size`` are those it was pooled with).
        carm: the cameras that render the views, batch ``(B, V)``.
        patch_size: patch edge ``k`` in pixels; must divide the detector height and width.
        weighting: ``"soft"`` or ``"binary"`` voxel weights.
        air_threshold_hu: voxels at or below this HU are air (weight 0).
        coarse_voxel_size: coarse voxel edge in mm (default: ``k dx sid / sdd``,
            the smallest over each sample's views).
        rays_per_patch: rays per patch side ``m`` (default: about two rays per
            coarse voxel edge at the isocenter, ``round(2 k dx sid / (sdd edge))``, at least 2).
        mu_water: attenuation of water (1/mm) to recover HU from a :class:`VolumeBatch`.
        memory_budget: bytes of intermediate tensors per voxel chunk.

    Returns:
        ``(B, V*N, V*N)`` in ``[0, 1]``, symmetric, ``N = (H/k) (W/k)``.

    Example:
        >>> vol = Volume.from_tensor(torch.zeros(16, 16, 16), spacing=4.0)
        >>> carm = CArm(alpha=torch.tensor([0.0, 1.57]), sid=500.0, sdd=800.0, height=64, pixel_spacing=1.0)
        >>> patch_correspondence(vol, carm, patch_size=16).shape
        torch.Size([1, 32, 32])
    """
    if not isinstance(carm, CArm):
        raise TypeError(f"carm: expected a CArm, got {type(carm).__name__}")
    check_positive_int("patch_size", patch_size)
    check_choice("weighting", weighting, WEIGHTINGS)
    check_positive_int("memory_budget", memory_budget)
    if carm.height % patch_size or carm.width % patch_size:
        raise ValueError(
            f"patch_size: expected a divisor of the detector size {carm.height} x {carm.width}, got {patch_size}"
        )
    if coarse_voxel_size is not None:
        check_positive("coarse_voxel_size", torch.as_tensor(float(coarse_voxel_size)))
    if rays_per_patch is not None:
        check_positive_int("rays_per_patch", rays_per_patch)
    coarse = volume if isinstance(volume, CoarseWeights) else None
    batch = None if coarse is not None else as_volume_batch(volume, mu_water=mu_water)
    volume_batch = coarse.batch_size if coarse is not None else batch.batch_size
    carm_batch, views = carm.batch_shape
    if volume_batch not in (1, carm_batch) and carm_batch != 1:
        raise ValueError(
            f"volume, carm: mismatched batch sizes, {volume_batch} volumes for {carm_batch} C-arm samples "
            "(expected equal sizes, or one of them 1)"
        )
    out_batch = max(volume_batch, carm_batch)
    device = coarse.device if coarse is not None else batch.device
    carm = carm.to(device=device, dtype=torch.float32)
    rows, cols = carm.height // patch_size, carm.width // patch_size
    n_patches = rows * cols
    tokens = views * n_patches

    # Coarse voxel edge and rays per patch, per sample (host-side numbers; the camera is
    # read back from the device only when one of them is left to its default).
    backprojected_min = None
    if coarse is None or rays_per_patch is None:
        backprojected = (patch_size * carm.pixel_spacing * carm.sid / carm.sdd).expand(out_batch, views)
        backprojected_min = backprojected.amin(1).to("cpu", torch.float64)
    if coarse is None:
        edge = backprojected_min if coarse_voxel_size is None else torch.full_like(backprojected_min, float(coarse_voxel_size))
        coarse = pool_weights(
            batch, edge, weighting=weighting, air_threshold_hu=air_threshold_hu, mu_water=mu_water, batch_size=out_batch
        )
    elif coarse.batch_size != out_batch:
        coarse = CoarseWeights(
            weight=coarse.weight.expand(out_batch, -1, -1, -1),
            affine=coarse.affine.expand(out_batch, -1, -1),
            voxel_size=coarse.voxel_size.expand(out_batch),
        )
    if rays_per_patch is None:
        rays = default_rays_per_patch(backprojected_min, coarse.voxel_size, patch_size)
    else:
        rays = rays_per_patch

    voxels = _coarse_voxels(coarse)
    result = torch.zeros(out_batch * tokens * tokens, device=device)
    if voxels["weight"].numel() == 0:
        return result.view(out_batch, tokens, tokens)

    footprint_args = dict(carm=carm, patch_size=patch_size, rays=rays)
    # Bytes per voxel: about 12 live float32 temporaries over a 4 x 4 patch window of m x m rays
    # per view, then the (V T)^2 outer products with their int64 indices (T <= 16).
    per_voxel = 4 * 12 * views * 16 * rays * rays + 12 * (16 * views) ** 2
    chunk = max(1, memory_budget // per_voxel)
    for first in range(0, voxels["weight"].shape[0], chunk):
        part = {key: value[first : first + chunk] for key, value in voxels.items()}
        values, patches = _footprints(part, **footprint_args)  # (n, V, T) each
        _scatter_outer_max(result, part["sample"], part["weight"], values, patches, views, n_patches)
    return result.view(out_batch, tokens, tokens)


def default_rays_per_patch(backprojected: Tensor, voxel_size: Tensor, patch_size: int) -> int:
    """Rays per patch side: about two per coarse voxel edge at the isocenter, at least 2, at most ``patch_size``.

    ``backprojected`` and ``voxel_size`` are ``(B,)`` host tensors (mm): the
    patch back-projected to the isocenter and the coarse voxel edge per sample.
    """
    ratio = float((2 * backprojected / voxel_size).amax())
    return int(min(patch_size, max(2, round(ratio))))


def _coarse_voxels(coarse: "CoarseWeights") -> dict[str, Tensor]:
    """The non-air coarse voxels of every sample, as flat tensors.

    Returns ``sample`` (sample index), ``weight`` (pooled weight), ``index``
    (coarse voxel index, 3, float64) and ``affine`` (coarse index to world of the
    voxel's sample, ``(n, 4, 4)``).
    """
    occupied = torch.nonzero(coarse.weight > 0)  # (n, 4): sample, i, j, k (host read: n)
    sample = occupied[:, 0]
    return dict(
        sample=sample,
        weight=coarse.weight[sample, occupied[:, 1], occupied[:, 2], occupied[:, 3]],
        index=occupied[:, 1:].to(torch.float64),
        affine=coarse.affine[sample],
    )


def _footprints(voxels: dict[str, Tensor], *, carm: CArm, patch_size: int, rays: int) -> tuple[Tensor, Tensor]:
    """Normalised footprints of each voxel in each view, ``(n, V, T)`` values and flat patch ids."""
    sample = voxels["sample"]
    count = sample.shape[0]
    views = carm.batch_shape[1]
    carm_sample = sample if carm.batch_shape[0] > 1 else torch.zeros_like(sample)
    rows, cols = carm.height // patch_size, carm.width // patch_size
    dtype = torch.float32

    # World corners of each coarse voxel box, projected: which patches can it touch?
    offsets = torch.tensor(
        [[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], dtype=torch.float64, device=sample.device
    )
    corners_index = voxels["index"][:, None, :] + offsets  # (n, 8, 3)
    affine = voxels["affine"]
    corners_world = corners_index @ affine[:, :3, :3].transpose(1, 2) + affine[:, None, :3, 3]
    matrices = carm.projection_matrices().to(torch.float64)[carm_sample]  # (n, V, 3, 4)
    homogeneous = torch.cat([corners_world, torch.ones_like(corners_world[..., :1])], -1)
    projected = torch.einsum("nvij,ncj->nvci", matrices, homogeneous)  # (n, V, 8, 3)
    depth = projected[..., 2]
    pixel = projected[..., :2] / depth.clamp_min(1e-6)[..., None]
    in_front = (depth > 1e-3).all(-1)  # (n, V): voxel entirely in front of the source
    patch_low = torch.floor((pixel.amin(2) + 0.5) / patch_size)  # (n, V, 2) row, col of the first patch
    patch_high = torch.floor((pixel.amax(2) + 0.5) / patch_size)
    limits = torch.tensor([rows - 1, cols - 1], dtype=torch.float64, device=sample.device)
    patch_low = torch.minimum(torch.maximum(patch_low, torch.zeros_like(limits)), limits)
    patch_high = torch.minimum(torch.maximum(patch_high, torch.zeros_like(limits)), limits)
    span = torch.where(in_front[..., None], patch_high - patch_low + 1, torch.ones_like(patch_low))
    window = int(span.amax()) if span.numel() else 1  # K (host read)

    steps = torch.arange(window, device=sample.device)
    window_rows = patch_low[..., 0, None].long() + steps  # (n, V, K)
    window_cols = patch_low[..., 1, None].long() + steps
    valid = (window_rows[..., :, None] < rows) & (window_cols[..., None, :] < cols) & in_front[..., None, None]

    # Rays through an m x m split of every window patch, in coarse-index space.
    sub = (torch.arange(rays, device=sample.device, dtype=dtype) + 0.5) * (patch_size / rays) - 0.5
    pixel_rows = window_rows[..., :, None].to(dtype) * patch_size + sub  # (n, V, K, m)
    pixel_cols = window_cols[..., :, None].to(dtype) * patch_size + sub
    u, v = carm.detector_axes()
    spacing = carm.pixel_spacing[..., None]
    source = carm.source_positions()[carm_sample]  # (n, V, 3)
    center = carm.detector_centers()[carm_sample]
    du, dv = (u * spacing)[carm_sample], (v * spacing)[carm_sample]
    col_offset = pixel_cols - (carm.width - 1) / 2
    row_offset = pixel_rows - (carm.height - 1) / 2
    # A ray is source + t * direction, t in [0, 1] from source to pixel, with
    # direction = (center - source) + col * du + row * dv: affine in the pixel offsets, in world
    # and in coarse-index space alike. Everything below is broadcast over (V, Kr, Kc, mr, mc, n),
    # voxels last so the elementwise loops run over long contiguous rows, one axis at a time.
    inverse = torch.linalg.inv(affine).to(dtype)  # (n, 4, 4) world -> coarse index
    linear = inverse[:, None, :3, :3]  # (n, 1, 3, 3)
    base = center - source
    base_index = (linear @ base[..., None])[..., 0]  # (n, V, 3)
    du_index = (linear @ du[..., None])[..., 0]
    dv_index = (linear @ dv[..., None])[..., 0]
    # Source relative to the voxel's low corner (box [0, 1]^3 in these units).
    origin = (linear @ source[..., None])[..., 0] + inverse[:, None, :3, 3] - (voxels["index"].to(dtype)[:, None] - 0.5)
    cols6 = col_offset.permute(1, 2, 3, 0).contiguous()[:, None, :, None, :, :]  # (V, 1, Kc, 1, mc, n)
    rows6 = row_offset.permute(1, 2, 3, 0).contiguous()[:, :, None, :, None, :]  # (V, Kr, 1, mr, 1, n)

    def scalar(values: Tensor) -> Tensor:  # (n, V) -> (V, 1, 1, 1, 1, n)
        return values.transpose(0, 1).contiguous()[:, None, None, None, None, :]

    # |direction| in world mm (du and dv are orthogonal detector axes).
    world_length = (
        scalar((base * base).sum(-1))
        + cols6 * (2 * scalar((base * du).sum(-1)) + cols6 * scalar((du * du).sum(-1)))
        + rows6 * (2 * scalar((base * dv).sum(-1)) + rows6 * scalar((dv * dv).sum(-1)))
    ).sqrt_()
    t_enter = t_exit = None
    for axis in range(3):
        component = scalar(base_index[..., axis]) + cols6 * scalar(du_index[..., axis]) + rows6 * scalar(dv_index[..., axis])
        component = torch.where(component.abs() < 1e-9, torch.full_like(component, 1e-9), component)
        step = component.reciprocal_()  # t per unit index along this axis
        low = step * scalar(-origin[..., axis])  # t where the ray crosses the box's low face on this axis
        high = low + step
        near, far = torch.minimum(low, high), torch.maximum(low, high)
        t_enter = near if t_enter is None else torch.maximum(t_enter, near)
        t_exit = far if t_exit is None else torch.minimum(t_exit, far)
    length = (t_exit.clamp_max_(1.0) - t_enter.clamp_min_(0.0)).clamp_min_(0.0).mul_(world_length)
    length = length.sum((3, 4)).permute(3, 0, 1, 2)  # (n, V, Kr, Kc) mm
    length = length * valid  # (n, V, K, K)
    length = length.reshape(count, views, window * window)
    peak = length.amax(-1, keepdim=True)
    values = torch.where(peak > 0, length / peak.clamp_min(1e-12), torch.zeros_like(length))
    patch_ids = (window_rows[..., :, None] * cols + window_cols[..., None, :]).reshape(count, views, -1)
    patch_ids = torch.where(valid.reshape(count, views, -1), patch_ids, torch.zeros_like(patch_ids))
    nonzero = int((values > 0).sum(-1).amax()) if values.numel() else 0  # T (host read)
    keep = max(1, nonzero)
    values, order = values.topk(keep, dim=-1)
    return values, patch_ids.gather(-1, order)


def _scatter_outer_max(
    result: Tensor, sample: Tensor, weight: Tensor, values: Tensor, patches: Tensor, views: int, n_patches: int
) -> None:
    """``result.flat[b, a*N+i, c*N+j] = max(., w * p_a[i] * p_c[j])`` for all view pairs, in place."""
    tokens = views * n_patches
    view_offset = torch.arange(views, device=values.device)[None, :, None] * n_patches
    token = patches + view_offset  # (n, V, T)
    flat_token = token.reshape(token.shape[0], -1)  # (n, V*T)
    flat_value = values.reshape(values.shape[0], -1)
    products = weight[:, None, None] * flat_value[:, :, None] * flat_value[:, None, :]  # (n, VT, VT)
    index = sample[:, None, None] * (tokens * tokens) + flat_token[:, :, None] * tokens + flat_token[:, None, :]
    result.scatter_reduce_(0, index.reshape(-1), products.reshape(-1).to(result.dtype), reduce="amax", include_self=True)


# ---------------------------------------------------------------------------
# Helpers for reading and checking correspondences


def correspondence_map(
    correspondence: Tensor, view_a: int, patch: int | tuple[int, int], view_b: int, *, grid_shape: tuple[int, int]
) -> Tensor:
    """Heat map in view ``b`` of the patches matching one patch of view ``a``.

    Args:
        correspondence: ``(B, V*N, V*N)`` or ``(V*N, V*N)``.
        view_a, view_b: view indices.
        patch: flat patch index ``i`` or ``(row, col)`` in view ``a``'s patch grid.
        grid_shape: ``(H/k, W/k)`` patches per view.

    Returns:
        ``(B, H/k, W/k)`` (or ``(H/k, W/k)`` for an unbatched input).
    """
    rows, cols = grid_shape
    n_patches = rows * cols
    unbatched = correspondence.dim() == 2
    matrix = correspondence[None] if unbatched else correspondence
    if matrix.dim() != 3 or matrix.shape[-1] != matrix.shape[-2] or matrix.shape[-1] % n_patches:
        raise ValueError(
            f"correspondence: expected (B, V*N, V*N) with N = {n_patches} patches per view, got {tuple(correspondence.shape)}"
        )
    views = matrix.shape[-1] // n_patches
    for name, view in (("view_a", view_a), ("view_b", view_b)):
        if not 0 <= view < views:
            raise ValueError(f"{name}: expected a view index in [0, {views}), got {view}")
    index = patch[0] * cols + patch[1] if isinstance(patch, tuple) else int(patch)
    if not 0 <= index < n_patches:
        raise ValueError(f"patch: expected a patch in the {rows} x {cols} grid, got {patch}")
    row = matrix[:, view_a * n_patches + index, view_b * n_patches : (view_b + 1) * n_patches]
    heat = row.reshape(-1, rows, cols)
    return heat[0] if unbatched else heat


def pixel_ray(carm: CArm, view: int, pixel: Tensor) -> tuple[Tensor, Tensor]:
    """The ray of a pixel: world ``origins (B, P, 3)`` (the source) and ``targets (B, P, 3)``.

    Args:
        carm: the C-arm, batch ``(B, V)``.
        view: the view index.
        pixel: ``(P, 2)`` or ``(B, P, 2)`` (row, column) coordinates, fractional allowed.
    """
    pixel = torch.as_tensor(pixel, dtype=carm.dtype, device=carm.device)
    if pixel.dim() == 2:
        pixel = pixel[None].expand(carm.batch_shape[0], -1, -1)
    if pixel.dim() != 3 or pixel.shape[-1] != 2:
        raise ValueError(f"pixel: expected shape (P, 2) or (B, P, 2) (row, column), got {tuple(pixel.shape)}")
    u, v = carm.detector_axes()
    spacing = carm.pixel_spacing[:, view, None, None]
    center = carm.detector_centers()[:, view, None, :]
    target = (
        center
        + (pixel[..., 1:2] - (carm.width - 1) / 2) * spacing * u[:, view, None, :]
        + (pixel[..., 0:1] - (carm.height - 1) / 2) * spacing * v[:, view, None, :]
    )
    source = carm.source_positions()[:, view, None, :].expand_as(target)
    return source, target


def epipolar_line(carm: CArm, view_a: int, pixel: Tensor, view_b: int) -> Tensor:
    """The epipolar line in view ``b`` of pixels of view ``a``.

    Args:
        carm: the C-arm, batch ``(B, V)``.
        view_a, view_b: view indices (distinct).
        pixel: ``(P, 2)`` or ``(B, P, 2)`` (row, column) in view ``a``.

    Returns:
        ``(B, P, 3)`` coefficients ``(a, b, c)`` of ``a * row + b * col + c = 0`` in
        view ``b``, scaled so ``a^2 + b^2 = 1`` (so ``|a r + b q + c|`` is a distance
        in pixels).
    """
    views = carm.batch_shape[1]
    for name, view in (("view_a", view_a), ("view_b", view_b)):
        if not 0 <= view < views:
            raise ValueError(f"{name}: expected a view index in [0, {views}), got {view}")
    if view_a == view_b:
        raise ValueError(f"view_b: expected a view other than view_a ({view_a})")
    source, target = pixel_ray(carm, view_a, pixel)
    near = project_points(carm, source + 0.25 * (target - source))[:, view_b]  # (B, P, 2)
    far = project_points(carm, target)[:, view_b]
    ones = torch.ones_like(near[..., :1])
    line = torch.cross(torch.cat([near, ones], -1), torch.cat([far, ones], -1), dim=-1)
    return line / line[..., :2].norm(dim=-1, keepdim=True).clamp_min(1e-12)


def patch_permutation(grid_shape: tuple[int, int], operation: str) -> Tensor:
    """Where each patch comes from when an image is flipped or rotated.

    ``operation`` acts on the image's last two dims as ``torch.flip`` (``"hflip"``:
    columns, ``"vflip"``: rows) or ``torch.rot90(k, dims=(-2, -1))`` (``"rot90"``,
    ``"rot180"``, ``"rot270"``; rotations need a square grid). Returns ``(N,)``:
    patch ``i`` of the transformed image is patch ``perm[i]`` of the original.
    """
    check_choice("operation", operation, IMAGE_OPERATIONS)
    rows, cols = grid_shape
    grid = torch.arange(rows * cols).view(rows, cols)
    if operation in ("rot90", "rot270") and rows != cols:
        raise ValueError(f"operation: {operation} needs a square patch grid, got {rows} x {cols}")
    if operation == "hflip":
        grid = grid.flip(-1)
    elif operation == "vflip":
        grid = grid.flip(-2)
    elif operation.startswith("rot"):
        grid = torch.rot90(grid, int(operation[3:]) // 90, dims=(-2, -1))
    return grid.reshape(-1)


def permute_views_patches(correspondence: Tensor, permutations: Tensor) -> Tensor:
    """Re-index ``C`` after each view's patches were permuted.

    Args:
        correspondence: ``(B, V*N, V*N)``.
        permutations: ``(B, V, N)`` or ``(V, N)``; ``perm[b, a, i]`` is the old patch
            that patch ``i`` of view ``a`` now shows (see :func:`patch_permutation`).

    Returns:
        ``(B, V*N, V*N)`` with ``C'[a*N+i, c*N+j] = C[a*N+perm[a,i], c*N+perm[c,j]]``.
    """
    if permutations.dim() == 2:
        permutations = permutations[None].expand(correspondence.shape[0], -1, -1)
    batch, views, n_patches = permutations.shape
    if correspondence.shape != (batch, views * n_patches, views * n_patches):
        raise ValueError(
            f"correspondence: expected shape {(batch, views * n_patches, views * n_patches)} to match "
            f"permutations {tuple(permutations.shape)}, got {tuple(correspondence.shape)}"
        )
    offsets = torch.arange(views, device=permutations.device)[None, :, None] * n_patches
    tokens = (permutations.to(correspondence.device) + offsets.to(correspondence.device)).reshape(batch, -1)
    rows = correspondence.gather(1, tokens[:, :, None].expand(-1, -1, correspondence.shape[2]))
    return rows.gather(2, tokens[:, None, :].expand(-1, rows.shape[1], -1))
