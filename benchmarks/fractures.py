"""Simulated fractures: how visible they are, and what they cost next to rendering.

Set-up: ``DRRCorrespondenceSampler`` on the bundled CT (1 mm voxels, 120 mm
crops), B = 16, V = 2, 128 x 128, no augmentation, no correspondence, the
default :class:`~onthefly.fractures.FractureConfig` (``probability=1`` for the
visibility, so every sample is fractured; 0.5, the default, for the timing).

Visibility: the largest change of the display image (``to_display`` of the
fractured views minus ``to_display`` of the intact crops rendered with the same
cameras), per view; a sample counts by its most visible view. Also the
recorded ``batch.fracture_visibility`` (an estimate marching the changed box
only) against that exact change. Rows: the default configuration; the same
with ``min_visibility`` redraws; both with the sampler's ``display="radiograph"``
(the change measured through that display); and a reference that removes half of every
bone piece within the reach (no motion, a gap as long as the reach): about
the largest change any cut of that bone could make.

Timing: the sampler's own stage timings, median over batches, after a warm-up,
the configurations taking turns batch by batch; the fracture stage next to the
render stage (the label crops the fractures need are gathered in the render
stage and timed apart here).

Fracture kinds on phantoms (forearm, wrist and hand phantoms, 1.5 mm, 112 mm crops): the same visibility per
fracture kind and severity, with the default kind redraws and without them (the share of first candidates
below ``kind_min_visibility``: the redraw rate), and the fracture stage's cost next to the render.

Run: ``.venv/bin/python benchmarks/fractures.py [--quick] [--phantoms-only] [--batches N] [--output DIR]
[--markdown FILE]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import _busy_cpu_seconds, describe_machine, machine_info, markdown_table, summarize, write_markdown_section  # noqa: E402

BATCH, VIEWS, SIZE, CROP_MM, SPACING_MM, SEED = 16, 2, 128, 120.0, 1.0, 0
PHANTOM_SEEDS, PHANTOM_SPACING_MM, PHANTOM_CROP_MM = 8, 1.5, 112.0
BONE_GROUPS = ("rib", "vertebrae", "scapula", "clavicula", "sternum", "humerus")


def _load_meter() -> tuple[float | None, float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return _busy_cpu_seconds(), usage.ru_utime + usage.ru_stime, time.perf_counter()


def _others_cores(start: tuple[float | None, float, float]) -> float | None:
    """Mean cores other processes kept busy since ``start`` (:func:`_load_meter`)."""
    busy, own, wall = _load_meter()
    if busy is None or start[0] is None:
        return None
    return max(0.0, (busy - start[0]) - (own - start[1])) / max(wall - start[2], 1e-9)


def make_sampler(config, *, quick: bool, display: str = "minmax", phantoms: bool = False):
    import onthefly as otf

    if phantoms:  # the fracture_table3 example's phantom set-up: 1.5 mm, 112 mm crops
        seeds = range(2) if quick else range(PHANTOM_SEEDS)
        return otf.DRRCorrespondenceSampler(
            volumes=otf.PhantomSource(regions=("forearm", "wrist", "hand"), seeds=seeds), views=VIEWS,
            image_size=64 if quick else SIZE, patch_size=16, crop_size=PHANTOM_CROP_MM,
            spacing=3.0 if quick else PHANTOM_SPACING_MM, batch_size=4 if quick else BATCH, augmentation=None,
            correspondence=False, return_volume=True, fractures=config, display=display, seed=SEED,
            min_tissue_fraction=0.05,
        )
    return otf.DRRCorrespondenceSampler(
        volumes=[otf.example_volume()], views=VIEWS, image_size=64 if quick else SIZE, patch_size=16,
        crop_size=60.0 if quick else CROP_MM, spacing=3.0 if quick else SPACING_MM, batch_size=4 if quick else BATCH,
        augmentation=None, correspondence=False, return_volume=True, fractures=config, display=display, seed=SEED,
    )


def _bone_group(sampler, batch, sample: int) -> str:
    """The bone group (``BONE_GROUPS``) of a sample's bone point, from the store's label names."""
    import torch

    store = sampler.store
    volume = int(batch.volume_index[sample])
    names = store.label_names[volume] or {}
    point = torch.cat([batch.fracture_center[sample].double().cpu(), torch.ones(1, dtype=torch.float64)])
    index = torch.linalg.solve(store.affines[volume], point)[:3].round().long()
    labels = store.crops(batch.volume_index[sample : sample + 1].cpu(), index[None], (1, 1, 1), labels=True)[1]
    name = names.get(int(labels.flatten()[0]), "") if labels is not None else ""
    return next((group for group in BONE_GROUPS if name.startswith(group)), "other")


def visibility_run(config, *, batches: int, quick: bool, display: str = "minmax", phantoms: bool = False) -> dict:
    """Exact display changes and recorded visibilities of ``batches`` batches of fractured samples (with phantoms:
    per sample its kind, severity and whether a redraw replaced its first fracture)."""
    import torch

    import onthefly as otf
    from onthefly.fractures import SEVERITY_NAMES

    sampler = make_sampler(config, quick=quick, display=display, phantoms=phantoms)
    show = sampler.config.display
    names = sampler.config.fractures.kind_names
    exact, recorded, groups, invisible, kinds, severities = [], [], [], 0, [], []
    for step in range(batches):
        batch = sampler.sample(step)
        crops, _ = sampler.store.crops(batch.volume_index.cpu(), batch.crop_start.cpu(), sampler.config.crop_voxels())
        intact = otf.render(otf.VolumeBatch(attenuation=crops[:, None], affine=batch.crop_affine), batch.carm)
        shown = show(intact, pixel_spacing=sampler.config.pixel_spacing)
        change = (batch.images - shown).abs().flatten(2).amax(-1)  # (B, V)
        for sample in torch.nonzero(batch.fracture)[:, 0].tolist():
            exact.append(change[sample].tolist())
            recorded.append(batch.fracture_visibility[sample].tolist())
            if phantoms:
                kind, severity = int(batch.fracture_kind[sample]), int(batch.fracture_severity[sample])
                kinds.append(names[kind] if kind >= 0 else "generic")
                severities.append(SEVERITY_NAMES[severity] if severity >= 0 else "-")
            else:
                groups.append(_bone_group(sampler, batch, sample))
        invisible += int(batch.fracture_invisible.sum())
    return {"exact": exact, "recorded": recorded, "groups": groups, "invisible": invisible, "kinds": kinds,
            "severities": severities}


def timing_runs(configs: dict, *, batches: int, quick: bool, display: str = "minmax", phantoms: bool = False,
                warmup: int = 1) -> dict:
    """The samplers' stage times (s) per batch, and the label crops' gathering time apart; the configurations take
    turns batch by batch, so that other processes' load falls on all of them alike. ``warmup`` batches first (with
    phantoms: enough that every phantom is generated and its bone geometry made before the timed batches)."""
    samplers = {name: make_sampler(config, quick=quick, display=display, phantoms=phantoms)
                for name, config in configs.items()}
    runs = {name: {"splits": [], "label_crops_s": []} for name in configs}
    for sampler in samplers.values():
        for step in range(warmup):
            sampler.sample(10_000 + step)  # warm-up batches, apart from the timed steps
    for step in range(1, batches + 1):
        for name, sampler in samplers.items():
            timings: dict[str, float] = {}
            batch = sampler.sample(step, timings=timings)
            runs[name]["splits"].append(timings)
            arguments = (batch.params.volume_index, batch.params.crop_start, sampler.config.crop_voxels())
            begin = time.perf_counter()
            sampler.store.crops(*arguments, labels=True)
            with_labels = time.perf_counter() - begin
            begin = time.perf_counter()
            sampler.store.crops(*arguments)
            runs[name]["label_crops_s"].append(max(0.0, with_labels - (time.perf_counter() - begin)))
    return runs


def _best_view(rows: list[list[float]]) -> list[float]:
    return [max(row) for row in rows]


def _share(values: list[float], threshold: float) -> float:
    return sum(v >= threshold for v in values) / max(len(values), 1)


def visibility_rows(runs: dict) -> list[list[str]]:
    rows = []
    for name, run in runs.items():
        best = _best_view(run["exact"])
        if not best:  # no sample of these batches had bone to fracture (tiny quick crops)
            rows.append([name, "0"] + ["—"] * 6 + [str(run["invisible"])])
            continue
        quartiles = summarize(best)
        ratios = [r / e for er, rr in zip(run["exact"], run["recorded"]) for e, r in zip(er, rr) if e > 0.01]
        rows.append([
            name, str(len(best)), f"{quartiles['median']:.3f}", f"{quartiles['q1']:.3f}-{quartiles['q3']:.3f}",
            f"{100 * _share(best, 0.1):.0f} %", f"{100 * _share(best, 0.05):.0f} %", f"{100 * _share(best, 0.02):.0f} %",
            f"{statistics.median(ratios):.3f}" if ratios else "—", str(run["invisible"]),
        ])
    return rows


def group_rows(run: dict) -> list[list[str]]:
    best = _best_view(run["exact"])
    rows = []
    for group in (*BONE_GROUPS, "other"):
        values = [b for b, g in zip(best, run["groups"]) if g == group]
        if values:
            rows.append([group, str(len(values)), f"{statistics.median(values):.3f}", f"{100 * _share(values, 0.1):.0f} %",
                         f"{100 * _share(values, 0.05):.0f} %"])
    return rows


def kind_rows(run: dict, *, by_severity: bool) -> list[list[str]]:
    """Per kind (and severity): samples, median best-view change, shares >= 0.1 and >= 0.05."""
    best = _best_view(run["exact"])
    keys = [(k, v) if by_severity else (k,) for k, v in zip(run["kinds"], run["severities"])]
    rows = []
    for key in sorted(set(keys), key=lambda item: (item[0] == "generic", item)):
        values = [b for b, other in zip(best, keys) if other == key]
        rows.append([*key, str(len(values)), f"{statistics.median(values):.3f}", f"{100 * _share(values, 0.1):.0f} %",
                     f"{100 * _share(values, 0.05):.0f} %"])
    return rows


def severity_rows(run: dict) -> list[list[str]]:
    best = _best_view(run["exact"])
    rows = []
    for severity in sorted(set(run["severities"])):
        values = [b for b, other in zip(best, run["severities"]) if other == severity]
        rows.append([severity, str(len(values)), f"{statistics.median(values):.3f}",
                     f"{100 * _share(values, 0.1):.0f} %", f"{100 * _share(values, 0.05):.0f} %"])
    return rows


PHANTOM_DISPLAY = "radiograph"
"""The display of the phantom rows: the sampler's default."""


