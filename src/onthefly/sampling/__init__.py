"""Sampling: multi-view DRR batches drawn on the fly, as a pipeline of stages.

``config -> store -> draw -> make -> stream``, each a module with one job:

* :mod:`~onthefly.sampling.config`: :class:`SamplerConfig`, frozen and validated, with a fingerprint;
* :mod:`~onthefly.sampling.store`: where CTs are read from (:class:`ResidentStore`;
  :class:`~onthefly.sampling.bank.VolumeBank` for many CTs;
  :class:`~onthefly.sampling.phantom_store.PhantomStore` for phantoms generated per sample from a
  :class:`PhantomSource`);
* :mod:`~onthefly.sampling.layouts` and :mod:`~onthefly.sampling.draw`: the
  random parameters of a batch (:class:`SampleParams`), on the host;
* :mod:`~onthefly.sampling.make` and :mod:`~onthefly.sampling.targets`: the
  batch from its parameters (render, fractures, correspondence, augmentation,
  the task's target);
* :mod:`~onthefly.sampling.stream` and :mod:`~onthefly.sampling.prefetch`: the
  seeded ``IterableDataset`` and the prefetcher.

A batch flows top-down once: ``sampler.sample(step) == sampler.make_batch(sampler.draw(step))``.
"""

from .bank import VolumeBank
from .batch import BiplanarBatch, DRRBatch, NovelViewBatch, SequenceBatch, require_fields
from .config import SamplerConfig
from .draw import DegenerateDrawWarning, draw
from .layouts import AngularSequence, BiplanarViews, IndependentViews, SourceAndTargets, ViewLayout
from .make import BatchMaker, make_batch
from .params import SampleParams
from .phantom_store import PhantomSource, PhantomStore
from .prefetch import Prefetcher
from .preparation import prepare
from .store import ResidentStore, VolumeStore
from .stream import DRRCorrespondenceSampler
from .targets import DRRTarget, NovelViewTarget, SequenceTarget, TargetBuilder, VolumeTarget

__all__ = [
    "AngularSequence",
    "BatchMaker",
    "BiplanarBatch",
    "BiplanarViews",
    "DRRBatch",
    "DRRCorrespondenceSampler",
    "DRRTarget",
    "DegenerateDrawWarning",
    "PhantomSource",
    "PhantomStore",
    "IndependentViews",
    "NovelViewBatch",
    "NovelViewTarget",
    "Prefetcher",
    "ResidentStore",
    "SampleParams",
    "SamplerConfig",
    "SequenceBatch",
    "SequenceTarget",
    "SourceAndTargets",
    "TargetBuilder",
    "ViewLayout",
    "VolumeBank",
    "VolumeStore",
    "VolumeTarget",
    "draw",
    "make_batch",
    "prepare",
    "require_fields",
]
