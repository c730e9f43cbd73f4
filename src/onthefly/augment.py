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
(:meth:`Augmentation.draw`); applying them is batched tensor code on the
images' device with no host reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch
from torch import Tensor

from .correspondence import IMAGE_OPERATIONS, patch_permutation, permute_views_patches

__all__ = ["Augmentation", "apply_intensity", "apply_geometric", "image_operation_maps"]


@dataclass(frozen=True)
class Augmentation:
    """Per-view augmentation settings (all draws uniform unless said otherwise).

    Attributes:
        brightness: additive shift in ``[-brightness, brightness]``.
        contrast: multiplicative factor in ``[1 - contrast, 1 + contrast]`` (< 1).
        invert: probability that a view is inverted (``1 - x``).
        gamma: gamma in ``[1 / (1 + gamma), 1 + gamma]`` (log-uniform).
        noise: Gaussian noise standard deviation in ``[0, noise]``.
        blur: Gaussian blur sigma in ``[0, blur]`` pixels.
        geometric: probability that a view gets a flip or quarter turn.
        operations: the geometric operations to choose from, uniformly
            (names from ``IMAGE_OPERATIONS``; quarter turns need square views).

    Brightness, contrast and inversion are the seed paper's three. Geometric
    augmentation is off by default (flipped radiographs are mirror images no
    C-arm can take); when on, the sampler permutes the correspondence matrix
    and records the operation per view. ``Augmentation.none()`` disables all.
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
        for name in ("brightness", "gamma", "noise", "blur"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if not isinstance(self.contrast, (int, float)) or not 0 <= self.contrast < 1:
            raise ValueError(f"contrast: expected a number in [0, 1), got {self.contrast!r}")
        for name in ("invert", "geometric"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
        operations = tuple(self.operations)
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
        return self.geometric > 0 and any(op in ("rot90", "rot270") for op in self.operations)

    def draw(self, batch: int, views: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Per-view parameters, ``(B, V)`` CPU tensors.

        Keys: ``brightness``, ``contrast``, ``gamma``, ``noise``, ``blur`` (float32),
        ``invert`` (bool) and ``operation`` (index into ``IMAGE_OPERATIONS``; 0 is identity).
        """
        shape = (batch, views)

        def uniform(low: float, high: float) -> Tensor:
            return low + (high - low) * torch.rand(shape, generator=generator)

        log_gamma = math.log1p(self.gamma)
        chosen = torch.randint(len(self.operations), shape, generator=generator)
        codes = torch.tensor([IMAGE_OPERATIONS.index(op) for op in self.operations])[chosen]
        apply = torch.rand(shape, generator=generator) < self.geometric
        return {
            "brightness": uniform(-self.brightness, self.brightness),
            "contrast": uniform(1.0 - self.contrast, 1.0 + self.contrast),
            "gamma": torch.exp(uniform(-log_gamma, log_gamma)),
            "invert": torch.rand(shape, generator=generator) < self.invert,
            "noise": uniform(0.0, self.noise),
            "blur": uniform(0.0, self.blur),
            "operation": torch.where(apply, codes, torch.zeros_like(codes)),
        }


def apply_intensity(images: Tensor, params: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
    """Intensity augmentation of ``(B, V, C, H, W)`` images in ``[0, 1]``; returns the same shape in ``[0, 1]``.

    Order: gamma, contrast, brightness, inversion, blur, noise. ``params`` holds
    ``(B, V)`` tensors as :meth:`Augmentation.draw` gives them; ``generator``
    (on the images' device) draws the noise.
    """
    batch, views, channels, height, width = images.shape
    device = images.device
    x = images.reshape(batch * views, channels, height, width)

    def flat(key: str) -> Tensor:
        return params[key].reshape(-1).to(device, non_blocking=True)

    x = kornia.enhance.adjust_gamma(x, flat("gamma").to(x.dtype))
    x = kornia.enhance.adjust_contrast(x, flat("contrast").to(x.dtype))
    x = kornia.enhance.adjust_brightness(x, flat("brightness").to(x.dtype))
    invert = flat("invert").view(-1, 1, 1, 1)
    x = torch.where(invert, 1.0 - x, x)
    sigma = flat("blur").to(x.dtype)
    max_sigma = float(params["blur"].max()) if params["blur"].device.type == "cpu" and params["blur"].numel() else 0.0
    if max_sigma > 0.05:
        size = 2 * math.ceil(3 * max_sigma) + 1
        blurred = kornia.filters.gaussian_blur2d(x, (size, size), sigma.clamp_min(0.05)[:, None].expand(-1, 2))
        x = torch.where((sigma > 0.05).view(-1, 1, 1, 1), blurred, x)
    std = flat("noise").to(x.dtype).view(-1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    x = (x + std * noise).clamp(0.0, 1.0)
    return x.view(batch, views, channels, height, width)


def image_operation_maps(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """``(len(IMAGE_OPERATIONS), H*W)``: pixel ``p`` of the transformed image is pixel ``map[op, p]`` of the original.

    Rows for quarter turns of non-square images are filled with ``-1`` (not allowed).
    """
    maps = []
    for op in IMAGE_OPERATIONS:
        if op in ("rot90", "rot270") and height != width:
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
) -> tuple[Tensor, Tensor | None]:
    """Flip or turn each view and permute the correspondence matrix to match.

    Args:
        images: ``(B, V, C, H, W)``.
        operation: ``(B, V)`` indices into ``IMAGE_OPERATIONS``.
        correspondence: optional ``(B, V*N, V*N)`` for patches of ``patch_size``.
        maps: optional precomputed :func:`image_operation_maps` (on the images' device).

    Returns:
        the transformed images, and the permuted matrix (or ``None``).
    """
    batch, views, channels, height, width = images.shape
    device = images.device
    operation = operation.to(device, non_blocking=True)
    if maps is None:
        maps = image_operation_maps(height, width, device)
    pixel_index = maps[operation].view(batch, views, 1, height * width).expand(-1, -1, channels, -1)
    out = images.reshape(batch, views, channels, height * width).gather(-1, pixel_index.clamp_min(0))
    out = out.view(batch, views, channels, height, width)
    if correspondence is None:
        return out, None
    if patch_size is None:
        raise ValueError("patch_size: expected the patch size of the correspondence matrix, got None")
    grid = (height // patch_size, width // patch_size)
    patch_maps = image_operation_maps(*grid, device)
    return out, permute_views_patches(correspondence, patch_maps[operation])
