"""Biplanar X-ray to CT on the fly: a PA and a lateral DRR in, the CT crop out (X-Recon's set-up).

Run: ``python examples/biplanar_reconstruction.py`` (about 1-2 minutes
on a 2-core CPU at the defaults: 300 steps); ``--steps 3`` for a smoke test.

Every step draws a fresh batch from ``BiplanarSampler``: random 160 mm crops of
the bundled chest CT (resampled to 4 mm so each step is fast), a PA and a left
lateral view of each (3 degrees of angle jitter), and the crop resampled to
32^3 voxels in [0, 1] (HU window -1000..2000). The model is deliberately tiny:
a shared 2-D encoder per view, a linear map from both views' features to a
4^3 x 32 grid, and a 3-D transposed-convolution decoder to 32^3. The loss is
the voxel L1 plus ``ProjectionLoss`` (the mean L1 between DRRs of the predicted
and true volumes from the PA, lateral and axial directions), which is rendered
differentiably with the library's projector.

It prints the losses every ``--log-every`` steps, evaluates a fixed held-out
batch (another seed) before and after training, and writes the figures to
``outputs/examples/biplanar_reconstruction.json``.
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
from onthefly.tasks import BiplanarSampler, ProjectionLoss


class TinyBiplanarNet(nn.Module):
    """``(B, 2, 1, H, W)`` views (H = W = 64) to ``(B, 1, 32, 32, 32)`` volumes in [0, 1]."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(  # 64 -> 8, shared by both views
            nn.Conv2d(1, width, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, width, 4, stride=2, padding=1), nn.GELU(),
        )
        self.view_embedding = nn.Parameter(torch.zeros(2, width, 1, 1))  # tells PA from lateral
        self.to_grid = nn.Linear(2 * width * 8 * 8, 2 * width * 4**3)
        self.decoder = nn.Sequential(  # 4^3 -> 32^3
            nn.ConvTranspose3d(2 * width, width, 4, stride=2, padding=1), nn.GELU(),
            nn.ConvTranspose3d(width, width // 2, 4, stride=2, padding=1), nn.GELU(),
            nn.ConvTranspose3d(width // 2, 1, 4, stride=2, padding=1),
        )
        self.width = width

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        b, v = views.shape[:2]
        features = self.encoder(views.flatten(0, 1)).unflatten(0, (b, v)) + self.view_embedding
        grid = self.to_grid(features.flatten(1)).view(b, 2 * self.width, 4, 4, 4)
        return torch.sigmoid(self.decoder(grid))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps (one fresh batch each)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    parser.add_argument("--projection-weight", type=float, default=0.2,
                        help="weight of the projection L1 (PA, lateral, axial DRRs) beside the voxel L1")
    parser.add_argument("--log-every", type=int, default=25,
                        help="steps between progress lines (off a terminal) and bar updates of the loss")
    parser.add_argument("--output", default="outputs/examples/biplanar_reconstruction.json", help="the summary JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar: plain progress lines on stderr")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    ct = otf.example_volume(labels=False)
    data = dict(volumes=[ct], volume_size=32, image_size=64, patch_size=16, crop_size=160.0, spacing=4.0,
                angle_jitter=math.radians(3.0))
    sampler = BiplanarSampler(**data, batch_size=args.batch_size, seed=0)
    held_out = BiplanarSampler(**data, batch_size=8, seed=1).sample(0)  # a fixed evaluation batch
    model = TinyBiplanarNet()
    projection = ProjectionLoss(height=32)  # PA, lateral, axial; 32 x 32 detector framing each volume
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"images {tuple(held_out.images.shape)}, volume {tuple(held_out.volume.shape)}, "
          f"volume_affine {tuple(held_out.volume_affine.shape)}; model {sum(p.numel() for p in model.parameters()):,} parameters")

    def losses(batch, predicted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        voxel = (predicted - batch.volume).abs().mean()
        return voxel, projection(predicted, batch.volume, batch.volume_affine)

    @torch.no_grad()
    def evaluate() -> dict:
        model.eval()
        voxel, drr = losses(held_out, model(held_out.images))
        model.train()
        # Baseline that ignores the images: the held-out batch's own mean volume for every sample.
        average = held_out.volume.mean(0, keepdim=True).expand_as(held_out.volume)
        return {"voxel_l1": float(voxel), "projection_l1": float(drr),
                "mean_volume_baseline_voxel_l1": float((average - held_out.volume).abs().mean())}

    before = evaluate()
    history = []
    start = time.perf_counter()
    progress = Progress(total=args.steps, description=f"train {Path(__file__).stem}",
                        mode="lines" if args.quiet else "auto")
    for step, batch in zip(range(args.steps), sampler):
        voxel, drr = losses(batch, model(batch.images))
        loss = voxel + args.projection_weight * drr
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append({"loss": float(loss.detach()), "voxel_l1": float(voxel.detach()), "projection_l1": float(drr.detach())})
        progress.update()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            progress.log({"loss": history[-1]["loss"], "voxel L1": history[-1]["voxel_l1"], "projection L1": history[-1]["projection_l1"]})
    progress.close()
    after = evaluate()
    window = max(1, min(10, len(history) // 2))
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    summary = {
        "command": " ".join(["python examples/biplanar_reconstruction.py", *(sys.argv[1:] if argv is None else argv)]),
        "steps": len(history),
        "seconds": time.perf_counter() - start,
        "first_loss": history[0]["loss"],
        "last_loss": history[-1]["loss"],
        "first_window_mean": {k: mean(history[:window], k) for k in ("loss", "voxel_l1", "projection_l1")},
        "last_window_mean": {k: mean(history[-window:], k) for k in ("loss", "voxel_l1", "projection_l1")},
        "window": window,
        "held_out_before": before,
        "held_out_after": after,
        "settings": vars(args),
    }
    print(f"training loss (mean of {window} steps): {summary['first_window_mean']['loss']:.4f} -> "
          f"{summary['last_window_mean']['loss']:.4f}")
    print(f"held-out voxel L1 {before['voxel_l1']:.4f} -> {after['voxel_l1']:.4f}, "
          f"projection L1 {before['projection_l1']:.4f} -> {after['projection_l1']:.4f} "
          f"(the batch's mean volume for every sample: voxel L1 {after['mean_volume_baseline_voxel_l1']:.4f})")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, summary)  # strict JSON: null, never NaN
    print(f"wrote {output}")
    return summary


if __name__ == "__main__":
    main()
