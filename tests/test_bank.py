"""VolumeBank: crops, tissue blocks and pooled weights from a prepared cache; shards, splits, budget, bad input."""

from __future__ import annotations

import gc
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onthefly import Volume, WeightIntegral, hu_to_attenuation, pool_weights
from onthefly.sampling.bank import VolumeBank, parse_bytes
from onthefly.sampling.preparation import prepare, read_index

SPACING = 2.0
SHAPES = [(14, 16, 18), (18, 14, 16), (16, 18, 14), (15, 15, 20), (20, 16, 15), (17, 19, 16)]
PATIENTS = ["A", "A", "B", "C", "C", "D"]


def phantom_ct(make_phantom_hu, shape, seed: int) -> Volume:
    """A phantom CT at 2 mm with a label map (0 air, 1 soft tissue, 2 dense), HU rounded as the cache stores them.

    No voxel sits exactly at the air threshold (-900 HU), where pool_weights' test on attenuation
    and the HU test may round apart by one float32 step.
    """
    hu = make_phantom_hu(shape, seed=seed).round()
    hu[hu == -900] = -901
    labels = (hu > -300).to(torch.int16) + (hu > 300).to(torch.int16)
    return Volume.from_tensor(hu, spacing=SPACING, labels=labels)


@pytest.fixture(scope="module")
def cts(make_phantom_hu) -> list[Volume]:
    return [phantom_ct(make_phantom_hu, shape, seed) for seed, shape in enumerate(SHAPES)]


@pytest.fixture(scope="module")
def cache(cts, tmp_path_factory) -> Path:
    from onthefly.sampling.preparation import CTSource

    folder = tmp_path_factory.mktemp("bank") / "cache"
    sources = [CTSource(name=f"ct{i}", patient=p, item=v) for i, (v, p) in enumerate(zip(cts, PATIENTS))]
    prepare(sources, folder, spacing=SPACING)
    return folder


@pytest.fixture
def bank(cache) -> VolumeBank:
    return VolumeBank(cache)


