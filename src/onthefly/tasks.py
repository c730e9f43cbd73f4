"""Task samplers for the other multi-view X-ray systems, drawn on the fly like the correspondence stream.

Three subclasses of :class:`~onthefly.sampler.DRRCorrespondenceSampler`. Each
keeps the parent's machinery (CTs resampled once, random crops, degenerate-draw
checks and redraws, seeded streams, resume, DataLoader workers) and imposes its
own view layout through the parent's ``_draw_poses`` hook; each returns its own
batch dataclass, with the parent's :class:`~onthefly.sampler.DRRBatch` kept in
``batch.drr``.

* :class:`BiplanarSampler` (X-Recon's set-up): a PA and a lateral view in, the
  CT crop resampled to an ``S^3`` grid in ``[0, 1]`` out; plus
  :class:`ProjectionLoss`, a differentiable multi-angle DRR loss (the role of
  X-Recon's projective spatial transformer).
* :class:`AngularSequenceSampler` (Xray2Xray's set-up): ``T`` views of one crop
  at evenly or randomly spaced angles around one axis, optionally with the
  geometry of a standing PA chest radiograph.
* :class:`NovelViewSampler` (SV-DRR's set-up): a source view, ``M`` target views
  (optionally at a higher resolution, up to 512 x 512, same field of view),
  their relative angles and relative camera poses, and the patch
  correspondence matrix.

Geometry follows :mod:`onthefly.geometry`: ``R = Rz(alpha) Rx(beta) Ry(gamma)``;
``alpha = beta = gamma = 0`` is an AP view with the source anterior;
``alpha = pi`` is PA (source posterior); ``alpha = +pi/2`` puts the source at
the patient's left. Angles in radians, lengths in mm.

Camera frame (used by :func:`camera_to_world` and ``relative_pose``): origin at
the X-ray source; ``x`` along the detector's column axis ``u`` (increasing
column), ``y`` along its row axis ``v`` (increasing row), ``z = x cross y``
along the principal ray, from the source towards the detector. In terms of
``R``: ``x = -R[:, 0]``, ``y = -R[:, 2]``, ``z = -R[:, 1]`` (a right-handed
frame, the usual computer-vision camera: x right, y down, z forward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_choice, check_positive_int
from .distributions import as_distribution
from .geometry import CArm, project_points
from .projector import METHODS, render, to_display
from .sampler import DRRBatch, DRRCorrespondenceSampler, _moved, _timed
from .volume import MU_WATER_PER_MM, VolumeBatch, attenuation_to_hu

__all__ = [
    "BiplanarSampler",
    "BiplanarBatch",
    "ProjectionLoss",
    "AngularSequenceSampler",
    "SequenceBatch",
    "NovelViewSampler",
    "NovelViewBatch",
    "camera_to_world",
    "relative_camera_pose",
    "TARGET_HU_WINDOW",
    "TARGET_ATTENUATION_SCALE",
    "CHEST_SID_MM",
    "CHEST_SDD_MM",
    "MAX_TARGET_SIZE",
]

TARGET_HU_WINDOW = (-1000.0, 2000.0)
"""HU mapped linearly to ``[0, 1]`` for reconstruction targets (air 0, dense bone 1); clamped outside."""

TARGET_ATTENUATION_SCALE = (TARGET_HU_WINDOW[1] - TARGET_HU_WINDOW[0]) / 1000.0 * MU_WATER_PER_MM
"""1/mm per unit of a ``[0, 1]`` target: ``mu = 0.06 * target`` undoes the window exactly below 2000 HU
(``mu = mu_water (1 + HU / 1000)`` and the window starts at air, -1000 HU)."""

CHEST_SID_MM = 1650.0
"""Source to isocenter of a standing PA chest radiograph: about 1800 mm source to detector, with the
mid-chest about 150 mm in front of the detector."""

CHEST_SDD_MM = 1800.0
"""Source to detector of a standing chest radiograph (the usual 180 cm, 72 inches)."""

MAX_TARGET_SIZE = 512
"""Largest target view side :class:`NovelViewSampler` renders."""

_INTENSITY_AUGMENTATIONS = ("brightness", "contrast", "invert", "gamma", "noise", "blur")
_LATERAL_ALPHA = {"left": -math.pi / 2, "right": math.pi / 2}
_DEFAULT_LOSS_ANGLES = ((math.pi, 0.0, 0.0), (-math.pi / 2, 0.0, 0.0), (0.0, math.pi / 2, 0.0))


# ---------------------------------------------------------------------------
# Camera frames


def camera_to_world(carm: CArm) -> Tensor:
    """``(B, V, 4, 4)`` rigid camera-to-world transforms (mm) of every view.

    The camera frame has its origin at the source, ``x`` along the detector's
    column axis, ``y`` along its row axis and ``z`` along the principal ray
    towards the detector (module docstring). A point with camera coordinates
    ``p`` is at world ``T[:3, :3] @ p + T[:3, 3]``.

    Example:
        >>> carm = CArm(alpha=torch.tensor([0.0, math.pi / 2]), sid=800.0, sdd=1000.0, height=8, pixel_spacing=1.0)
        >>> camera_to_world(carm).shape
        torch.Size([1, 2, 4, 4])
    """
    rotation = carm.rotation()
    axes = torch.stack([-rotation[..., :, 0], -rotation[..., :, 2], -rotation[..., :, 1]], -1)  # columns x, y, z
    transform = torch.zeros(*carm.batch_shape, 4, 4, dtype=carm.dtype, device=carm.device)
    transform[..., :3, :3] = axes
    transform[..., :3, 3] = carm.source_positions()
    transform[..., 3, 3] = 1.0
    return transform


def _rigid_inverse(transform: Tensor) -> Tensor:
    rotation_t = transform[..., :3, :3].transpose(-1, -2)
    inverse = torch.zeros_like(transform)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3] = -(rotation_t @ transform[..., :3, 3:])[..., 0]
    inverse[..., 3, 3] = 1.0
    return inverse


def relative_camera_pose(carm: CArm, *, source: int = 0) -> Tensor:
    """``(B, V, 4, 4)``: the rigid transform from view ``source``'s camera frame to each view's camera frame.

    ``T_rel[b, v] = inverse(camera_to_world[b, v]) @ camera_to_world[b, source]``:
    a point with coordinates ``p`` in the source camera frame has coordinates
    ``T_rel[b, v] @ p`` in view ``v``'s camera frame (mm; the identity for ``v = source``).
    """
    transforms = camera_to_world(carm)
    return _rigid_inverse(transforms) @ transforms[:, source : source + 1]


# ---------------------------------------------------------------------------
# Shared plumbing


def _reject_settings(owner: str, settings: dict, reasons: dict[str, str]) -> None:
    for name, reason in reasons.items():
        if name in settings:
            raise ValueError(f"{name}: {owner} sets it itself ({reason}), got {settings[name]!r}")


def _check_augmentation(settings: dict) -> None:
    augmentation = settings.get("augmentation")
    if augmentation is not None and getattr(augmentation, "geometric", 0) > 0:
        raise ValueError(
            "augmentation: flips and quarter turns (geometric > 0) would break the geometry this task returns "
            "(poses, angles, relative poses); use intensity augmentation only"
        )


def _check_angle(name: str, value, *, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number (radians), got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}: expected a value in [{low:g}, {high:g}] (radians), got {value!r}")
    return float(value)


class _ExtraParams:
    """Mixin: keep per-sample values a task's ``_draw_poses`` stores in ``self._extras`` with the drawn parameters.

    The parent's ``_draw_once`` keeps only the pose keys of ``_draw_poses``;
    task-specific draws (start angle, arc, relative angles) are added here so
    they go through redraws and land in ``batch.params`` like the others.
    """

    def _draw_once(self, generator: torch.Generator) -> dict[str, Tensor]:
        self._extras: dict[str, Tensor] = {}
        params = super()._draw_once(generator)
        params.update(self._extras)
        return params


class _SharedIsocenter:
    """Mixin: all views of a sample share the isocenter of view 0 (one C-arm rotating about one point).

    The parent draws a jitter per view; this keeps view 0's for every view and
    re-runs the degenerate-draw checks with the shared isocenter.
    """

    def _draw_once(self, generator: torch.Generator) -> dict[str, Tensor]:
        params = super()._draw_once(generator)
        params["isocenter"] = params["isocenter"][:, :1].expand_as(params["isocenter"]).clone()
        tissue, coverage = self._tissue_checks(params)
        params["tissue_fraction"] = tissue
        params["projection_fraction"] = coverage
        params["valid"] = (tissue >= self.min_tissue_fraction) & (coverage.amin(1) >= self.min_projection_fraction)
        return params


# ---------------------------------------------------------------------------
# Biplanar reconstruction


def _resample_to_cube(attenuation: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Resample ``(B, 1, d, h, w)`` crops onto an ``S^3`` grid spanning the same box.

    Anti-aliased trilinear resampling: along each axis the crop is first
    averaged over non-overlapping blocks of ``f = floor(n / S)`` voxels (none
    when ``n < 2 S``), then sampled trilinearly at the target voxel centres
    (clamped to the outermost block centres at the border). Both steps keep
    linear intensity ramps exact away from the border.

    Returns:
        ``(B, 1, S, S, S)`` and the ``(4, 4)`` float64 map from target index to crop index.
    """
    shape = attenuation.shape[2:]
    counts = torch.tensor(shape, dtype=torch.float64)
    scale = counts / size  # crop voxels per target voxel
    factor = [max(1, n // size) for n in shape]
    pooled = F.avg_pool3d(attenuation, kernel_size=factor, stride=factor) if max(factor) > 1 else attenuation
    pooled_shape = pooled.shape[2:]
    device, dtype = attenuation.device, attenuation.dtype
    axes = []
    for axis in range(3):
        target = torch.arange(size, dtype=torch.float64)
        crop_index = scale[axis] * (target + 0.5) - 0.5
        pooled_index = (crop_index - (factor[axis] - 1) / 2) / factor[axis]
        m = pooled_shape[axis]
        normalised = 2 * pooled_index / (m - 1) - 1 if m > 1 else torch.zeros_like(pooled_index)
        axes.append(normalised.to(device=device, dtype=dtype))
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], -1)  # (S, S, S, 3) as (x=w, y=h, z=d)
    grid = grid[None].expand(attenuation.shape[0], -1, -1, -1, -1)
    resampled = F.grid_sample(pooled, grid, mode="bilinear", padding_mode="border", align_corners=True)
    index_map = torch.eye(4, dtype=torch.float64)
    index_map[:3, :3] = torch.diag(scale)
    index_map[:3, 3] = (scale - 1) / 2
    return resampled, index_map


