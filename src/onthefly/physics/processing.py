"""From detected quanta to what a radiologist sees: log normalisation, local contrast, a window to [0, 1].

1. Log normalisation: ``q = -ln(signal / flat)``, ``flat`` the signal of the
   unattenuated beam (the panel's gain calibration, grid in place). ``q`` is the
   line integral the polychromatic, scattered beam shows; dense structures are
   large. The signal is floored at :data:`SIGNAL_FLOOR` quanta (noise can make
   it 0 or negative).
2. Local contrast and window: a :class:`~onthefly.display.Display` (the
   library's display: one scale of unsharp masking, then a percentile window),
   by default :data:`PROCESSED_RADIOGRAPH`: a Gaussian background of 40 mm on
   the detector of which 35 % is kept (large-scale dynamic range compressed,
   lung markings and bone edges kept), window between the 0.5 % and 99.5 %
   quantiles of each view. The library's "radiograph" display (5 mm, 20 %, 2 %)
   stresses fine detail more (for fractures); pass it as ``display`` to match
   plain DRRs shown through it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..display import Display

__all__ = ["PROCESSED_RADIOGRAPH", "SIGNAL_FLOOR", "log_normalise", "process"]

PROCESSED_RADIOGRAPH = Display(detail=40.0, background=0.35, clip=0.005)
"""The default processing: what a chest radiograph's multi-scale processing roughly does (see above)."""

SIGNAL_FLOOR = 0.5
"""Smallest signal (quanta) the log accepts; below it the log is clamped."""


def log_normalise(signal: Tensor, flat: Tensor) -> Tensor:
    """``-ln(max(signal, floor) / flat)`` for ``signal (B, ...)`` and ``flat (B,)`` in quanta."""
    flat = flat.to(signal.dtype).reshape(-1, *(1,) * (signal.dim() - 1))
    return -torch.log(signal.clamp_min(SIGNAL_FLOOR) / flat)


def process(log_image: Tensor, *, pixel_spacing: float, display: Display = PROCESSED_RADIOGRAPH) -> Tensor:
    """The displayed radiograph in ``[0, 1]``, same shape as the log-normalised ``log_image (..., H, W)``."""
    return display(log_image, pixel_spacing=pixel_spacing)
