"""Hounsfield units and attenuation: the one definition of ``mu = mu_water * (1 + HU / 1000)``, clamped at 0.

``MU_WATER_PER_MM = 0.02`` is water near 65 keV effective energy (NIST XCOM:
0.0206 /mm at 60 keV, 0.0193 /mm at 70 keV); the accepted ranges of
``mu_water``, HU and attenuation are here too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_real, check_tensor_kind

__all__ = [
    "MU_WATER_PER_MM",
    "MU_WATER_RANGE",
    "HU_RANGE",
    "MAX_ATTENUATION_PER_MM",
    "check_mu_water",
    "hu_to_attenuation",
    "hu_to_attenuation_",
    "attenuation_of_hu",
    "attenuation_to_hu",
]

MU_WATER_PER_MM = 0.02
"""Linear attenuation of water in 1/mm, near 65 keV effective energy."""

MU_WATER_RANGE = (1e-4, 10.0)
"""Accepted ``mu_water`` in 1/mm: water is 0.0071 /mm at 1 MeV and 0.54 /mm at 10 keV (NIST XCOM)."""

HU_RANGE = (-1e5, 1e6)
"""Accepted Hounsfield units: air is -1000, dense metal a few 10^4; values beyond are not CT numbers."""

MAX_ATTENUATION_PER_MM = 1e6
"""Largest attenuation magnitude (1/mm) a :class:`VolumeBatch` accepts (lead is about 6 /mm at 60 keV)."""


def check_mu_water(mu_water) -> float:
    """``mu_water`` as a float in :data:`MU_WATER_RANGE` (1/mm), or ``TypeError``/``ValueError`` naming it."""
    return check_real("mu_water", mu_water, low=MU_WATER_RANGE[0], high=MU_WATER_RANGE[1], unit="1/mm")


def hu_to_attenuation(hu: Tensor, *, mu_water: float = MU_WATER_PER_MM) -> Tensor:
    """Hounsfield units to linear attenuation in 1/mm.

    ``mu = mu_water * (1 + hu / 1000)``, clamped at 0 (air and below give 0).

    Args:
        hu: any shape, Hounsfield units.
        mu_water: attenuation of water in 1/mm (default 0.02, about 65 keV),
            within :data:`MU_WATER_RANGE`.

    Returns:
        same shape as ``hu``, 1/mm.

    Example:
        >>> hu_to_attenuation(torch.tensor([-1000.0, 0.0, 1000.0]))
        tensor([0.0000, 0.0200, 0.0400])
    """
    mu_water = check_mu_water(mu_water)
    if not isinstance(hu, Tensor):
        raise TypeError(f"hu: expected a tensor of Hounsfield units, got {type(hu).__name__}")
    check_tensor_kind("hu", hu)
    return hu_to_attenuation_(hu.to(torch.result_type(hu, 1.0), copy=True), mu_water=mu_water)


def hu_to_attenuation_(values: Tensor, *, mu_water: float) -> Tensor:
    """:func:`hu_to_attenuation` in place: ``values`` (floating point, HU) become attenuation (1/mm); returned.

    The one definition of the conversion on tensors (``mu_water`` is not checked
    here: callers pass a checked value); no full-size temporary is made.
    """
    return values.div_(1000.0).add_(1.0).mul_(mu_water).clamp_(min=0.0)


def attenuation_of_hu(hu: float, mu_water: float) -> float:
    """:func:`hu_to_attenuation` of one host number (1/mm), with no tensor (safe inside compiled code).

    Example:
        >>> attenuation_of_hu(0.0, 0.02), attenuation_of_hu(-1200.0, 0.02)
        (0.02, 0.0)
    """
    return max(mu_water * (1.0 + hu / 1000.0), 0.0)


def attenuation_to_hu(attenuation: Tensor, *, mu_water: float = MU_WATER_PER_MM) -> Tensor:
    """Inverse of :func:`hu_to_attenuation` where ``mu > 0``; zero attenuation maps to -1000 HU."""
    mu_water = check_mu_water(mu_water)
    return 1000.0 * (attenuation / mu_water - 1.0)
