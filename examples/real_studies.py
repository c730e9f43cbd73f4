"""From the stream to real studies: a classifier trained on phantoms, fine-tuned and scored on MURA-layout folders.

Run: ``python examples/real_studies.py`` (about 5 minutes on a 2-core CPU);
``--help`` for the options.

The path a user with real radiographs takes, end to end:

1. **A classifier trained on the stream**: ``--classifier`` takes the
   ``checkpoint.pt`` of a run on phantoms (``onthefly train classifier
   --volumes phantom:forearm,wrist,hand ...`` or ``examples/fracture_table3.py
   --volumes phantom:...``); without it, a small one is trained here for
   ``--steps`` steps on phantom seeds 0-53 of each region.
2. **Studies in MURA's layout**: ``--studies`` takes a folder holding
   ``train/`` and ``valid/`` (``MURA-v1.1`` itself, or your own export), each
   ``XR_<REGION>/<patient>/<study>_<positive|negative>/imageN.png``. Without
   it, an example tree is written to ``OUTPUT/studies/`` from radiographs of
   phantoms the classifier never saw (seeds 54-59 of each region: a fractured
   sample is a positive study, an intact one a negative study, two views
   each), so the whole path runs without data.
3. **Score, fine-tune, score again**: :func:`onthefly.train.evaluate_classifier_on_studies`
   on ``valid/`` before and after :func:`onthefly.train.finetune_classifier_on_studies`
   on ``train/``; the table and ``OUTPUT/real_studies.json`` give accuracy,
   precision, recall and Cohen's kappa.

On real radiographs, expect the first score to show the gap between DRRs and
radiographs, and fine-tuning (a small learning rate, a few hundred steps) to
close part of it; the example tree only shows that the path works.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import onthefly as otf
from onthefly.checkpoint import load_checkpoint, strict_json
from onthefly.datasets import MuraStudies
from onthefly.fractures import FractureConfig
from onthefly.models import ClassifierConfig, FractureClassifier
from onthefly.train import TrainConfig, evaluate_classifier_on_studies, finetune_classifier_on_studies, train_classifier

REGIONS = ("forearm", "wrist", "hand")


def phantom_sampler(seeds, *, size: int, batch_size: int, seed: int, spacing: float) -> otf.DRRCorrespondenceSampler:
    """Fractured (half of the samples) and intact radiographs of the phantoms of ``seeds``, two views each."""
    return otf.DRRCorrespondenceSampler(
        volumes=otf.PhantomSource(regions=REGIONS, seeds=seeds), views=2, image_size=size, patch_size=16,
        crop_size=112.0, spacing=spacing, batch_size=batch_size, seed=seed, min_tissue_fraction=0.05,
        correspondence=False, augmentation=None,
        fractures=FractureConfig(probability=0.5, min_visibility=0.1, max_redraws=4))


def write_study_tree(root: Path, *, size: int, studies: int, spacing: float) -> None:
    """``root/{train,valid}/XR_<REGION>/patientNNNNN/study1_<positive|negative>/image{1,2}.png`` from phantoms of
    seeds 54-59 (train: even steps of the stream, valid: odd ones); fractures flagged invisible are left out."""
    source = otf.PhantomSource(regions=REGIONS, seeds=range(54, 60))
    sampler = phantom_sampler(source.seeds, size=size, batch_size=8, seed=2024, spacing=spacing)
    written = {"train": 0, "valid": 0}
    step = 0
    while min(written.values()) < studies:
        batch = sampler.sample(step)
        split = "train" if step % 2 == 0 else "valid"
        for index in range(batch.images.shape[0]):
            if written[split] >= studies or bool(batch.fracture_invisible[index]):
                continue
            region = source.item(int(batch.volume_index[index]))[0].upper()
            label = "positive" if bool(batch.fracture[index]) else "negative"
            folder = root / split / f"XR_{region}" / f"patient{written[split]:05d}" / f"study1_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for view in range(batch.images.shape[1]):
                pixels = (batch.images[index, view, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
                Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"image{view + 1}.png")
            written[split] += 1
        step += 1


def trained_classifier(args, folder: Path) -> FractureClassifier:
    """``--classifier``'s model, or a small one trained here on phantom seeds 0-53 of each region."""
    checkpoint = Path(args.classifier) if args.classifier else folder / "classifier" / "checkpoint.pt"
    if not args.classifier:
        config = ClassifierConfig.cnn(backbone="vgg", layers=2, pooling="max", fusion="early")
        sampler = phantom_sampler(range(0, 54), size=args.image_size, batch_size=8, seed=0, spacing=args.spacing)
        print(f"Training a classifier on phantoms for {args.steps} steps ...", flush=True)
        train_classifier(config, sampler, TrainConfig(output=str(checkpoint.parent), steps=args.steps, lr=5e-4,
                                                      warmup_steps=min(30, args.steps), eval_every=0,
                                                      checkpoint_every=args.steps, log_every=50, progress=False))
    state = load_checkpoint(checkpoint, required=("model", "model_config"))
    model = FractureClassifier(ClassifierConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--classifier", help="checkpoint.pt of a classifier run (default: train a small one here)")
    parser.add_argument("--studies", help="folder with train/ and valid/ in MURA's layout (default: an example tree "
                                          "of phantom radiographs written to OUTPUT/studies)")
    parser.add_argument("--steps", type=int, default=300, help="classifier steps on phantoms without --classifier")
    parser.add_argument("--finetune-steps", type=int, default=100, help="fine-tuning steps on the studies")
    parser.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate")
    parser.add_argument("--studies-per-split", type=int, default=48, help="studies of the example tree per split")
    parser.add_argument("--image-size", type=int, default=128, help="pixels per side (the classifier's input)")
    parser.add_argument("--spacing", type=float, default=1.5, help="phantom voxel spacing, mm")
    parser.add_argument("--output", default="outputs/real_studies", help="folder for the tree, the run and the json")
    args = parser.parse_args(argv)
    folder = Path(args.output)
    model = trained_classifier(args, folder)
    root = Path(args.studies) if args.studies else folder / "studies"
    if not args.studies:
        write_study_tree(root, size=args.image_size, studies=args.studies_per_split, spacing=args.spacing)
        print(f"wrote an example tree of studies to {root}", flush=True)
    train = MuraStudies(root, split="train", views=2, image_size=args.image_size)
    valid = MuraStudies(root, split="valid", views=2, image_size=args.image_size)
    results = {"before": evaluate_classifier_on_studies(model, valid, batch_size=8)}
    losses = finetune_classifier_on_studies(model, train, steps=args.finetune_steps, lr=args.lr, batch_size=8)
    results["after"] = evaluate_classifier_on_studies(model, valid, batch_size=8)
    results["finetune_loss_first_last"] = [losses[0], losses[-1]]
    print(f"{'valid/':<22}{'accuracy':>10}{'precision':>11}{'recall':>8}{'kappa':>8}")
    for name in ("before", "after"):
        m = results[name]
        print(f"{name + ' fine-tuning':<22}{m['accuracy']:>10.3f}{m['precision']:>11.3f}{m['recall']:>8.3f}"
              f"{m['kappa']:>8.3f}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "real_studies.json").write_text(json.dumps(strict_json(results), indent=2))
    print(f"wrote {folder / 'real_studies.json'}")


if __name__ == "__main__":
    main()
