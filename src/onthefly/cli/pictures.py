"""``onthefly demo``, ``onthefly preview`` and ``onthefly render``: pictures of a CT's views and correspondences.

Angles are in degrees here only; the library works in radians.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..augment import Augmentation
from ..checkpoint import strict_json, write_json
from ..correspondence import patch_correspondence
from ..geometry import CArm
from ..preview import save_batch_preview, save_correspondence_preview, save_views
from ..projector import render
from ..volume import Volume, VolumeBatch
from .common import (
    PICTURE_SUFFIXES,
    HelpFormatter,
    UsageError,
    check_device,
    load_ct,
    output_file,
    positive,
    radians,
    writable_file,
)
from .training import DEMO_TRAINING_FLAGS, _add_train_options, train_from_args


def _carm(args: argparse.Namespace, pixel_spacing: float) -> CArm:
    alpha = radians(args.alpha, "--alpha")
    beta = radians(args.beta, "--beta") if args.beta else torch.zeros_like(alpha)
    if beta.shape != alpha.shape:
        raise UsageError(f"--beta: expected {len(args.alpha)} values (one per --alpha), got {len(beta)}")
    try:
        return CArm(alpha=alpha, beta=beta, sid=args.sid, sdd=args.sdd, height=args.size, pixel_spacing=pixel_spacing)
    except (TypeError, ValueError) as error:
        raise UsageError(f"C-arm flags (--sid, --sdd, --size, --pixel-spacing): {error}") from None


def framing_pixel_spacing(volume: Volume, *, sid: float, sdd: float, pixels: int) -> float:
    """Detector pixel edge (mm) at which ``pixels`` pixels frame the CT's longest edge, magnified by ``sdd / sid``,
    with a 10 % margin."""
    corners = volume.world_corners()
    longest = float((corners.amax(0) - corners.amin(0)).max())
    return 1.1 * longest * sdd / sid / pixels


def _add_view_options(parser: argparse.ArgumentParser, *, alpha: list[float], spacing: float | None = 2.0) -> None:
    parser.add_argument("--alpha", type=float, nargs="+", default=alpha, help="primary angles, degrees (one view each)")
    parser.add_argument("--beta", type=float, nargs="+", help="secondary angles, degrees, one per --alpha (default 0)")
    parser.add_argument("--sid", type=positive(float), default=850.0, help="source-to-isocenter distance, mm")
    parser.add_argument("--sdd", type=positive(float), default=1020.0, help="source-to-detector distance, mm")
    parser.add_argument("--size", "--image-size", dest="size", type=positive(int), default=256,
                        help="detector pixels per side")
    parser.add_argument("--pixel-spacing", type=positive(float), default=spacing,
                        help="detector pixel edge, mm" + ("" if spacing else " (default: the detector frames the CT)"))
    parser.add_argument("--patch-size", type=positive(int), default=16, help="patch edge, pixels")


def _views_and_correspondence(volume: Volume, args: argparse.Namespace, pixel_spacing: float, device: str = "cpu"):
    """Render the views and their correspondence matrix; ``(images (1, V, 1, H, W), C (1, V*N, V*N), seconds)``."""
    batch = VolumeBatch.from_volumes([volume]).to(device)
    carm = _carm(args, pixel_spacing).to(device=device)
    if args.size % args.patch_size:
        raise UsageError(f"--patch-size: expected a divisor of the detector size {args.size}, got {args.patch_size}")
    start = time.perf_counter()
    images = render(batch, carm, method=getattr(args, "method", "trilinear"))
    seconds = {"render_seconds": round(time.perf_counter() - start, 3)}
    correspondence = None
    if getattr(args, "correspondence", True):
        start = time.perf_counter()
        correspondence = patch_correspondence(batch, carm, patch_size=args.patch_size)
        seconds["correspondence_seconds"] = round(time.perf_counter() - start, 3)
    return images.cpu(), None if correspondence is None else correspondence.cpu(), seconds


def _preview(args: argparse.Namespace, output: Path, volume: Volume | None = None):
    """Write the views-with-correspondences PNG; the summary, the images and the view titles."""
    volume = load_ct(args.volume, "--volume") if volume is None else volume
    images, correspondence, seconds = _views_and_correspondence(volume, args, args.pixel_spacing)
    titles = [f"alpha {a:g} deg" for a in args.alpha]
    written = save_correspondence_preview(images[0], correspondence[0], output, patch_size=args.patch_size,
                                          titles=titles)
    summary = dict(preview=str(written), views=len(args.alpha), **seconds, images=list(images.shape),
                   correspondence=list(correspondence.shape))
    return summary, images, titles


def _sampled_preview(args: argparse.Namespace, output: Path) -> dict:
    from ..sampling import DRRCorrespondenceSampler

    try:
        sampler = DRRCorrespondenceSampler(
            volumes=[load_ct(args.volume, "--volume")], views=args.views, image_size=args.size,
            patch_size=args.patch_size, batch_size=args.samples, seed=args.seed,
            augmentation=Augmentation(geometric=args.geometric), crop_size=args.crop_size, spacing=args.spacing,
            display=args.display,
        )
    except (TypeError, ValueError) as error:
        raise UsageError(f"onthefly preview --sampled: {error}") from None
    start = time.perf_counter()
    batch = sampler.sample(0)
    seconds = time.perf_counter() - start
    written = save_batch_preview(batch, output, samples=args.samples)
    return dict(preview=str(written), batch_seconds=round(seconds, 3), images=list(batch.images.shape),
                correspondence=list(batch.correspondence.shape))


def run_preview(args: argparse.Namespace, argv=None) -> int:
    output = output_file(args.output, suffixes=PICTURE_SUFFIXES, inputs=(args.volume,))
    summary = _sampled_preview(args, output) if args.sampled else _preview(args, output)[0]
    print(json.dumps(strict_json(summary), indent=2))
    return 0


def run_render(args: argparse.Namespace, argv=None) -> int:
    """``onthefly render``: the views of a CT as a PNG (line integrals with a colour bar), optionally the matrix."""
    output = output_file(args.output, suffixes=PICTURE_SUFFIXES, inputs=(args.ct,))
    matrix = output.with_name(f"{output.stem}-correspondence{output.suffix}")
    if args.correspondence:
        output_file(matrix, "--output (its -correspondence picture)", suffixes=PICTURE_SUFFIXES, inputs=(args.ct,))
    device = check_device(args.device)
    volume = load_ct(args.ct)
    spacing = args.pixel_spacing or framing_pixel_spacing(volume, sid=args.sid, sdd=args.sdd, pixels=args.size)
    images, correspondence, seconds = _views_and_correspondence(volume, args, spacing, device)
    titles = [f"alpha {a:g}, beta {b:g} deg" for a, b in zip(args.alpha, args.beta or [0.0] * len(args.alpha))]
    written = save_views(images[0], output, titles=titles, colorbar=True)
    summary = {"views_png": str(written), "images": list(images.shape), "pixel_spacing_mm": round(spacing, 4),
               "method": args.method, "device": device, **seconds}
    if correspondence is not None:
        matrix = save_correspondence_preview(images[0], correspondence[0], matrix, patch_size=args.patch_size,
                                             titles=titles)
        summary |= {"correspondence_png": str(matrix), "correspondence": list(correspondence.shape)}
    print(json.dumps(strict_json(summary), indent=2))
    return 0


def run_demo(args: argparse.Namespace, argv=None) -> int:
    """``onthefly demo``: pictures of the bundled CT, then (unless ``--no-train``) a short training run."""
    folder = Path(args.output)
    writable_file(folder / "summary.json")
    volume = load_ct(args.volume, "--volume")
    summary, images, titles = _preview(args, folder / "correspondence_preview.png", volume)
    summary["views_png"] = str(save_views(images[0], folder / "views.png", titles=titles, colorbar=True))
    print(json.dumps(strict_json(summary), indent=2), flush=True)
    if not args.no_train:
        summary["training"] = _demo_training(folder / "train", args.steps, quiet=args.quiet,
                                             eval_batches=args.eval_batches)
    write_json(folder / "summary.json", summary)
    return 0


def _demo_training(folder: Path, steps: int, *, quiet: bool = False, eval_batches: int = 4) -> dict:
    """Train the small correspondence model on the bundled CT and report loss and held-out AP."""
    parser = argparse.ArgumentParser()
    _add_train_options(parser)
    parser.set_defaults(task="correspondence")
    period = str(max(1, steps // 6))
    args = parser.parse_args([*DEMO_TRAINING_FLAGS, "--steps", str(steps), "--eval-every", period,
                              "--eval-batches", str(eval_batches),
                              "--checkpoint-every", period, "--output", str(folder), *(["--quiet"] if quiet else [])])
    print(f"Training the small correspondence model for {steps} steps on the bundled CT's inferior 60 % "
          "(primary angles 0-180 deg); evaluating on its superior 40 % (180-360 deg), never seen in training.",
          flush=True)
    result = train_from_args(args)
    before, after = result["initial_eval"], result["final_eval"]
    report = {
        "loss_first_10pct": result["loss_first"], "loss_last_10pct": result["loss_last"],
        "held_out_ap_untrained": before["ap"], "held_out_ap_trained": after["ap"],
        "held_out_mse_untrained": before["mse"], "held_out_mse_trained": after["mse"],
        "samples_per_s": result["samples_per_s"], "sampler_fraction_of_step": result["sampler_fraction"],
        "metrics_csv": str(folder / "metrics.csv"), "pictures": str(folder / "pictures"),
    }
    print(f"loss {report['loss_first_10pct']:.4f} -> {report['loss_last_10pct']:.4f}; held-out AP "
          f"{before['ap']:.3f} (untrained) -> {after['ap']:.3f} (trained); MSE {before['mse']:.4f} -> {after['mse']:.4f}")
    return report


def add_picture_parsers(commands) -> None:
    demo = commands.add_parser("demo", help="render views of the bundled CT and their correspondences, then train "
                                            "a small correspondence model on it", formatter_class=HelpFormatter)
    demo.add_argument("--output", default="outputs/demo", help="folder for the pictures, train/ and summary.json")
    demo.add_argument("--steps", type=positive(int), default=600,
                      help="training steps of the small correspondence model (0.5-0.7 s each on a 2-core CPU)")
    demo.add_argument("--eval-batches", type=positive(int), default=4,
                      help="held-out batches of 8 samples per evaluation (the same ones each time)")
    demo.add_argument("--no-train", action="store_true", help="only render the pictures")
    demo.add_argument("--quiet", action="store_true", help="no progress bar: one plain line per 10 steps on stderr")
    demo.add_argument("--volume", help="CT path (NIfTI, NRRD, MHA, DICOM folder); default: the bundled chest CT")
    _add_view_options(demo, alpha=[0.0, 90.0, 45.0])

    preview = commands.add_parser("preview", help="write a PNG of views with patch correspondences",
                                  formatter_class=HelpFormatter)
    preview.add_argument("--output", default="outputs/preview.png",
                         help="picture path: .png, .pdf, .svg or .jpg (not the --volume file)")
    preview.add_argument("--volume", help="CT path (NIfTI, NRRD, MHA, DICOM folder) or phantom:REGION[:SEED]; "
                                          "default: the bundled chest CT")
    preview.add_argument("--sampled", action="store_true",
                         help="show a batch drawn by DRRCorrespondenceSampler (random poses and crops) instead")
    preview.add_argument("--views", type=positive(int), default=2, help="with --sampled: views per sample")
    preview.add_argument("--samples", type=positive(int), default=4, help="with --sampled: samples shown")
    preview.add_argument("--seed", type=int, default=0, help="with --sampled: stream seed (an integer)")
    preview.add_argument("--geometric", type=float, default=0.0,
                         help="with --sampled: probability of a flip or quarter turn per view, in [0, 1]")
    preview.add_argument("--crop-size", type=positive(float), default=200.0, help="with --sampled: crop edge, mm")
    preview.add_argument("--spacing", type=positive(float), default=1.0,
                         help="with --sampled: voxel spacing the CT is resampled to, mm")
    preview.add_argument("--display", choices=["minmax", "radiograph"], default="radiograph",
                         help="with --sampled: how line integrals become the views (min-max, or processed as a "
                              "radiograph: local contrast, percentile window)")
    _add_view_options(preview, alpha=[0.0, 90.0])

    view = commands.add_parser("render", help="render DRRs of a CT (yours or the bundled one) to a PNG",
                               formatter_class=HelpFormatter)
    view.add_argument("ct", nargs="?", metavar="CT",
                      help="CT file (NIfTI, NRRD, MHA), DICOM series folder or phantom:REGION[:SEED] (a procedural "
                           "forearm, wrist or hand), centred on the isocenter; omitted: the bundled chest CT")
    view.add_argument("--output", default="outputs/views.png",
                      help="picture of the views: .png, .pdf, .svg or .jpg (not the CT); with --correspondence "
                           "also STEM-correspondence.SUFFIX beside it")
    view.add_argument("--correspondence", action="store_true",
                      help="also write the views with patch matches overlaid and the correspondence matrix")
    view.add_argument("--method", choices=["trilinear", "siddon"], default="trilinear",
                      help="trilinear: fast; siddon: the exact line integrals (slower)")
    view.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    _add_view_options(view, alpha=[0.0, 90.0], spacing=None)
