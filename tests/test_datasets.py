"""MuraStudies: scanning a MURA-style tree, labels, view choice, image geometry, batching, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from onthefly.datasets import MuraStudies, MuraStudy, collate_studies, natural_key, read_radiograph


def grey_value(index: int) -> int:
    """The 8-bit grey level that identifies image ``index`` (1-based) of a study."""
    return 20 * index


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_grey(path: Path, value: int, shape: tuple[int, int]) -> None:
    write_png(path, np.full(shape, value, dtype=np.uint8))


def write_rgb(path: Path, rgb: tuple[int, ...], shape: tuple[int, int]) -> None:
    write_png(path, np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (*shape, len(rgb))).copy())


@pytest.fixture(scope="module")
def mura_root(tmp_path_factory) -> Path:
    """A small MURA-like tree.

    train/XR_WRIST/patient00001/study1_positive: image1 (grey 30x60), image2 (RGB 50x50), image10 (grey 40x30)
                                                 + a hidden ._image3.png and notes.txt (ignored)
    train/XR_WRIST/patient00002/study1_negative: image1 (grey), image2 (colour RGBA)
    train/XR_WRIST/patient00002/study2_positive: image1 only (skipped with min_views=2)
    train/XR_ELBOW/patient00003/study1_negative: image1, image2
    valid/XR_WRIST/patient00010/study1_positive: image1, image2, image3
    valid/XR_ELBOW/patient00011/study1_negative: image1, image2
    Image k of a study is grey level 20 k (its RGB copy too), so its content names it.
    """
    root = tmp_path_factory.mktemp("mura") / "MURA-v1.1"
    wrist = root / "train" / "XR_WRIST"
    study = wrist / "patient00001" / "study1_positive"
    write_grey(study / "image1.png", grey_value(1), (30, 60))
    write_rgb(study / "image2.png", (grey_value(2),) * 3, (50, 50))
    write_grey(study / "image10.png", grey_value(10), (40, 30))
    write_grey(study / "._image3.png", 255, (8, 8))
    (study / "notes.txt").write_text("not an image")
    write_grey(wrist / "patient00002" / "study1_negative" / "image1.png", grey_value(1), (24, 24))
    write_rgb(wrist / "patient00002" / "study1_negative" / "image2.png", (100, 50, 0, 255), (20, 28))
    write_grey(wrist / "patient00002" / "study2_positive" / "image1.png", grey_value(1), (16, 16))
    elbow = root / "train" / "XR_ELBOW" / "patient00003" / "study1_negative"
    write_grey(elbow / "image1.png", grey_value(1), (32, 32))
    write_grey(elbow / "image2.png", grey_value(2), (20, 40))
    valid = root / "valid"
    for index in (1, 2, 3):
        study = valid / "XR_WRIST" / "patient00010" / "study1_positive"
        write_grey(study / f"image{index}.png", grey_value(index), (20, 20))
    for index in (1, 2):
        study = valid / "XR_ELBOW" / "patient00011" / "study1_negative"
        write_grey(study / f"image{index}.png", grey_value(index), (20, 20))
    return root


def centre_values(images: torch.Tensor) -> list[int]:
    """8-bit grey level at the centre of each view of ``(V, 1, H, W)``."""
    height, width = images.shape[-2:]
    return [round(float(value) * 255) for value in images[:, 0, height // 2, width // 2]]


# ---- scanning and records


def test_counts_labels_and_order_per_split(mura_root):
    train = MuraStudies(mura_root, split="train", image_size=16)
    assert len(train) == 3
    assert [study.path for study in train.studies] == [
        "train/XR_ELBOW/patient00003/study1_negative",
        "train/XR_WRIST/patient00001/study1_positive",
        "train/XR_WRIST/patient00002/study1_negative",
    ]
    assert train.labels.tolist() == [0, 1, 0] and train.labels.dtype == torch.int64
    assert train.regions == ["ELBOW", "WRIST", "WRIST"]
    assert train.class_counts() == {0: 2, 1: 1}
    assert train.class_counts(by_region=True) == {"ELBOW": {0: 1, 1: 0}, "WRIST": {0: 1, 1: 1}}
    assert list(train.skipped_studies) == ["train/XR_WRIST/patient00002/study2_positive"]
    valid = MuraStudies(str(mura_root), split="valid", image_size=16)
    assert len(valid) == 2 and valid.labels.tolist() == [0, 1] and valid.regions == ["ELBOW", "WRIST"]


def test_min_views_one_keeps_single_image_studies(mura_root):
    train = MuraStudies(mura_root, split="train", min_views=1, image_size=16)
    assert len(train) == 4 and train.class_counts() == {0: 2, 1: 2}
    assert train.skipped_studies == {}


def test_records_hold_natural_order_and_ignore_hidden_and_non_png(mura_root):
    study = MuraStudies(mura_root, regions="wrist", image_size=16).studies[0]
    assert isinstance(study, MuraStudy)
    assert (study.region, study.patient, study.label) == ("WRIST", "patient00001", 1)
    assert [path.name for path in study.image_paths] == ["image1.png", "image2.png", "image10.png"]
    assert all(path.is_absolute() and path.is_file() for path in study.image_paths)
    names = ["image10.png", "image2.png", "Image1.png", "image", "image01.png", "1", "a"]
    expected = ["1", "a", "image", "Image1.png", "image01.png", "image2.png", "image10.png"]
    assert sorted(names, key=natural_key) == expected


@pytest.mark.parametrize("regions", ["WRIST", "xr_wrist", ["Wrist"], ("XR_WRIST", "wrist")])
def test_region_filter_accepts_names_with_or_without_prefix(mura_root, regions):
    train = MuraStudies(mura_root, regions=regions, image_size=16)
    assert train.region_names == ("WRIST",)
    assert train.regions == ["WRIST", "WRIST"] and train.labels.tolist() == [1, 0]
    both = MuraStudies(mura_root, regions=["ELBOW", "WRIST"], image_size=16)
    assert len(both) == 3


# ---- items


def test_item_contents_shapes_and_range(mura_root):
    train = MuraStudies(mura_root, regions="WRIST", views=2, image_size=(24, 40))
    item = train[1]  # patient00002/study1_negative: grey image1, colour RGBA image2
    assert item["images"].shape == (2, 1, 24, 40) and item["images"].dtype == torch.float32
    assert item["label"].shape == () and item["label"].dtype == torch.int64 and int(item["label"]) == 0
    assert item["view_mask"].dtype == torch.bool and item["view_mask"].tolist() == [True, True]
    assert (item["region"], item["patient"]) == ("WRIST", "patient00002")
    assert item["study"] == "train/XR_WRIST/patient00002/study1_negative"
    assert float(item["images"].min()) >= 0.0 and float(item["images"].max()) <= 1.0
    centre = item["images"][:, 0, 12, 20]
    assert float(centre[0]) == pytest.approx(grey_value(1) / 255, abs=1e-5)
    assert float(centre[1]) == pytest.approx((0.299 * 100 + 0.587 * 50) / 255, abs=1e-5)  # BT.601 luma, alpha ignored
    assert torch.equal(train[-1]["images"], item["images"])


def test_grey_saved_as_rgb_keeps_its_value(mura_root):
    item = MuraStudies(mura_root, split="valid", regions="WRIST", views=3, image_size=16, pad_mode="stretch")[0]
    assert centre_values(item["images"]) == [grey_value(1), grey_value(2), grey_value(3)]
    rgb = read_radiograph(mura_root / "train/XR_WRIST/patient00001/study1_positive/image2.png")
    assert rgb.shape == (50, 50) and torch.allclose(rgb, torch.full_like(rgb, grey_value(2) / 255))


def test_sixteen_bit_png_scales_to_unit_range(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)).save(path)
    image = read_radiograph(path)
    assert image.dtype == torch.float32
    assert torch.allclose(image, torch.tensor([[0.0, 32768.0], [65535.0, 1000.0]]) / 65535.0)


def letterbox_tree(root: Path, shapes: list[tuple[int, int]]) -> Path:
    study = root / "MURA" / "valid" / "XR_HAND" / "patient1" / "study1_negative"
    for index, shape in enumerate(shapes, start=1):
        write_grey(study / f"image{index}.png", 255, shape)
    return root / "MURA"


def test_convention_letterbox_centres_image_on_black_padding(tmp_path):
    # A white 2:1 (wide) image in a 32 x 32 frame: 16 white rows in the middle, 8 black rows above and below.
    # A white 1:4 (tall) image: 8 white columns in the middle, 12 black columns each side.
    root = letterbox_tree(tmp_path, [(20, 40), (40, 10)])
    images = MuraStudies(root, split="valid", views=2, image_size=32)[0]["images"]
    wide, tall = images[0, 0], images[1, 0]
    assert torch.allclose(wide[8:24], torch.ones(16, 32), atol=1e-5)
    assert torch.equal(wide[:8], torch.zeros(8, 32)) and torch.equal(wide[24:], torch.zeros(8, 32))
    assert torch.allclose(tall[:, 12:20], torch.ones(32, 8), atol=1e-5)
    assert torch.equal(tall[:, :12], torch.zeros(32, 12)) and torch.equal(tall[:, 20:], torch.zeros(32, 12))


def test_letterbox_odd_padding_and_rectangular_frame(tmp_path):
    # 10 x 10 into 16 x 25: scaled to 16 x 16, 9 columns of padding: 4 left, 5 right.
    root = letterbox_tree(tmp_path, [(10, 10)])
    image = MuraStudies(root, split="valid", views=1, min_views=1, image_size=(16, 25))[0]["images"][0, 0]
    assert image.shape == (16, 25)
    white_columns = (image > 0.5).all(0).nonzero().flatten().tolist()
    assert white_columns == list(range(4, 20))
    assert float(image[:, :4].abs().max()) == 0.0 and float(image[:, 20:].abs().max()) == 0.0


def test_stretch_fills_the_frame(tmp_path):
    root = letterbox_tree(tmp_path, [(20, 40), (40, 10)])
    images = MuraStudies(root, split="valid", views=2, image_size=(12, 18), pad_mode="stretch")[0]["images"]
    assert images.shape == (2, 1, 12, 18)
    assert torch.allclose(images, torch.ones_like(images), atol=1e-5)


# ---- choice of views


def test_valid_split_takes_first_views_in_natural_order(mura_root):
    valid = MuraStudies(mura_root, split="valid", regions="WRIST", views=2, image_size=16, pad_mode="stretch")
    first = valid[0]
    assert first["view_index"].tolist() == [0, 1] and centre_values(first["images"]) == [grey_value(1), grey_value(2)]
    for epoch, seed in [(3, 0), (0, 7)]:
        other = MuraStudies(
            mura_root, split="valid", regions="WRIST", views=2, image_size=16, seed=seed, pad_mode="stretch"
        )
        other.set_epoch(epoch)
        assert torch.equal(other[0]["images"], first["images"])


def test_training_view_choice_is_seeded_changes_with_epoch_and_reproduces(mura_root):
    def choices(seed: int) -> list[tuple[int, ...]]:
        train = MuraStudies(mura_root, regions="WRIST", views=2, image_size=16, seed=seed)
        picks = []
        for epoch in range(12):
            train.set_epoch(epoch)
            picks.append(tuple(train.choose_views(0)[0].tolist()))
        return picks

    picks = choices(0)
    assert len(set(picks)) >= 2  # three possible pairs; new draws per epoch
    assert all(list(pair) == sorted(pair) and len(set(pair)) == 2 for pair in picks)  # distinct, natural order
    assert choices(0) == picks  # reproducible
    assert choices(1) != picks  # the seed matters

    train = MuraStudies(mura_root, regions="WRIST", views=2, image_size=16, pad_mode="stretch", seed=0)
    train.set_epoch(5)
    item = train[0]
    names = [train.studies[0].image_paths[i].name for i in item["view_index"].tolist()]
    expected = [grey_value(int(name.removeprefix("image").removesuffix(".png"))) for name in names]
    assert centre_values(item["images"]) == expected  # the images are the chosen files
    assert item["view_mask"].all()


def test_study_with_fewer_images_repeats_views_and_masks_repeats(mura_root):
    train = MuraStudies(mura_root, regions="WRIST", views=5, min_views=2, image_size=16, pad_mode="stretch")
    three, two = train[0], train[1]
    assert three["view_index"].tolist() == [0, 1, 2, 0, 1]
    assert three["view_mask"].tolist() == [True, True, True, False, False]
    assert two["view_index"].tolist() == [0, 1, 0, 1, 0]
    assert two["view_mask"].tolist() == [True, True, False, False, False]
    assert torch.equal(three["images"][3], three["images"][0]) and torch.equal(three["images"][4], three["images"][1])
    assert centre_values(three["images"])[:3] == [grey_value(1), grey_value(2), grey_value(10)]


# ---- batches


def test_collate_stacks_tensors_and_lists_strings(mura_root):
    train = MuraStudies(mura_root, views=3, image_size=(16, 20))
    batch = collate_studies([train[0], train[1], train[2]])
    assert batch["images"].shape == (3, 3, 1, 16, 20)
    assert batch["label"].shape == (3,) and batch["label"].tolist() == train.labels.tolist()
    assert batch["view_mask"].shape == (3, 3) and batch["view_index"].shape == (3, 3)
    assert batch["region"] == ["ELBOW", "WRIST", "WRIST"]
    assert batch["patient"] == ["patient00003", "patient00001", "patient00002"]
    assert batch["study"] == [study.path for study in train.studies]


def test_dataloader_batches_every_study_once(mura_root):
    train = MuraStudies(mura_root, views=2, min_views=1, image_size=16)
    loader = DataLoader(train, batch_size=2, shuffle=False, collate_fn=collate_studies)
    batches = list(loader)
    assert [batch["images"].shape for batch in batches] == [(2, 2, 1, 16, 16), (2, 2, 1, 16, 16)]
    assert torch.cat([batch["label"] for batch in batches]).tolist() == train.labels.tolist()
    assert sum((batch["study"] for batch in batches), []) == [study.path for study in train.studies]
    masks = torch.cat([batch["view_mask"] for batch in batches])
    single = [study.num_images == 1 for study in train.studies]
    assert masks[:, 1].tolist() == [not flag for flag in single]


def test_dataset_pickles_for_worker_processes(mura_root):
    train = MuraStudies(mura_root, image_size=16, seed=3)
    train.set_epoch(2)
    copy = pickle.loads(pickle.dumps(train))
    assert len(copy) == len(train) and copy.epoch == 2
    assert torch.equal(copy[1]["images"], train[1]["images"])
    assert "studies=3 (1 positive, 2 negative)" in repr(train)


# ---- errors


def test_missing_root_or_split_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="root.*nowhere"):
        MuraStudies(missing)
    only_train = tmp_path / "only_train"
    (only_train / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="split.*only_train.*valid"):
        MuraStudies(only_train, split="valid")
    with pytest.raises(TypeError, match="root"):
        MuraStudies(3)


def test_no_studies_found(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no XR_<REGION> folders"):
        MuraStudies(tmp_path / "empty")
    root = tmp_path / "single"
    write_grey(root / "train" / "XR_HAND" / "patient1" / "study1_positive" / "image1.png", 10, (8, 8))
    (root / "train" / "XR_HAND" / "patient1" / "study2").mkdir()  # no outcome suffix
    with pytest.raises(ValueError, match=r"no studies found.*\['HAND'\].*min_views=2.*2 study folders skipped"):
        MuraStudies(root)
    assert len(MuraStudies(root, min_views=1, views=1)) == 1


def test_bad_regions(mura_root):
    with pytest.raises(ValueError, match=r"regions.*\['KNEE'\].*available: \['ELBOW', 'WRIST'\]"):
        MuraStudies(mura_root, regions=["wrist", "knee"])
    with pytest.raises(ValueError, match="regions.*empty"):
        MuraStudies(mura_root, regions=[])
    with pytest.raises(TypeError, match=r"regions\[0\]"):
        MuraStudies(mura_root, regions=[3])
    with pytest.raises(ValueError, match=r"regions\[0\]"):
        MuraStudies(mura_root, regions=["XR_"])
    with pytest.raises(TypeError, match="regions"):
        MuraStudies(mura_root, regions=5)


@pytest.mark.parametrize(
    "changes, error, pattern",
    [
        (dict(split="test"), ValueError, "split"),
        (dict(views=0), ValueError, "views"),
        (dict(views=1.5), TypeError, "views"),
        (dict(views=True), TypeError, "views"),
        (dict(min_views=0), ValueError, "min_views"),
        (dict(views=2, min_views=3), ValueError, r"min_views: expected 1 <= min_views <= views \(2\), got 3"),
        (dict(views=1), ValueError, "min_views=1"),
        (dict(image_size=0), ValueError, "image_size"),
        (dict(image_size=(32,)), ValueError, "image_size"),
        (dict(image_size=(32, -1)), ValueError, "image_size"),
        (dict(image_size=(32, 2.5)), TypeError, "image_size"),
        (dict(image_size="big"), ValueError, "image_size"),
        (dict(pad_mode="crop"), ValueError, "pad_mode"),
        (dict(seed="a"), TypeError, "seed"),
    ],
)
def test_bad_arguments(mura_root, changes, error, pattern):
    with pytest.raises(error, match=pattern):
        MuraStudies(mura_root, **changes)


def test_bad_epoch_and_index(mura_root):
    train = MuraStudies(mura_root, image_size=16)
    with pytest.raises(ValueError, match="epoch"):
        train.set_epoch(-1)
    for epoch in (1.0, True):
        with pytest.raises(TypeError, match="epoch"):
            train.set_epoch(epoch)
    with pytest.raises(IndexError, match="index"):
        train[3]
    with pytest.raises(IndexError, match="index"):
        train[-4]
    with pytest.raises(TypeError, match="index"):
        train["0"]


def test_unreadable_image_names_its_path(tmp_path):
    study = tmp_path / "MURA" / "train" / "XR_HAND" / "patient1" / "study1_negative"
    write_grey(study / "image1.png", 10, (8, 8))
    (study / "image2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    train = MuraStudies(tmp_path / "MURA", image_size=8)
    with pytest.raises(OSError, match="cannot read image .*image2.png"):
        train[0]


def test_collate_errors(mura_root):
    with pytest.raises(ValueError, match="items.*empty"):
        collate_studies([])
    two = MuraStudies(mura_root, views=2, image_size=16)[0]
    three = MuraStudies(mura_root, views=3, image_size=16)[0]
    with pytest.raises(ValueError, match="same shape"):
        collate_studies([two, three])
    with pytest.raises(ValueError, match=r"items\[1\].*'region'"):
        collate_studies([two, {key: value for key, value in two.items() if key != "region"}])
