"""Target builders: what a task's batch carries besides the pipeline's views.

The pipeline (:mod:`onthefly.sampling.make`) always makes a
:class:`~onthefly.sampling.batch.DRRBatch`; the configuration's target builder
turns it into the task's batch:

* :class:`DRRTarget` (default): the ``DRRBatch`` itself;
* :class:`VolumeTarget`: a :class:`~onthefly.sampling.batch.BiplanarBatch`, the
  crop resampled to an ``S^3`` grid in ``[0, 1]`` (X-ray to CT reconstruction);
* :class:`SequenceTarget`: a :class:`~onthefly.sampling.batch.SequenceBatch`,
  the views with their swept angles;
* :class:`NovelViewTarget`: a :class:`~onthefly.sampling.batch.NovelViewBatch`,
  a source view, target views (optionally at another resolution, never
  augmented), their relative angles and poses.

Each builder checks the configuration it serves and names the batch fields
it always fills (``fields``), so a training function can refuse a stream
that lacks what it needs before the first step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from .._checks import is_int
from ..geometry import CArm, relative_camera_pose
from ..projector import render
from ..volume import resample_to_cube, window_attenuation
from .batch import BiplanarBatch, DRRBatch, NovelViewBatch, SequenceBatch
from .layouts import AngularSequence

__all__ = ["TargetBuilder", "DRRTarget", "VolumeTarget", "SequenceTarget", "NovelViewTarget", "MAX_TARGET_SIZE"]

MAX_TARGET_SIZE = 512
"""Largest target view side :class:`NovelViewTarget` renders."""

_ALWAYS = ("images", "carm", "params", "step", "seed", "rank")


class TargetBuilder:
    """Turns the pipeline's :class:`DRRBatch` into a task's batch; subclasses are frozen dataclasses."""

    batch_type: type = DRRBatch
    needs_crops = False
    """Whether :meth:`build` reads ``batch.volume`` (the pipeline then keeps the crops)."""

    def check(self, config) -> None:
        """Raise ``ValueError`` naming the setting if ``config`` cannot feed this target."""

    def fields(self, config) -> tuple[str, ...]:
        """The batch fields that are never ``None`` under ``config``."""
        raise NotImplementedError

    def build(self, batch: DRRBatch, config):
        """The task's batch made from ``batch``."""
        raise NotImplementedError


def _drr_fields(config) -> tuple[str, ...]:
    optional = {
        "correspondence": config.correspondence,
        "labels": config.structures is not None,
        "volume": config.return_volume,
        "fracture": config.fractures is not None,
        "fracture_center": config.fractures is not None,
        "fracture_pixel": config.fractures is not None,
        "fracture_patch": config.fractures is not None,
        "fracture_visibility": config.fractures is not None,
        "fracture_invisible": config.fractures is not None,
        "fracture_kind": config.fractures is not None,
        "fracture_severity": config.fractures is not None,
    }
    kept = [item.name for item in fields(DRRBatch) if optional.get(item.name, True)]
    return tuple(kept)


@dataclass(frozen=True)
class DRRTarget(TargetBuilder):
    """The pipeline's :class:`DRRBatch` as it is."""

    def fields(self, config) -> tuple[str, ...]:
        return _drr_fields(config)

    def build(self, batch: DRRBatch, config) -> DRRBatch:
        return batch


def _without_crops(batch: DRRBatch, config) -> DRRBatch:
    return batch if config.return_volume else replace(batch, volume=None)


@dataclass(frozen=True)
class VolumeTarget(TargetBuilder):
    """The crop as an ``S^3`` volume in ``[0, 1]`` (:class:`BiplanarBatch`).

    The crop's attenuation resampled (anti-aliased trilinear,
    :func:`~onthefly.volume.resample_to_cube`) to ``size^3`` voxels spanning
    the crop box, then windowed to ``[0, 1]`` by the fixed
    :data:`~onthefly.volume.TARGET_HU_WINDOW` (not per sample).
    """

    size: int = 64
    batch_type = BiplanarBatch
    needs_crops = True

    def __post_init__(self) -> None:
        if not is_int(self.size) or self.size < 2:
            raise ValueError(f"volume_size: expected an int >= 2 (target voxels per axis), got {self.size!r}")

    def check(self, config) -> None:
        _refuse_geometric(config)

    def fields(self, config) -> tuple[str, ...]:
        return tuple(item.name for item in fields(BiplanarBatch))

    def build(self, batch: DRRBatch, config) -> BiplanarBatch:
        resampled, index_map = resample_to_cube(batch.volume.attenuation, self.size)
        volume = window_attenuation(resampled, mu_water=config.mu_water)
        volume_affine = batch.crop_affine @ index_map.to(batch.crop_affine.device)
        return BiplanarBatch(
            images=batch.images, volume=volume, volume_affine=volume_affine, carm=batch.carm,
            crop_affine=batch.crop_affine, params=batch.params, step=batch.step, seed=batch.seed, rank=batch.rank,
            drr=_without_crops(batch, config),
        )


