"""Correspondence matrices per second and peak memory on the bundled CT.

B = 16 samples, V = 2 and 4 views, 256 x 256 detector (2 mm pixels),
patch_size = 16, random poses (alpha uniform, beta in +-0.3 rad, sid 800-900 mm,
sdd 1020 mm; seed pinned). Two scenes:

* ``shared CT``: all 16 samples view the whole bundled CT (one volume, its
  weighting and pooling are shared by the batch);
* ``16 crops``: each sample has its own 200 mm cube cropped from the CT at a
  random centre (the sampler's situation: nothing shared).

Two ways to get the matrices are timed: from the volumes (``patch_correspondence``
on the crops: weighs and pools every voxel, each call), and from summed-volume
tables (``WeightIntegral``, built once per CT; each call pools the crop boxes
with eight reads per coarse voxel, then computes the footprints): the
sampler's path. Both are reported next to the time of rendering the same views
with ``render`` (their ratio is the overhead the supervision adds to the
stream). The seed method's offline generator (one CPU
projector call per coarse voxel) took 5.8 s per pair on this machine, the
figure quoted by the issue; it is not re-run here.

Footprints: exact by default (closed form, :mod:`onthefly.footprints`); the
sampler's path is also timed with the sampled 2-ray footprints it used before.
An accuracy table compares the sampled footprints (m = 2, 4, 8, 16 rays per
patch side), the exact ones and their separable approximation with a
64 x 64-ray reference on sampler-like crops (200 mm of the bundled CT filling
a 256 x 256 detector, B = 2, V = 2, patch 16): IoU of ``C >= 0.5``,
correlation, largest difference, time.

The tables above use 2 mm pixels, on which a 200 mm crop fills half the
detector and has few coarse voxels (about 8^3). The sampler fills the detector
with its crop (about 1 mm pixels, 19^3 coarse voxels per sample), so its
correspondence stage is timed as well: ``DRRCorrespondenceSampler`` defaults
on the bundled CT (B = 16, V = 2, 256 x 256, patch 16), the median stage
times of 5 batches after a warm-up, for each footprint method.

Run: ``.venv/bin/python benchmarks/correspondence.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    MemoryProbe,
    describe_machine,
    machine_info,
    markdown_table,
    summarize,
    time_calls,
    write_markdown_section,
)

import onthefly as otf  # noqa: E402
from onthefly.correspondence import WeightIntegral  # noqa: E402

BATCH, DETECTOR, PIXEL_SPACING, PATCH, SDD, CROP_MM, SEED = 16, 256, 2.0, 16, 1020.0, 200.0, 0


def draw_carm(views: int, batch: int, generator: torch.Generator, detector: int) -> otf.CArm:
    alpha = torch.rand(batch, views, generator=generator) * 2 * math.pi
    beta = (torch.rand(batch, views, generator=generator) - 0.5) * 0.6
    sid = 800.0 + 100.0 * torch.rand(batch, 1, generator=generator)
    return otf.CArm(alpha=alpha, beta=beta, sid=sid, sdd=SDD, height=detector, pixel_spacing=PIXEL_SPACING * 256 / detector)


def draw_crops(ct: otf.Volume, batch: int, generator: torch.Generator) -> tuple[otf.VolumeBatch, torch.Tensor]:
    """16 random crops, and their ``(B, 2, 3)`` voxel boxes ``[start, stop)`` in the CT."""
    half_extent = (torch.tensor(ct.shape, dtype=torch.float64) * ct.spacing) / 2 - CROP_MM / 2
    crops, boxes = [], []
    to_index = torch.linalg.inv(ct.affine)
    for _ in range(batch):
        offset = (torch.rand(3, generator=generator, dtype=torch.float64) * 2 - 1) * half_extent.clamp_min(0)
        crop = ct.crop_mm(ct.center + offset, CROP_MM)
        start = torch.round(to_index[:3, :3] @ crop.affine[:3, 3] + to_index[:3, 3]).long()
        crops.append(crop)
        boxes.append(torch.stack([start, start + torch.tensor(crop.shape)]))
    return otf.VolumeBatch.from_volumes(crops), torch.stack(boxes)


def measure(scene: str, views: int, ct: otf.Volume, quick: bool) -> dict:
    generator = torch.Generator().manual_seed(SEED + views)
    detector = 64 if quick else DETECTOR
    batch = 2 if quick else BATCH
    if scene == "shared CT":
        volumes = otf.VolumeBatch.from_volumes([ct])
        boxes = torch.stack([torch.zeros(3, dtype=torch.long), torch.tensor(ct.shape)])[None].expand(batch, 2, 3)
    else:
        volumes, boxes = draw_crops(ct, batch, generator)
    carm = draw_carm(views, batch, generator, detector)
    probe = MemoryProbe()
    probe.mark_loaded()
    budget = 2.0 if quick else 20.0
    corr_times, matrix = time_calls(lambda: otf.patch_correspondence(volumes, carm, patch_size=PATCH), budget_s=budget)
    memory = probe.report()
    table_times, table = time_calls(lambda: WeightIntegral(ct), warmup=0, min_repeats=1, max_repeats=1, budget_s=0.0)
    backprojected = (PATCH * carm.pixel_spacing * carm.sid / carm.sdd).amin(1).double()
    factor = torch.clamp(torch.round(backprojected[:, None] / ct.spacing), min=1).long()
    index = torch.zeros(batch, dtype=torch.long)

    def from_tables() -> torch.Tensor:
        pooled = table.pool(index, boxes[:, 0], boxes[:, 1], factor)
        return otf.patch_correspondence(pooled, carm, patch_size=PATCH)

    fast_times, fast_matrix = time_calls(from_tables, budget_s=budget)

    def from_tables_two_rays() -> torch.Tensor:
        pooled = table.pool(index, boxes[:, 0], boxes[:, 1], factor)
        return otf.patch_correspondence(pooled, carm, patch_size=PATCH, rays_per_patch=2)

    two_ray_times, _ = time_calls(from_tables_two_rays, budget_s=budget)
    render_times, _ = time_calls(lambda: otf.render(volumes, carm), budget_s=budget, max_repeats=5)
    corr, fast, rend = summarize(corr_times), summarize(fast_times), summarize(render_times)
    pairs = batch * views * (views - 1) / 2
    return {
        "scene": scene,
        "views": views,
        "batch": batch,
        "detector": detector,
        "matrix_shape": list(matrix.shape),
        "nonzero_fraction": float((matrix > 0).float().mean()),
        "correspondence_s": corr,
        "from_tables_s": fast,
        "from_tables_two_rays_s": summarize(two_ray_times),
        "table_build_s": table_times[0],
        "render_s": rend,
        "matrices_per_s": batch / corr["median"],
        "matrices_per_s_from_tables": batch / fast["median"],
        "ms_per_pair": 1000 * corr["median"] / pairs,
        "ms_per_pair_from_tables": 1000 * fast["median"] / pairs,
        "fraction_of_render": corr["median"] / rend["median"],
        "fraction_of_render_from_tables": fast["median"] / rend["median"],
        "max_difference_tables_vs_volumes": float((fast_matrix - matrix).abs().max()),
        "memory": memory,
    }


def _centres(volumes: otf.VolumeBatch) -> torch.Tensor:
    """``(B, 3)`` world mm of each crop's centre."""
    middle = (torch.tensor(volumes.shape, dtype=torch.float64) - 1) / 2
    return (volumes.affine[:, :3, :3] @ middle + volumes.affine[:, :3, 3]).float()