def _window(attenuation: Tensor, mu_water: float) -> Tensor:
    low, high = TARGET_HU_WINDOW
    return ((attenuation_to_hu(attenuation, mu_water=mu_water) - low) / (high - low)).clamp(0.0, 1.0)


@dataclass
class BiplanarBatch:
    """One batch of PA + lateral views and the CT crops they show, on a fixed grid.

    Attributes:
        images: ``(B, 2, 1, H, W)`` in ``[0, 1]``: view 0 is PA, view 1 the lateral.
        volume: ``(B, 1, S, S, S)`` the crop in ``[0, 1]``: HU windowed by
            :data:`TARGET_HU_WINDOW` (-1000 HU -> 0, 2000 HU -> 1, clamped).
            ``volume * TARGET_ATTENUATION_SCALE`` is the attenuation (1/mm).
        volume_affine: ``(B, 4, 4)`` float64, target grid index ``(i, j, k, 1)``
            -> world mm; the grid's voxel faces span the crop box exactly.
        carm: the cameras of the two views, ``(B, 2)``.
        crop_affine: ``(B, 4, 4)`` crop voxel index -> world mm (sampler spacing).
        params: every drawn parameter (``alpha, beta, gamma, sid, sdd``: ``(B, 2)``).
        step, seed, rank: the batch's place in its stream.
        drr: the parent sampler's batch (crop boxes, augmentation, ...).
    """

    images: Tensor
    volume: Tensor
    volume_affine: Tensor
    carm: CArm
    crop_affine: Tensor
    params: dict[str, Tensor]
    step: int
    seed: int
    rank: int
    drr: DRRBatch = field(repr=False)

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> "BiplanarBatch":
        return BiplanarBatch(**_moved(self, device))


