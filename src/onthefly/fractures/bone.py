"""Bone: per-label weight tables, per-voxel weights, the bone point, the bone piece around it and its axis.

The tables are built once per CT on the host (:func:`bone_weight_table`);
everything else is batched tensor code on the crops' device, with no host
reads and shapes fixed by the inputs' shapes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..volume import MU_WATER_PER_MM, hu_to_attenuation  # noqa: F401 (doctest)
from .config import FractureConfig, attenuation_of

__all__ = ["BoneGeometries", "bone_geometry", "bone_label_lookup", "bone_weight_reader", "bone_weight_table",
           "bone_weight_tables", "bone_weights", "choose_bone_points", "choose_kind_points", "kind_geometry"]


def _name_matches(name: str, pattern: str) -> bool:
    name, pattern = name.lower(), pattern.lower()
    return name == pattern or name.startswith(pattern + "_")


def _weight_of(label: int, name: str, weights: Sequence[tuple[str | int, float]]) -> float:
    """The weight of the first entry naming ``label`` (by id or name pattern), else 0."""
    for key, weight in weights:
        if (isinstance(key, int) and key == label) or (isinstance(key, str) and _name_matches(name, key)):
            return weight
    return 0.0


def bone_weight_table(label_names: Mapping[int, str] | None, config: FractureConfig, *,
                      size: int | None = None) -> Tensor:
    """Per-label bone weights of one CT: ``table[label]`` is the relative chance of a bone point in that label.

    Built once per CT on the host from its ``label_names`` and
    ``config.bone_weights``; apply it to label crops with :func:`bone_weights`.

    Args:
        label_names: ``{label id: structure name}`` of the CT's label map, or ``None``.
        config: the fracture settings (``bones``).
        size: table length ``L`` (default: one more than the largest id named).

    Returns:
        ``(L,)`` float32 on the CPU, all 0 when no label matches (the CT then
        falls back to the HU threshold).

    Example:
        >>> names = {1: "liver", 2: "rib_left_1", 3: "vertebrae_T8", 4: "clavicula_left"}
        >>> bone_weight_table(names, FractureConfig()).tolist()
        [0.0, 0.0, 1.0, 0.10000000149011612, 3.0]
    """
    names = {int(label): str(name) for label, name in (label_names or {}).items()}
    weights = config.bone_weights
    ids = [key for key, _ in weights if isinstance(key, int)]
    length = max([*names, *ids, -1]) + 1 if size is None else int(size)
    table = torch.zeros(max(length, 1), dtype=torch.float32)
    for label in set(names) | set(ids):
        if 0 < label < table.numel():  # label 0 is the background
            table[label] = _weight_of(label, names.get(label, ""), weights)
    return table


def bone_weight_tables(label_names: Sequence[Mapping[int, str] | None], config: FractureConfig) -> Tensor:
    """The tables of several CTs, stacked ``(n, L)`` (zero-padded), for a store of ``n`` CTs.

    Raises:
        ValueError: when ``config.bones`` names bones explicitly and none of
            them matches a label of any CT (naming them), or no CT has label names.

    Example:
        >>> bone_weight_tables([{1: "rib_left_1"}, None], FractureConfig(bones=["rib"])).tolist()
        [[0.0, 1.0], [0.0, 0.0]]
    """
    made: dict[int, tuple[Mapping[int, str] | None, Tensor]] = {}  # one table per distinct label map object
    for names in label_names:  # (a phantom store's thousands of CTs share one)
        if id(names) not in made:
            made[id(names)] = (names, bone_weight_table(names, config))
    labelled = [table for names, table in made.values() if names]
    if config.bones is not None and not labelled:
        raise ValueError(f"bones: naming bones ({[key for key, _ in config.bones]}) needs CTs with label maps; "
                         "none of the CTs has one (leave bones=None to find bone by the HU threshold)")
    if config.bones is not None and labelled and not any(bool((table > 0).any()) for table in labelled):
        wanted = [key for key, weight in config.bones if weight > 0]
        known = sorted({name for names, _ in made.values() if names for name in names.values()})
        raise ValueError(f"bones: none of {wanted} matches a label of the CTs (their labels: "
                         f"{known[:12]}{' ...' if len(known) > 12 else ''})")
    length = max(table.numel() for _, table in made.values()) if made else 0
    padded = {key: F.pad(table, (0, length - table.numel())) for key, (_, table) in made.items()}
    return torch.stack([padded[id(names)] for names in label_names])


def bone_label_lookup(label_names: Mapping[int, str] | None, structures: Sequence[str | int] | None = None, *,
                      size: int | None = None) -> Tensor:
    """A bool table ``(L,)``: ``table[label]`` is True where the label is one of ``structures`` (default: any bone).

    Example:
        >>> bone_label_lookup({1: "liver", 2: "rib_left_1", 3: "vertebrae_T8"}).tolist()
        [False, False, True, True]
    """
    config = FractureConfig(bones=None if structures is None else list(structures))
    return bone_weight_table(label_names, config, size=size) > 0


def bone_weight_reader(attenuation: Tensor, *, config: FractureConfig, labels: Tensor | None = None,
                       table: Tensor | None = None, mu_water: float = MU_WATER_PER_MM) -> Callable[[tuple], Tensor]:
    """A function giving the bone-point weights of the crops at any voxels (an advanced index ``(sample, d, h, w)``).

    A voxel of a labelled CT weighs its label's weight (:func:`bone_weight_table`);
    a voxel of a CT without (matching) labels weighs 1 where it is denser than
    ``config.bone_hu``, else 0. Arguments as :func:`bone_weights`.
    """
    if attenuation.dim() != 4:
        raise ValueError(f"attenuation: expected shape (B, D, H, W), got {tuple(attenuation.shape)}")
    threshold = attenuation_of(config.bone_hu, mu_water)
    if labels is None:
        return lambda index: (attenuation[index] > threshold).float()
    if table is None:
        raise ValueError("table: required with labels (per-label weights from bone_weight_table)")
    if labels.shape != attenuation.shape:
        raise ValueError(f"labels: expected the shape of attenuation {tuple(attenuation.shape)}, got {tuple(labels.shape)}")
    batch = attenuation.shape[0]
    table = table.to(device=attenuation.device, dtype=torch.float32)
    table = table[None].expand(batch, -1) if table.dim() == 1 else table
    if table.dim() != 2 or table.shape[0] != batch:
        raise ValueError(f"table: expected shape (L,) or ({batch}, L), got {tuple(table.shape)}")
    labelled = table.amax(1) > 0  # (B,) CTs whose labels name a bone

    def read(index: tuple) -> Tensor:
        ids = labels[index].long()
        ids = torch.where((ids >= 0) & (ids < table.shape[1]), ids, 0)  # unknown ids weigh as the background
        rows = index[0].expand_as(ids)
        dense = (attenuation[index] > threshold).float()
        return torch.where(labelled[rows], table[rows, ids], dense)

    return read


def bone_weights(attenuation: Tensor, *, config: FractureConfig, labels: Tensor | None = None,
                 table: Tensor | None = None, mu_water: float = MU_WATER_PER_MM) -> Tensor:
    """Per-voxel chance of being the bone point, over whole crops.

    A voxel of a labelled CT weighs its label's weight (:func:`bone_weight_table`);
    a voxel of a CT without (matching) labels weighs 1 where it is denser than
    ``config.bone_hu``, else 0. (:func:`apply_fractures` reads these weights at
    a few voxels only; this function is for looking at them.)

    Args:
        attenuation: ``(B, D, H, W)`` crops, 1/mm.
        config: the fracture settings (``bone_hu``).
        labels: ``(B, D, H, W)`` integer label crops, or ``None``.
        table: with ``labels``: ``(L,)`` or ``(B, L)`` weights (one row per
            sample's CT); a row of zeros (no matching label) falls back to the threshold.
        mu_water: attenuation of water, 1/mm.

    Returns:
        ``(B, D, H, W)`` float32 weights, 0 where no bone point may fall.

    Example:
        >>> hu = torch.tensor([[[[0.0, 500.0, 500.0, 500.0]]]])
        >>> labels = torch.tensor([[[[0, 0, 2, 3]]]])
        >>> table = bone_weight_table({2: "rib_left_1", 3: "vertebrae_T8"}, FractureConfig())
        >>> bone_weights(hu_to_attenuation(hu), config=FractureConfig(), labels=labels, table=table).tolist()
        [[[[0.0, 0.0, 1.0, 0.10000000149011612]]]]
    """
    read = bone_weight_reader(attenuation, config=config, labels=labels, table=table, mu_water=mu_water)
    index = [torch.arange(n, device=attenuation.device) for n in attenuation.shape]
    return read((index[0].view(-1, 1, 1, 1), index[1].view(1, -1, 1, 1), index[2].view(1, 1, -1, 1),
                 index[3].view(1, 1, 1, -1)))


# ---------------------------------------------------------------------------- the bone point


def _pick(weights: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Index ``(..., K)`` of the entry of ``weights (..., M)`` holding cumulative weight ``target (..., K)``,
    and what is left of ``target`` inside it (float64)."""
    weights = weights.to(torch.float64)
    running = weights.cumsum(-1)
    index = torch.searchsorted(running, target, right=True).clamp_max(weights.shape[-1] - 1)
    return index, target - (running.gather(-1, index) - weights.gather(-1, index))


def _unravel(flat: Tensor, shape: Sequence[int]) -> Tensor:
    """Row-major indices ``(..., 3)`` of flat positions in ``shape``."""
    return torch.stack([flat // (shape[1] * shape[2]), (flat // shape[2]) % shape[1], flat % shape[2]], -1)


def choose_bone_points(weights_at: Callable[[tuple[Tensor, ...]], Tensor], shape: Sequence[int], position: Tensor,
                       *, lattice: int = 4) -> tuple[Tensor, Tensor]:
    """Bone points: a voxel chosen with probability about proportional to its weight, without a pass over the crops.

    First a cell of ``lattice^3`` voxels, weighted by the voxel at its centre
    (the crops' weights read on a lattice), then a voxel of that cell by its
    weight: cumulative weight ``position * total`` at each level. A bone as
    thin as ``lattice`` voxels is found; a crop whose lattice misses every
    bone counts as without bone.

    Args:
        weights_at: the weights ``(B, ...)`` at voxels given as an advanced index
            ``(sample, d, h, w)`` of broadcastable long tensors.
        shape: ``(B, D, H, W)`` of the crops.
        position: ``(B, K)`` in ``[0, 1)``.
        lattice: cell edge, voxels.

    Returns:
        ``index (B, K, 3)`` long crop voxel indices and ``has_bone (B,)`` bool.

    Example:
        >>> weights = torch.zeros(1, 8, 8, 8); weights[0, 5, 2, 6] = 1.0
        >>> index, has_bone = choose_bone_points(lambda i: weights[i], weights.shape, torch.tensor([[0.3]]), lattice=1)
        >>> index.tolist(), has_bone.tolist()
        ([[[5, 2, 6]]], [True])
    """
    batch, *dims = shape
    device = position.device
    cells = [max(n // lattice, 1) for n in dims]
    rows = torch.arange(batch, device=device)
    centres = [torch.arange(c, device=device) * lattice + min(lattice, n) // 2 for c, n in zip(cells, dims)]
    coarse = weights_at((rows.view(-1, 1, 1, 1), centres[0].view(1, -1, 1, 1), centres[1].view(1, 1, -1, 1),
                         centres[2].view(1, 1, 1, -1))).reshape(batch, -1)
    total = coarse.to(torch.float64).sum(-1)
    cell, within = _pick(coarse, position.to(torch.float64) * total[:, None])
    corner = _unravel(cell, cells) * lattice  # (B, K, 3)
    size = [min(lattice, n) for n in dims]
    voxels = [(corner[..., a, None] + torch.arange(size[a], device=device)).clamp_max(dims[a] - 1) for a in range(3)]
    fine = weights_at((rows.view(-1, 1, 1, 1, 1), voxels[0][..., :, None, None], voxels[1][..., None, :, None],
                       voxels[2][..., None, None, :]))  # (B, K, s, s, s)
    fine_total = fine.to(torch.float64).flatten(2).sum(-1)  # the lattice voxel is in the cell: > 0 where chosen
    voxel, _ = _pick(fine.flatten(2), (within / coarse.to(torch.float64).gather(1, cell).clamp_min(1e-12)
                                       * fine_total)[..., None])
    return corner + _unravel(voxel[..., 0], size), total > 0


def choose_kind_points(generic_at: Callable[[tuple[Tensor, ...]], Tensor], sites_at: Callable[[tuple[Tensor, ...]], Tensor],
                       shape: Sequence[int], position: Tensor, kind_draw: Tensor, weights: Tensor, *,
                       lattice: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    """Bone points of fracture kinds: per candidate a kind among those whose site the crop holds, then a voxel of it.

    As :func:`choose_bone_points`, with ``sites_at`` giving per voxel a weight
    per kind ``(..., n)`` (1 on the kind's site, else 0). On the lattice, the
    kinds a crop holds are those with some site voxel; candidate ``k`` takes
    the kind at cumulative weight ``kind_draw * total`` among them (``weights``
    ``(n,)``), then a voxel of its site by ``position``. A crop holding no
    kind's site takes the generic weights (``generic_at``), kind -1.

    Returns:
        ``index (B, K, 3)`` long voxel indices, ``has_bone (B,)`` bool, ``kind (B, K)`` long (-1: generic).
    """
    batch, *dims = shape
    device = position.device
    cells = [max(n // lattice, 1) for n in dims]
    rows = torch.arange(batch, device=device)
    centres = [torch.arange(c, device=device) * lattice + min(lattice, n) // 2 for c, n in zip(cells, dims)]
    index = (rows.view(-1, 1, 1, 1), centres[0].view(1, -1, 1, 1), centres[1].view(1, 1, -1, 1),
             centres[2].view(1, 1, 1, -1))
    generic = generic_at(index).reshape(batch, -1).to(torch.float64)  # (B, C)
    sites = sites_at(index).reshape(batch, generic.shape[1], -1).to(torch.float64)  # (B, C, n)
    held = sites.sum(1) > 0  # (B, n)
    cumulative = (weights.to(device=device, dtype=torch.float64) * held).cumsum(-1)
    total = cumulative[:, -1:]
    kind = torch.searchsorted(cumulative, kind_draw.to(torch.float64) * total, right=True).clamp_max(sites.shape[2] - 1)
    kind = torch.where(total > 0, kind, -1)  # (B, K)
    chosen = sites.gather(2, kind.clamp_min(0)[:, None, :].expand(-1, sites.shape[1], -1)).transpose(1, 2)
    coarse = torch.where(kind[..., None] >= 0, chosen, generic[:, None, :])  # (B, K, C)
    cell, within = _pick(coarse, (position.to(torch.float64) * coarse.sum(-1))[..., None])
    cell, within = cell[..., 0], within[..., 0]
    corner = _unravel(cell, cells) * lattice  # (B, K, 3)
    size = [min(lattice, n) for n in dims]
    voxels = [(corner[..., a, None] + torch.arange(size[a], device=device)).clamp_max(dims[a] - 1) for a in range(3)]
    fine_index = (rows.view(-1, 1, 1, 1, 1), voxels[0][..., :, None, None], voxels[1][..., None, :, None],
                  voxels[2][..., None, None, :])
    fine_sites = sites_at(fine_index).to(torch.float64)  # (B, K, s, s, s, n)
    fine_sites = fine_sites.gather(-1, kind.clamp_min(0).view(*kind.shape, 1, 1, 1, 1).expand(
        *fine_sites.shape[:-1], 1))[..., 0]
    fine = torch.where(kind.view(*kind.shape, 1, 1, 1) >= 0, fine_sites,
                       generic_at(fine_index).to(torch.float64)).flatten(2)  # (B, K, s^3)
    voxel, _ = _pick(fine, (within / coarse.gather(2, cell[..., None])[..., 0].clamp_min(1e-12)
                            * fine.sum(-1))[..., None])
    return corner + _unravel(voxel[..., 0], size), (generic.sum(-1) > 0) | held.any(-1), kind


# ---------------------------------------------------------------------------- the bone piece and its axis


def bone_component(dense: Tensor, labels: Tensor | None, seed: Tensor, *, steps: int) -> Tensor:
    """The bone piece holding each box's seed voxel.

    With labels (each bone its own label, as TotalSegmentator's), the voxels
    sharing the seed's label; a seed on label 0 takes the dense voxels of
    label 0. Without labels, the dense voxels connected to the seed: ``steps``
    masked 26-neighbour dilations on a grid twice as coarse (so a piece
    ``4 * steps`` voxels long is reached), then intersected with ``dense``.

    Args:
        dense: ``(B, d, h, w)`` bool, voxels denser than the bone threshold.
        labels: ``(B, d, h, w)`` integer labels or ``None``.
        seed: ``(B, 3)`` long box-local index of the seed voxel.
        steps: dilation steps (without labels).

    Returns:
        ``(B, d, h, w)`` bool.
    """
    batch = dense.shape[0]
    rows = torch.arange(batch, device=dense.device)
    if labels is not None:
        label = labels[rows, seed[:, 0], seed[:, 1], seed[:, 2]].view(-1, 1, 1, 1)
        same = labels == label
        return torch.where(label != 0, same, same & dense)
    size = dense.shape[1:]
    coarse = F.max_pool3d(dense[:, None].float(), 2, ceil_mode=True)  # (B, 1, d2, h2, w2)
    grown = torch.zeros_like(coarse)
    grown[rows, 0, seed[:, 0] // 2, seed[:, 1] // 2, seed[:, 2] // 2] = 1.0
    for _ in range(steps):
        grown = F.max_pool3d(grown, 3, stride=1, padding=1) * coarse
    fine = grown[:, 0].repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3)
    return dense & (fine[:, : size[0], : size[1], : size[2]] > 0)


def bone_axis(piece: Tensor, offsets: Sequence[Tensor], linear: Tensor, *, iterations: int = 24) -> Tensor:
    """The long axis of each bone piece: the principal direction of its voxels, world frame.

    The covariance comes from sums over pairs of axes (no per-voxel positions).

    Args:
        piece: ``(B, d, h, w)`` bool.
        offsets: three ``(B, n_a)`` voxel offsets along the box's axes (any origin).
        linear: ``(B, 3, 3)`` voxel-to-world matrices (columns: mm per voxel step).
        iterations: power iterations on the ``3 x 3`` covariance.

    Returns:
        ``(B, 3)`` unit vectors in the dtype of ``linear`` (``+z`` for an empty piece).
    """
    weight = piece.to(offsets[0].dtype)
    pairs = {(0, 1): weight.sum(3), (0, 2): weight.sum(2), (1, 2): weight.sum(1)}  # (B, n_a, n_b)
    marginals = [pairs[0, 1].sum(2), pairs[0, 1].sum(1), pairs[0, 2].sum(1)]  # (B, n_a)
    mass = marginals[0].sum(1).clamp_min(1.0)
    mean = torch.stack([(m * o).sum(1) for m, o in zip(marginals, offsets)], -1) / mass[:, None]
    second = [[None] * 3 for _ in range(3)]
    for a in range(3):
        second[a][a] = (marginals[a] * offsets[a] ** 2).sum(1) / mass
    for (a, b), table in pairs.items():
        second[a][b] = second[b][a] = (table * offsets[a][:, :, None] * offsets[b][:, None, :]).sum((1, 2)) / mass
    covariance = torch.stack([torch.stack(row, -1) for row in second], -2) - mean[:, :, None] * mean[:, None, :]
    covariance = linear @ covariance.to(linear.dtype) @ linear.transpose(1, 2)  # world mm^2
    columns = covariance.norm(dim=1)  # start from the largest column: never orthogonal to the top eigenvector
    vector = covariance.gather(2, columns.argmax(1).view(-1, 1, 1).expand(-1, 3, 1))[..., 0]
    for _ in range(iterations):
        vector = F.normalize((covariance @ vector[..., None])[..., 0], dim=-1, eps=1e-12)
    fallback = torch.tensor([0.0, 0.0, 1.0], dtype=linear.dtype, device=linear.device).expand_as(vector)
    return torch.where(vector.norm(dim=-1, keepdim=True) > 0.5, vector, fallback)


# ---------------------------------------------------------------------------- bone geometry for fracture kinds

GEOMETRY_COLUMNS = ("axis_x", "axis_y", "axis_z", "tip", "length", "distal_end", "proximal_end")
"""The columns of :func:`bone_geometry`'s rows."""


def bone_geometry(labels: Tensor, affine: Tensor, ids: Sequence[int], *, size: int | None = None) -> Tensor:
    """Each bone's long axis, distal end and length, from its label's voxels in a whole label map (host).

    The axis is the principal direction of the label's voxel centres, turned
    to point distally (towards ``-z``, world); ``tip`` is the largest
    ``x . axis`` over the label's voxels (so ``tip - x . axis`` is a voxel's
    distance from the distal end along the axis), ``length`` the label's extent
    along the axis. An end is natural (1) where the label map holds a structure
    one voxel beyond it on the axis line through the label's centroid, and cut
    (0) where it holds air or ends there (a bone cut by the edge of the scan:
    its length and that end are not the bone's).

    Args:
        labels: ``(D, H, W)`` (or ``(1, D, H, W)``) integer label map of a whole CT.
        affine: ``(4, 4)`` its voxel-to-world matrix, mm.
        ids: the label ids to measure.
        size: rows ``L`` (default: one more than the largest id).

    Returns:
        ``(L, 7)`` float64 rows of :data:`GEOMETRY_COLUMNS` (mm); zeros for ids not measured or absent.

    Example:
        >>> labels = torch.zeros(5, 5, 30, dtype=torch.long); labels[2, 2, 5:25] = 3; labels[1:4, 1:4, 25:] = 1
        >>> row = bone_geometry(labels, torch.eye(4, dtype=torch.float64), [3])[3]
        >>> row[2].item(), row[3:].tolist()  # distal end at z = 5 (no structure beyond), proximal at z = 24
        (-1.0, [-5.0, 19.0, 0.0, 1.0])
    """
    labels = labels.reshape(labels.shape[-3:]).cpu()
    affine = affine.detach().to(torch.float64).cpu()
    length = (max(ids, default=0) + 1) if size is None else int(size)
    rows = torch.zeros(length, len(GEOMETRY_COLUMNS), dtype=torch.float64)
    wanted = torch.zeros(max(int(labels.max()) + 1, length, 1), dtype=torch.bool)
    wanted[[i for i in ids if 0 < i < length]] = True
    flat = labels.flatten().long()
    voxels = wanted[flat].nonzero()[:, 0]
    if len(voxels) == 0:
        return rows
    shape = labels.shape
    index = torch.stack([voxels // (shape[1] * shape[2]), (voxels // shape[2]) % shape[1], voxels % shape[2]], -1)
    points = index.to(torch.float64) @ affine[:3, :3].T + affine[:3, 3]  # (N, 3) world mm
    label = flat[voxels]
    count = torch.bincount(label, minlength=length)[:length].to(torch.float64)
    present = count > 0
    mean = torch.zeros(length, 3, dtype=torch.float64).index_add_(0, label, points) / count.clamp_min(1)[:, None]
    centred = points - mean[label]
    covariance = torch.zeros(length, 3, 3, dtype=torch.float64).index_add_(
        0, label, centred[:, :, None] * centred[:, None, :]) / count.clamp_min(1)[:, None, None]
    axis = torch.linalg.eigh(covariance)[1][..., -1]  # the largest eigenvalue's vector
    axis = torch.where(axis[:, 2:] > 0, -axis, axis)  # distal: towards -z
    along = (points * axis[label]).sum(-1)
    tip = torch.full((length,), -math.inf, dtype=torch.float64).scatter_reduce(0, label, along, "amax")
    base = torch.full((length,), math.inf, dtype=torch.float64).scatter_reduce(0, label, along, "amin")
    inverse = torch.linalg.inv(affine)
    spacing = float(affine[:3, :3].norm(dim=0).max())

    def natural(depth: Tensor, sign: float) -> Tensor:
        """Whether the map holds a structure one voxel beyond each end at ``depth`` along the axis."""
        beyond = mean + ((depth - (mean * axis).sum(-1)) + sign * 1.5 * spacing)[:, None] * axis
        where = (beyond @ inverse[:3, :3].T + inverse[:3, 3]).round().long()
        inside = ((where >= 0) & (where < torch.tensor(shape))).all(-1)
        where = torch.minimum(where.clamp_min(0), torch.tensor(shape) - 1)
        return inside & (labels[where[:, 0], where[:, 1], where[:, 2]] > 0)

    rows[:, :3] = axis
    rows[:, 3] = tip
    rows[:, 4] = tip - base
    rows[:, 5] = natural(tip, 1.0).to(torch.float64)
    rows[:, 6] = natural(base, -1.0).to(torch.float64)
    return torch.where(present[:, None], rows, 0.0)


def _kind_rows(labels: Tensor, affine: Tensor, match: Tensor, in_length: Tensor) -> Tensor:
    """``(L, 5 + n)`` rows of :class:`BoneGeometries` from a whole label map and the kinds' label matches ``(n, L)``."""
    geometry = bone_geometry(labels, affine, match.any(0).nonzero()[:, 0].tolist(), size=match.shape[1])
    ends = (geometry[None, :, 5] > 0) & ((geometry[None, :, 6] > 0) | ~in_length[:, None])  # (n, L)
    flags = (match & ends & (geometry[:, 4] > 0)).T.to(torch.float64)
    return torch.cat([geometry[:, :5], flags], 1)


def kind_geometry(labels: Tensor, affine: Tensor, label_names: Mapping[int, str] | None,
                  config: FractureConfig) -> Tensor:
    """One CT's :class:`BoneGeometries` row ``(L, 5 + n)`` from its whole label map (for crops cut by hand).

    Example:
        >>> from onthefly.phantoms import phantom
        >>> volume = phantom("hand", 0, spacing=4.0)
        >>> kind_geometry(volume.labels, volume.affine, volume.label_names, FractureConfig()).shape[1]
        13
    """
    kinds = config.kind_weights
    size = max(int(labels.max()) + 1, max(label_names or {0: ""}) + 1)
    if not kinds or not label_names:
        return torch.zeros(size, 5 + len(kinds), dtype=torch.float64)
    match = torch.stack([bone_label_lookup(label_names, list(kind.bones), size=size) for kind, _ in kinds])
    in_length = torch.tensor([kind.site_unit == "length" for kind, _ in kinds], dtype=torch.bool)
    return _kind_rows(labels, affine, match, in_length)


class BoneGeometries:
    """Per CT, the geometry of the bones fracture kinds break (:func:`bone_geometry`), kept once made.

    Rows are made from a CT's whole label map the first time a batch holds the
    CT (``store.crops`` of the whole CT), then kept (up to ``capacity`` CTs,
    least recently used first out): not per sample. CTs whose label names
    match no kind's bones (a chest CT) get no rows: their fractures are generic.

    Args:
        store: the CTs (``label_names``, ``has_labels``, ``shapes``, ``affines``, ``crops``, ``device``).
        config: the fracture settings (``kind_weights``).
        capacity: CTs kept.

    ``rows(volume_index)`` gives ``(B, L, 5 + n)``: per label the axis (3), tip and length (mm) of
    :func:`bone_geometry`, then for each of the ``n`` kinds 1 where the label is one of its bones with the
    ends its site needs (the distal end; both for a site in shares of the length) natural, else 0.
    """

    def __init__(self, store, config: FractureConfig, *, capacity: int = 16384) -> None:
        kinds = config.kind_weights
        self.store, self.capacity = store, capacity
        self.kinds = kinds
        names = store.label_names if store.has_labels else [None] * len(store)
        matches: dict[int, Tensor] = {}  # per distinct label map: (n, L) bool
        for item in names:
            if id(item) not in matches:
                matches[id(item)] = torch.stack([bone_label_lookup(item, list(kind.bones)) for kind, _ in kinds]) \
                    if kinds and item else torch.zeros(len(kinds), 1, dtype=torch.bool)
        self.size = max([table.shape[1] for table in matches.values()] + [1])
        self._match = {key: F.pad(table, (0, self.size - table.shape[1])) for key, table in matches.items()}
        self._names = names
        self.needed = [bool(self._match[id(item)].any()) for item in names]
        self.in_length = torch.tensor([kind.site_unit == "length" for kind, _ in kinds], dtype=torch.bool)
        self._made: OrderedDict[int, Tensor] = OrderedDict()

    @property
    def active(self) -> bool:
        """Whether any CT has a bone some kind breaks."""
        return any(self.needed)

    def row(self, volume: int) -> Tensor:
        """``(L, 5 + n)`` of CT ``volume`` (made on first use)."""
        if volume in self._made:
            self._made.move_to_end(volume)
            return self._made[volume]
        rows = torch.zeros(self.size, 5 + len(self.kinds), dtype=torch.float64)
        if self.needed[volume]:
            store = self.store
            shape = tuple(int(n) for n in store.shapes[volume])
            labels = store.crops(torch.tensor([volume]), torch.zeros(1, 3, dtype=torch.long), shape, labels=True)[1]
            rows = _kind_rows(labels[0], store.affines[volume], self._match[id(self._names[volume])], self.in_length)
        self._made[volume] = rows
        while len(self._made) > self.capacity:
            self._made.popitem(last=False)
        return rows

    def rows(self, volume_index: Tensor) -> Tensor:
        """``(B, L, 5 + n)`` for CTs ``volume_index (B,)`` (host), on the store's device."""
        return torch.stack([self.row(int(volume)) for volume in volume_index.tolist()]).to(self.store.device)
