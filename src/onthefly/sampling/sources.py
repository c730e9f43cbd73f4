"""From what a user passes as ``volumes`` to the store a sampler reads CTs from.

:func:`open_store` picks the store: a :class:`~onthefly.sampling.store.VolumeStore`
as it is, phantoms as a :class:`~onthefly.sampling.phantom_store.PhantomStore`,
a prepared folder as a :class:`~onthefly.sampling.bank.VolumeBank`, anything
else (paths, volumes, torchio subjects) loaded by :func:`load_volumes` into a
:class:`~onthefly.sampling.store.ResidentStore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..volume import Volume
from .bank import VolumeBank
from .cache_format import is_prepared_folder
from .phantom_store import PHANTOM_PREFIX, PhantomSource, PhantomStore, parse_phantom_source
from .store import ResidentStore, VolumeStore

__all__ = ["open_store", "load_volumes"]


def load_volumes(volumes) -> tuple[list[Volume], list[str]]:
    """Volumes and their names from paths, :class:`Volume`, torchio ``Subject`` or ``SubjectsDataset`` items."""
    import torchio as tio

    items = list(volumes) if isinstance(volumes, (list, tuple)) else [volumes]
    loaded: list[Volume] = []
    names: list[str] = []
    for index, item in enumerate(items):
        if isinstance(item, Volume):
            loaded.append(item)
            names.append(f"volumes[{index}]")
        elif isinstance(item, (str, Path)):
            loaded.append(Volume.from_file(item))
            names.append(str(item))
        elif isinstance(item, tio.Subject):
            loaded.append(Volume.from_torchio(item))
            names.append(f"volumes[{index}]")
        elif isinstance(item, tio.SubjectsDataset):
            for number, subject in enumerate(item.dry_iter()):
                loaded.append(Volume.from_torchio(subject))
                names.append(f"volumes[{index}][{number}]")
        else:
            raise TypeError(
                f"volumes[{index}]: expected a path, Volume, torchio Subject or SubjectsDataset, got {type(item).__name__}"
            )
    if not loaded:
        raise ValueError("volumes: expected at least one CT volume, got an empty list")
    return loaded, names


def open_store(volumes, *, spacing: Sequence[float], device: torch.device | str, mu_water: float,
               air_threshold_hu: float, weighting: str, labels: bool) -> VolumeStore:
    """The store for what a user passed as ``volumes``: a :class:`VolumeStore` as it is, a
    :class:`~onthefly.sampling.phantom_store.PhantomSource` (or ``"phantom:forearm,wrist"``) as a
    :class:`~onthefly.sampling.phantom_store.PhantomStore`, a prepared folder as a
    :class:`~onthefly.sampling.bank.VolumeBank`, else a :class:`~onthefly.sampling.store.ResidentStore`."""
    if isinstance(volumes, str) and volumes.startswith(PHANTOM_PREFIX):
        volumes = parse_phantom_source(volumes)
    if isinstance(volumes, PhantomSource):
        return PhantomStore(volumes, spacing=spacing, device=device, mu_water=mu_water,
                            air_threshold_hu=air_threshold_hu, weighting=weighting)
    if isinstance(volumes, VolumeBank):
        return volumes.to(device)  # a bank keeps no CT on a device: it serves the sampler's
    if isinstance(volumes, VolumeStore):
        return volumes
    if is_prepared_folder(volumes):
        return VolumeBank(volumes, spacing=spacing, device=device, mu_water=mu_water,
                          air_threshold_hu=air_threshold_hu, weighting=weighting)
    loaded, names = load_volumes(volumes)
    return ResidentStore(loaded, spacing=spacing, device=device, mu_water=mu_water, air_threshold_hu=air_threshold_hu,
                         weighting=weighting, labels=labels, names=names)
