"""Task samplers for the other multi-view X-ray systems: the same pipeline with another view layout and target.

Each is a :class:`~onthefly.sampling.stream.DRRCorrespondenceSampler` built
with a view layout (:mod:`onthefly.sampling.layouts`) and a target builder
(:mod:`onthefly.sampling.targets`); nothing is overridden, so CTs, crops,
degenerate-draw checks, seeded streams, resume and DataLoader workers behave
as in the correspondence stream. Each yields its own batch type.

* :class:`BiplanarSampler` (X-Recon's set-up): a PA and a lateral view in, the
  CT crop as an ``S^3`` volume in ``[0, 1]`` out (:class:`~onthefly.sampling.batch.BiplanarBatch`);
  :class:`~onthefly.losses.ProjectionLoss` compares volumes through their DRRs.
* :class:`AngularSequenceSampler` (Xray2Xray's set-up): ``T`` views of one crop
  at evenly or randomly spaced angles around one axis, optionally with the
  geometry of a standing PA chest radiograph (:class:`~onthefly.sampling.batch.SequenceBatch`).
* :class:`NovelViewSampler` (SV-DRR's set-up): a source view, ``M`` target views
  (optionally at a higher resolution, up to 512 x 512), their relative angles
  and camera poses, and the correspondence (:class:`~onthefly.sampling.batch.NovelViewBatch`).

Angles in radians, lengths in mm; camera frames as :func:`~onthefly.geometry.camera_to_world`.
"""

from __future__ import annotations

import math

from .geometry import camera_to_world, relative_camera_pose
from .losses import ProjectionLoss
from .sampling.batch import BiplanarBatch, NovelViewBatch, SequenceBatch
from .sampling.layouts import AngularSequence, BiplanarViews, SourceAndTargets
from .sampling.stream import DRRCorrespondenceSampler
from .sampling.targets import MAX_TARGET_SIZE, NovelViewTarget, SequenceTarget, VolumeTarget
from .volume import TARGET_ATTENUATION_SCALE, TARGET_HU_WINDOW

__all__ = [
    "BiplanarSampler",
    "BiplanarBatch",
    "ProjectionLoss",
    "AngularSequenceSampler",
    "SequenceBatch",
    "NovelViewSampler",
    "NovelViewBatch",
    "camera_to_world",
    "relative_camera_pose",
    "TARGET_HU_WINDOW",
    "TARGET_ATTENUATION_SCALE",
    "CHEST_SID_MM",
    "CHEST_SDD_MM",
    "MAX_TARGET_SIZE",
]

CHEST_SID_MM = 1650.0
"""Source to isocenter of a standing PA chest radiograph: about 1800 mm source to detector, with the
mid-chest about 150 mm in front of the detector."""

CHEST_SDD_MM = 1800.0
"""Source to detector of a standing chest radiograph (the usual 180 cm, 72 inches)."""


def _refuse(owner: str, settings: dict, reasons: dict[str, str]) -> None:
    for name, reason in reasons.items():
        if name in settings:
            raise ValueError(f"{name}: {owner} sets it itself ({reason}), got {settings[name]!r}")


class BiplanarSampler(DRRCorrespondenceSampler):
    """PA and lateral DRRs of random CT crops with the crop itself as the target (X-Recon's set-up).

    The layout is :class:`~onthefly.sampling.layouts.BiplanarViews` (view 0 PA,
    view 1 lateral, uniform angle jitter), the target
    :class:`~onthefly.sampling.targets.VolumeTarget` (the crop resampled to
    ``volume_size^3`` voxels, windowed to ``[0, 1]``).

    Args:
        volume_size: ``S``, target voxels per axis (at least 2).
        angle_jitter: radians, in ``[0, pi/8]``.
        lateral: ``"left"`` or ``"right"``, the patient's side at the detector.
        **settings: as :class:`~onthefly.sampling.stream.DRRCorrespondenceSampler`
            (``volumes`` is required). ``views``, ``alpha``, ``beta`` and ``gamma``
            are set here and refused. Defaults that differ: ``correspondence=False``,
            ``augmentation=None``; geometric augmentation is refused.

    Example:
        >>> sampler = BiplanarSampler(volumes=[example_volume()], volume_size=32, image_size=64, spacing=4.0,
        ...                           batch_size=4)
        >>> batch = sampler.sample(0)
        >>> batch.images.shape, batch.volume.shape, batch.volume_affine.shape
        (torch.Size([4, 2, 1, 64, 64]), torch.Size([4, 1, 32, 32, 32]), torch.Size([4, 4, 4]))
    """

    def __init__(self, *, volume_size: int = 64, angle_jitter: float = math.radians(3.0), lateral: str = "left",
                 **settings) -> None:
        _refuse("BiplanarSampler", settings, {"views": "two views, PA and lateral", "alpha": "PA and lateral",
                                              "beta": "angle_jitter", "gamma": "angle_jitter",
                                              "layout": "BiplanarViews", "target": "VolumeTarget"})
        settings.setdefault("correspondence", False)
        settings.setdefault("augmentation", None)
        super().__init__(views=2, layout=BiplanarViews(lateral=lateral, angle_jitter=angle_jitter),
                         target=VolumeTarget(size=volume_size), **settings)


