"""From detected quanta to what a radiologist sees: log normalisation, local contrast, a window to [0, 1].

1. Log normalisation: ``q = -ln(signal / flat)``, ``flat`` the signal of the
   unattenuated beam (the panel's gain calibration, grid in place). ``q`` is the
   line integral the polychromatic, scattered beam shows; dense structures are
   large. The signal is floored at :data:`SIGNAL_FLOOR` quanta (noise can make
   it 0 or negative).
2. Local contrast and window: :class:`~onthefly.display.Display`, the library's
   "radiograph" display (one scale of unsharp masking: a Gaussian background
   of 5 mm on the detector, a fifth of it kept; then a window between the 2 %
   and 98 % quantiles of each view), so a physics image and a plain DRR look
   alike.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..display import DISPLAYS, Display

__all__ = ["SIGNAL_FLOOR", "log_normalise", "process"]

SIGNAL_FLOOR = 0.5
"""Smallest signal (quanta) the log accepts; below it the log is clamped."""


def log_normalise(signal: Tensor, flat: Tensor) -> Tensor:
    """``-ln(max(signal, floor) / flat)`` for ``signal (B, ...)`` and ``flat (B,)`` in quanta."""
    flat = flat.to(signal.dtype).reshape(-1, *(1,) * (signal.dim() - 1))
    return -torch.log(signal.clamp_min(SIGNAL_FLOOR) / flat)


def process(log_image: Tensor, *, pixel_spacing: float, display: Display = DISPLAYS["radiograph"]) -> Tensor:
    """The displayed radiograph in ``[0, 1]``, same shape as the log-normalised ``log_image (..., H, W)``."""
    return display(log_image, pixel_spacing=pixel_spacing)
