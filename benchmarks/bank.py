"""Many CTs: preparation time, sampler start-up, peak memory and batch time with a prepared cache and a VolumeBank.

Makes N CT files (N = 16, 64, 256; seeded) from the bundled CT: random
sub-boxes of at least 300 x 300 x 100 voxels (0.7 x 0.7 x 2.5 mm), HU scaled
by a factor in [0.9, 1.1] around -1000 HU, flipped along random axes, saved
as int16 NIfTI (.nii.gz) in a temporary folder. Then, each measurement in its
own Python process (so its peak memory is its own):

* preparation of the first 16 CTs with 1 and with 2 worker processes
  (``onthefly.sampling.preparation.prepare``, 1 mm), total and per CT;
* for each N: the cache extended to N CTs (2 workers), then a fresh process
  that opens ``VolumeBank(cache, memory_budget="2GB")``, builds
  ``DRRCorrespondenceSampler(volumes=bank)`` (start-up), iterates batches (B = 16,
  V = 2, 256 x 256, sampler defaults otherwise: 1 mm, 200 mm crops) and
  reports its whole-process peak resident memory;
* the fully resident sampler on one of the CTs, same settings, same run (the anchor).

Run: ``.venv/bin/python benchmarks/bank.py [--quick]`` (``--quick``: N = 4 tiny
CTs at 4 mm, 64 x 64 views, B = 2; a smoke test of under a minute that writes
nothing to RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    GB,
    GIB,
    describe_machine,
    emit_worker_result,
    machine_info,
    markdown_table,
    peak_rss_bytes,
    run_worker,
    summarize,
    write_markdown_section,
)

SEED = 0
BUDGET = "2GB"
MEMORY_CAP = 20 * GIB
FULL = dict(counts=(16, 64, 256), minimum=(300, 300, 100), spacing=1.0, prepare_count=16, batches=5,
            sampler=dict(views=2, image_size=256, patch_size=16, batch_size=16, seed=SEED))
QUICK = dict(counts=(4,), minimum=(96, 96, 40), spacing=4.0, prepare_count=4, batches=2,
             sampler=dict(views=2, image_size=64, patch_size=16, batch_size=2, seed=SEED, crop_size=64.0, spacing=4.0))


# ------------------------------------------------------------------------------------------- CT files


def make_cts(folder: Path, count: int, minimum: tuple[int, int, int]) -> list[Path]:
    """``count`` CT files cut from the bundled CT (seeded sub-boxes, HU scaling, flips)."""
    import nibabel as nib
    import numpy as np
    import torch

    from onthefly import example_volume

    volume = example_volume(labels=False, centered=False)
    generator = torch.Generator().manual_seed(SEED)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        size = [int(torch.randint(low, high + 1, (1,), generator=generator)) for low, high in zip(minimum, volume.shape)]
        start = [int(torch.randint(0, high - n + 1, (1,), generator=generator)) for n, high in zip(size, volume.shape)]
        crop = volume.crop(start, [a + n for a, n in zip(start, size)])
        scale = 0.9 + 0.2 * float(torch.rand(1, generator=generator))
        hu = (crop.hu[0] + 1000.0) * scale - 1000.0
        flips = [axis for axis in range(3) if float(torch.rand(1, generator=generator)) < 0.5]
        hu = hu.flip(flips) if flips else hu
        path = folder / f"ct{number:04d}.nii.gz"
        nib.Nifti1Image(hu.round().clamp(-1024, 3071).numpy().astype(np.int16), crop.affine.numpy()).to_filename(path)
        paths.append(path)
    return paths


# -------------------------------------------------------------------------------------------- workers


def prepare_worker(spec: dict) -> dict:
    from onthefly.sampling.preparation import prepare

    begin = time.perf_counter()
    report = prepare(spec["sources"], spec["output"], spacing=spec["spacing"], workers=spec["workers"], progress=False)
    seconds = time.perf_counter() - begin
    return {"status": "ok", "seconds": seconds, "prepared": len(report.prepared), "skipped": len(report.skipped),
            "failed": report.failed}


def _time_batches(sampler, batches: int) -> tuple[list[float], float]:
    iterator = iter(sampler)
    begin = time.perf_counter()
    next(iterator)  # warm-up
    first = time.perf_counter() - begin
    times = []
    for _ in range(batches):
        begin = time.perf_counter()
        next(iterator)
        times.append(time.perf_counter() - begin)
    return times, first


def bank_worker(spec: dict) -> dict:
    import torch

    from onthefly import DRRCorrespondenceSampler
    from onthefly.sampling.bank import VolumeBank

    begin = time.perf_counter()
    bank = VolumeBank(spec["cache"], memory_budget=BUDGET)
    sampler = DRRCorrespondenceSampler(volumes=bank, **spec["sampler"])
    startup = time.perf_counter() - begin
    peak_startup = peak_rss_bytes()
    times, first = _time_batches(sampler, spec["batches"])
    return {"status": "ok", "cts": len(bank), "startup_s": startup, "first_batch_s": first, "batch_s": times,
            "peak_rss": peak_rss_bytes(), "peak_rss_startup": peak_startup, "resident_bytes": bank.resident_bytes,
            "torch_threads": torch.get_num_threads()}


def resident_worker(spec: dict) -> dict:
    from onthefly import DRRCorrespondenceSampler, Volume

    begin = time.perf_counter()
    sampler = DRRCorrespondenceSampler(volumes=[Volume.from_file(spec["ct"])], **spec["sampler"])
    build = time.perf_counter() - begin
    times, first = _time_batches(sampler, spec["batches"])
    return {"status": "ok", "startup_s": build, "first_batch_s": first, "batch_s": times, "peak_rss": peak_rss_bytes()}


WORKERS = {"prepare": prepare_worker, "bank": bank_worker, "resident": resident_worker}


def run(role: str, spec: dict) -> dict:
    argv = [str(Path(__file__).resolve()), "--worker", role, "--payload", json.dumps(spec)]
    outcome = run_worker(argv, memory_limit_bytes=MEMORY_CAP, timeout_s=4 * 3600)
    if outcome.payload is None:
        raise SystemExit(f"{role} worker failed ({outcome.failure}):\n{outcome.stderr_tail[-3000:]}")
    return outcome.payload | {"others_cpu": outcome.other_cpu_cores}


# --------------------------------------------------------------------------------------------- driver


def measure(folder: Path, setup: dict) -> dict:
    paths = [str(p) for p in make_cts(folder / "ct", max(setup["counts"]), setup["minimum"])]
    results: dict = {"prepare": {}, "banks": [], "setup": {k: v for k, v in setup.items() if k != "minimum"}}
    first = paths[: setup["prepare_count"]]
    for workers in (1, 2):
        print(f"[bank] preparing {len(first)} CTs with {workers} worker process(es) ...", flush=True)
        results["prepare"][workers] = run("prepare", {"sources": first, "output": str(folder / f"prepared-{workers}"),
                                                      "spacing": setup["spacing"], "workers": workers})
    cache = folder / "prepared-2"  # extended from the first CTs, prepared with 2 workers above
    for count in setup["counts"]:
        print(f"[bank] N = {count}: preparing (2 workers), then the sampler ...", flush=True)
        extended = run("prepare", {"sources": paths[:count], "output": str(cache), "spacing": setup["spacing"],
                                   "workers": 2})
        spec = {"cache": str(cache), "sampler": setup["sampler"], "batches": setup["batches"]}
        results["banks"].append(run("bank", spec) | {"n": count, "prepare": extended})
    print("[bank] resident sampler on one CT ...", flush=True)
    results["resident"] = run("resident", {"ct": paths[0], "sampler": setup["sampler"], "batches": setup["batches"]})
    return results


def tables(results: dict) -> tuple[str, str]:
    prepare_rows = []
    for workers, item in results["prepare"].items():
        count = item["prepared"]
        prepare_rows.append([str(workers), str(count), f"{item['seconds']:.1f}", f"{item['seconds'] / count:.2f}"])
    prepare_table = markdown_table(["worker processes", "CTs", "total s", "s per CT"], prepare_rows,
                                   align=["r", "r", "r", "r"])
    anchor = summarize(results["resident"]["batch_s"])["median"]
    rows = []
    for item in results["banks"]:
        batch = summarize(item["batch_s"])
        rows.append([f"bank, N = {item['n']}", f"{item['startup_s']:.3f}", f"{item['peak_rss'] / GB:.2f}",
                     f"{batch['median']:.2f} ({batch['min']:.2f}-{batch['max']:.2f})", f"{batch['median'] / anchor:.2f}",
                     f"{item['prepare']['seconds']:.0f}", f"{item['others_cpu'] or 0:.2f}"])
    resident = results["resident"]
    batch = summarize(resident["batch_s"])
    rows.append(["resident sampler, 1 CT", f"{resident['startup_s']:.3f}", f"{resident['peak_rss'] / GB:.2f}",
                 f"{batch['median']:.2f} ({batch['min']:.2f}-{batch['max']:.2f})", "1.00", "—",
                 f"{resident['others_cpu'] or 0:.2f}"])
    sampler_table = markdown_table(
        ["", "start-up s", "peak RSS GB", "s / batch", "batch time / resident", "preparing the added CTs s (2 workers)",
         "others' CPU (cores)"], rows, align=["l", "r", "r", "r", "r", "r", "r"])
    return prepare_table, sampler_table


def verdicts(results: dict) -> str:
    banks = results["banks"]
    largest = banks[-1]
    anchor = summarize(results["resident"]["batch_s"])["median"]
    budget = 2.0
    peaks = [item["peak_rss"] / GB for item in banks]
    ratio = max(summarize(item["batch_s"])["median"] for item in banks) / anchor
    prepare = results["prepare"]
    speedup = prepare[1]["seconds"] / prepare[2]["seconds"]
    lines = [
        f"start-up under 5 s at N = {largest['n']}: **{largest['startup_s']:.3f} s** "
        f"({'met' if largest['startup_s'] < 5 else 'not met'});",
        f"peak within the budget + 1.5 GB ({budget + 1.5:.1f} GB) at every N: **{max(peaks):.2f} GB** at most "
        f"({'met' if max(peaks) < budget + 1.5 else 'not met'}); growth from N = {banks[0]['n']} to {largest['n']}: "
        f"{peaks[-1] - peaks[0]:+.2f} GB;",
        f"batch time within 1.2x of the resident sampler: **{ratio:.2f}x** at worst ({'met' if ratio <= 1.2 else 'not met'});",
        f"preparation with 2 workers against 1: **{speedup:.2f}x** faster.",
    ]
    return "\n".join(f"- {line}" for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 4 tiny CTs; a smoke test that writes no RESULTS.md")
    parser.add_argument("--folder", type=Path, help="where to make the CTs and caches (default: a temporary folder)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--payload", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help="JSON results (default: results/bank.json, or bank-quick.json)")
    args = parser.parse_args()
    if args.worker:
        emit_worker_result(WORKERS[args.worker](json.loads(args.payload)))
        return
    setup = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="onthefly-bank-") as temporary:
        results = measure(args.folder or Path(temporary), setup)
    info = machine_info()
    output = args.output or Path(__file__).parent / "results" / ("bank-quick.json" if args.quick else "bank.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"machine": info, **results}, indent=2))
    prepare_table, sampler_table = tables(results)
    print(prepare_table, sampler_table, verdicts(results), sep="\n\n")
    if args.quick:
        return
    body = "\n".join([
        "## Many CTs (`benchmarks/bank.py`)",
        "",
        f"Machine: {describe_machine(info)}.",
        "",
        "Command: `.venv/bin/python benchmarks/bank.py`. N CT files cut from the bundled CT (seeded sub-boxes of at "
        "least 300 x 300 x 100 voxels, HU scaling, flips), prepared once at 1 mm (`onthefly prepare`), then read by "
        f"`VolumeBank(cache, memory_budget=\"{BUDGET}\")` in `DRRCorrespondenceSampler` (B = 16, V = 2, 256 x 256, "
        "defaults otherwise); the anchor is the fully resident sampler on one of the CTs, same settings, same run. "
        "Start-up: opening the bank and building the sampler. Peak RSS: the whole process (the kernel's page cache "
        "of the CT files is not in it). Median (min-max) of the batches after one warm-up; each row in its own process.",
        "",
        "Preparation (first 16 CTs):",
        "",
        prepare_table,
        "",
        sampler_table,
        "",
        "Targets:",
        "",
        verdicts(results),
    ])
    write_markdown_section(Path(__file__).parent / "RESULTS.md", "bank", body)


if __name__ == "__main__":
    main()
