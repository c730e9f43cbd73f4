"""Real multi-view radiographs in the MURA layout, one study (exam) per item.

MURA (musculoskeletal radiographs, Stanford) stores one folder per study::

    <root>/<split>/XR_<REGION>/<patient>/<study>_<positive|negative>/image<N>.png

for example ``MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png``.
``split`` is ``train`` or ``valid``; a study is one multi-view exam, labelled
1 (abnormal) when its folder ends in ``_positive`` and 0 when it ends in
``_negative``. :class:`MuraStudies` turns each study into ``V`` views shaped
like the DRR batches of :mod:`onthefly.sampling`, so a multi-view classifier
trained on DRRs can be fine-tuned and evaluated on real radiographs.

Conventions:

- Images: ``(V, 1, H, W)`` float32 in ``[0, 1]`` per item, ``(B, V, 1, H, W)``
  per batch (:func:`collate_studies`); 0 is black (no attenuation shown), 1 white,
  as the PNG stores them (8-bit values / 255, 16-bit values / 65535).
- Colour PNGs are reduced to grey with ITU-R BT.601 luma
  (``0.299 R + 0.587 G + 0.114 B``, as PIL's ``convert("L")``), so grey pixels
  saved as RGB keep their value; alpha channels are ignored.
- Geometry: ``pad_mode="letterbox"`` scales an ``h x w`` image by
  ``min(H / h, W / w)`` (aspect ratio kept, bilinear with antialiasing) and
  centres it in the ``H x W`` frame on zero (black) padding; when the padding
  is odd the extra pixel goes to the bottom / right. ``pad_mode="stretch"``
  resizes to ``H x W`` directly.
- View order: image files sorted naturally (``image2`` before ``image10``).
- Randomness: the views a training item shows are a pure function of
  ``(seed, epoch, index)``; no global random state is used.
"""

from __future__ import annotations

import math
import operator
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ._checks import check_choice, check_positive_int, is_int
from .sampling.seeds import stream_seed

__all__ = ["MuraStudies", "MuraStudy", "collate_studies", "read_radiograph"]

SPLITS = ("train", "valid")
PAD_MODES = ("letterbox", "stretch")
LABELS = {"negative": 0, "positive": 1}
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")

_STUDY_FOLDER = re.compile(r"^(?P<study>.+)_(?P<outcome>positive|negative)$", re.IGNORECASE)
_REGION_PREFIX = "XR_"


@dataclass(frozen=True)
class MuraStudy:
    """One study (multi-view exam) found on disk.

    Attributes:
        path: the study folder relative to the dataset root, ``/``-separated,
            e.g. ``"train/XR_WRIST/patient00001/study1_positive"``.
        region: body region without the ``XR_`` prefix, upper case, e.g. ``"WRIST"``.
        patient: the patient folder name, e.g. ``"patient00001"``.
        label: 1 for a positive (abnormal) study, 0 for a negative one.
        image_paths: absolute paths of its PNG images, in natural order.
    """

    path: str
    region: str
    patient: str
    label: int
    image_paths: tuple[Path, ...]

    @property
    def num_images(self) -> int:
        return len(self.image_paths)


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``image2`` before ``image10``.

    Case-insensitive; the name itself breaks ties (``image01`` vs ``image1``).
    """
    parts = re.split(r"(\d+)", name.lower())  # alternates text, number, text, ...
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts)), name


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted((entry for entry in entries if not entry.name.startswith(".")), key=lambda e: natural_key(e.name))


def _mixed_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (stable across runs, platforms and processes): the real studies' family."""
    return stream_seed(*parts, namespace="mura:")