class BiplanarSampler(DRRCorrespondenceSampler):
    """PA and lateral DRRs of random CT crops with the crop itself as the target (X-Recon's set-up).

    View 0 is a PA view (``alpha = pi``: source posterior, detector anterior).
    View 1 is a lateral view: ``lateral="left"`` (default, the usual chest
    lateral: the patient's left side at the detector, the source at the
    patient's right, ``alpha = -pi/2``) or ``"right"`` (``alpha = +pi/2``).
    Each view's ``alpha``, ``beta`` and ``gamma`` get independent uniform
    jitter in ``[-angle_jitter, angle_jitter]``, so the central rays meet at
    90 degrees within ``4 * angle_jitter``. ``sid`` and ``sdd`` come from the
    sampler's distributions (per view); isocenter jitter as the parent.

    The target is the crop's attenuation resampled (anti-aliased trilinear)
    to ``volume_size^3`` voxels spanning the crop box, then windowed to
    ``[0, 1]`` by the fixed :data:`TARGET_HU_WINDOW` (not per sample).

    Args:
        volume_size: ``S``, target voxels per axis (at least 2).
        angle_jitter: radians, in ``[0, pi/8]``.
        lateral: ``"left"`` or ``"right"``, the patient's side at the detector.
        **sampler_settings: any other :class:`~onthefly.sampler.DRRCorrespondenceSampler`
            setting (``volumes`` is required). ``views``, ``alpha``, ``beta`` and
            ``gamma`` are set here and rejected. Defaults that differ:
            ``correspondence=False``, ``augmentation=None``; geometric
            augmentation is rejected.

    Example:
        >>> sampler = BiplanarSampler(volumes=[example_volume()], volume_size=64, image_size=128, batch_size=4)
        >>> batch = sampler.sample(0)
        >>> batch.images.shape, batch.volume.shape, batch.volume_affine.shape
        (torch.Size([4, 2, 1, 128, 128]), torch.Size([4, 1, 64, 64, 64]), torch.Size([4, 4, 4]))
    """

    def __init__(
        self,
        *,
        volume_size: int = 64,
        angle_jitter: float = math.radians(3.0),
        lateral: str = "left",
        **sampler_settings,
    ) -> None:
        if isinstance(volume_size, bool) or not isinstance(volume_size, int) or volume_size < 2:
            raise ValueError(f"volume_size: expected an int >= 2 (target voxels per axis), got {volume_size!r}")
        self.volume_size = volume_size
        self.angle_jitter = _check_angle("angle_jitter", angle_jitter, high=math.pi / 8)
        self.lateral = check_choice("lateral", lateral, tuple(_LATERAL_ALPHA))
        _reject_settings(
            "BiplanarSampler",
            sampler_settings,
            {
                "views": "two views, PA and lateral",
                "alpha": "PA and lateral plus angle_jitter",
                "beta": "angle_jitter",
                "gamma": "angle_jitter",
            },
        )
        _check_augmentation(sampler_settings)
        sampler_settings.setdefault("correspondence", False)
        sampler_settings.setdefault("augmentation", None)
        self._keep_crops = bool(sampler_settings.pop("return_volume", False))
        super().__init__(views=2, return_volume=True, **sampler_settings)

    def _draw_poses(self, generator: torch.Generator) -> dict[str, Tensor]:
        b = self.batch_size
        centres = torch.tensor([math.pi, _LATERAL_ALPHA[self.lateral]], dtype=torch.float64)

        def jitter() -> Tensor:
            return (torch.rand(b, 2, generator=generator, dtype=torch.float64) * 2 - 1) * self.angle_jitter

        alpha = centres + jitter()
        beta = jitter()
        gamma = jitter()
        shape = (b, 2)
        return dict(alpha=alpha, beta=beta, gamma=gamma, sid=self.sid.sample(shape, generator),
                    sdd=self.sdd.sample(shape, generator))

    def sample(self, step: int, *, timings: dict[str, float] | None = None) -> BiplanarBatch:
        """Batch ``step`` of the stream (the same batch every time); ``timings`` as the parent's, plus ``"target"``."""
        drr = super().sample(step, timings=timings)
        with _timed(timings, "target", self.device), torch.no_grad():
            resampled, index_map = _resample_to_cube(drr.volume.attenuation, self.volume_size)
            volume = _window(resampled, self.mu_water)
            volume_affine = drr.crop_affine @ index_map.to(drr.crop_affine.device)
        if not self._keep_crops:
            drr.volume = None
        return BiplanarBatch(
            images=drr.images, volume=volume, volume_affine=volume_affine, carm=drr.carm, crop_affine=drr.crop_affine,
            params=drr.params, step=drr.step, seed=drr.seed, rank=drr.rank, drr=drr,
        )


