"""Phantoms as the sampler's CTs: PhantomSource (regions x seeds), its store, determinism, resume, ranks."""

from __future__ import annotations

import pytest
import torch

from onthefly import DRRCorrespondenceSampler, PhantomSource, Volume, patch_correspondence
from onthefly.phantoms import phantom
from onthefly.sampling.draw import candidate_volumes
from onthefly.sampling.phantom_store import PhantomStore, parse_phantom_source

SETTINGS = dict(views=2, image_size=32, patch_size=8, crop_size=96.0, spacing=4.0, batch_size=2,
                augmentation=None, min_tissue_fraction=0.1, min_projection_fraction=0.1)


@pytest.fixture(scope="module")
def sampler() -> DRRCorrespondenceSampler:
    return DRRCorrespondenceSampler(volumes=PhantomSource(regions=("wrist", "hand"), seeds=range(100, 110)), seed=5,
                                    **SETTINGS)


def test_source_maps_indices_to_regions_and_seeds_and_splits_disjointly():
    source = PhantomSource(regions=("forearm", "wrist"), seeds=range(10, 20))
    assert len(source) == 20
    assert source.item(0) == ("forearm", 10) and source.item(19) == ("wrist", 19)
    train, held_out = source.split((0.8, 0.2))
    assert train.seeds == range(10, 18) and held_out.seeds == range(18, 20)
    assert not set(train.seeds) & set(held_out.seeds)
    assert parse_phantom_source("phantom:hand,wrist") == PhantomSource(regions=("hand", "wrist"), seeds=range(100))
    assert parse_phantom_source("phantom:forearm:500").seeds == range(500)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PhantomSource(regions=("elbow",)), "regions"),
        (lambda: PhantomSource(regions=()), "regions"),
        (lambda: PhantomSource(regions=("hand", "hand")), "regions"),
        (lambda: PhantomSource(seeds=range(0)), "seeds"),
        (lambda: PhantomSource(seeds=[1, -2]), "seeds"),
        (lambda: PhantomSource(seeds=[1, 1]), "seeds"),
        (lambda: PhantomSource(seeds=[1.5]), "seeds"),
        (lambda: PhantomSource().split((0.5, 0.6)), "fractions"),
        (lambda: PhantomSource(seeds=range(1)).split((0.5, 0.5)), "fractions"),
        (lambda: PhantomSource().item(30_000), "index"),
        (lambda: parse_phantom_source("phantom:elbow"), "volumes"),
        (lambda: parse_phantom_source("phantom:"), "volumes"),
        (lambda: parse_phantom_source("phantom:hand:0"), "volumes"),
        (lambda: parse_phantom_source("phantom:hand:ten"), "volumes"),
    ],
)
def test_bad_sources_are_refused_by_name(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_same_stream_same_batches_and_crops_are_the_phantoms(sampler):
    """A batch is a pure function of (seed, rank, step): a new sampler (an empty cache) makes it again bit for
    bit; each crop is the phantom of its (region, seed), centred in its region's box."""
    batch = sampler.sample(0)
    again = DRRCorrespondenceSampler(volumes=PhantomSource(regions=("wrist", "hand"), seeds=range(100, 110)), seed=5,
                                     **SETTINGS).sample(0)
    torch.testing.assert_close(again.images, batch.images, rtol=0, atol=0)
    torch.testing.assert_close(again.correspondence, batch.correspondence, rtol=0, atol=0)
    store = sampler.store
    assert isinstance(store, PhantomStore)
    index = int(batch.params.volume_index[0])
    region, seed = store.source.item(index)
    generated = phantom(region, seed, spacing=4.0)
    hu = store._entry(index)[0]
    inner = [slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip(hu.shape, generated.shape)]
    torch.testing.assert_close(hu[tuple(inner)], generated.hu[0], rtol=0, atol=0)
    assert float(hu.max()) > 500.0  # bone inside the box (cortex blurred by 4 mm voxels), air around it
    assert float(hu[0, 0, 0]) == -1000.0


def test_correspondence_is_the_library_matrix_of_the_crop(sampler):
    batch = sampler.sample(1)
    for i in range(2):
        start, stop = batch.params.crop_start[i], batch.params.crop_stop[i]
        index = int(batch.params.volume_index[i])
        hu = sampler.store._entry(index)[0]
        crop = hu[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]
        affine = batch.crop_affine[i].to(torch.float64)
        edge = float(batch.params.coarse_factor[i, 0]) * 4.0
        expected = patch_correspondence(Volume(hu=crop[None], affine=affine), batch.carm.select(i), patch_size=8,
                                        coarse_voxel_size=edge)
        torch.testing.assert_close(batch.correspondence[i:i + 1], expected, atol=1e-5, rtol=0)
        assert float(expected.max()) > 0.3


def test_resume_and_ranks(sampler):
    """Resume: a sampler restored from a state makes the next batch bit for bit. Ranks: disjoint phantoms."""
    sampler.seek(3)
    state = sampler.state_dict()
    restored = DRRCorrespondenceSampler(volumes=PhantomSource(regions=("wrist", "hand"), seeds=range(100, 110)),
                                        seed=5, **SETTINGS)
    restored.load_state_dict(state)
    torch.testing.assert_close(next(iter(restored)).images, sampler.sample(3).images, rtol=0, atol=0)
    shares = [set(candidate_volumes(sampler.store, rank=rank, world=2, shard=None).tolist()) for rank in range(2)]
    assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == len(sampler.store)
    seeds = [{sampler.store.source.item(i) for i in share} for share in shares]
    assert not seeds[0] & seeds[1]


def test_the_cache_is_bounded():
    source = PhantomSource(regions=("wrist",), seeds=range(3))
    store = PhantomStore(source, spacing=(4.0, 4.0, 4.0), mu_water=0.02, air_threshold_hu=-900.0, weighting="soft",
                         cache_bytes=1)
    for index in range(3):
        store._entry(index)
    assert len(store._cache) == 1  # the newest only


def test_the_command_line_splits_phantom_seeds_between_training_and_evaluation():
    """``--volumes phantom:wrist,hand:20``: training on seeds 0-17, evaluation on 18-19 of both regions."""
    import argparse

    from onthefly.cli.training import _add_train_options, _samplers_from_args

    parser = argparse.ArgumentParser()
    _add_train_options(parser)
    args = parser.parse_args(["--volumes", "phantom:wrist,hand:20", "--image-size", "32", "--patch-size", "8",
                              "--crop-size", "96", "--spacing", "4", "--batch-size", "2"])
    train, held_out = _samplers_from_args(args)
    assert train.store.source == PhantomSource(regions=("wrist", "hand"), seeds=range(0, 18))
    assert held_out.store.source == PhantomSource(regions=("wrist", "hand"), seeds=range(18, 20))
    bad = parser.parse_args(["--volumes", "phantom:elbow"])
    with pytest.raises(SystemExit, match="--volumes: expected 'phantom:'"):
        _samplers_from_args(bad)


def test_prepare_writes_a_bank_of_phantoms(tmp_path):
    """``onthefly prepare phantom:wrist,hand --count 2``: four phantoms generated one at a time into a bank."""
    from onthefly import VolumeBank
    from onthefly.cli import main

    assert main(["prepare", "phantom:wrist,hand", "--count", "2", "--spacing", "4", "--output", str(tmp_path)]) == 0
    bank = VolumeBank(tmp_path, spacing=4.0)
    assert sorted(bank.name(i) for i in range(len(bank))) == [
        "phantom:hand:seed 0", "phantom:hand:seed 1", "phantom:wrist:seed 0", "phantom:wrist:seed 1"]
    crops, labels = bank.crops(torch.tensor([0]), torch.zeros(1, 3, dtype=torch.long), (8, 8, 8), labels=True)
    assert crops.shape == (1, 8, 8, 8) and labels is not None
    with pytest.raises(SystemExit):
        main(["prepare", str(tmp_path / "none.nii"), "--count", "2", "--output", str(tmp_path / "other")])


def test_single_ct_commands_take_a_phantom(tmp_path):
    """``onthefly render phantom:wrist:3``: one phantom; a bad one is refused naming the argument."""
    from onthefly.cli import main

    output = tmp_path / "wrist.png"
    assert main(["render", "phantom:wrist:3", "--alpha", "0", "90", "--image-size", "32", "--output",
                 str(output)]) == 0
    assert output.stat().st_size > 0
    with pytest.raises(SystemExit):
        main(["render", "phantom:elbow", "--output", str(tmp_path / "x.png")])
