"""``onthefly train correspondence | classifier`` and ``onthefly prepare``: training on the sampler's stream.

Angles are in degrees here only; the library works in radians.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ..checkpoint import strict_json
from ..deformation import AnatomyVariation
from ..physics import Physics
from ..sampling.phantom_store import PHANTOM_PREFIX, PhantomSource, parse_phantom_source
from ..volume import Volume, example_volume
from .common import HelpFormatter, UsageError, check_device

DEMO_TRAINING_FLAGS = ["--model", "small", "--image-size", "128", "--patch-size", "16", "--crop-size", "120",
                       "--spacing", "2", "--batch-size", "8", "--lr", "1e-3", "--log-every", "10", "--device", "cpu"]
"""The demo's training run, as flags of ``onthefly train correspondence`` (plus --steps and the periods)."""

RUN_CONTROL_FLAGS = ("output", "resume", "stop_at", "device", "resume_override", "quiet")
"""Train flags a resume never restores: where the run lives and how this process drives it."""
FREE_ON_RESUME_FLAGS = ("steps", "checkpoint_every", "eval_every", "eval_batches", "log_every", "compile",
                        "tensorboard")
"""Train flags a resume restores when not given and that may be given anew (``--steps`` extends the run)."""
TRUNK_FLAGS = ("backbone", "patch_size", "d_model", "heads", "layers")
"""Classifier flags that describe the trunk, read from the ``--init-from`` checkpoint when not given."""
PHANTOM_SPLIT = (0.9, 0.1)
"""Shares of the phantom seeds for training and evaluation (``--volumes phantom:...``)."""
PHANTOM_MIN_TISSUE_FRACTION = 0.05
"""The samplers' ``min_tissue_fraction`` with phantoms (the sampler's default, 0.2, suits trunk CTs)."""


def _add_train_options(parser: argparse.ArgumentParser, task: str = "correspondence") -> None:
    data = parser.add_argument_group("data (DRRCorrespondenceSampler)")
    data.add_argument("--volumes", nargs="+",
                      help="training CT paths (NIfTI, NRRD, DICOM folders), one folder made by 'onthefly prepare' "
                           "(read as a VolumeBank), or phantom:forearm,wrist,hand[:N] (procedural phantoms, N seeds per region, "
                           "default 100; the first 90 %% train); "
                           "default: the bundled chest CT's inferior 60 %%")
    data.add_argument("--eval-volumes", nargs="+",
                      help="held-out CT paths, one prepared folder or phantom:REGION,...[:N] (its last 10 %% of seeds) (default: "
                           "the bundled CT's superior 40 %%, never seen in training; with a prepared --volumes folder, "
                           "a fifth of its patients; with phantoms, the held-out seeds of its regions)")
    data.add_argument("--views", type=int, default=2, help="views per sample")
    data.add_argument("--image-size", type=int, default=256, help="detector pixels per side (height = width)")
    data.add_argument("--patch-size", type=int, default=16, help="patch edge, pixels (the backbone's stride)")
    data.add_argument("--crop-size", type=float, default=120.0, help="edge of the cube cropped from a CT, mm")
    data.add_argument("--spacing", type=float, default=1.5, help="voxel spacing the CTs are resampled to, mm")
    data.add_argument("--batch-size", type=int, default=16, help="samples per step (per rank)")
    data.add_argument("--eval-angles", choices=["same", "held-out"], default="held-out",
                      help="held-out: train on primary angles in [0, 180) deg, evaluate on [180, 360)")
    data.add_argument("--seed", type=int, default=0, help="stream and initialisation seed (an integer)")
    data.add_argument("--display", choices=["minmax", "radiograph"], default="radiograph",
                      help="how line integrals become the views: min-max scaled, or processed as a radiograph "
                           "(local contrast, percentile window)")
    data.add_argument("--physics", action="store_true",
                      help="domain randomisation: training views become radiographs of a random tube spectrum, "
                           "scatter, detector blur and quantum noise per sample (onthefly.Physics()'s ranges); "
                           "held-out views stay line integrals unless --eval-physics")
    data.add_argument("--eval-physics", action="store_true",
                      help="held-out views are radiographs with onthefly.Physics()'s ranges as well")
    data.add_argument("--anatomy", action="store_true",
                      help="anatomical variation: every training crop is deformed by a random affine and a smooth "
                           "elastic field (onthefly.AnatomyVariation()'s defaults); held-out crops are not")
    if task == "correspondence":
        data.add_argument("--footprint", choices=["exact", "separable"], default="exact",
                          help="correspondence footprints: exact (closed form), or separable (the product of the "
                               "exact footprint's marginals, about half the correspondence time)")
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
                           help="token embedding: patch (ViT-style) | small | vgg | resnet50; with --init-from, "
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
        model.add_argument("--paired-fractures", action="store_true",
                           help="train on paired batches: each fractured crop next to the same crop intact "
                                "(held-out batches stay unpaired)")
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
    run.add_argument("--log-every", type=int, default=10,
                     help="steps between rows of metrics.csv, TensorBoard points and (off a terminal) progress lines")
    run.add_argument("--tensorboard", nargs="?", const="", metavar="DIR",
                     help="also write TensorBoard logs (losses, metrics, learning rate, samples/s, prediction "
                          "pictures) to DIR; --tensorboard alone: OUTPUT/tensorboard; needs pip install 'onthefly[logs]'")
    run.add_argument("--quiet", action="store_true",
                     help="no progress bar: one plain line per --log-every steps on stderr (as when stderr is not a "
                          "terminal)")
    run.add_argument("--resume", action="store_true",
                     help="continue from OUTPUT/checkpoint.pt with the settings saved in it; flags given again "
                          "must agree with them, except --steps (to extend), the periods, --device and --compile")
    run.add_argument("--resume-override", nargs="+", choices=["lr"], default=[],
                     help="with --resume: apply a new --lr on purpose (refused otherwise); the schedule continues "
                          "from the resumed step with it")
    run.add_argument("--stop-at", type=int, help="stop after this step (resumable), e.g. to fit a time budget")


