"""Tissues of the phantoms: CT numbers and their sources, the trabecular texture, partial volume, CT noise.

CT numbers (HU) per tissue: the published range (what the tests hold the
phantoms to) and the narrower range each phantom draws its value from
(``DRAWN_HU``), so that a tissue's mean stays inside its published range once
partial volume and noise are added.

==========  ===============  ============  ===========================================================
tissue      published (HU)   drawn (HU)    source
==========  ===============  ============  ===========================================================
cortical    1000 to 1900     1300 to 1800  Schneider, Bortfeld & Schlegel 2000, Phys Med Biol 45:459
                                           (ICRU cortical bone, 1.92 g/cm^3); Kalender 2011, Computed
                                           Tomography, 3rd ed. (compact bone above 1000 HU)
cancellous  150 to 400       180 to 350    Schreiber et al. 2011, J Bone Joint Surg Am 93:1057
                                           (texture average)  (trabecular bone about 100-300 HU); Kalender 2011
marrow      -120 to -50      -110 to -70   yellow (fatty) marrow of adult long-bone shafts, near fat:
                                           Schneider et al. 2000 (yellow marrow); Kalender 2011
fat         -120 to -80      -115 to -85   Kvist et al. 1988, Am J Clin Nutr 48:1351 (adipose tissue
                                           -190 to -30, mode near -100); Kalender 2011
muscle      30 to 60         35 to 55      Goodpaster et al. 2000, J Appl Physiol 89:104 (normal muscle
                                           attenuation about 40-50 HU); Kalender 2011
skin        0 to 60          10 to 50      soft tissue: Schneider et al. 2000 (ICRU skin); Kalender 2011
air         -1000            -1000         definition of the Hounsfield scale
==========  ===============  ============  ===========================================================

CT noise: Gaussian, standard deviation drawn in 10 to 20 HU per phantom
(typical of clinical CT at standard dose, Kalender 2011), seeded.

Trabecular texture: white noise band-passed by a difference of Gaussians
(standard deviations 0.5 and 1.0 mm across the limb, 1.5 times longer along
it, as trabeculae run along the load), normalised to unit variance (computed
from the kernels, not from the data), and thresholded softly around zero into
a connected network of plates and rods ``T = sigmoid((0.55 - |n|) / 0.15)``.
Cancellous bone is ``mean + contrast * (mean - marrow) * (T / E[T] - 1)``, so
its average is the drawn cancellous value and it never falls below marrow.

Partial volume: a tissue bounded by a signed distance ``d`` (mm) covers
``clamp(0.5 - d / h, 0, 1)`` of a voxel of edge ``h``; nested tissues (skin over
fat over muscle; cortex over the marrow space) are differences of coverages.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: F401  (padding of the kernels)
from torch import Tensor

__all__ = [
    "AIR_HU",
    "PUBLISHED_HU",
    "DRAWN_HU",
    "NOISE_STD_HU",
    "TEXTURE_SIGMA_MM",
    "coverage",
    "TrabecularTexture",
]

AIR_HU = -1000.0
PUBLISHED_HU: dict[str, tuple[float, float]] = {
    "cortical": (1000.0, 1900.0),
    "cancellous": (150.0, 400.0),
    "marrow": (-120.0, -50.0),
    "fat": (-120.0, -80.0),
    "muscle": (30.0, 60.0),
    "skin": (0.0, 60.0),
}
"""Published HU range per tissue (see the module's table for the sources)."""
DRAWN_HU: dict[str, tuple[float, float]] = {
    "cortical": (1300.0, 1800.0),
    "cancellous": (180.0, 350.0),
    "marrow": (-110.0, -70.0),
    "fat": (-115.0, -85.0),
    "muscle": (35.0, 55.0),
    "skin": (10.0, 50.0),
}
"""HU range each phantom draws a tissue's value from (inside :data:`PUBLISHED_HU`)."""
NOISE_STD_HU = (10.0, 20.0)
"""Range of the CT noise standard deviation, HU."""
TEXTURE_CONTRAST = (0.45, 0.65)
"""Range of the trabecular contrast (share of cancellous minus marrow HU that the texture swings)."""
TEXTURE_SIGMA_MM = (0.5, 1.0)
"""Standard deviations (mm, across the limb) of the two Gaussians whose difference band-passes the texture."""
TEXTURE_ELONGATION = 1.5
"""The texture's Gaussians are this many times longer along the limb (world z)."""
_RIDGE, _SOFTNESS = 0.55, 0.15


def coverage(distance: Tensor, voxel: float) -> Tensor:
    """Share of a voxel of edge ``voxel`` mm inside a surface at signed ``distance`` mm (negative inside)."""
    return (0.5 - distance / voxel).clamp(0.0, 1.0)


def _kernel(sigma_voxels: float) -> Tensor:
    radius = max(1, math.ceil(3.0 * sigma_voxels))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / max(sigma_voxels, 1e-3)) ** 2)
    return weights / weights.sum()


