"""Angular sequences on the fly: learn the transition from one projection to the next (Xray2Xray's set-up).

Run: ``python examples/angular_sequence.py`` (about 1-2 minutes on a
2-core CPU at the defaults: 300 steps); ``--steps 3`` for a smoke test.

Every step draws a fresh batch from ``AngularSequenceSampler`` with the
geometry of a standing PA chest radiograph (``chest=True``: start at PA,
sid 1650 mm, sdd 1800 mm): random 160 mm crops of the bundled chest CT
(resampled to 4 mm so each step is fast) seen from T = 8 primary angles at
sorted random positions over an arc of 30-90 degrees. The model is a
deliberately tiny next-view predictor: given view ``t`` and the angular step
to view ``t + 1`` (a constant input channel, radians), a small convolutional
encoder-decoder predicts the change to view ``t + 1``. The loss is the L1
between predicted and true next views over the T - 1 transitions.

It prints the loss every ``--log-every`` steps, evaluates a fixed held-out
batch (another seed) before and after training next to the "copy the current
view" baseline, and writes the figures to ``outputs/examples/angular_sequence.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

import onthefly as otf
from onthefly.checkpoint import write_json
from onthefly.logs import Progress
from onthefly.tasks import AngularSequenceSampler


class TinyNextViewNet(nn.Module):
    """``(N, 1, H, W)`` views and ``(N,)`` angular steps (radians) to ``(N, 1, H, W)`` next views in [0, 1]."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(2, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(),
        )
        self.up = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.GELU())
        self.head = nn.Conv2d(width + 2, 1, 3, padding=1)

    def forward(self, views: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([views, step.view(-1, 1, 1, 1).expand_as(views)], 1)
        change = self.head(torch.cat([self.up(self.down(inputs)), inputs], 1))
        return (views + change).clamp(0.0, 1.0)


def transitions(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Current views ``(B (T-1), 1, H, W)``, angular steps ``(B (T-1),)`` and next views."""
    images, angles = batch.images, batch.angles
    current = images[:, :-1].flatten(0, 1)
    following = images[:, 1:].flatten(0, 1)
    return current, angles.diff(dim=1).flatten(), following


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps (one fresh batch each)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    parser.add_argument("--log-every", type=int, default=25,
                        help="steps between progress lines (off a terminal) and bar updates of the loss")
    parser.add_argument("--output", default="outputs/examples/angular_sequence.json", help="the summary JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar: plain progress lines on stderr")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    ct = otf.example_volume(labels=False)
    data = dict(volumes=[ct], views=8, chest=True, angular_spacing="random",
                arc=(math.radians(30.0), math.radians(90.0)), image_size=64, patch_size=16, crop_size=160.0,
                spacing=4.0)
    sampler = AngularSequenceSampler(**data, batch_size=args.batch_size, seed=0)
    held_out = AngularSequenceSampler(**data, batch_size=8, seed=1).sample(0)
    model = TinyNextViewNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"images {tuple(held_out.images.shape)}, angles {tuple(held_out.angles.shape)} (rad, first sample: "
          f"{', '.join(f'{math.degrees(a):.0f}' for a in held_out.angles[0].tolist())} deg); "
          f"model {sum(p.numel() for p in model.parameters()):,} parameters")

    @torch.no_grad()
    def evaluate() -> dict:
        current, step, following = transitions(held_out)
        return {"l1": float((model(current, step) - following).abs().mean()),
                "copy_baseline_l1": float((current - following).abs().mean())}

    before = evaluate()
    history = []
    start = time.perf_counter()
    progress = Progress(total=args.steps, description=f"train {Path(__file__).stem}",
                        mode="lines" if args.quiet else "auto")
    for step, batch in zip(range(args.steps), sampler):
        current, angle_step, following = transitions(batch)
        loss = (model(current, angle_step) - following).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(float(loss.detach()))
        progress.update()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            progress.log({"next-view L1": history[-1]})
    progress.close()
    after = evaluate()
    window = max(1, min(10, len(history) // 2))
    summary = {
        "command": " ".join(["python examples/angular_sequence.py", *(sys.argv[1:] if argv is None else argv)]),
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
    print(f"training next-view L1 (mean of {window} steps): {summary['first_window_mean']:.4f} -> "
          f"{summary['last_window_mean']:.4f}")
    print(f"held-out next-view L1 {before['l1']:.4f} -> {after['l1']:.4f} "
          f"(copying the current view: {after['copy_baseline_l1']:.4f})")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, summary)  # strict JSON: null, never NaN
    print(f"wrote {output}")
    return summary


if __name__ == "__main__":
    main()
