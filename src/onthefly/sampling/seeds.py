"""Stream seeds: every random draw of batch ``step`` of rank ``rank`` starts from ``stream_seed(seed, rank, step, purpose)``.

One generator per purpose (geometry, augmentation, device noise, fractures),
so adding draws to one purpose never shifts another's, and a batch is a pure
function of ``(seed, rank, step)`` and the configuration.
"""

from __future__ import annotations

import hashlib

__all__ = ["stream_seed", "GEOMETRY", "AUGMENTATION", "NOISE", "FRACTURES", "PHYSICS", "ANATOMY"]

GEOMETRY = 0
"""Purpose of the generator that draws CTs, crops and poses (and their redraws)."""
AUGMENTATION = 1
"""Purpose of the generator that draws the augmentation parameters."""
NOISE = 2
"""Purpose of the device generator that draws the augmentation noise."""
FRACTURES = 3
"""Purpose of the generator that draws the fracture parameters."""
# 4 is left unused: purposes keep their numbers, so every stream stays the same.
PHYSICS = 5
"""Purpose of the generator that draws the radiograph physics (spectrum, dose, scatter, blur, noise keys)."""
ANATOMY = 6
"""Purpose of the generator that draws the anatomical variation (affine and elastic deformation of the crops)."""


def stream_seed(*parts: int, namespace: str = "") -> int:
    """A 63-bit seed mixed from integers, stable across runs, processes and platforms.

    ``namespace`` (a prefix of the hashed text, such as ``"mura:"``) gives
    another family of seeds from the same integers.

    Example:
        >>> stream_seed(0, 0, 5, GEOMETRY) == stream_seed(0, 0, 5, GEOMETRY) != stream_seed(0, 1, 5, GEOMETRY)
        True
    """
    digest = hashlib.blake2b((namespace + ":".join(str(int(part)) for part in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
