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

Random numbers: from a ``torch.Generator`` when one is given, or else from a
counter-based generator keyed by each sample's ``noise_seed`` (drawn with the
other parameters): Box-Muller normals of 24-bit uniforms made by hashing
(seed, stream, pixel) with a 32-bit integer mixer (Wellons' "lowbias32").
It needs no generator object, so ``torch.compile(fullgraph=True)`` traces it
(generators cannot enter a compiled graph), and the noise is a pure function
of the parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NOISE_MODES", "standard_normal", "quantum_noise", "gaussian_blur", "electronic_noise"]

NOISE_MODES = ("gaussian", "poisson", "none")
_MASK32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """Wellons' lowbias32 integer hash of int64 tensors holding 32-bit values (products wrap; low bits kept)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _uniform(shape: torch.Size, seed: Tensor, stream: int, dtype: torch.dtype) -> Tensor:
    """Uniforms in (0, 1) of ``shape (B, ...)`` from per-sample ``seed (B,)`` int64 and a stream number."""
    per_sample = math.prod(shape[1:])
    counter = torch.arange(per_sample, device=seed.device, dtype=torch.int64) + stream * per_sample
    key_low = _mix32(seed & _MASK32)[:, None]
    key_high = _mix32((seed >> 32) & _MASK32 ^ 0x9E3779B9)[:, None]
    bits = _mix32(_mix32((counter[None] & _MASK32) ^ key_low) ^ key_high)
    return (((bits >> 8).to(dtype) + 0.5) / 2.0**24).reshape(shape)


def standard_normal(shape: torch.Size, seed: Tensor, stream: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``N(0, 1)`` samples of ``shape (B, ...)``, a pure function of ``seed (B,)`` (int64) and ``stream`` (int):
    Box-Muller on counter-based uniforms. Different streams give independent-looking draws."""
    first = _uniform(shape, seed, 2 * stream, torch.float64)
    second = _uniform(shape, seed, 2 * stream + 1, torch.float64)
    return (torch.sqrt(-2.0 * torch.log(first)) * torch.cos(2.0 * math.pi * second)).to(dtype)


def _normal_like(reference: Tensor, seed: Tensor, stream: int, generator: torch.Generator | None) -> Tensor:
    if generator is not None:
        return torch.randn(reference.shape, generator=generator, dtype=reference.dtype, device=reference.device)
    return standard_normal(reference.shape, seed, stream, reference.dtype)


def quantum_noise(expected: Tensor, seed: Tensor, *, mode: str = "gaussian",
                  generator: torch.Generator | None = None) -> Tensor:
    """Detected quanta ``(B, ...)`` from their expected numbers ``(B, ...)`` (>= 0): Poisson, Gaussian or none.

    ``seed (B,)`` int64 keys the counter-based noise when ``generator`` is ``None``. Poisson draws use
    ``generator``, or one seeded from ``seed`` (a host read: evaluation only).
    """
    if mode == "none":
        return expected
    if mode == "poisson":
        if generator is None:
            generator = torch.Generator(device=expected.device).manual_seed(int(seed[0]) & (2**63 - 1))
        return torch.poisson(expected.detach().clamp_min(0.0), generator=generator).to(expected.dtype)
    eps = _normal_like(expected, seed, 0, generator)
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


def electronic_noise(signal: Tensor, sigma: Tensor, seed: Tensor, *,
                     generator: torch.Generator | None = None) -> Tensor:
    """``signal (B, ...)`` plus Gaussian noise of standard deviation ``sigma (B,)`` quanta (keyed as
    :func:`quantum_noise`)."""
    eps = _normal_like(signal, seed, 1, generator)
    return signal + sigma.to(signal.dtype).reshape(-1, *(1,) * (signal.dim() - 1)) * eps