def _samplers_from_args(args: argparse.Namespace, *, train_only: dict | None = None, **extra):
    """The training and held-out samplers the data options describe (``extra``: more sampler settings;
    ``train_only``: settings of the training sampler that replace those)."""
    from ..sampling import DRRCorrespondenceSampler
    from ..train import split_volume

    if args.volumes:
        train_volumes = _ct_sources(args.volumes, "--volumes", args.spacing)
        eval_volumes = _ct_sources(args.eval_volumes, "--eval-volumes", args.spacing) if args.eval_volumes else None
        if isinstance(train_volumes, PhantomSource) and (eval_volumes is None or isinstance(eval_volumes, PhantomSource)):
            # Phantoms: training on the first 90 % of the seeds, evaluation on the last 10 %, never the same seed.
            train_volumes, held_out_seeds = train_volumes.split(PHANTOM_SPLIT)
            eval_volumes = held_out_seeds if eval_volumes is None else eval_volumes.split(PHANTOM_SPLIT)[1]
        elif eval_volumes is None and not isinstance(train_volumes, list):  # a prepared folder: a fifth held out
            held_out = max(0.2, 1.0 / len(train_volumes))  # at least one CT
            train_volumes, eval_volumes = train_volumes.split((1.0 - held_out, held_out), seed=args.seed)
        elif eval_volumes is None:
            raise SystemExit("--eval-volumes: give held-out CTs with --volumes (evaluation never reuses training CTs), "
                             "or give --volumes a prepared folder (a fifth of its patients is held out)")
    else:
        train_part, eval_part = split_volume(example_volume(labels=True), fraction=0.6)
        train_volumes, eval_volumes = [train_part], [eval_part]
    held_out = args.eval_angles == "held-out"
    common = dict(views=args.views, image_size=args.image_size, patch_size=args.patch_size,
                  crop_size=args.crop_size, spacing=args.spacing, batch_size=args.batch_size,
                  device=check_device(args.device), display=getattr(args, "display", "radiograph"),
                  footprint=getattr(args, "footprint", "exact"), **extra)
    if isinstance(train_volumes, PhantomSource):
        # A limb fills little of a cube crop (a hand is about 30 mm thick): the chest CT's tissue threshold would
        # reject most of its crops.
        common.setdefault("min_tissue_fraction", PHANTOM_MIN_TISSUE_FRACTION)
    physics = Physics() if getattr(args, "physics", False) else None
    anatomy = AnatomyVariation() if getattr(args, "anatomy", False) else None
    train_sampler = DRRCorrespondenceSampler(
        volumes=train_volumes, seed=args.seed, **(common | {"physics": physics, "anatomy": anatomy}
                                                  | (train_only or {})),
        **({"alpha": (0.0, math.pi)} if held_out else {}))
    eval_sampler = DRRCorrespondenceSampler(
        volumes=eval_volumes, seed=args.seed + 10_000, augmentation=None, **common,
        physics=Physics() if getattr(args, "eval_physics", False) else None,
        **({"alpha": (math.pi, 2 * math.pi)} if held_out else {}))
    return train_sampler, eval_sampler


