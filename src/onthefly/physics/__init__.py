"""Radiograph physics: from per-material line integrals to the image a radiologist sees.

The layer between the projector and the display (docs/physics.md):

* :mod:`~onthefly.physics.materials`: HU -> density (Schneider et al. 2000) and smooth air / soft-tissue /
  bone fractions; :func:`render_materials` integrates them in one projector pass, ``(B, V, M, H, W)`` g/cm^2;
* :mod:`~onthefly.physics.data`: mass attenuation and energy-absorption coefficients (xraydb's Elam tables,
  shipped as a JSON table);
* :mod:`~onthefly.physics.spectrum`: tungsten-anode spectra (Kramers / Birch-Marshall with K lines),
  validated against IEC 61267's RQR half-value layers (:func:`half_value_layer`);
* :mod:`~onthefly.physics.transmission`: polychromatic transmission with a CsI detector's response;
* :mod:`~onthefly.physics.scatter`: scatter-kernel superposition, anti-scatter grid, air gap;
* :mod:`~onthefly.physics.detector`: quantum noise (Gaussian or Poisson), blur, electronic noise;
* :mod:`~onthefly.physics.processing`: log normalisation, local contrast, window;
* :mod:`~onthefly.physics.config`: :class:`Physics` (ranges) and :class:`PhysicsParams` (draws);
  :func:`radiograph` applies it all.
"""

from .config import Physics, PhysicsParams
from .data import MATERIALS, density, mass_attenuation, mass_energy_absorption
from .detector import NOISE_MODES, gaussian_blur, quantum_noise
from .materials import BODY_MATERIALS, hu_to_density, material_densities, material_fractions, render_materials
from .processing import log_normalise, process
from .radiograph import radiograph, radiograph_stages
from .scatter import scatter_signal, water_equivalent_thickness
from .spectrum import KV_RANGE, RQR_HALF_VALUE_LAYERS_MM_AL, TOTAL_FILTRATION_AL_MM, half_value_layer, tube_spectrum
from .transmission import detector_response, polychromatic_intensity, signal_weights

__all__ = [
    "BODY_MATERIALS",
    "KV_RANGE",
    "MATERIALS",
    "NOISE_MODES",
    "Physics",
    "PhysicsParams",
    "RQR_HALF_VALUE_LAYERS_MM_AL",
    "TOTAL_FILTRATION_AL_MM",
    "density",
    "detector_response",
    "gaussian_blur",
    "half_value_layer",
    "hu_to_density",
    "log_normalise",
    "mass_attenuation",
    "mass_energy_absorption",
    "material_densities",
    "material_fractions",
    "polychromatic_intensity",
    "process",
    "quantum_noise",
    "radiograph",
    "radiograph_stages",
    "render_materials",
    "scatter_signal",
    "signal_weights",
    "tube_spectrum",
    "water_equivalent_thickness",
]
