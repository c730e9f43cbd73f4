"""Projector throughput: DRRs per second, time per view, peak memory and error of :func:`~onthefly.render`.

The library side of ``onthefly benchmark``. It renders a CT (the bundled
chest CT, or any CT file) at fixed poses, ``V`` views at ``alpha = 2 pi k / V``
and ``beta = 0.2 sin(alpha)`` radians (no random draws), sid 850 mm, sdd
1020 mm, a detector of ``image_size`` pixels spanning 512 mm, and measures:

* **DRRs per second** and **milliseconds per view**: ``warmup`` untimed calls,
  then ``repeats`` timed calls (median, min and max); a call renders ``B x V``
  views (the device is synchronised before the clock stops);
* **peak memory of the process** while the row runs (resident set, the
  kernel's high-water mark reset before the row on Linux; otherwise the peak
  of the whole process so far) and, on CUDA, **of the device** (peak bytes
  allocated by torch);
* on request, the **error against the exact reference**: relative L1,
  ``sum |image - reference| / sum |reference|``, where the reference is
  onthefly's Siddon method (exact line integrals of the voxel grid) at the
  same poses, in float32 (float64 when the row renders in float64).

With ``batch = B > 1`` each sample is a different crop (``crop_size`` mm
cubes, centred in-plane and spread evenly along the patient's long axis), all
rendered in one call. The same rows for diffdrr (0.6.1, ``against=("diffdrr",)``)
render the same geometry: diffdrr's density is replaced by onthefly's
attenuation ``mu = 0.02 /mm (1 + HU / 1000)``, its pose is the ``euler_angles`` /
``ZXY`` pose with translation ``(0, sid, 0)`` and orientation ``"AP"`` (the
convention tests render both), and it renders the crops one after the other
(it takes one volume per call).

The reference scripts in ``benchmarks/`` measure each row in its own process;
here every row runs in this process, one after the other.
"""

from __future__ import annotations

import gc
import importlib.metadata
import inspect
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from ._checks import check_int, check_real
from .geometry import CArm
from .logs import Progress
from .projector import METHODS, render
from .volume import Volume, VolumeBatch, hu_to_attenuation

