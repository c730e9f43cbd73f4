"""VolumeBank: crops, tissue blocks and pooled weights from a prepared cache; shards, splits, budget, bad input."""

from __future__ import annotations

import gc
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onthefly import Volume, hu_to_attenuation
from onthefly.correspondence import WeightIntegral, pool_weights
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
    with pytest.raises(ValueError, match=r"sources: none of the 1 CT\(s\) could be prepared:\n.*broken"):
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


# --------------------------------------------------------------------------- damaged files, edited index


def damage(path: Path, where: float = 0.5, count: int = 16, seed: int = 0) -> None:
    """Random bytes written over ``count`` bytes from ``where`` (a fraction of the data, past the header)."""
    data = bytearray(path.read_bytes())
    offset = np.load(path, mmap_mode="r").offset
    position = offset + int(where * (len(data) - offset - count))
    noise = np.random.default_rng(seed).integers(0, 256, count, dtype=np.uint8).tobytes()
    data[position : position + count] = bytes(a ^ (b | 1) for a, b in zip(data[position : position + count], noise))
    path.write_bytes(bytes(data))


def whole_ct(bank: VolumeBank, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([index]), torch.zeros(1, 3, dtype=torch.long)


def test_random_bytes_in_the_weight_table_are_refused_never_served(cache, tmp_path):
    folder = copy_cache(cache, tmp_path / "weights")
    damage(folder / read_index(folder)["cts"][2]["files"]["weights"]["path"])
    bank = VolumeBank(folder)
    volume, start = whole_ct(bank, 2)
    stop = bank.shapes[2:3].clone()
    for factor in (1, 2, 5):
        with pytest.raises(ValueError, match=r"weights.npy of CT ct2 changed since it was indexed: planes \d+-\d+ differ"):
            bank.pooled_weights(volume, start, stop, torch.full((1, 3), factor))
    with pytest.raises(ValueError, match=r"the prepared CT ct2 changed since it was indexed: .*weights.npy"):
        bank.verify()
    other = bank.pooled_weights(torch.tensor([1]), start, bank.shapes[1:2].clone(), torch.full((1, 3), 2)).weight
    assert bool((other >= 0).all() and (other <= 1).all())  # the other CTs are served as before


@pytest.mark.parametrize("name", ["hu", "labels", "tissue", "weights"])
def test_verify_reads_every_prepared_file(cache, tmp_path, name):
    folder = copy_cache(cache, tmp_path / name)
    damage(folder / read_index(folder)["cts"][4]["files"][name]["path"], where=0.7, count=1)
    with pytest.raises(ValueError, match=rf"the prepared CT ct4 changed since it was indexed: .*{name}.npy of CT ct4"):
        VolumeBank(folder).verify()


def test_a_hu_block_damaged_mid_file_is_refused_at_its_first_read(cache, tmp_path, monkeypatch):
    folder = copy_cache(cache, tmp_path / "hu")
    damage(folder / read_index(folder)["cts"][0]["files"]["hu"]["path"], where=0.5, count=2)
    bank = VolumeBank(folder)
    with pytest.raises(ValueError, match=r"hu.npy of CT ct0 changed since it was indexed: planes 0-13 differ"):
        bank.crops(torch.tensor([0]), torch.tensor([[6, 6, 6]]), (2, 2, 2), device="cpu")
    with pytest.raises(ValueError, match="hu.npy of CT ct0 changed"):  # refused again, never served later
        bank.crops(torch.tensor([0]), torch.tensor([[6, 6, 6]]), (2, 2, 2), device="cpu")
    bank.crops(torch.tensor([1]), torch.zeros(1, 3, dtype=torch.long), (4, 4, 4), device="cpu", labels=True)


@pytest.fixture(scope="module")
def blocky_cache(make_phantom_hu, tmp_path_factory) -> tuple[Path, list[Volume]]:
    """Two CTs of one shape, 128 KiB of HU each, air in their last 24 planes (the same bytes in both), prepared in
    blocks of 4 planes."""
    from onthefly.sampling import cache_format

    cts = []
    for seed in (11, 12):
        hu = torch.full((40, 40, 40), -1000.0)
        hu[:16] = make_phantom_hu((16, 40, 40), seed=seed).round()
        cts.append(Volume.from_tensor(hu, spacing=SPACING))
    folder = tmp_path_factory.mktemp("blocky") / "cache"
    original = cache_format.BLOCK_BYTES
    cache_format.BLOCK_BYTES = 4 * 40 * 40 * 2
    try:
        prepare(cts, folder, spacing=SPACING)
    finally:
        cache_format.BLOCK_BYTES = original
    return folder, cts


def test_hu_files_of_two_cts_swapped_are_refused(blocky_cache, tmp_path):
    folder = copy_cache(blocky_cache[0], tmp_path / "swapped")
    first, second = (folder / entry["files"]["hu"]["path"] for entry in read_index(folder)["cts"])
    assert first.read_bytes()[-65536:] == second.read_bytes()[-65536:]  # header and tail alike: the former check passed
    first_bytes = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(first_bytes)
    bank = VolumeBank(folder)
    for ct in (0, 1):
        with pytest.raises(ValueError, match=rf"hu.npy of CT <volume {ct}> changed since it was indexed: planes 0-3"):
            bank.crops(torch.tensor([ct]), torch.zeros(1, 3, dtype=torch.long), (8, 8, 8), device="cpu")
    with pytest.raises(ValueError, match="the prepared CT <volume 0> changed"):
        bank.verify()


def test_blocks_are_checked_once_and_only_those_read(blocky_cache, tmp_path, monkeypatch):
    from onthefly.sampling.cache_format import ArrayFile

    folder = copy_cache(blocky_cache[0], tmp_path / "blocks")
    hu_path = folder / read_index(folder)["cts"][0]["files"]["hu"]["path"]
    damage(hu_path, where=0.95, count=4)  # in plane 37 (block 9: planes 36-39) only
    bank = VolumeBank(folder)
    reads = []
    real = ArrayFile.read_block
    monkeypatch.setattr(ArrayFile, "read_block",
                        lambda self, handle, block, ct, **kw: (reads.append((self.label, block)), real(self, handle, block, ct, **kw))[1])
    volume, start = torch.tensor([0, 0]), torch.tensor([[2, 0, 0], [9, 5, 5]])
    first, _ = bank.crops(volume, start, (10, 20, 20), device="cpu")
    hu_blocks = {block for label, block in reads if label.endswith("hu.npy")}
    assert hu_blocks == {0, 1, 2, 3, 4}  # planes 2-18 in blocks of 4, read whole (two read threads may race on one)
    reads.clear()
    again, _ = bank.crops(volume, start, (10, 20, 20), device="cpu")
    assert torch.equal(first, again) and not reads  # verified blocks: plain reads of the crop's rows
    expected = hu_to_attenuation(blocky_cache[1][0].hu[0][9:19, 5:25, 5:25])
    assert torch.equal(again[1], expected)
    with pytest.raises(ValueError, match="planes 36-39 differ from their checksum"):
        bank.crops(torch.tensor([0]), torch.tensor([[30, 0, 0]]), (10, 4, 4), device="cpu")


def edit_index(folder: Path, change) -> None:
    index = json.loads((folder / "index.json").read_text())
    change(index)
    (folder / "index.json").write_text(json.dumps(index))


def _scale_affine(index):
    index["cts"][1]["affine"][0][0] *= 1.5


def _shift_affine(index):
    index["cts"][1]["affine"][2][3] += 40.0


def _both_shapes(index, delta):
    entry = index["cts"][1]
    entry["shape"] = [n + delta for n in entry["shape"]]
    entry["files"]["hu"]["shape"] = list(entry["shape"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i: i["cts"][1].update(shape=[n - 4 for n in i["cts"][1]["shape"]]),
         r"the entry of CT ct1: its field\(s\) shape differ"),
        (lambda i: i["cts"][1].update(shape=[n + 4 for n in i["cts"][1]["shape"]]),
         r"the entry of CT ct1: its field\(s\) shape differ"),
        (lambda i: _both_shapes(i, -2), r"the entry of CT ct1: its field\(s\) shape, files differ"),
        (_shift_affine, r"the entry of CT ct1: its field\(s\) affine differ"),
        (_scale_affine, r"the entry of CT ct1: its field\(s\) affine differ"),
        (lambda i: i["settings"].update(spacing=[3.0, 2.0, 2.0]),
         r"CT ct0 was prepared with settings.spacing = \[2.0, 2.0, 2.0\], but the index's settings say \[3.0, 2.0, 2.0\]"),
        (lambda i: i["settings"].pop("weighting"), "index.json: its settings lacks weighting"),
        (lambda i: i["settings"].update(weight_scale=255), "settings.weight_scale is 255, this version of onthefly writes"),
        (lambda i: i["cts"][3].pop("patient"), "the entry of CT ct3 lacks patient"),
        (lambda i: i["cts"].reverse(), "index.json: its settings, list of CTs or failures differ"),
        (lambda i: i["cts"].pop(), "index.json: its settings, list of CTs or failures differ"),
        (lambda i: i.pop("digest"), "index.json: its field 'digest' is missing"),
    ],
    ids=["smaller-shape", "larger-shape", "shape-and-file-record", "shifted-affine", "scaled-affine", "spacing",
         "missing-setting", "weight-scale", "missing-field", "reordered", "removed", "no-digest"],
)
def test_an_edited_index_is_refused_naming_the_ct_and_the_field(cache, tmp_path, change, message):
    folder = copy_cache(cache, tmp_path / "edited")
    edit_index(folder, change)
    with pytest.raises(ValueError, match=message):
        VolumeBank(folder)


