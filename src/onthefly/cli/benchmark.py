"""``onthefly benchmark``: projector throughput on the bundled CT or any CT file (see :mod:`onthefly.benchmark`)."""

from __future__ import annotations

import argparse
import importlib.util
import json

import torch

from ..benchmark import AGAINST, DTYPES, BenchmarkSettings, compile_available, format_report, run_benchmark
from ..checkpoint import strict_json, write_json
from ..projector import METHODS
from .common import REPORT_SUFFIXES, HelpFormatter, UsageError, check_device, load_ct, output_file, positive


def add_benchmark_parser(commands) -> None:
    parser = commands.add_parser(
        "benchmark", formatter_class=HelpFormatter,
        help="projector throughput: DRRs/s, ms per view, peak memory, error; optionally beside diffdrr",
        description="Render a CT at fixed poses (V views at alpha = 360 k / V degrees) and print DRRs per second, "
                    "milliseconds per view, peak memory of the process and of the device, and on request the error "
                    "against the exact Siddon line integrals. Writes nothing unless given --output.")
    parser.add_argument("ct", nargs="?", metavar="CT",
                        help="CT file (NIfTI, NRRD, MHA), DICOM series folder or phantom:REGION[:SEED]; omitted: "
                             "the bundled chest CT")
    parser.add_argument("--views", type=positive(int), default=8, help="views per sample (V)")
    parser.add_argument("--image-size", type=positive(int), default=256,
                        help="detector pixels per side (the detector spans 512 mm at any size)")
    parser.add_argument("--batch", type=positive(int), default=1,
                        help="samples per call (B); above 1 each is a different crop of the CT")
    parser.add_argument("--crop-size", type=positive(float), default=200.0,
                        help="with --batch > 1: crop edge, mm (at most the CT's longest edge)")
    parser.add_argument("--method", choices=METHODS, default="trilinear",
                        help="trilinear: the fast renderer; siddon: the exact line integrals")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="precision of the rendering")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu | cuda | cuda:N (cuda when torch finds one, else cpu)")
    parser.add_argument("--compile", action="store_true",
                        help="render through torch.compile (where this version's render has compile=True); "
                             "the warm-up call compiles")
    parser.add_argument("--repeats", type=positive(int), default=3, help="timed calls (median, min and max shown)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed ones")
    parser.add_argument("--error", action="store_true",
                        help="also render the exact reference (Siddon; slow: about 6 s per view of the bundled CT "
                             "on 2 CPU cores) and show each row's relative L1 against it, %%")
    parser.add_argument("--against", nargs="+", default=[], metavar="LIBRARY",
                        help=f"render the same rows with these libraries too: {', '.join(AGAINST)} (must be installed)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--output", help="also write the JSON report to this .json file (not the CT)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar: plain progress lines on stderr")


def _checked_settings(args: argparse.Namespace) -> BenchmarkSettings:
    unknown = [name for name in args.against if name not in AGAINST]
    if unknown:
        raise UsageError(f"--against: expected libraries from {', '.join(AGAINST)}, got {', '.join(unknown)}")
    for name in args.against:
        if importlib.util.find_spec(name) is None:
            hint = " (pip install --no-deps diffdrr==0.6.1)" if name == "diffdrr" else ""
            raise UsageError(f"--against: {name} is not installed{hint}")
    if args.compile and not compile_available():
        raise UsageError("--compile: not available: this version of onthefly.render has no compile option")
    if args.warmup < 0:
        raise UsageError(f"--warmup: expected 0 or more calls, got {args.warmup}")
    try:
        return BenchmarkSettings(views=args.views, image_size=args.image_size, batch=args.batch,
                                 crop_size=args.crop_size, method=args.method, dtype=args.dtype,
                                 device=check_device(args.device), compile=args.compile, repeats=args.repeats,
                                 warmup=args.warmup, error=args.error)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None


def _check_crop(volume, args: argparse.Namespace) -> None:
    """With ``--batch`` > 1, a crop larger than the CT along every axis would be the whole CT B times over."""
    if args.batch == 1:
        return  # the whole CT is rendered; --crop-size is not used
    extent = [float(n * s) for n, s in zip(volume.shape, volume.spacing.tolist())]
    if args.crop_size > max(extent):
        sizes = " x ".join(f"{e:g}" for e in extent)
        raise UsageError(f"--crop-size: expected at most the CT's longest edge, {max(extent):g} mm (the CT spans "
                         f"{sizes} mm), got {args.crop_size:g} mm: every one of the --batch {args.batch} crops would "
                         "be the whole CT")


def run_benchmark_command(args: argparse.Namespace, argv=None) -> int:
    """``onthefly benchmark``: print the table (or JSON); write the JSON report only where ``--output`` says."""
    settings = _checked_settings(args)
    output = output_file(args.output, suffixes=REPORT_SUFFIXES, inputs=(args.ct,)) if args.output else None
    volume = load_ct(args.ct)
    _check_crop(volume, args)
    report = run_benchmark(volume, settings, against=args.against, progress="lines" if args.quiet else "auto",
                           ct=args.ct or "the bundled chest CT")
    print(json.dumps(strict_json(report), indent=2) if args.json else format_report(report))
    if output is not None:
        write_json(output, report)
    return 0
