"""Sampler batches with generated anatomy: PhantomSource against the bundled CT, and AnatomyVariation's cost.

Rows (each in its own Python process, the same sampler settings: B = 16, V = 2,
128 x 128, 16-pixel patches, 120 mm crops at 2 mm, seed 0):

* ``chest CT``: the bundled CT (the reference);
* ``phantoms, first pass``: ``PhantomSource`` (forearm, wrist, hand), every sample
  a phantom not generated before (generation included);
* ``phantoms, cached``: the same batches again, phantoms from the store's cache
  (a pool smaller than the cache: each phantom generated once per run);
* ``chest CT + AnatomyVariation``: the reference with every crop deformed.

Timed: ``sampler.sample(step)`` for steps 1..R after an untimed step 0 (its
first-call costs), with the sampler's own stage times; medians over the steps.

Run: ``.venv/bin/python benchmarks/anatomy.py`` (a few minutes on a quiet 2-core CPU); writes
``benchmarks/results/anatomy.json`` and prints the Markdown table. ``--quick``: 64 x 64, 4 steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _common import RESULTS_DIR, emit_worker_result, machine_info, markdown_table, run_worker

ROWS = ("chest CT", "phantoms, first pass", "phantoms, cached", "chest CT + AnatomyVariation")


def worker(spec: dict) -> dict:
    import onthefly as otf

    size, steps = spec["size"], spec["steps"]
    settings = dict(views=2, image_size=size, patch_size=16, crop_size=120.0, spacing=2.0, batch_size=16, seed=0)
    row = spec["row"]
    if row.startswith("phantoms"):
        volumes = otf.PhantomSource(regions=("forearm", "wrist", "hand"), seeds=range(0, 10_000))
        settings["min_tissue_fraction"] = 0.05
    else:
        volumes = [otf.example_volume()]
    if row.endswith("AnatomyVariation"):
        settings["anatomy"] = otf.AnatomyVariation(scale=0.1, shear=0.05, elastic=4.0)
    sampler = otf.DRRCorrespondenceSampler(volumes=volumes, **settings)
    sampler.sample(0)
    if row == "phantoms, cached":
        for step in range(1, steps + 1):  # generate this run's phantoms once
            sampler.sample(step)
    seconds, stages = [], []
    for step in range(1, steps + 1):
        timings: dict[str, float] = {}
        began = time.perf_counter()
        sampler.sample(step, timings=timings)
        seconds.append(time.perf_counter() - began)
        stages.append(timings)
    names = sorted({name for timing in stages for name in timing})
    return {"row": row, "seconds": seconds, "median_s": statistics.median(seconds),
            "stages": {name: statistics.median(timing.get(name, 0.0) for timing in stages) for name in names}}


def deformation_cost(batches: int = 5) -> list[dict]:
    """``AnatomyVariation``'s stage time against the render stage's, one torch thread, in one process (so that other
    processes' load falls on both alike): the demo's settings and the sampler's defaults, minimum over batches."""
    import torch

    import onthefly as otf

    torch.set_num_threads(1)
    rows = []
    for size, crop, spacing in ((128, 120.0, 2.0), (256, 200.0, 1.0)):
        sampler = otf.DRRCorrespondenceSampler(volumes=[otf.example_volume()], views=2, image_size=size,
                                               patch_size=16, crop_size=crop, spacing=spacing, batch_size=16, seed=0,
                                               anatomy=otf.AnatomyVariation(), correspondence=False)
        sampler.sample(0)
        stages = []
        for step in range(1, batches + 1):
            timings: dict[str, float] = {}
            sampler.sample(step, timings=timings)
            stages.append(timings)
        render, anatomy = min(t["render"] for t in stages), min(t["anatomy"] for t in stages)
        rows.append({"image_size": size, "crop_mm": crop, "spacing_mm": spacing, "render_s": render,
                     "anatomy_s": anatomy, "ratio": anatomy / render})
        print(f"{size} x {size}, {crop:g} mm crops at {spacing:g} mm: render {render:.3f} s, anatomy {anatomy:.3f} s, "
              f"{anatomy / render:.2f}x", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 x 64 views, 4 steps (a smoke test)")
    parser.add_argument("--cost", action="store_true",
                        help="only AnatomyVariation's cost against the render (one thread, the demo's settings and "
                             "the sampler's defaults); writes results/anatomy-cost.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--payload", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        emit_worker_result(worker(json.loads(args.payload)))
        return
    if args.cost:
        output = RESULTS_DIR / "anatomy-cost.json"
        output.write_text(json.dumps({"machine": machine_info(), "rows": deformation_cost()}, indent=1))
        print(f"wrote {output}")
        return
    spec = {"size": 64, "steps": 4} if args.quick else {"size": 128, "steps": 8}
    rows = []
    for name in ROWS:
        outcome = run_worker([str(Path(__file__)), "--worker", "--payload", json.dumps(spec | {"row": name})],
                             memory_limit_bytes=None, timeout_s=3600)
        if outcome.payload is None:
            raise SystemExit(f"{name}: {outcome.failure}\n{outcome.stderr_tail}")
        rows.append(outcome.payload | {"others_cpu": outcome.other_cpu_cores})
        print(f"{name}: {outcome.payload['median_s']:.2f} s per batch", flush=True)
    reference = next(row["median_s"] for row in rows if row["row"] == "chest CT")
    lines = []
    for row in rows:
        stages = ", ".join(f"{name} {value:.2f}" for name, value in row.get("stages", {}).items() if value >= 0.01)
        lines.append([row["row"], f"{row['median_s']:.2f}", f"{row['median_s'] / reference:.2f}x", stages])
    result = {"machine": machine_info(), "setup": spec, "rows": rows}
    output = RESULTS_DIR / ("anatomy-quick.json" if args.quick else "anatomy.json")
    output.write_text(json.dumps(result, indent=1))
    print(markdown_table(["sampler volumes", "s per batch (median)", "vs chest CT", "stages (s, median)"], lines))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
