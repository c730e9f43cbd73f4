"""Tungsten-anode X-ray tube spectra and their half-value layers.

Model (bremsstrahlung after Birch and Marshall 1979, Phys. Med. Biol. 24:505):
Kramers' thin-target law (each electron of energy ``T`` emits a flat energy
fluence per keV up to ``T``) integrated along the electron's path in the
anode, where it slows down by the Thomson-Whiddington law
``T(x)^2 = kV^2 - C x`` (``x`` in g/cm^2), and every photon is attenuated by
the tungsten between its depth and the anode surface (path ``x / sin(theta)``
for an anode angle ``theta``). With the substitution ``x -> T`` the photon
density per keV at energy ``E`` is

    N(E) = (kV - E) / E * mean over T in (E, kV) of exp(-mu_W(E) (kV^2 - T^2) / (C sin(theta)))

(without self-absorption this is Kramers' thick-target ``(kV - E) / E``).
Characteristic radiation: the tungsten K lines (K-alpha2 57.98, K-alpha1
59.32, K-beta 66.95-69.03 keV; relative intensities from xraydb) above the
69.53 keV K edge, with a total yield growing as ``(kV / E_K - 1)^1.63``
(Green and Cosslett 1968, J. Phys. D 1:425) and the same depth distribution
and self-absorption. Then the tube's total filtration (mm Al, mm Cu) by
Beer-Lambert. The model's constants:

* ``C = 2.5e6 keV^2 cm^2 / g``: an effective Thomson-Whiddington constant
  (depth 0.004 g/cm^2, 2 um of tungsten, at which a 100 keV electron would
  stop on a straight path). The electrons' CSDA range (about 0.03 g/cm^2)
  overstates the depth at which photons are made, since electrons diffuse
  and backscatter; with ``C = 3e5`` (straight paths over the CSDA range) no
  single filtration brings every RQR HVL within 30 %, so ``C`` was chosen
  together with the filtration fit below (a second calibrated constant);
* anode angle 12 degrees;
* K-line strength: the lines carry :data:`K_LINE_SHARE_AT_100_KV` (8 %) of
  the unfiltered bremsstrahlung energy at 100 kV: an assumption of this
  model, of the order tungsten spectra show;
* total filtration :data:`TOTAL_FILTRATION_AL_MM`: one constant, fitted once
  so that the first half-value layers match IEC 61267's RQR 2-10 beam
  qualities (see docs/physics.md; tests/test_physics.py checks each within
  10 %).

Spectra are photon counts per energy bin (normalised to sum 1), batched over
samples, differentiable with respect to the tube voltage and the filtration,
with static shapes (bins above a sample's kV get 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import as_tensor, check_range, check_real
from .data import density, mass_attenuation, mass_energy_absorption, tungsten_k_lines

__all__ = [
    "KV_RANGE",
    "RQR_HALF_VALUE_LAYERS_MM_AL",
    "TOTAL_FILTRATION_AL_MM",
    "energy_bins",
    "tube_spectrum",
    "half_value_layer",
]

KV_RANGE = (40.0, 150.0)
"""Tube voltages accepted, kV."""

THOMSON_WHIDDINGTON_KEV2_CM2_G = 2.5e6
ANODE_ANGLE_DEG = 12.0
K_LINE_SHARE_AT_100_KV = 0.08
GREEN_COSSLETT_EXPONENT = 1.63
_PATH_NODES = 12  # midpoint nodes of the integral along the electron's path

TOTAL_FILTRATION_AL_MM = 3.16
"""Total filtration (mm Al) fitted once to IEC 61267's RQR half-value layers (all kV together)."""

RQR_HALF_VALUE_LAYERS_MM_AL = {40: 1.4, 50: 1.8, 60: 2.2, 70: 2.6, 80: 3.0, 90: 3.5, 100: 4.0, 120: 5.0, 150: 6.6}
"""IEC 61267 RQR 2-10 beam qualities: tube voltage (kV) -> first half-value layer (mm Al)."""