def _ct_sources(paths: list[str], flag: str, spacing: float):
    """CT files as volumes, one prepared folder (``onthefly prepare``) as a :class:`~onthefly.sampling.bank.VolumeBank`,
    or ``phantom:REGION,...`` as a :class:`~onthefly.sampling.phantom_store.PhantomSource`."""
    from ..sampling.bank import VolumeBank, is_prepared_folder

    phantoms = [path for path in paths if str(path).startswith(PHANTOM_PREFIX)]
    if phantoms:
        if len(paths) > 1:
            raise SystemExit(f"{flag}: give 'phantom:REGION,...' alone (not beside CT files), got {len(paths)} sources")
        try:
            return parse_phantom_source(paths[0])
        except ValueError as error:
            raise SystemExit(f"{flag}: {str(error).removeprefix('volumes: ')}") from None
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
    from ..train import TrainConfig

    return TrainConfig(
        output=args.output, steps=args.steps, lr=args.lr, device=check_device(args.device), amp=not args.no_amp,
        compile=args.compile, checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
        eval_batches=args.eval_batches, log_every=args.log_every, resume=args.resume, stop_at=args.stop_at,
        seed=args.seed, resume_overrides=tuple(getattr(args, "resume_override", None) or ()),
        command=_command_settings(args), progress="lines" if args.quiet else "auto",
        tensorboard=_tensorboard_folder(args),
    )


def _tensorboard_folder(args: argparse.Namespace) -> str | None:
    """The TensorBoard folder of ``--tensorboard [DIR]`` (alone: under ``--output``), checked to be usable."""
    from ..logs import tensorboard_missing

    if args.tensorboard is None:
        return None
    missing = tensorboard_missing()
    if missing:
        raise UsageError(f"--tensorboard: {missing}")
    return args.tensorboard or str(Path(args.output) / "tensorboard")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _resume_arguments(args: argparse.Namespace, given: set[str] | None) -> argparse.Namespace:
    """With ``--resume`` and a checkpoint in ``--output``: the saved run's flags where none was given;
    a given flag that differs from the saved one stops the run (``SystemExit`` listing them)."""
    from ..checkpoint import TRAINING_KEYS, load_checkpoint

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
    from ..checkpoint import load_checkpoint

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
    from ..checkpoint import load_checkpoint
    from ..models import CorrespondenceConfig, CorrespondenceModel

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
    from ..fractures import FractureConfig
    from ..models import ClassifierConfig
    from ..train import train_classifier

    args = _resume_arguments(args, given)
    config = _train_config(args)  # checks the device and --tensorboard before any work
    resuming = args.resume and (Path(args.output) / "checkpoint.pt").exists()
    trunk = _trunk_arguments(args, given) if args.init_from and not resuming else {}
    guidance_model = _guidance_model(args.guidance_from) if args.guidance_from else None
    fractures = FractureConfig(probability=args.fracture_probability)
    paired = {"fractures": replace(fractures, paired=True)} if getattr(args, "paired_fractures", False) else None
    train_sampler, eval_sampler = _samplers_from_args(args, fractures=fractures, train_only=paired)
    overrides = {key: value for key, value in dict(
        d_model=args.d_model, layers=args.layers, heads=args.heads, backbone_weights=args.backbone_weights).items()
        if value is not None}
    settings = dict(backbone=args.backbone, patch_size=args.patch_size, fusion=args.fusion,
                    attention_guidance=args.attention_guidance) | trunk | overrides
    model_config = ClassifierConfig.small(**settings) if args.model == "small" else ClassifierConfig(**settings)
    return train_classifier(model_config, train_sampler, config, eval_sampler=eval_sampler,
                            init_from=None if resuming else args.init_from, guidance_model=guidance_model)


def train_from_args(args: argparse.Namespace, *, given: set[str] | None = None) -> dict:
    """Build the samplers and the model from command-line arguments and train (also used by the demo).

    ``given``: the flags given on the command line (the others may come from
    the resumed checkpoint); ``None``: all of them.
    """
    from ..models import CorrespondenceConfig
    from ..train import train_correspondence

    args = _resume_arguments(args, given)
    config = _train_config(args)  # checks the device and --tensorboard before any work
    train_sampler, eval_sampler = _samplers_from_args(args)
    overrides = {key: value for key, value in dict(
        attention=args.attention, d_model=args.d_model, layers=args.layers, heads=args.heads,
        backbone_weights=args.backbone_weights, patch_size=args.patch_size).items() if value is not None}
    if args.model == "small":
        model_config = CorrespondenceConfig.small(**overrides)
    else:
        model_config = CorrespondenceConfig(**overrides)
    return train_correspondence(model_config, train_sampler, config, eval_sampler=eval_sampler)


