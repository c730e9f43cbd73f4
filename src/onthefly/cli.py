"""Command line: ``onthefly demo``, ``onthefly preview``, ``onthefly train correspondence``.

Angles are in degrees here only; the library works in radians.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from .augment import Augmentation
from .correspondence import patch_correspondence
from .geometry import CArm
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
    from .sampling import DRRCorrespondenceSampler

    volumes = [_load_volume(args.volume)]
    sampler = DRRCorrespondenceSampler(
        volumes=volumes, views=args.views, image_size=args.size, patch_size=args.patch_size,
        batch_size=args.samples, seed=args.seed, augmentation=Augmentation(geometric=args.geometric),
        crop_size=args.crop_size, spacing=args.spacing,
    )
    start = time.perf_counter()
    batch = sampler.sample(0)
    seconds = time.perf_counter() - start
    output = save_batch_preview(batch, args.output, samples=args.samples)
    return dict(preview=str(output), batch_seconds=round(seconds, 3), images=list(batch.images.shape),
                correspondence=list(batch.correspondence.shape))


def _add_train_options(parser: argparse.ArgumentParser, task: str = "correspondence") -> None:
    data = parser.add_argument_group("data (DRRCorrespondenceSampler)")
    data.add_argument("--volumes", nargs="+",
                      help="training CT paths (default: the bundled chest CT's inferior 60 %%)")
    data.add_argument("--eval-volumes", nargs="+",
                      help="held-out CT paths (default: the bundled CT's superior 40 %%, never seen in training)")
    data.add_argument("--views", type=int, default=2, help="views per sample")
    data.add_argument("--image-size", type=int, default=256, help="detector pixels per side")
    data.add_argument("--patch-size", type=int, default=16, help="patch edge, pixels (the backbone's stride)")
    data.add_argument("--crop-size", type=float, default=120.0, help="crop edge, mm")
    data.add_argument("--spacing", type=float, default=1.5, help="voxel spacing the CTs are resampled to, mm")
    data.add_argument("--batch-size", type=int, default=16, help="samples per step (per rank)")
    data.add_argument("--eval-angles", choices=["same", "held-out"], default="held-out",
                      help="held-out: train on primary angles in [0, 180) deg, evaluate on [180, 360)")
    data.add_argument("--seed", type=int, default=0, help="stream and initialisation seed")
    if task == "correspondence":
        model = parser.add_argument_group("model (CorrespondenceConfig)")
        model.add_argument("--model", choices=["small", "paper"], default="paper",
                           help="small: CNN backbone, d 64, 2 layers; paper: ResNet-50 to stride 16, d 512, 8 heads, 8 layers")
        model.add_argument("--attention", default=None,
                           help="none | superglue | loftr | standard | standard_mp (default: standard)")
    else:
        model = parser.add_argument_group("model (ClassifierConfig)")
        model.add_argument("--model", choices=["small", "vit-s"], default="vit-s",
                           help="small: d 64, 4 heads, 2 layers; vit-s: d 384, 6 heads, 12 layers (patch embedding)")
        model.add_argument("--backbone", default="patch", help="patch (ViT-style) | small | resnet50")
        model.add_argument("--fusion", choices=["single", "late", "early"], default="early")
        model.add_argument("--attention-guidance", action="store_true",
                           help="add alpha_l * C to every layer's attention logits (learnable alpha_l; early fusion)")
        model.add_argument("--init-from", help="correspondence checkpoint whose trunk starts the classifier")
        model.add_argument("--guidance-from",
                           help="correspondence checkpoint whose predicted C guides attention at evaluation "
                                "(default: the true C)")
        model.add_argument("--fracture-probability", type=float, default=0.5, help="share of samples with a fracture")
    model.add_argument("--d-model", type=int, help="token width")
    model.add_argument("--layers", type=int, help="attention layers")
    model.add_argument("--heads", type=int, help="attention heads")
    model.add_argument("--backbone-weights", help="local state-dict file for the backbone (nothing is downloaded)")
    run = parser.add_argument_group("run (TrainConfig)")
    run.add_argument("--output", default="outputs/train", help="folder for checkpoint, metrics.csv, pictures")
    run.add_argument("--steps", type=int, default=1000)
    run.add_argument("--lr", type=float, default=1e-4)
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--checkpoint-every", type=int, default=100)
    run.add_argument("--eval-every", type=int, default=100)
    run.add_argument("--eval-batches", type=int, default=4)
    run.add_argument("--log-every", type=int, default=10)
    run.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt on the same stream")
    run.add_argument("--stop-at", type=int, help="stop after this step (resumable), e.g. to fit a time budget")


def _samplers_from_args(args: argparse.Namespace, **extra):
    """The training and held-out samplers the data options describe (``extra``: more sampler settings)."""
    from .sampling import DRRCorrespondenceSampler
    from .train import split_volume

    if args.volumes:
        train_volumes = [Volume.from_file(p) for p in args.volumes]
        if not args.eval_volumes:
            raise SystemExit("--eval-volumes: give held-out CTs with --volumes (evaluation never reuses training CTs)")
        eval_volumes = [Volume.from_file(p) for p in args.eval_volumes]
    else:
        train_part, eval_part = split_volume(example_volume(labels=True), fraction=0.6)
        train_volumes, eval_volumes = [train_part], [eval_part]
    held_out = args.eval_angles == "held-out"
    common = dict(views=args.views, image_size=args.image_size, patch_size=args.patch_size,
                  crop_size=args.crop_size, spacing=args.spacing, batch_size=args.batch_size,
                  device=args.device if "cuda" not in args.device or torch.cuda.is_available() else "cpu", **extra)
    train_sampler = DRRCorrespondenceSampler(
        volumes=train_volumes, seed=args.seed, **common, **({"alpha": (0.0, math.pi)} if held_out else {}))
    eval_sampler = DRRCorrespondenceSampler(
        volumes=eval_volumes, seed=args.seed + 10_000, augmentation=None, **common,
        **({"alpha": (math.pi, 2 * math.pi)} if held_out else {}))
    return train_sampler, eval_sampler


def _train_config(args: argparse.Namespace):
    from .train import TrainConfig

    return TrainConfig(
        output=args.output, steps=args.steps, lr=args.lr, device=args.device, amp=not args.no_amp,
        compile=args.compile, checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
        eval_batches=args.eval_batches, log_every=args.log_every, resume=args.resume, stop_at=args.stop_at,
        seed=args.seed,
    )


def train_classifier_from_args(args: argparse.Namespace) -> dict:
    """Build fracture samplers and the classifier from command-line arguments and train."""
    from .fractures import FractureConfig
    from .models import ClassifierConfig, CorrespondenceModel
    from .train import train_classifier

    train_sampler, eval_sampler = _samplers_from_args(
        args, fractures=FractureConfig(probability=args.fracture_probability))
    overrides = {key: value for key, value in dict(
        d_model=args.d_model, layers=args.layers, heads=args.heads, backbone_weights=args.backbone_weights).items()
        if value is not None}
    settings = dict(backbone=args.backbone, patch_size=args.patch_size, fusion=args.fusion,
                    attention_guidance=args.attention_guidance) | overrides
    model_config = ClassifierConfig.small(**settings) if args.model == "small" else ClassifierConfig(**settings)
    guidance_model = None
    if args.guidance_from:
        from .models import CorrespondenceConfig

        state = torch.load(args.guidance_from, map_location="cpu", weights_only=False)
        guidance_model = CorrespondenceModel(CorrespondenceConfig(**state["model_config"]))
        guidance_model.load_state_dict(state["model"])
    return train_classifier(model_config, train_sampler, _train_config(args), eval_sampler=eval_sampler,
                            init_from=args.init_from, guidance_model=guidance_model)


def train_from_args(args: argparse.Namespace) -> dict:
    """Build the samplers and the model from command-line arguments and train (also used by the demo)."""
    from .models import CorrespondenceConfig
    from .train import train_correspondence

    train_sampler, eval_sampler = _samplers_from_args(args)
    overrides = {key: value for key, value in dict(
        attention=args.attention, d_model=args.d_model, layers=args.layers, heads=args.heads,
        backbone_weights=args.backbone_weights, patch_size=args.patch_size).items() if value is not None}
    if args.model == "small":
        model_config = CorrespondenceConfig.small(**overrides)
    else:
        model_config = CorrespondenceConfig(**overrides)
    return train_correspondence(model_config, train_sampler, _train_config(args), eval_sampler=eval_sampler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onthefly", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="render views of the bundled CT and their correspondences")
    demo.add_argument("--output", default="outputs/demo", help="folder for the pictures and a summary JSON")
    demo.add_argument("--steps", type=int, default=600,
                      help="training steps of the small correspondence model (about 0.5 s each on a 2-core CPU)")
    demo.add_argument("--no-train", action="store_true", help="only render the pictures")
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
    preview.add_argument("--crop-size", type=float, default=200.0, help="with --sampled: crop edge, mm")
    preview.add_argument("--spacing", type=float, default=1.0, help="with --sampled: voxel spacing the CT is resampled to, mm")
    _add_view_options(preview, alpha=[0.0, 90.0])
    train = commands.add_parser("train", help="train a model on the sampler's stream (no stored dataset)")
    tasks = train.add_subparsers(dest="task", required=True)
    _add_train_options(tasks.add_parser("correspondence", help="the patch correspondence transformer"))
    _add_train_options(tasks.add_parser("classifier", help="the multi-view fracture classifier (simulated fractures)"),
                       task="classifier")
    args = parser.parse_args(argv)

    if args.command == "train":
        summary = train_from_args(args) if args.task == "correspondence" else train_classifier_from_args(args)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps({k: v for k, v in summary.items() if k != "model_config"}, indent=2))
        return 0

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
    print(json.dumps(summary, indent=2))
    if not args.no_train:
        summary["training"] = _demo_training(folder / "train", args.steps)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


def _demo_training(folder: Path, steps: int) -> dict:
    """Train the small correspondence model on the bundled CT and report loss and held-out AP."""
    parser = argparse.ArgumentParser()
    _add_train_options(parser)
    args = parser.parse_args([
        "--model", "small", "--image-size", "128", "--patch-size", "16", "--crop-size", "120", "--spacing", "2",
        "--batch-size", "8", "--steps", str(steps), "--lr", "1e-3", "--eval-every", str(max(1, steps // 6)),
        "--eval-batches", "4", "--log-every", "10", "--checkpoint-every", str(max(1, steps // 6)),
        "--output", str(folder), "--device", "cpu",
    ])
    print(f"Training the small correspondence model for {steps} steps on the bundled CT's inferior 60 % "
          "(primary angles 0-180 deg); evaluating on its superior 40 % (180-360 deg), never seen in training.")
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


if __name__ == "__main__":
    raise SystemExit(main())
