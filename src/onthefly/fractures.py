"""Simulated bone fractures, cut into CT crops on the fly before they are rendered.

A fracture is a thin gap through bone: a disc of radius ``extent`` (mm) and
thickness ``width`` (mm) with a random normal ``n``, centred on a bone voxel
``c``. Bone inside the disc is replaced by soft tissue. Optionally the bone on
the positive side of the disc (``n . (x - c) > width / 2``) slides along a
tangent ``t`` (perpendicular to ``n``) by ``displacement`` mm at the gap, the
shift fading linearly to zero ``extent`` mm away from the gap so that the bone
bends back instead of breaking a second time.

As everywhere in the library, the random parameters are drawn apart from their
use: :func:`draw_fractures` draws them on the host from an explicit
``torch.Generator``; :func:`apply_fractures` cuts them into a batch of crops
where the crops live, with no loop over samples, no host-device
synchronisation and no data-dependent shapes.

Units: world millimetres, attenuation in 1/mm (``mu = mu_water * (1 + HU / 1000)``,
see :func:`~onthefly.volume.hu_to_attenuation`). Nothing here is differentiable
(the choice of the centre voxel is discrete); use it under ``torch.no_grad()``.

Bone: voxels whose label is one of the skeletal structures (TotalSegmentator
names, matched by :func:`bone_label_lookup`) when the CT has a label map, else
voxels above ``bone_hu`` (:func:`bone_mask`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .volume import MU_WATER_PER_MM

__all__ = [
    "BONE_STRUCTURES",
    "FractureConfig",
    "FractureResult",
    "apply_fractures",
    "bone_label_lookup",
    "bone_mask",
    "draw_fractures",
    "fracture_window",
]

BONE_STRUCTURES: tuple[str, ...] = (
    "rib", "vertebrae", "sacrum", "sternum", "clavicula", "scapula", "humerus", "radius", "ulna", "carpal",
    "metacarpal", "phalanges", "hip", "femur", "patella", "tibia", "fibula", "tarsal", "metatarsal", "skull",
)
"""Skeletal TotalSegmentator structure names (v1 and v2), as name patterns.

A label name matches a pattern when it equals it or starts with the pattern
followed by ``_`` (case-insensitive): ``"rib"`` matches ``"rib_left_1"``,
``"vertebrae"`` matches ``"vertebrae_T8"``, ``"hip"`` matches ``"hip_left"``.
``costal_cartilages`` is not bone.
"""

_PARAMETER_KEYS = ("drawn", "normal", "tangent", "width", "extent", "displacement", "position")


def _as_range(name: str, value, *, minimum: float, strict: bool) -> tuple[float, float]:
    """A scalar or ``(low, high)`` pair as a checked ``(low, high)`` float pair."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        pair = (float(value), float(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        pair = (float(value[0]), float(value[1]))
    else:
        raise ValueError(f"{name}: expected a number or a (low, high) pair of numbers (mm), got {value!r}")
    low, high = pair
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name}: expected finite values (mm), got {value!r}")
    if low > high:
        raise ValueError(f"{name}: inverted range, expected low <= high, got ({low:g}, {high:g})")
    if low < minimum or (strict and low <= minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{name}: expected values {bound} mm, got ({low:g}, {high:g})")
    return pair


def _as_probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
    return float(value)


def _as_finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number (HU), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class FractureConfig:
    """How fractures are drawn. Lengths in mm; a range is a number or a ``(low, high)`` pair.

    Attributes:
        probability: chance that a sample is fractured (a sample whose crop holds
            no bone is never fractured).
        width: gap thickness, mm (> 0).
        extent: radius of the cut disc, mm (> 0); also the distance over which a
            displacement fades out.
        displacement: shift of the bone on one side of the gap along the fracture
            plane, mm (>= 0).
        displacement_probability: chance that a fracture is displaced.
        soft_tissue_hu: what bone in the gap (and bone a displaced fragment
            leaves) becomes, HU; must be below ``bone_hu``.
        bone_hu: bone threshold, HU, for CTs without a (matching) label map.
        structures: label names (patterns, see :data:`BONE_STRUCTURES`) or integer
            label ids counted as bone; ``None`` for :data:`BONE_STRUCTURES`.

    Example:
        >>> FractureConfig(probability=1.0, width=(1.0, 2.0)).width
        (1.0, 2.0)
    """

    probability: float = 0.5
    width: float | tuple[float, float] = (0.5, 3.0)
    extent: float | tuple[float, float] = (8.0, 25.0)
    displacement: float | tuple[float, float] = (0.0, 2.0)
    displacement_probability: float = 0.5
    soft_tissue_hu: float = 40.0
    bone_hu: float = 300.0
    structures: Sequence[str | int] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "probability", _as_probability("probability", self.probability))
        set_(self, "displacement_probability", _as_probability("displacement_probability", self.displacement_probability))
        set_(self, "width", _as_range("width", self.width, minimum=0.0, strict=True))
        set_(self, "extent", _as_range("extent", self.extent, minimum=0.0, strict=True))
        set_(self, "displacement", _as_range("displacement", self.displacement, minimum=0.0, strict=False))
        set_(self, "soft_tissue_hu", _as_finite("soft_tissue_hu", self.soft_tissue_hu))
        set_(self, "bone_hu", _as_finite("bone_hu", self.bone_hu))
        if self.soft_tissue_hu >= self.bone_hu:
            raise ValueError(
                f"soft_tissue_hu: expected a value below bone_hu ({self.bone_hu:g} HU), got {self.soft_tissue_hu:g}"
            )
        if self.structures is not None:
            items = (self.structures,) if isinstance(self.structures, (str, int)) else self.structures
            try:
                items = tuple(items)
            except TypeError:
                raise ValueError(f"structures: expected label names or ids, got {self.structures!r}") from None
            if not items or not all(
                (isinstance(i, str) and i) or (isinstance(i, int) and not isinstance(i, bool) and i >= 0) for i in items
            ):
                raise ValueError(
                    f"structures: expected a non-empty sequence of label names or ids >= 0, got {self.structures!r}"
                )
            set_(self, "structures", items)

    @property
    def bone_structures(self) -> tuple[str | int, ...]:
        """The structures counted as bone (``structures`` or :data:`BONE_STRUCTURES`)."""
        return BONE_STRUCTURES if self.structures is None else tuple(self.structures)