def read_radiograph(path: str | Path) -> Tensor:
    """Read a PNG radiograph as grey levels.

    Args:
        path: a PNG file: grey (8 or 16 bit), grey + alpha, palette, RGB or RGBA.

    Returns:
        ``(h, w)`` float32 in ``[0, 1]`` at the file's own size. Colour is reduced
        with BT.601 luma; alpha is ignored.

    Raises:
        OSError: naming ``path`` when the file cannot be read or decoded.
    """
    from PIL import Image  # a dependency of matplotlib

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("L", "LA"):
                array = np.asarray(image.getchannel(0), dtype=np.float32) / 255.0
            elif mode.startswith("I;16") or mode == "I":
                # 16-bit grey (PIL opens it as "I;16" or, in some versions, as 32-bit "I").
                array = np.asarray(image, dtype=np.float32) / 65535.0
            elif mode == "F":
                array = np.asarray(image, dtype=np.float32)
            else:
                rgb = np.asarray(image if mode in ("RGB", "RGBA", "RGBX") else image.convert("RGB"), dtype=np.float32)
                array = rgb[..., :3] @ np.asarray(LUMA_WEIGHTS, dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # PIL signals broken PNGs with all of these
        raise OSError(f"cannot read image {path}: {error}") from error
    if array.ndim != 2 or array.size == 0:
        raise OSError(f"cannot read image {path}: expected a 2-D image, got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).clamp_(0.0, 1.0)


def fit_image(image: Tensor, size: tuple[int, int], pad_mode: str = "letterbox") -> Tensor:
    """Resize one grey image into an ``H x W`` frame.

    Args:
        image: ``(h, w)`` float in ``[0, 1]``.
        size: ``(H, W)`` pixels.
        pad_mode: ``"letterbox"`` keeps the aspect ratio and centres the image on
            zero padding; ``"stretch"`` resizes to ``(H, W)`` directly.

    Returns:
        ``(H, W)`` float32 in ``[0, 1]``.
    """
    height, width = size
    source_height, source_width = image.shape
    if pad_mode == "stretch":
        new_height, new_width = height, width
    else:
        scale = min(height / source_height, width / source_width)
        new_height = min(height, max(1, math.floor(source_height * scale + 0.5)))
        new_width = min(width, max(1, math.floor(source_width * scale + 0.5)))
    resized = F.interpolate(
        image[None, None].float(), size=(new_height, new_width), mode="bilinear", align_corners=False, antialias=True
    )[0, 0].clamp_(0.0, 1.0)
    if (new_height, new_width) == (height, width):
        return resized
    framed = resized.new_zeros(height, width)
    top, left = (height - new_height) // 2, (width - new_width) // 2
    framed[top : top + new_height, left : left + new_width] = resized
    return framed


def _region_name(value, index: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"regions[{index}]: expected a region name such as 'WRIST' or 'XR_WRIST', got {value!r}")
    name = value.strip().upper()
    if name.startswith(_REGION_PREFIX):
        name = name[len(_REGION_PREFIX) :]
    if not name:
        raise ValueError(f"regions[{index}]: expected a region name such as 'WRIST' or 'XR_WRIST', got {value!r}")
    return name


class MuraStudies(Dataset):
    """Multi-view studies of a MURA-style folder, ``V`` views per item.

    Every argument after ``root`` is keyword-only. The folder tree is scanned
    once at construction (no image is opened); images are read, converted to
    grey and resized when an item is asked for.

    Args:
        root: the folder holding ``train/`` and ``valid/`` (e.g. ``MURA-v1.1``).
        split: ``"train"`` or ``"valid"``.
        regions: ``None`` for every region, or names such as ``"WRIST"`` or
            ``"XR_WRIST"`` (one name or a sequence; case-insensitive). A name
            with no ``XR_<REGION>`` folder in the split is an error.
        views: views per item ``V`` (at least 1).
        min_views: studies with fewer images are skipped (listed in
            :attr:`skipped_studies`); ``1 <= min_views <= views``.
        image_size: ``H`` or ``(H, W)`` pixels of every view.
        seed: seeds the training split's choice of views.
        pad_mode: ``"letterbox"`` (keep the aspect ratio, zero padding) or ``"stretch"``.

    Choice of views, for a study with ``n`` images:

    - ``n == V``: all of them, in natural order.
    - ``n > V``, split ``"valid"``: the first ``V`` in natural order.
    - ``n > V``, split ``"train"``: ``V`` of them drawn without replacement from a
      generator seeded by ``(seed, epoch, index)``, shown in natural order.
      Call :meth:`set_epoch` each epoch to draw new subsets.
    - ``min_views <= n < V``: the ``n`` images repeated cyclically
      (``0, 1, .., n-1, 0, 1, ..``); ``view_mask`` is False for the repeats.

    Items are dicts:

    - ``images``: ``(V, 1, H, W)`` float32 in ``[0, 1]``.
    - ``label``: int64 scalar tensor, 1 positive (abnormal), 0 negative.
    - ``view_mask``: ``(V,)`` bool, False where a view repeats an earlier one.
    - ``view_index``: ``(V,)`` int64, which image of the study (natural order) each view shows.
    - ``region``: e.g. ``"WRIST"``; ``study``: the study folder relative to ``root``;
      ``patient``: the patient folder name.

    With DataLoader workers, call :meth:`set_epoch` before each epoch's
    iterator is created; ``persistent_workers=True`` keeps the workers' copies
    at the epoch they started with.

    Example (needs the MURA folder, which is not shipped, so the doctest run skips it;
    ``tests/test_datasets.py`` runs the same calls on a generated folder):
        >>> studies = MuraStudies("MURA-v1.1", split="valid", regions="WRIST", views=2, image_size=256)  # doctest: +SKIP
        >>> item = studies[0]  # doctest: +SKIP
        >>> item["images"].shape, item["label"].shape, item["view_mask"].shape  # doctest: +SKIP
        (torch.Size([2, 1, 256, 256]), torch.Size([]), torch.Size([2]))
        >>> loader = DataLoader(studies, batch_size=8, collate_fn=collate_studies)  # doctest: +SKIP
        >>> next(iter(loader))["images"].shape  # doctest: +SKIP
        torch.Size([8, 2, 1, 256, 256])
    """

    def __init__(
        self,
        root: str | Path,
        *,
        split: str = "train",
        regions: str | Sequence[str] | None = None,
        views: int = 2,
        min_views: int = 2,
        image_size: int | tuple[int, int] = 256,
        seed: int = 0,
        pad_mode: str = "letterbox",
    ) -> None:
        super().__init__()
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root: expected a folder path (str or Path), got {type(root).__name__}")
        self.root = Path(root)
        self.split = check_choice("split", split, SPLITS)
        self.views = check_positive_int("views", views)
        self.min_views = check_positive_int("min_views", min_views)
        if self.min_views > self.views:
            raise ValueError(
                f"min_views: expected 1 <= min_views <= views ({self.views}), got {self.min_views}"
                f"{' (pass min_views=1 for single-view items)' if self.views == 1 else ''}"
            )
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        if isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 2:
            raise ValueError(f"image_size: expected H or (H, W) positive ints, got {image_size!r}")
        self.image_size = (check_positive_int("image_size", size[0]), check_positive_int("image_size", size[1]))
        if not is_int(seed):
            raise TypeError(f"seed: expected an int, got {seed!r}")
        self.seed = seed
        self.pad_mode = check_choice("pad_mode", pad_mode, PAD_MODES)
        self.epoch = 0

        if not self.root.is_dir():
            raise FileNotFoundError(f"root: dataset folder not found: {self.root}")
        self.split_dir = self.root / self.split
        if not self.split_dir.is_dir():
            raise FileNotFoundError(f"split: folder for split {self.split!r} not found: {self.split_dir}")
        self.region_names = self._select_regions(regions)
        self._studies, self._skipped = self._scan()
        if not self._studies:
            raise ValueError(
                f"no studies found under {self.split_dir} for regions {list(self.region_names)} with at least "
                f"min_views={self.min_views} PNG images in a <study>_positive or <study>_negative folder "
                f"({len(self._skipped)} study folders skipped)"
            )
        self._labels = torch.tensor([study.label for study in self._studies], dtype=torch.int64)

    # ---- scanning
    def _region_folders(self) -> dict[str, Path]:
        folders = {}
        for entry in _visible_entries(self.split_dir):
            if entry.is_dir() and entry.name.upper().startswith(_REGION_PREFIX):
                folders[entry.name[len(_REGION_PREFIX) :].upper()] = Path(entry.path)
        return folders

    def _select_regions(self, regions) -> tuple[str, ...]:
        self._folders = self._region_folders()
        available = sorted(self._folders, key=natural_key)
        if not available:
            raise ValueError(f"no studies found: no XR_<REGION> folders under {self.split_dir}")
        if regions is None:
            return tuple(available)
        requested = [regions] if isinstance(regions, str) else regions
        if not isinstance(requested, Iterable):
            raise TypeError(f"regions: expected None, a region name or a sequence of names, got {regions!r}")
        names = [_region_name(value, index) for index, value in enumerate(requested)]
        if not names:
            raise ValueError("regions: expected None (all regions) or at least one region name, got an empty sequence")
        missing = [name for name in names if name not in self._folders]
        if missing:
            raise ValueError(
                f"regions: no XR_<REGION> folder under {self.split_dir} for {missing}; available: {available}"
            )
        return tuple(sorted(set(names), key=natural_key))

    def _scan(self) -> tuple[list[MuraStudy], dict[str, str]]:
        studies: list[MuraStudy] = []
        skipped: dict[str, str] = {}
        for region in self.region_names:
            for patient in _visible_entries(self._folders[region]):
                if not patient.is_dir():
                    continue
                for study in _visible_entries(Path(patient.path)):
                    if not study.is_dir():
                        continue
                    relative = Path(study.path).relative_to(self.root).as_posix()
                    match = _STUDY_FOLDER.match(study.name)
                    if match is None:
                        skipped[relative] = "folder name does not end in _positive or _negative"
                        continue
                    images = tuple(
                        Path(entry.path)
                        for entry in _visible_entries(Path(study.path))
                        if entry.name.lower().endswith(".png") and entry.is_file()
                    )
                    if len(images) < self.min_views:
                        skipped[relative] = f"{len(images)} PNG image(s), fewer than min_views={self.min_views}"
                        continue
                    label = LABELS[match.group("outcome").lower()]
                    studies.append(MuraStudy(relative, region, patient.name, label, images))
        return studies, skipped

    # ---- records
    @property
    def studies(self) -> list[MuraStudy]:
        """Every kept study, in item order (region, patient, study; natural order)."""
        return list(self._studies)

    @property
    def labels(self) -> Tensor:
        """``(n,)`` int64 labels of the studies, 1 positive, 0 negative."""
        return self._labels.clone()

    @property
    def regions(self) -> list[str]:
        """The region of every study (length ``n``, parallel to :attr:`labels`)."""
        return [study.region for study in self._studies]

    @property
    def skipped_studies(self) -> dict[str, str]:
        """Study folders left out (path relative to ``root``) and why."""
        return dict(self._skipped)

    def class_counts(self, *, by_region: bool = False) -> dict:
        """Studies per label: ``{0: negatives, 1: positives}``, or per region
        ``{"WRIST": {0: .., 1: ..}, ..}`` with ``by_region=True``."""
        if by_region:
            counts = {region: {0: 0, 1: 0} for region in self.region_names}
            for study in self._studies:
                counts[study.region][study.label] += 1
            return counts
        positives = int(self._labels.sum())
        return {0: len(self._studies) - positives, 1: positives}

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with ``seed`` and the item index, picks the training views."""
        if not is_int(epoch):
            raise TypeError(f"epoch: expected an int >= 0, got {epoch!r}")
        if epoch < 0:
            raise ValueError(f"epoch: expected an int >= 0, got {epoch}")
        self.epoch = epoch

    # ---- items
    def __len__(self) -> int:
        return len(self._studies)

    def _check_index(self, index) -> int:
        try:
            position = operator.index(index)
        except TypeError:
            raise TypeError(f"index: expected an int, got {type(index).__name__}") from None
        count = len(self._studies)
        if not -count <= position < count:
            raise IndexError(f"index: expected -{count} <= index < {count}, got {position}")
        return position % count

    def choose_views(self, index: int) -> tuple[Tensor, Tensor]:
        """Which images item ``index`` shows, without reading them.

        Returns:
            ``view_index``: ``(V,)`` int64 positions in the study's natural-ordered images;
            ``view_mask``: ``(V,)`` bool, False for views that repeat an earlier one.
        """
        index = self._check_index(index)
        count = self._studies[index].num_images
        views = self.views
        if count > views:
            if self.split == "train":
                generator = torch.Generator().manual_seed(_mixed_seed(self.seed, self.epoch, index))
                chosen = torch.randperm(count, generator=generator)[:views].sort().values
            else:
                chosen = torch.arange(views)
            return chosen, torch.ones(views, dtype=torch.bool)
        position = torch.arange(views)
        return position % count, position < count

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        study = self._studies[index]
        view_index, view_mask = self.choose_views(index)
        cache: dict[int, Tensor] = {}  # repeated views are read once
        frames = []
        for position in view_index.tolist():
            if position not in cache:
                image = read_radiograph(study.image_paths[position])
                cache[position] = fit_image(image, self.image_size, self.pad_mode)
            frames.append(cache[position])
        return {
            "images": torch.stack(frames)[:, None],
            "label": torch.tensor(study.label, dtype=torch.int64),
            "view_mask": view_mask,
            "view_index": view_index,
            "region": study.region,
            "study": study.path,
            "patient": study.patient,
        }

    def __repr__(self) -> str:
        counts = self.class_counts()
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, regions={list(self.region_names)}, "
            f"studies={len(self)} ({counts[1]} positive, {counts[0]} negative), views={self.views}, "
            f"min_views={self.min_views}, image_size={self.image_size}, pad_mode={self.pad_mode!r})"
        )


def collate_studies(items: Sequence[dict]) -> dict:
    """Stack items of :class:`MuraStudies` into a batch.

    Args:
        items: ``B`` item dicts with the same keys and image shapes.

    Returns:
        ``images`` ``(B, V, 1, H, W)`` float32, ``label`` ``(B,)`` int64,
        ``view_mask`` ``(B, V)`` bool, ``view_index`` ``(B, V)`` int64, and
        ``region``, ``study``, ``patient`` as lists of ``B`` strings.
    """
    items = list(items)
    if not items:
        raise ValueError("items: expected at least one study item, got an empty sequence")
    keys = list(items[0])
    batch = {}
    for key in keys:
        values = []
        for position, item in enumerate(items):
            if key not in item:
                raise ValueError(f"items[{position}]: missing key {key!r} that items[0] has")
            values.append(item[key])
        if isinstance(values[0], Tensor):
            shapes = {tuple(value.shape) for value in values}
            if len(shapes) != 1:
                raise ValueError(
                    f"items: expected every {key!r} to have the same shape, got {sorted(shapes)} "
                    "(use the same views and image_size)"
                )
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
