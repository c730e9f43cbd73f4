"""Drawing fractures: :class:`FractureParams` from a :class:`FractureConfig` and an explicit generator."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .._checks import is_int
from .config import FractureConfig
from .kinds import SLOTS

__all__ = ["FractureParams", "draw_fractures"]


@dataclass(frozen=True)
class FractureParams:
    """The drawn fractures of ``B`` samples, ``K`` candidates each (typed, batched tensors).

    Candidate 0 is the fracture; candidates ``1 .. K-1`` replace it when it is
    not visible enough (``FractureConfig.min_visibility``). The cut and motion
    parameters come in pairs, index ``c`` for cut ``c``: cut 0 through the
    bone point, cut 1 ``fragment_length`` further along the bone's axis (the
    comminuted pattern only). The fragment behind cut ``c`` moves with motion
    ``c``. Directions are azimuths about the bone's axis, in radians, measured
    in a frame the bone's axis fixes (see :func:`apply_fractures`).

    Attributes:
        drawn: ``(B,)`` bool, whether the sample is fractured (if its crop holds bone).
        position: ``(B, K)`` in ``[0, 1)``: which bone voxel is the bone point
            (its place in the crop's cumulative bone weight).
        comminuted: ``(B, K)`` bool, two cuts instead of one.
        fragment_length: ``(B, K)`` mm, distance between the two cuts.
        gap: ``(B, K, 2)`` mm, bone removed behind each cut.
        obliquity: ``(B, K, 2)`` rad, tilt of each cut's normal from the bone's axis.
        tilt_direction: ``(B, K, 2)`` rad, azimuth of that tilt.
        translation: ``(B, K, 2)`` mm, shift of each fragment across the bone's axis.
        translation_direction: ``(B, K, 2)`` rad, azimuth of that shift.
        angulation: ``(B, K, 2)`` rad, rotation of each fragment about its hinge.
        hinge_direction: ``(B, K, 2)`` rad, azimuth of the hinge axis.
        kind_draw: ``(B, K)`` in ``[0, 1)``: which kind, among those whose site lies in the crop (their
            cumulative weight); ``None``: the generic fracture only.
        severity: ``(B, K)`` long index into :data:`~onthefly.fractures.config.SEVERITY_NAMES` (kinds only).
        shape: ``(B, K, len(SLOTS))`` in ``[0, 1)``: uniform draws the chosen kind and severity turn into
            the gap, obliquity, motion and comminution (:data:`~onthefly.fractures.kinds.SLOTS`); the
            fields above hold the generic fracture's.

    All float64 (``drawn`` and ``comminuted`` bool) on the CPU unless moved.
    """

    drawn: Tensor
    position: Tensor
    comminuted: Tensor
    fragment_length: Tensor
    gap: Tensor
    obliquity: Tensor
    tilt_direction: Tensor
    translation: Tensor
    translation_direction: Tensor
    angulation: Tensor
    hinge_direction: Tensor
    kind_draw: Tensor | None = None
    severity: Tensor | None = None
    shape: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.drawn.shape[0])

    @property
    def candidates(self) -> int:
        return int(self.position.shape[1])

    def to(self, device: torch.device | str) -> "FractureParams":
        """The parameters on ``device`` (same dtypes)."""
        return FractureParams(**{item.name: _apply(getattr(self, item.name), lambda v: v.to(device))
                                 for item in fields(self)})

    def rows(self, index: Tensor) -> "FractureParams":
        """The parameters of samples ``index (M,)`` (long, on the parameters' device)."""
        return FractureParams(**{item.name: _apply(getattr(self, item.name), lambda v: v[index])
                                 for item in fields(self)})

    def first(self, count: int) -> "FractureParams":
        """The first ``count`` candidates of every sample."""
        return FractureParams(**{item.name: _apply(getattr(self, item.name),
                                                   lambda v: v if item.name == "drawn" else v[:, :count])
                                 for item in fields(self)})

    def select(self, choice: Tensor) -> "FractureParams":
        """Candidate ``choice[b]`` of each sample ``b``: parameters with ``K = 1``.

        Args:
            choice: ``(B,)`` long candidate index per sample, on the parameters' device.
        """
        picked = {"drawn": self.drawn}
        for item in fields(self):
            if item.name == "drawn":
                continue
            value = getattr(self, item.name)
            if value is None:
                picked[item.name] = None
                continue
            index = choice.view(-1, 1, *([1] * (value.dim() - 2))).expand(-1, 1, *value.shape[2:])
            picked[item.name] = value.gather(1, index)
        return FractureParams(**picked)


def _apply(value: Tensor | None, function) -> Tensor | None:
    return None if value is None else function(value)


def draw_fractures(config: FractureConfig, batch_size: int, generator: torch.Generator) -> FractureParams:
    """Draw the fractures of ``batch_size`` samples on the host.

    Every call draws the same values in the same order whatever their outcome
    (``K = config.kind_candidates`` candidates per sample, the first ``config.candidates``
    drawn first, as without kinds), so a batch's draws
    depend only on the generator's state. Ranges are uniform; directions
    uniform on the circle.

    Returns:
        a :class:`FractureParams` of CPU tensors.

    Example:
        >>> params = draw_fractures(FractureConfig(), 4, torch.Generator().manual_seed(0))
        >>> params.translation.shape, params.drawn.dtype  # 1 + max_redraws candidates: kinds' redraws
        (torch.Size([4, 5, 2]), torch.bool)
    """
    if not isinstance(config, FractureConfig):
        raise TypeError(f"config: expected a FractureConfig, got {type(config).__name__}")
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")

    def uniform(bounds: tuple[float, float], *extra: int, candidates: int = config.candidates) -> Tensor:
        draw = torch.rand(batch_size, candidates, *extra, generator=generator, dtype=torch.float64)
        return bounds[0] + (bounds[1] - bounds[0]) * draw

    turn = (0.0, 2 * math.pi)
    drawn = torch.rand(batch_size, generator=generator, dtype=torch.float64) < config.probability
    generic = _generic(config, uniform, turn)
    more = config.kind_candidates - config.candidates
    if more > 0:  # the redraw candidates of kind fractures, drawn after the others (which stay as they were)
        extra = _generic(config, lambda *args: uniform(*args, candidates=more), turn)
        generic = {name: torch.cat([generic[name], extra[name]], 1) for name in generic}
    # drawn after the generic fracture's values, so that those stay what they were before kinds existed;
    # a sample's redraw candidates keep its kind and severity
    candidates = config.kind_candidates
    kind_draw = uniform((0.0, 1.0), candidates=1).expand(-1, candidates).contiguous()
    shares = torch.tensor(config.severity_shares, dtype=torch.float64).cumsum(0)
    severity = torch.searchsorted(shares, uniform((0.0, 1.0), candidates=1) * shares[-1], right=True)
    severity = severity.clamp_max(len(shares) - 1).expand(-1, candidates).contiguous()
    sizes = uniform((0.0, 1.0), len(SLOTS), candidates=candidates)
    return FractureParams(drawn=drawn, **generic, kind_draw=kind_draw, severity=severity, shape=sizes)


def _generic(config: FractureConfig, uniform, turn: tuple[float, float]) -> dict[str, Tensor]:
    """The generic fracture's values, in their drawing order."""
    return dict(
        position=uniform((0.0, 1.0)),
        comminuted=uniform((0.0, 1.0)) < config.comminuted_probability,
        fragment_length=uniform(config.fragment_length),
        gap=uniform(config.gap, 2),
        obliquity=uniform(config.obliquity, 2),
        tilt_direction=uniform(turn, 2),
        translation=uniform(config.translation, 2),
        translation_direction=uniform(turn, 2),
        angulation=uniform(config.angulation, 2),
        hinge_direction=uniform(turn, 2),
    )
