"""Drawing: the random parameters of batch ``step``, on the host, degenerate draws redrawn.

:func:`draw` is a pure function of the configuration, the store, the step,
the seed and the rank: every draw comes from host generators seeded with
those (:mod:`onthefly.sampling.seeds`), including the checks that reject
degenerate draws (on the store's small tissue blocks), so choosing a batch
never waits on the device.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch
from torch import Tensor

from ..fractures import draw_fractures
from ..geometry import patch_index, project_points
from . import seeds
from .config import SamplerConfig
from .params import POSE_NAMES, SampleParams
from .store import VolumeStore

__all__ = ["draw", "candidate_volumes", "DegenerateDrawWarning", "paired_params", "tissue_checks"]


class DegenerateDrawWarning(UserWarning):
    """Some samples still failed a degenerate-draw check when the redraws ran out (they are kept, flagged)."""


def candidate_volumes(store: VolumeStore, *, rank: int, world: int, shard: bool | None) -> Tensor:
    """The CT indices a rank draws from: its own disjoint share (every ``world``-th CT) or all of them.

    ``shard=None`` shards when there are at least ``world`` CTs.
    """
    count = len(store)
    if shard is None:
        shard = count >= world
    if shard and count < world:
        raise ValueError(f"shard: {world} ranks cannot each have their own CTs out of {count}; pass shard=False")
    everything = torch.arange(count)
    return everything[rank::world] if shard and world > 1 else everything


def draw(config: SamplerConfig, store: VolumeStore, step: int, *, seed: int, rank: int = 0,
         candidates: Tensor | None = None) -> SampleParams:
    """The parameters of batch ``step`` of stream ``(seed, rank)``.

    Args:
        config: the sampler's configuration.
        store: the CTs (their shapes, affines and tissue blocks are read on the host).
        step: the batch's index in the stream (>= 0).
        seed, rank: the stream.
        candidates: the CT indices this rank may draw from (default: all).

    Returns:
        :class:`~onthefly.sampling.params.SampleParams` on the host. Samples
        failing the tissue checks are redrawn, all of them at once, up to
        ``config.max_redraws`` rounds; those still failing are kept, flagged in
        ``degenerate``, with a :class:`DegenerateDrawWarning` naming the check.
    """
    if candidates is None:
        candidates = torch.arange(len(store))
    pool = store.available(step, candidates)
    generator = torch.Generator().manual_seed(seeds.stream_seed(seed, rank, step, seeds.GEOMETRY))
    params = _draw_once(config, store, pool, generator, step=step, seed=seed, rank=rank)
    for _ in range(config.max_redraws):
        bad = params.degenerate
        if not bool(bad.any()):
            break
        params = params.select(bad, _draw_once(config, store, pool, generator, step=step, seed=seed, rank=rank))
    if bool(params.degenerate.any()):
        _warn_degenerate(config, params)
    augmentation = config.augmentation.draw(
        config.batch_size, config.views,
        torch.Generator().manual_seed(seeds.stream_seed(seed, rank, step, seeds.AUGMENTATION)),
    )
    fracture = None
    if config.fractures is not None:
        generator = torch.Generator().manual_seed(seeds.stream_seed(seed, rank, step, seeds.FRACTURES))
        fracture = draw_fractures(config.fractures, config.batch_size, generator)
    physics = None
    if config.physics is not None:
        physics = config.physics.draw(
            config.batch_size, torch.Generator().manual_seed(seeds.stream_seed(seed, rank, step, seeds.PHYSICS)))
    anatomy = None
    if config.anatomy is not None:
        anatomy = config.anatomy.draw(
            config.batch_size, torch.Generator().manual_seed(seeds.stream_seed(seed, rank, step, seeds.ANATOMY)))
    params = replace(params, augmentation=augmentation, fracture=fracture, physics=physics, anatomy=anatomy)
    if config.fractures is not None and config.fractures.paired:
        params = paired_params(params)
    return params


def paired_params(params: SampleParams) -> SampleParams:
    """The first half of ``params`` twice: fractures as drawn, then the same samples without them."""
    half = params.batch_size // 2
    first = torch.arange(half)
    paired = params.rows(torch.cat([first, first]))
    drawn = torch.cat([paired.fracture.drawn[:half], torch.zeros(half, dtype=torch.bool)])
    return replace(paired, fracture=replace(paired.fracture, drawn=drawn))


def _draw_once(config: SamplerConfig, store: VolumeStore, pool: Tensor, generator: torch.Generator, *,
               step: int, seed: int, rank: int) -> SampleParams:
    """One draw of every sample's CT, crop and poses, with its tissue checks (``degenerate`` where one fails)."""
    batch, views = config.batch_size, config.views
    crop = torch.tensor(config.crop_voxels())
    volume = pool[torch.randint(len(pool), (batch,), generator=generator)]
    room = store.shapes[volume] - crop + 1  # (B, 3) start choices
    start = (torch.rand(batch, 3, generator=generator, dtype=torch.float64) * room).long().clamp_max(room - 1)
    stop = start + crop
    poses, extras = config.layout.draw(config, batch, generator)
    jitter = (torch.rand(batch, views, 3, generator=generator, dtype=torch.float64) * 2 - 1) * config.isocenter_jitter
    if config.layout.shared_isocenter:
        jitter = jitter[:, :1].expand_as(jitter).clone()
    affine = store.affines[volume]
    centre_index = torch.cat([(start + stop - 1).double() / 2, torch.ones(batch, 1, dtype=torch.float64)], -1)
    centre = (affine @ centre_index[..., None])[:, :3, 0]
    isocenter = centre[:, None, :] + jitter
    backprojected = (config.patch_size * config.pixel_spacing * poses["sid"] / poses["sdd"]).amin(1)  # (B,)
    spacing = store.spacing
    factor = torch.clamp(torch.round(backprojected[:, None] / spacing), min=1).long()  # (B, 3)
    params = SampleParams(
        step=step, seed=seed, rank=rank, volume_index=volume, crop_start=start, crop_stop=stop,
        **{name: poses[name] for name in POSE_NAMES}, isocenter=isocenter, coarse_factor=factor,
        tissue_fraction=torch.zeros(batch, dtype=torch.float64),
        projection_fraction=torch.zeros(batch, views, dtype=torch.float64),
        degenerate=torch.zeros(batch, dtype=torch.bool), layout=extras,
    )
    tissue, coverage = tissue_checks(config, store, params)
    degenerate = (tissue < config.min_tissue_fraction) | (coverage.amin(1) < config.min_projection_fraction)
    return replace(params, tissue_fraction=tissue, projection_fraction=coverage, degenerate=degenerate)