def _blur_valid(field: Tensor, kernels: list[list[float]]) -> Tensor:
    """Separable convolution of ``(n1, n2, n3)`` with one 1-D kernel (host weights) per axis, keeping only the
    valid part (weighted sums of shifted views: several times faster than ``conv3d`` with thin kernels on a CPU)."""
    for axis, weights in enumerate(kernels):
        size = field.shape[axis] - len(weights) + 1
        total = field.narrow(axis, 0, size) * weights[0]
        for shift, weight in enumerate(weights[1:], 1):
            total = total + field.narrow(axis, shift, size) * weight
        field = total
    return field


class TrabecularTexture:
    """The trabecular network ``T`` in ``[0, 1]`` on a box of the grid (see the module's description).

    White noise is drawn once for the box (plus a margin for the blur) with
    ``generator``; :meth:`block` returns ``T`` on any sub-box, the same values
    whichever sub-boxes are asked for.

    Args:
        start, stop: the box, voxel indices of the grid (3 ints each).
        voxel: voxel edge, mm.
        generator: a ``torch.Generator`` on ``device``.
    """

    def __init__(self, start: tuple[int, int, int], stop: tuple[int, int, int], voxel: float,
                 generator: torch.Generator, device: torch.device) -> None:
        sigmas = [[s / voxel, s / voxel, TEXTURE_ELONGATION * s / voxel] for s in TEXTURE_SIGMA_MM]
        self.kernels = [[_kernel(s) for s in per_axis] for per_axis in sigmas]
        self.weights = [[kernel.tolist() for kernel in kernels] for kernels in self.kernels]  # host: no reads later
        self.halo = [max(k[axis].numel() // 2 for k in self.kernels) for axis in range(3)]
        self.start = tuple(start[i] - self.halo[i] for i in range(3))
        shape = tuple(stop[i] - start[i] + 2 * self.halo[i] for i in range(3))
        self.noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        # variance of the difference of the two separable kernels applied to unit white noise (exact, host)
        fine, coarse = self.kernels
        cross = 1.0
        for axis in range(3):
            a, b = fine[axis], coarse[axis]
            pad = (b.numel() - a.numel()) // 2
            cross *= float((F.pad(a, (pad, pad)) * b).sum())
        variance = math.prod(float((k * k).sum()) for k in fine) + math.prod(float((k * k).sum()) for k in coarse)
        self.scale = 1.0 / math.sqrt(max(variance - 2.0 * cross, 1e-12))
        # E[T] for a unit Gaussian n (quadrature)
        z = torch.linspace(-8.0, 8.0, 4001, dtype=torch.float64)
        density = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        self.mean = float((torch.sigmoid((_RIDGE - z.abs()) / _SOFTNESS) * density).sum() * (z[1] - z[0]))

    def block(self, start: tuple[int, int, int], stop: tuple[int, int, int]) -> Tensor:
        """``T`` on grid voxels ``start`` to ``stop`` (exclusive), which lie inside the box."""
        fields = []
        for weights in self.weights:
            reach = [len(w) // 2 for w in weights]
            index = tuple(slice(start[i] - self.start[i] - reach[i], stop[i] - self.start[i] + reach[i]) for i in range(3))
            fields.append(_blur_valid(self.noise[index], weights))
        band = (fields[0] - fields[1]) * self.scale
        return torch.sigmoid((_RIDGE - band.abs()) / _SOFTNESS)
