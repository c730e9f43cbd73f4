"""The hot path on an accelerator: DRRs per second, correspondence, a sampler batch and a training step.

One command, a few minutes on a GPU::

    python benchmarks/gpu.py                          # CUDA, full sizes (256 x 256 detector)
    python benchmarks/gpu.py --device cpu --quick     # smoke test at tiny sizes (well under a minute)

Rows (each: warm-up, then the median of timed calls, with device synchronisation):

* ``render {eager, compiled} {float32, bfloat16}`` at ``B x V`` = 1, 32 and 256
  views (V = 2 views per sample, except the single view), every sample its own
  crop of the bundled CT (200 mm at 1 mm voxels; ``--quick``: 24 mm at 6 mm).
  bfloat16 holds the volume in bfloat16 (half the memory and bandwidth); the
  geometry and the sums stay float32. Compiled rows also report the first
  call (the compilation).
* ``correspondence from tables``: pooled weights of the crops from
  summed-volume tables and exact footprints, eager and compiled (B = 16, V = 2).
* ``sampler batch`` and ``training step`` (the paper's model: ResNet-50-D
  trunk, 8 layers of d = 512; ``--quick``: the small backbone, 2 layers):
  run when the sampler and models import; otherwise the row is skipped with
  the reason.
* ``training, batch in the step`` and ``training, prefetched``: the same
  model trained on the sampler's stream (``train_batch`` samples per step),
  each batch made inside the step or by :class:`onthefly.Prefetcher` (depth 2:
  a side stream on a GPU): seconds per step, to set beside the sampler batch
  and the training step alone.

Eager rows run first, compiled rows last; a compiled row that would start
after ``--budget-s`` seconds is skipped (compiling is the slow part), so the
run fits a fixed allowance of device time. Each finished row is printed at
once and the JSON file (``--output``) is rewritten after every row, so a run
cut short keeps what it measured. Timings taken while other processes compute
are indicative only.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, markdown_table  # noqa: E402

import onthefly as otf  # noqa: E402
from onthefly.correspondence import WeightIntegral, patch_correspondence  # noqa: E402
from onthefly.footprints import footprint_window  # noqa: E402

FULL = dict(detector=256, pixel_spacing=0.95, crop_mm=200.0, spacing_mm=1.0, views=(1, 32, 256), patch=16,
            correspondence_batch=16, repeats=5, sampler_batch=16, train_batch=8)
NOT_COMPILED = "not compiled in a quick CPU run (compiling takes minutes there; pass --compile)"
QUICK = dict(detector=32, pixel_spacing=1.0, crop_mm=24.0, spacing_mm=6.0, views=(1, 4, 8), patch=8,
             correspondence_batch=2, repeats=2, sampler_batch=2, train_batch=2)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call, device: torch.device, repeats: int) -> tuple[float, float]:
    """``(first call, median of the next repeats)`` seconds."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def crops_and_cameras(ct: otf.Volume, batch: int, views: int, settings: dict, device: torch.device,
                      generator: torch.Generator):
    """``batch`` random crops (one per sample) as a VolumeBatch, their boxes, and a float32 C-arm ``(batch, views)``."""
    crop_voxels = torch.tensor([round(settings["crop_mm"] / settings["spacing_mm"])] * 3)
    room = torch.tensor(ct.shape) - crop_voxels + 1
    start = (torch.rand(batch, 3, generator=generator) * room).long()
    stop = start + crop_voxels
    index = [torch.arange(int(n)) for n in crop_voxels]
    attenuation = otf.hu_to_attenuation(ct.hu[0])
    crops = torch.stack([attenuation[s[0] + index[0]][:, s[1] + index[1]][:, :, s[2] + index[2]] for s in start])
    affines = ct.affine.expand(batch, 4, 4).clone()
    affines[:, :3, 3] = (start.double() @ ct.affine[:3, :3].T) + ct.affine[:3, 3]
    volume = otf.VolumeBatch(attenuation=crops[:, None].to(device), affine=affines.to(device))
    centre = (affines[:, :3, :3] @ ((crop_voxels.double() - 1) / 2)) + affines[:, :3, 3]
    carm = otf.CArm(alpha=torch.rand(batch, views, generator=generator) * 2 * math.pi,
                    beta=(torch.rand(batch, views, generator=generator) - 0.5) * 0.5,
                    sid=850.0, sdd=1050.0, isocenter=centre[:, None, :],
                    height=settings["detector"], pixel_spacing=settings["pixel_spacing"])
    return volume, start, stop, carm


