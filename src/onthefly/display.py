"""How a view's line integrals become the image a model sees, in ``[0, 1]``.

A DRR's line integrals span a wide range (air beside the body, a long path
through the mediastinum), and a linear min-max scaling (:func:`to_display`,
the default) leaves fine structures such as a rib's cortex a few hundredths
of that range. Digital radiography systems do not show raw exposure either:
they compress the large-scale background and enhance detail before display
(multi-scale processing). :class:`Display` offers the simplest form of that,
one scale of unsharp masking and a percentile window::

    background = gaussian_blur(line_integrals, sigma=detail mm on the detector)
    processed = line_integrals - (1 - background_kept) * background
    image = clamp((processed - low) / (high - low), 0, 1)   # low, high: the clip and 1 - clip quantiles

Dense structures stay bright. With ``detail=None`` and ``clip=0`` this is
exactly :func:`to_display`. The filter is linear, so a small, sharp change of
the line integrals (a fracture) changes the processed view by about as much
as it changes the line integrals, and the image by about that over the
window's width (:meth:`Display.width`), which is how
:func:`~onthefly.fractures.fracture_visibility` measures it.

Everything is batched over any leading axes, differentiable, and free of
host reads and data-dependent shapes (``torch.compile`` traces it whole).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import MIN_LENGTH_MM, check_finite, check_real

__all__ = ["DISPLAYS", "Display", "as_display", "to_display"]

_QUANTILE_PIXELS = 128 * 128  # window quantiles: at most about this many pixels per view (a regular subsample)


def _check_line_integrals(line_integrals: Tensor) -> None:
    """Refuse NaN or infinite line integrals (one NaN would turn its whole view NaN through the window).

    A host read, skipped while a caller is being compiled (the traced hot path stays free of graph breaks).
    """
    if not isinstance(line_integrals, Tensor):
        raise TypeError(f"line_integrals: expected a tensor (..., H, W), got {type(line_integrals).__name__}")
    if line_integrals.dim() < 2:
        raise ValueError(f"line_integrals: expected shape (..., H, W), got {tuple(line_integrals.shape)}")
    if not torch.compiler.is_compiling():
        check_finite("line_integrals", line_integrals)


def to_display(line_integrals: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Per-image min-max scaling of ``(..., H, W)`` line integrals to ``[0, 1]``.

    Dense structures are bright, as on a radiograph. A constant image maps to 0.
    NaN or infinite line integrals are refused (``ValueError`` naming ``line_integrals``).

    Example:
        >>> to_display(torch.tensor([[0.0, 1.0], [2.0, 4.0]]))
        tensor([[0.0000, 0.2500],
                [0.5000, 1.0000]])
    """
    _check_line_integrals(line_integrals)
    flat = line_integrals.flatten(-2)
    low = flat.amin(-1, keepdim=True)[..., None]
    high = flat.amax(-1, keepdim=True)[..., None]
    return ((line_integrals - low) / (high - low).clamp_min(eps)).clamp(0.0, 1.0)


def _gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(..., H, W)`` with ``sigma`` pixels; edges replicated."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    shape = images.shape
    flat = images.reshape(-1, 1, shape[-2], shape[-1])
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return flat.reshape(shape)


