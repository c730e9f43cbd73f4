"""Scattered radiation by kernel superposition: amplitude from the thickness, spread by a broad kernel.

Model (scatter-kernel superposition as in Love and Kruger 1987, Med. Phys.
14:178, with a thickness-dependent amplitude):

    S(u) = (K_h * (P a(t)))(u)

* ``P`` is the primary signal, ``t`` the water-equivalent thickness of each
  ray (cm): the material line integrals weighted by their spectrum-mean mass
  attenuation relative to water's;
* ``a(t) = A t^p`` is the scatter-to-primary ratio a wide, uniform slab of
  thickness ``t`` gives under a broad field; ``A`` and ``p`` (:data:`SCATTER_AMPLITUDE`,
  :data:`SCATTER_EXPONENT`) were fitted once so that the model's SPR at the
  centre of a 30 x 30 cm^2 field, detector at the slab's exit surface, meets
  the reference values :data:`REFERENCE_SPR` (see docs/physics.md);
* ``K_h`` is the projection on the detector of scatter leaving isotropically
  from a point a height ``h`` above it, the half-space Poisson kernel
  ``h / (2 pi (h^2 + r^2)^{3/2})`` (unit integral over the plane), with
  ``h = t / 2 + air gap`` (scatter comes from the middle of the body): an air
  gap spreads the scatter further, so less of it lands on the detector of a
  finite field, the air-gap effect.

An anti-scatter grid multiplies the primary by its primary transmission
``T_p`` and the scatter by its scatter transmission ``T_s`` (defaults: a
ratio-10 grid, ``T_p = 0.70``, ``T_s = 0.12``, typical values of grids made to
IEC 60627), so it lowers the SPR by ``T_s / T_p``.

The kernel is applied by FFT (zero padded: a linear convolution) on a grid
coarsened to about 64 pixels across (scatter is smooth), then interpolated
back. Everything is batched and differentiable, with static shapes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "REFERENCE_SPR",
    "SCATTER_AMPLITUDE",
    "SCATTER_EXPONENT",
    "GRID_PRIMARY_TRANSMISSION",
    "GRID_SCATTER_TRANSMISSION",
    "scatter_amplitude",
    "water_equivalent_thickness",
    "scatter_kernel",
    "scatter_signal",
]

REFERENCE_SPR = {10: 1.3, 20: 4.0, 30: 8.0}
"""Water slab thickness (cm) -> scatter-to-primary ratio, no grid, no air gap, 30 x 30 cm^2 field, 70-120 kV.

Scatter fractions 0.57, 0.80 and 0.89: the order that Monte Carlo studies (Boone and Cooper 2000, Med. Phys.
27:1818) and measurements (Sorenson and Floch 1985, Med. Phys. 12:308) report for water phantoms in this
geometry, where the SPR hardly depends on kV. They are round values recalled from that literature, not
transcribed from the papers' tables: check them against the papers before relying on them."""

SCATTER_AMPLITUDE = 0.00834
"""``A`` of ``a(t) = A t^p`` (t in cm)."""
SCATTER_EXPONENT = 2.327
"""``p`` of ``a(t) = A t^p``."""

GRID_PRIMARY_TRANSMISSION = 0.70
GRID_SCATTER_TRANSMISSION = 0.12

_SCATTER_GRID_PIXELS = 64  # the coarse grid's size (pixels across) for the convolution
_MIN_HEIGHT_MM = 1.0


def scatter_amplitude(thickness_cm: Tensor) -> Tensor:
    """Broad-field scatter-to-primary ratio ``A t^p`` of water-equivalent thickness ``t`` (cm), same shape."""
    return SCATTER_AMPLITUDE * thickness_cm.clamp_min(0.0).pow(SCATTER_EXPONENT)


def water_equivalent_thickness(material_integrals: Tensor, effective_attenuation: Tensor,
                               water_attenuation: Tensor) -> Tensor:
    """Water-equivalent thickness (cm) of each ray, ``(B, V, 1, H, W)``.

    Args:
        material_integrals: ``(B, V, M, H, W)`` g/cm^2.
        effective_attenuation: ``(B, M)`` spectrum-mean mass attenuation of each material, cm^2/g.
        water_attenuation: ``(B,)`` the same for water (1 g/cm^3).
    """
    ratio = effective_attenuation / water_attenuation[:, None]  # (B, M)
    return torch.einsum("bvmhw,bm->bvhw", material_integrals, ratio)[:, :, None]


