"""The flat-panel detector: quantum noise, scintillator blur, electronic noise.

* Quanta: the expected number of detected quanta per pixel is the dose
  (photons per pixel at the unattenuated detector) times the relative signal.
  Their count is Poisson distributed (``noise="poisson"``, exact, for
  evaluation; not differentiable) or approximated by a Gaussian of the same
  mean and variance, reparameterised as ``mean + sqrt(mean) * eps`` with
  ``eps ~ N(0, 1)`` (``noise="gaussian"``, differentiable in the mean). The
  energy-integrating detector's Swank factor is left out: variance equals mean.
* Blur: the light spread of the CsI scintillator as a Gaussian point-spread
  function of standard deviation ``blur_mm`` on the detector (a Gaussian MTF,
  ``exp(-2 pi^2 sigma^2 f^2)``; 0.16 mm gives MTF 0.6 at 1 line pair per mm,
  the order of CsI panels), applied after the quanta are counted (the blur
  correlates the noise, as in a real panel).
* Electronic noise: additive Gaussian read-out noise, standard deviation in
  quanta per pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NOISE_MODES", "quantum_noise", "gaussian_blur", "electronic_noise"]

NOISE_MODES = ("gaussian", "poisson", "none")


def quantum_noise(expected: Tensor, generator: torch.Generator | None, *, mode: str = "gaussian") -> Tensor:
    """Detected quanta ``(...)`` from their expected numbers ``(...)`` (>= 0): Poisson, Gaussian or none."""
    if mode == "none":
        return expected
    if mode == "poisson":
        return torch.poisson(expected.detach().clamp_min(0.0), generator=generator).to(expected.dtype)
    eps = torch.randn(expected.shape, generator=generator, dtype=expected.dtype, device=expected.device)
    return expected + torch.sqrt(expected.clamp_min(1e-12)) * eps


def blur_radius(blur_mm: float, pixel_spacing: float) -> int:
    """Half-width (pixels) of the blur kernel that holds 4 standard deviations of ``blur_mm``."""
    return max(1, math.ceil(4.0 * blur_mm / pixel_spacing))


def gaussian_blur(images: Tensor, blur_mm: Tensor, *, pixel_spacing: float, radius: int) -> Tensor:
    """Separable Gaussian blur of ``(B, V, C, H, W)`` with per-sample ``blur_mm (B,)`` (mm on the detector).

    ``radius`` (pixels, static) bounds the kernel; a ``blur_mm`` of 0 leaves the image unchanged. Edges are
    replicated.
    """
    b, v, c, h, w = images.shape
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    sigma = (blur_mm.to(images.dtype) / pixel_spacing).clamp_min(1e-3)  # pixels
    kernel = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(-1, keepdim=True)  # (B, K)
    groups = b * v * c
    kernel = kernel.repeat_interleave(v * c, dim=0)  # (B*V*C, K)
    flat = images.reshape(1, groups, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(groups, 1, 1, -1),
                    groups=groups)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(groups, 1, -1, 1),
                    groups=groups)
    return flat.reshape(b, v, c, h, w)


def electronic_noise(signal: Tensor, sigma: Tensor, generator: torch.Generator | None) -> Tensor:
    """``signal (B, ...)`` plus Gaussian noise of standard deviation ``sigma (B,)`` quanta."""
    eps = torch.randn(signal.shape, generator=generator, dtype=signal.dtype, device=signal.device)
    return signal + sigma.to(signal.dtype).reshape(-1, *(1,) * (signal.dim() - 1)) * eps