class ProjectionLoss(nn.Module):
    """Mean L1 between DRRs of a predicted and a true volume from ``K`` fixed angles (differentiable).

    Both volumes, ``(B, 1, D, H, W)`` in ``[0, 1]`` as :class:`BiplanarSampler`
    gives them, are turned into attenuation (``mu = attenuation_scale * volume``,
    1/mm; the default undoes :data:`TARGET_HU_WINDOW`) and rendered with
    :func:`onthefly.render` from each angle, the isocenter at the centre of
    each sample's volume box. The loss is the mean absolute difference of the
    line integrals (dimensionless; about 0-5 for 200 mm crops), averaged over
    samples, angles and pixels. Gradients flow into the predicted volume (the
    renderer is differentiable; the true volume's DRRs are rendered without
    gradient).

    Args:
        angles: ``K`` poses as ``(alpha, beta)`` or ``(alpha, beta, gamma)``
            radians. Default: PA ``(pi, 0, 0)``, left lateral ``(-pi/2, 0, 0)``
            and axial ``(0, pi/2, 0)`` (source superior, rays along the
            patient's -z axis).
        height, width: detector pixels (``width`` defaults to ``height``).
        pixel_spacing: detector pixel edge (mm); ``None`` (default): per sample,
            the smallest spacing (plus 2 %) that keeps the whole volume box on
            the detector in every view.
        sid, sdd: source-to-isocenter and source-to-detector distances (mm);
            ``sid`` must exceed the volume's half-diagonal.
        attenuation_scale: 1/mm per unit of the volumes.
        method: projector method (``"trilinear"`` or ``"siddon"``).

    Example:
        >>> loss = ProjectionLoss(height=32)
        >>> volume = torch.rand(2, 1, 16, 16, 16, requires_grad=True)
        >>> affine = torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0], dtype=torch.float64)).expand(2, 4, 4)
        >>> loss.project(volume, affine).shape
        torch.Size([2, 3, 1, 32, 32])
        >>> loss(volume, torch.rand(2, 1, 16, 16, 16), affine).backward()
    """

    def __init__(
        self,
        *,
        angles: Sequence[Sequence[float]] = _DEFAULT_LOSS_ANGLES,
        height: int = 64,
        width: int | None = None,
        pixel_spacing: float | None = None,
        sid: float = 1000.0,
        sdd: float = 1200.0,
        attenuation_scale: float = TARGET_ATTENUATION_SCALE,
        method: str = "trilinear",
    ) -> None:
        super().__init__()
        poses = []
        try:
            items = list(angles)
        except TypeError as error:
            raise TypeError(f"angles: expected a sequence of (alpha, beta[, gamma]) tuples, got {angles!r}") from error
        if not items:
            raise ValueError("angles: expected at least one (alpha, beta[, gamma]) pose, got none")
        for index, pose in enumerate(items):
            values = list(pose) if isinstance(pose, (tuple, list, Tensor)) else None
            if values is None or len(values) not in (2, 3):
                raise ValueError(f"angles[{index}]: expected (alpha, beta) or (alpha, beta, gamma) radians, got {pose!r}")
            values = [float(v) for v in values] + [0.0] * (3 - len(values))
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"angles[{index}]: expected finite angles, got {pose!r}")
            poses.append(values)
        self.register_buffer("angles", torch.tensor(poses, dtype=torch.float64), persistent=False)  # (K, 3)
        self.height = check_positive_int("height", height)
        self.width = check_positive_int("width", height if width is None else width)
        for name, value in (("sid", sid), ("sdd", sdd), ("attenuation_scale", attenuation_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        if sdd <= sid:
            raise ValueError(f"sdd: expected the source-to-detector distance to exceed sid ({sid:g} mm), got {sdd:g}")
        if pixel_spacing is not None and (
            isinstance(pixel_spacing, bool) or not isinstance(pixel_spacing, (int, float))
            or not math.isfinite(pixel_spacing) or pixel_spacing <= 0
        ):
            raise ValueError(f"pixel_spacing: expected a positive number (mm) or None, got {pixel_spacing!r}")
        self.pixel_spacing = None if pixel_spacing is None else float(pixel_spacing)
        self.sid, self.sdd = float(sid), float(sdd)
        self.attenuation_scale = float(attenuation_scale)
        self.method = check_choice("method", method, METHODS)

    def extra_repr(self) -> str:
        return f"K={self.angles.shape[0]}, detector={self.height}x{self.width}, sid={self.sid:g}, sdd={self.sdd:g}"

    @staticmethod
    def _check(name: str, volume: Tensor) -> None:
        if not isinstance(volume, Tensor):
            raise TypeError(f"{name}: expected a tensor (B, 1, D, H, W), got {type(volume).__name__}")
        if volume.dim() != 5 or volume.shape[1] != 1:
            raise ValueError(f"{name}: expected shape (B, 1, D, H, W), got {tuple(volume.shape)}")

    def carm(self, shape: Sequence[int], volume_affine: Tensor) -> CArm:
        """The ``(B, K)`` cameras for volumes of grid ``shape = (D, H, W)`` placed by ``volume_affine (B, 4, 4)``."""
        affine = volume_affine.double()
        counts = torch.tensor(list(shape), dtype=torch.float64, device=affine.device)
        centre = (affine[:, :3, :3] @ ((counts - 1) / 2)[:, None])[..., 0] + affine[:, :3, 3]  # (B, 3)
        angles = self.angles.to(affine.device)
        poses = dict(alpha=angles[None, :, 0], beta=angles[None, :, 1], gamma=angles[None, :, 2], sid=self.sid,
                     sdd=self.sdd, isocenter=centre[:, None, :], height=self.height, width=self.width)
        if self.pixel_spacing is not None:
            return CArm(**poses, pixel_spacing=self.pixel_spacing)
        # Corners of the voxel box, projected with 1 mm pixels: offsets from the detector centre in mm.
        faces = [torch.stack([torch.full_like(n, -0.5), n - 0.5]) for n in counts]
        corner = torch.stack(torch.meshgrid(*faces, indexing="ij"), -1).reshape(8, 3)
        world = corner @ affine[:, :3, :3].transpose(1, 2) + affine[:, None, :3, 3]  # (B, 8, 3)
        unit = CArm(**poses, pixel_spacing=1.0)
        pixels = project_points(unit, world)  # (B, K, 8, 2)
        rows = (pixels[..., 0] - (self.height - 1) / 2).abs().flatten(1).amax(1) * 2 / self.height
        cols = (pixels[..., 1] - (self.width - 1) / 2).abs().flatten(1).amax(1) * 2 / self.width
        spacing = torch.maximum(rows, cols) * 1.02
        return CArm(**poses, pixel_spacing=spacing[:, None])

    def project(self, volume: Tensor, volume_affine: Tensor) -> Tensor:
        """DRRs ``(B, K, 1, H, W)`` (line integrals) of volumes ``(B, 1, D, H, W)`` in ``[0, 1]``."""
        self._check("volume", volume)
        if not isinstance(volume_affine, Tensor) or tuple(volume_affine.shape) != (volume.shape[0], 4, 4):
            got = tuple(volume_affine.shape) if isinstance(volume_affine, Tensor) else type(volume_affine).__name__
            raise ValueError(f"volume_affine: expected shape ({volume.shape[0]}, 4, 4), got {got}")
        batch = VolumeBatch(attenuation=volume * self.attenuation_scale, affine=volume_affine.to(volume.device))
        return render(batch, self.carm(volume.shape[2:], volume_affine), method=self.method)

    def forward(self, predicted: Tensor, target: Tensor, volume_affine: Tensor) -> Tensor:
        """Scalar mean L1 between the DRRs of ``predicted`` and ``target`` (both ``(B, 1, D, H, W)``)."""
        self._check("predicted", predicted)
        self._check("target", target)
        if predicted.shape != target.shape:
            raise ValueError(f"predicted, target: shapes differ, {tuple(predicted.shape)} vs {tuple(target.shape)}")
        with torch.no_grad():
            true_views = self.project(target.to(predicted.dtype), volume_affine)
        return (self.project(predicted, volume_affine) - true_views).abs().mean()


# ---------------------------------------------------------------------------
# Angular sequences


@dataclass
class SequenceBatch:
    """``T`` views of one crop per sample at increasing angles around one axis.

    Attributes:
        images: ``(B, T, 1, H, W)`` in ``[0, 1]``, in order of increasing angle.
        angles: ``(B, T)`` float32 radians, the swept angle (``alpha`` for
            ``axis="z"``, ``beta`` for ``axis="x"``), not wrapped: consecutive
            differences are the angular steps.
        axis: ``"z"`` or ``"x"``.
        carm: the cameras, ``(B, T)``.
        params: every drawn parameter (``start``, ``arc``: ``(B,)``; poses ``(B, T)``).
        step, seed, rank: the batch's place in its stream.
        drr: the parent sampler's batch.
    """

    images: Tensor
    angles: Tensor
    axis: str
    carm: CArm
    params: dict[str, Tensor]
    step: int
    seed: int
    rank: int
    drr: DRRBatch = field(repr=False)

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def length(self) -> int:
        """``T``."""
        return self.images.shape[1]

    def to(self, device: torch.device | str) -> "SequenceBatch":
        return SequenceBatch(**_moved(self, device))


class AngularSequenceSampler(_ExtraParams, _SharedIsocenter, DRRCorrespondenceSampler):
    """Sequences of ``T`` views of one crop at increasing angles around one axis (Xray2Xray's set-up).

    Per sample: a start angle ``a0`` and an arc ``A`` are drawn, and view ``k``
    (``k = 0 .. T-1``) is at ``a0 + k A / T`` (``angular_spacing="even"``) or at
    ``a0 + A u_k`` with ``u`` the sorted draws of ``T`` uniforms in ``[0, 1)``
    (``"random"``). ``axis="z"`` sweeps the primary angle ``alpha`` (rotation
    about the patient's long axis); ``axis="x"`` sweeps ``beta`` (cranio-caudal).
    The other angles, ``sid`` and ``sdd`` are drawn once per sample and shared
    by its views, and all views share one isocenter: one C-arm turning about
    one point.

    ``chest=True`` gives the geometry of a standing PA chest radiograph as the
    defaults: start at PA (``alpha = pi``; with ``axis="x"`` the fixed ``alpha``
    is PA), ``beta = 0`` (``axis="z"``), ``sid =`` :data:`CHEST_SID_MM` (1650 mm)
    and ``sdd =`` :data:`CHEST_SDD_MM` (1800 mm). Settings passed explicitly win.

    Args:
        views: ``T``, views per sequence (at least 2; default 8).
        angular_spacing: ``"even"`` or ``"random"``.
        arc: the angular extent ``A`` (radians): a number or a ``(low, high)``
            range drawn per sample, within ``(0, 2 pi]``.
        start: the first angle ``a0`` (radians): number, range or distribution;
            default ``(0, 2 pi)`` (``pi`` with ``chest=True``).
        axis: ``"z"`` (``alpha``) or ``"x"`` (``beta``).
        chest: standing chest-radiograph geometry (above).
        **sampler_settings: any other :class:`~onthefly.sampler.DRRCorrespondenceSampler`
            setting. The swept angle (``alpha`` for ``axis="z"``, ``beta`` for
            ``"x"``) is set here and rejected; the other angles use the
            sampler's distributions (view 0's if per view). ``views`` is ``T``
            (named as in the parent). Defaults that differ: ``correspondence=False``,
            ``augmentation=None``; geometric augmentation is rejected.

    Example:
        >>> sampler = AngularSequenceSampler(volumes=[example_volume()], views=8, image_size=128, batch_size=2)
        >>> batch = sampler.sample(0)
        >>> batch.images.shape, batch.angles.shape
        (torch.Size([2, 8, 1, 128, 128]), torch.Size([2, 8]))
    """

    def __init__(
        self,
        *,
        views: int = 8,
        angular_spacing: str = "even",
        arc=2 * math.pi,
        start=None,
        axis: str = "z",
        chest: bool = False,
        **sampler_settings,
    ) -> None:
        self.angular_spacing = check_choice("angular_spacing", angular_spacing, ("even", "random"))
        self.axis = check_choice("axis", axis, ("z", "x"))
        if not isinstance(chest, bool):
            raise TypeError(f"chest: expected a bool, got {chest!r}")
        self.chest = chest
        self.arc = as_distribution("arc", arc)
        low, high = self.arc.bounds()
        if not (low > 0 and high <= 2 * math.pi + 1e-9):
            raise ValueError(f"arc: expected arcs in (0, 2 pi] radians, got a range from {low:g} to {high:g}")
        if start is None:
            start = math.pi if chest else (0.0, 2 * math.pi)
        self.start = as_distribution("start", start)
        swept = "alpha" if axis == "z" else "beta"
        _reject_settings("AngularSequenceSampler", sampler_settings, {swept: f"axis={axis!r} sweeps it; use start and arc"})
        _check_augmentation(sampler_settings)
        if chest:
            sampler_settings.setdefault("sid", CHEST_SID_MM)
            sampler_settings.setdefault("sdd", CHEST_SDD_MM)
            sampler_settings.setdefault("beta" if axis == "z" else "alpha", 0.0 if axis == "z" else math.pi)
        sampler_settings.setdefault("correspondence", False)
        sampler_settings.setdefault("augmentation", None)
        super().__init__(views=views, **sampler_settings)

    def _draw_poses(self, generator: torch.Generator) -> dict[str, Tensor]:
        b, t = self.batch_size, self.views
        start = self.start.sample((b,), generator)
        arc = self.arc.sample((b,), generator)
        if self.angular_spacing == "even":
            fraction = torch.arange(t, dtype=torch.float64)[None] / t
        else:
            fraction = torch.rand(b, t, generator=generator, dtype=torch.float64).sort(-1).values
        swept = start[:, None] + arc[:, None] * fraction  # (B, T)

        def per_sample(name: str) -> Tensor:
            return getattr(self, name).sample((b, t), generator)[:, :1].expand(b, t).clone()

        poses = {name: per_sample(name) for name in ("alpha", "beta", "gamma", "sid", "sdd")}
        poses["alpha" if self.axis == "z" else "beta"] = swept
        self._extras = {"start": start, "arc": arc}
        return poses

    def sample(self, step: int, *, timings: dict[str, float] | None = None) -> SequenceBatch:
        """Batch ``step`` of the stream (the same batch every time); ``timings`` as the parent's."""
        drr = super().sample(step, timings=timings)
        swept = drr.params["alpha" if self.axis == "z" else "beta"]
        return SequenceBatch(
            images=drr.images, angles=swept.to(device=self.device, dtype=torch.float32), axis=self.axis,
            carm=drr.carm, params=drr.params, step=drr.step, seed=drr.seed, rank=drr.rank, drr=drr,
        )


# ---------------------------------------------------------------------------
# Novel views


@dataclass
class NovelViewBatch:
    """A source view, ``M`` target views and their relative geometry.

    Attributes:
        source: ``(B, 1, 1, H, W)`` in ``[0, 1]`` (augmented if the sampler augments).
        targets: ``(B, M, 1, H', W')`` in ``[0, 1]``, never augmented; the same
            field of view as the source (pixel edge scaled by ``H / H'``).
        relative_angles: ``(B, M, 3)`` float32 radians, target minus source
            ``(alpha, beta, gamma)``.
        relative_pose: ``(B, M, 4, 4)`` float32, the rigid transform (mm) from the
            source camera frame to each target camera frame
            (:func:`relative_camera_pose`; camera frame in the module docstring).
        correspondence: ``(B, (1+M) N, (1+M) N)`` patch correspondence of all
            views at the source resolution (``N = (H/k)(W/k)``; token ``a N + i``
            is patch ``i`` of view ``a``, view 0 the source), or ``None``.
        carm: the cameras of all views at the source resolution, ``(B, 1+M)``.
        target_carm: the cameras of the targets at their resolution, ``(B, M)``.
        params: every drawn parameter (``relative_alpha``, ``relative_beta``: ``(B, M)``).
        patch_size: ``k``.
        step, seed, rank: the batch's place in its stream.
        drr: the parent sampler's batch (all views at the source resolution).
    """

    source: Tensor
    targets: Tensor
    relative_angles: Tensor
    relative_pose: Tensor
    correspondence: Tensor | None
    carm: CArm
    target_carm: CArm
    params: dict[str, Tensor]
    patch_size: int
    step: int
    seed: int
    rank: int
    drr: DRRBatch = field(repr=False)

    @property
    def batch_size(self) -> int:
        return self.source.shape[0]

    @property
    def num_targets(self) -> int:
        """``M``."""
        return self.targets.shape[1]

    @property
    def source_target_correspondence(self) -> Tensor | None:
        """``(B, M, N, N)``: the blocks of ``correspondence`` between the source (rows) and each target (columns)."""
        if self.correspondence is None:
            return None
        n = (self.source.shape[-2] // self.patch_size) * (self.source.shape[-1] // self.patch_size)
        b, m = self.batch_size, self.num_targets
        rows = self.correspondence[:, :n, n:]  # (B, N, M*N)
        return rows.reshape(b, n, m, n).permute(0, 2, 1, 3)

    def to(self, device: torch.device | str) -> "NovelViewBatch":
        return NovelViewBatch(**_moved(self, device))


class NovelViewSampler(_ExtraParams, _SharedIsocenter, DRRCorrespondenceSampler):
    """A source view and ``M`` target views of the same crop, with their relative pose (SV-DRR's set-up).

    The source pose comes from the sampler's distributions (``alpha``, ``beta``,
    ``gamma``, ``sid``, ``sdd``). Target ``m`` has ``alpha = source alpha + d_alpha``
    and ``beta = source beta + d_beta``, with ``d_alpha`` drawn from
    ``relative_angle`` and ``d_beta`` from ``relative_beta``; its ``gamma``,
    ``sid``, ``sdd`` and isocenter are the source's (one C-arm turned about one
    point).

    The parent renders all ``1 + M`` views at ``image_size`` and computes their
    correspondence matrix (on by default). Targets at another resolution
    (``target_size``) are rendered separately by cameras with the same poses
    and the pixel edge scaled by ``H / H'``, so they show the same field of view;
    the correspondence stays on the ``image_size`` patch grid. Targets are
    never augmented; ``augmentation`` (intensity only) applies to the source.

    Args:
        targets: ``M``, at least 1.
        target_size: ``H'`` or ``(H', W')``, at most 512, divisible by ``patch_size``,
            with the aspect ratio of ``image_size``; ``None``: ``image_size``.
        relative_angle: ``d_alpha`` (radians): number, ``(low, high)`` range or distribution.
        relative_beta: ``d_beta`` (radians), the same forms; default 0.
        **sampler_settings: any other :class:`~onthefly.sampler.DRRCorrespondenceSampler`
            setting (``views`` is set here and rejected). Defaults that differ:
            ``augmentation=None``; geometric augmentation is rejected.

    Example:
        >>> sampler = NovelViewSampler(volumes=[example_volume()], targets=2, image_size=128, target_size=256,
        ...                            batch_size=2)
        >>> batch = sampler.sample(0)
        >>> batch.source.shape, batch.targets.shape, batch.relative_pose.shape, batch.correspondence.shape
        (torch.Size([2, 1, 1, 128, 128]), torch.Size([2, 2, 1, 256, 256]), torch.Size([2, 2, 4, 4]), torch.Size([2, 192, 192]))
    """

    def __init__(
        self,
        *,
        targets: int = 1,
        target_size: int | tuple[int, int] | None = None,
        relative_angle=(-math.pi / 2, math.pi / 2),
        relative_beta=0.0,
        **sampler_settings,
    ) -> None:
        if isinstance(targets, bool) or not isinstance(targets, int) or targets < 1:
            raise ValueError(f"targets: expected an int >= 1 (target views per sample), got {targets!r}")
        self.num_targets = targets
        self.relative_angle = as_distribution("relative_angle", relative_angle)
        self.relative_beta = as_distribution("relative_beta", relative_beta)
        _reject_settings("NovelViewSampler", sampler_settings, {"views": "1 + targets"})
        _check_augmentation(sampler_settings)
        sampler_settings.setdefault("augmentation", None)
        self._keep_crops = bool(sampler_settings.pop("return_volume", False))
        super().__init__(views=1 + targets, return_volume=True, **sampler_settings)
        size = (self.height, self.width) if target_size is None else target_size
        size = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
        if not isinstance(size, (tuple, list)) or len(size) != 2 or any(
            isinstance(s, bool) or not isinstance(s, int) for s in size
        ):
            raise ValueError(f"target_size: expected H' or (H', W') ints, or None, got {target_size!r}")
        size = tuple(size)
        if min(size) < 1 or max(size) > MAX_TARGET_SIZE:
            raise ValueError(f"target_size: expected sides in [1, {MAX_TARGET_SIZE}] pixels, got {size}")
        if size[0] % self.patch_size or size[1] % self.patch_size:
            raise ValueError(f"target_size: expected sides divisible by patch_size {self.patch_size}, got {size}")
        if size[0] * self.width != size[1] * self.height:
            raise ValueError(
                f"target_size: expected the aspect ratio of image_size {self.height} x {self.width} "
                f"(same field of view), got {size[0]} x {size[1]}"
            )
        self.target_height, self.target_width = size
        self.target_pixel_spacing = self.pixel_spacing * self.height / self.target_height
        augments = any(getattr(self.augmentation, name) != 0 for name in _INTENSITY_AUGMENTATIONS)
        # Targets are rendered apart when their size differs or the source views are augmented (targets never are).
        self._render_targets = size != (self.height, self.width) or augments

    def _draw_poses(self, generator: torch.Generator) -> dict[str, Tensor]:
        b, m = self.batch_size, self.num_targets
        shape = (b, 1 + m)
        source = {name: getattr(self, name).sample(shape, generator)[:, :1] for name in ("alpha", "beta", "gamma", "sid", "sdd")}
        d_alpha = self.relative_angle.sample((b, m), generator)
        d_beta = self.relative_beta.sample((b, m), generator)
        zero = torch.zeros(b, 1, dtype=torch.float64)
        self._extras = {"relative_alpha": d_alpha, "relative_beta": d_beta}
        return {
            "alpha": source["alpha"] + torch.cat([zero, d_alpha], 1),
            "beta": source["beta"] + torch.cat([zero, d_beta], 1),
            **{name: source[name].expand(shape).clone() for name in ("gamma", "sid", "sdd")},
        }

    def sample(self, step: int, *, timings: dict[str, float] | None = None) -> NovelViewBatch:
        """Batch ``step`` of the stream (the same batch every time); ``timings`` as the parent's, plus ``"targets"``."""
        drr = super().sample(step, timings=timings)
        params = drr.params
        device = self.device
        views = self._carm(params)  # float64, host
        target_carm = CArm(
            alpha=params["alpha"][:, 1:], beta=params["beta"][:, 1:], gamma=params["gamma"][:, 1:],
            sid=params["sid"][:, 1:], sdd=params["sdd"][:, 1:], isocenter=params["isocenter"][:, 1:],
            height=self.target_height, width=self.target_width, pixel_spacing=self.target_pixel_spacing,
        ).to(device=device, dtype=torch.float32)
        with _timed(timings, "targets", device), torch.no_grad():
            if self._render_targets:
                targets = to_display(render(drr.volume, target_carm, method=self.method))
            else:
                targets = drr.images[:, 1:]
        relative_angles = torch.stack(
            [params[name][:, 1:] - params[name][:, :1] for name in ("alpha", "beta", "gamma")], -1
        )
        relative_pose = relative_camera_pose(views)[:, 1:]
        if not self._keep_crops:
            drr.volume = None
        return NovelViewBatch(
            source=drr.images[:, :1], targets=targets,
            relative_angles=relative_angles.to(device=device, dtype=torch.float32),
            relative_pose=relative_pose.to(device=device, dtype=torch.float32),
            correspondence=drr.correspondence, carm=drr.carm, target_carm=target_carm, params=params,
            patch_size=self.patch_size, step=drr.step, seed=drr.seed, rank=drr.rank, drr=drr,
        )