__all__ = ["AGAINST", "BenchmarkSettings", "DTYPES", "benchmark_carm", "benchmark_volumes", "compile_available",
           "format_report", "run_benchmark"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""``--dtype`` names: the dtype of the attenuation volume (and so of the rendering)."""
AGAINST = ("diffdrr",)
"""Libraries a benchmark can render the same rows with."""
FIELD_OF_VIEW_MM = 512.0
"""Detector width: 256 pixels of 2 mm, as in ``benchmarks/projector.py``."""
BETA_AMPLITUDE = 0.2
"""Secondary angles ``beta = BETA_AMPLITUDE * sin(alpha)``, radians."""
GB = 1e9

# diffdrr 0.6.1's memory per call, to skip rows that cannot fit (fitted to measured peaks at 256 x 256,
# see benchmarks/projector.py): about 34 bytes per ray per sample point (500 points) for trilinear and 41 bytes
# per ray per voxel plane for Siddon, on top of about 0.9 GB for the process.
_DIFFDRR_BASE_BYTES = 0.9 * GB
_DIFFDRR_TRILINEAR_BYTES_PER_RAY = 34 * 500
_DIFFDRR_SIDDON_BYTES_PER_RAY_PLANE = 41


@dataclass(frozen=True, kw_only=True)
class BenchmarkSettings:
    """What a benchmark renders and how it times it (keyword-only; checked at construction).

    Attributes:
        views: ``V`` views per sample.
        image_size: detector pixels per side.
        batch: ``B`` samples per call; above 1, each is a different ``crop_size`` mm crop.
        crop_size: edge of the crops, mm (with ``batch > 1``).
        method: ``"trilinear"`` or ``"siddon"``.
        dtype: a :data:`DTYPES` name.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        compile: ``render(..., compile=True)`` (where this version of ``render`` has it).
        repeats: timed calls; warmup: untimed calls before them.
        error: also render the exact reference and report the relative L1 against it.
        sid, sdd: source-to-isocenter and source-to-detector distances, mm.
    """

    views: int = 8
    image_size: int = 256
    batch: int = 1
    crop_size: float = 200.0
    method: str = "trilinear"
    dtype: str = "float32"
    device: str = "cpu"
    compile: bool = False
    repeats: int = 3
    warmup: int = 1
    error: bool = False
    sid: float = 850.0
    sdd: float = 1020.0

    def __post_init__(self) -> None:
        for name in ("views", "image_size", "batch", "repeats"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("warmup", self.warmup, minimum=0)
        for name in ("crop_size", "sid", "sdd"):
            check_real(name, getattr(self, name), low=0.0)
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive length in mm, got {getattr(self, name)}")
        if self.sdd <= self.sid:
            raise ValueError(f"sdd: expected more than sid ({self.sid} mm), got {self.sdd} mm")
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {list(METHODS)}, got {self.method!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {self.dtype!r}")
        for name in ("compile", "error"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device: expected cpu, cuda or cuda:N, got {self.device!r}") from None

    @property
    def pixel_spacing(self) -> float:
        """Detector pixel edge, mm: the detector spans :data:`FIELD_OF_VIEW_MM` at any ``image_size``."""
        return FIELD_OF_VIEW_MM / self.image_size


def compile_available() -> bool:
    """Whether this version of :func:`~onthefly.render` takes ``compile=True``."""
    return "compile" in inspect.signature(render).parameters


def benchmark_carm(settings: BenchmarkSettings) -> CArm:
    """The ``(1, V)`` poses of a benchmark (shared by its samples), isocenter at the world origin."""
    alpha = torch.arange(settings.views, dtype=torch.float64) * (2 * math.pi / settings.views)
    beta = BETA_AMPLITUDE * torch.sin(alpha)
    return CArm(alpha=alpha.float()[None], beta=beta.float()[None], sid=settings.sid, sdd=settings.sdd,
                height=settings.image_size, pixel_spacing=settings.pixel_spacing)


def benchmark_volumes(volume: Volume, settings: BenchmarkSettings) -> list[Volume]:
    """The CT itself, centred on the world origin (``batch = 1``), or ``batch`` different crops, each centred.

    Crops are cubes of ``crop_size`` mm (cut to the CT where it is smaller), centred on the two
    in-plane axes and spread evenly along the voxel axis closest to the patient's long axis.
    """
    if settings.batch == 1:
        return [volume.centered()]
    size = [max(1, min(n, round(settings.crop_size / float(s)))) for n, s in zip(volume.shape, volume.spacing)]
    long_axis = int(volume.affine[2, :3].abs().argmax())
    start = [(n - k) // 2 for n, k in zip(volume.shape, size)]
    crops = []
    for offset in torch.linspace(0, volume.shape[long_axis] - size[long_axis], settings.batch).round().long().tolist():
        start[long_axis] = offset
        crops.append(volume.crop(start, [a + k for a, k in zip(start, size)]).centered())
    return crops


# ---------------------------------------------------------------------------
# Memory


class _PeakMemory:
    """Peak resident memory of this process and peak device memory, from :meth:`reset` on."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        gc.collect()
        self.reset_worked = _reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict:
        return {"process_peak_bytes": _peak_rss_bytes(), "process_peak_since_row": self.reset_worked,
                "device_peak_bytes": torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None}


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); ``False`` where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes() -> int:
    """Peak resident memory of this process since the last reset (``VmHWM``), else its ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _memory_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------
# Timing


def _timed(call: Callable[[], Tensor], settings: BenchmarkSettings, device: torch.device, progress: Progress,
           views_per_call: int) -> tuple[dict, Tensor]:
    """Warm-up and timed calls of ``call``: the row's timing and memory, and the last images (on the host)."""
    memory = _PeakMemory(device)
    memory.reset()
    images = None
    times = []
    for index in range(settings.warmup + settings.repeats):
        began = time.perf_counter()
        images = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= settings.warmup:
            times.append(time.perf_counter() - began)
        progress.update()
    rates = [views_per_call / t for t in times]
    row = {"status": "ok", "times_s": times, "drrs_per_s": statistics.median(rates), "drrs_per_s_min": min(rates),
           "drrs_per_s_max": max(rates), "ms_per_view": 1000 * statistics.median(times) / views_per_call,
           **memory.read()}
    return row, images.detach().double().cpu()


def _onthefly_row(volumes: list[Volume], carm: CArm, settings: BenchmarkSettings, progress: Progress):
    device = torch.device(settings.device)
    batch = _volume_batch(volumes, settings.dtype, device)
    carm = carm.to(device=device)
    options = {"compile": True} if settings.compile else {}
    with torch.no_grad():
        row, images = _timed(lambda: render(batch, carm, method=settings.method, **options), settings, device,
                             progress, len(volumes) * settings.views)
    return {"library": "onthefly", "method": settings.method, "dtype": settings.dtype} | row, images