def accuracy(ct: otf.Volume, quick: bool) -> list[dict]:
    """Sampled (m = 2..16) and exact footprints against 64 x 64 rays per patch, on sampler-like crops."""
    generator = torch.Generator().manual_seed(4)
    batch, detector = (1, 64) if quick else (2, DETECTOR)
    volumes, boxes = draw_crops(ct, batch, generator)
    sid, sdd = 850.0, 1020.0
    pixel = CROP_MM * sdd / sid / detector  # the crop spans the detector, as in the sampler
    carm = otf.CArm(alpha=torch.rand(batch, 2, generator=generator) * 2 * math.pi,
                    beta=(torch.rand(batch, 2, generator=generator) - 0.5) * 0.5, sid=sid, sdd=sdd,
                    isocenter=_centres(volumes)[:, None, :], height=detector, pixel_spacing=pixel)
    table = WeightIntegral(ct)
    factor = torch.clamp(torch.round(PATCH * pixel * sid / sdd / ct.spacing), min=1).long().expand(batch, 3)
    pooled = table.pool(torch.zeros(batch, dtype=torch.long), boxes[:, 0], boxes[:, 1], factor)

    def matrix(rays, warm: bool = True):
        footprint = dict(footprint="separable") if rays == "separable" else dict(rays_per_patch=rays)

        def call():
            return otf.patch_correspondence(pooled, carm, patch_size=PATCH, memory_budget=2**30, **footprint)

        times, result = time_calls(call, warmup=int(warm), min_repeats=1, max_repeats=1, budget_s=0.0)
        return result, times[0]

    reference, reference_s = matrix(16 if quick else 64, warm=False)
    rows = []
    for rays in (2, 4, 8, 16, None, "separable"):
        result, seconds = matrix(rays)
        strong, truth = result >= 0.5, reference >= 0.5
        union = (strong | truth).sum().clamp_min(1)
        flat = torch.stack([result.flatten(), reference.flatten()])
        name = {None: "exact", "separable": "separable"}.get(rays, f"{rays} x {rays} rays")
        rows.append({"footprints": name, "rays_per_patch": rays,
                     "iou": float((strong & truth).sum() / union), "correlation": float(torch.corrcoef(flat)[0, 1]),
                     "max_difference": float((result - reference).abs().max()), "seconds": seconds,
                     "reference_rays": 16 if quick else 64, "reference_s": reference_s, "batch": batch})
    return rows


