"""Input checks shared by the public entry points.

Every check raises ``ValueError`` or ``TypeError`` naming the argument, what
was expected and what was given. Checks run where user input enters the
library, never inside the rendering hot path.

Physical bounds (millimetres): lengths (voxel spacings, source and detector
distances, detector pixels) lie in ``[MIN_LENGTH_MM, MAX_LENGTH_MM]`` =
``[1e-3, 1e5]`` and positions (isocenters, affine translations) within
``MAX_LENGTH_MM`` of the world origin. Outside them float32 arithmetic loses
the geometry (1e5 mm is 100 m; 1e-3 mm is a micrometre), so such values are
refused rather than rendered as NaN or infinity.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

MIN_LENGTH_MM = 1e-3
"""Smallest spacing or distance accepted, mm."""
MAX_LENGTH_MM = 1e5
"""Largest spacing, distance or distance from the world origin accepted, mm."""
OMIT_WHEN = "omit_when"
"""Configuration field metadata key: a description (and fingerprint) leaves the field out while it holds this
value, the behaviour of versions before the field existed (``SamplerConfig.describe``)."""


def check_tensor_kind(name: str, tensor: Tensor) -> Tensor:
    """Refuse tensors that hold no real values: complex and meta tensors (``TypeError``)."""
    if tensor.is_complex():
        raise TypeError(f"{name}: expected real values, got a complex tensor ({tensor.dtype})")
    if tensor.device.type == "meta":
        raise TypeError(f"{name}: expected a tensor with values, got a meta tensor (shape {tuple(tensor.shape)})")
    return tensor


def as_tensor(name: str, value, *, dtype: torch.dtype | None = None, device=None) -> Tensor:
    """Convert a number, sequence, array or tensor to a real tensor, or raise ``TypeError``.

    A tensor keeps its floating dtype; integers (and non-tensor values) become ``dtype``
    (default: torch's default dtype). Complex and meta tensors, strings and other objects are refused.
    """
    if isinstance(value, Tensor):
        tensor = check_tensor_kind(name, value)
        if dtype is not None and not tensor.is_floating_point():
            tensor = tensor.to(dtype)
    else:
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError(f"{name}: expected a number, sequence or tensor, got {type(value).__name__}")
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name}: expected a number, sequence or tensor, got {type(value).__name__}") from error
        check_tensor_kind(name, tensor)
        tensor = tensor.to(dtype or torch.get_default_dtype())
    if device is not None:
        tensor = tensor.to(device)
    return tensor


def check_finite(name: str, tensor: Tensor) -> None:
    # min and max propagate NaN and reach any infinity, without a full-size temporary mask
    check_tensor_kind(name, tensor)
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor.detach())
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name}: expected finite values, found {bad} NaN or infinite entries")


def check_positive(name: str, tensor: Tensor) -> None:
    check_finite(name, tensor)
    if not bool((tensor > 0).all()):
        raise ValueError(f"{name}: expected values > 0, got minimum {float(tensor.min()):g}")


def check_range(name: str, tensor: Tensor, low: float, high: float, unit: str) -> None:
    """Every entry finite and in ``[low, high]`` (one host read when all is well)."""
    check_tensor_kind(name, tensor)
    if tensor.numel() == 0:
        return
    values = tensor.detach()
    smallest, largest = (bound.double() for bound in torch.aminmax(values))  # NaN propagates; no full-size temporary
    if bool((smallest >= low) & (largest <= high)):  # in float64: a half-precision bound would round to inf
        return
    values = values.double()
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        raise ValueError(f"{name}: expected finite values in [{low:g}, {high:g}] {unit}, "
                         f"found {int((~finite).sum())} NaN or infinite entries")
    raise ValueError(f"{name}: expected values in [{low:g}, {high:g}] {unit}, "
                     f"got values from {float(values.min()):g} to {float(values.max()):g}")


def check_length(name: str, tensor: Tensor) -> None:
    """A spacing or distance in mm: finite and within ``[MIN_LENGTH_MM, MAX_LENGTH_MM]``."""
    check_range(name, tensor, MIN_LENGTH_MM, MAX_LENGTH_MM, "mm")


def check_position(name: str, tensor: Tensor) -> None:
    """World coordinates in mm: finite and within ``MAX_LENGTH_MM`` of the origin."""
    check_range(name, tensor, -MAX_LENGTH_MM, MAX_LENGTH_MM, "mm")


def check_ndim(name: str, tensor: Tensor, ndims: Sequence[int], layout: str) -> None:
    if tensor.dim() not in tuple(ndims):
        raise ValueError(f"{name}: expected shape {layout}, got {tuple(tensor.shape)}")


def is_real(value) -> bool:
    """Whether ``value`` is a real number (Python or numpy) and not a ``bool``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value) -> bool:
    """Whether ``value`` is a Python ``int`` and not a ``bool`` (the test behind the checks that keep their own
    message; :func:`check_int` also takes numpy integers and 0-d integer tensors)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """A whole number (Python or numpy integer, or a 0-d integer tensor) in ``[minimum, maximum]``, as ``int``."""
    if isinstance(value, (bool, float)) or (isinstance(value, Tensor) and value.is_floating_point()):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError as error:
        raise TypeError(f"{name}: expected an int, got {value!r}") from error
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]" if minimum is not None else f"<= {maximum}"
        raise ValueError(f"{name}: expected an int {bounds}, got {number}")
    return number


def check_positive_int(name: str, value) -> int:
    try:
        return check_int(name, value, minimum=1)
    except TypeError:
        raise TypeError(f"{name}: expected a positive int, got {value!r}") from None
    except ValueError:
        raise ValueError(f"{name}: expected a positive int, got {value}") from None


def check_real(name: str, value, *, low: float | None = None, high: float | None = None, unit: str = "") -> float:
    """A finite real number (Python, numpy or a one-element tensor) in ``[low, high]``, as ``float``."""
    if isinstance(value, Tensor):
        check_tensor_kind(name, value)
        if value.numel() != 1:
            raise TypeError(f"{name}: expected a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    suffix = f" {unit}" if unit else ""
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected a finite number{suffix}, got {number}")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]" if low is not None else f"<= {high:g}"
        raise ValueError(f"{name}: expected a number {bounds}{suffix}, got {number:g}")
    return number


def check_one_or_three(name: str, value, *, what: str = "positive numbers",
                       bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """One length or three (mm), as a 3-tuple of floats: one number repeats on the three axes.

    ``value`` is a real number, a list or tuple of them, or an array or tensor of one or three real values
    (not booleans). Values must be finite and greater than 0, or, where ``bounds = (low, high)`` is given, in
    ``[low, high]``. ``ValueError`` names ``name`` and says "one or three ``what`` (mm)" (a wrong count or
    type, or without ``bounds`` a value that is not finite and positive) or "values in [low, high] mm".

    Example:
        >>> check_one_or_three("spacing", 2)
        (2.0, 2.0, 2.0)
    """
    if isinstance(value, (Tensor, np.ndarray)):
        items = value.reshape(-1).tolist()
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) not in (1, 3) or not all(is_real(item) for item in items):
        raise ValueError(f"{name}: expected one or three {what} (mm), got {value!r}")
    if bounds is None:
        if not all(math.isfinite(item) and item > 0 for item in items):
            raise ValueError(f"{name}: expected one or three {what} (mm), got {value!r}")
    elif not all(math.isfinite(item) and bounds[0] <= item <= bounds[1] for item in items):
        raise ValueError(f"{name}: expected values in [{bounds[0]:g}, {bounds[1]:g}] mm, got {value!r}")
    return tuple(float(item) for item in items * (3 // len(items)))


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value
