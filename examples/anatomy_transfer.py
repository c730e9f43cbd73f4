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


import onthefly as otf
from onthefly.checkpoint import strict_json
from onthefly.cli.training import compare_correspondence_runs
from onthefly.train import split_volume

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
    results = compare_correspondence_runs(RUNS, evaluation, steps=args.steps, eval_batches=args.eval_batches,
                                          output=folder, quiet=args.quiet)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transfer.json").write_text(json.dumps(strict_json(results), indent=2))
    print(f"wrote {folder / 'transfer.json'}")


if __name__ == "__main__":
    main()
