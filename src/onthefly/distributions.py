"""Distributions of the sampler's random parameters (angles, distances, jitter).

Each distribution draws float64 CPU tensors from an explicit
``torch.Generator``: the sampler draws all of a batch's parameters on the
host, so choosing them never waits on the device. Angles are in radians,
distances in millimetres.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Distribution", "Uniform", "CardinalAngles", "PerView", "as_distribution"]


class Distribution:
    """A distribution of one scalar parameter."""

    def sample(self, shape: Sequence[int], generator: torch.Generator) -> Tensor:
        """``shape`` independent draws, float64 on the CPU."""
        raise NotImplementedError

    def bounds(self) -> tuple[float, float]:
        """The smallest interval holding every draw (``-inf``/``inf`` when unbounded)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Uniform(Distribution):
    """Uniform on ``[low, high]``; ``low == high`` is a constant."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"Uniform: expected finite bounds, got ({self.low}, {self.high})")
        if self.low > self.high:
            raise ValueError(f"Uniform: expected low <= high, got an inverted range ({self.low}, {self.high})")

    def sample(self, shape: Sequence[int], generator: torch.Generator) -> Tensor:
        draw = torch.rand(tuple(shape), generator=generator, dtype=torch.float64)
        return self.low + (self.high - self.low) * draw

    def bounds(self) -> tuple[float, float]:
        return (self.low, self.high)


@dataclass(frozen=True)
class CardinalAngles(Distribution):
    """An angle near one of a few directions, with Gaussian jitter.

    The default is the seed method's primary-angle scheme: near 0, 90, 180 or
    270 degrees with probabilities 0.4, 0.3, 0.2 and 0.1, plus Gaussian jitter
    (standard deviation 5 degrees here; radians throughout).
    """

    centers: tuple[float, ...] = (0.0, math.pi / 2, math.pi, 3 * math.pi / 2)
    weights: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
    jitter: float = math.radians(5.0)

    def __post_init__(self) -> None:
        if len(self.centers) == 0 or len(self.centers) != len(self.weights):
            raise ValueError(
                f"CardinalAngles: expected as many weights as centers (at least one), got {len(self.centers)} centers "
                f"and {len(self.weights)} weights"
            )
        if any(not math.isfinite(w) or w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"CardinalAngles: expected non-negative weights with a positive sum, got {self.weights}")
        if not math.isfinite(self.jitter) or self.jitter < 0:
            raise ValueError(f"CardinalAngles: expected a jitter >= 0 (radians), got {self.jitter}")

    def sample(self, shape: Sequence[int], generator: torch.Generator) -> Tensor:
        shape = tuple(shape)
        weights = torch.tensor(self.weights, dtype=torch.float64)
        count = math.prod(shape)
        choice = torch.multinomial(weights, count, replacement=True, generator=generator) if count else weights[:0].long()
        centers = torch.tensor(self.centers, dtype=torch.float64)[choice].view(shape)
        return centers + self.jitter * torch.randn(shape, generator=generator, dtype=torch.float64)

    def bounds(self) -> tuple[float, float]:
        if self.jitter == 0:
            used = [c for c, w in zip(self.centers, self.weights) if w > 0]
            return (min(used), max(used))
        return (-math.inf, math.inf)


class PerView(Distribution):
    """One distribution per view: column ``v`` of a ``(B, V)`` draw comes from ``distributions[v]``.

    Each entry is anything :func:`as_distribution` accepts (a number, a
    ``(low, high)`` range or a distribution). Example: two orthogonal views
    with 3 degrees of jitter, ``PerView([(-0.05, 0.05), (1.52, 1.62)])``.
    """

    def __init__(self, distributions) -> None:
        items = list(distributions)
        if not items:
            raise ValueError("PerView: expected one distribution per view, got none")
        self.distributions = tuple(as_distribution(f"PerView[{index}]", item) for index, item in enumerate(items))

    def __repr__(self) -> str:
        return f"PerView({list(self.distributions)!r})"

    def __len__(self) -> int:
        return len(self.distributions)

    def sample(self, shape: Sequence[int], generator: torch.Generator) -> Tensor:
        shape = tuple(shape)
        if not shape or shape[-1] != len(self.distributions):
            raise ValueError(f"PerView: {len(self.distributions)} distributions cannot fill a draw of shape {shape} "
                             "(the last axis is the views)")
        return torch.stack([d.sample(shape[:-1], generator) for d in self.distributions], -1)

    def bounds(self) -> tuple[float, float]:
        lows, highs = zip(*(d.bounds() for d in self.distributions))
        return (min(lows), max(highs))


def as_distribution(name: str, value) -> Distribution:
    """A :class:`Distribution` from a number (constant), a ``(low, high)`` pair (uniform) or a distribution.

    Raises ``ValueError``/``TypeError`` naming ``name`` for anything else, or an inverted range.
    """
    if isinstance(value, Distribution):
        return value
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected a number, a (low, high) pair or a Distribution, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value}")
        return Uniform(float(value), float(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        low, high = float(value[0]), float(value[1])
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{name}: expected finite bounds, got {tuple(value)}")
        if low > high:
            raise ValueError(f"{name}: expected a (low, high) range with low <= high, got an inverted range {tuple(value)}")
        return Uniform(low, high)
    raise TypeError(f"{name}: expected a number, a (low, high) pair or a Distribution, got {value!r}")