@dataclass
class FractureResult:
    """What :func:`apply_fractures` returns (tensors on the crops' device).

    Attributes:
        attenuation: ``(B, D, H, W)`` fractured crops, 1/mm (a new tensor;
            samples without a fracture are bit-identical to the input).
        fractured: ``(B,)`` bool, the label: drawn and the crop holds bone.
        center: ``(B, 3)`` world mm of the fracture centre (a bone voxel centre),
            NaN where ``fractured`` is False; dtype of the affine.
        center_index: ``(B, 3)`` long voxel index of the centre in the crop
            (the chosen bone voxel, also where not fractured; 0 without bone).
        has_bone: ``(B,)`` bool, whether the crop holds any bone voxel.
        changed: ``(B,)`` long, how many voxels changed.
    """

    attenuation: Tensor
    fractured: Tensor
    center: Tensor
    center_index: Tensor
    has_bone: Tensor
    changed: Tensor


# ---------------------------------------------------------------------------- bone


def _name_matches(name: str, pattern: str) -> bool:
    name, pattern = name.lower(), pattern.lower()
    return name == pattern or name.startswith(pattern + "_")


def bone_label_lookup(
    label_names: Mapping[int, str] | None,
    structures: Sequence[str | int] | None = None,
    *,
    size: int | None = None,
) -> Tensor:
    """A lookup table ``(L,)`` bool: ``table[label]`` is True where ``label`` is bone.

    Args:
        label_names: ``{label id: structure name}`` of a CT's label map (may be
            ``None`` when only integer ids are given).
        structures: name patterns (see :data:`BONE_STRUCTURES`) or integer label
            ids; default :data:`BONE_STRUCTURES`.
        size: table length ``L`` (default: one more than the largest id named).

    Returns:
        ``(L,)`` bool on the CPU; all False when nothing matches.

    Example:
        >>> bone_label_lookup({1: "liver", 2: "rib_left_1", 3: "vertebrae_T8"}).tolist()
        [False, False, True, True]
    """
    names = dict(label_names or {})
    patterns = BONE_STRUCTURES if structures is None else tuple(structures)
    ids = set()
    for item in patterns:
        if isinstance(item, int) and not isinstance(item, bool):
            ids.add(int(item))
        else:
            ids.update(label for label, name in names.items() if _name_matches(str(name), str(item)))
    length = max([*ids, *names.keys(), -1]) + 1 if size is None else int(size)
    table = torch.zeros(max(length, 1), dtype=torch.bool)
    for label in ids:
        if 0 <= label < table.numel():
            table[label] = True
    return table