@dataclass(frozen=True)
class Display:
    """How line integrals ``(..., H, W)`` become an image in ``[0, 1]`` (see the module's description).

    Attributes:
        detail: standard deviation of the Gaussian that separates the
            large-scale background from detail, mm on the detector (> 0); ``None``:
            no local-contrast processing.
        background: share of the large-scale background kept, in ``[0, 1]``
            (1: none removed; 0: detail only). Used only with ``detail``.
        clip: share of the pixels of each view saturated at each end of the
            window, in ``[0, 0.5)`` (0: the view's minimum and maximum).

    Example:
        >>> lines = torch.rand(2, 3, 1, 64, 64)
        >>> DISPLAYS["radiograph"](lines, pixel_spacing=1.0).shape
        torch.Size([2, 3, 1, 64, 64])
        >>> torch.equal(Display()(lines, pixel_spacing=1.0), to_display(lines))
        True
    """

    detail: float | None = None
    background: float = 1.0
    clip: float = 0.0

    def __post_init__(self) -> None:
        if self.detail is not None:
            object.__setattr__(self, "detail", check_real("detail", self.detail, low=MIN_LENGTH_MM, unit="mm"))
        object.__setattr__(self, "background", check_real("background", self.background, low=0.0, high=1.0))
        clip = check_real("clip", self.clip, low=0.0, high=0.5)
        if clip == 0.5:
            raise ValueError("clip: expected a share below 0.5 (0.5 at each end would leave no window), got 0.5")
        object.__setattr__(self, "clip", clip)

    @property
    def is_minmax(self) -> bool:
        """Whether this is the plain min-max scaling (:func:`to_display`)."""
        return (self.detail is None or self.background == 1.0) and self.clip == 0.0

    def processed(self, line_integrals: Tensor, *, pixel_spacing: float) -> Tensor:
        """The views before the window: line integrals minus the removed share of their background, same shape."""
        if self.detail is None or self.background == 1.0:
            return line_integrals
        check_real("pixel_spacing", pixel_spacing, low=MIN_LENGTH_MM, unit="mm")
        return line_integrals - (1.0 - self.background) * _gaussian_blur(line_integrals, self.detail / pixel_spacing)

    def window(self, processed: Tensor) -> tuple[Tensor, Tensor]:
        """``(low, high)`` of each view's window, each ``(..., 1, 1)``, from :meth:`processed` views ``(..., H, W)``."""
        if self.clip == 0.0:
            flat = processed.flatten(-2)
            return flat.amin(-1)[..., None, None], flat.amax(-1)[..., None, None]
        height, width = processed.shape[-2:]
        stride = max(1, round(math.sqrt(height * width / _QUANTILE_PIXELS)))
        values = processed[..., ::stride, ::stride].flatten(-2).sort(-1).values
        count = values.shape[-1]
        low_index = min(count - 1, int(self.clip * (count - 1) + 0.5))
        high_index = max(0, count - 1 - low_index)
        return values[..., low_index, None, None], values[..., high_index, None, None]

    def width(self, line_integrals: Tensor, *, pixel_spacing: float) -> Tensor:
        """Each view's window width ``(...)``, line-integral units: a change of ``c`` shows as ``c / width``."""
        low, high = self.window(self.processed(line_integrals, pixel_spacing=pixel_spacing))
        return (high - low)[..., 0, 0]

    def images_and_widths(self, line_integrals: Tensor, *, pixel_spacing: float,
                          eps: float = 1e-8) -> tuple[Tensor, Tensor]:
        """The images ``(..., H, W)`` and each view's window width ``(...)`` (:meth:`width`) in one pass.

        NaN or infinite line integrals are refused (``ValueError`` naming ``line_integrals``)."""
        _check_line_integrals(line_integrals)
        processed = self.processed(line_integrals, pixel_spacing=pixel_spacing)
        low, high = self.window(processed)
        images = ((processed - low) / (high - low).clamp_min(eps)).clamp(0.0, 1.0)
        return images, (high - low)[..., 0, 0]

    def __call__(self, line_integrals: Tensor, *, pixel_spacing: float, eps: float = 1e-8) -> Tensor:
        """Images ``(..., H, W)`` in ``[0, 1]`` of line integrals ``(..., H, W)`` on pixels of ``pixel_spacing`` mm."""
        return self.images_and_widths(line_integrals, pixel_spacing=pixel_spacing, eps=eps)[0]


DISPLAYS: dict[str, Display] = {
    "minmax": Display(),
    "radiograph": Display(detail=5.0, background=0.2, clip=0.02),
}
"""Named displays: ``"minmax"`` (:func:`to_display`, the default) and ``"radiograph"``
(detail above a 5 mm Gaussian, a fifth of the background kept, 2 % of the pixels
saturated at each end: about how a processed digital radiograph shows bone edges)."""


def as_display(value) -> Display:
    """A :class:`Display` from itself or a name in :data:`DISPLAYS`; a clear error otherwise."""
    if isinstance(value, Display):
        return value
    if isinstance(value, str) and value in DISPLAYS:
        return DISPLAYS[value]
    raise ValueError(f"display: expected one of {sorted(DISPLAYS)} or a Display, got {value!r}")

