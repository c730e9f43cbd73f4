"""Fracture classification on simulated fractures: learnability first, then the seed paper's Table 3 rows.

Data: the bundled CT cut along its long axis (:func:`onthefly.train.split_volume`,
fraction 0.6): training crops come from its inferior 60 % (primary angles
0-180 degrees), held-out crops from its superior 40 % (180-360 degrees), a
region never used in training, on a fixed seeded stream without augmentation.
A simulated fracture is drawn in half of the samples (the default
:class:`~onthefly.fractures.FractureConfig`), kept visible: a fracture whose
best view changes the display image by less than ``--min-visibility`` is
redrawn (``FractureConfig.min_visibility``); a crop without bone near its centre
is never fractured. ``--display radiograph`` shows the views as processed
radiographs (``onthefly.display``; the visibility is then measured through that
display), and ``--paired`` trains on batches of pairs, each fractured crop next
to the same crop intact (``FractureConfig.paired``; held-out batches stay unpaired).

Model: the CNN classifier (:meth:`ClassifierConfig.cnn`: the VGG-style CNN
to stride 16, ``--backbone``, d = 128, ``--layers`` transformer layers), study logit = the largest
patch logit (``pooling="max"``), trained with the study label and the patch
detection loss, a visibility curriculum from ``1.5 x --min-visibility`` down to
``--min-visibility`` over the first third of the steps. Rows (same budget):

1. ``single``: view 0 only;
2. ``late``: each view alone, logits averaged;
3. ``early``: the tokens of both views attend together;
4. ``pretrained``: early + the trunk first trained on the correspondence task (``--pretrain-steps``);
5. ``guided``: the same + attention guidance by the true correspondence ``C``.

Run: ``.venv/bin/python examples/fracture_table3.py --rows early --seeds 0`` (learnability:
early fusion, one seed, about 12 minutes on a 2-core CPU), then
``.venv/bin/python examples/fracture_table3.py --markdown docs/fracture_table3.md``
(Table 3, three seeds, several hours; an interrupted run continues where it
stopped). Outputs go to ``outputs/fracture_table3/``; ``--markdown`` writes the
table into a marked section of that file and keeps the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import onthefly as otf
from onthefly.fractures import FractureConfig
from onthefly.models import ClassifierConfig
from onthefly.cli.training import PHANTOM_MIN_TISSUE_FRACTION
from onthefly.sampling.phantom_store import parse_phantom_source
from onthefly.checkpoint import load_checkpoint
from onthefly.models import FractureClassifier
from onthefly.train import (Curriculum, TrainConfig, evaluate_classifier, split_volume, train_classifier,
                            train_correspondence)

ROWS = {
    "single": ("single view", dict(fusion="single"), False),
    "late": ("late fusion", dict(fusion="late"), False),
    "early": ("early fusion", dict(fusion="early"), False),
    "pretrained": ("early fusion + correspondence pre-training", dict(fusion="early"), True),
    "guided": ("+ attention guidance", dict(fusion="early", attention_guidance=True), True),
}
METRICS = ("accuracy", "precision", "recall", "kappa", "patch_hit")


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="which rows to train")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600, help="classifier steps per run (the same for every row)")
    parser.add_argument("--pretrain-steps", type=int, default=400, help="correspondence pre-training steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--spacing", type=float, default=1.5, help="CT voxel spacing, mm")
    parser.add_argument("--crop-size", type=float, default=112.0, help="crop edge, mm")
    parser.add_argument("--min-visibility", type=float, default=0.06, help="fractures less visible are redrawn")
    parser.add_argument("--max-redraws", type=int, default=6, help="redraws of a fracture below --min-visibility")
    parser.add_argument("--translation", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="fragment shift range, mm (default: FractureConfig's)")
    parser.add_argument("--gap", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="width of bone removed at each cut, mm (default: FractureConfig's)")
    parser.add_argument("--bones", nargs="+", help="label name patterns to fracture, weight 1 each (default: all bones, "
                                                   "weighted by FractureConfig's DEFAULT_BONE_WEIGHTS)")
    parser.add_argument("--paired", action="store_true",
                        help="train on paired batches (each fractured crop next to the same crop intact); "
                             "evaluation stays unpaired")
    parser.add_argument("--display", default="radiograph", choices=["minmax", "radiograph"],
                        help="how line integrals become the views (onthefly.DISPLAYS)")
    parser.add_argument("--backbone", default="vgg", choices=["vgg", "small"],
                        help="the CNN under the tokens (onthefly.models.backbone); 'small' was the former default")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers on the CNN")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--patch-weight", type=float, default=1.0, help="weight of the patch detection loss")
    parser.add_argument("--eval-batches", type=int, default=16, help="held-out batches (B samples each)")
    parser.add_argument("--volumes", default="chest",
                        help="'chest' (the bundled CT split in two) or phantom:REGION,...[:N] (procedural phantoms: "
                             "the first 90 %% of N seeds per region train, the last 10 %% are held out; the held-out "
                             "score on the chest CT's superior 40 %% is reported too)")
    parser.add_argument("--output", default="outputs/fracture_table3", help="folder for runs and results.json")
    parser.add_argument("--markdown", help="also write the table (with commands and machine) to this file")
    return parser.parse_args(argv)


def volumes(args) -> tuple[object, object, dict, dict]:
    """Training and held-out CTs, and the primary-angle ranges (training, held out) of their samplers."""
    if args.volumes == "chest":
        train_part, held_out = split_volume(otf.example_volume(labels=True), fraction=0.6)
        return [train_part], [held_out], dict(alpha=(0.0, math.pi)), dict(alpha=(math.pi, 2 * math.pi))
    train_part, held_out = parse_phantom_source(args.volumes).split((0.9, 0.1))  # other phantoms, any angle
    thin = dict(min_tissue_fraction=PHANTOM_MIN_TISSUE_FRACTION)
    return train_part, held_out, thin, thin


def make_samplers(args, seed: int, *, correspondence: bool):
    train_part, held_out, train_angles, held_angles = volumes(args)
    shape = {name: tuple(getattr(args, name)) for name in ("translation", "gap") if getattr(args, name) is not None}
    fractures = FractureConfig(probability=0.5, min_visibility=args.min_visibility, max_redraws=args.max_redraws,
                               bones=args.bones, **shape)
    data = dict(views=2, image_size=args.image_size, patch_size=16, crop_size=args.crop_size, spacing=args.spacing,
                batch_size=args.batch_size, fractures=fractures, correspondence=correspondence, display=args.display)
    augmentation = otf.Augmentation(brightness=0.05, contrast=0.1, invert=0.0, gamma=0.1, noise=0.005, blur=0.3,
                                    geometric=0.5)
    train = otf.DRRCorrespondenceSampler(volumes=train_part, seed=seed, augmentation=augmentation,
                                         **(data | train_angles | {"fractures": replace(fractures, paired=args.paired)}))
    held = otf.DRRCorrespondenceSampler(volumes=held_out, seed=10_000, augmentation=None, **(data | held_angles))
    return train, held


def chest_sampler(args, *, correspondence: bool):
    """Held-out fractures on the bundled chest CT's superior 40 % (a real CT's anatomy), for phantom-trained runs."""
    _, held_out = split_volume(otf.example_volume(labels=True), fraction=0.6)
    fractures = FractureConfig(probability=0.5, min_visibility=args.min_visibility, max_redraws=args.max_redraws)
    return otf.DRRCorrespondenceSampler(
        volumes=[held_out], seed=10_000, augmentation=None, alpha=(math.pi, 2 * math.pi), views=2,
        image_size=args.image_size, patch_size=16, crop_size=args.crop_size, spacing=args.spacing,
        batch_size=args.batch_size, fractures=fractures, correspondence=correspondence, display=args.display)


def pretrain(args, seed: int, model: ClassifierConfig, folder: Path) -> Path:
    """The classifier's trunk trained on the correspondence task (training part, no fractures)."""
    checkpoint = folder / "checkpoint.pt"
    if checkpoint.exists():
        return checkpoint
    train_part, _, train_angles, _ = volumes(args)
    sampler = otf.DRRCorrespondenceSampler(
        volumes=train_part, seed=1000 + seed, views=2, image_size=args.image_size,
        patch_size=16, crop_size=args.crop_size, spacing=args.spacing, batch_size=args.batch_size, **train_angles)
    train_correspondence(model.trunk_config(), sampler, TrainConfig(
        output=str(folder), steps=args.pretrain_steps, lr=args.lr, warmup_steps=20, eval_every=0,
        checkpoint_every=args.pretrain_steps, log_every=50, seed=seed, progress=False))
    return checkpoint