def _volume_batch(volumes: list[Volume], dtype: str, device: torch.device) -> VolumeBatch:
    batch = VolumeBatch.from_volumes(volumes)
    if dtype == "float32":
        return batch.to(device)
    return VolumeBatch(attenuation=batch.attenuation.to(device=device, dtype=DTYPES[dtype]),
                       affine=batch.affine.to(device), mu_water=batch.mu_water)


def _reference(volumes: list[Volume], carm: CArm, settings: BenchmarkSettings) -> tuple[Tensor, float]:
    """The exact line integrals (Siddon) at the benchmark's poses, and the seconds they took."""
    device = torch.device(settings.device)
    batch = _volume_batch(volumes, "float64" if settings.dtype == "float64" else "float32", device)
    began = time.perf_counter()
    with torch.no_grad():
        images = render(batch, carm.to(device=device), method="siddon")
    return images.double().cpu(), time.perf_counter() - began


# ---------------------------------------------------------------------------
# diffdrr


def diffdrr_estimate_bytes(settings: BenchmarkSettings, volume_shape: Sequence[int]) -> float:
    """Rough peak memory of one diffdrr 0.6.1 call at these settings (one volume), bytes."""
    rays = settings.views * settings.image_size**2
    if settings.method == "trilinear":
        return _DIFFDRR_BASE_BYTES + rays * _DIFFDRR_TRILINEAR_BYTES_PER_RAY
    return _DIFFDRR_BASE_BYTES + rays * _DIFFDRR_SIDDON_BYTES_PER_RAY_PLANE * sum(n + 1 for n in volume_shape)


def _diffdrr_row(volumes: list[Volume], carm: CArm, settings: BenchmarkSettings, progress: Progress):
    """diffdrr rendering the same views (float32; the crops one after the other)."""
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from torchio import ScalarImage

    label = {"library": "diffdrr", "method": settings.method, "dtype": "float32"}
    estimate = max(diffdrr_estimate_bytes(settings, volume.shape) for volume in volumes)
    available = _memory_available_bytes()
    if settings.device == "cpu" and available is not None and estimate > available - 1e9:
        progress.update(settings.warmup + settings.repeats)
        return label | {"status": "skipped", "reason": f"estimated peak {estimate / GB:.1f} GB is more than the "
                        f"{available / GB:.1f} GB of memory available now; not run"}, None
    device = torch.device(settings.device)
    renderers = []
    for volume in volumes:
        subject = read(ScalarImage(tensor=volume.hu.float(), affine=volume.affine.numpy()), orientation="AP",
                       center_volume=False)
        subject.density.set_data(hu_to_attenuation(subject.volume.data.float()))  # onthefly's attenuation
        renderers.append(DRR(subject, sdd=settings.sdd, height=settings.image_size, delx=settings.pixel_spacing,
                             renderer=settings.method, compile_renderer=settings.compile).to(device))
    rotations = torch.stack([carm.alpha[0], carm.beta[0], carm.gamma[0]], -1).float().to(device)  # (V, 3), ZXY
    translations = torch.tensor([0.0, settings.sid, 0.0], device=device).expand(settings.views, 3)

    def call() -> Tensor:
        images = [drr(rotations, translations, parameterization="euler_angles", convention="ZXY")
                  for drr in renderers]
        return torch.stack(images)  # (B, V, 1, H, W)

    with torch.no_grad():
        row, images = _timed(call, settings, device, progress, len(volumes) * settings.views)
    return label | row, images


# ---------------------------------------------------------------------------
# The run


