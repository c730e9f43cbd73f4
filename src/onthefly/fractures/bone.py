"""Bone: per-label weight tables, per-voxel weights, the bone point, the bone piece around it and its axis.

The tables are built once per CT on the host (:func:`bone_weight_table`);
everything else is batched tensor code on the crops' device, with no host
reads and shapes fixed by the inputs' shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..volume import MU_WATER_PER_MM, hu_to_attenuation  # noqa: F401 (doctest)
from .config import FractureConfig, attenuation_of

__all__ = ["BoneCrops", "BoneMaps", "bone_label_lookup", "bone_weight_table", "bone_weight_tables", "bone_weights"]


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
            them matches a label of any CT that has label names (naming them).

    Example:
        >>> bone_weight_tables([{1: "rib_left_1"}, None], FractureConfig(bones=["rib"])).tolist()
        [[0.0, 1.0], [0.0, 0.0]]
    """
    tables = [bone_weight_table(names, config) for names in label_names]
    labelled = [table for table, names in zip(tables, label_names) if names]
    if config.bones is not None and labelled and not any(bool((table > 0).any()) for table in labelled):
        wanted = [key for key, weight in config.bones if weight > 0]
        known = sorted({name for names in label_names if names for name in names.values()})
        raise ValueError(f"bones: none of {wanted} matches a label of the CTs (their labels: "
                         f"{known[:12]}{' ...' if len(known) > 12 else ''})")
    length = max(table.numel() for table in tables)
    return torch.stack([F.pad(table, (0, length - table.numel())) for table in tables])


def bone_label_lookup(label_names: Mapping[int, str] | None, structures: Sequence[str | int] | None = None, *,
                      size: int | None = None) -> Tensor:
    """A bool table ``(L,)``: ``table[label]`` is True where the label is one of ``structures`` (default: any bone).

    Example:
        >>> bone_label_lookup({1: "liver", 2: "rib_left_1", 3: "vertebrae_T8"}).tolist()
        [False, False, True, True]
    """
    config = FractureConfig(bones=None if structures is None else list(structures))
    return bone_weight_table(label_names, config, size=size) > 0


def bone_weights(attenuation: Tensor, *, config: FractureConfig, labels: Tensor | None = None,
                 table: Tensor | None = None, mu_water: float = MU_WATER_PER_MM, quantized: bool = False) -> Tensor:
    """Per-voxel chance of being the bone point.

    A voxel of a labelled CT weighs its label's weight (:func:`bone_weight_table`);
    a voxel of a CT without (matching) labels weighs 1 where it is denser than
    ``config.bone_hu``, else 0. Compute it once per CT (``quantized``, one byte
    per voxel) and crop it with the CT, or per batch from label crops.

    Args:
        attenuation: ``(B, D, H, W)`` crops or CTs, 1/mm.
        config: the fracture settings (``bone_hu``).
        labels: ``(B, D, H, W)`` integer label maps, or ``None``.
        table: with ``labels``: ``(L,)`` or ``(B, L)`` weights (one row per
            sample's CT); a row of zeros (no matching label) falls back to the threshold.
        mu_water: attenuation of water, 1/mm.
        quantized: return ``uint8`` weights, scaled so that the largest table weight
            (at least 1) is 255.

    Returns:
        ``(B, D, H, W)`` float32 weights (or ``uint8``), 0 where no bone point may fall.

    Example:
        >>> hu = torch.tensor([[[[0.0, 500.0, 500.0, 500.0]]]])
        >>> labels = torch.tensor([[[[0, 0, 2, 3]]]])
        >>> table = bone_weight_table({2: "rib_left_1", 3: "vertebrae_T8"}, FractureConfig())
        >>> bone_weights(hu_to_attenuation(hu), config=FractureConfig(), labels=labels, table=table).tolist()
        [[[[0.0, 0.0, 1.0, 0.10000000149011612]]]]
    """
    if attenuation.dim() != 4:
        raise ValueError(f"attenuation: expected shape (B, D, H, W), got {tuple(attenuation.shape)}")
    dense = attenuation > attenuation_of(config.bone_hu, mu_water)
    if labels is None:
        weights, largest = dense.float(), 1.0
    else:
        if table is None:
            raise ValueError("table: required with labels (per-label weights from bone_weight_table)")
        if labels.shape != attenuation.shape:
            raise ValueError(f"labels: expected the shape of attenuation {tuple(attenuation.shape)}, "
                             f"got {tuple(labels.shape)}")
        batch = attenuation.shape[0]
        table = table.to(device=attenuation.device, dtype=torch.float32)
        table = table[None].expand(batch, -1) if table.dim() == 1 else table
        if table.dim() != 2 or table.shape[0] != batch:
            raise ValueError(f"table: expected shape (L,) or ({batch}, L), got {tuple(table.shape)}")
        labelled = (table.amax(1) > 0).view(-1, 1, 1, 1)  # CTs whose labels name a bone
        length = table.shape[1]
        ids = labels.reshape(batch, -1).long()
        ids = torch.where((ids >= 0) & (ids < length), ids, 0)  # out-of-table ids weigh 0 (as the background)
        weights = torch.where(labelled, table.gather(1, ids).view(attenuation.shape), dense.float())
        largest = max(float(table.max()), 1.0)
    if quantized:
        return (weights * (255.0 / largest)).round_().to(torch.uint8)
    return weights