def add_prepare_parser(commands) -> None:
    from .common import positive

    prepare = commands.add_parser(
        "prepare", help="resample CTs once into a folder the sampler reads (for many CTs; see VolumeBank)",
        formatter_class=HelpFormatter,
        description="Resample CTs once into a folder the sampler reads. Bad flags, a glob that matches nothing, or "
                    "a run in which no CT could be prepared end with exit status 2 and a message naming the flag.")
    prepare.add_argument("sources", nargs="+", metavar="CT",
                         help="CT files (NIfTI, NRRD, MHA), DICOM series folders, globs, list files "
                              "(.txt/.csv: one 'ct[,labels[,patient]]' per line), or phantom:forearm,wrist,hand "
                              "(procedural phantoms, --count seeds per region)")
    prepare.add_argument("--output", required=True, help="the prepared folder (an unfinished one is resumed)")
    prepare.add_argument("--count", type=positive(int),
                         help="with phantom:REGION,... sources: seeds per region (0 to COUNT-1; default 100)")
    prepare.add_argument("--spacing", type=positive(float), nargs="+", default=[1.0],
                         help="voxel spacing in mm, one value or three: the sampler's --spacing")
    prepare.add_argument("--workers", type=positive(int), default=1,
                         help="CTs prepared at once (threads of this process)")
    prepare.add_argument("--air-threshold", type=float, default=-900.0, help="HU at or below which a voxel is air")
    prepare.add_argument("--weighting", choices=["soft", "binary"], default="soft", help="correspondence voxel weights")
    prepare.add_argument("--patient-pattern",
                         help="regular expression whose first group, searched in a CT's path, is its patient id "
                              "(default: every CT its own patient)")
    prepare.add_argument("--overwrite", action="store_true", help="prepare again a folder made with other settings")
    prepare.add_argument("--strict", action="store_true", help="exit with status 1 when a CT cannot be read")


PREPARE_FLAGS = {"sources": "CT", "volumes": "CT", "output": "--output", "spacing": "--spacing", "workers": "--workers",
                 "air_threshold_hu": "--air-threshold", "weighting": "--weighting", "patient_id": "--patient-pattern"}
"""The flag of each argument of :func:`~onthefly.sampling.preparation.prepare`, for its error messages."""


def _patient_id(pattern_text: str | None):
    """The ``--patient-pattern`` as a function from a CT's path to its patient id (:class:`UsageError` if bad)."""
    import re

    if not pattern_text:
        return None
    try:
        pattern = re.compile(pattern_text)
    except re.error as error:
        raise UsageError(f"--patient-pattern: {pattern_text!r} is not a regular expression ({error})") from None

    def patient_id(name: str) -> str:
        match = pattern.search(name)
        if match is None:
            raise UsageError(f"--patient-pattern: {pattern_text!r} does not match the CT {name}")
        patient = match.group(1) if pattern.groups else match.group(0)
        if not patient:
            raise UsageError(f"--patient-pattern: {pattern_text!r} finds an empty patient id in the CT {name}")
        return patient

    return patient_id


