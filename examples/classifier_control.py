"""A control for the fracture classifier: can it learn a marker of known contrast on DRRs?

Independent of the fracture model: DRRs of the bundled CT (no fracture, no
augmentation) with, in half of the samples, a square of ``--edge`` pixels
whose display value is raised by ``--amplitude`` (0-1 display units) at one
random place, the same pixel in both views. The classifier of
``examples/fracture_table3.py`` (the CNN classifier, early fusion, study logit
= largest patch logit, study plus patch detection loss) trains on DRRs of the
CT's inferior 60 % and is evaluated on DRRs of its superior 40 %.

It tells what contrast the classifier learns at a given budget, to set beside
the fractures' own (``benchmarks/fractures.py`` measures their largest display
change per sample). Backgrounds are rendered once (``--backgrounds`` batches)
and reused with new markers at every step.

Run: ``.venv/bin/python examples/classifier_control.py --amplitude 0.3`` (about
1 minute on a 2-core CPU); prints held-out accuracy, the share of samples
called marked and the patch hit rate (top patch is the marker's or a
neighbour's, per marked view).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import onthefly as otf
from onthefly.models import ClassifierConfig
from onthefly.train import split_volume
from onthefly.train.classifier import _ClassifierTask


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--amplitude", type=float, default=0.3, help="marker contrast, display units (0-1)")
    parser.add_argument("--edge", type=int, default=8, help="marker edge, pixels")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--spacing", type=float, default=1.5, help="CT voxel spacing, mm")
    parser.add_argument("--crop-size", type=float, default=112.0, help="crop edge, mm")
    parser.add_argument("--backbone", default="vgg", choices=["vgg", "small"],
                        help="the CNN under the tokens (onthefly.models.backbone); 'small' was the former default")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers on the CNN")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--backgrounds", type=int, default=24, help="training batches of DRRs rendered once")
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 < args.amplitude <= 1:
        parser.error(f"--amplitude: expected a contrast in (0, 1], got {args.amplitude}")
    if args.edge < 1 or args.edge > args.image_size:
        parser.error(f"--edge: expected 1 to --image-size ({args.image_size}) pixels, got {args.edge}")
    return args


def backgrounds(volume, seed: int, batches: int, args) -> torch.Tensor:
    sampler = otf.DRRCorrespondenceSampler(
        volumes=[volume], seed=seed, views=2, image_size=args.image_size, patch_size=16, crop_size=args.crop_size,
        spacing=args.spacing, batch_size=args.batch_size, correspondence=False, augmentation=None)
    return torch.cat([sampler.sample(step).images for step in range(batches)])


def marked(generator: torch.Generator, images: torch.Tensor, args):
    """A batch of ``images`` with the marker in about half of the samples, as the classifier's loss reads it."""
    from types import SimpleNamespace

    size, edge, height = args.batch_size, args.edge, args.image_size
    chosen = images[torch.randint(len(images), (size,), generator=generator)].clone()
    label = torch.rand(size, generator=generator) < 0.5
    pixel = torch.full((size, 2, 2), float("nan"))
    for sample in torch.nonzero(label)[:, 0].tolist():
        top, left = (torch.randint(edge // 2, height - (edge - edge // 2) + 1, (2,), generator=generator)
                     - edge // 2).tolist()  # the square's first row and column
        chosen[sample, :, 0, top:top + edge, left:left + edge] += args.amplitude
        pixel[sample] = torch.tensor([top + (edge - 1) / 2, left + (edge - 1) / 2])  # its centre
    grid = (height // 16, height // 16)
    return SimpleNamespace(images=chosen.clamp(0, 1), fracture=label, fracture_pixel=pixel, grid_shape=grid,
                           patch_size=16, correspondence=None, step=0)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.manual_seed(args.seed)
    train_part, held_out = split_volume(otf.example_volume(), fraction=0.6)
    train_images = backgrounds(train_part, args.seed, args.backgrounds, args)
    eval_images = backgrounds(held_out, 10_000 + args.seed, max(1, args.eval_batches // 2), args)
    task = _ClassifierTask(ClassifierConfig.cnn(backbone=args.backbone, layers=args.layers, pooling="max", fusion="early"))
    model = task.build()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    began = time.perf_counter()
    for _ in range(args.steps):
        loss = task.loss(model, marked(generator, train_images, args))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    right = called = hits = views = 0
    with torch.no_grad():
        for _ in range(args.eval_batches):
            batch = marked(generator, eval_images, args)
            output = model.predict(batch.images, None)
            right += int(((output.logits > 0) == batch.fracture).sum())
            called += int((output.logits > 0).sum())
            best = output.patch_logits.argmax(-1)[batch.fracture]  # (marked, V)
            truth = (batch.fracture_pixel[batch.fracture] + 0.5).div(16).floor()
            columns = batch.grid_shape[1]
            near = ((best // columns - truth[..., 0]).abs() <= 1) & ((best % columns - truth[..., 1]).abs() <= 1)
            hits += int(near.sum())
            views += best.numel()
    samples = args.eval_batches * args.batch_size
    result = {"amplitude": args.amplitude, "edge": args.edge, "steps": args.steps, "accuracy": right / samples,
              "called_marked": called / samples, "patch_hit": hits / max(views, 1),
              "minutes": (time.perf_counter() - began) / 60}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