# ---------------------------------------------------------------------------- per-CT maps


@dataclass(frozen=True)
class BoneMaps:
    """What a store of ``n`` CTs keeps for fractures, built once (:meth:`build`), on the store's device.

    With it, a batch chooses its bone points without a pass over its crops:
    first a block of ``block^3`` voxels among the blocks wholly inside the
    crop (by their summed weight), then a voxel inside that block.

    Attributes:
        tables: ``(n, L)`` float32 per-label weights (:func:`bone_weight_tables`); a row
            of zeros marks a CT without matching labels (it uses the HU threshold).
        blocks: ``(n, Db, Hb, Wb)`` float32 summed bone-point weight of each block.
        block: block edge, voxels.
        labels: ``(n, D, H, W)`` integer label maps (the store's own tensor), or ``None``.
    """

    tables: Tensor
    blocks: Tensor
    block: int
    labels: Tensor | None = None

    @classmethod
    def build(cls, attenuation: Tensor, label_names: Sequence[Mapping[int, str] | None], config: FractureConfig, *,
              labels: Tensor | None = None, block: int = 8, mu_water: float = MU_WATER_PER_MM) -> "BoneMaps":
        """The maps of a store's stacked CTs ``attenuation (n, D, H, W)`` (1/mm) and ``labels``.

        Raises ``ValueError`` (naming them) when ``config.bones`` names bones none of the CTs' labels has.
        """
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block: expected a positive int (voxels), got {block!r}")
        tables = bone_weight_tables(label_names, config).to(attenuation.device)
        blocks = []
        for index in range(attenuation.shape[0]):  # one CT at a time: no full-size float copy of the store
            crop_labels = None if labels is None else labels[index : index + 1]
            weights = bone_weights(attenuation[index : index + 1], config=config, labels=crop_labels,
                                   table=tables[index] if labels is not None else None, mu_water=mu_water)
            blocks.append(F.avg_pool3d(weights[None], block, ceil_mode=True)[0, 0] * block**3)
        return cls(tables=tables, blocks=torch.stack(blocks), block=block, labels=labels)

    def crops(self, volume_index: Tensor, crop_start: Tensor) -> "BoneCrops":
        """The maps seen from ``B`` crops: CT ``volume_index (B,)``, first voxel ``crop_start (B, 3)``."""
        return BoneCrops(maps=self, volume_index=volume_index, crop_start=crop_start)


@dataclass(frozen=True)
class BoneCrops:
    """:class:`BoneMaps` seen from ``B`` crops (pass it as ``bone`` to :func:`apply_fractures`)."""

    maps: BoneMaps
    volume_index: Tensor  # (B,) long
    crop_start: Tensor  # (B, 3) long, voxel of the CT at the crop's index 0

    def to(self, device: torch.device | str) -> "BoneCrops":
        return BoneCrops(maps=self.maps, volume_index=self.volume_index.to(device), crop_start=self.crop_start.to(device))

    def labels(self, index: tuple[Tensor, ...]) -> Tensor | None:
        """Label values at crop voxels ``index`` (an advanced index whose first entry is the sample)."""
        if self.maps.labels is None:
            return None
        rows = self.volume_index.to(self.maps.labels.device)[index[0]]
        start = self.crop_start.to(self.maps.labels.device)
        shifted = [index[a + 1] + start[:, a].view(-1, *([1] * (index[a + 1].dim() - 1))) for a in range(3)]
        return self.maps.labels[(rows, *shifted)]


# ---------------------------------------------------------------------------- the bone point


