"""The training loop's step: prefetched batches, no global state changed, streams refused at once when unfit."""

from __future__ import annotations

import csv

import pytest
import torch

from onthefly import DRRCorrespondenceSampler
from onthefly.models import CorrespondenceConfig
from onthefly.tasks import BiplanarSampler
from onthefly.train import TrainConfig, train_classifier, train_correspondence
from onthefly.models import ClassifierConfig

TINY_DATA = dict(image_size=32, patch_size=16, crop_size=100.0, spacing=5.0, batch_size=2)


def tiny_model() -> CorrespondenceConfig:
    return CorrespondenceConfig.small(d_model=16, heads=2, layers=1, mlp=32, patch_size=16)


def config(output, **changes) -> TrainConfig:
    settings = dict(output=str(output), steps=4, lr=1e-3, checkpoint_every=4, eval_every=0, log_every=2,
                    progress=False)
    return TrainConfig(**(settings | changes))


def test_training_leaves_the_global_rng_alone_and_prefetching_changes_nothing(ct_small, tmp_path):
    state = torch.get_rng_state()
    sampler = DRRCorrespondenceSampler(volumes=[ct_small], seed=3, views=2, **TINY_DATA)
    prefetched = train_correspondence(tiny_model(), sampler, config(tmp_path / "a", prefetch=2))
    assert torch.equal(torch.get_rng_state(), state)
    sampler = DRRCorrespondenceSampler(volumes=[ct_small], seed=3, views=2, **TINY_DATA)
    inline = train_correspondence(tiny_model(), sampler, config(tmp_path / "b", prefetch=0))
    assert prefetched["loss_first"] == inline["loss_first"] and prefetched["loss_last"] == inline["loss_last"]
    rows = list(csv.DictReader(open(tmp_path / "a" / "metrics.csv")))
    assert [int(row["step"]) for row in rows] == [2, 4]
    assert all(0 <= float(row["sampler_fraction"]) <= 1 for row in rows)


def test_a_stream_without_the_needed_fields_is_refused_before_training(ct_small, tmp_path):
    biplanar = BiplanarSampler(volumes=[ct_small], volume_size=8, **TINY_DATA)
    with pytest.raises(ValueError, match="train_correspondence .*'correspondence'.*BiplanarBatch"):
        train_correspondence(tiny_model(), biplanar, config(tmp_path))
    plain = DRRCorrespondenceSampler(volumes=[ct_small], views=2, **TINY_DATA)
    with pytest.raises(ValueError, match="fracture"):
        train_classifier(ClassifierConfig.small(patch_size=16), plain, config(tmp_path))
    assert not (tmp_path / "checkpoint.pt").exists()