class Report:
    """Rows as they finish: printed at once, the JSON file rewritten after each; compiled rows within a budget."""

    def __init__(self, output: Path, header: dict, budget_s: float, compile_rows: bool) -> None:
        self.output, self.header, self.budget_s, self.compile_rows = output, header, budget_s, compile_rows
        self.start = time.perf_counter()
        self.rows: list[dict] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def skip_compiled(self) -> str | None:
        """Why a compiled row is not measured, or ``None``."""
        if not self.compile_rows:
            return NOT_COMPILED
        if self.elapsed() > self.budget_s:
            return f"not compiled: {self.elapsed():.0f} s spent, past --budget-s {self.budget_s:g}"
        return None

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print(f"[{self.elapsed():6.1f} s] {format_row(row)}", flush=True)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        report = self.header | {"total_seconds": self.elapsed(), "rows": self.rows}
        self.output.write_text(json.dumps(report, indent=2) + "\n")


def format_row(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['name']}: skipped ({row['reason']})"
    rate = f", {row['drrs_per_second']:.4g} DRR/s" if "drrs_per_second" in row else ""
    size = row.get("views_total", row.get("batch", ""))
    first = "" if row["first_call_seconds"] is None else f" (first call {row['first_call_seconds']:.3g} s)"
    return f"{row['name']} [{size}]: {row['seconds']:.4g} s{first}{rate}"