def load_classifier(path: Path) -> FractureClassifier:
    """The classifier a run saved (``checkpoint.pt``: its config and weights)."""
    state = load_checkpoint(path, required=("model", "model_config"))
    classifier = FractureClassifier(ClassifierConfig(**state["model_config"]))
    classifier.load_state_dict(state["model"])
    return classifier


def run_row(args, row: str, seed: int) -> dict:
    name, settings, pretrained = ROWS[row]
    model = ClassifierConfig.cnn(backbone=args.backbone, layers=args.layers, pooling="max", **settings)
    folder = Path(args.output) / f"seed{seed}"
    began = time.perf_counter()
    init_from = pretrain(args, seed, model, folder / "pretrain") if pretrained else None
    pretrain_minutes = (time.perf_counter() - began) / 60
    train, held = make_samplers(args, seed, correspondence=model.attention_guidance)
    began = time.perf_counter()
    summary = train_classifier(
        model, train, TrainConfig(output=str(folder / row), steps=args.steps, lr=args.lr, warmup_steps=30,
                                  eval_every=max(args.steps // 4, 1), eval_batches=args.eval_batches,
                                  checkpoint_every=args.steps, log_every=50, seed=seed, progress=False),
        eval_sampler=held, init_from=init_from, patch_weight=args.patch_weight,
        curriculum=Curriculum(start=min(1.5 * args.min_visibility, 0.5), end=args.min_visibility,
                              steps=max(args.steps // 3, 1)),
    )
    final = summary["final_eval"]
    transfer = {}
    if args.volumes != "chest":  # the same classifier on fractures simulated on a real CT
        classifier = load_classifier(folder / row / "checkpoint.pt")
        chest = evaluate_classifier(classifier, chest_sampler(args, correspondence=model.attention_guidance),
                                    batches=args.eval_batches)
        transfer = {f"chest_{key}": chest[key] for key in METRICS}
    return {"row": row, "name": name, "seed": seed, **{key: final[key] for key in METRICS}, **transfer,
            "positives": final["positives"], "loss_first": summary["loss_first"], "loss_last": summary["loss_last"],
            "minutes": (time.perf_counter() - began) / 60, "pretrain_minutes": pretrain_minutes,
            "samples_per_s": summary["samples_per_s"]}


def cell(results: list[dict], row: str, key: str, scale: float = 100.0) -> str:
    values = [scale * r[key] for r in results if r["row"] == row and not math.isnan(r[key])]
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}" + ("" if len(values) > 1 else " (1 seed)")


def table(results: list[dict]) -> str:
    rows = [row for row in ROWS if any(r["row"] == row for r in results)]
    chest = any("chest_accuracy" in r for r in results)  # phantom-trained runs, also scored on the chest CT
    extra = " chest CT accuracy % | chest CT patch hit % |" if chest else ""
    lines = ["| model | accuracy % | precision % | recall % | kappa (x100) | patch hit % |" + extra + " minutes per run |",
             "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if chest else "") + " ---: |"]
    for row in rows:
        cells = [cell(results, row, key) for key in METRICS]
        if chest:
            cells += [cell([r for r in results if "chest_accuracy" in r], row, key)
                      for key in ("chest_accuracy", "chest_patch_hit")]
        lines.append(f"| {ROWS[row][0]} | " + " | ".join(cells) + f" | {cell(results, row, 'minutes', 1.0)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results_path = output / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    started = time.perf_counter()
    for seed in args.seeds:
        for row in args.rows:
            if any(r["row"] == row and r["seed"] == seed for r in results):
                continue  # done by an earlier run of the same command
            results.append(run_row(args, row, seed))
            results_path.write_text(json.dumps(results, indent=1))
            print(json.dumps(results[-1]), flush=True)
    print(table(results))
    if args.markdown:
        command = "python examples/fracture_table3.py " + " ".join(argv if argv is not None else sys.argv[1:])
        machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.system()} "
                   f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}")
        body = "\n".join([
            f"Command: `{command.strip()}` ({(time.perf_counter() - started) / 60:.0f} minutes in this call; rows "
            f"already in `{results_path}` are kept). Machine: {machine}.",
            "",
            table(results),
        ])
        write_section(Path(args.markdown), "table3" if len(args.rows) > 1 else f"rows-{'-'.join(args.rows)}", body)
    return results


def write_section(path: Path, name: str, body: str) -> None:
    """Put ``body`` between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path`` (other text is kept)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Fracture classification on simulated data\n"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
