"""Procedural phantom generation time: one phantom and a batch of 16 per region, at 1 mm, on the CPU.

Each row runs in its own Python process (``run_worker``): one untimed warm-up
phantom, then timed calls (at least 3; ``phantom(region, seed)`` for single
phantoms with a new seed each call, ``phantoms(region, 16 seeds)`` for a
batch). The table gives the median and the min-max, per phantom and per batch,
with the grid size of the first phantom and how many cores other processes
kept busy meanwhile (on a shared machine they slow every row). Rows with the
default torch threads and with one thread: on a busy 2-core machine, one thread
is often faster (the OpenMP threads of a few thousand small operations wait
for each other).

Run: ``.venv/bin/python benchmarks/phantoms.py`` (about 3 minutes on a quiet 2-core CPU); writes
``benchmarks/results/phantoms.json`` and prints the Markdown table. ``--quick``: 2 mm voxels, batches of 4,
written to ``phantoms-quick.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import (
    GIB,
    RESULTS_DIR,
    describe_machine,
    emit_worker_result,
    machine_info,
    markdown_table,
    peak_rss_bytes,
    run_worker,
    summarize,
)

REGIONS = ("forearm", "wrist", "hand")
FULL = {"spacing": 1.0, "batch": 16, "single_repeats": 7, "batch_repeats": 3}
QUICK = {"spacing": 2.0, "batch": 4, "single_repeats": 3, "batch_repeats": 2}


def worker(spec: dict) -> dict:
    import torch

    if spec["threads"] is not None:
        torch.set_num_threads(spec["threads"])
    from onthefly.phantoms import phantom, phantoms

    region, spacing, batch = spec["region"], spec["spacing"], spec["batch"]
    first = phantom(region, 0, spacing=spacing)  # warm-up (and the grid size)
    single = []
    for seed in range(1, spec["single_repeats"] + 1):
        begin = time.perf_counter()
        phantom(region, seed, spacing=spacing)
        single.append(time.perf_counter() - begin)
    batches = []
    for repeat in range(spec["batch_repeats"]):
        seeds = list(range(1000 + repeat * batch, 1000 + (repeat + 1) * batch))
        begin = time.perf_counter()
        volumes = phantoms(region, seeds, spacing=spacing)
        batches.append(time.perf_counter() - begin)
    voxels = [v.hu.numel() for v in volumes]
    return {"status": "ok", "region": region, "threads": torch.get_num_threads(), "shape": list(first.shape),
            "single_s": single, "batch_s": batches, "batch_mean_voxels": sum(voxels) / len(voxels),
            "peak_rss": peak_rss_bytes()}


def measure(setup: dict) -> list[dict]:
    rows = []
    for threads in (None, 1):
        for region in REGIONS:
            spec = {"region": region, "threads": threads, **setup}
            label = "default" if threads is None else threads
            print(f"[phantoms] {region}, threads {label} ...", flush=True)
            argv = [str(Path(__file__).resolve()), "--worker", "--payload", json.dumps(spec)]
            outcome = run_worker(argv, memory_limit_bytes=None, timeout_s=3600)
            if outcome.payload is None:
                raise SystemExit(f"worker failed ({outcome.failure}):\n{outcome.stderr_tail[-3000:]}")
            rows.append(outcome.payload | {"others_cpu": outcome.other_cpu_cores})
    return rows


def table(rows: list[dict], setup: dict) -> str:
    body = []
    for row in rows:
        single, batch = summarize(row["single_s"]), summarize(row["batch_s"])
        body.append([
            row["region"], str(row["threads"]), "x".join(str(n) for n in row["shape"]),
            f"{single['median']:.2f} ({single['min']:.2f}-{single['max']:.2f})",
            f"{batch['median']:.1f} ({batch['min']:.1f}-{batch['max']:.1f})",
            f"{batch['median'] / setup['batch']:.2f}", f"{row['peak_rss'] / GIB:.2f}", f"{row['others_cpu'] or 0:.2f}",
        ])
    return markdown_table(
        ["region", "torch threads", "grid (seed 0)", "s / phantom", f"s / batch of {setup['batch']}",
         "s / phantom in a batch", "peak RSS GiB", "others' CPU (cores)"],
        body, align=["l", "r", "r", "r", "r", "r", "r", "r"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 mm voxels, batches of 4 (a smoke test)")
    parser.add_argument("--output", type=Path, help="JSON results (default: results/phantoms.json, or phantoms-quick.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--payload", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        emit_worker_result(worker(json.loads(args.payload)))
        return
    setup = QUICK if args.quick else FULL
    rows = measure(setup)
    info = machine_info()
    output = args.output or RESULTS_DIR / ("phantoms-quick.json" if args.quick else "phantoms.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"machine": info, "setup": setup, "rows": rows}, indent=2))
    print(f"\nMachine: {describe_machine(info)}.\n")
    print(f"Phantom generation at {setup['spacing']:g} mm on the CPU (median (min-max) after one warm-up phantom):\n")
    print(table(rows, setup))
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