def random_boxes(bank: VolumeBank, size, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    volume = torch.randint(len(bank), (batch,), generator=generator)
    room = bank.shapes[volume] - torch.tensor(size) + 1
    start = (torch.rand(batch, 3, generator=generator) * room).long()
    return volume, start


def test_description_matches_the_prepared_cts(bank, cts):
    assert len(bank) == len(cts) and bank.has_labels
    assert bank.shapes.tolist() == [list(v.shape) for v in cts]
    torch.testing.assert_close(bank.affines, torch.stack([v.affine for v in cts]))
    assert bank.spacing.tolist() == [SPACING] * 3 and bank.tissue_block.tolist() == [4, 4, 4]
    assert (bank.weighting, bank.air_threshold_hu, bank.mu_water) == ("soft", -900.0, 0.02)
    assert [bank.name(i) for i in range(len(bank))] == [f"ct{i}" for i in range(len(cts))]
    assert bank.label_names == (None,) * len(cts)
    assert bank.device == torch.device("cpu") and bank.to("cpu").fingerprint() == bank.fingerprint()
    assert repr(bank).startswith("VolumeBank(6 CTs at 2 x 2 x 2 mm from ")


def test_crops_are_the_prepared_attenuation_and_labels(bank, cts):
    size = (9, 7, 8)
    volume, start = random_boxes(bank, size, batch=7, seed=0)
    attenuation, labels = bank.crops(volume, start, size, device="cpu", labels=True)
    assert attenuation.shape == (7, *size) and attenuation.dtype == torch.float32
    assert labels.dtype == torch.int16
    for b in range(7):
        i, j, k = start[b].tolist()
        ct = cts[int(volume[b])]
        box = (slice(i, i + size[0]), slice(j, j + size[1]), slice(k, k + size[2]))
        assert torch.equal(attenuation[b], hu_to_attenuation(ct.hu[0][box]))
        assert torch.equal(labels[b], ct.labels[0][box])
    single, none = bank.crops(volume[2:3], start[2:3], size, device="cpu")
    assert torch.equal(single[0], attenuation[2]) and none is None


@pytest.mark.parametrize("threads", [1, 3])
def test_any_number_of_read_threads_gives_the_same_batch(cache, bank, threads):
    other = VolumeBank(cache, read_threads=threads)
    volume, start = random_boxes(bank, (6, 6, 6), batch=9, seed=5)
    factor = torch.full((9, 3), 2)
    for one, two in zip(bank.crops(volume, start, (6, 6, 6), device="cpu", labels=True),
                        other.crops(volume, start, (6, 6, 6), device="cpu", labels=True)):
        assert torch.equal(one, two)
    assert torch.equal(bank.pooled_weights(volume, start, start + 6, factor).weight,
                       other.pooled_weights(volume, start, start + 6, factor).weight)


def test_tissue_blocks_are_the_non_air_fraction_of_each_block(bank, cts):
    volume, start = random_boxes(bank, (8, 8, 8), batch=5, seed=1)
    first = start // 4
    blocks = bank.tissue_blocks(volume, first, (2, 2, 2))
    assert blocks.shape == (5, 2, 2, 2) and blocks.dtype == torch.float32
    for b in range(5):
        hu = cts[int(volume[b])].hu[0]
        grid = F.avg_pool3d((hu > -900).float()[None, None], 4, ceil_mode=True)[0, 0]
        i, j, k = first[b].tolist()
        assert torch.equal(blocks[b], grid[i : i + 2, j : j + 2, k : k + 2])
    last = bank.tissue_blocks(torch.tensor([0]), torch.tensor([[3, 3, 3]]), (3, 1, 1))  # past the 4 x 4 x 5 grid
    grid = F.avg_pool3d((cts[0].hu[0] > -900).float()[None, None], 4, ceil_mode=True)[0, 0]
    assert last.flatten().tolist() == [grid[3, 3, 3].item()] * 3


def test_pooled_weights_equal_the_weight_integrals_and_pool_weights(bank, cts):
    volume, start = random_boxes(bank, (12, 11, 10), batch=6, seed=2)
    stop = start + torch.tensor([12, 11, 10])
    factor = torch.randint(1, 6, (6, 3), generator=torch.Generator().manual_seed(3))
    pooled = bank.pooled_weights(volume, start, stop, factor)
    reference = WeightIntegral(cts).pool(volume, start, stop, factor)
    assert pooled.weight.shape == reference.weight.shape
    torch.testing.assert_close(pooled.weight, reference.weight, atol=1e-4, rtol=0)
    torch.testing.assert_close(pooled.affine, reference.affine)
    torch.testing.assert_close(pooled.voxel_size, reference.voxel_size)
    assert bool((pooled.weight >= 0).all() and (pooled.weight <= 1).all())
    edges = torch.tensor([1, 2, 3, 4, 5, 3])  # isotropic factors: what pool_weights gives for each cropped CT
    isotropic = bank.pooled_weights(volume, start, stop, edges[:, None].expand(6, 3).contiguous())
    for b in range(6):
        crop = cts[int(volume[b])].crop(start[b].tolist(), stop[b].tolist())
        direct = pool_weights(crop, float(edges[b]) * SPACING)
        d, h, w = direct.weight.shape[1:]
        torch.testing.assert_close(isotropic.weight[b, :d, :h, :w], direct.weight[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(isotropic.affine[b], direct.affine[0])


def test_shards_are_disjoint_and_cover_the_bank(bank):
    shards = [bank.shard(rank, 4) for rank in range(4)]
    names = [{shard.name(i) for i in range(len(shard))} for shard in shards]
    assert sum(len(n) for n in names) == len(bank) and set().union(*names) == {bank.name(i) for i in range(len(bank))}
    assert all(a.isdisjoint(b) for i, a in enumerate(names) for b in names[i + 1 :])
    assert bank.shard(0, 1).fingerprint() == bank.fingerprint()
    assert len({shard.fingerprint() for shard in shards}) == 4


def test_split_is_disjoint_by_patient_and_seeded(bank):
    train, held_out = bank.split((0.6, 0.4), seed=0)
    assert len(train) + len(held_out) == len(bank)
    patients = [{part.patient(i) for i in range(len(part))} for part in (train, held_out)]
    assert patients[0].isdisjoint(patients[1]) and patients[0] | patients[1] == set(PATIENTS)
    again = bank.split((0.6, 0.4), seed=0)
    assert [part.fingerprint() for part in again] == [train.fingerprint(), held_out.fingerprint()]
    splits = {tuple(part.fingerprint() for part in bank.split((0.5, 0.5), seed=seed)) for seed in range(8)}
    assert len(splits) > 1  # the seed chooses
    crops, _ = train.crops(torch.tensor([0]), torch.zeros(1, 3, dtype=torch.long), (4, 4, 4), device="cpu")
    assert crops.shape == (1, 4, 4, 4)


def test_resident_bytes_stay_within_the_memory_budget(cache):
    grid_bytes = 4 * 4 * 5 * 4  # one tissue grid of the first CT, float32
    small = VolumeBank(cache, memory_budget=2 * grid_bytes)
    for step in range(3):
        for ct in range(len(small)):
            small.tissue_blocks(torch.tensor([ct]), torch.zeros(1, 3, dtype=torch.long), (1, 1, 1))
            assert 0 < small.resident_bytes <= small.memory_budget
    none = VolumeBank(cache, memory_budget=0)
    none.tissue_blocks(torch.arange(len(none)), torch.zeros(len(none), 3, dtype=torch.long), (1, 1, 1))
    assert none.resident_bytes == 0
    roomy = VolumeBank(cache, memory_budget="1MB")
    roomy.tissue_blocks(torch.arange(len(roomy)), torch.zeros(len(roomy), 3, dtype=torch.long), (1, 1, 1))
    grids = [np.load(cache / e["files"]["tissue"]["path"]).nbytes for e in read_index(cache)["cts"]]
    assert roomy.resident_bytes == sum(grids)


def test_available_is_every_candidate_whatever_the_step(bank):
    candidates = torch.tensor([5, 1, 3])
    for step in (0, 1, 1000):
        assert torch.equal(bank.available(step, candidates), candidates)


def test_fingerprint_is_stable_and_follows_content_and_settings(cache, cts, tmp_path):
    assert VolumeBank(cache).fingerprint() == VolumeBank(cache).fingerprint()
    prepare(cts[:2], tmp_path / "binary", spacing=SPACING, weighting="binary")
    prepare(cts[:2], tmp_path / "soft", spacing=SPACING)
    assert VolumeBank(tmp_path / "binary").fingerprint() != VolumeBank(tmp_path / "soft").fingerprint()
    assert VolumeBank(tmp_path / "soft").fingerprint() != VolumeBank(cache).fingerprint()


def test_a_bank_over_volumes_prepares_a_temporary_cache_and_removes_it(cts):
    bank = VolumeBank(cts[:2], spacing=SPACING)
    folder = bank.folder
    assert (folder / "index.json").exists() and len(bank) == 2
    shard = bank.shard(1, 2)
    del bank
    gc.collect()
    assert folder.exists()  # the shard still reads it
    assert shard.crops(torch.tensor([0]), torch.zeros(1, 3, dtype=torch.long), (2, 2, 2), device="cpu")[0].numel() == 8
    del shard
    gc.collect()
    assert not folder.exists()


def test_a_pickled_bank_reads_the_same_crops(bank):
    copy = pickle.loads(pickle.dumps(bank))
    volume, start = random_boxes(bank, (5, 5, 5), batch=3, seed=4)
    assert torch.equal(copy.crops(volume, start, (5, 5, 5), device="cpu")[0], bank.crops(volume, start, (5, 5, 5), device="cpu")[0])


# ------------------------------------------------------------------------------------------ bad input


def test_an_unreadable_ct_among_good_ones_is_named_and_skipped_or_refused(cts, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"corrupt" * 50)
    with pytest.warns(UserWarning, match="broken.nii.gz"):
        bank = VolumeBank([cts[0], broken, cts[1]], spacing=SPACING, cache=tmp_path / "skip")
    assert len(bank) == 2
    with pytest.raises(ValueError, match=r"sources: 1 CT\(s\) could not be prepared[\s\S]*broken.nii.gz"):
        VolumeBank([cts[0], broken], spacing=SPACING, cache=tmp_path / "raise", on_error="raise")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"holds no prepared CT \(could not read: .*broken"):
        VolumeBank([broken], spacing=SPACING, cache=tmp_path / "none")


def test_a_ct_smaller_than_the_crop_is_named_with_both_sizes(bank):
    bank.check_crop((14, 14, 14))
    with pytest.raises(ValueError, match=r"crop of 16 x 16 x 16 voxels \(32 x 32 x 32 mm\) is larger than 5 CT\(s\): "
                                         r"ct0 \(14 x 16 x 18 voxels\); ct1 \(18 x 14 x 16 voxels\)"):
        bank.check_crop((16, 16, 16))
    fitting = bank.fitting((16, 16, 16))
    assert [fitting.name(i) for i in range(len(fitting))] == ["ct5"]
    fitting.check_crop((16, 16, 16))
    with pytest.raises(ValueError, match="crop_voxels: the selection leaves no CT"):
        bank.fitting((30, 30, 30))


def copy_cache(cache: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(cache, target)
    return target


def test_deleted_or_changed_files_are_named(cache, tmp_path):
    folder = copy_cache(cache, tmp_path / "deleted")
    entry = read_index(folder)["cts"][2]
    (folder / entry["files"]["hu"]["path"]).unlink()
    with pytest.raises(FileNotFoundError, match=r"hu.npy of CT ct2 was deleted"):
        VolumeBank(folder)
    folder = copy_cache(cache, tmp_path / "truncated")
    path = folder / read_index(folder)["cts"][1]["files"]["weights"]["path"]
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"weights.npy of CT ct1 changed since it was indexed \(\d+ bytes, indexed"):
        VolumeBank(folder)
    folder = copy_cache(cache, tmp_path / "rewritten")
    path = folder / read_index(folder)["cts"][3]["files"]["hu"]["path"]
    data = np.load(path)
    np.save(path, data[::-1].copy())  # same size, other content: found at the first read
    bank = VolumeBank(folder)
    with pytest.raises(ValueError, match=r"hu.npy of CT ct3 changed since it was indexed"):
        bank.crops(torch.tensor([3]), torch.zeros(1, 3, dtype=torch.long), (2, 2, 2), device="cpu")
    with pytest.raises(ValueError, match="the prepared CT ct3 changed"):
        bank.verify()
    VolumeBank(cache).verify()


def test_another_spacing_or_weighting_than_prepared_is_refused(cache):
    with pytest.raises(ValueError, match=r"spacing: the cache .* prepared at \[2.0, 2.0, 2.0\] mm, the sampler asks "
                                         r"\[1.5, 1.5, 1.5\] mm"):
        VolumeBank(cache, spacing=1.5)
    bank = VolumeBank(cache, spacing=(2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="spacing: the cache"):
        bank.check_spacing([2.0, 2.0, 2.5])
    with pytest.raises(ValueError, match="weighting: the cache .* prepared with weighting 'soft', asked 'binary'"):
        VolumeBank(cache, weighting="binary")
    with pytest.raises(ValueError, match="air_threshold_hu: the cache .* prepared with -900 HU, asked -800"):
        VolumeBank(cache, air_threshold_hu=-800.0)


def test_empty_unfinished_or_foreign_folders_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty has no index.json: it is not a prepared cache"):
        VolumeBank(tmp_path / "empty")
    (tmp_path / "unfinished" / "cts").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="its preparation did not finish"):
        VolumeBank(tmp_path / "unfinished")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "index.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="has format 'something else'"):
        VolumeBank(tmp_path / "foreign")
    with pytest.raises(FileNotFoundError, match="volumes: no such prepared folder or CT file: .*nowhere"):
        VolumeBank(tmp_path / "nowhere")


def test_bad_calls_are_refused_with_the_argument_named(bank, cts, tmp_path):
    start = torch.zeros(1, 3, dtype=torch.long)
    cases = [
        (lambda: bank.crops(torch.tensor([6]), start, (2, 2, 2), device="cpu"), "volume_index: expected indices in"),
        (lambda: bank.crops(torch.tensor([0.0]), start, (2, 2, 2), device="cpu"), "volume_index: expected a"),
        (lambda: bank.crops(torch.tensor([0]), start.int(), (2, 2, 2), device="cpu"), r"start: expected a \(1, 3\)"),
        (lambda: bank.crops(torch.tensor([0]), start, (2, 2), device="cpu"), "size: expected three positive ints"),
        (lambda: bank.crops(torch.tensor([0]), start + 10, (5, 5, 5), device="cpu"), r"start, size: the box .* leaves CT ct0"),
        (lambda: bank.pooled_weights(torch.tensor([0]), start, start + 4, torch.zeros(1, 3, dtype=torch.long)),
         "factor: expected pooling factors >= 1"),
        (lambda: bank.pooled_weights(torch.tensor([0]), start, start, torch.ones(1, 3, dtype=torch.long)),
         "start, stop: the box"),
        (lambda: bank.tissue_blocks(torch.tensor([0]), start, (0, 1, 1)), "count: expected three positive ints"),
        (lambda: bank.shard(2, 2), "rank, world: expected 0 <= rank < world"),
        (lambda: bank.shard(0, 7), "world: expected at most 6 ranks"),
        (lambda: bank.split((0.5, 0.6), seed=0), "fractions: expected positive fractions summing to 1"),
        (lambda: bank.split((0.9, 0.05, 0.05), seed=0), r"fractions: part \d of .* gets no CT"),
        (lambda: bank.name(6), r"index: expected an int in \[0, 6\)"),
    ]
    for call, message in cases:
        with pytest.raises((ValueError, IndexError), match=message):
            call()
    with pytest.raises(TypeError, match="seed: expected an int"):
        bank.split((0.5, 0.5), seed=None)
    unlabelled = VolumeBank([Volume.from_tensor(cts[0].hu[0], spacing=SPACING)], spacing=SPACING)
    with pytest.raises(ValueError, match="labels: every CT needs a label map, and <volume 0> has none"):
        unlabelled.crops(torch.tensor([0]), start, (2, 2, 2), device="cpu", labels=True)


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (1024, 1024), ("2GB", 2 * 10**9), ("512 MiB", 2**29),
                                                 ("1.5g", 1_500_000_000), ("3kb", 3000)])
