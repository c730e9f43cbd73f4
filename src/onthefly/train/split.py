"""A CT cut into two disjoint parts, for held-out evaluation on anatomy never trained on."""

from __future__ import annotations

from ..volume import Volume

__all__ = ["split_volume"]


def split_volume(volume: Volume, *, fraction: float = 0.6, axis: int | None = None) -> tuple[Volume, Volume]:
    """Cut a CT into two disjoint parts along the patient's long axis, for held-out evaluation.

    Args:
        volume: the CT.
        fraction: share of the slices in the first (inferior) part.
        axis: voxel axis to cut (default: the one most aligned with world z, superior).

    Returns:
        ``(inferior, superior)`` volumes, each with its own correct affine.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a number in (0, 1), got {fraction!r}")
    if axis is None:
        axis = int(volume.affine[2, :3].abs().argmax())
    size = volume.shape[axis]
    cut = int(round(size * fraction))
    if not 0 < cut < size:
        raise ValueError(f"fraction: the cut at {cut} of {size} slices leaves an empty part")
    stop_a, start_b = list(volume.shape), [0, 0, 0]
    stop_a[axis], start_b[axis] = cut, cut
    first, second = volume.crop([0, 0, 0], stop_a), volume.crop(start_b, list(volume.shape))
    if float(volume.affine[2, axis]) < 0:  # voxel index grows towards inferior: swap
        first, second = second, first
    return first, second


# ---------------------------------------------------------------------------
# Distributed set-up
