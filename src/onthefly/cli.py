"""Command line: ``onthefly demo`` and ``onthefly preview`` (angles in degrees here only)."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from .correspondence import patch_correspondence
from .geometry import CArm
from .augment import Augmentation
from .preview import save_batch_preview, save_correspondence_preview, save_views
from .projector import render
from .volume import Volume, VolumeBatch, example_volume


def _load_volume(path: str | None) -> Volume:
    return example_volume(labels=False) if path is None else Volume.from_file(path).centered()


def _carm(args: argparse.Namespace) -> CArm:
    alpha = torch.tensor([math.radians(a) for a in args.alpha])
    beta = torch.tensor([math.radians(b) for b in (args.beta if args.beta else [0.0] * len(args.alpha))])
    if beta.shape != alpha.shape:
        raise SystemExit(f"--beta: expected {len(args.alpha)} values (one per --alpha), got {len(beta)}")
    return CArm(alpha=alpha, beta=beta, sid=args.sid, sdd=args.sdd, height=args.size, pixel_spacing=args.pixel_spacing)


def _add_view_options(parser: argparse.ArgumentParser, *, alpha: list[float]) -> None:
    parser.add_argument("--volume", help="CT path (NIfTI, NRRD, DICOM folder); default: the bundled chest CT")
    parser.add_argument("--alpha", type=float, nargs="+", default=alpha, help="primary angles, degrees")
    parser.add_argument("--beta", type=float, nargs="+", help="secondary angles, degrees (default 0)")
    parser.add_argument("--sid", type=float, default=850.0, help="source-to-isocenter distance, mm")
    parser.add_argument("--sdd", type=float, default=1020.0, help="source-to-detector distance, mm")
    parser.add_argument("--size", type=int, default=256, help="detector pixels per side")
    parser.add_argument("--pixel-spacing", type=float, default=2.0, help="detector pixel edge, mm")
    parser.add_argument("--patch-size", type=int, default=16, help="patch edge, pixels")


def _preview(args: argparse.Namespace) -> dict:
    volume = _load_volume(args.volume)
    batch = VolumeBatch.from_volumes([volume])
    carm = _carm(args)
    start = time.perf_counter()
    images = render(batch, carm)
    render_seconds = time.perf_counter() - start
    start = time.perf_counter()
    correspondence = patch_correspondence(batch, carm, patch_size=args.patch_size)
    correspondence_seconds = time.perf_counter() - start
    titles = [f"alpha {a:g} deg" for a in args.alpha]
    output = Path(args.output)
    save_correspondence_preview(images[0], correspondence[0], output, patch_size=args.patch_size, titles=titles)
    return dict(
        preview=str(output),
        views=len(args.alpha),
        render_seconds=round(render_seconds, 3),
        correspondence_seconds=round(correspondence_seconds, 3),
        images=list(images.shape),
        correspondence=list(correspondence.shape),
    ), images, titles


def _sampled_preview(args: argparse.Namespace) -> dict:
    from .sampler import DRRCorrespondenceSampler

    volumes = [_load_volume(args.volume)]
    sampler = DRRCorrespondenceSampler(
        volumes=volumes, views=args.views, image_size=args.size, patch_size=args.patch_size,
        batch_size=args.samples, seed=args.seed, augmentation=Augmentation(geometric=args.geometric),
    )
    start = time.perf_counter()
    batch = sampler.sample(0)
    seconds = time.perf_counter() - start
    output = save_batch_preview(batch, args.output, samples=args.samples)
    return dict(preview=str(output), batch_seconds=round(seconds, 3), images=list(batch.images.shape),
                correspondence=list(batch.correspondence.shape))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onthefly", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="render views of the bundled CT and their correspondences")
    demo.add_argument("--output", default="outputs/demo", help="folder for the pictures and a summary JSON")
    _add_view_options(demo, alpha=[0.0, 90.0, 45.0])
    preview = commands.add_parser("preview", help="write a PNG of views with patch correspondences")
    preview.add_argument("--output", default="outputs/preview.png", help="PNG path")
    preview.add_argument("--sampled", action="store_true",
                         help="show a batch drawn by DRRCorrespondenceSampler (random poses and crops) instead")
    preview.add_argument("--views", type=int, default=2, help="with --sampled: views per sample")
    preview.add_argument("--samples", type=int, default=4, help="with --sampled: samples shown")
    preview.add_argument("--seed", type=int, default=0, help="with --sampled: stream seed")
    preview.add_argument("--geometric", type=float, default=0.0,
                         help="with --sampled: probability of a flip or quarter turn per view")
    _add_view_options(preview, alpha=[0.0, 90.0])
    args = parser.parse_args(argv)

    if args.command == "preview" and args.sampled:
        print(json.dumps(_sampled_preview(args), indent=2))
        return 0
    if args.command == "preview":
        summary, _, _ = _preview(args)
        print(json.dumps(summary, indent=2))
        return 0
    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    args.output = str(folder / "correspondence_preview.png")
    summary, images, titles = _preview(args)
    summary["views_png"] = str(save_views(images[0], folder / "views.png", titles=titles))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
