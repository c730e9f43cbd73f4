"""Making: a batch from its drawn parameters, top-down in one pass.

``make_batch(params, store, config)`` gathers each sample's crop from the
store, cuts the drawn fractures into it, renders the views, projects the
requested structures, computes the correspondence matrix from the store's
pooled weights, augments, and assembles a :class:`~onthefly.sampling.batch.DRRBatch`;
the configuration's target builder then turns it into the task's batch. The
same parameters give the same batch (augmentation noise comes from a device
generator seeded by the batch's stream position).

:class:`BatchMaker` holds what is derived once from a store and a
configuration (label lookups, pixel permutation maps); the stream keeps one.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from torch import Tensor

from ..augment import _geometric, _intensity, image_operation_maps
from ..correspondence import coarse_grid_affine, patch_correspondence, pool_crop_weights
from ..deformation import deform_crops
from ..footprints import footprint_window
from ..fractures import (
    BoneGeometries,
    bone_weight_tables,
    cut_visible_fractures,
    fracture_visibility,
    fracture_window,
    view_ranges,
    visibility_probe,
)
from ..geometry import CArm, patch_index
from ..physics import mass_attenuation, radiograph, render_materials
from ..projector import render
from ..volume import VolumeBatch, attenuation_to_hu
from ..volume import crop_affine as crop_affines
from . import seeds
from .batch import DRRBatch
from .config import SamplerConfig
from .params import SampleParams
from .store import VolumeStore

__all__ = ["BatchMaker", "make_batch", "timed", "REFERENCE_ENERGY_KEV"]

REFERENCE_ENERGY_KEV = 60.0
"""With physics, fracture visibility divides by the display's window width of the monochromatic line integrals
at this energy (water's 0.206 cm^2/g there is about the 0.02 /mm the HU conversion assumes)."""


@contextmanager
def timed(timings: dict[str, float] | None, name: str, device: torch.device):
    """Add the seconds spent in the block to ``timings[name]`` (synchronising CUDA); nothing if ``timings`` is None."""
    if timings is None:
        yield
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    begin = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - begin


def make_batch(params: SampleParams, store: VolumeStore, config: SamplerConfig, *,
               timings: dict[str, float] | None = None):
    """The batch of ``params`` (drawn by :func:`~onthefly.sampling.draw.draw` with the same store and config).

    Returns the configuration's batch type (a :class:`~onthefly.sampling.batch.DRRBatch`
    unless a task target builder is set). ``timings``, if given, receives the
    seconds spent per stage (with device synchronisation: pass it only when measuring).
    """
    return BatchMaker(config, store).make(params, timings=timings)


class BatchMaker:
    """Makes batches of one configuration from one store (what is derived from both is derived once).

    Args:
        config: the sampler's configuration.
        store: the CTs.
    """

    def __init__(self, config: SamplerConfig, store: VolumeStore) -> None:
        self.config = config
        self.store = store
        self.device = store.device
        height, width = config.image_size
        self.pixel_maps = image_operation_maps(height, width, self.device)
        self.patch_maps = image_operation_maps(*config.grid_shape, self.device)
        self.structures, self.structure_ids = _structure_ids(config, store)
        self.needs_labels = bool(self.structures) or (config.fractures is not None and store.has_labels)
        (self.bone_tables, self.bone_source, self.fracture_window, self.fracture_probe,
         self.fracture_within) = _fracture_setup(config, store)
        # per CT, the bones fracture kinds break (made once per CT, when a batch first holds it)
        geometries = BoneGeometries(store, config.fractures) if self.needs_labels and config.fractures else None
        self.bone_geometries = geometries if geometries is not None and geometries.active else None
        self.window = 1  # the largest footprint window a compiled batch has needed (grows, never shrinks)

    def make(self, params: SampleParams, *, timings: dict[str, float] | None = None):
        """The batch of ``params`` (see :func:`make_batch`)."""
        config, device = self.config, self.device

        def stage(name: str):
            return timed(timings, name, device)

        with stage("draw"):
            carm_host = params.carm(height=config.height, width=config.width, pixel_spacing=config.pixel_spacing)
            carm = carm_host.to(device=device, dtype=torch.float32)
            crop_affine = crop_affines(self.store.affines[params.volume_index], params.crop_start)
        with torch.no_grad():
            with stage("render"):
                crops, labels = self.store.crops(params.volume_index, params.crop_start, config.crop_voxels(),
                                                 labels=self.needs_labels)
            if config.anatomy is not None:
                with stage("anatomy"):
                    crops, labels = deform_crops(crops, labels, params.anatomy.to(device),
                                                 torch.tensor(config.spacing))
            fractured = None
            if config.fractures is not None:
                with stage("fractures"):
                    fractured = self._fractures(params, crops, labels, crop_affine.to(device), carm)
                    crops = fractured.attenuation
            with stage("render"):
                # The crops come from checked CTs: no value check on the way (it would read the device).
                volume = VolumeBatch(attenuation=crops[:, None], affine=crop_affine.to(device), mu_water=config.mu_water,
                                     validate=False)
                if config.physics is None:
                    lines = render(volume, carm, method=config.method, mu_water=config.mu_water, compile=config.compile)
                    images, widths = config.display.images_and_widths(lines[:, :, 0],
                                                                      pixel_spacing=config.pixel_spacing)
                    images = images[:, :, None]
                projected = self._structures(params, labels, crop_affine, carm_host) if self.structures else None
            if config.physics is not None:
                with stage("physics"):
                    images, widths = self._radiographs(params, volume, carm)
            with stage("correspondence"):
                correspondence = (self._correspondence(params, carm, carm_host, crop_affine,
                                                       deformed=crops if config.anatomy is not None else None)
                                  if config.correspondence else None)
            with stage("augmentation"):
                images, correspondence, projected = self._augment(params, images, correspondence, projected)
        batch = DRRBatch(
            images=images, correspondence=correspondence, carm=carm,
            operations=params.augmentation.operation.to(device), volume_index=params.volume_index.to(device),
            crop_start=params.crop_start.to(device), crop_stop=params.crop_stop.to(device),
            crop_affine=crop_affine.to(device), params=params, patch_size=config.patch_size, step=params.step,
            seed=params.seed, rank=params.rank, labels=projected, structures=self.structures,
            volume=volume if config.return_volume or config.target.needs_crops else None,
        )
        if fractured is not None:
            self._fracture_fields(batch, fractured, fracture_visibility(fractured.contrast, widths))
        with stage("target"), torch.no_grad():
            return config.target.build(batch, config)

    # ------------------------------------------------------------------ stages
    def _fractures(self, params: SampleParams, crops: Tensor, labels: Tensor | None, crop_affine: Tensor,
                   carm: CArm):
        config = self.config.fractures
        table = None if labels is None else self.bone_tables[params.volume_index.to(self.device)]
        geometry = None if self.bone_geometries is None or labels is None else self.bone_geometries.rows(
            params.volume_index)
        ranges = (view_ranges(crops, crop_affine, carm, display=self.config.display,
                              pixel_spacing=self.config.pixel_spacing)
                  if config.min_visibility > 0 or geometry is not None else None)
        drawn = params.fracture.drawn.nonzero()[:, 0]  # host values: only the drawn samples are cut
        # the store's crops are this batch's own tensor: the fractures are written into them
        return cut_visible_fractures(crops, crop_affine, params.fracture.to(self.device), carm, config=config,
                                     probe=self.fracture_probe, labels=labels, table=table,
                                     mu_water=self.config.mu_water, window=self.fracture_window, view_range=ranges,
                                     samples=drawn.to(self.device), within=self.fracture_within, inplace=True,
                                     geometry=geometry)

    def _radiographs(self, params: SampleParams, volume: VolumeBatch, carm: CArm) -> tuple[Tensor, Tensor]:
        """Radiographs through the drawn physics ``(B, V, 1, H, W)``, and the display's window widths ``(B, V)``
        in line-integral units at the reference energy (what fracture visibility divides by)."""
        config = self.config
        physics = params.physics
        materials = render_materials(volume, carm, method=config.method, compile=config.compile)  # g/cm^2
        images = radiograph(materials, physics, pixel_spacing=config.pixel_spacing, display=config.display)
        table = mass_attenuation(physics.physics.materials, self._reference_energy.to(materials.device))  # (M, 1)
        lines = (materials * table[:, 0].view(1, 1, -1, 1, 1)).sum(2)  # monochromatic line integrals
        widths = config.display.width(lines, pixel_spacing=config.pixel_spacing)
        return images, widths

    _reference_energy = torch.tensor([REFERENCE_ENERGY_KEV])

    def _fracture_fields(self, batch: DRRBatch, fractured, visibility: Tensor) -> None:
        pixel = batch.project_points(fractured.center[:, None, :])[:, :, 0]  # (B, V, 2)
        batch.fracture = fractured.fractured
        batch.fracture_center = fractured.center
        batch.fracture_pixel = pixel
        batch.fracture_patch = patch_index(pixel, self.config.image_size, self.config.patch_size)
        batch.fracture_visibility = visibility
        batch.fracture_invisible = fractured.invisible
        batch.fracture_kind, batch.fracture_severity = fractured.kind, fractured.severity

    def _structures(self, params: SampleParams, labels: Tensor, crop_affine: Tensor, carm_host: CArm) -> Tensor:
        """``(B, V, S, H, W)`` path lengths (mm) through each structure of each crop."""
        config, device = self.config, self.device
        count = len(self.structures)
        ids = self.structure_ids[:, params.volume_index].to(device)  # (S, B)
        masks = (labels[:, None] == ids.T[:, :, None, None, None]).float()  # (B, S, d, h, w)
        batch = labels.shape[0]
        volume = VolumeBatch(attenuation=masks.reshape(batch * count, 1, *labels.shape[1:]),
                             affine=crop_affine.repeat_interleave(count, 0).to(device), validate=False)
        repeated = CArm(
            **{name: getattr(carm_host, name).repeat_interleave(count, 0)
               for name in ("alpha", "beta", "gamma", "sid", "sdd", "isocenter", "pixel_spacing")},
            height=config.height, width=config.width,
        ).to(device=device, dtype=torch.float32)
        paths = render(volume, repeated, method=config.method)  # (B*S, V, 1, H, W)
        return paths.view(batch, count, config.views, config.height, config.width).transpose(1, 2)

    def _correspondence(self, params: SampleParams, carm: CArm, carm_host: CArm, crop_affine: Tensor,
                        deformed: Tensor | None = None) -> Tensor:
        """The matrix of each crop; of the ``deformed`` crops ``(B, D, H, W)`` (1/mm) when given (anatomical
        variation: their weights are pooled here, not read from the store's tables of the intact CTs)."""
        config = self.config
        if deformed is not None:
            coarse = pool_crop_weights(attenuation_to_hu(deformed, mu_water=config.mu_water), crop_affine,
                                       params.coarse_factor, weighting=config.weighting,
                                       air_threshold_hu=config.air_threshold_hu, device=self.device)
            return patch_correspondence(coarse, carm, patch_size=config.patch_size,
                                        rays_per_patch=config.rays_per_patch, footprint=config.footprint)
        if not config.compile:
            coarse = self.store.pooled_weights(params.volume_index, params.crop_start, params.crop_stop,
                                               params.coarse_factor)
            return patch_correspondence(coarse, carm, patch_size=config.patch_size,
                                        rays_per_patch=config.rays_per_patch, footprint=config.footprint)
        # Static shapes for torch.compile: the grid that holds any crop's, and a footprint window that only grows
        # (a larger window gives the same matrix; a new one means one more compilation).
        grid = config.coarse_grid()
        coarse = self.store.pooled_weights(params.volume_index, params.crop_start, params.crop_stop,
                                           params.coarse_factor, grid_shape=grid)
        needed = footprint_window(carm_host, coarse_grid_affine(crop_affine, params.coarse_factor), grid,
                                  config.patch_size)
        self.window = max(self.window, needed)
        return patch_correspondence(coarse, carm, patch_size=config.patch_size, rays_per_patch=config.rays_per_patch,
                                    window=self.window, compile=True, footprint=config.footprint)

    def _augment(self, params: SampleParams, images: Tensor, correspondence: Tensor | None,
                 projected: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        augmentation, drawn = self.config.augmentation, params.augmentation
        if augmentation.changes_intensity:
            generator = torch.Generator(device=self.device).manual_seed(
                seeds.stream_seed(params.seed, params.rank, params.step, seeds.NOISE))
            noise = torch.randn(images.shape, generator=generator, device=self.device, dtype=images.dtype)
            images = _intensity(images, drawn, noise, augmentation.blur)
        if augmentation.geometric > 0:
            images, correspondence = _geometric(images, drawn.operation, correspondence, self.config.patch_size,
                                                self.pixel_maps, self.patch_maps)
            if projected is not None:
                projected, _ = _geometric(projected, drawn.operation, None, None, self.pixel_maps, None)
        return images, correspondence, projected


def _structure_ids(config: SamplerConfig, store: VolumeStore) -> tuple[tuple[str, ...], Tensor]:
    """The structures' names and their label id in every CT, ``(S, n)``."""
    if config.structures is None:
        return (), torch.zeros(0, len(store), dtype=torch.long)
    if not store.has_labels:
        raise ValueError("structures: every CT needs a label map to project structures")
    ids = []
    for item in config.structures:
        per_volume = []
        lookups: dict[int, dict] = {}  # one per distinct label map object
        for index, names in enumerate(store.label_names):
            lookup = lookups.get(id(names))
            if lookup is None:
                lookup = lookups[id(names)] = {name: label for label, name in (names or {}).items()}
            if isinstance(item, int):
                per_volume.append(item)
            elif item in lookup:
                per_volume.append(lookup[item])
            else:
                raise ValueError(f"structures: no structure named {item!r} in the label names of {store.name(index)}")
        ids.append(per_volume)
    return tuple(str(item) for item in config.structures), torch.tensor(ids, dtype=torch.long)


def _fracture_setup(config: SamplerConfig, store: VolumeStore):
    """What fractures derive once from a store: per-CT bone weight tables ``(n, L)`` (on the store's device), where
    each CT finds bone (``'labels'`` or ``'threshold'``), the box size, the visibility probe, and the distance from
    a crop's centre within which every view sees a bone point (the ball inside the crop less the isocenter jitter)."""
    fractures = config.fractures
    if fractures is None:
        return None, (), None, None, None
    tables = bone_weight_tables(store.label_names if store.has_labels else [None] * len(store), fractures)
    source = tuple("labels" if store.has_labels and found else "threshold" for found in (tables > 0).any(1).tolist())
    spacing = store.spacing.tolist()
    crop_radius = 0.5 * float(torch.tensor(config.crop_size, dtype=torch.float64).norm()) + 3**0.5 * config.isocenter_jitter
    probe = visibility_probe(fractures, spacing=spacing, pixel_spacing=config.pixel_spacing, sid=config.sid.bounds()[0],
                             sdd=config.sdd.bounds()[1], image_size=config.image_size, crop_radius=crop_radius,
                             display=config.display)
    within = max(0.5 * min(config.crop_size) - 3**0.5 * config.isocenter_jitter, 0.25 * min(config.crop_size))
    return tables.to(store.device), source, fracture_window(fractures, spacing), probe, within