def tissue_checks(config: SamplerConfig, store: VolumeStore, params: SampleParams) -> tuple[Tensor, Tensor]:
    """Host estimates: each crop's non-air fraction ``(B,)`` and, per view, the share of patches tissue covers ``(B, V)``."""
    block = store.tissue_block
    crop = torch.tensor(config.crop_voxels())
    first = -(-params.crop_start // block)  # the first block wholly inside the crop
    count = tuple(int(n) for n in torch.clamp(crop // block - 1, min=1))  # blocks per axis inside every crop
    fraction = store.tissue_blocks(params.volume_index, first, count)  # (B, c0, c1, c2)
    tissue = fraction.flatten(1).mean(1).double()
    # Block centres (world) projected into every view: which patches does tissue cover?
    steps = [torch.arange(n, dtype=torch.float64) for n in count]
    grid = torch.stack(torch.meshgrid(*steps, indexing="ij"), -1).reshape(-1, 3)
    block_index = (first[:, None, :].double() + grid) * block.double() + (block.double() - 1) / 2  # (B, P, 3)
    affine = store.affines[params.volume_index]
    world = block_index @ affine[:, :3, :3].transpose(1, 2) + affine[:, None, :3, 3]
    carm = params.carm(height=config.height, width=config.width, pixel_spacing=config.pixel_spacing)
    patch = patch_index(project_points(carm, world), config.image_size, config.patch_size)  # (B, V, P), -1 outside
    rows, cols = config.grid_shape
    solid = (fraction.flatten(1) > 0.5)[:, None, :] & (patch >= 0)
    patch = torch.where(solid, patch, torch.full_like(patch, rows * cols))
    hits = torch.zeros(*patch.shape[:2], rows * cols + 1)
    hits.scatter_add_(2, patch, torch.ones_like(patch, dtype=hits.dtype))
    return tissue, (hits[..., :-1] > 0).double().mean(-1)


def _warn_degenerate(config: SamplerConfig, params: SampleParams) -> None:
    bad = params.degenerate
    tissue = params.tissue_fraction[bad]
    coverage = params.projection_fraction[bad].amin(1)
    checks = []
    if bool((tissue < config.min_tissue_fraction).any()):
        checks.append(f"tissue fraction down to {float(tissue.min()):.3f} < min_tissue_fraction "
                      f"{config.min_tissue_fraction:g}")
    if bool((coverage < config.min_projection_fraction).any()):
        checks.append(f"projection fraction down to {float(coverage.min()):.3f} < min_projection_fraction "
                      f"{config.min_projection_fraction:g}")
    warnings.warn(
        f"{int(bad.sum())} of {config.batch_size} samples of step {params.step} are degenerate after "
        f"{config.max_redraws} redraws ({'; '.join(checks)}); they are kept and flagged in params.degenerate. "
        "Lower those thresholds, raise max_redraws, or use larger crops.",
        DegenerateDrawWarning, stacklevel=3,
    )
