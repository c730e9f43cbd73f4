"""How visible a fracture is in each view, and the redraw of fractures nobody could see.

Line integrals are linear in attenuation, so the fracture's change of a view
is the projection of the box's change alone (``FractureResult.box_change``):
:func:`fracture_contrast` marches the rays of a small detector patch around
the bone point's projection through that box only, and takes the largest
absolute change of line integral in each view. :func:`fracture_visibility`
divides it by the view's range of line integrals, which is what the display
image (:func:`~onthefly.projector.to_display`, a per-view min-max scaling)
divides by: so the visibility is the largest change of the display image the
fracture causes, up to the few pixels where the fracture moves the view's
extremes. With another :class:`~onthefly.display.Display` (local contrast, a
percentile window) it divides by that display's window width instead: the
display's filter is linear and keeps most of a small, sharp change, so the
ratio is again about the largest change of the image (the fractures benchmark
measures how close).

The make stage of a sampler (per batch, on the crops' device)::

    tables = bone_weight_tables(store.label_names, config)            # once per store: (n, L)
    window = fracture_window(config, spacing)                          # once per store
    probe = visibility_probe(config, spacing=spacing, pixel_spacing=..., sid=..., sdd=..., image_size=...,
                             crop_radius=radius, display=display)     # once per sampler
    ranges = (view_ranges(crops, crop_affine, carm, display=display, pixel_spacing=...)
              if config.min_visibility > 0 else None)
    result = cut_visible_fractures(crops, crop_affine, params.fracture, carm, config=config, probe=probe,
                                   labels=label_crops, table=tables[volume_index], window=window,
                                   view_range=ranges, inplace=True)
    lines = render(VolumeBatch(attenuation=result.attenuation[:, None], affine=crop_affine), carm)
    visibility = fracture_visibility(result.contrast, display.width(lines[:, :, 0], pixel_spacing=...))  # (B, V)

Without ``min_visibility`` (and without fracture kinds, or with
``kind_min_visibility = 0``) the step cuts candidate 0 and measures it (one cut,
one patch march). With it, each round re-cuts every sample whose fracture is
still below ``min_visibility`` with its next candidate, keeps the more visible
of the two, and stops when none is left (one host read per round, never one
per sample) or after ``max_redraws`` rounds; samples still below are flagged
``invisible`` and keep their most visible candidate. The redraw judges a view
by ``view_range`` (a coarse render of the intact crops, :func:`view_ranges`);
the recorded visibility uses the final views' exact range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import is_int
from ..display import Display
from ..geometry import CArm, project_points
from ..projector import render
from ..volume import MU_WATER_PER_MM, VolumeBatch
from .config import FractureConfig
from .cut import CutBoxes, FractureCutter, FractureResult
from .draw import FractureParams

__all__ = [
    "VisibilityProbe",
    "cut_visible_fractures",
    "fracture_contrast",
    "fracture_visibility",
    "view_ranges",
    "visibility_probe",
]


@dataclass(frozen=True)
class VisibilityProbe:
    """The fixed sizes of the contrast measurement (host values, one per batch shape).

    Attributes:
        patch: detector pixels per side of the patch around the bone point's projection.
        stride: every ``stride``-th pixel of the patch is measured (1: all).
        step: ray step through the box, mm.
        reach: half the ray's length through the box, mm (the fracture's reach).
        display: the views' :class:`~onthefly.display.Display`, ``None`` for min-max: the
            contrast is measured on the change as that display's filter passes it.
        pixel_spacing: the detector's pixel edge, mm (for the display's filter).
    """

    patch: int
    stride: int
    step: float
    reach: float
    display: Display | None = None
    pixel_spacing: float = 1.0


def visibility_probe(config: FractureConfig, *, spacing: float | Sequence[float], pixel_spacing: float, sid: float,
                     sdd: float, image_size: int | Sequence[int], crop_radius: float = 0.0,
                     stride: int = 2, display: Display | None = None) -> VisibilityProbe:
    """The probe that sees all of a fracture's change in any view of a sampler (host numbers, fixed per sampler).

    A fracture changes voxels within ``config.reach`` of its bone point, and the
    bone point lies within ``crop_radius`` of the isocenter; the patch covers
    that sphere's projection at its largest magnification, ``sdd / (sid - crop_radius - reach)``.

    Args:
        config: the fracture settings.
        spacing: voxel edge(s), mm; the ray step is the smallest.
        pixel_spacing: detector pixel edge, mm.
        sid: the smallest source-to-isocenter distance, mm.
        sdd: the largest source-to-detector distance, mm.
        image_size: detector ``H`` or ``(H, W)`` pixels (the patch is at most this).
        crop_radius: largest distance of a bone point from a view's isocenter, mm
            (for a crop of edges ``e``: ``|e| / 2`` plus ``sqrt(3)`` times the isocenter jitter).
        stride: measure every ``stride``-th pixel first, then every pixel around the
            largest (:func:`fracture_contrast`); 1 measures every pixel.
        display: the views' display (``None`` or min-max: the change of line integrals itself).

    Example:
        >>> visibility_probe(FractureConfig(reach=20.0), spacing=1.0, pixel_spacing=1.0, sid=800.0, sdd=1000.0,
        ...                  image_size=128)
        VisibilityProbe(patch=55, stride=2, step=1.0, reach=20.0, display=None, pixel_spacing=1.0)
    """
    values = {"pixel_spacing": pixel_spacing, "sid": sid, "sdd": sdd, "crop_radius": crop_radius}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: expected a finite number >= 0 (mm), got {value!r}")
    if not is_int(stride) or stride < 1:
        raise ValueError(f"stride: expected a positive int, got {stride!r}")
    step = float(torch.as_tensor(spacing, dtype=torch.float64).min())
    if not math.isfinite(step) or step <= 0:
        raise ValueError(f"spacing: expected positive voxel edges (mm), got {spacing!r}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    magnification = sdd / max(sid - crop_radius - config.reach, 1.0)
    radius = config.reach * magnification / max(pixel_spacing, 1e-9)
    patch = min(2 * math.ceil(radius) + 3, *size)
    if display is not None and display.is_minmax:
        display = None
    if display is not None and pixel_spacing <= 0:
        raise ValueError(f"pixel_spacing: expected a length > 0 mm with a display, got {pixel_spacing!r}")
    return VisibilityProbe(patch=patch, stride=stride, step=step, reach=config.reach, display=display,
                           pixel_spacing=float(pixel_spacing))


def _rays(carm: CArm, samples: Tensor, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """Sources ``(M, V, 1, 3)`` and unit directions ``(M, V, m, 3)`` of pixels ``rows, cols (M, V, m)`` of
    the views of samples ``samples (M,)``."""
    # Each view's detector as an affine map of pixel coordinates (the pixel-centre convention of CArm):
    # only the patch's pixels are placed, not the whole detector's.
    frame = carm.detector_points(torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))[samples]  # (M, V, 3, 3)
    origin, along_row, along_col = frame[:, :, 0], frame[:, :, 1] - frame[:, :, 0], frame[:, :, 2] - frame[:, :, 0]
    pixels = (origin[:, :, None] + rows[..., None].to(frame.dtype) * along_row[:, :, None]
              + cols[..., None].to(frame.dtype) * along_col[:, :, None])  # (M, V, m, 3)
    source = carm.source_positions()[samples][:, :, None, :]
    return source, F.normalize(pixels - source, dim=-1)


def _march(change: Tensor, box_affine: Tensor, point: Tensor, rays: tuple[Tensor, Tensor],
           probe: VisibilityProbe) -> Tensor:
    """Line integrals of ``change (M, d, h, w)`` along ``rays`` (:func:`_rays`), ``(M, V, m)``.

    Trilinear samples ``probe.step`` mm apart over ``2 * probe.reach`` mm centred on the bone point's depth.
    """
    source, direction = rays
    samples = 2 * math.ceil(probe.reach / probe.step) + 1
    depth = ((point[:, None, None, :].to(source.dtype) - source) * direction).sum(-1, keepdim=True)
    first = source + (depth - (samples // 2) * probe.step) * direction  # (M, V, m, 3) world, the first sample
    # world -> the box's grid_sample coordinates, (x, y, z) = (W, H, D)
    inverse = torch.linalg.inv_ex(box_affine.double())[0]
    half = torch.tensor([max(n - 1, 1) / 2 for n in change.shape[1:]], dtype=inverse.dtype, device=inverse.device)
    to_grid = (inverse[:, :3] / half[:, None]).flip(1).to(source.dtype)  # (M, 3, 4), rows (x, y, z)
    start = torch.einsum("bij,bvmj->bvmi", to_grid[:, :, :3], first) + to_grid[:, None, None, :, 3] - 1.0
    step = torch.einsum("bij,bvmj->bvmi", to_grid[:, :, :3], direction * probe.step)
    along = torch.arange(samples, device=change.device, dtype=source.dtype)[:, None]
    grid = torch.addcmul(start[..., None, :], along, step[..., None, :])  # (M, V, m, S, 3)
    sampled = F.grid_sample(change[:, None].to(grid.dtype), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True)  # (M, 1, V, m, S)
    return sampled[:, 0].sum(-1) * probe.step


def _contrast(change: Tensor, box_affine: Tensor, point: Tensor, carm: CArm, samples: Tensor,
              probe: VisibilityProbe) -> Tensor:
    """Largest ``|line integral of change|`` over the probe's patch in each view of samples ``samples (M,)``, ``(M, V)``.

    Every ``stride``-th pixel of the patch first, then every pixel around the largest of those.
    """
    count, stride = math.ceil(probe.patch / probe.stride), probe.stride
    if len(samples) == 0:
        return change.new_zeros(0, carm.batch_shape[1])
    span = (count - 1) * stride
    points = point.new_zeros(carm.batch_shape[0], 3).index_copy(0, samples, point)  # project in the C-arm's batch
    pixel = torch.round(project_points(carm, points[:, None].to(carm.dtype))[samples, :, 0]).long()  # (M, V, 2)
    limit = torch.tensor([max(carm.height - 1 - span, 0), max(carm.width - 1 - span, 0)], device=pixel.device)
    first = torch.minimum((pixel - span // 2).clamp_min(0), limit)
    steps = stride * torch.arange(count, device=pixel.device)
    rows = (first[..., 0, None, None] + steps[:, None]).expand(-1, -1, count, count).flatten(2)
    cols = (first[..., 1, None, None] + steps[None, :]).expand(-1, -1, count, count).flatten(2)
    rows, cols = rows.clamp_max(carm.height - 1), cols.clamp_max(carm.width - 1)
    signed = _march(change, box_affine, point, _rays(carm, samples, rows, cols), probe)
    # Through a display's filter: the patch covers all of the change (zero beyond it), so the filter applied to the
    # patch is the filter applied to the view's change.
    shown = signed if probe.display is None else probe.display.processed(
        signed.unflatten(-1, (count, count)), pixel_spacing=probe.pixel_spacing * stride).flatten(-2)
    coarse = shown.abs()
    if stride == 1:
        return coarse.amax(-1).to(change.dtype)
    best = coarse.argmax(-1, keepdim=True)  # (M, V, 1)
    around = torch.arange(-(stride - 1), stride, device=pixel.device)
    rows = (rows.gather(-1, best)[..., None] + around[:, None]).expand(-1, -1, len(around), len(around)).flatten(2)
    cols = (cols.gather(-1, best)[..., None] + around[None, :]).expand(-1, -1, len(around), len(around)).flatten(2)
    rays = _rays(carm, samples, rows.clamp(0, carm.height - 1), cols.clamp(0, carm.width - 1))
    # Around the best pixel the filter's removed background is about constant: the same offset as at that pixel.
    removed = signed.gather(-1, best) - shown.gather(-1, best)
    fine = (_march(change, box_affine, point, rays, probe) - removed).abs()
    return torch.maximum(coarse.amax(-1), fine.amax(-1)).to(change.dtype)


def fracture_contrast(result: FractureResult, carm: CArm, *, probe: VisibilityProbe) -> Tensor:
    """The largest change of line integral a fracture causes in each view, ``(B, V)`` (dimensionless).

    Rays of the probe's detector patch around the bone point's projection
    march through the changed box only (``result.box_change``), trilinear
    samples ``probe.step`` mm apart over ``2 * probe.reach`` mm centred on the
    bone point's depth. 0 where not fractured.

    Args:
        result: :func:`apply_fractures`'s result.
        carm: the views, batch ``(B, V)``, on the crops' device.
        probe: the patch and step (:func:`visibility_probe`).
    """
    linear, origin = result.box_affine[:, :3, :3], result.box_affine[:, :3, 3]
    local = (result.center_index - result.box_start).to(result.box_affine.dtype)
    point = (linear @ local[..., None])[..., 0] + origin
    samples = torch.arange(result.box_change.shape[0], device=result.box_change.device)
    return _contrast(result.box_change, result.box_affine, point, carm, samples, probe)


def fracture_visibility(contrast: Tensor, line_integrals: Tensor) -> Tensor:
    """Visibility ``(B, V)``: each view's fracture contrast over its range of line integrals.

    Args:
        contrast: ``(B, V)`` from :func:`fracture_contrast` (``FractureResult.contrast``).
        line_integrals: the rendered views ``(B, V, 1, H, W)``, or their ranges ``(B, V)``
            (or a display's window widths, :meth:`~onthefly.display.Display.width`).

    Returns:
        ``(B, V)``, about the largest change of the display image (``to_display``, or that display) in ``[0, 1]``.

    Example:
        >>> fracture_visibility(torch.tensor([[0.3, 0.1]]), torch.tensor([[3.0, 2.0]]))
        tensor([[0.1000, 0.0500]])
    """
    if line_integrals.dim() == 5:
        flat = line_integrals.flatten(2)
        line_integrals = flat.amax(-1) - flat.amin(-1)
    if line_integrals.shape != contrast.shape:
        raise ValueError(f"line_integrals: expected views (B, V, 1, H, W) or ranges {tuple(contrast.shape)}, "
                         f"got {tuple(line_integrals.shape)}")
    return contrast / line_integrals.clamp_min(1e-8)


def view_ranges(attenuation: Tensor, affine: Tensor, carm: CArm, *, factor: int = 4, display: Display | None = None,
                pixel_spacing: float | None = None) -> Tensor:
    """A cheap estimate of each view's range of line integrals, ``(B, V)``: a coarse render of the crops.

    The crops are averaged over 2 x 2 x 2 voxels and rendered on a detector
    ``factor`` times coarser (about ``1 / (2 factor^2)`` of a full render's work).

    Args:
        attenuation: ``(B, D, H, W)`` crops, 1/mm.
        affine: ``(B, 4, 4)`` their voxel-to-world matrices.
        carm: the views, batch ``(B, V)``.
        factor: detector coarsening.
        display: with a :class:`~onthefly.display.Display` other than min-max, the
            width of its window (:meth:`~onthefly.display.Display.width`) instead of the range.
        pixel_spacing: the full detector's pixel edge (mm), needed with such a ``display``.
    """
    if not is_int(factor) or factor < 1:
        raise ValueError(f"factor: expected a positive int, got {factor!r}")
    if display is not None and display.is_minmax:
        display = None
    if display is not None and pixel_spacing is None:
        raise ValueError("pixel_spacing: expected the detector's pixel edge (mm) with a display other than min-max")
    pooled = F.avg_pool3d(attenuation[:, None], 2) if min(attenuation.shape[1:]) >= 2 else attenuation[:, None]
    scale = torch.eye(4, dtype=affine.dtype, device=affine.device)
    if pooled.shape[2:] != attenuation.shape[1:]:
        scale[:3, :3] *= 2
        scale[:3, 3] = 0.5
    coarse = CArm(alpha=carm.alpha, beta=carm.beta, gamma=carm.gamma, sid=carm.sid, sdd=carm.sdd,
                  isocenter=carm.isocenter, height=max(1, -(-carm.height // factor)),
                  width=max(1, -(-carm.width // factor)), pixel_spacing=carm.pixel_spacing * factor)
    lines = render(VolumeBatch(attenuation=pooled, affine=affine @ scale), coarse)[:, :, 0]
    if display is None:
        flat = lines.flatten(2)
        return flat.amax(-1) - flat.amin(-1)
    return display.width(lines, pixel_spacing=pixel_spacing * factor)


def cut_visible_fractures(
    attenuation: Tensor,
    affine: Tensor,
    params: FractureParams,
    carm: CArm,
    *,
    config: FractureConfig,
    probe: VisibilityProbe,
    bone: Tensor | None = None,
    labels: Tensor | None = None,
    table: Tensor | None = None,
    mu_water: float = MU_WATER_PER_MM,
    window: Sequence[int] | None = None,
    view_range: Tensor | None = None,
    samples: Tensor | None = None,
    within: float | None = None,
    inplace: bool = False,
    geometry: Tensor | None = None,
) -> FractureResult:
    """Cut each sample's fracture, measure its contrast, and redraw those below ``config.min_visibility``.

    Arguments as :func:`apply_fractures`, plus the views ``carm`` (batch
    ``(B, V)``, on the crops' device), the ``probe`` (:func:`visibility_probe`)
    and, with ``min_visibility > 0``, ``view_range (B, V)`` (:func:`view_ranges`)
    to judge visibility by; ``samples``, ``within``, ``inplace`` and ``geometry`` (fracture kinds) as
    :func:`apply_fractures`. See the
    module's description.

    Returns:
        a :class:`FractureResult` with ``contrast (B, V)``, ``choice`` and ``invisible`` set.
    """
    cutter = FractureCutter(attenuation, affine, params, config=config, bone=bone, labels=labels, table=table,
                            mu_water=mu_water, window=window, samples=samples, within=within, geometry=geometry)
    boxes = cutter.cut()
    contrast = _contrast(boxes.change, boxes.box_affine, boxes.point, carm, boxes.rows, probe)
    invisible = torch.zeros_like(boxes.fractured)
    if config.min_visibility > 0 or (cutter.geometry is not None and config.kind_min_visibility > 0):
        if view_range is None or view_range.shape != (attenuation.shape[0], contrast.shape[1]):
            shape = None if view_range is None else tuple(view_range.shape)
            raise ValueError(f"view_range: expected ranges ({attenuation.shape[0]}, {contrast.shape[1]}) "
                             f"(view_ranges) with min_visibility > 0 or fracture kinds, got {shape}")
        boxes, contrast, invisible = _redraw(cutter, boxes, contrast, carm, probe, view_range[boxes.rows], config)
    result = boxes.result(inplace=inplace)
    result.contrast, result.invisible = boxes.spread(contrast), boxes.spread(invisible, False)
    return result


def _redraw(cutter: FractureCutter, boxes: CutBoxes, contrast: Tensor, carm: CArm, probe: VisibilityProbe,
            view_range: Tensor, config: FractureConfig) -> tuple[CutBoxes, Tensor, Tensor]:
    """Rounds of re-cutting the samples still below ``min_visibility`` (``kind_min_visibility`` for a kind
    fracture) with their next candidate."""
    visibility = (contrast / view_range.clamp_min(1e-8)).amax(1)
    threshold = torch.where(boxes.kind >= 0, config.kind_min_visibility, config.min_visibility)
    for candidate in range(1, cutter.params.candidates):
        below = boxes.fractured & (visibility < threshold)
        if not bool(below.any()):  # one host read per round
            break
        other = cutter.cut(torch.full_like(boxes.choice, candidate))
        other_contrast = _contrast(other.change, other.box_affine, other.point, carm, other.rows, probe)
        other_visibility = (other_contrast / view_range.clamp_min(1e-8)).amax(1)
        better = below & other.fractured & (other_visibility > visibility)
        boxes = boxes.where(better, other)
        contrast = torch.where(better[:, None], other_contrast, contrast)
        visibility = torch.where(better, other_visibility, visibility)
    return boxes, contrast, boxes.fractured & (visibility < threshold)
