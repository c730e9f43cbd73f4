"""View layouts: how the ``V`` views of a sample are posed.

A layout draws the per-view pose parameters ``alpha, beta, gamma`` (radians)
and ``sid, sdd`` (mm), each ``(B, V)`` float64 on the host, from an explicit
generator, plus any values of its own (``extras``, each with a leading ``B``
axis, kept in :attr:`~onthefly.sampling.params.SampleParams.layout`). The
crop, the isocenter jitter, the degenerate-draw checks and their redraws are
the same for every layout (:mod:`onthefly.sampling.draw`).

* :class:`IndependentViews` (default): every view drawn from the sampler's
  distributions (the seed method's scheme).
* :class:`BiplanarViews`: a PA and a lateral view with angle jitter (X-Recon).
* :class:`AngularSequence`: ``T`` views at increasing angles about one axis (Xray2Xray).
* :class:`SourceAndTargets`: a source view and ``M`` targets at drawn relative angles (SV-DRR).

Geometry follows :mod:`onthefly.geometry`: ``alpha = pi`` is PA (source
posterior), ``alpha = +pi/2`` puts the source at the patient's left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_choice, check_positive_int
from ..distributions import Distribution, PerView, as_distribution
from .params import POSE_NAMES

__all__ = [
    "ViewLayout",
    "IndependentViews",
    "BiplanarViews",
    "AngularSequence",
    "SourceAndTargets",
    "LATERAL_ALPHA",
]

LATERAL_ALPHA = {"left": -math.pi / 2, "right": math.pi / 2}
"""Primary angle of a lateral view by the patient's side at the detector (the source on the other side)."""


class ViewLayout:
    """How a sample's views are posed; subclasses are frozen dataclasses (their fields are configuration)."""

    shared_isocenter = False
    """Whether all views of a sample share view 0's isocenter (one C-arm turning about one point)."""

    pose_settings: tuple[str, ...] = ()
    """The sampler's pose distributions this layout sets itself (passing them to the sampler is an error)."""

    def check(self, config) -> None:
        """Raise ``ValueError`` naming the setting if ``config`` does not fit this layout."""

    def draw(self, config, batch_size: int, generator: torch.Generator) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(poses, extras)``: :data:`POSE_NAMES` tensors ``(B, V)`` float64, and the layout's own values."""
        raise NotImplementedError


def _check_per_view(config) -> None:
    for name in POSE_NAMES:
        distribution = getattr(config, name)
        if isinstance(distribution, PerView) and len(distribution) != config.views:
            raise ValueError(f"{name}: expected one distribution per view ({config.views}), got {len(distribution)}")


@dataclass(frozen=True)
class IndependentViews(ViewLayout):
    """Every view's pose drawn independently from the sampler's ``alpha, beta, gamma, sid, sdd`` distributions."""

    def check(self, config) -> None:
        _check_per_view(config)

    def draw(self, config, batch_size: int, generator: torch.Generator):
        shape = (batch_size, config.views)
        return {name: getattr(config, name).sample(shape, generator) for name in POSE_NAMES}, {}