class AngularSequenceSampler(DRRCorrespondenceSampler):
    """Sequences of ``T`` views of one crop at increasing angles around one axis (Xray2Xray's set-up).

    The layout is :class:`~onthefly.sampling.layouts.AngularSequence`: per sample a
    start ``a0`` and an arc ``A``; view ``k`` at ``a0 + k A / T`` (``"even"``) or at
    ``a0 + A u_k`` with sorted uniforms ``u`` (``"random"``); all views share one
    isocenter and the other angles, ``sid`` and ``sdd``.

    ``chest=True`` gives the geometry of a standing PA chest radiograph as the
    defaults: start at PA (``alpha = pi``; with ``axis="x"`` the fixed ``alpha``
    is PA), ``beta = 0`` (``axis="z"``), ``sid =`` :data:`CHEST_SID_MM` (1650 mm)
    and ``sdd =`` :data:`CHEST_SDD_MM` (1800 mm). Settings passed explicitly win.

    Args:
        views: ``T``, views per sequence (at least 2; default 8).
        angular_spacing: ``"even"`` or ``"random"``.
        arc: the angular extent ``A`` (radians): a number or a ``(low, high)``
            range drawn per sample, within ``(0, 2 pi]``.
        start: the first angle ``a0`` (radians): number, range or distribution;
            default ``(0, 2 pi)`` (``pi`` with ``chest=True``).
        axis: ``"z"`` (``alpha``) or ``"x"`` (``beta``).
        chest: standing chest-radiograph geometry (above).
        **settings: as :class:`~onthefly.sampling.stream.DRRCorrespondenceSampler`.
            The swept angle (``alpha`` for ``axis="z"``, ``beta`` for ``"x"``) is
            set here and refused. Defaults that differ: ``correspondence=False``,
            ``augmentation=None``; geometric augmentation is refused.

    Example:
        >>> sampler = AngularSequenceSampler(volumes=[example_volume()], views=8, image_size=64, spacing=4.0,
        ...                                  batch_size=2)
        >>> batch = sampler.sample(0)
        >>> batch.images.shape, batch.angles.shape
        (torch.Size([2, 8, 1, 64, 64]), torch.Size([2, 8]))
    """

    def __init__(self, *, views: int = 8, angular_spacing: str = "even", arc=2 * math.pi, start=None,
                 axis: str = "z", chest: bool = False, **settings) -> None:
        if not isinstance(chest, bool):
            raise TypeError(f"chest: expected a bool, got {chest!r}")
        if start is None:
            start = math.pi if chest else (0.0, 2 * math.pi)
        layout = AngularSequence(angular_spacing=angular_spacing, arc=arc, start=start, axis=axis)
        _refuse("AngularSequenceSampler", settings, {layout.swept: f"axis={axis!r} sweeps it; use start and arc",
                                                     "layout": "AngularSequence", "target": "SequenceTarget"})
        if chest:
            settings.setdefault("sid", CHEST_SID_MM)
            settings.setdefault("sdd", CHEST_SDD_MM)
            settings.setdefault("beta" if axis == "z" else "alpha", 0.0 if axis == "z" else math.pi)
        settings.setdefault("correspondence", False)
        settings.setdefault("augmentation", None)
        super().__init__(views=views, layout=layout, target=SequenceTarget(axis=axis), **settings)


class NovelViewSampler(DRRCorrespondenceSampler):
    """A source view and ``M`` target views of the same crop, with their relative pose (SV-DRR's set-up).

    The layout is :class:`~onthefly.sampling.layouts.SourceAndTargets` (target
    ``m`` turned from the source by ``d_alpha`` from ``relative_angle`` and
    ``d_beta`` from ``relative_beta``; one C-arm turning about one point), the
    target :class:`~onthefly.sampling.targets.NovelViewTarget` (targets at
    ``target_size``, same field of view, never augmented; the correspondence
    of all views at ``image_size``, on by default).

    Args:
        targets: ``M``, at least 1.
        target_size: ``H'`` or ``(H', W')``, at most 512, divisible by ``patch_size``,
            with the aspect ratio of ``image_size``; ``None``: ``image_size``.
        relative_angle: ``d_alpha`` (radians): number, ``(low, high)`` range or distribution.
        relative_beta: ``d_beta`` (radians), the same forms; default 0.
        **settings: as :class:`~onthefly.sampling.stream.DRRCorrespondenceSampler`
            (``views`` is set here and refused). Defaults that differ:
            ``augmentation=None``; geometric augmentation is refused.

    Example:
        >>> sampler = NovelViewSampler(volumes=[example_volume()], targets=2, image_size=64, target_size=128,
        ...                            spacing=4.0, batch_size=2)
        >>> batch = sampler.sample(0)
        >>> batch.source.shape, batch.targets.shape, batch.relative_pose.shape, batch.correspondence.shape
        (torch.Size([2, 1, 1, 64, 64]), torch.Size([2, 2, 1, 128, 128]), torch.Size([2, 2, 4, 4]), torch.Size([2, 48, 48]))
    """

    def __init__(self, *, targets: int = 1, target_size: int | tuple[int, int] | None = None,
                 relative_angle=(-math.pi / 2, math.pi / 2), relative_beta=0.0, **settings) -> None:
        layout = SourceAndTargets(targets=targets, relative_angle=relative_angle, relative_beta=relative_beta)
        _refuse("NovelViewSampler", settings, {"views": "1 + targets", "layout": "SourceAndTargets",
                                               "target": "NovelViewTarget"})
        settings.setdefault("augmentation", None)
        super().__init__(views=1 + targets, layout=layout, target=NovelViewTarget(size=target_size), **settings)

    @property
    def num_targets(self) -> int:
        """``M``."""
        return self.config.layout.targets