def scatter_kernel(height_mm: Tensor, shape: tuple[int, int], spacing_mm: tuple[float, float]) -> Tensor:
    """Poisson kernels ``(N, 2h, 2w)`` for heights ``(N,)`` mm on a grid of ``shape = (h, w)`` pixels of
    ``spacing_mm = (dy, dx)``, laid out for FFT convolution (offset 0 at index 0, negative offsets wrapped).

    Each pixel holds the kernel's integral over it (its centre value times the area; the centre pixel gets
    the integral over the disc of the same area), so a kernel sums to the share of scatter that lands within
    the grid's reach.
    """
    rows, cols = 2 * shape[0], 2 * shape[1]
    dy, dx = spacing_mm
    device, dtype = height_mm.device, height_mm.dtype
    offset_y = torch.fft.fftfreq(rows, d=1.0 / rows, device=device, dtype=dtype) * dy
    offset_x = torch.fft.fftfreq(cols, d=1.0 / cols, device=device, dtype=dtype) * dx
    radius2 = offset_y[:, None] ** 2 + offset_x[None, :] ** 2  # (2h, 2w)
    h = height_mm.clamp_min(_MIN_HEIGHT_MM)[:, None, None]
    area = dx * dy
    kernel = h * area / (2.0 * math.pi * (h * h + radius2) ** 1.5)
    centre = 1.0 - h / torch.sqrt(h * h + area / math.pi)
    is_centre = (radius2 == 0).to(dtype)
    return kernel * (1.0 - is_centre) + centre * is_centre


def scatter_signal(primary: Tensor, thickness_cm: Tensor, *, scale: Tensor, air_gap_mm: Tensor,
                   pixel_spacing: float) -> Tensor:
    """Scatter reaching the detector (before any grid), in the primary's units, ``(B, V, 1, H, W)``.

    Args:
        primary: ``(B, V, 1, H, W)`` primary signal.
        thickness_cm: ``(B, V, 1, H, W)`` water-equivalent thickness (:func:`water_equivalent_thickness`).
        scale: ``(B,)`` factor on the amplitude (0: no scatter, 1: the model's).
        air_gap_mm: ``(B,)`` distance from the body's exit surface to the detector, mm.
        pixel_spacing: detector pixel size, mm.
    """
    b, v, _, height, width = primary.shape
    source = primary * scatter_amplitude(thickness_cm) * scale.to(primary.dtype).reshape(b, 1, 1, 1, 1)
    coarse = (min(height, _SCATTER_GRID_PIXELS), min(width, _SCATTER_GRID_PIXELS))
    spacing = (pixel_spacing * height / coarse[0], pixel_spacing * width / coarse[1])
    flat_source = F.adaptive_avg_pool2d(source.reshape(b * v, 1, height, width), coarse)
    # Scatter leaves from the middle of the body: half the source-weighted mean thickness, plus the air gap.
    flat_thickness = F.adaptive_avg_pool2d(thickness_cm.reshape(b * v, 1, height, width), coarse)
    weight = flat_source.sum((1, 2, 3))
    mean_thickness = (flat_source * flat_thickness).sum((1, 2, 3)) / weight.clamp_min(1e-12)
    heights = 5.0 * mean_thickness + air_gap_mm.to(primary.dtype).repeat_interleave(v)  # mm
    kernel = scatter_kernel(heights, coarse, spacing)  # (B*V, 2h, 2w)
    padded = F.pad(flat_source[:, 0], (0, coarse[1], 0, coarse[0]))
    spectrum = torch.fft.rfft2(padded) * torch.fft.rfft2(kernel)
    spread = torch.fft.irfft2(spectrum, s=padded.shape[-2:])[:, : coarse[0], : coarse[1]]
    fine = F.interpolate(spread[:, None], size=(height, width), mode="bilinear", align_corners=False)
    return fine.clamp_min(0.0).reshape(b, v, 1, height, width)