def _check_angle(name: str, value, *, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        raise ValueError(f"{name}: expected a number in [0, {high:g}] (radians), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class BiplanarViews(ViewLayout):
    """View 0 is PA (``alpha = pi``), view 1 a lateral view; each angle gets uniform jitter in ``[-angle_jitter, angle_jitter]``.

    ``lateral="left"`` (the usual chest lateral: the patient's left at the
    detector, ``alpha = -pi/2``) or ``"right"`` (``alpha = +pi/2``). The central
    rays meet at 90 degrees within ``4 angle_jitter``. ``sid`` and ``sdd`` come
    from the sampler's distributions. No extras.
    """

    lateral: str = "left"
    angle_jitter: float = math.radians(3.0)
    pose_settings = ("alpha", "beta", "gamma")

    def __post_init__(self) -> None:
        check_choice("lateral", self.lateral, tuple(LATERAL_ALPHA))
        object.__setattr__(self, "angle_jitter", _check_angle("angle_jitter", self.angle_jitter, high=math.pi / 8))

    def check(self, config) -> None:
        if config.views != 2:
            raise ValueError(f"views: a biplanar layout has two views (PA and lateral), got {config.views}")
        _check_per_view(config)

    def draw(self, config, batch_size: int, generator: torch.Generator):
        centres = torch.tensor([math.pi, LATERAL_ALPHA[self.lateral]], dtype=torch.float64)

        def jitter() -> Tensor:
            return (torch.rand(batch_size, 2, generator=generator, dtype=torch.float64) * 2 - 1) * self.angle_jitter

        alpha = centres + jitter()
        beta = jitter()
        gamma = jitter()
        shape = (batch_size, 2)
        poses = dict(alpha=alpha, beta=beta, gamma=gamma, sid=config.sid.sample(shape, generator),
                     sdd=config.sdd.sample(shape, generator))
        return poses, {}


@dataclass(frozen=True)
class AngularSequence(ViewLayout):
    """``T`` views of one crop at increasing angles about one axis, one C-arm turning about one point.

    Per sample a start ``a0`` and an arc ``A`` (radians) are drawn; view ``k`` is
    at ``a0 + k A / T`` (``angular_spacing="even"``) or ``a0 + A u_k`` with ``u``
    the sorted draws of ``T`` uniforms in ``[0, 1)`` (``"random"``). ``axis="z"``
    sweeps ``alpha``; ``"x"`` sweeps ``beta``. The other angles, ``sid`` and
    ``sdd`` are drawn once per sample (view 0's distribution) and shared.
    Extras: ``start`` and ``arc``, ``(B,)`` radians.
    """

    angular_spacing: str = "even"
    arc: Distribution | float | tuple[float, float] = 2 * math.pi
    start: Distribution | float | tuple[float, float] = (0.0, 2 * math.pi)
    axis: str = "z"
    shared_isocenter = True

    def __post_init__(self) -> None:
        check_choice("angular_spacing", self.angular_spacing, ("even", "random"))
        check_choice("axis", self.axis, ("z", "x"))
        arc = as_distribution("arc", self.arc)
        low, high = arc.bounds()
        if not (low > 0 and high <= 2 * math.pi + 1e-9):
            raise ValueError(f"arc: expected arcs in (0, 2 pi] radians, got a range from {low:g} to {high:g}")
        object.__setattr__(self, "arc", arc)
        object.__setattr__(self, "start", as_distribution("start", self.start))

    @property
    def swept(self) -> str:
        """The swept angle: ``"alpha"`` (``axis="z"``) or ``"beta"`` (``axis="x"``)."""
        return "alpha" if self.axis == "z" else "beta"

    @property
    def pose_settings(self) -> tuple[str, ...]:
        return (self.swept,)

    def draw(self, config, batch_size: int, generator: torch.Generator):
        views = config.views
        start = self.start.sample((batch_size,), generator)
        arc = self.arc.sample((batch_size,), generator)
        if self.angular_spacing == "even":
            fraction = torch.arange(views, dtype=torch.float64)[None] / views
        else:
            fraction = torch.rand(batch_size, views, generator=generator, dtype=torch.float64).sort(-1).values
        swept = start[:, None] + arc[:, None] * fraction  # (B, T)
        poses = {
            name: getattr(config, name).sample((batch_size, views), generator)[:, :1].expand(batch_size, views).clone()
            for name in POSE_NAMES
        }
        poses[self.swept] = swept
        return poses, {"start": start, "arc": arc}


@dataclass(frozen=True)
class SourceAndTargets(ViewLayout):
    """A source view (view 0) and ``targets`` target views turned from it by drawn relative angles.

    The source pose comes from the sampler's distributions; target ``m`` has
    ``alpha = source alpha + d_alpha`` and ``beta = source beta + d_beta``
    (``d_alpha`` from ``relative_angle``, ``d_beta`` from ``relative_beta``,
    radians); its ``gamma``, ``sid``, ``sdd`` and isocenter are the source's.
    Extras: ``relative_alpha`` and ``relative_beta``, ``(B, M)`` radians.
    """

    targets: int = 1
    relative_angle: Distribution | float | tuple[float, float] = (-math.pi / 2, math.pi / 2)
    relative_beta: Distribution | float | tuple[float, float] = 0.0
    shared_isocenter = True

    def __post_init__(self) -> None:
        check_positive_int("targets", self.targets)
        object.__setattr__(self, "relative_angle", as_distribution("relative_angle", self.relative_angle))
        object.__setattr__(self, "relative_beta", as_distribution("relative_beta", self.relative_beta))

    def check(self, config) -> None:
        if config.views != 1 + self.targets:
            raise ValueError(f"views: a source and {self.targets} targets make {1 + self.targets} views, "
                             f"got {config.views}")

    def draw(self, config, batch_size: int, generator: torch.Generator):
        shape = (batch_size, config.views)
        source = {name: getattr(config, name).sample(shape, generator)[:, :1] for name in POSE_NAMES}
        d_alpha = self.relative_angle.sample((batch_size, self.targets), generator)
        d_beta = self.relative_beta.sample((batch_size, self.targets), generator)
        zero = torch.zeros(batch_size, 1, dtype=torch.float64)
        poses = {
            "alpha": source["alpha"] + torch.cat([zero, d_alpha], 1),
            "beta": source["beta"] + torch.cat([zero, d_beta], 1),
            **{name: source[name].expand(shape).clone() for name in ("gamma", "sid", "sdd")},
        }
        return poses, {"relative_alpha": d_alpha, "relative_beta": d_beta}
