"""Novel-view synthesis on the fly: a source DRR and a relative pose in, the target view out (SV-DRR's set-up).

Run: ``python examples/novel_view.py`` (about 1-2 minutes on a
2-core CPU at the defaults: 300 steps); ``--steps 3`` for a smoke test.

Every step draws a fresh batch from ``NovelViewSampler``: random 160 mm crops
of the bundled chest CT (resampled to 4 mm so each step is fast), a source view
from the sampler's default pose distributions at 64 x 64, and one target view
of the same crop with the primary angle turned by -45..45 degrees and the
secondary angle by -10..10 degrees, rendered at 64 x 64 (``--target-size``
changes it; same field of view). The model is a deliberately tiny
pose-conditioned view predictor: a convolutional encoder-decoder whose
bottleneck is modulated (FiLM) by an MLP of the relative pose (the sines and
cosines of the relative angles, and the 3 x 4 relative camera transform with
its translation in metres). The loss is the L1 between predicted and true targets.

It prints the loss every ``--log-every`` steps, evaluates a fixed held-out
batch (another seed) before and after training next to the "copy the source
view" baseline, and writes the figures to ``outputs/examples/novel_view.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import onthefly as otf
from onthefly.checkpoint import write_json
from onthefly.logs import Progress
from onthefly.tasks import NovelViewBatch, NovelViewSampler


def pose_features(batch: NovelViewBatch) -> torch.Tensor:
    """``(B, 18)``: sin and cos of the relative angles and the relative camera transform (translation in m)."""
    angles = batch.relative_angles[:, 0]
    pose = batch.relative_pose[:, 0, :3].clone()
    pose[:, :, 3] /= 1000.0
    return torch.cat([angles.sin(), angles.cos(), pose.flatten(1)], 1)


class TinyNovelViewNet(nn.Module):
    """``(B, 1, H, W)`` source views and ``(B, 18)`` pose features to ``(B, 1, H', W')`` target views in [0, 1]."""

    def __init__(self, width: int = 32, pose_features: int = 18) -> None:
        super().__init__()
        self.encoder = nn.Sequential(  # H -> H / 8
            nn.Conv2d(1, width // 2, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width // 2, width, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 4, stride=2, padding=1), nn.GELU(),
        )
        self.film = nn.Sequential(nn.Linear(pose_features, 64), nn.GELU(), nn.Linear(64, 2 * width))
        self.mix = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GELU())
        self.decoder = nn.Sequential(  # H / 8 -> H
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.GELU(),
            nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1), nn.GELU(),
            nn.ConvTranspose2d(width // 2, 1, 4, stride=2, padding=1),
        )

    def forward(self, source: torch.Tensor, pose: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        scale, shift = self.film(pose)[:, :, None, None].chunk(2, 1)
        features = self.mix(self.encoder(source) * (1 + scale) + shift)
        out = self.decoder(features)
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps (one fresh batch each)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step")
    parser.add_argument("--target-size", type=int, default=64,
                        help="target views' pixels per side (a multiple of 16; the same field of view as the source)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    parser.add_argument("--log-every", type=int, default=25,
                        help="steps between progress lines (off a terminal) and bar updates of the loss")
    parser.add_argument("--output", default="outputs/examples/novel_view.json", help="the summary JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar: plain progress lines on stderr")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    ct = otf.example_volume(labels=False)
    data = dict(volumes=[ct], targets=1, target_size=args.target_size, image_size=64, patch_size=16,
                relative_angle=(-math.radians(45.0), math.radians(45.0)),
                relative_beta=(-math.radians(10.0), math.radians(10.0)), crop_size=160.0, spacing=4.0)
    sampler = NovelViewSampler(**data, batch_size=args.batch_size, seed=0)
    held_out = NovelViewSampler(**data, batch_size=16, seed=1).sample(0)
    model = TinyNovelViewNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    size = tuple(held_out.targets.shape[-2:])
    print(f"source {tuple(held_out.source.shape)}, targets {tuple(held_out.targets.shape)}, relative_angles "
          f"{tuple(held_out.relative_angles.shape)}, relative_pose {tuple(held_out.relative_pose.shape)}, "
          f"correspondence {tuple(held_out.correspondence.shape)}; model {sum(p.numel() for p in model.parameters()):,} parameters")

    def predict(batch: NovelViewBatch) -> torch.Tensor:
        return model(batch.source[:, 0], pose_features(batch), size)

    @torch.no_grad()
    def evaluate() -> dict:
        target = held_out.targets[:, 0]
        source = F.interpolate(held_out.source[:, 0], size=size, mode="bilinear", align_corners=False)
        return {"l1": float((predict(held_out) - target).abs().mean()),
                "copy_baseline_l1": float((source - target).abs().mean())}

    before = evaluate()
    history = []
    start = time.perf_counter()
    progress = Progress(total=args.steps, description=f"train {Path(__file__).stem}",
                        mode="lines" if args.quiet else "auto")
    for step, batch in zip(range(args.steps), sampler):
        loss = (predict(batch) - batch.targets[:, 0]).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(float(loss.detach()))
        progress.update()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            progress.log({"target L1": history[-1]})
    progress.close()
    after = evaluate()
    window = max(1, min(10, len(history) // 2))
    summary = {
        "command": " ".join(["python examples/novel_view.py", *(sys.argv[1:] if argv is None else argv)]),
        "steps": len(history),
        "seconds": time.perf_counter() - start,
        "first_loss": history[0],
        "last_loss": history[-1],
        "first_window_mean": sum(history[:window]) / window,
        "last_window_mean": sum(history[-window:]) / window,
        "window": window,
        "held_out_before": before,
        "held_out_after": after,
        "settings": vars(args),
    }
    print(f"training target L1 (mean of {window} steps): {summary['first_window_mean']:.4f} -> "
          f"{summary['last_window_mean']:.4f}")
    print(f"held-out target L1 {before['l1']:.4f} -> {after['l1']:.4f} "
          f"(copying the source view: {after['copy_baseline_l1']:.4f})")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, summary)  # strict JSON: null, never NaN
    print(f"wrote {output}")
    return summary


if __name__ == "__main__":
    main()