def machine_description(device: str) -> dict:
    """The machine a benchmark ran on: CPU, cores, torch threads, memory, GPU, versions, load when it started."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    meminfo = _memory_available_bytes()
    versions = {}
    for package in ("onthefly", "torch", "diffdrr"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "memory_available_gb": None if meminfo is None else round(meminfo / GB, 1),
        "gpu": torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda" else None,
        "python": platform.python_version(), "versions": versions,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def run_benchmark(volume: Volume, settings: BenchmarkSettings, *, against: Sequence[str] = (),
                  progress: bool | str = "auto", ct: str = "the bundled chest CT") -> dict:
    """Measure the rows of a benchmark (onthefly, then each library of ``against``).

    Args:
        volume: the CT (HU); it is centred on the world origin here.
        settings: what to render and how to time it.
        against: libraries to render the same rows with (:data:`AGAINST`); diffdrr must be installed.
        progress: a :class:`~onthefly.logs.Progress` mode (a bar on a terminal, else lines).
        ct: how the report names the CT.

    Returns:
        the report: ``settings``, ``ct``, ``machine``, ``rows`` (one per library: throughput,
        ``ms_per_view``, memory, ``relative_l1`` with ``error``) and ``reference_seconds``.
    """
    if not isinstance(settings, BenchmarkSettings):
        raise TypeError(f"settings: expected BenchmarkSettings, got {type(settings).__name__}")
    unknown = [name for name in against if name not in AGAINST]
    if unknown:
        raise ValueError(f"against: expected libraries from {list(AGAINST)}, got {unknown}")
    if settings.compile and not compile_available():
        raise ValueError("compile: not available: this version of onthefly.render has no compile option")
    report = {"ct": ct, "settings": asdict(settings) | {"pixel_spacing_mm": settings.pixel_spacing},
              "machine": machine_description(settings.device), "rows": []}
    volumes = benchmark_volumes(volume, settings)
    report["volume_shapes"] = [list(v.shape) for v in volumes]
    carm = benchmark_carm(settings)
    calls = (1 + len(against)) * (settings.warmup + settings.repeats)
    with Progress(total=calls, description="benchmark", unit="call", mode=progress) as bar:
        reference = None
        if settings.error:
            bar.write("rendering the exact reference (Siddon) ...")
            reference, report["reference_seconds"] = _reference(volumes, carm, settings)
        measure = {"onthefly": _onthefly_row, "diffdrr": _diffdrr_row}
        for library in ("onthefly", *against):
            row, images = measure[library](volumes, carm, settings, bar)
            if reference is not None and images is not None:
                row["relative_l1"] = float((images - reference).abs().sum() / reference.abs().sum())
            report["rows"].append(row)
            bar.write(f"{library}: {_row_summary(row)}")
    return report


def _row_summary(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"] + (f" ({row['reason']})" if "reason" in row else "")
    return f"{row['drrs_per_s']:.3g} DRRs/s, {row['ms_per_view']:.3g} ms per view"


# ---------------------------------------------------------------------------
# Reporting


def format_report(report: dict) -> str:
    """The report as a plain-text table with the set-up and the machine above it."""
    settings, machine = report["settings"], report["machine"]
    header = ["library", "method", "dtype", "B x V", "DRRs/s (min-max)", "ms/view", "process peak GB",
              "device peak GB", "error vs exact"]
    lines = [header]
    for row in report["rows"]:
        label = [row["library"], row["method"], row["dtype"], f"{settings['batch']} x {settings['views']}"]
        if row["status"] != "ok":
            lines.append(label + [row["status"] + ": " + row.get("reason", "")] + [""] * 4)
            continue
        lines.append(label + [
            f"{row['drrs_per_s']:.3g} ({row['drrs_per_s_min']:.3g}-{row['drrs_per_s_max']:.3g})",
            f"{row['ms_per_view']:.3g}" if row["ms_per_view"] < 1000 else f"{row['ms_per_view']:.0f}",
            f"{row['process_peak_bytes'] / GB:.2f}",
            "-" if row["device_peak_bytes"] is None else f"{row['device_peak_bytes'] / GB:.2f}",
            "-" if "relative_l1" not in row else f"{100 * row['relative_l1']:.3f} %",
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)
    gpu = f", GPU {machine['gpu']}" if machine["gpu"] else ""
    load = machine["load_average_1min"]
    return "\n".join([
        f"CT: {report['ct']}, volume(s) {' '.join('x'.join(map(str, s)) for s in report['volume_shapes'])}; "
        f"detector {settings['image_size']} x {settings['image_size']} of {settings['pixel_spacing_mm']:.3g} mm, "
        f"sid {settings['sid']:g} mm, sdd {settings['sdd']:g} mm; device {settings['device']}"
        f"{', compiled' if settings['compile'] else ''}; {settings['warmup']} warm-up + {settings['repeats']} timed calls",
        f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores ({machine['torch_threads']} torch threads){gpu}; "
        f"torch {machine['versions']['torch']}"
        + ("" if load is None else f"; load average {load:.2f} when it started"),
        "",
        table,
    ]) + ("" if "reference_seconds" not in report else
          f"\n\nError: relative L1 against the exact Siddon line integrals ({report['reference_seconds']:.1f} s).")