SAMPLER_FOOTPRINTS = {"exact": {}, "separable": {"footprint": "separable"}, "2 x 2 rays": {"rays_per_patch": 2}}


def sampler_stages(ct: otf.Volume, quick: bool) -> list[dict]:
    """The sampler's correspondence and render stage times (medians of 5 batches) per footprint method."""
    rows = []
    for name, option in SAMPLER_FOOTPRINTS.items():
        sampler = otf.DRRCorrespondenceSampler(
            volumes=[ct], views=2, image_size=64 if quick else DETECTOR, patch_size=PATCH,
            batch_size=2 if quick else BATCH, seed=SEED, **option)
        sampler.sample(0)  # warm-up
        stages = []
        for step in range(1, 6):
            timings: dict[str, float] = {}
            sampler.sample(step, timings=timings)
            stages.append(timings)
        correspondence = summarize([t["correspondence"] for t in stages])
        render = summarize([t["render"] for t in stages])
        rows.append({"footprints": name, "correspondence_s": correspondence, "render_s": render,
                     "fraction_of_render": correspondence["median"] / render["median"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests; writes nothing to RESULTS.md")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "correspondence.json")
    args = parser.parse_args()
    ct = otf.example_volume(labels=False)
    rows = [measure(scene, views, ct, args.quick) for scene in ("shared CT", "16 crops") for views in (2, 4)]
    accuracy_rows = accuracy(ct, args.quick)
    sampler_rows = sampler_stages(otf.example_volume(), args.quick)
    info = machine_info()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": info, "results": rows, "accuracy": accuracy_rows,
                                       "sampler": sampler_rows}, indent=2))
    two_rays = next(r for r in sampler_rows if r["footprints"] == "2 x 2 rays")["correspondence_s"]["median"]
    sampler_table = markdown_table(
        ["footprints", "correspondence s / batch", "render s / batch", "correspondence / render", "time / 2-ray path"],
        [[r["footprints"], f"{r['correspondence_s']['median']:.3f}", f"{r['render_s']['median']:.2f}",
          f"{100 * r['fraction_of_render']:.1f} %", f"{r['correspondence_s']['median'] / two_rays:.2f}x"]
         for r in sampler_rows],
        align=["l", "r", "r", "r", "r"],
    )
    accuracy_table = markdown_table(
        ["footprints", f"IoU of C >= 0.5 with {accuracy_rows[0]['reference_rays']} x {accuracy_rows[0]['reference_rays']} rays",
         "correlation", "largest difference", "time s"],
        [[r["footprints"], f"{r['iou']:.3f}", f"{r['correlation']:.4f}", f"{r['max_difference']:.3f}",
          f"{r['seconds']:.2f}"] for r in accuracy_rows],
        align=["l", "r", "r", "r", "r"],
    )
    table = markdown_table(
        ["scene", "V", "matrices/s (tables)", "ms / view pair (tables)", "ms / view pair (tables, 2 rays)",
         "ms / view pair (volumes)", "render s",
         "correspondence / render (tables)", "correspondence / render (volumes)", "peak RSS above load GB (volumes)"],
        [
            [
                r["scene"], str(r["views"]), f"{r['matrices_per_s_from_tables']:.0f}",
                f"{r['ms_per_pair_from_tables']:.2f}",
                f"{1000 * r['from_tables_two_rays_s']['median'] / (r['batch'] * r['views'] * (r['views'] - 1) / 2):.2f}",
                f"{r['ms_per_pair']:.1f}", f"{r['render_s']['median']:.2f}",
                f"{100 * r['fraction_of_render_from_tables']:.1f} %", f"{100 * r['fraction_of_render']:.1f} %",
                f"{(r['memory'].get('peak_above_load') or 0) / 2**30:.2f}",
            ]
            for r in rows
        ],
        align=["l", "r", "r", "r", "r", "r", "r", "r", "r", "r"],
    )
    print(table)
    print()
    print(accuracy_table)
    print()
    print(sampler_table)
    if args.quick:
        return
    pair = next(r for r in rows if r["scene"] == "16 crops" and r["views"] == 2)
    body = "\n".join([
        "## Correspondence matrices (`benchmarks/correspondence.py`)",
        "",
        f"Machine: {describe_machine(info)}.",
        "",
        f"Command: `.venv/bin/python benchmarks/correspondence.py`. B = {BATCH}, {DETECTOR} x {DETECTOR} detector, "
        f"patch_size = {PATCH} (N = 256 patches per view), random poses, seed {SEED}; median (min-max) of repeated calls.",
        "",
        table,
        "",
        accuracy_table,
        "",
        "\"tables\": pooled from summed-volume tables built once per CT "
        f"(build: {pair['table_build_s']:.1f} s for the bundled CT), the sampler's path; \"volumes\": "
        "`patch_correspondence` on the crops, weighing and pooling every voxel in each call. Both give the same "
        f"matrices (largest difference {max(r['max_difference_tables_vs_volumes'] for r in rows):.1e}).",
        "",
        "Targets (issue): one pair (V = 2) in under 50 ms; correspondence for a batch under 10 % of rendering it. "
        f"Measured with 16 crops, V = 2: {pair['ms_per_pair_from_tables']:.2f} ms per pair from tables "
        f"({100 * pair['fraction_of_render_from_tables']:.1f} % of rendering), {pair['ms_per_pair']:.1f} ms per pair "
        f"from volumes ({100 * pair['fraction_of_render']:.1f} % of rendering). The seed's offline generator: "
        "5.8 s per pair (quoted, not re-run).",
        "",
        "Footprints are exact (closed form) in every row but the \"2 rays\" column, the sampled footprints the "
        "sampler used before. The accuracy table compares them and the separable approximation "
        "(`footprint=\"separable\"`, the product of the exact footprint's marginals) with many rays per patch on "
        f"crops that fill the detector (B = {accuracy_rows[0]['batch']}, V = 2).",
        "",
        "The sampler's own stages (`DRRCorrespondenceSampler` defaults on the bundled CT, B = 16, V = 2, "
        "256 x 256, patch 16; its crops fill the detector: 19^3 coarse voxels per sample against about 8^3 in "
        "the tables above; medians of 5 batches):",
        "",
        sampler_table,
        "",
        "Targets (issue): IoU >= 0.97 against the 64-ray reference for the default; the sampler's correspondence "
        "time at most 1.5x the 2-ray path's and under 10 % of rendering.",
    ])
    write_markdown_section(Path(__file__).parent / "RESULTS.md", "correspondence", body)


if __name__ == "__main__":
    main()