def test_memory_budget_parses_bytes(value, expected):
    assert parse_bytes("memory_budget", value) == expected


def test_bad_settings_are_refused(cache):
    with pytest.raises(ValueError, match="mu_water: expected a positive number"):
        VolumeBank(cache, mu_water=0.0)
    with pytest.raises(ValueError, match="read_threads: expected an int >= 1"):
        VolumeBank(cache, read_threads=0)


@pytest.mark.parametrize(("value", "error"), [("two GB", ValueError), ("2 GX", ValueError), (-1, ValueError),
                                              (float("inf"), ValueError), (True, TypeError), ([1], TypeError)])
def test_bad_memory_budgets_are_refused(cache, value, error):
    with pytest.raises(error, match="memory_budget: expected"):
        VolumeBank(cache, memory_budget=value)


# ---------------------------------------------------------------------------------------- the sampler

TINY = dict(views=2, image_size=32, patch_size=16, crop_size=20.0, spacing=SPACING, batch_size=3, min_projection_fraction=0.0)


def test_a_sampler_on_the_bank_makes_the_resident_samplers_batches(cache, cts):
    from onthefly import DRRCorrespondenceSampler

    on_bank = DRRCorrespondenceSampler(volumes=str(cache), seed=3, **TINY)
    resident = DRRCorrespondenceSampler(volumes=cts, seed=3, **TINY)
    assert isinstance(on_bank.store, VolumeBank)
    for step in (0, 5):
        ours, theirs = on_bank.sample(step), resident.sample(step)
        assert torch.equal(ours.params.volume_index, theirs.params.volume_index)
        assert torch.equal(ours.params.crop_start, theirs.params.crop_start)
        assert torch.equal(ours.images, theirs.images)  # the same crops, bit for bit
        torch.testing.assert_close(ours.correspondence, theirs.correspondence, atol=1e-4, rtol=0)
    bank = VolumeBank(cache)
    assert DRRCorrespondenceSampler(volumes=bank, seed=3, **TINY).store is bank


