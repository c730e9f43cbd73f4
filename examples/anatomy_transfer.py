"""Does anatomy generated on the fly transfer to a real CT? Correspondence trained on phantoms vs on the chest CT.

Run: ``python examples/anatomy_transfer.py`` (two training runs of the demo's
settings, about 10-25 minutes on a 2-core CPU); ``--help`` for the options.

Two small correspondence models are trained with ``onthefly demo``'s settings
(128 x 128 views, 16-pixel patches, 120 mm crops at 2 mm, batches of 8,
primary angles 0-180 degrees), the same number of steps each:

* **phantoms**: on procedural forearms, wrists and hands
  (``--volumes phantom:forearm,wrist,hand``, the first 90 % of the seeds);
* **chest CT**: on the bundled chest CT's inferior 60 % (the demo's run).

Both are then evaluated on the same held-out sets, at primary angles
180-360 degrees: the chest CT's superior 40 % (a real CT neither saw in
training) and the phantoms' held-out seeds. It prints a table of average
precision (AP) and MSE and writes it to ``OUTPUT/transfer.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

import onthefly as otf
from onthefly.checkpoint import load_checkpoint, strict_json
from onthefly.cli.pictures import DEMO_TRAINING_FLAGS
from onthefly.cli.training import _add_train_options, train_from_args
from onthefly.models import CorrespondenceConfig, CorrespondenceModel
from onthefly.train import evaluate_correspondence, split_volume

RUNS = {"phantoms": ["--volumes", "phantom:forearm,wrist,hand"], "chest CT": []}


def held_out_samplers(spacing: float, seeds: int) -> dict[str, otf.DRRCorrespondenceSampler]:
    """The two evaluation streams, as the training runs' held-out samplers make them (no augmentation)."""
    common = dict(views=2, image_size=128, patch_size=16, crop_size=120.0, spacing=spacing, batch_size=8,
                  alpha=(math.pi, 2 * math.pi), augmentation=None)
    _, superior = split_volume(otf.example_volume(labels=True), fraction=0.6)
    phantoms = otf.PhantomSource(regions=("forearm", "wrist", "hand"), seeds=range(seeds)).split((0.9, 0.1))[1]
    return {"chest CT (superior 40 %)": otf.DRRCorrespondenceSampler(volumes=[superior], seed=10_000, **common),
            "phantoms (held-out seeds)": otf.DRRCorrespondenceSampler(volumes=phantoms, seed=10_000, **common)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps of each run (the demo's 600)")
    parser.add_argument("--eval-batches", type=int, default=4, help="held-out batches of 8 per evaluation set")
    parser.add_argument("--output", default="outputs/anatomy_transfer", help="folder for both runs and transfer.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    folder = Path(args.output)
    evaluation = held_out_samplers(spacing=2.0, seeds=100)
    results = {}
    for name, flags in RUNS.items():
        train_parser = argparse.ArgumentParser()
        _add_train_options(train_parser)
        train_parser.set_defaults(task="correspondence")
        run_folder = folder / name.replace(" ", "_")
        period = str(max(1, args.steps // 3))
        train_args = train_parser.parse_args([*DEMO_TRAINING_FLAGS, *flags, "--steps", str(args.steps),
                                              "--eval-every", str(args.steps), "--eval-batches", "1",
                                              "--checkpoint-every", period, "--output", str(run_folder),
                                              *(["--quiet"] if args.quiet else [])])
        print(f"Training on {name} for {args.steps} steps ...", flush=True)
        summary = train_from_args(train_args)
        state = load_checkpoint(run_folder / "checkpoint.pt", required=("model", "model_config"))
        model = CorrespondenceModel(CorrespondenceConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
        scores = {}
        for set_name, sampler in evaluation.items():
            metrics, _, _ = evaluate_correspondence(model, sampler, batches=args.eval_batches)
            scores[set_name] = {"ap": metrics["ap"], "mse": metrics["mse"]}
        results[name] = {"scores": scores, "loss_first_10pct": summary["loss_first"],
                         "loss_last_10pct": summary["loss_last"], "seconds": summary.get("seconds")}
    torch.manual_seed(0)
    untrained = CorrespondenceModel(CorrespondenceConfig(**state["model_config"]))
    results["untrained"] = {"scores": {set_name: {key: value for key, value in evaluate_correspondence(
        untrained, sampler, batches=args.eval_batches)[0].items() if key in ("ap", "mse")}
        for set_name, sampler in evaluation.items()}}
    print(f"{'trained on':<12} " + " ".join(f"{set_name + ' AP':>32}" for set_name in evaluation))
    for name, result in results.items():
        print(f"{name:<12} " + " ".join(f"{result['scores'][set_name]['ap']:>32.3f}" for set_name in evaluation))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transfer.json").write_text(json.dumps(strict_json(results), indent=2))
    print(f"wrote {folder / 'transfer.json'}")


if __name__ == "__main__":
    main()
