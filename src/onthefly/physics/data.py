"""X-ray interaction data: mass attenuation and energy-absorption coefficients, tungsten K lines.

The numbers come from ``attenuation.json`` beside this module, written by
``scripts/make_attenuation_table.py`` from the Elam, Ravel and Sieber (2002)
tables of xraydb (public domain; photoabsorption as in NIST XCOM) for 1 to
150 keV in 1 keV steps. The library reads the JSON file only (xraydb is not a
dependency). Compositions and densities are NIST's (Hubbell and Seltzer 1995,
NISTIR 5632): ``water``, ``soft_tissue`` (ICRU-44), ``bone`` (ICRU-44 cortical),
``air`` (dry), ``aluminium``, ``copper``, ``csi``, ``tungsten``.

Between the tabulated energies coefficients are interpolated linearly in
log-log space (they follow power laws between absorption edges).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "MATERIALS",
    "TABLE_ENERGY_RANGE_KEV",
    "attenuation_table",
    "density",
    "mass_attenuation",
    "mass_energy_absorption",
    "tungsten_k_lines",
]

_TABLE_PATH = Path(__file__).with_name("attenuation.json")

MATERIALS = ("water", "soft_tissue", "bone", "air", "aluminium", "copper", "csi", "tungsten")
"""Material names the table holds."""

TABLE_ENERGY_RANGE_KEV = (1.0, 150.0)
"""Lowest and highest tabulated photon energy, keV (1 keV steps)."""


_TABLE = json.loads(_TABLE_PATH.read_text())
# Constants read once (plain tensors and floats: ``torch.compile`` traces their use without graph breaks).
_LOG_COLUMNS = {
    (name, key): torch.tensor(_TABLE["materials"][name][key], dtype=torch.float64).log()
    for name in MATERIALS for key in ("mass_attenuation_cm2_g", "mass_energy_absorption_cm2_g")
}
_DENSITIES = {name: float(_TABLE["materials"][name]["density_g_cm3"]) for name in MATERIALS}
_K_LINE_ENERGIES = tuple(float(line["energy_kev"]) for line in _TABLE["tungsten_k_lines"].values())
_K_LINE_WEIGHTS = tuple(float(line["relative_intensity"]) for line in _TABLE["tungsten_k_lines"].values())
_K_EDGE_KEV = float(_TABLE["tungsten_k_edge_kev"])


def attenuation_table() -> dict:
    """The parsed ``attenuation.json`` (read once, at import; treat as read-only)."""
    return _TABLE


def _check_material(name) -> str:
    if name not in MATERIALS:
        raise ValueError(f"materials: expected names from {list(MATERIALS)}, got {name!r}")
    return name


def density(name: str) -> float:
    """Nominal mass density of a material, g/cm^3 (NIST's value)."""
    return _DENSITIES[_check_material(name)]


def _interpolate(names: tuple[str, ...], key: str, energies: Tensor) -> Tensor:
    """``(M, *energies.shape)`` log-log interpolation of a column of the table, in ``energies``' dtype."""
    for name in names:
        _check_material(name)
    low, high = TABLE_ENERGY_RANGE_KEV
    table = torch.stack([_LOG_COLUMNS[(name, key)] for name in names]).to(device=energies.device)  # (M, 150)
    clamped = energies.to(torch.float64).clamp(low, high)
    index = (clamped - low).floor().clamp(0, high - low - 1).long()
    lower_energy = index.to(torch.float64) + low
    fraction = (clamped.log() - lower_energy.log()) / ((lower_energy + 1.0).log() - lower_energy.log())
    flat = index.reshape(-1)
    lower = table[:, flat].reshape(len(names), *energies.shape)
    upper = table[:, flat + 1].reshape(len(names), *energies.shape)
    return torch.exp(lower + fraction * (upper - lower)).to(energies.dtype)


def mass_attenuation(names, energies: Tensor) -> Tensor:
    """Mass attenuation coefficients ``mu / rho`` of the named materials, cm^2/g.

    Args:
        names: a sequence of ``M`` names from :data:`MATERIALS`.
        energies: photon energies in keV, any shape, within :data:`TABLE_ENERGY_RANGE_KEV` (clamped there).

    Returns:
        ``(M, *energies.shape)`` in ``energies``' dtype and device.

    Example:
        >>> from onthefly.physics import mass_attenuation
        >>> round(float(mass_attenuation(["water"], torch.tensor([60.0]))[0, 0]), 3)  # NIST: 0.2059
        0.206
    """
    return _interpolate(tuple(names), "mass_attenuation_cm2_g", energies)


def mass_energy_absorption(names, energies: Tensor) -> Tensor:
    """Mass energy-absorption coefficients ``mu_en / rho``, cm^2/g, ``(M, *energies.shape)`` (see
    :func:`mass_attenuation`)."""
    return _interpolate(tuple(names), "mass_energy_absorption_cm2_g", energies)


def tungsten_k_lines() -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """Tungsten K lines: energies (keV), relative intensities (summing to 1), and the K-edge energy (keV)."""
    total = sum(_K_LINE_WEIGHTS)
    return _K_LINE_ENERGIES, tuple(w / total for w in _K_LINE_WEIGHTS), _K_EDGE_KEV
