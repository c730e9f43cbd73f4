"""Command line: ``onthefly demo``, ``onthefly preview``, ``onthefly train correspondence``, ``onthefly prepare``.

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
from .checkpoint import strict_json, write_json
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each flag's default, except where there is none to show (``None``, an unset switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == [] or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


RUN_CONTROL_FLAGS = ("output", "resume", "stop_at", "device", "resume_override")
"""Train flags a resume never restores: where the run lives and how this process drives it."""
FREE_ON_RESUME_FLAGS = ("steps", "checkpoint_every", "eval_every", "eval_batches", "log_every", "compile")
"""Train flags a resume restores when not given and that may be given anew (``--steps`` extends the run)."""
TRUNK_FLAGS = ("backbone", "patch_size", "d_model", "heads", "layers")
"""Classifier flags that describe the trunk, read from the ``--init-from`` checkpoint when not given."""


def _add_train_options(parser: argparse.ArgumentParser, task: str = "correspondence") -> None:
    data = parser.add_argument_group("data (DRRCorrespondenceSampler)")
    data.add_argument("--volumes", nargs="+",
                      help="training CT paths (NIfTI, NRRD, DICOM folders), or one folder made by 'onthefly prepare' "
                           "(read as a VolumeBank); default: the bundled chest CT's inferior 60 %%")
    data.add_argument("--eval-volumes", nargs="+",
                      help="held-out CT paths or one prepared folder (default: the bundled CT's superior 40 %%, never "
                           "seen in training; with a prepared --volumes folder, a fifth of its patients)")
    data.add_argument("--views", type=int, default=2, help="views per sample")
    data.add_argument("--image-size", type=int, default=256, help="detector pixels per side (height = width)")
    data.add_argument("--patch-size", type=int, default=16, help="patch edge, pixels (the backbone's stride)")
    data.add_argument("--crop-size", type=float, default=120.0, help="edge of the cube cropped from a CT, mm")
    data.add_argument("--spacing", type=float, default=1.5, help="voxel spacing the CTs are resampled to, mm")
    data.add_argument("--batch-size", type=int, default=16, help="samples per step (per rank)")
    data.add_argument("--eval-angles", choices=["same", "held-out"], default="held-out",
                      help="held-out: train on primary angles in [0, 180) deg, evaluate on [180, 360)")
    data.add_argument("--seed", type=int, default=0, help="stream and initialisation seed (an integer)")
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
        model.add_argument("--backbone", default="patch",
                           help="token embedding: patch (ViT-style) | small | resnet50; with --init-from, "
                                "the checkpoint's unless given")
        model.add_argument("--fusion", choices=["single", "late", "early"], default="early",
                           help="single: view 0 only; late: views apart, logits averaged; early: joint attention")
        model.add_argument("--attention-guidance", action="store_true",
                           help="add alpha_l * C to every layer's attention logits (learnable alpha_l; early fusion)")
        model.add_argument("--init-from",
                           help="checkpoint.pt of `onthefly train correspondence` whose trunk starts the classifier; "
                                "the trunk flags (--backbone, --patch-size, --d-model, --heads, --layers) default to its")
        model.add_argument("--guidance-from",
                           help="checkpoint.pt of `onthefly train correspondence` whose predicted C guides attention "
                                "at evaluation (default: the true C)")
        model.add_argument("--fracture-probability", type=float, default=0.5,
                           help="share of samples with a simulated fracture, in [0, 1]")
    model.add_argument("--d-model", type=int, help="token width, channels (default: the --model preset's)")
    model.add_argument("--layers", type=int, help="attention layers (default: the --model preset's)")
    model.add_argument("--heads", type=int, help="attention heads (default: the --model preset's)")
    model.add_argument("--backbone-weights", help="local state-dict file for the backbone (nothing is downloaded)")
    run = parser.add_argument_group("run (TrainConfig)")
    run.add_argument("--output", default="outputs/train",
                     help="folder for checkpoint.pt, metrics.csv, summary.json and pictures/")
    run.add_argument("--steps", type=int, default=1000,
                     help="optimisation steps in all (the cosine schedule spans them); on --resume, more extends the run")
    run.add_argument("--lr", type=float, default=1e-4,
                     help="Adam learning rate, the peak of the cosine schedule (decays to 0 at --steps)")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="where the sampler draws and the model trains: cpu | cuda | cuda:N; "
                          "cuda when torch finds one, else cpu")
    run.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    run.add_argument("--eval-every", type=int, default=100, help="steps between held-out evaluations (0: never)")
    run.add_argument("--eval-batches", type=int, default=4, help="held-out batches per evaluation (the same ones each time)")
    run.add_argument("--log-every", type=int, default=10, help="steps between rows of metrics.csv")
    run.add_argument("--resume", action="store_true",
                     help="continue from OUTPUT/checkpoint.pt with the settings saved in it; flags given again "
                          "must agree with them, except --steps (to extend), the periods, --device and --compile")
    run.add_argument("--resume-override", nargs="+", choices=["lr"], default=[],
                     help="with --resume: apply a new --lr on purpose (refused otherwise); the schedule continues "
                          "from the resumed step with it")
    run.add_argument("--stop-at", type=int, help="stop after this step (resumable), e.g. to fit a time budget")


def _check_device(device: str) -> str:
    """The device flag, refused with a clear message when torch cannot use it (never moved to the CPU silently)."""
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise SystemExit(f"--device: expected cpu, cuda or cuda:N, got {device!r}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device: {device} was asked for, but torch finds no CUDA device (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda}); use --device cpu")
    if chosen.type == "cuda" and chosen.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"  # each torchrun rank draws on its own GPU
    return device


def _samplers_from_args(args: argparse.Namespace, **extra):
    """The training and held-out samplers the data options describe (``extra``: more sampler settings)."""
    from .sampling import DRRCorrespondenceSampler
    from .train import split_volume

    if args.volumes:
        train_volumes = _ct_sources(args.volumes, "--volumes", args.spacing)
        if args.eval_volumes:
            eval_volumes = _ct_sources(args.eval_volumes, "--eval-volumes", args.spacing)
        elif not isinstance(train_volumes, list):  # a prepared folder: hold out a fifth of its patients
            held_out = max(0.2, 1.0 / len(train_volumes))  # at least one CT
            train_volumes, eval_volumes = train_volumes.split((1.0 - held_out, held_out), seed=args.seed)
        else:
            raise SystemExit("--eval-volumes: give held-out CTs with --volumes (evaluation never reuses training CTs), "
                             "or give --volumes a prepared folder (a fifth of its patients is held out)")
    else:
        train_part, eval_part = split_volume(example_volume(labels=True), fraction=0.6)
        train_volumes, eval_volumes = [train_part], [eval_part]
    held_out = args.eval_angles == "held-out"
    common = dict(views=args.views, image_size=args.image_size, patch_size=args.patch_size,
                  crop_size=args.crop_size, spacing=args.spacing, batch_size=args.batch_size,
                  device=_check_device(args.device), **extra)
    train_sampler = DRRCorrespondenceSampler(
        volumes=train_volumes, seed=args.seed, **common, **({"alpha": (0.0, math.pi)} if held_out else {}))
    eval_sampler = DRRCorrespondenceSampler(
        volumes=eval_volumes, seed=args.seed + 10_000, augmentation=None, **common,
        **({"alpha": (math.pi, 2 * math.pi)} if held_out else {}))
    return train_sampler, eval_sampler


def _ct_sources(paths: list[str], flag: str, spacing: float):
    """CT files as volumes, or one prepared folder (``onthefly prepare``) as a :class:`~onthefly.sampling.bank.VolumeBank`."""
    from .sampling.bank import VolumeBank, is_prepared_folder

    prepared = [path for path in paths if is_prepared_folder(path)]
    if not prepared:
        return [Volume.from_file(path) for path in paths]
    if len(paths) > 1:
        raise SystemExit(f"{flag}: give one prepared folder alone (or CT files), got {len(paths)} paths")
    return VolumeBank(paths[0], spacing=spacing)


def _command_settings(args: argparse.Namespace) -> dict:
    """The flags that define the run, as saved in its checkpoint (``--resume`` restores them)."""
    skipped = set(RUN_CONTROL_FLAGS) | {"command"}
    return {key: value for key, value in vars(args).items() if key not in skipped}


def _train_config(args: argparse.Namespace):
    from .train import TrainConfig

    return TrainConfig(
        output=args.output, steps=args.steps, lr=args.lr, device=_check_device(args.device), amp=not args.no_amp,
        compile=args.compile, checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
        eval_batches=args.eval_batches, log_every=args.log_every, resume=args.resume, stop_at=args.stop_at,
        seed=args.seed, resume_overrides=tuple(getattr(args, "resume_override", None) or ()),
        command=_command_settings(args),
    )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _resume_arguments(args: argparse.Namespace, given: set[str] | None) -> argparse.Namespace:
    """With ``--resume`` and a checkpoint in ``--output``: the saved run's flags where none was given;
    a given flag that differs from the saved one stops the run (``SystemExit`` listing them)."""
    from .checkpoint import TRAINING_KEYS, load_checkpoint

    path = Path(args.output) / "checkpoint.pt"
    if not args.resume or not path.exists():
        return args
    saved = load_checkpoint(path, name="--resume", required=TRAINING_KEYS)
    command = (saved.get("train_config") or {}).get("command")
    if not command:  # a run started from Python: the training loop compares the configurations
        return args
    if command.get("task", args.task) != args.task:
        raise SystemExit(f"--resume: {path} holds a {command['task']} run; resume it with "
                         f"`onthefly train {command['task']} --output {args.output} --resume`")
    given = set(vars(args)) if given is None else given
    overrides = set(getattr(args, "resume_override", None) or ())
    differences = []
    for key, value in command.items():
        if key in RUN_CONTROL_FLAGS or key == "task" or not hasattr(args, key):
            continue
        if key not in given:
            setattr(args, key, value)
        elif getattr(args, key) != value and key not in FREE_ON_RESUME_FLAGS and key not in overrides:
            differences.append(f"{_flag(key)}: saved {value!r}, given {getattr(args, key)!r}")
    if differences:
        hint = " (a new --lr is applied with --resume-override lr)" if any("--lr" in d for d in differences) else ""
        raise SystemExit(f"--resume: these flags differ from the run saved in {path}: {'; '.join(differences)}. "
                         f"Drop them to resume the saved run{hint}, or give a new --output to start another.")
    return args


def _trunk_arguments(args: argparse.Namespace, given: set[str] | None) -> dict:
    """Read the trunk's configuration from ``--init-from``: fill the trunk flags not given, refuse those
    that differ; returns the other trunk settings (``mlp``, ``dropout``) for the ClassifierConfig."""
    from .checkpoint import load_checkpoint

    state = load_checkpoint(args.init_from, name="--init-from", required=("model",))
    saved = state.get("model_config")
    if not isinstance(saved, dict):  # a bare state dict: the flags describe the trunk
        return {}
    if saved.get("attention", "standard") != "standard":
        raise SystemExit(f"--init-from: {args.init_from} holds a model with attention {saved['attention']!r}; the "
                         "classifier's trunk is the standard transformer: pre-train with --attention standard")
    given = set(vars(args)) if given is None else given
    differences = []
    for key in TRUNK_FLAGS:
        if saved.get(key) is None:
            continue
        if key not in given:
            setattr(args, key, saved[key])
        elif getattr(args, key) != saved[key]:
            differences.append(f"{_flag(key)}: checkpoint {saved[key]!r}, given {getattr(args, key)!r}")
    if differences:
        raise SystemExit(f"--init-from: the trunk in {args.init_from} differs from the flags: {'; '.join(differences)}. "
                         "Drop those flags to take the checkpoint's values.")
    return {key: saved[key] for key in ("mlp", "dropout") if key in saved}


def _guidance_model(path: str) -> torch.nn.Module:
    """The correspondence model of a ``--guidance-from`` checkpoint."""
    from .checkpoint import load_checkpoint
    from .models import CorrespondenceConfig, CorrespondenceModel

    state = load_checkpoint(path, name="--guidance-from", required=("model", "model_config"))
    try:
        model = CorrespondenceModel(CorrespondenceConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as error:
        raise SystemExit(f"--guidance-from: {path} does not hold a correspondence model that loads "
                         f"({str(error).splitlines()[0]})") from None
    return model


def train_classifier_from_args(args: argparse.Namespace, *, given: set[str] | None = None) -> dict:
    """Build fracture samplers and the classifier from command-line arguments and train.

    ``given``: the flags given on the command line (the others may come from the
    resumed checkpoint or the ``--init-from`` trunk); ``None``: all of them.
    """
    from .fractures import FractureConfig
    from .models import ClassifierConfig
    from .train import train_classifier

    args = _resume_arguments(args, given)
    _check_device(args.device)
    resuming = args.resume and (Path(args.output) / "checkpoint.pt").exists()
    trunk = _trunk_arguments(args, given) if args.init_from and not resuming else {}
    guidance_model = _guidance_model(args.guidance_from) if args.guidance_from else None
    train_sampler, eval_sampler = _samplers_from_args(
        args, fractures=FractureConfig(probability=args.fracture_probability))
    overrides = {key: value for key, value in dict(
        d_model=args.d_model, layers=args.layers, heads=args.heads, backbone_weights=args.backbone_weights).items()
        if value is not None}
    settings = dict(backbone=args.backbone, patch_size=args.patch_size, fusion=args.fusion,
                    attention_guidance=args.attention_guidance) | trunk | overrides
    model_config = ClassifierConfig.small(**settings) if args.model == "small" else ClassifierConfig(**settings)
    return train_classifier(model_config, train_sampler, _train_config(args), eval_sampler=eval_sampler,
                            init_from=None if resuming else args.init_from, guidance_model=guidance_model)


def train_from_args(args: argparse.Namespace, *, given: set[str] | None = None) -> dict:
    """Build the samplers and the model from command-line arguments and train (also used by the demo).

    ``given``: the flags given on the command line (the others may come from
    the resumed checkpoint); ``None``: all of them.
    """
    from .models import CorrespondenceConfig
    from .train import train_correspondence

    args = _resume_arguments(args, given)
    _check_device(args.device)
    train_sampler, eval_sampler = _samplers_from_args(args)
    overrides = {key: value for key, value in dict(
        attention=args.attention, d_model=args.d_model, layers=args.layers, heads=args.heads,
        backbone_weights=args.backbone_weights, patch_size=args.patch_size).items() if value is not None}
    if args.model == "small":
        model_config = CorrespondenceConfig.small(**overrides)
    else:
        model_config = CorrespondenceConfig(**overrides)
    return train_correspondence(model_config, train_sampler, _train_config(args), eval_sampler=eval_sampler)


def _add_prepare_parser(commands) -> None:
    prepare = commands.add_parser(
        "prepare", help="resample CTs once into a folder the sampler reads (for many CTs; see VolumeBank)",
        formatter_class=_HelpFormatter)
    prepare.add_argument("sources", nargs="+", metavar="CT",
                         help="CT files (NIfTI, NRRD, MHA), DICOM series folders, globs, or list files "
                              "(.txt/.csv: one 'ct[,labels[,patient]]' per line)")
    prepare.add_argument("--output", required=True, help="the prepared folder (an unfinished one is resumed)")
    prepare.add_argument("--spacing", type=float, nargs="+", default=[1.0],
                         help="voxel spacing in mm, one value or three: the sampler's --spacing")
    prepare.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    prepare.add_argument("--air-threshold", type=float, default=-900.0, help="HU at or below which a voxel is air")
    prepare.add_argument("--weighting", choices=["soft", "binary"], default="soft", help="correspondence voxel weights")
    prepare.add_argument("--patient-pattern",
                         help="regular expression whose first group, searched in a CT's path, is its patient id "
                              "(default: every CT its own patient)")
    prepare.add_argument("--overwrite", action="store_true", help="prepare again a folder made with other settings")
    prepare.add_argument("--strict", action="store_true", help="exit with status 1 when a CT cannot be read")


def _prepare_from_args(args: argparse.Namespace) -> int:
    """Run ``onthefly prepare``; print a JSON summary; unreadable CTs are named on stderr."""
    import re
    import sys
    import warnings

    from .sampling.preparation import prepare

    patient_id = None
    if args.patient_pattern:
        pattern = re.compile(args.patient_pattern)

        def patient_id(name: str) -> str:
            match = pattern.search(name)
            if match is None:
                raise SystemExit(f"--patient-pattern: {args.patient_pattern!r} does not match the CT {name}")
            return match.group(1) if match.groups() else match.group(0)

    spacing = args.spacing[0] if len(args.spacing) == 1 else args.spacing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the failures are printed below
        report = prepare(args.sources, args.output, spacing=spacing, workers=args.workers,
                         air_threshold_hu=args.air_threshold, weighting=args.weighting, patient_id=patient_id,
                         overwrite=args.overwrite)
    for name, reason in report.failed:
        print(f"onthefly prepare: could not read {name}: {reason}", file=sys.stderr)
    print(json.dumps(report.summary(), indent=2))
    return 1 if report.failed and args.strict else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onthefly", description=__doc__, formatter_class=_HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="render views of the bundled CT and their correspondences",
                               formatter_class=_HelpFormatter)
    demo.add_argument("--output", default="outputs/demo", help="folder for the pictures and a summary JSON")
    demo.add_argument("--steps", type=int, default=600,
                      help="training steps of the small correspondence model (about 0.5 s each on a 2-core CPU)")
    demo.add_argument("--no-train", action="store_true", help="only render the pictures")
    _add_view_options(demo, alpha=[0.0, 90.0, 45.0])
    preview = commands.add_parser("preview", help="write a PNG of views with patch correspondences",
                                  formatter_class=_HelpFormatter)
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
    train = commands.add_parser("train", help="train a model on the sampler's stream (no stored dataset)",
                                formatter_class=_HelpFormatter)
    tasks = train.add_subparsers(dest="task", required=True)
    _add_train_options(tasks.add_parser("correspondence", help="the patch correspondence transformer",
                                        formatter_class=_HelpFormatter))
    _add_train_options(tasks.add_parser("classifier", help="the multi-view fracture classifier (simulated fractures)",
                                        formatter_class=_HelpFormatter), task="classifier")
    _add_prepare_parser(commands)
    return parser


def _given_flags(argv: list[str] | None) -> set[str]:
    """The destinations of the flags written on the command line (parsed again with every default removed)."""
    parser = _parser()
    pending = [parser]
    while pending:
        current = pending.pop()
        for action in current._actions:  # argparse has no public way to walk its sub-parsers
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
            elif action.dest != "help":
                action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command", "task"}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    if args.command == "prepare":
        return _prepare_from_args(args)

    if args.command == "train":
        train = train_from_args if args.task == "correspondence" else train_classifier_from_args
        try:
            summary = train(args, given=_given_flags(argv))
        except (ValueError, FileNotFoundError) as error:  # input errors name what to change: no traceback
            raise SystemExit(f"onthefly train {args.task}: {error}") from error
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(strict_json({k: v for k, v in summary.items() if k != "model_config"}), indent=2))
        return 0

    if args.command == "preview" and args.sampled:
        print(json.dumps(strict_json(_sampled_preview(args)), indent=2))
        return 0
    if args.command == "preview":
        summary, _, _ = _preview(args)
        print(json.dumps(strict_json(summary), indent=2))
        return 0
    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    args.output = str(folder / "correspondence_preview.png")
    summary, images, titles = _preview(args)
    summary["views_png"] = str(save_views(images[0], folder / "views.png", titles=titles))
    print(json.dumps(strict_json(summary), indent=2))
    if not args.no_train:
        summary["training"] = _demo_training(folder / "train", args.steps)
    write_json(folder / "summary.json", summary)
    return 0


def _demo_training(folder: Path, steps: int) -> dict:
    """Train the small correspondence model on the bundled CT and report loss and held-out AP."""
    parser = argparse.ArgumentParser()
    _add_train_options(parser)
    parser.set_defaults(task="correspondence")
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