@dataclass(frozen=True)
class SequenceTarget(TargetBuilder):
    """The views with their swept angle (:class:`SequenceBatch`); ``axis`` as the layout's."""

    axis: str = "z"
    batch_type = SequenceBatch

    def check(self, config) -> None:
        _refuse_geometric(config)
        if not isinstance(config.layout, AngularSequence):
            raise ValueError(f"target: SequenceTarget reads the angles an AngularSequence layout sweeps, got the "
                             f"layout {type(config.layout).__name__}")
        if config.layout.axis != self.axis:
            raise ValueError(f"target: SequenceTarget(axis={self.axis!r}) would report the angle the layout does "
                             f"not sweep; the layout has axis={config.layout.axis!r}")

    def fields(self, config) -> tuple[str, ...]:
        return tuple(item.name for item in fields(SequenceBatch))

    def build(self, batch: DRRBatch, config) -> SequenceBatch:
        swept = batch.params.alpha if self.axis == "z" else batch.params.beta
        return SequenceBatch(
            images=batch.images, angles=swept.to(device=batch.images.device, dtype=torch.float32), axis=self.axis,
            carm=batch.carm, params=batch.params, step=batch.step, seed=batch.seed, rank=batch.rank, drr=batch,
        )


@dataclass(frozen=True)
class NovelViewTarget(TargetBuilder):
    """A source view and target views with their relative geometry (:class:`NovelViewBatch`).

    The pipeline renders all ``1 + M`` views at ``image_size`` (and computes
    their correspondence). Targets at another resolution ``size = (H', W')``,
    or when the source is augmented, are rendered again without augmentation
    by cameras with the same poses and the pixel edge scaled by ``H / H'`` (the
    same field of view); the correspondence stays on the ``image_size`` grid.
    ``size=None`` is ``image_size``.
    """

    size: tuple[int, int] | None = None
    batch_type = NovelViewBatch
    needs_crops = True  # the targets may be rendered again from the crops

    def __post_init__(self) -> None:
        size = self.size
        if size is None:
            return
        size = (size, size) if is_int(size) else size
        if not isinstance(size, (tuple, list)) or len(size) != 2 or any(
            not is_int(s) for s in size
        ):
            raise ValueError(f"target_size: expected H' or (H', W') ints, or None, got {self.size!r}")
        if min(size) < 1 or max(size) > MAX_TARGET_SIZE:
            raise ValueError(f"target_size: expected sides in [1, {MAX_TARGET_SIZE}] pixels, got {tuple(size)}")
        object.__setattr__(self, "size", tuple(size))

    def target_size(self, config) -> tuple[int, int]:
        return config.image_size if self.size is None else self.size

    def renders_targets(self, config) -> bool:
        """Whether the targets are rendered apart (another size, or augmented sources)."""
        return self.target_size(config) != config.image_size or config.augmentation.changes_intensity

    def check(self, config) -> None:
        _refuse_geometric(config)
        height, width = self.target_size(config)
        if height % config.patch_size or width % config.patch_size:
            raise ValueError(f"target_size: expected sides divisible by patch_size {config.patch_size}, "
                             f"got {(height, width)}")
        if height * config.width != width * config.height:
            raise ValueError(f"target_size: expected the aspect ratio of image_size {config.height} x {config.width} "
                             f"(same field of view), got {height} x {width}")

    def fields(self, config) -> tuple[str, ...]:
        optional = {"correspondence": config.correspondence}
        return tuple(item.name for item in fields(NovelViewBatch) if optional.get(item.name, True))

    def build(self, batch: DRRBatch, config) -> NovelViewBatch:
        params, device = batch.params, batch.images.device
        height, width = self.target_size(config)
        target_carm = CArm(
            alpha=params.alpha[:, 1:], beta=params.beta[:, 1:], gamma=params.gamma[:, 1:], sid=params.sid[:, 1:],
            sdd=params.sdd[:, 1:], isocenter=params.isocenter[:, 1:], height=height, width=width,
            pixel_spacing=config.pixel_spacing * config.height / height,
        ).to(device=device, dtype=torch.float32)
        if self.renders_targets(config):
            targets = config.display(render(batch.volume, target_carm, method=config.method, mu_water=config.mu_water),
                                     pixel_spacing=config.pixel_spacing * config.height / height)
        else:
            targets = batch.images[:, 1:]
        relative_angles = torch.stack([params.alpha, params.beta, params.gamma], -1)
        relative_angles = relative_angles[:, 1:] - relative_angles[:, :1]
        views = params.carm(height=config.height, width=config.width, pixel_spacing=config.pixel_spacing)
        return NovelViewBatch(
            source=batch.images[:, :1], targets=targets,
            relative_angles=relative_angles.to(device=device, dtype=torch.float32),
            relative_pose=relative_camera_pose(views)[:, 1:].to(device=device, dtype=torch.float32),
            correspondence=batch.correspondence, carm=batch.carm, target_carm=target_carm, params=params,
            patch_size=batch.patch_size, step=batch.step, seed=batch.seed, rank=batch.rank,
            drr=_without_crops(batch, config),
        )


def _refuse_geometric(config) -> None:
    if config.augmentation.geometric > 0:
        raise ValueError(
            "augmentation: flips and quarter turns (geometric > 0) would break the geometry this task returns "
            "(poses, angles, relative poses); use intensity augmentation only"
        )