def render_rows(ct, settings, device, report: Report, mode: str) -> None:
    # The same crops and cameras for eager and compiled rows; compiled rows run the largest batch first (the
    # DRR/s target's row), so a run cut short by --budget-s loses the small ones.
    generator = torch.Generator().manual_seed(0)
    drawn = {total: None for total in settings["views"]}
    for total in drawn:
        views = 1 if total == 1 else 2
        drawn[total] = crops_and_cameras(ct, total // views, views, settings, device, generator)
    for total in (sorted(drawn, reverse=True) if mode == "compiled" else drawn):
        volume, _, _, carm_host = drawn[total]
        carm = carm_host.to(device=device, dtype=torch.float32)
        for precision, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            name = f"render {mode} {precision}"
            reason = report.skip_compiled() if mode == "compiled" else None
            if reason is not None:
                report.add(skipped(name, reason, {"views_total": total}))
                continue
            batch = otf.VolumeBatch(attenuation=volume.attenuation.to(dtype), affine=volume.affine, validate=False)

            def call():
                with torch.no_grad():
                    return otf.render(batch, carm, compile=mode == "compiled")

            report.add(measure(name, call, device, settings["repeats"], drrs=total, extra={"views_total": total}))


def correspondence_rows(ct, settings, device, report: Report, mode: str) -> None:
    batch = settings["correspondence_batch"]
    generator = torch.Generator().manual_seed(1)
    _, start, stop, carm_host = crops_and_cameras(ct, batch, 2, settings, device, generator)
    table = WeightIntegral(ct, device=device)
    backprojected = settings["patch"] * settings["pixel_spacing"] * 850.0 / 1050.0
    factor = torch.clamp(torch.round(backprojected / ct.spacing), min=1).long().expand(batch, 3)
    grid = tuple((-(-(stop - start) // factor)).amax(0).tolist())
    index = torch.zeros(batch, dtype=torch.long)
    pooled = table.pool(index, start, stop, factor, grid_shape=grid)
    window = footprint_window(carm_host, pooled.affine, grid, settings["patch"])
    carm = carm_host.to(device=device, dtype=torch.float32)
    name = "correspondence from tables" + (" (compiled)" if mode == "compiled" else "")
    reason = report.skip_compiled() if mode == "compiled" else None
    if reason is not None:
        report.add(skipped(name, reason))
        return

    def call():
        coarse = table.pool(index, start, stop, factor, grid_shape=grid)
        return patch_correspondence(coarse, carm, patch_size=settings["patch"], window=window,
                                    compile=mode == "compiled")

    report.add(measure(name, call, device, settings["repeats"], extra={"batch": batch, "views": 2, "window": window}))


def make_sampler(ct, settings, device, batch_size: int):
    return otf.DRRCorrespondenceSampler(
        volumes=[ct], views=2, batch_size=batch_size, image_size=settings["detector"],
        patch_size=settings["patch"], crop_size=settings["crop_mm"], spacing=settings["spacing_mm"],
        device=device, min_tissue_fraction=0.0, min_projection_fraction=0.0,
    )


def sampler_rows(ct, settings, device, quick: bool, report: Report) -> None:
    try:
        sampler = make_sampler(ct, settings, device, settings["sampler_batch"])
    except (ImportError, AttributeError, TypeError, ValueError) as error:
        report.add(skipped("sampler batch", f"the sampler did not build here: {type(error).__name__}: {error}"))
        return
    steps = iter(range(10**6))
    report.add(measure("sampler batch", lambda: sampler.sample(next(steps)), device, settings["repeats"],
                       extra={"batch": settings["sampler_batch"], "views": 2}))
    try:
        from onthefly.models.correspondence import CorrespondenceConfig, CorrespondenceModel
    except ImportError as error:
        report.add(skipped("training step", f"the model does not import: {error}"))
        return
    config = CorrespondenceConfig(backbone="small", patch_size=settings["patch"], d_model=64, heads=4, layers=2,
                                  mlp=128) if quick else CorrespondenceConfig()
    model = CorrespondenceModel(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = sampler.sample(0)
    images = batch.images[: settings["train_batch"]]
    target = batch.correspondence[: settings["train_batch"]]

    def step(images=images, target=target):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(images).float(), target)
        loss.backward()
        optimizer.step()
        return loss.detach()

    model_name = "small" if quick else "paper (ResNet-50-D, 8 x 512)"
    report.add(measure("training step", step, device, settings["repeats"],
                       extra={"batch": settings["train_batch"], "model": model_name}))
    # The same steps on the stream: each batch made inside the step, then by the prefetcher.
    stream = make_sampler(ct, settings, device, settings["train_batch"])
    count = settings["repeats"] + 2

    def train(batches) -> float:
        """Seconds per step over the last ``count - 1`` of ``count`` steps (the first starts the stream)."""
        total = torch.zeros((), device=device)
        start = None
        for index, made in zip(range(count), batches):
            if index == 1:
                synchronize(device)
                start = time.perf_counter()
            total += step(made.images, made.correspondence)  # summed on the device: no host read per step
        synchronize(device)
        return (time.perf_counter() - start) / (count - 1)

    extra = {"batch": settings["train_batch"], "model": model_name, "steps": count - 1}
    for name, batches in (("training, batch in the step", lambda: (stream.sample(s) for s in range(10**6))),
                          ("training, prefetched", lambda: iter(otf.Prefetcher(stream, depth=2, start=0)))):
        try:
            seconds = train(batches())
        except (RuntimeError, torch.OutOfMemoryError) as error:
            report.add(skipped(name, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}", extra))
            continue
        report.add({"name": name, "status": "ok", "seconds": seconds, "first_call_seconds": None} | extra)


def measure(name: str, call, device, repeats: int, *, drrs: int | None = None, extra: dict | None = None) -> dict:
    try:
        first, seconds = timed(call, device, repeats)
    except (RuntimeError, torch.OutOfMemoryError) as error:  # e.g. a compiler missing, or out of memory
        return skipped(name, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}", extra)
    row = {"name": name, "status": "ok", "seconds": seconds, "first_call_seconds": first} | (extra or {})
    if drrs is not None:
        row["drrs_per_second"] = drrs / seconds
    return row


def skipped(name: str, reason: str, extra: dict | None = None) -> dict:
    return {"name": name, "status": "skipped", "reason": reason} | (extra or {})


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="measure the compiled rows (default: yes, except --quick on a CPU, where compiling "
                             "takes minutes)")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="skip the compiled rows that would start after this many seconds (default 300)")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu.json")
    args = parser.parse_args(argv)
    if not math.isfinite(args.budget_s) or args.budget_s < 0:
        parser.error(f"--budget-s: expected a number of seconds >= 0, got {args.budget_s}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here; run with --device cpu (and --quick for a smoke test)")
        return 2
    settings = QUICK if args.quick else FULL
    ct = otf.example_volume(labels=False).resample(settings["spacing_mm"])
    compile_rows = args.compile if args.compile is not None else not (args.quick and device.type == "cpu")
    header = {"machine": machine_info(), "device": str(device), "quick": args.quick, "settings": settings}
    if device.type == "cuda":
        header["gpu"] = torch.cuda.get_device_name(device)
    report = Report(args.output, header, args.budget_s, compile_rows)
    render_rows(ct, settings, device, report, "eager")
    correspondence_rows(ct, settings, device, report, "eager")
    sampler_rows(ct, settings, device, args.quick, report)
    render_rows(ct, settings, device, report, "compiled")
    correspondence_rows(ct, settings, device, report, "compiled")
    print()
    print(markdown_table(
        ["row", "views / batch", "median s", "first call s", "DRR/s", "note"],
        [[row["name"], str(row.get("views_total", row.get("batch", ""))),
          f"{row['seconds']:.4g}" if row["status"] == "ok" else "—",
          f"{row['first_call_seconds']:.3g}" if row.get("first_call_seconds") is not None else "—",
          f"{row['drrs_per_second']:.4g}" if "drrs_per_second" in row else "—",
          row.get("reason", "")] for row in report.rows],
        align=["l", "r", "r", "r", "r", "l"],
    ))
    print(f"total {report.elapsed():.1f} s; JSON: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
