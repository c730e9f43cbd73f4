"""Task samplers: seconds per batch and per view of the biplanar, angular-sequence and novel-view streams.

Each sampler runs on the bundled CT with the parent sampler's defaults (CT
resampled once to 1 mm, 200 mm crops, the detector framing the crop,
isocenter jitter 10 mm, no augmentation in the task samplers), B = 16 at
128 x 128, patch_size = 16:

* ``BiplanarSampler``: PA + lateral, target volume 64^3 (no correspondence);
* ``AngularSequenceSampler``: T = 8 views, evenly spaced over 360 degrees (no correspondence);
* ``NovelViewSampler``: 1 source + 1 target at 128 x 128, with the correspondence matrix.

Each mode runs in its own process (peak memory is its own, capped at 20 GiB);
one warm-up batch, then the median (min-max) of the timed batches. "Per view" is
the batch time divided by the ``B x V`` views it renders. The "others' CPU"
column is the mean number of cores other processes kept busy meanwhile (the
disturbance of the timings).

Run: ``.venv/bin/python benchmarks/tasks.py [--quick]``; ``--from-json benchmarks/results/tasks.json``
re-writes the table and the RESULTS.md section from saved numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    GIB,
    MemoryProbe,
    describe_machine,
    emit_worker_result,
    machine_info,
    markdown_table,
    run_worker,
    summarize,
    write_markdown_section,
)

BATCH, SIZE, PATCH, SEED = 16, 128, 16, 0
MEMORY_CAP = 20 * GIB
MODES = {
    "biplanar": ("BiplanarSampler", dict(volume_size=64), 2, "PA + lateral, volume 64^3"),
    "sequence": ("AngularSequenceSampler", dict(views=8), 8, "T = 8 views, even over 360 deg"),
    "novel_view": ("NovelViewSampler", dict(targets=1), 2, "1 source + 1 target, with correspondence"),
}


def worker(mode: str, quick: bool, batches: int) -> dict:
    probe = MemoryProbe()
    import torch

    import onthefly as otf
    from onthefly import tasks

    name, settings, views, _ = MODES[mode]
    start = time.perf_counter()
    sampler = getattr(tasks, name)(
        volumes=[otf.example_volume(labels=False)], image_size=32 if quick else SIZE, patch_size=PATCH,
        batch_size=2 if quick else BATCH, seed=SEED, **settings,
    )
    build_s = time.perf_counter() - start
    probe.mark_loaded()
    sampler.sample(0)  # warm-up
    totals, splits = [], []
    for step in range(1, batches + 1):
        timings: dict[str, float] = {}
        begin = time.perf_counter()
        batch = sampler.sample(step, timings=timings)
        totals.append(time.perf_counter() - begin)
        splits.append(timings)
    shapes = {
        key: list(getattr(batch, key).shape)
        for key in ("images", "volume", "angles", "source", "targets", "relative_pose", "correspondence")
        if getattr(batch, key, None) is not None
    }
    return {
        "status": "ok", "mode": mode, "sampler": name, "views": views, "batch": sampler.batch_size,
        "image_size": sampler.height, "build_s": build_s, "batch_s": totals, "splits": splits,
        "memory": probe.report(), "shapes": shapes, "torch_threads": torch.get_num_threads(),
    }


def run(mode: str, quick: bool, batches: int) -> dict:
    argv = [str(Path(__file__).resolve()), "--worker", mode, "--batches", str(batches)] + (["--quick"] if quick else [])
    outcome = run_worker(argv, memory_limit_bytes=MEMORY_CAP, timeout_s=3600)
    if outcome.payload is None:
        return {"status": "failed", "mode": mode, "stderr": outcome.stderr_tail[-2000:],
                "others_cpu": outcome.other_cpu_cores}
    return outcome.payload | {"others_cpu": outcome.other_cpu_cores}


def report(results: list[dict], info: dict) -> tuple[str, str]:
    """The Markdown table and the RESULTS.md section body for ``results``."""
    rows = []
    for result in results:
        name, _, views, description = MODES[result["mode"]]
        if result["status"] != "ok":
            rows.append([f"`{name}`", description, "failed", "—", "—", "—", "—", "—", "—",
                         f"{result['others_cpu'] or 0:.2f}"])
            continue
        total = summarize(result["batch_s"])
        count = result["batch"] * views
        stage = lambda key: summarize([s.get(key, 0.0) for s in result["splits"]])["median"]  # noqa: E731
        extra = stage("target") + stage("targets") + stage("correspondence")
        rows.append([
            f"`{name}`", description, f"{result['batch']} x {views}",
            f"{total['median']:.2f} ({total['min']:.2f}-{total['max']:.2f})",
            f"{1000 * total['median'] / count:.0f}", f"{1000 * total['min'] / count:.0f}",
            f"{stage('render'):.2f}", f"{extra:.2f}", f"{result['memory']['peak_rss'] / 1e9:.2f}",
            f"{result['others_cpu'] or 0:.2f}",
        ])
    table = markdown_table(
        ["sampler", "mode", "B x V", "s / batch", "ms / view (median)", "ms / view (fastest batch)",
         "render s", "target / correspondence s", "peak RSS GB", "others' CPU (cores)"],
        rows, align=["l", "l", "r", "r", "r", "r", "r", "r", "r", "r"],
    )
    ok = [r for r in results if r["status"] == "ok"]
    worst = max(summarize(r["batch_s"])["median"] / (r["batch"] * r["views"]) for r in ok) if ok else float("nan")
    others = [r["others_cpu"] for r in results if r.get("others_cpu") is not None]
    busy = f"{min(others):.1f}-{max(others):.1f}" if others else "an unknown number of"
    body = "\n".join([
        "## Task samplers (`benchmarks/tasks.py`)",
        "",
        f"Machine: {describe_machine(info)}.",
        "",
        f"Command: `.venv/bin/python benchmarks/tasks.py`. The bundled CT with the sampler's defaults "
        f"(resampled once to 1 mm, 200 mm crops, no augmentation), B = {BATCH}, {SIZE} x {SIZE}, "
        f"patch_size = {PATCH}, seed {SEED}; median (min-max) of {len(ok[0]['batch_s']) if ok else 0} batches after "
        "one warm-up, each mode in its own process. \"ms / view\": the batch time over the B x V views it "
        "renders. \"target / correspondence s\": resampling the 16 crops to 64^3 (biplanar), or the "
        "correspondence matrix (novel view), per batch. Stage times are medians. Shapes and units: "
        "`docs/other_tasks.md`.",
        "",
        table,
        "",
        f"Target (issue): well under a second per view at B = 16, 128 x 128: the slowest mode takes "
        f"**{1000 * worst:.0f} ms per view** at its median ({'met' if worst < 1 else 'not met'}).",
        "",
        disturbance_note(others, busy),
    ])
    return table, body


def disturbance_note(others: list[float], busy: str) -> str:
    """A warning when other processes kept the cores busy (the timings are then upper bounds)."""
    if others and max(others) < 0.3:
        return f"Other processes kept {busy} cores busy on average (last column): a quiet machine."
    return (f"**Disturbed run**: other processes kept {busy} cores busy on average (last column); read these "
            "times as upper bounds and re-run on a quiet machine.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests; writes nothing to RESULTS.md")
    parser.add_argument("--batches", type=int, default=5, help="timed batches per mode (after one warm-up)")
    parser.add_argument("--from-json", type=Path, help="re-write the table and the RESULTS.md section from a saved JSON")
    parser.add_argument("--worker", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "tasks.json")
    args = parser.parse_args()
    if args.worker is not None:
        emit_worker_result(worker(args.worker, args.quick, args.batches))
        return

    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        results, info = saved["results"], saved["machine"]
    else:
        results = []
        for mode in MODES:
            print(f"[tasks] {mode} ...", flush=True)
            results.append(run(mode, args.quick, 2 if args.quick else args.batches))
        info = machine_info()
        if not args.quick:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps({"machine": info, "results": results}, indent=2))
    table, body = report(results, info)
    print(table)
    if not args.quick:
        write_markdown_section(Path(__file__).parent / "RESULTS.md", "tasks", body)


if __name__ == "__main__":
    main()
