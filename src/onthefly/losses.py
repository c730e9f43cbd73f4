"""Losses that compare volumes through their projections.

:class:`ProjectionLoss` renders a predicted and a true volume from fixed
angles with the differentiable projector and compares the DRRs (the role of
X-Recon's projective spatial transformer), so a reconstruction network can be
trained on what its volume looks like in projection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_positive_int
from .geometry import CArm, project_points
from .projector import METHODS, render
from .volume import TARGET_ATTENUATION_SCALE, VolumeBatch

__all__ = ["ProjectionLoss", "DEFAULT_LOSS_ANGLES"]

DEFAULT_LOSS_ANGLES = ((math.pi, 0.0, 0.0), (-math.pi / 2, 0.0, 0.0), (0.0, math.pi / 2, 0.0))
"""PA, left lateral and axial (source superior) poses ``(alpha, beta, gamma)``, radians."""


class ProjectionLoss(nn.Module):
    """Mean L1 between DRRs of a predicted and a true volume from ``K`` fixed angles (differentiable).

    Both volumes, ``(B, 1, D, H, W)`` in ``[0, 1]`` as :class:`~onthefly.tasks.BiplanarSampler`
    gives them, are turned into attenuation (``mu = attenuation_scale * volume``,
    1/mm; the default undoes :data:`~onthefly.volume.TARGET_HU_WINDOW`) and rendered with
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
        angles: Sequence[Sequence[float]] = DEFAULT_LOSS_ANGLES,
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
