"""Does radiograph physics in training help on radiographs? Correspondence trained with and without it.

Run: ``python examples/physics_transfer.py`` (two training runs of the demo's
settings, about 10-25 minutes on a 2-core CPU); ``--help`` for the options.

Two small correspondence models are trained with ``onthefly demo``'s settings
(the bundled chest CT's inferior 60 %, 128 x 128 views, 16-pixel patches,
120 mm crops at 2 mm, batches of 8, primary angles 0-180 degrees, the
radiograph display), the same number of steps each:

* **line integrals**: the views are ideal monochromatic line integrals;
* **physics**: every training view is a radiograph drawn with
  ``onthefly.Physics()``'s ranges (50-120 kV, scatter, detector blur, quantum
  noise at 2e3-2e4 photons per pixel; ``onthefly train --physics``).

Both are evaluated on the same held-out views (the chest CT's superior 40 %,
primary angles 180-360 degrees), rendered twice: as radiographs with
``Physics()``'s ranges (what a model meets on real images) and as line
integrals. The correspondence ground truth is geometric: the same in both.
It prints a table of average precision (AP) and writes ``OUTPUT/physics.json``.
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

RUNS = {"line integrals": ["--display", "radiograph"], "physics": ["--display", "radiograph", "--physics"]}


def held_out_samplers() -> dict[str, otf.DRRCorrespondenceSampler]:
    """The held-out views of the demo's run, as radiographs and as line integrals (the same crops and cameras)."""
    common = dict(views=2, image_size=128, patch_size=16, crop_size=120.0, spacing=2.0, batch_size=8,
                  alpha=(math.pi, 2 * math.pi), augmentation=None, display="radiograph", seed=10_000)
    _, superior = split_volume(otf.example_volume(labels=True), fraction=0.6)
    return {"radiographs (Physics())": otf.DRRCorrespondenceSampler(volumes=[superior], physics=otf.Physics(), **common),
            "line integrals": otf.DRRCorrespondenceSampler(volumes=[superior], **common)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps of each run (the demo's 600)")
    parser.add_argument("--eval-batches", type=int, default=4, help="held-out batches of 8 per evaluation set")
    parser.add_argument("--output", default="outputs/physics_transfer", help="folder for both runs and physics.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    folder = Path(args.output)
    evaluation = held_out_samplers()
    results = compare_correspondence_runs(RUNS, evaluation, steps=args.steps, eval_batches=args.eval_batches,
                                          output=folder, quiet=args.quiet)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "physics.json").write_text(json.dumps(strict_json(results), indent=2))
    print(f"wrote {folder / 'physics.json'}")


if __name__ == "__main__":
    main()