def test_a_resumed_stream_on_the_bank_equals_the_uninterrupted_one(cache):
    from onthefly import DRRCorrespondenceSampler

    whole = DRRCorrespondenceSampler(volumes=VolumeBank(cache), seed=1, steps=4, **TINY)
    uninterrupted = list(whole)
    first = DRRCorrespondenceSampler(volumes=VolumeBank(cache), seed=1, steps=4, **TINY)
    iterator = iter(first)
    next(iterator), next(iterator)
    state = first.state_dict()
    resumed = DRRCorrespondenceSampler(volumes=VolumeBank(cache), seed=1, steps=4, **TINY)
    resumed.load_state_dict(state)
    for ours, theirs in zip(resumed, uninterrupted[2:], strict=True):
        assert ours.step == theirs.step
        assert torch.equal(ours.images, theirs.images) and torch.equal(ours.correspondence, theirs.correspondence)


def test_the_sampler_names_a_cache_of_other_settings_a_small_ct_and_an_empty_folder(cache, tmp_path):
    from onthefly import DRRCorrespondenceSampler

    with pytest.raises(ValueError, match=r"spacing: the cache .* prepared at \[2.0, 2.0, 2.0\] mm, the sampler asks"):
        DRRCorrespondenceSampler(volumes=str(cache), **(TINY | {"spacing": 1.5}))
    with pytest.raises(ValueError, match="spacing: the CTs are stored at"):
        DRRCorrespondenceSampler(volumes=VolumeBank(cache), **(TINY | {"spacing": 1.5}))
    with pytest.raises(ValueError, match="weighting: the cache .* prepared with weighting 'soft', asked 'binary'"):
        DRRCorrespondenceSampler(volumes=cache, weighting="binary", **TINY)
    with pytest.raises(ValueError, match=r"crop_size: the crop of 16 x 16 x 16 voxels \(32 x 32 x 32 mm\) is larger "
                                         r"than 5 CT\(s\): ct0 \(14 x 16 x 18 voxels\)"):
        DRRCorrespondenceSampler(volumes=cache, **(TINY | {"crop_size": 32.0}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a prepared cache"):
        DRRCorrespondenceSampler(volumes=tmp_path / "empty", **TINY)


def _rank_stream(rank: int, world: int, cache: str, folder: str) -> None:
    import json

    import torch.distributed as dist

    from onthefly import DRRCorrespondenceSampler

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        sampler = DRRCorrespondenceSampler(volumes=cache, seed=0, **TINY)
        batch = sampler.sample(0)
        names = [sampler.store.name(int(i)) for i in sampler.candidates()]
        drawn = [sampler.store.name(int(i)) for i in batch.volume_index]
        result = {"rank": sampler.rank, "candidates": names, "drawn": drawn, "images": float(batch.images.sum())}
        Path(folder, f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_draw_disjoint_shards_and_different_streams(cache, tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.spawn(_rank_stream, args=(2, str(cache), str(tmp_path)), nprocs=2, join=True)
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert (first["rank"], second["rank"]) == (0, 1)
    assert set(first["candidates"]).isdisjoint(second["candidates"])
    assert sorted(first["candidates"] + second["candidates"]) == sorted(f"ct{i}" for i in range(len(SHAPES)))
    assert set(first["drawn"]) <= set(first["candidates"]) and set(second["drawn"]) <= set(second["candidates"])
    assert first["images"] != second["images"]
