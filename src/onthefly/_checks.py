"""Input checks shared by the public entry points.

Every check raises ``ValueError`` or ``TypeError`` naming the argument, what
was expected and what was given. Checks run where user input enters the
library, never inside the rendering hot path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def as_tensor(name: str, value, *, dtype: torch.dtype | None = None, device=None) -> Tensor:
    """Convert a number, sequence or tensor to a floating tensor, or raise ``TypeError``."""
    if isinstance(value, Tensor):
        tensor = value
        if dtype is not None and not tensor.is_floating_point():
            tensor = tensor.to(dtype)
    else:
        try:
            tensor = torch.as_tensor(value, dtype=dtype or torch.get_default_dtype())
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name}: expected a number, sequence or tensor, got {type(value).__name__}") from error
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype and not isinstance(value, Tensor):
        tensor = tensor.to(dtype)
    if device is not None:
        tensor = tensor.to(device)
    return tensor


def check_finite(name: str, tensor: Tensor) -> None:
    # min and max propagate NaN and reach any infinity, without a full-size temporary mask
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


def check_ndim(name: str, tensor: Tensor, ndims: Sequence[int], layout: str) -> None:
    if tensor.dim() not in tuple(ndims):
        raise ValueError(f"{name}: expected shape {layout}, got {tuple(tensor.shape)}")


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return value


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value
