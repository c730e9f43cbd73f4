"""Polychromatic transmission and the energy-integrating detector's response.

The detected signal of a pixel whose ray crosses ``L_m`` g/cm^2 of material ``m`` is

    I(u) = sum_E S(E) D(E) exp(-sum_m mu_m(E) L_m(u))  /  sum_E S(E) D(E)

with ``S`` the photons per energy bin (:mod:`~onthefly.physics.spectrum`),
``mu_m`` the mass attenuation coefficients (cm^2/g) and ``D`` the energy a
caesium iodide scintillator of thickness ``t`` absorbs per incident photon,

    D(E) = E (mu_en / mu)_CsI(E) (1 - exp(-mu_CsI(E) rho_CsI t))

(interaction probability times the locally absorbed share of the energy; K
fluorescence that escapes the layer is counted as absorbed, a simplification).
Normalised this way the unattenuated pixel reads 1. With one energy bin and
``D = 1`` it is Beer-Lambert's ``exp(-mu L)``; with many, beam hardening
follows: the effective attenuation coefficient ``-ln(I) / L`` falls with ``L``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .data import density, mass_attenuation, mass_energy_absorption

__all__ = ["detector_response", "signal_weights", "polychromatic_intensity", "effective_mass_attenuation"]

_ENERGY_CHUNK = 8  # energy bins per pass: (B, V, 8, H, W) temporaries


def detector_response(energies: Tensor, csi_mm: Tensor) -> Tensor:
    """Energy absorbed in the CsI layer per incident photon (keV), ``(B, E)``, for ``energies (E,)`` keV and
    ``csi_mm (B,)`` mm of CsI (4.51 g/cm^3)."""
    mu, mu_en = mass_attenuation(("csi",), energies)[0], mass_energy_absorption(("csi",), energies)[0]
    interacting = 1.0 - torch.exp(-mu * (density("csi") / 10.0) * csi_mm.to(energies.dtype)[:, None])
    return energies * (mu_en / mu) * interacting


def signal_weights(counts: Tensor, response: Tensor) -> Tensor:
    """Each bin's share of the unattenuated detector signal, ``S D / sum(S D)``, ``(B, E)``."""
    signal = counts * response
    return signal / signal.sum(-1, keepdim=True).clamp_min(1e-30)


def polychromatic_intensity(material_integrals: Tensor, weights: Tensor, mass_attenuation_table: Tensor) -> Tensor:
    """Detected signal relative to the unattenuated beam.

    Args:
        material_integrals: ``(B, V, M, H, W)`` g/cm^2 of each material along each ray.
        weights: ``(B, E)`` (or ``(1, E)``) signal shares of the energy bins, summing to 1
            (:func:`signal_weights`).
        mass_attenuation_table: ``(M, E)`` cm^2/g of the ``M`` materials at the bins' energies.

    Returns:
        ``(B, V, 1, H, W)``, 1 where nothing attenuates.

    Example:
        >>> from onthefly.physics import polychromatic_intensity
        >>> lines = torch.tensor([0.0, 1.0, 2.0]).reshape(1, 1, 1, 1, 3)
        >>> polychromatic_intensity(lines, torch.tensor([[1.0]]), torch.tensor([[0.2]]))[0, 0, 0, 0]
        tensor([1.0000, 0.8187, 0.6703])
    """
    b, v, m, h, w = material_integrals.shape
    energies = weights.shape[-1]
    flat = material_integrals.reshape(b, v, m, h * w)
    total = None
    for first in range(0, energies, _ENERGY_CHUNK):
        last = min(energies, first + _ENERGY_CHUNK)
        optical = torch.einsum("bvmp,me->bvep", flat, mass_attenuation_table[:, first:last])
        part = torch.einsum("bvep,be->bvp", torch.exp(-optical), weights[:, first:last])
        total = part if total is None else total + part
    return total.reshape(b, v, 1, h, w)


def effective_mass_attenuation(weights: Tensor, mass_attenuation_table: Tensor) -> Tensor:
    """Signal-weighted mean mass attenuation of each material in the unattenuated beam, ``(B, M)`` cm^2/g."""
    return weights @ mass_attenuation_table.transpose(0, 1)