def bone_mask(
    attenuation: Tensor,
    *,
    labels: Tensor | None = None,
    bone_labels: Tensor | None = None,
    bone_hu: float = 300.0,
    mu_water: float = MU_WATER_PER_MM,
) -> Tensor:
    """Which voxels are bone: by label map when given, else by an HU threshold.

    Args:
        attenuation: ``(B, D, H, W)`` (or any shape) 1/mm.
        labels: optional integer label map of the same shape.
        bone_labels: with ``labels``: a bool lookup table ``(L,)`` (shared) or
            ``(B, L)`` (per sample) from :func:`bone_label_lookup`; label ids
            ``>= L`` are not bone.
        bone_hu: threshold (HU) used without labels: bone is ``HU > bone_hu``.
        mu_water: attenuation of water, 1/mm.

    Returns:
        bool, the shape of ``attenuation``.
    """
    if labels is None:
        threshold = mu_water * (1.0 + bone_hu / 1000.0)
        return attenuation > threshold
    if bone_labels is None:
        raise ValueError("bone_labels: required with labels (a bool lookup table from bone_label_lookup)")
    if tuple(labels.shape) != tuple(attenuation.shape):
        raise ValueError(f"labels: expected the shape of attenuation {tuple(attenuation.shape)}, got {tuple(labels.shape)}")
    table = bone_labels.to(device=labels.device, dtype=torch.bool)
    if table.dim() == 1:
        table = table[None].expand(labels.shape[0], -1)
    if table.dim() != 2 or table.shape[0] != labels.shape[0]:
        raise ValueError(f"bone_labels: expected shape (L,) or ({labels.shape[0]}, L), got {tuple(bone_labels.shape)}")
    length = table.shape[1]
    table = torch.cat([table, torch.zeros_like(table[:, :1])], 1)  # a last False entry for ids out of range
    ids = labels.long().reshape(labels.shape[0], -1)
    ids = torch.where((ids >= 0) & (ids < length), ids, length)
    return table.gather(1, ids).view(labels.shape)


# ---------------------------------------------------------------------------- draw