def test_entries_are_checked_against_their_files_and_the_spacing_even_with_fresh_digests(cache, tmp_path):
    from onthefly.sampling.preparation import field_digests, index_digest

    def redigested(change):
        def apply(index):
            change(index)
            for entry in index["cts"]:
                entry["digests"] = field_digests(entry)
            index["digest"] = index_digest(index)
        return apply

    cases = [
        (lambda i: i["cts"][1].update(shape=[n - 4 for n in i["cts"][1]["shape"]]),
         r"the entry of CT ct1: shape \[14, 10, 12\] does not match its file hu.npy of \[18, 14, 16\]"),
        (lambda i: _both_shapes(i, 2), r"the entry of CT ct1: files.hu has size \d+ bytes, but"),
        (_scale_affine, r"the entry of CT ct1: affine has voxel edges \[3.0, 2.0, 2.0\] mm .* prepared at \[2.0, 2.0, 2.0\]"),
        (lambda i: i["cts"][1].update(spacing=[2.0, 2.0, 2.5]), "the entry of CT ct1: spacing .* differs from its affine"),
    ]
    for number, (change, message) in enumerate(cases):
        folder = copy_cache(cache, tmp_path / f"case{number}")
        edit_index(folder, redigested(change))
        with pytest.raises(ValueError, match=message):
            VolumeBank(folder)