def run_prepare(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Run ``onthefly prepare``; print a JSON summary; unreadable CTs are named on stderr.

    Exit status 0, 1 with ``--strict`` when some CT could not be read, 2 for bad flags and
    when no CT could be prepared.
    """
    import warnings

    from ..sampling.preparation import prepare

    if len(args.spacing) not in (1, 3):
        raise UsageError(f"--spacing: expected one or three values (mm), got {len(args.spacing)}: {args.spacing}")
    patient_id = _patient_id(args.patient_pattern)
    spacing = args.spacing[0] if len(args.spacing) == 1 else args.spacing
    phantoms = [source for source in args.sources if source.startswith(PHANTOM_PREFIX)]
    if args.count is not None and not phantoms:
        raise UsageError("--count: counts the seeds of phantom:REGION,... sources; none was given")
    if args.count is not None:
        if any(source.count(":") > 1 for source in phantoms):
            raise UsageError("--count: give the number of seeds once, as --count or as phantom:REGION,...:N")
        args.sources = [f"{source}:{args.count}" if source in phantoms else source for source in args.sources]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the failures are printed below
            report = prepare(args.sources, args.output, spacing=spacing, workers=args.workers,
                             air_threshold_hu=args.air_threshold, weighting=args.weighting, patient_id=patient_id,
                             overwrite=args.overwrite)
    except (ValueError, TypeError) as error:  # the message starts with the argument's name: name the flag instead
        name, _, rest = str(error).partition(": ")
        flag = PREPARE_FLAGS.get(name.split("[")[0])
        raise UsageError(f"{flag}: {rest}" if flag else str(error)) from None
    for name, reason in report.failed:
        print(f"onthefly prepare: could not read {name}: {reason}", file=sys.stderr)
    print(json.dumps(report.summary(), indent=2))
    return 1 if report.failed and args.strict else 0


def add_train_parser(commands) -> None:
    train = commands.add_parser("train", help="train a model on the sampler's stream (no stored dataset)",
                                formatter_class=HelpFormatter)
    tasks = train.add_subparsers(dest="task", required=True)
    _add_train_options(tasks.add_parser("correspondence", help="the patch correspondence transformer",
                                        formatter_class=HelpFormatter))
    _add_train_options(tasks.add_parser("classifier", help="the multi-view fracture classifier (simulated fractures)",
                                        formatter_class=HelpFormatter), task="classifier")


def run_train(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Run ``onthefly train TASK``; print the summary as JSON (rank 0)."""
    from . import given_flags

    train = train_from_args if args.task == "correspondence" else train_classifier_from_args
    try:
        summary = train(args, given=given_flags(argv))
    except (ValueError, FileNotFoundError) as error:  # input errors name what to change: no traceback
        raise SystemExit(f"onthefly train {args.task}: {error}") from error
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(strict_json({k: v for k, v in summary.items() if k != "model_config"}), indent=2))
    return 0


def compare_correspondence_runs(runs: dict[str, list[str]], evaluation: dict, *, steps: int, eval_batches: int,
                                output: str | Path, quiet: bool = False) -> dict:
    """Train one small correspondence model per entry of ``runs`` and score each, and an untrained one, on the same
    held-out samplers (the transfer experiments in ``examples/``).

    Args:
        runs: ``{name: flags}``: extra flags of ``onthefly train correspondence`` after the demo's
            (:data:`DEMO_TRAINING_FLAGS`); each run writes ``output/<name>/``.
        evaluation: ``{name: sampler}``, the held-out streams every model is scored on.
        steps, eval_batches: training steps of each run; held-out batches per evaluation set.

    Returns:
        ``{run name or "untrained": {"scores": {set name: {"ap", "mse"}}, ...}}`` (also printed as a table).
    """
    from ..checkpoint import load_checkpoint
    from ..models import CorrespondenceConfig, CorrespondenceModel
    from ..train import evaluate_correspondence

    def scores(model) -> dict:
        return {name: {key: value for key, value in evaluate_correspondence(model, sampler, batches=eval_batches)[0]
                       .items() if key in ("ap", "mse")} for name, sampler in evaluation.items()}

    results, config = {}, None
    for name, flags in runs.items():
        parser = argparse.ArgumentParser()
        _add_train_options(parser)
        parser.set_defaults(task="correspondence")
        folder = Path(output) / name.replace(" ", "_")
        args = parser.parse_args([*DEMO_TRAINING_FLAGS, *flags, "--steps", str(steps), "--eval-every", str(steps),
                                  "--eval-batches", "1", "--checkpoint-every", str(max(1, steps // 3)),
                                  "--output", str(folder), *(["--quiet"] if quiet else [])])
        print(f"Training on {name} for {steps} steps ...", flush=True)
        summary = train_from_args(args)
        state = load_checkpoint(folder / "checkpoint.pt", required=("model", "model_config"))
        config = CorrespondenceConfig(**state["model_config"])
        model = CorrespondenceModel(config)
        model.load_state_dict(state["model"])
        results[name] = {"scores": scores(model), "loss_first_10pct": summary["loss_first"],
                         "loss_last_10pct": summary["loss_last"], "seconds": summary.get("seconds")}
    torch.manual_seed(0)
    results["untrained"] = {"scores": scores(CorrespondenceModel(config))}
    width = max(len(name) for name in results) + 2
    print(f"{'trained on':<{width}}" + "".join(f"{name + ' AP':>34}" for name in evaluation))
    for name, result in results.items():
        print(f"{name:<{width}}" + "".join(f"{result['scores'][set_name]['ap']:>34.3f}" for set_name in evaluation))
    return results