def phantom_section(args, default) -> tuple[dict, str]:
    """Fracture kinds on phantoms: visibility per kind and severity, redraws, cost; and the Markdown section."""
    batches = 1 if args.quick else args.phantom_batches
    visibility = {
        "defaults": visibility_run(replace(default, probability=1.0), batches=batches, quick=args.quick,
                                   phantoms=True, display=PHANTOM_DISPLAY),
        "no redraws (kind_min_visibility=0)": visibility_run(replace(default, probability=1.0, kind_min_visibility=0.0),
                                                            batches=batches, quick=args.quick, phantoms=True,
                                                            display=PHANTOM_DISPLAY),
    }
    timing = timing_runs({"phantoms, defaults (probability 0.5)": default}, batches=2 if args.quick else
                         args.timing_batches, quick=args.quick, phantoms=True, warmup=1 if args.quick else 8,
                         display=PHANTOM_DISPLAY)
    first = visibility["no redraws (kind_min_visibility=0)"]
    kind_first = [r for r, k in zip(first["recorded"], first["kinds"]) if k != "generic"]
    below = sum(max(r) < default.kind_min_visibility for r in kind_first) / max(len(kind_first), 1)
    run = visibility["defaults"]
    fractured = len(run["exact"])
    redraw = {"first_below": below, "flagged_invisible": run["invisible"] / max(fractured, 1)}
    overall = markdown_table(
        ["fractures", "samples", "median", "quartiles", ">= 0.1", ">= 0.05", ">= 0.02", "recorded / exact",
         "flagged invisible"], visibility_rows(visibility), align=["l"] + ["r"] * 8)
    per_kind = markdown_table(["kind (defaults)", "samples", "median", ">= 0.1", ">= 0.05"],
                              kind_rows(run, by_severity=False), align=["l"] + ["r"] * 4)
    per_severity = markdown_table(["severity (defaults)", "samples", "median", ">= 0.1", ">= 0.05"],
                                  severity_rows(run), align=["l"] + ["r"] * 4)
    per_both = markdown_table(["kind", "severity", "samples", "median", ">= 0.1", ">= 0.05"],
                              kind_rows(run, by_severity=True), align=["l", "l"] + ["r"] * 4)
    first_kind = markdown_table(["kind (no redraws)", "samples", "median", ">= 0.1", ">= 0.05"],
                                kind_rows(first, by_severity=False), align=["l"] + ["r"] * 4)
    time_table = markdown_table(["fractures", "batches", "render s", "label crops s", "fracture stage s",
                                 "fractures / render"], timing_rows(timing), align=["l"] + ["r"] * 5)
    print(overall, per_kind, per_severity, per_both, first_kind, time_table, sep="\n\n")
    body = "\n".join([
        "## Fracture kinds on phantoms (`benchmarks/fractures.py`)",
        "",
        f"Command: `.venv/bin/python benchmarks/fractures.py` (this section alone: `--phantoms-only`). Phantoms "
        f"of the forearm, wrist and hand, seeds 0-{PHANTOM_SEEDS - 1} of each, at {PHANTOM_SPACING_MM:g} mm, "
        f"{PHANTOM_CROP_MM:g} mm crops, B = {BATCH}, V = {VIEWS}, {SIZE} x {SIZE}, {PHANTOM_DISPLAY} display (the "
        "sampler's default), no augmentation, "
        f"default `FractureConfig` (kinds and severities of `onthefly.fractures.kinds`, `kind_min_visibility=0.1`, "
        f"4 redraws; `probability=1` for the visibility rows), seed {SEED}. Visibility: the largest change of the "
        "display image between the fractured batch and the intact crops rendered with the same cameras, best view "
        "per sample (the paired render); `generic`: crops holding no kind's site (the bone-point fracture).",
        "",
        overall,
        "",
        per_kind,
        "",
        per_severity,
        "",
        per_both,
        "",
        first_kind,
        "",
        f"Redraws: {100 * redraw['first_below']:.0f} % of the kind fractures' first candidates fall below "
        f"`kind_min_visibility` = {default.kind_min_visibility:g} (recorded visibility, no-redraw run) and are "
        f"redrawn at another place of the same kind's site; {100 * redraw['flagged_invisible']:.0f} % of the "
        "fractured samples stay below it after 4 redraws (flagged `fracture_invisible`).",
        "",
        time_table,
        "",
        "`fractures / render` = (fracture stage + label crops) / (render stage without the label crops), after "
        "warm-up batches that generate every phantom and make its bone geometry (made once per CT).",
    ])
    return {"visibility": visibility, "timing": timing, "redraw": redraw}, body


