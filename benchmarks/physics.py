"""The radiograph physics next to rendering: what spectrum, scatter, detector, noise and display cost per batch.

Set-up: the bundled chest CT resampled to 2 mm (one volume shared by the batch), B = 16, V = 2 views of
256 x 256 (random angles, seeded), 3 materials (air, soft tissue, bone), the default :class:`Physics`
(kV 50-120, 5 keV bins: 22 energy bins; scatter on, Gaussian noise, blur). Rows, all in one run:

* ``render``: the monochromatic line integrals (``onthefly.render``), the anchor;
* ``render_materials``: the three per-material line integrals in one projector pass;
* ``radiograph``: the physics alone, from per-material line integrals to displayed images;
* ``render_materials + radiograph``: the whole physics path.

Each row: one warm-up call, then the median and spread of 5 calls, the rows taking turns (eager, CPU
threads as torch sets them); wall-clock seconds and this process's CPU seconds (less sensitive to other work on
a shared machine).
Target: the physics (``radiograph``) at most 2x the monochromatic render.

Run: ``.venv/bin/python benchmarks/physics.py [--quick] [--output FILE]``; it writes
benchmarks/results/physics.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, describe_machine, machine_info, markdown_table, summarize  # noqa: E402

BATCH, VIEWS, SIZE, SPACING_MM, SEED = 16, 2, 256, 2.0, 0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="B = 4, 128 x 128, fewer repeats (a smoke run)")
    parser.add_argument("--output", default=str(RESULTS_DIR / "physics.json"), help="JSON results file")
    args = parser.parse_args(argv)

    import onthefly as otf
    from onthefly import physics

    batch, size = (4, 128) if args.quick else (BATCH, SIZE)
    repeats = 3 if args.quick else 5
    volume = otf.example_volume(labels=False).resample(SPACING_MM)
    generator = torch.Generator().manual_seed(SEED)
    alpha = (torch.rand(batch, VIEWS, generator=generator) - 0.5) * 3.14
    pixel_spacing = 435.0 / size
    carm = otf.CArm(alpha=alpha, beta=0.1, sid=1650.0, sdd=1800.0, height=size, pixel_spacing=pixel_spacing)
    batch_volume = otf.VolumeBatch.from_volumes([volume])
    config = physics.Physics()
    params = config.draw(batch, generator)

    with torch.no_grad():
        lines = physics.render_materials(batch_volume, carm)
        rows = {}
        calls = {
            "render": lambda: otf.render(batch_volume, carm),
            "render_materials": lambda: physics.render_materials(batch_volume, carm),
            "radiograph": lambda: physics.radiograph(lines, params, pixel_spacing=pixel_spacing),
            "render_materials + radiograph": lambda: physics.radiograph(
                physics.render_materials(batch_volume, carm), params, pixel_spacing=pixel_spacing),
        }
        times = {name: [] for name in calls}
        cpu_times = {name: [] for name in calls}
        for name, call in calls.items():  # warm-up
            call()
        for _ in range(repeats):  # rows take turns, so a disturbance of the shared machine hits them alike
            for name, call in calls.items():
                begin, begin_cpu = time.perf_counter(), time.process_time()
                call()
                times[name].append(time.perf_counter() - begin)
                cpu_times[name].append(time.process_time() - begin_cpu)
        for name in calls:
            rows[name] = {**summarize(times[name]), "cpu_seconds": summarize(cpu_times[name])}
            print(f"{name}: median {rows[name]['median']:.3f} s", flush=True)

    anchor = rows["render"]["median"]
    result = {
        "setup": {"batch": batch, "views": VIEWS, "size": size, "materials": list(config.materials),
                  "energy_bins": int(config.energies().shape[0]), "volume_spacing_mm": SPACING_MM,
                  "volume_shape": list(volume.shape), "quick": args.quick},
        "machine": machine_info(),
        "rows": {name: {**row, "relative_to_render": row["median"] / anchor} for name, row in rows.items()},
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    cpu_anchor = rows["render"]["cpu_seconds"]["median"]
    table = markdown_table(
        ["step (one batch)", "median s", "spread s (min-max)", "x render", "CPU s (median)", "x render (CPU)"],
        [[name, f"{row['median']:.3f}", f"{row['min']:.3f}-{row['max']:.3f}", f"{row['median'] / anchor:.2f}",
          f"{row['cpu_seconds']['median']:.2f}", f"{row['cpu_seconds']['median'] / cpu_anchor:.2f}"]
         for name, row in rows.items()],
        align=["l", "r", "r", "r", "r", "r"])
    print(f"\nB = {batch}, V = {VIEWS}, {size} x {size}, {len(config.materials)} materials, "
          f"{result['setup']['energy_bins']} energy bins; {describe_machine(result['machine'])}\n")
    print(table)
    print(f"\nwrote {output}")
    return result


if __name__ == "__main__":
    main()
