"""The attention variants of the seed paper's Table 1, trained on the same on-the-fly stream.

Each variant (no attention, SuperGlue-style and LoFTR-style message passing, a
standard transformer with and without message passing) gets the same small
CNN backbone, the same width and depth, the same seeded training stream from
the bundled CT's inferior 60 % (primary angles 0-180 degrees) and the same
held-out evaluation stream from its superior 40 % (primary angles 180-360
degrees), then reports MSE, precision, recall and average precision there.

Run: ``python examples/attention_variants.py`` (about 5 minutes on a 2-core
CPU at the defaults: 300 steps per variant); ``--markdown FILE`` also writes
the table with the command and the machine (``docs/attention_variants.md`` was
written so).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

import onthefly as otf
from onthefly.checkpoint import strict_json
from onthefly.models import ATTENTION_VARIANTS, CorrespondenceConfig
from onthefly.train import TrainConfig, split_volume, train_correspondence

NAMES = {
    "none": "no attention (CNN only)",
    "superglue": "SuperGlue-style message passing",
    "loftr": "LoFTR-style message passing (linear attention)",
    "standard_mp": "standard transformer, message passing",
    "standard": "standard transformer, no message passing",
}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per variant")
    parser.add_argument("--image-size", type=int, default=128, help="detector pixels per side")
    parser.add_argument("--patch-size", type=int, default=16, help="patch edge, pixels (the backbone's stride)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step")
    parser.add_argument("--d-model", type=int, default=64, help="token width, channels")
    parser.add_argument("--layers", type=int, default=4, help="attention layers")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (cosine schedule)")
    parser.add_argument("--eval-batches", type=int, default=8, help="held-out batches per evaluation")
    parser.add_argument("--variants", nargs="+", default=["none", "superglue", "loftr", "standard_mp", "standard"],
                        choices=ATTENTION_VARIANTS, help="the attention variants to train, one run each")
    parser.add_argument("--output", default="outputs/attention_variants",
                        help="folder of the runs (a checkpoint, metrics.csv and pictures per variant)")
    parser.add_argument("--markdown", help="also write the table (with command and machine) to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars: plain progress lines on stderr")
    args = parser.parse_args(argv)

    train_part, eval_part = split_volume(otf.example_volume(labels=False), fraction=0.6)
    data = dict(views=2, image_size=args.image_size, patch_size=args.patch_size, crop_size=120.0, spacing=2.0,
                batch_size=args.batch_size)
    rows = []
    for variant in args.variants:
        train_sampler = otf.DRRCorrespondenceSampler(volumes=[train_part], seed=0, alpha=(0.0, math.pi), **data)
        eval_sampler = otf.DRRCorrespondenceSampler(volumes=[eval_part], seed=10_000, augmentation=None,
                                                    alpha=(math.pi, 2 * math.pi), **data)
        model = CorrespondenceConfig.small(attention=variant, d_model=args.d_model, layers=args.layers,
                                           patch_size=args.patch_size)
        config = TrainConfig(output=f"{args.output}/{variant}", steps=args.steps, lr=args.lr,
                             eval_every=args.steps, eval_batches=args.eval_batches, checkpoint_every=args.steps,
                             log_every=max(1, args.steps // 10), seed=0, progress="lines" if args.quiet else "auto")
        began = time.perf_counter()
        summary = train_correspondence(model, train_sampler, config, eval_sampler=eval_sampler)
        final = summary["final_eval"]
        rows.append({"variant": variant, "name": NAMES[variant], "parameters": summary["parameters"],
                     "seconds": time.perf_counter() - began, "loss_last": summary["loss_last"],
                     "samples_per_s": summary["samples_per_s"], **{k: final[k] for k in ("mse", "precision", "recall", "ap")}})
        print(json.dumps(strict_json(rows[-1]), allow_nan=False), flush=True)

    header = ("| attention | parameters | final training loss | held-out MSE | precision | recall | AP |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    lines = [header] + [
        f"| {r['name']} | {r['parameters']:,} | {r['loss_last']:.4f} | {r['mse']:.4f} | {r['precision']:.3f} | "
        f"{r['recall']:.3f} | {r['ap']:.3f} |" for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        write_markdown(args, table, argv if argv is not None else sys.argv[1:])
    return rows


def write_markdown(args: argparse.Namespace, table: str, argv: list[str]) -> None:
    """The results page: the command (with the small settings the documentation tests run it at), the
    machine, the set-up and the table."""
    command = " ".join(["python examples/attention_variants.py", *argv])
    machine = (f"{platform.processor() or platform.machine()}, torch threads: {torch.get_num_threads()}, "
               f"{platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}")
    small = "--steps 2 --eval-batches 1 --image-size 64 --variants standard --output outputs/attention_variants"
    text = "\n".join([
        "# Attention variants (the seed paper's Table 1) on the on-the-fly stream",
        "",
        "Command:",
        "",
        f"<!-- doctest: replace \"{' '.join(argv)}\" \"{small}\" -->",
        "<!-- doctest: slow -->",
        "```bash",
        command,
        "```",
        "",
        f"Machine: {machine}.",
        "",
        f"Set-up: the small CNN backbone (stride {args.patch_size}), d = {args.d_model}, {args.layers} attention "
        f"layers (alternating variants: half self, half cross), {args.image_size} x {args.image_size} views, "
        f"V = 2, batch {args.batch_size}, {args.steps} Adam steps (lr {args.lr:g}, cosine), MSE loss. Training: "
        "the bundled CT's inferior 60 %, primary angles 0-180 degrees; evaluation: its superior 40 % (never "
        "seen), primary angles 180-360 degrees, "
        f"{args.eval_batches} fixed batches. Every variant saw exactly the same training batches. Metrics: "
        "the true matrix binarised at 0.5, predictions thresholded at 0.5 for precision and recall, average "
        "precision (AP) of the predicted scores.",
        "",
        table,
        "",
    ])
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