def timing_rows(runs: dict) -> list[list[str]]:
    rows = []
    for name, run in runs.items():
        render = statistics.median(split["render"] for split in run["splits"])
        labels = statistics.median(run["label_crops_s"])
        fractures = statistics.median(split["fractures"] for split in run["splits"])
        share = (fractures + labels) / max(render - labels, 1e-9)
        rows.append([name, str(len(run["splits"])), f"{render - labels:.3f}", f"{labels:.3f}", f"{fractures:.3f}",
                     f"{100 * share:.0f} %"])
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (never touches RESULTS.md)")
    parser.add_argument("--batches", type=int, default=8, help="batches per visibility row (B = 16 each)")
    parser.add_argument("--timing-batches", type=int, default=8, help="timed batches per timing row")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results"), help="folder for the JSON")
    parser.add_argument("--markdown", help="also write the section into this Markdown file (default: RESULTS.md "
                                           "on a full run)")
    parser.add_argument("--phantom-batches", type=int, default=8, help="batches per phantom visibility row")
    parser.add_argument("--phantoms-only", action="store_true", help="only the fracture kinds on phantoms")
    args = parser.parse_args(argv)
    import torch

    from onthefly.fractures import FractureConfig

    batches = 1 if args.quick else args.batches
    timed = 2 if args.quick else args.timing_batches
    default = FractureConfig()
    markdown = args.markdown or (None if args.quick else str(Path(__file__).parent / "RESULTS.md"))
    meter = _load_meter()
    phantoms, phantom_body = phantom_section(args, default)
    others = _others_cores(meter)
    info = machine_info()
    phantom_body = phantom_body.replace("## Fracture kinds on phantoms (`benchmarks/fractures.py`)\n", (
        "## Fracture kinds on phantoms (`benchmarks/fractures.py`)\n\n"
        f"Machine: {describe_machine(info)}; other processes kept {others or 0:.2f} cores busy on average during the "
        "run (timings taken while others computed are indicative).\n"), 1)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / ("fracture-kinds-quick.json" if args.quick else "fracture-kinds.json")).write_text(
        json.dumps({"machine": info, "others_cpu_cores": others} | phantoms, indent=1))
    if markdown:
        write_markdown_section(Path(markdown), "fracture-kinds", phantom_body)
    if args.phantoms_only:
        return phantoms
    meter = _load_meter()
    visibility = {
        "default": visibility_run(replace(default, probability=1.0), batches=batches, quick=args.quick),
        "min_visibility 0.05, 4 redraws": visibility_run(
            replace(default, probability=1.0, min_visibility=0.05, max_redraws=4), batches=batches, quick=args.quick),
        "radiograph display": visibility_run(replace(default, probability=1.0), batches=batches, quick=args.quick,
                                             display="radiograph"),
        "radiograph display, min_visibility 0.1, 8 redraws": visibility_run(
            replace(default, probability=1.0, min_visibility=0.1, max_redraws=8), batches=batches, quick=args.quick,
            display="radiograph"),
        "reference: half the bone piece removed": visibility_run(
            replace(default, probability=1.0, translation=0.0, angulation=0.0, comminuted_probability=0.0,
                    gap=default.reach), batches=batches, quick=args.quick),
    }
    timing = timing_runs({
        "default (probability 0.5)": default,
        "probability 1": replace(default, probability=1.0),
        "probability 1, min_visibility 0.05": replace(default, probability=1.0, min_visibility=0.05),
    }, batches=timed, quick=args.quick)
    timing |= timing_runs({
        "probability 1, radiograph display, min_visibility 0.1, 8 redraws": replace(
            default, probability=1.0, min_visibility=0.1, max_redraws=8),
    }, batches=timed, quick=args.quick, display="radiograph")
    others = _others_cores(meter)
    info = machine_info()
    result = {"machine": info, "others_cpu_cores": others, "visibility": visibility, "timing": timing,
              "settings": dict(batch=BATCH, views=VIEWS, size=SIZE, crop_mm=CROP_MM, spacing_mm=SPACING_MM, seed=SEED,
                               config=repr(default), torch_threads=torch.get_num_threads())}
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / ("fractures-quick.json" if args.quick else "fractures.json")).write_text(json.dumps(result, indent=1))

    vis_table = markdown_table(
        ["fractures", "samples", "median", "quartiles", ">= 0.1", ">= 0.05", ">= 0.02", "recorded / exact",
         "flagged invisible"], visibility_rows(visibility), align=["l"] + ["r"] * 8)
    group_table = markdown_table(["bone (default)", "samples", "median", ">= 0.1", ">= 0.05"],
                                 group_rows(visibility["default"]), align=["l", "r", "r", "r", "r"])
    radiograph_groups = markdown_table(["bone (radiograph display)", "samples", "median", ">= 0.1", ">= 0.05"],
                                       group_rows(visibility["radiograph display"]), align=["l", "r", "r", "r", "r"])
    time_table = markdown_table(["fractures", "batches", "render s", "label crops s", "fracture stage s",
                                 "fractures / render"], timing_rows(timing), align=["l"] + ["r"] * 5)
    print(vis_table, group_table, radiograph_groups, time_table, sep="\n\n")
    body = "\n".join([
        "## Fractures (`benchmarks/fractures.py`)",
        "",
        f"Machine: {describe_machine(info)}; other processes kept {others or 0:.2f} cores busy on average "
        "during the run (timings taken while others computed are indicative).",
        "",
        f"Command: `.venv/bin/python benchmarks/fractures.py`. Bundled CT at {SPACING_MM:g} mm, {CROP_MM:g} mm crops, "
        f"B = {BATCH}, V = {VIEWS}, {SIZE} x {SIZE}, no augmentation, default `FractureConfig` (seed {SEED}). "
        "Visibility: largest change of the display image between fractured and intact renders of the same crop and "
        "cameras, best view per sample; `recorded / exact`: median ratio of `batch.fracture_visibility` to that "
        "change (views changing by more than 0.01). Rows `radiograph display`: the sampler's "
        "`display=\"radiograph\"` (local contrast above a 5 mm Gaussian, a fifth of the background kept, 2 % of the "
        "pixels saturated at each end; `onthefly.display`), the display change measured through that display.",
        "",
        vis_table,
        "",
        group_table,
        "",
        radiograph_groups,
        "",
        time_table,
        "",
        "`fractures / render` = (fracture stage + label crops) / (render stage without the label crops).",
    ])
    if markdown:
        write_markdown_section(Path(markdown), "fractures", body)
    return result


if __name__ == "__main__":
    main()