def test_an_older_format_folder_is_refused_with_the_way_out(cache, tmp_path):
    folder = copy_cache(cache, tmp_path / "old")
    edit_index(folder, lambda index: index.update(version=1))
    with pytest.raises(ValueError, match=r"written by an older onthefly \(format version 1.*prepare the folder again"):
        VolumeBank(folder)


def test_split_names_what_it_cannot_do(bank, cts):
    with pytest.raises(TypeError, match="fractions: expected a sequence of numbers such as"):
        bank.split("ab", seed=0)
    with pytest.raises(TypeError, match="fractions: expected a sequence of numbers"):
        bank.split(0.5, seed=0)
    one = VolumeBank([cts[0]], spacing=SPACING)
    # what `onthefly train --volumes ONE_CT_FOLDER` asks when no --eval-volumes are given
    with pytest.raises(ValueError, match=r"fractions: the bank of 1 CT\(s\) from 1 patient\(s\) cannot be split into 2 "
                                         r"disjoint parts \(asked \[0.0, 1.0\]\).*--eval-volumes"):
        one.split((0.0, 1.0), seed=0)
    (whole,) = one.split((1.0,), seed=0)
    assert len(whole) == 1


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
    with pytest.raises(ValueError, match=r"mu_water: expected a number in \[0.0001, 10\] 1/mm"):
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
