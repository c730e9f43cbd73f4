"""Image augmentation that keeps the correspondence supervision right.

Two kinds, drawn per view:

* **intensity** (kornia's ``adjust_gamma``, ``adjust_contrast``,
  ``adjust_brightness``, ``gaussian_blur2d``, plus inversion and Gaussian
  noise): pixels change, patches stay where they are, so the correspondence
  matrix is unchanged;
* **geometric** (flips and quarter turns of a view): patches move, and the
  rows and columns of the correspondence matrix are permuted to match
  (:func:`onthefly.correspondence.patch_permutation`).

Parameters are drawn on the host from an explicit generator
(:meth:`Augmentation.draw`, an :class:`AugmentationParams`); applying them is
batched tensor code on the images' device with no host reads and no graph
breaks under ``torch.compile`` (the blur kernel's size comes from the
settings, not from the drawn values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import kornia
import torch
from torch import Tensor

from .correspondence import IMAGE_OPERATIONS, patch_permutation, permute_views_patches

__all__ = [
    "Augmentation",
    "AugmentationParams",
    "apply_intensity",
    "apply_geometric",
    "image_operation_maps",
    "MAX_BLUR_SIGMA",
]

MAX_BLUR_SIGMA = 16.0
"""Largest blur sigma (pixels) :class:`Augmentation` accepts: the kernel spans ``6 sigma + 1`` pixels."""

_MIN_SIGMA = 0.05  # below this a view is not blurred (the kernel would be a delta)
_TURNS = ("rot90", "rot270")


@dataclass(frozen=True)
class AugmentationParams:
    """The drawn augmentation of one batch: ``(B, V)`` tensors, one value per view.

    Attributes:
        brightness: additive shift.
        contrast: multiplicative factor.
        gamma: gamma exponent.
        invert: bool, whether the view is inverted (``1 - x``).
        noise: Gaussian noise standard deviation.
        blur: Gaussian blur sigma (pixels).
        operation: long, index into ``IMAGE_OPERATIONS`` (0 is the identity).
    """

    brightness: Tensor
    contrast: Tensor
    gamma: Tensor
    invert: Tensor
    noise: Tensor
    blur: Tensor
    operation: Tensor

    def to(self, device: torch.device | str) -> "AugmentationParams":
        """The same parameters on ``device``."""
        return AugmentationParams(**{item.name: getattr(self, item.name).to(device) for item in fields(self)})

    def rows(self, index: Tensor) -> "AugmentationParams":
        """The parameters of samples ``index (B',)`` (long), in that order."""
        return AugmentationParams(**{item.name: getattr(self, item.name)[index] for item in fields(self)})


@dataclass(frozen=True)
class Augmentation:
    """Per-view augmentation settings (all draws uniform unless said otherwise).

    Attributes:
        brightness: additive shift in ``[-brightness, brightness]``, in ``[0, 1]``.
        contrast: multiplicative factor in ``[1 - contrast, 1 + contrast]`` (< 1).
        invert: probability that a view is inverted (``1 - x``).
        gamma: gamma in ``[1 / (1 + gamma), 1 + gamma]`` (log-uniform), at most 10.
        noise: Gaussian noise standard deviation in ``[0, noise]``, at most 1.
        blur: Gaussian blur sigma in ``[0, blur]`` pixels, at most :data:`MAX_BLUR_SIGMA`.
        geometric: probability that a view gets a flip or quarter turn.
        operations: the geometric operations to choose from, uniformly
            (names from ``IMAGE_OPERATIONS``; quarter turns need square views).

    Brightness, contrast and inversion are the seed paper's three. Geometric
    augmentation is off by default (flipped radiographs are mirror images no
    C-arm can take); when on, the sampler permutes the correspondence matrix
    and records the operation per view. ``Augmentation.none()`` disables all.

    Example:
        >>> params = Augmentation().draw(2, 3, torch.Generator().manual_seed(0))
        >>> params.brightness.shape, params.operation.dtype
        (torch.Size([2, 3]), torch.int64)
    """

    brightness: float = 0.1
    contrast: float = 0.2
    invert: float = 0.1
    gamma: float = 0.2
    noise: float = 0.01
    blur: float = 0.5
    geometric: float = 0.0
    operations: tuple[str, ...] = ("hflip", "vflip", "rot90", "rot180", "rot270")

    def __post_init__(self) -> None:
        limits = {"brightness": 1.0, "gamma": 10.0, "noise": 1.0, "blur": MAX_BLUR_SIGMA}
        for name, limit in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= limit:
                raise ValueError(f"{name}: expected a number in [0, {limit:g}], got {value!r}")
        if isinstance(self.contrast, bool) or not isinstance(self.contrast, (int, float)) or not 0 <= self.contrast < 1:
            raise ValueError(f"contrast: expected a number in [0, 1), got {self.contrast!r}")
        for name in ("invert", "geometric"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
        try:
            operations = tuple(self.operations)
        except TypeError:
            raise ValueError(f"operations: expected a sequence of operation names, got {self.operations!r}") from None
        if not operations or any(op not in IMAGE_OPERATIONS[1:] for op in operations):
            raise ValueError(f"operations: expected a non-empty subset of {list(IMAGE_OPERATIONS[1:])}, got {operations}")
        object.__setattr__(self, "operations", operations)

    @classmethod
    def none(cls) -> "Augmentation":
        """No augmentation at all."""
        return cls(brightness=0.0, contrast=0.0, invert=0.0, gamma=0.0, noise=0.0, blur=0.0, geometric=0.0)

    @property
    def turns(self) -> bool:
        """Whether quarter turns can be drawn (they need square views)."""
        return self.geometric > 0 and any(op in _TURNS for op in self.operations)

    @property
    def changes_intensity(self) -> bool:
        """Whether any intensity augmentation is on."""
        return any(getattr(self, name) != 0 for name in ("brightness", "contrast", "invert", "gamma", "noise", "blur"))

    def draw(self, batch: int, views: int, generator: torch.Generator) -> AugmentationParams:
        """Per-view parameters for ``batch`` samples of ``views`` views, ``(B, V)`` CPU tensors."""
        shape = (batch, views)

        def uniform(low: float, high: float) -> Tensor:
            return low + (high - low) * torch.rand(shape, generator=generator)

        log_gamma = math.log1p(self.gamma)
        chosen = torch.randint(len(self.operations), shape, generator=generator)
        codes = torch.tensor([IMAGE_OPERATIONS.index(op) for op in self.operations])[chosen]
        apply = torch.rand(shape, generator=generator) < self.geometric
        brightness = uniform(-self.brightness, self.brightness)
        contrast = uniform(1.0 - self.contrast, 1.0 + self.contrast)
        gamma = torch.exp(uniform(-log_gamma, log_gamma))
        invert = torch.rand(shape, generator=generator) < self.invert
        noise = uniform(0.0, self.noise)
        blur = uniform(0.0, self.blur)
        return AugmentationParams(
            brightness=brightness, contrast=contrast, gamma=gamma, invert=invert, noise=noise, blur=blur,
            operation=torch.where(apply, codes, torch.zeros_like(codes)),
        )


def apply_intensity(images: Tensor, params: AugmentationParams, generator: torch.Generator, *, max_blur: float) -> Tensor:
    """Intensity augmentation of ``(B, V, C, H, W)`` images in ``[0, 1]``; returns the same shape in ``[0, 1]``.

    Order: gamma, contrast, brightness, inversion, blur, noise. ``params`` as
    :meth:`Augmentation.draw` gives them (host or device tensors); ``generator``
    (on the images' device) draws the noise; ``max_blur`` (pixels, the
    settings' ``blur``) sizes the blur kernel, ``2 ceil(3 max_blur) + 1``, so
    the computation has the same shape whatever was drawn.

    Example:
        >>> images = torch.rand(2, 3, 1, 16, 16)
        >>> params = Augmentation().draw(2, 3, torch.Generator().manual_seed(0))
        >>> apply_intensity(images, params, torch.Generator().manual_seed(1), max_blur=0.5).shape
        torch.Size([2, 3, 1, 16, 16])
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator on the images' device, got {type(generator).__name__}")
    if isinstance(max_blur, bool) or not isinstance(max_blur, (int, float)) or not 0 <= max_blur <= MAX_BLUR_SIGMA:
        raise ValueError(f"max_blur: expected a sigma in [0, {MAX_BLUR_SIGMA:g}] pixels, got {max_blur!r}")
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return _intensity(images, params, noise, max_blur)


def _intensity(images: Tensor, params: AugmentationParams, noise: Tensor, max_blur: float) -> Tensor:
    """:func:`apply_intensity` with the standard normal ``noise`` (shape of ``images``) drawn by the caller.

    Free of graph breaks under ``torch.compile`` (random draws with an explicit
    generator are not traceable, so they stay outside).
    """
    batch, views, channels, height, width = images.shape
    device = images.device
    x = images.reshape(batch * views, channels, height, width)

    def flat(value: Tensor) -> Tensor:
        return value.reshape(-1).to(device, non_blocking=True)

    x = kornia.enhance.adjust_gamma(x, flat(params.gamma).to(x.dtype))
    x = kornia.enhance.adjust_contrast(x, flat(params.contrast).to(x.dtype))
    x = kornia.enhance.adjust_brightness(x, flat(params.brightness).to(x.dtype))
    x = torch.where(flat(params.invert).view(-1, 1, 1, 1), 1.0 - x, x)
    if max_blur > _MIN_SIGMA:
        sigma = flat(params.blur).to(x.dtype)
        size = 2 * math.ceil(3 * max_blur) + 1
        blurred = kornia.filters.gaussian_blur2d(x, (size, size), sigma.clamp_min(_MIN_SIGMA)[:, None].expand(-1, 2))
        x = torch.where((sigma > _MIN_SIGMA).view(-1, 1, 1, 1), blurred, x)
    std = flat(params.noise).to(x.dtype).view(-1, 1, 1, 1)
    x = (x + std * noise.reshape(x.shape)).clamp(0.0, 1.0)
    return x.view(batch, views, channels, height, width)


def image_operation_maps(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """``(len(IMAGE_OPERATIONS), H*W)``: pixel ``p`` of the transformed image is pixel ``map[op, p]`` of the original.

    Rows for quarter turns of non-square images are filled with ``-1`` (not allowed).
    """
    maps = []
    for op in IMAGE_OPERATIONS:
        if op in _TURNS and height != width:
            maps.append(torch.full((height * width,), -1, dtype=torch.long))
        else:
            maps.append(patch_permutation((height, width), op))
    return torch.stack(maps).to(device)


def apply_geometric(
    images: Tensor,
    operation: Tensor,
    *,
    correspondence: Tensor | None = None,
    patch_size: int | None = None,
    maps: Tensor | None = None,
    patch_maps: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Flip or turn each view and permute the correspondence matrix to match.

    Args:
        images: ``(B, V, C, H, W)``.
        operation: ``(B, V)`` indices into ``IMAGE_OPERATIONS``; quarter turns
            (``rot90``, ``rot270``) need square images (and patch grids).
        correspondence: optional ``(B, V*N, V*N)`` for patches of ``patch_size``.
        maps, patch_maps: optional precomputed :func:`image_operation_maps` of the
            image and of the patch grid (on the images' device).

    Returns:
        the transformed images, and the permuted matrix (or ``None``).

    Example:
        >>> image = torch.arange(4.0).view(1, 1, 1, 2, 2)
        >>> apply_geometric(image, torch.tensor([[1]]))[0].view(2, 2)  # hflip
        tensor([[1., 0.],
                [3., 2.]])
    """
    if not isinstance(images, Tensor) or images.dim() != 5:
        raise ValueError(f"images: expected shape (B, V, C, H, W), got {getattr(images, 'shape', type(images).__name__)}")
    batch, views, _, height, width = images.shape
    codes = torch.as_tensor(operation)
    if tuple(codes.shape) != (batch, views) or codes.is_floating_point():
        raise ValueError(f"operation: expected integer codes of shape ({batch}, {views}), got {tuple(codes.shape)}")
    host = codes.detach().cpu()
    if bool(((host < 0) | (host >= len(IMAGE_OPERATIONS))).any()):
        raise ValueError(f"operation: expected codes in [0, {len(IMAGE_OPERATIONS)}), got {host.unique().tolist()}")
    turn_codes = torch.tensor([IMAGE_OPERATIONS.index(op) for op in _TURNS])
    if height != width and bool(torch.isin(host, turn_codes).any()):
        raise ValueError(f"operation: quarter turns need square images, got {height} x {width} (use flips only)")
    if correspondence is not None and patch_size is None:
        raise ValueError("patch_size: expected the patch size of the correspondence matrix, got None")
    return _geometric(images, codes, correspondence, patch_size, maps, patch_maps)


def _geometric(
    images: Tensor,
    operation: Tensor,
    correspondence: Tensor | None,
    patch_size: int | None,
    maps: Tensor | None,
    patch_maps: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """:func:`apply_geometric` without input checks (the sampler checked its settings once)."""
    batch, views, channels, height, width = images.shape
    device = images.device
    operation = operation.to(device, non_blocking=True)
    if maps is None:
        maps = image_operation_maps(height, width, device)
    pixel_index = maps[operation].view(batch, views, 1, height * width).expand(-1, -1, channels, -1)
    out = images.reshape(batch, views, channels, height * width).gather(-1, pixel_index)
    out = out.view(batch, views, channels, height, width)
    if correspondence is None:
        return out, None
    if patch_maps is None:
        patch_maps = image_operation_maps(height // patch_size, width // patch_size, device)
    return out, permute_views_patches(correspondence, patch_maps[operation])