def _pick(weights: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Index ``(..., K)`` of the entry of ``weights (..., M)`` holding cumulative weight ``target (..., K)``,
    and what is left of ``target`` inside it (float64)."""
    running = weights.to(torch.float64).cumsum(-1)
    index = torch.searchsorted(running, target, right=True).clamp_max(weights.shape[-1] - 1)
    before = running.gather(-1, index) - weights.to(torch.float64).gather(-1, index)
    return index, target - before


def choose_bone_points(weights: Tensor, position: Tensor) -> tuple[Tensor, Tensor]:
    """The voxel at cumulative weight ``position * total`` of each crop, in D-major order.

    Two levels of running sums (over slices, then within the chosen slice)
    instead of one over the whole crop.

    Args:
        weights: ``(B, D, H, W)`` non-negative weights (float, uint8 or bool).
        position: ``(B, K)`` in ``[0, 1)``.

    Returns:
        ``index (B, K, 3)`` long voxel indices and ``has_bone (B,)`` bool (a
        positive total weight); where there is none the index is 0.
    """
    batch, depth, height, width = weights.shape
    candidates = position.shape[1]
    per_slice = weights.float().sum((2, 3))  # (B, D)
    total = per_slice.to(torch.float64).sum(1)
    layer, within = _pick(per_slice, position.to(torch.float64) * total[:, None])
    rows = torch.arange(batch, device=weights.device)[:, None].expand(-1, candidates)
    cell, _ = _pick(weights[rows, layer].reshape(batch, candidates, -1), within[..., None])
    cell = cell[..., 0]
    index = torch.stack([layer, torch.div(cell, width, rounding_mode="floor"), cell % width], -1)
    return index, total > 0


def choose_bone_points_in_blocks(bone: BoneCrops, attenuation: Tensor, position: Tensor, *,
                                 threshold: float) -> tuple[Tensor, Tensor]:
    """:func:`choose_bone_points` from a store's :class:`BoneMaps`: a block, then a voxel in it.

    Only blocks wholly inside the crop count, so a bone point lies at least
    up to one block away from the crop's faces. Arguments: the crops' view of
    the maps, the crops ``attenuation (B, D, H, W)`` (for CTs without labels:
    dense voxels above ``threshold``, 1/mm) and ``position (B, K)``.
    """
    maps, size = bone.maps, bone.maps.block
    batch, candidates = position.shape
    device = attenuation.device
    volume, start = bone.volume_index.to(device), bone.crop_start.to(device)
    count = [max(n // size - 1, 1) for n in attenuation.shape[1:]]  # blocks inside every crop of this size
    first = torch.div(start + size - 1, size, rounding_mode="floor")  # (B, 3) first whole block
    limits = maps.blocks.shape[1:]
    axes = [(first[:, a, None] + torch.arange(count[a], device=device)).clamp_max(limits[a] - 1) for a in range(3)]
    grid = maps.blocks[volume[:, None, None, None], axes[0][:, :, None, None], axes[1][:, None, :, None],
                       axes[2][:, None, None, :]].reshape(batch, -1)
    total = grid.to(torch.float64).sum(-1)
    cell, within = _pick(grid, position.to(torch.float64) * total[:, None])
    block_index = torch.stack([cell // (count[1] * count[2]), (cell // count[2]) % count[1], cell % count[2]], -1)
    corner = (first[:, None] + block_index) * size - start[:, None]  # (B, K, 3) crop index of the block's corner
    steps = torch.arange(size, device=device)
    voxels = [(corner[..., a, None] + steps).clamp(0, attenuation.shape[1 + a] - 1) for a in range(3)]  # (B, K, s)
    index = (torch.arange(batch, device=device).view(-1, 1, 1, 1, 1), voxels[0][..., :, None, None],
             voxels[1][..., None, :, None], voxels[2][..., None, None, :])
    weights = (attenuation[index] > threshold).float()  # (B, K, s, s, s)
    labels = bone.labels(index)
    if labels is not None:
        table = maps.tables.to(device)[volume]  # (B, L)
        ids = labels.long().reshape(batch, -1)
        ids = torch.where((ids >= 0) & (ids < table.shape[1]), ids, 0)  # unknown ids weigh as the background
        labelled = (table.amax(1) > 0).view(-1, 1, 1, 1, 1)
        weights = torch.where(labelled, table.gather(1, ids).view(weights.shape), weights)
    voxel, _ = _pick(weights.reshape(batch, candidates, -1), within[..., None])
    voxel = voxel[..., 0]
    offset = torch.stack([voxel // (size * size), (voxel // size) % size, voxel % size], -1)
    return corner + offset, total > 0


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