def energy_bins(bin_width_kev: float, highest_kev: float, *, lowest_kev: float = 10.0,
                dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Centres ``(E,)`` of energy bins of ``bin_width_kev`` from ``lowest_kev`` up to at least ``highest_kev``
    (``E = ceil((highest - lowest) / width)``), keV."""
    count = max(1, math.ceil((highest_kev - lowest_kev) / bin_width_kev - 1e-9))
    return lowest_kev + (torch.arange(count, dtype=torch.float64, device=device) + 0.5).to(dtype) * bin_width_kev


def _sub_energies(centres: Tensor, bin_width_kev: float) -> Tensor:
    """``(E, S)`` sample energies inside each bin, about 1 keV apart."""
    count = max(1, round(bin_width_kev))
    offsets = ((torch.arange(count, dtype=centres.dtype, device=centres.device) + 0.5) / count - 0.5) * bin_width_kev
    return centres[:, None] + offsets


def _filtration(energies: Tensor, aluminium_mm: Tensor, copper_mm: Tensor) -> Tensor:
    """Transmission of the filters at ``energies`` (...), for ``(B,)`` thicknesses: ``(B, ...)``."""
    mu = mass_attenuation(("aluminium", "copper"), energies)  # (2, ...)
    extra = (1,) * energies.dim()
    optical = (mu[0] * (density("aluminium") / 10.0)) * aluminium_mm.reshape(-1, *extra) + (
        mu[1] * (density("copper") / 10.0)) * copper_mm.reshape(-1, *extra)
    return torch.exp(-optical)


def _self_absorbed(energies: Tensor, start: Tensor, kv: Tensor) -> Tensor:
    """Mean anode transmission of photons of ``energies`` (...) made by electrons slowing from ``kv`` (B,)
    to ``start`` (B, ...): ``(B, ...)``."""
    nodes = (torch.arange(_PATH_NODES, dtype=energies.dtype, device=energies.device) + 0.5) / _PATH_NODES
    kv = kv.reshape(-1, *(1,) * energies.dim())
    span = torch.relu(kv - start)
    electron = start[..., None] + span[..., None] * nodes  # (B, ..., nodes)
    depth = (kv[..., None] ** 2 - electron**2) / THOMSON_WHIDDINGTON_KEV2_CM2_G  # g/cm^2
    mu_tungsten = mass_attenuation(("tungsten",), energies)[0][..., None]
    return torch.exp(-mu_tungsten * depth / math.sin(math.radians(ANODE_ANGLE_DEG))).mean(-1)


def _tube_spectrum(kv: Tensor, centres: Tensor, bin_width_kev: float, aluminium_mm: Tensor,
                   copper_mm: Tensor) -> Tensor:
    """Unchecked :func:`tube_spectrum` (the hot path's): ``(B, E)`` photon shares."""
    kv = kv.to(centres.dtype)
    energies = _sub_energies(centres, bin_width_kev)  # (E, S)
    step = bin_width_kev / energies.shape[1]
    kv_b = kv.reshape(-1, 1, 1)
    bremsstrahlung = torch.relu(kv_b - energies) / energies * _self_absorbed(energies, energies.expand(
        kv.shape[0], *energies.shape), kv)
    counts = (bremsstrahlung * _filtration(energies, aluminium_mm, copper_mm)).sum(-1) * step  # (B, E)

    line_energies, line_shares, edge = tungsten_k_lines()
    lines = torch.tensor(line_energies, dtype=centres.dtype, device=centres.device)  # (L,)
    shares = torch.tensor(line_shares, dtype=centres.dtype, device=centres.device)
    mean_line = float(sum(e * s for e, s in zip(line_energies, line_shares)))
    strength = K_LINE_SHARE_AT_100_KV / (100.0 / edge - 1.0) ** GREEN_COSSLETT_EXPONENT
    overvoltage = torch.relu(kv / edge - 1.0)
    line_photons = strength * overvoltage**GREEN_COSSLETT_EXPONENT * kv**2 / 2.0 / mean_line  # (B,)
    start = torch.full((kv.shape[0], lines.shape[0]), edge, dtype=centres.dtype, device=centres.device)
    per_line = line_photons[:, None] * shares * _self_absorbed(lines, start, kv) * _filtration(
        lines, aluminium_mm, copper_mm)  # (B, L)
    low = centres[0] - bin_width_kev / 2
    which = torch.floor((lines - low) / bin_width_kev).long()  # (L,) bin of each line (may be out of range)
    assign = (which[:, None] == torch.arange(centres.shape[0], device=centres.device)).to(centres.dtype)
    counts = counts + per_line @ assign
    return counts / counts.sum(-1, keepdim=True).clamp_min(1e-30)


def tube_spectrum(kv, *, bin_width_kev: float = 1.0, filtration_al_mm=TOTAL_FILTRATION_AL_MM,
                  filtration_cu_mm=0.0, lowest_kev: float = 10.0, dtype: torch.dtype = torch.float64):
    """Photon spectrum of a tungsten-anode tube (the model of the module's description).

    Args:
        kv: tube voltage(s), kV, a number or ``(B,)``, within :data:`KV_RANGE`.
        bin_width_kev: width of the energy bins, keV (0.1 to 20).
        filtration_al_mm, filtration_cu_mm: total filtration, mm of aluminium and copper (>= 0), numbers or ``(B,)``.
        lowest_kev: lower edge of the first bin, keV (1 to 30).
        dtype: floating dtype of the result.

    Returns:
        ``(energies, counts)``: bin centres ``(E,)`` keV and photon shares ``(B, E)`` summing to 1 per sample
        (``B = 1`` for a scalar ``kv``).

    Example:
        >>> from onthefly.physics import tube_spectrum
        >>> energies, counts = tube_spectrum([60.0, 120.0], bin_width_kev=5.0)
        >>> counts.shape, float(counts[0, energies > 60].sum())
        (torch.Size([2, 28]), 0.0)
    """
    bin_width_kev = check_real("bin_width_kev", bin_width_kev, low=0.1, high=20.0, unit="keV")
    lowest_kev = check_real("lowest_kev", lowest_kev, low=1.0, high=30.0, unit="keV")
    kv = as_tensor("kv", kv, dtype=dtype).reshape(-1).to(dtype)
    check_range("kv", kv, *KV_RANGE, "kV")
    aluminium = as_tensor("filtration_al_mm", filtration_al_mm, dtype=dtype).to(dtype).reshape(-1)
    copper = as_tensor("filtration_cu_mm", filtration_cu_mm, dtype=dtype).to(dtype).reshape(-1)
    check_range("filtration_al_mm", aluminium, 0.0, 100.0, "mm")
    check_range("filtration_cu_mm", copper, 0.0, 10.0, "mm")
    energies = energy_bins(bin_width_kev, KV_RANGE[1], lowest_kev=lowest_kev, dtype=dtype, device=kv.device)
    batch = torch.broadcast_shapes(kv.shape, aluminium.shape, copper.shape)
    counts = _tube_spectrum(kv.expand(batch), energies, bin_width_kev, aluminium.expand(batch), copper.expand(batch))
    return energies, counts


def _half_value_layer(energies: Tensor, counts: Tensor, iterations: int = 30) -> Tensor:
    """Air-kerma first HVL (mm Al) of spectra ``counts (B, E)`` at ``energies (E,)``: Newton's method on
    ``log K(t) = log K(0) - log 2`` (convex and decreasing in ``t``: the iterates rise to the root)."""
    kerma = counts * energies * mass_energy_absorption(("air",), energies)[0]  # (B, E)
    mu = mass_attenuation(("aluminium",), energies)[0] * (density("aluminium") / 10.0)  # 1/mm
    thickness = torch.zeros(counts.shape[0], dtype=counts.dtype, device=counts.device)
    target = kerma.sum(-1) / 2.0
    for _ in range(iterations):
        transmitted = kerma * torch.exp(-mu * thickness[:, None])
        value = transmitted.sum(-1)
        slope = -(transmitted * mu).sum(-1)
        thickness = thickness - (value.log() - target.log()) / (slope / value)
    return thickness


def half_value_layer(kv, *, filtration_al_mm=TOTAL_FILTRATION_AL_MM, filtration_cu_mm=0.0,
                     bin_width_kev: float = 0.5) -> Tensor:
    """First half-value layer in mm of aluminium: the thickness that halves the beam's air kerma.

    Air kerma weights each energy by its photon count, the energy and air's
    ``mu_en / rho``; the aluminium is 2.699 g/cm^3.

    Args:
        kv: tube voltage(s), kV (number or ``(B,)``), within :data:`KV_RANGE`.
        filtration_al_mm, filtration_cu_mm: the tube's total filtration, mm (numbers or ``(B,)``).
        bin_width_kev: energy resolution of the computation, keV.

    Returns:
        ``(B,)`` float64 half-value layers, mm Al.

    Example:
        >>> from onthefly.physics import half_value_layer
        >>> [round(float(x), 1) for x in half_value_layer([70.0, 120.0])]  # IEC 61267 RQR 5, RQR 9: 2.6, 5.0
        [2.5, 5.1]
    """
    energies, counts = tube_spectrum(kv, bin_width_kev=bin_width_kev, filtration_al_mm=filtration_al_mm,
                                     filtration_cu_mm=filtration_cu_mm, lowest_kev=1.0)
    return _half_value_layer(energies, counts)
