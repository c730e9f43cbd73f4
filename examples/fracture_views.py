"""Simulated rib fractures on the fly: one fracture seen in three views, with its per-view targets.

Run: ``.venv/bin/python examples/fracture_views.py`` (about 10 s on a 2-core CPU).

The sampler cuts a thin gap (here with a displaced fragment) through a bone
voxel of each crop before rendering, and returns the label per sample
(``batch.fracture``) and the fracture centre projected into every view
(``batch.fracture_pixel``, ``batch.fracture_patch``). The picture shows one
sample: the three views with the projected centre marked, a zoom around the
mark, and the drop in line integral caused by the fracture (the intact crop's
render minus the fractured one's).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import onthefly as otf  # noqa: E402

OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "fracture_views.png"


def main() -> None:
    ct = otf.example_volume().resample(1.0)  # resampled here once, so the intact crops can be cut from it
    config = otf.FractureConfig(
        probability=1.0, width=(2.5, 3.0), extent=(12.0, 20.0), displacement=(1.5, 2.0), displacement_probability=1.0,
        structures=("rib",),  # fractures in ribs only (default: every skeletal TotalSegmentator structure)
    )
    sampler = otf.DRRCorrespondenceSampler(
        volumes=[ct], views=3, image_size=256, patch_size=16, crop_size=120.0, spacing=1.0, batch_size=8,
        alpha=(-0.6, 0.6), beta=(-0.2, 0.2), augmentation=None, fractures=config,  # AP and oblique views
        return_volume=True, seed=1,
    )
    timings: dict[str, float] = {}
    batch = sampler.sample(0, timings=timings)
    print(f"bone from: {sampler.fracture_bone_source}; timings (s): "
          + ", ".join(f"{key} {value:.2f}" for key, value in timings.items()))
    print("fracture labels:", batch.fracture.tolist())  # (B,) bool
    print("fracture patches per view:", batch.fracture_patch.tolist())  # (B, V), -1 outside the view

    # The first sample whose fracture projects inside every view.
    inside = (batch.fracture_patch >= 0).all(1) & batch.fracture
    sample = int(inside.nonzero()[0, 0]) if bool(inside.any()) else 0
    intact = ct.crop(batch.crop_start[sample].tolist(), batch.crop_stop[sample].tolist())
    carm = batch.carm.select(sample)
    fractured_render = otf.render(batch.volume.select(sample), carm)[0, :, 0]  # (V, H, W) line integrals
    intact_render = otf.render(intact, carm)[0, :, 0]
    drop = intact_render - fractured_render
    pixel = batch.fracture_pixel[sample]  # (V, 2) (row, column)
    print(f"sample {sample}: centre {batch.fracture_center[sample].tolist()} mm, "
          f"width {float(batch.params.fracture["width"][sample]):.1f} mm, "
          f"extent {float(batch.params.fracture["extent"][sample]):.1f} mm, "
          f"displacement {float(batch.params.fracture["displacement"][sample]):.1f} mm")

    views, zoom = batch.views, 32
    figure, axes = plt.subplots(4, views, figsize=(3.0 * views, 12.4), squeeze=False)
    limit = float(drop.abs().max())
    for v in range(views):
        row, col = pixel[v].tolist()
        alpha = math.degrees(float(batch.params.alpha[sample, v]))
        axes[0, v].imshow(batch.images[sample, v, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0, v].plot(col, row, "+", color="tab:red", markersize=10, markeredgewidth=1.0)
        axes[0, v].set_xlim(-0.5, 255.5)
        axes[0, v].set_ylim(255.5, -0.5)
        axes[0, v].set_title(f"view {v} (alpha {alpha:.0f} deg), patch {int(batch.fracture_patch[sample, v])}",
                             fontsize=9)
        top = min(max(int(round(row)) - zoom, 0), 256 - 2 * zoom)
        left = min(max(int(round(col)) - zoom, 0), 256 - 2 * zoom)
        box = (slice(top, top + 2 * zoom), slice(left, left + 2 * zoom))
        axes[0, v].add_patch(plt.Rectangle((left - 0.5, top - 0.5), 2 * zoom, 2 * zoom, fill=False, color="tab:red",
                                           linewidth=1.0))
        extent = (left - 0.5, left + 2 * zoom - 0.5, top + 2 * zoom - 0.5, top - 0.5)
        low, high = torch.quantile(intact_render[v][box].flatten(), torch.tensor([0.02, 0.98])).tolist()
        panels = (
            (fractured_render[v][box], dict(cmap="gray", vmin=low, vmax=high), "fractured (zoom)", "tab:red"),
            (intact_render[v][box], dict(cmap="gray", vmin=low, vmax=high), "intact (zoom)", "tab:red"),
            (drop[v][box], dict(cmap="RdBu_r", vmin=-limit, vmax=limit), "intact minus fractured", "black"),
        )
        for axis, (picture, style, title, colour) in zip(axes[1:, v], panels):
            axis.imshow(picture.numpy(), extent=extent, **style)
            axis.plot(col, row, "+", color=colour, markersize=14, markeredgewidth=1.2)
            axis.set_title(title, fontsize=9)
        for axis in axes[:, v]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle("One simulated rib fracture in three views (+: its projected centre; box: the zoom)", fontsize=10)
    figure.tight_layout()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUTPUT, dpi=100)
    plt.close(figure)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    begin = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - begin:.0f} s")
