"""Anatomical variation of any CT on the fly: a random affine and a smooth elastic displacement per crop.

Each crop is resampled (one trilinear ``grid_sample`` for the batch, nearest
for its labels) at ``x' = c + A^-1 (x - c) + u(x)``: ``x`` a voxel centre of
the output crop and ``c`` the crop's centre (crop-local mm), ``A`` a linear
map (a scale per axis times a shear), ``u`` a displacement field interpolated
(trilinearly, corners aligned) from a coarse grid of control-point
displacements, as TorchIO's ``RandomElasticDeformation`` parameterises it
(Perez-Garcia, Sparks and Ourselin 2021, Comput Methods Programs Biomed
208:106236). Voxels that read outside the crop become air. The sampler
applies it to the crop before fractures and rendering, and computes the
correspondence from the deformed crop, so the ground truth stays exact.

Parameters are drawn apart from their use (:meth:`AnatomyVariation.draw`
gives :class:`AnatomyParams`), so a batch is reproducible from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_int, check_real

__all__ = ["AnatomyVariation", "AnatomyParams", "deform_crops", "sampling_grid"]

AIR_ATTENUATION = 0.0
"""What voxels read from outside the crop become (1/mm): air."""
GRID_BYTES = 64 * 2**20
"""Largest sampling grid built at once (bytes): crops are deformed in chunks of output slices below it."""


@dataclass(frozen=True, kw_only=True)
class AnatomyVariation:
    """How much each crop's anatomy varies: scale, shear and a smooth elastic displacement.

    Attributes:
        scale: largest relative change of size per axis, in ``[0, 0.5]``: each
            axis is scaled by a factor uniform in ``[1 - scale, 1 + scale]`` (0.1: +-10 %).
        shear: largest shear per axis pair, in ``[0, 0.5]`` (uniform in ``[-shear, shear]``).
        elastic: largest displacement of a control point per axis, mm in ``[0, 50]``
            (uniform in ``[-elastic, elastic]``; 0: no elastic part).
        control_points: control points per axis of the displacement grid, ``[4, 16]``
            (the field is smooth on the scale of the crop over ``control_points - 1``).

    Example:
        >>> variation = AnatomyVariation(scale=0.1, shear=0.05, elastic=4.0)
        >>> params = variation.draw(2, torch.Generator().manual_seed(0))
        >>> params.matrix.shape, params.displacement.shape
        (torch.Size([2, 3, 3]), torch.Size([2, 3, 5, 5, 5]))
    """

    scale: float = 0.1
    shear: float = 0.05
    elastic: float = 4.0
    control_points: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", check_real("scale", self.scale, low=0.0, high=0.5))
        object.__setattr__(self, "shear", check_real("shear", self.shear, low=0.0, high=0.5))
        object.__setattr__(self, "elastic", check_real("elastic", self.elastic, low=0.0, high=50.0, unit="mm"))
        object.__setattr__(self, "control_points", check_int("control_points", self.control_points, minimum=4,
                                                             maximum=16))

    def draw(self, batch_size: int, generator: torch.Generator) -> "AnatomyParams":
        """``batch_size`` draws on ``generator`` (host tensors, float64 matrix, float32 displacements)."""
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        uniform = lambda *shape: 2.0 * torch.rand(*shape, generator=generator, dtype=torch.float64) - 1.0
        scale = 1.0 + self.scale * uniform(batch_size, 3)
        shear = self.shear * uniform(batch_size, 3)
        matrix = torch.diag_embed(scale)
        for k, (row, col) in enumerate(((0, 1), (0, 2), (1, 2))):
            matrix[:, row, col] = shear[:, k] * scale[:, col]
        points = self.control_points
        displacement = (self.elastic * uniform(batch_size, 3, points, points, points)).float()
        return AnatomyParams(matrix=matrix, displacement=displacement)


@dataclass(frozen=True, kw_only=True)
class AnatomyParams:
    """One batch's anatomical variation.

    Attributes:
        matrix: ``(B, 3, 3)`` float64, the linear map ``A`` about the crop's centre (crop axes).
        displacement: ``(B, 3, c, c, c)`` float32 mm, the control points' displacements along the crop's axes.
    """

    matrix: Tensor
    displacement: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.matrix, Tensor) or self.matrix.dim() != 3 or self.matrix.shape[1:] != (3, 3):
            raise ValueError(f"matrix: expected shape (B, 3, 3), got {getattr(self.matrix, 'shape', self.matrix)}")
        if (not isinstance(self.displacement, Tensor) or self.displacement.dim() != 5
                or self.displacement.shape[1] != 3 or self.displacement.shape[0] != self.matrix.shape[0]):
            raise ValueError(f"displacement: expected shape (B, 3, c, c, c) with B = {self.matrix.shape[0]}, got "
                             f"{getattr(self.displacement, 'shape', self.displacement)}")

    @property
    def batch_size(self) -> int:
        return self.matrix.shape[0]

    def rows(self, index: Tensor) -> "AnatomyParams":
        """The parameters of samples ``index``."""
        return replace(self, matrix=self.matrix[index], displacement=self.displacement[index])

    def to(self, device) -> "AnatomyParams":
        return replace(self, matrix=self.matrix.to(device), displacement=self.displacement.to(device))


def _tent_weights(size: int, points: int, device) -> Tensor:
    """``(size, points)`` weights of linear interpolation from ``points`` control points to ``size`` voxels.

    Corners aligned (the first and last control points sit on the first and last voxel centres), as
    ``F.interpolate(..., align_corners=True)`` places them; each row has at most two nonzero weights.
    """
    position = torch.arange(size, device=device, dtype=torch.float32) * ((points - 1) / max(size - 1, 1))
    nodes = torch.arange(points, device=device, dtype=torch.float32)
    return (1.0 - (position[:, None] - nodes[None, :]).abs()).clamp_min(0.0)


def sampling_grid(params: AnatomyParams, shape: tuple[int, int, int], spacing: Tensor,
                  depth: tuple[int, int] | None = None) -> Tensor:
    """``(B, D, H, W, 3)`` normalised ``grid_sample`` coordinates (x = W axis first) where each output voxel reads.

    ``depth``: only output slices ``[start, stop)`` along D (``(B, stop - start, H, W, 3)``), for bounded memory.

    ``spacing`` ``(3,)`` or ``(B, 3)`` mm along the crop's D, H, W axes. With corners aligned, a read position
    ``x'`` (mm from the crop's centre) is ``2 x' / (spacing (n - 1))`` in normalised units. Both parts of the map
    are interpolated from the control grid at once: linear interpolation reproduces a linear function exactly,
    so the linear part ``A^-1 x`` is added at the control points, and the sum is expanded to every voxel by
    separable contractions, the last of which (along D, two control slices per output slice) writes the grid in
    its final layout (one pass over the ``B * D * H * W * 3`` output). No host reads (compiles without breaks).
    """
    return _blend_depth(_control_planes(params, shape, spacing), shape[0], (0, shape[0]) if depth is None else depth)


def _control_planes(params: AnatomyParams, shape: tuple[int, int, int], spacing: Tensor) -> Tensor:
    """``(B, c, H, W, 3)``: the map (linear part and displacement) at every voxel of the D-axis control planes."""
    device = params.displacement.device
    batch, points = params.batch_size, params.displacement.shape[-1]
    spacing = spacing.to(device=device, dtype=torch.float32).reshape(-1, 3).expand(batch, 3)
    size = torch.tensor(shape, device=device, dtype=torch.float32)
    scale = 2.0 / (spacing * (size - 1).clamp_min(1.0))  # (B, 3) normalised units per mm, per axis
    inverse = torch.linalg.inv(params.matrix.to(device)).to(torch.float32)  # (B, 3, 3): x' = A^-1 x
    columns = (inverse * scale[:, :, None] * spacing[:, None, :]).flip(1)  # (B, out in W, H, D order, axis)
    control = (params.displacement.to(device=device, dtype=torch.float32)
               * scale[:, :, None, None, None]).flip(1).permute(0, 2, 3, 4, 1)  # (B, c, c, c, 3)
    for axis, n in enumerate(shape):  # the linear part at the control points, in voxel steps from the centre
        steps = torch.arange(points, device=device, dtype=torch.float32) * ((n - 1) / (points - 1)) - (n - 1) / 2
        view = [1, 1, 1, 1, 1]
        view[axis + 1] = points
        control = control + steps.view(view) * columns[:, None, None, None, :, axis]
    height, width = shape[1:]
    planes = torch.einsum("bijkc,wk->bijwc", control, _tent_weights(width, points, device))
    return torch.einsum("bijwc,hj->bihwc", planes, _tent_weights(height, points, device))


def _blend_depth(planes: Tensor, depth: int, slices: tuple[int, int]) -> Tensor:
    """Output slices ``[start, stop)`` of a crop ``depth`` deep from the control planes ``(B, c, H, W, 3)``: each
    blends the two planes around it (the same arithmetic whichever chunk of slices is asked for)."""
    points = planes.shape[1]
    position = (torch.arange(*slices, device=planes.device, dtype=torch.float32)
                * ((points - 1) / max(depth - 1, 1)))
    below = position.floor().clamp(0, points - 2)
    fraction = (position - below).view(1, -1, 1, 1, 1)
    below = below.long()
    return planes[:, below] * (1.0 - fraction) + planes[:, below + 1] * fraction


def deform_crops(attenuation: Tensor, labels: Tensor | None, params: AnatomyParams,
                 spacing: Tensor | tuple[float, float, float]) -> tuple[Tensor, Tensor | None]:
    """Deformed crops: attenuation ``(B, D, H, W)`` 1/mm (trilinear) and labels (nearest), same shapes.

    Differentiable with respect to the attenuation. Outside the crop reads air (0) and label 0.

    Example:
        >>> crops = torch.rand(2, 8, 8, 8) * 0.02
        >>> params = AnatomyVariation(scale=0.0, shear=0.0, elastic=0.0).draw(2, torch.Generator())
        >>> out, _ = deform_crops(crops, None, params, (2.0, 2.0, 2.0))
        >>> torch.allclose(out, crops, atol=1e-6)  # the identity
        True
    """
    if attenuation.dim() != 4:
        raise ValueError(f"attenuation: expected shape (B, D, H, W), got {tuple(attenuation.shape)}")
    if params.batch_size != attenuation.shape[0]:
        raise ValueError(f"params: expected {attenuation.shape[0]} samples, got {params.batch_size}")
    spacing = torch.as_tensor(spacing, dtype=torch.float32)
    batch, depth, height, width = attenuation.shape
    shape = (depth, height, width)
    # output slices in chunks whose grid stays under GRID_BYTES (a 200^3 crop's whole grid would take 96 MB each)
    chunk = max(1, min(depth, GRID_BYTES // (12 * batch * height * width)))
    planes = _control_planes(params, shape, spacing)  # once: each chunk only blends its slices from them
    deformed, deformed_labels = [], []
    for start in range(0, depth, chunk):
        grid = _blend_depth(planes, depth, (start, min(start + chunk, depth))).to(attenuation.dtype)
        deformed.append(F.grid_sample(attenuation[:, None], grid, mode="bilinear", padding_mode="zeros",
                                      align_corners=True)[:, 0])
        if labels is not None:
            deformed_labels.append(F.grid_sample(labels[:, None].to(grid.dtype), grid, mode="nearest",
                                                 padding_mode="zeros", align_corners=True)[:, 0].round()
                                   .to(labels.dtype))
    return (deformed[0] if len(deformed) == 1 else torch.cat(deformed, 1),
            None if labels is None else deformed_labels[0] if len(deformed_labels) == 1 else torch.cat(deformed_labels, 1))


def largest_displacement_mm(variation: AnatomyVariation, extent_mm: float) -> float:
    """An upper bound of how far any voxel of a crop of ``extent_mm`` moves (for documentation and tests)."""
    linear = math.sqrt(3) * extent_mm / 2 * (variation.scale / (1 - variation.scale) + 2 * variation.shear)
    return linear + math.sqrt(3) * variation.elastic