def draw_fractures(config: FractureConfig, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Draw the fracture parameters of ``batch_size`` samples on the host.

    Every call draws the same number of values whatever the outcome, so a
    batch's draws depend only on the generator's state.

    Returns:
        CPU tensors (float64 unless said):

        * ``drawn`` ``(B,)`` bool: Bernoulli(``probability``);
        * ``normal`` ``(B, 3)`` unit normal of the cut (uniform on the sphere);
        * ``tangent`` ``(B, 3)`` unit direction of the displacement, perpendicular to ``normal``;
        * ``width``, ``extent`` ``(B,)`` mm, uniform in their ranges;
        * ``displacement`` ``(B,)`` mm, uniform in its range with probability
          ``displacement_probability``, else 0;
        * ``position`` ``(B,)`` in ``[0, 1)``: which bone voxel is the centre
          (its rank among the crop's bone voxels, as a fraction).

    Example:
        >>> params = draw_fractures(FractureConfig(), 4, torch.Generator().manual_seed(0))
        >>> params["normal"].shape, params["drawn"].dtype
        (torch.Size([4, 3]), torch.bool)
    """
    if not isinstance(config, FractureConfig):
        raise TypeError(f"config: expected a FractureConfig, got {type(config).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    b, f64 = batch_size, torch.float64

    def uniform(bounds: tuple[float, float]) -> Tensor:
        return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(b, generator=generator, dtype=f64)

    drawn = torch.rand(b, generator=generator, dtype=f64) < config.probability
    normal = F.normalize(torch.randn(b, 3, generator=generator, dtype=f64), dim=-1, eps=1e-12)
    other = torch.randn(b, 3, generator=generator, dtype=f64)
    tangent = other - (other * normal).sum(-1, keepdim=True) * normal
    tangent = F.normalize(tangent, dim=-1, eps=1e-12)
    width = uniform(config.width)
    extent = uniform(config.extent)
    displaced = torch.rand(b, generator=generator, dtype=f64) < config.displacement_probability
    displacement = torch.where(displaced, uniform(config.displacement), torch.zeros(b, dtype=f64))
    position = torch.rand(b, generator=generator, dtype=f64)
    return dict(
        drawn=drawn, normal=normal, tangent=tangent, width=width, extent=extent, displacement=displacement,
        position=position,
    )


# ---------------------------------------------------------------------------- apply


def fracture_window(config: FractureConfig, spacing: Sequence[float] | Tensor) -> tuple[int, int, int]:
    """Voxels per axis of the box around a fracture's centre that holds every voxel it may change.

    The reach from the centre is at most
    ``hypot(extent + displacement, width / 2 + extent)`` (the displaced fragment's
    far corner) plus one voxel, with the ranges' upper ends.

    Args:
        config: the fracture settings.
        spacing: ``(3,)`` voxel edges along D, H, W, mm.

    Returns:
        odd sizes ``(d, h, w)`` (the caller caps them at the crop's shape).
    """
    spacing = [float(s) for s in torch.as_tensor(spacing, dtype=torch.float64).reshape(-1).expand(3)]
    extent, width, shift = config.extent[1], config.width[1], config.displacement[1]
    reach = math.hypot(extent + shift, width / 2 + extent) + max(spacing)
    return tuple(2 * math.ceil(reach / s) + 1 for s in spacing)


def apply_fractures(
    attenuation: Tensor,
    affine: Tensor,
    params: Mapping[str, Tensor],
    *,
    config: FractureConfig = FractureConfig(),
    bone: Tensor | None = None,
    mu_water: float = MU_WATER_PER_MM,
    window: Sequence[int] | None = None,
) -> FractureResult:
    """Cut the drawn fractures into a batch of crops, all samples at once, on their device.

    Per sample: the centre is the bone voxel whose rank among the crop's bone
    voxels (flattened D, H, W order) is ``floor(position * count)``. A sample is
    fractured where ``drawn`` and the crop holds bone. Then, in world mm with
    ``s = n . (x - c)`` and ``r`` the distance from the normal axis through ``c``:

    * displacement (where ``displacement > 0``): the bone with
      ``width / 2 < s < width / 2 + extent`` and ``r < extent`` (the fragment)
      moves by ``displacement * tangent * (1 - (s - width / 2) / extent)``
      (trilinear resampling of the original crop; a voxel the moved fragment
      covers in part mixes it with what lies beneath); voxels the fragment
      leaves become soft tissue;
    * gap: bone with ``r < extent`` is blended towards soft tissue (bone
      voxels already less dense, such as label-map edges, keep their value) by the
      fraction of the voxel (taken as a slab of its thickness along ``n``)
      inside ``|s| < width / 2``, so gaps thinner than a voxel keep their mass
      deficit and oblique gaps have no holes.

    Only a box of ``window`` voxels around each centre (default
    :func:`fracture_window`) is computed and written back.

    Args:
        attenuation: ``(B, D, H, W)`` crops, 1/mm. Not modified.
        affine: ``(B, 4, 4)`` crop voxel-to-world matrices, mm.
        params: :func:`draw_fractures` output (host or device tensors).
        config: the settings (``soft_tissue_hu``, ``bone_hu``; the ranges size the window).
        bone: optional ``(B, D, H, W)`` bool bone mask (e.g. :func:`bone_mask`
            from a label map); default: ``attenuation`` above ``config.bone_hu``.
        mu_water: attenuation of water, 1/mm.
        window: box size ``(d, h, w)`` in voxels; default from ``config`` and the
            affine's spacing (read on the host: pass it to keep an accelerator
            free of synchronisation).

    Returns:
        a :class:`FractureResult`.

    Example:
        >>> crops = torch.full((2, 16, 16, 16), 0.02); crops[:, :, 6:10] = 0.04  # a bone slab
        >>> affine = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
        >>> params = draw_fractures(FractureConfig(probability=1.0), 2, torch.Generator().manual_seed(0))
        >>> result = apply_fractures(crops, affine, params, config=FractureConfig(probability=1.0))
        >>> result.attenuation.shape, result.fractured.tolist()
        (torch.Size([2, 16, 16, 16]), [True, True])
    """
    if not isinstance(attenuation, Tensor) or attenuation.dim() != 4:
        shape = tuple(attenuation.shape) if isinstance(attenuation, Tensor) else type(attenuation).__name__
        raise ValueError(f"attenuation: expected shape (B, D, H, W), got {shape}")
    b, depth, height, width = attenuation.shape
    if not isinstance(affine, Tensor) or tuple(affine.shape) != (b, 4, 4):
        shape = tuple(affine.shape) if isinstance(affine, Tensor) else type(affine).__name__
        raise ValueError(f"affine: expected shape ({b}, 4, 4), got {shape}")
    missing = [key for key in _PARAMETER_KEYS if key not in params]
    if missing:
        raise ValueError(f"params: missing {missing} (expected the output of draw_fractures)")
    for key in _PARAMETER_KEYS:
        expected = (b, 3) if key in ("normal", "tangent") else (b,)
        if tuple(params[key].shape) != expected:
            raise ValueError(f"params: expected {key} of shape {expected}, got {tuple(params[key].shape)}")
    if bone is not None and tuple(bone.shape) != tuple(attenuation.shape):
        raise ValueError(f"bone: expected the shape of attenuation {tuple(attenuation.shape)}, got {tuple(bone.shape)}")
    if window is None:
        window = fracture_window(config, affine[:, :3, :3].detach().double().cpu().norm(dim=1).amin(0))
    window = [int(w) for w in window]
    if len(window) != 3 or min(window) < 1:
        raise ValueError(f"window: expected three positive voxel counts, got {window!r}")

    device, dtype = attenuation.device, attenuation.dtype
    p = {key: params[key].to(device) for key in _PARAMETER_KEYS}
    affine = affine.to(device)
    if bone is None:
        bone = bone_mask(attenuation, bone_hu=config.bone_hu, mu_water=mu_water)
    soft = mu_water * (1.0 + config.soft_tissue_hu / 1000.0)

    # ---- the centre: the bone voxel of the drawn rank, in D-slice-major order (running counts + searchsorted,
    # first over slices, then within the chosen slice: one pass over the mask instead of a full running sum)
    per_slice = bone.sum((2, 3), dtype=torch.int32)  # (B, D)
    running = per_slice.cumsum(1, dtype=torch.int32)
    count = running[:, -1]
    rank = torch.floor(p["position"].double() * count.double()).to(torch.int32)
    rank = torch.minimum(rank, count - 1).clamp_min(0)  # (B,)
    layer = torch.searchsorted(running, (rank + 1)[:, None]).clamp_max(depth - 1)  # (B, 1)
    within = rank[:, None] - (running.gather(1, layer) - per_slice.gather(1, layer))
    batch_index = torch.arange(b, device=device)
    plane = bone[batch_index, layer[:, 0]].reshape(b, -1).cumsum(1, dtype=torch.int32)  # (B, H*W)
    cell = torch.searchsorted(plane, within + 1).clamp_max(height * width - 1)[:, 0]
    center_index = torch.stack([layer[:, 0], cell // width, cell % width], -1)  # (B, 3)
    has_bone = count > 0
    fractured = p["drawn"].bool() & has_bone
    center = (affine[:, :3, :3] @ center_index.to(affine.dtype)[..., None])[..., 0] + affine[:, :3, 3]
    center = torch.where(fractured[:, None], center, torch.full_like(center, float("nan")))

    # ---- the box around each centre (static size, clamped inside the crop)
    dims = (depth, height, width)
    sizes = [min(w, n) for w, n in zip(window, dims)]
    axes = []
    for axis, (size, n) in enumerate(zip(sizes, dims)):
        start = (center_index[:, axis] - size // 2).clamp(0, n - size)
        axes.append(start[:, None] + torch.arange(size, device=device))  # (B, size)
    gather = (batch_index[:, None, None, None], axes[0][:, :, None, None], axes[1][:, None, :, None],
              axes[2][:, None, None, :])
    original = attenuation[gather]  # (B, d, h, w)
    is_bone = bone[gather]

    # ---- geometry in the box relative to the centre, from per-axis terms: s = n . (x - c) and
    # r^2 = |x - c|^2 - s^2 = sum_ab M_ab o_a o_b with M = A^T A - (A^T n)(A^T n)^T (A: the voxel-to-world columns)
    linear = affine[:, :3, :3].to(dtype)
    normal, tangent = p["normal"].to(dtype), p["tangent"].to(dtype)
    half = (p["width"].to(dtype) / 2)[:, None, None, None]
    extent = p["extent"].to(dtype)[:, None, None, None]
    shift = p["displacement"].to(dtype)
    o = [(axes[a] - center_index[:, a, None]).to(dtype) for a in range(3)]  # (B, size_a) voxel offsets
    along = (linear * normal[:, :, None]).sum(1)  # (B, 3): n . column_a, mm per voxel step along n
    m = linear.transpose(1, 2) @ linear - along[:, :, None] * along[:, None, :]  # (B, 3, 3)
    s = (o[0] * along[:, 0, None])[:, :, None, None] + (o[1] * along[:, 1, None])[:, None, :, None]
    s = s + (o[2] * along[:, 2, None])[:, None, None, :]
    radius2 = (
        (m[:, 0, 0, None] * o[0] ** 2)[:, :, None] + (m[:, 1, 1, None] * o[1] ** 2)[:, None, :]
        + 2 * m[:, 0, 1, None, None] * o[0][:, :, None] * o[1][:, None, :]
    )[..., None] + (
        (2 * m[:, 0, 2, None, None] * o[0][:, :, None] * o[2][:, None, :]) + (m[:, 2, 2, None] * o[2] ** 2)[:, None, :]
    )[:, :, None, :]
    radius2 = radius2 + (2 * m[:, 1, 2, None, None] * o[1][:, :, None] * o[2][:, None, :])[:, None]
    disc = radius2 < extent**2

    # ---- displacement: the fragment slides along the tangent, fading out over `extent`
    beyond = s - half  # distance past the gap's positive face, mm
    fragment = is_bone & disc & (beyond > 0) & (beyond < extent)
    fade = torch.where(beyond > 0, (1 - beyond / extent).clamp_min_(0), 0.0)  # (B, d, h, w) in [0, 1]
    # (B, 3) voxel steps at the gap (solve_ex: no error check, hence no synchronisation), as grid_sample's
    # normalised (x=W, y=H, z=D) coordinates
    step = torch.linalg.solve_ex(linear, (shift[:, None] * tangent)[..., None])[0][..., 0]
    scale = torch.tensor([2.0 / max(size - 1, 1) for size in sizes], dtype=dtype, device=device)
    step = (step * scale).flip(-1)
    base = torch.stack(
        torch.meshgrid(*[torch.linspace(-1, 1, size, dtype=dtype, device=device) if size > 1
                         else torch.full((1,), -1.0, dtype=dtype, device=device) for size in reversed(sizes)],
                       indexing="ij"), -1
    ).permute(2, 1, 0, 3)  # (d, h, w, 3): identity sampling grid
    grid = torch.addcmul(base, fade[..., None], step.neg()[:, None, None, None, :])  # (B, d, h, w, 3)
    stack = torch.stack([original * fragment, fragment.to(dtype)], 1)  # (B, 2, d, h, w)
    sampled = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    del grid, stack
    # The moved fragment covers a share `occupancy` of each voxel, over what stays (its old place soft tissue).
    occupancy = sampled[:, 1].clamp_(0, 1)
    displaced = (shift > 0)[:, None, None, None]
    out = torch.where(fragment, soft, original).mul_(1 - occupancy).add_(sampled[:, 0])
    out = torch.where(displaced, out, original)
    bone_after = torch.where(displaced, (is_bone & ~fragment) | (occupancy > 0), is_bone)
    del sampled, occupancy, fade

    # ---- gap: the voxel's share of |s| < width / 2, the voxel taken as a slab of thickness t = |A^T n| along n
    # (exact for axis-aligned normals; for any normal the removed mass is width x area, and every row of voxels
    # crossing the plane meets the gap, since t is at least each |n . column_a|):
    # share = clamp((t + width) / 2 - |s|, 0, min(t, width)) / t
    thickness = along.norm(dim=1)[:, None, None, None]
    cut = s.abs_().neg_().add_((thickness + 2 * half) / 2).div_(thickness).clamp_min_(0)
    cut = torch.minimum(cut, torch.minimum(thickness, 2 * half) / thickness)
    cut = cut.mul_(disc & bone_after & fractured[:, None, None, None])
    # bone blends towards soft tissue; voxels already below soft tissue stay
    out = out.sub_(cut.mul_((out - soft).clamp_min_(0)))
    out = torch.where(fractured[:, None, None, None], out, original)

    result = attenuation.clone()
    result[gather] = out
    changed = (out != original).flatten(1).sum(1)
    return FractureResult(
        attenuation=result, fractured=fractured, center=center, center_index=center_index, has_bone=has_bone,
        changed=changed,
    )
