"""How a set of CTs is divided: shards for distributed ranks, splits that keep each patient on one side.

Plain functions of positions and patient ids, used by
:meth:`~onthefly.sampling.bank.VolumeBank.shard` and
:meth:`~onthefly.sampling.bank.VolumeBank.split` (which make sub-banks of the positions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .._checks import is_int

__all__ = ["shard_positions", "patient_split"]


def shard_positions(count: int, rank: int, world: int) -> list[int]:
    """Positions ``rank, rank + world, ...`` of ``count`` CTs: disjoint shares for the ``world`` ranks.

    Example:
        >>> shard_positions(5, 1, 2)
        [1, 3]
    """
    for name, value in (("rank", rank), ("world", world)):
        if not is_int(value):
            raise TypeError(f"{name}: expected an int, got {value!r}")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank, world: expected 0 <= rank < world, got rank {rank} and world {world}")
    if count < world:
        raise ValueError(f"world: expected at most {count} ranks (one CT each at least), got {world}")
    return list(range(rank, count, world))


def patient_split(patients: Sequence[str], fractions: Sequence[float], *, seed: int) -> list[list[int]]:
    """Positions of the CTs of each part: about ``fractions`` of them each, never one patient in two parts.

    Args:
        patients: the patient id of each CT, in order.
        fractions: the parts' shares, positive, summing to 1.
        seed: the patients are shuffled with it and given in turn to the part
            whose share of CTs is not yet reached.

    Example:
        >>> patient_split(["a", "a", "b", "c", "d"], (0.6, 0.4), seed=0)
        [[0, 1, 2], [4, 3]]
    """
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Sequence) or not all(
        isinstance(f, (int, float, np.integer, np.floating)) and not isinstance(f, bool) for f in fractions
    ):
        raise TypeError(f"fractions: expected a sequence of numbers such as (0.8, 0.2), got {fractions!r}")
    if not is_int(seed):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    total = len(patients)
    shares = [float(f) for f in fractions]
    groups_of: dict[str, list[int]] = {}
    for position, patient in enumerate(patients):
        groups_of.setdefault(patient, []).append(position)
    if 1 < len(shares) and len(groups_of) < len(shares):
        raise ValueError(
            f"fractions: the bank of {total} CT(s) from {len(groups_of)} patient(s) cannot be split into "
            f"{len(shares)} disjoint parts (asked {list(fractions)}): every part needs a patient of its own. "
            "Give held-out CTs separately (a second prepared folder; with `onthefly train`, --eval-volumes), "
            "or prepare more patients"
        )
    if len(shares) < 1 or any(not math.isfinite(f) or f <= 0 for f in shares) or abs(sum(shares) - 1) > 1e-6:
        raise ValueError(f"fractions: expected positive fractions summing to 1, got {list(fractions)!r}")
    order = torch.randperm(len(groups_of), generator=torch.Generator().manual_seed(seed)).tolist()
    groups = list(groups_of.values())
    bounds = np.cumsum(shares) * total
    members: list[list[int]] = [[] for _ in shares]
    given = 0
    for patient in order:
        part = min(int(np.searchsorted(bounds, given, side="right")), len(shares) - 1)
        members[part] += groups[patient]
        given += len(groups[patient])
    for part, chosen in enumerate(members):
        if not chosen:
            raise ValueError(
                f"fractions: part {part} of {list(fractions)} gets no CT ({len(groups_of)} patients, {total} CTs)"
            )
    return members
