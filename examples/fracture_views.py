"""Simulated fractures as a reader would see them: fractured and intact views side by side, with their difference.

Run: ``.venv/bin/python examples/fracture_views.py`` (about a minute on a 2-core CPU); it writes
``outputs/fracture_views.png``. The picture in the docs is made with
``.venv/bin/python examples/fracture_views.py --output docs/images/fracture_views.png``, and the one through
the processed display with ``--display radiograph --output docs/images/fracture_views_radiograph.png``.

The sampler cuts a fracture into a bone of every crop (default
:class:`~onthefly.fractures.FractureConfig` with ``probability=1``): the cut
crosses the bone, a gap of soft tissue opens behind it and the fragment
beyond moves (translation and angulation). Each row shows one sample in its
view where the fracture is most visible (``batch.fracture_visibility``): the
whole view with the zoomed box, the fractured and the intact zoom (the same
crop and camera, rendered without the fracture), and the change of the display
image. Rows are chosen to span the batch's visibilities, from the most to the
least visible, so the picture shows typical fractures, not only the best.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import onthefly as otf


def _nearest_bone(labels: torch.Tensor, voxel: torch.Tensor, names: dict[int, str], is_bone: torch.Tensor,
                  reach: int = 6) -> str:
    """The most frequent bone label within ``reach`` voxels of ``voxel`` (the change's centroid lies beside the
    bone, in the gap or the moved fragment's old place, not always on a bone voxel)."""
    box = tuple(slice(max(int(c) - reach, 0), int(c) + reach + 1) for c in voxel)
    ids = labels[box].reshape(-1).long()
    ids = ids[(ids > 0) & (ids < is_bone.numel())]
    ids = ids[is_bone[ids]]
    return names.get(int(ids.mode().values), "bone") if ids.numel() else "bone"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="outputs/fracture_views.png", help="where to write the picture (PNG)")
    parser.add_argument("--seed", type=int, default=1, help="the sampler's seed")
    parser.add_argument("--rows", type=int, default=4, help="samples to show")
    parser.add_argument("--image-size", type=int, default=256, help="detector pixels per side")
    parser.add_argument("--display", default="minmax", choices=sorted(otf.DISPLAYS),
                        help="how line integrals become the views (minmax: linear; radiograph: local contrast)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")  # draws into a file only
    import matplotlib.pyplot as plt

    sampler = otf.DRRCorrespondenceSampler(
        volumes=[otf.example_volume()], views=2, image_size=args.image_size, patch_size=16, crop_size=120.0,
        spacing=1.0, batch_size=8, augmentation=None, correspondence=False, return_volume=True, seed=args.seed,
        fractures=otf.FractureConfig(probability=1.0), display=args.display,
    )
    batch = sampler.sample(0)
    crops, labels = sampler.store.crops(batch.volume_index, batch.crop_start, sampler.config.crop_voxels(), labels=True)
    lines = otf.render(otf.VolumeBatch(attenuation=crops[:, None], affine=batch.crop_affine), batch.carm)
    intact = sampler.config.display(lines, pixel_spacing=sampler.config.pixel_spacing)
    best_view = batch.fracture_visibility.argmax(1)  # (B,)
    visibility = batch.fracture_visibility.amax(1)
    order = [i for i in visibility.argsort(descending=True).tolist() if batch.fracture[i]]
    rows = [order[round(k * (len(order) - 1) / max(args.rows - 1, 1))] for k in range(min(args.rows, len(order)))]
    names = sampler.store.label_names[0] or {}
    is_bone = otf.fractures.bone_label_lookup(names, size=max(names, default=0) + 1)

    zoom = args.image_size // 4
    figure, axes = plt.subplots(len(rows), 4, figsize=(12.5, 3.1 * len(rows)), squeeze=False)
    for axis_row, sample in zip(axes, rows):
        view = int(best_view[sample])
        fractured_view, intact_view = batch.images[sample, view, 0], intact[sample, view, 0]
        difference = fractured_view - intact_view
        row, col = batch.fracture_pixel[sample, view].round().long().tolist()
        top = min(max(row - zoom, 0), args.image_size - 2 * zoom)
        left = min(max(col - zoom, 0), args.image_size - 2 * zoom)
        box = (slice(top, top + 2 * zoom), slice(left, left + 2 * zoom))
        fracture = batch.params.fracture  # one candidate per sample (no min_visibility)
        centre = torch.cat([batch.fracture_center[sample], torch.ones(1, dtype=torch.float64)])
        voxel = torch.linalg.solve(batch.crop_affine[sample], centre)[:3].round().long()  # the change's centroid
        bone = _nearest_bone(labels[sample], voxel, names, is_bone) if labels is not None else "bone"
        pattern = "comminuted" if bool(fracture.comminuted[sample, 0]) else "simple"
        axis_row[0].imshow(fractured_view.numpy(), cmap="gray", vmin=0, vmax=1)
        axis_row[0].add_patch(plt.Rectangle((left - 0.5, top - 0.5), 2 * zoom, 2 * zoom, fill=False, color="tab:red"))
        axis_row[0].set_title(f"view {view}: {bone}, {pattern}", fontsize=9)
        axis_row[1].imshow(fractured_view[box].numpy(), cmap="gray", vmin=0, vmax=1)
        axis_row[1].set_title(f"fractured (translation {float(fracture.translation[sample, 0, 0]):.0f} mm, "
                              f"angulation {float(fracture.angulation[sample, 0, 0]) * 57.2958:.0f} deg)", fontsize=9)
        axis_row[2].imshow(intact_view[box].numpy(), cmap="gray", vmin=0, vmax=1)
        axis_row[2].set_title("intact (same crop and camera)", fontsize=9)
        limit = max(float(difference.abs().max()), 0.02)
        shown = axis_row[3].imshow(difference[box].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        axis_row[3].set_title(f"fractured - intact (visibility {float(visibility[sample]):.3f})", fontsize=9)
        colour_bar = figure.colorbar(shown, ax=axis_row[3], fraction=0.046, pad=0.04)
        colour_bar.set_label("change of the display image (0-1 scale)", fontsize=8)
        for axis in axis_row:
            axis.set_xticks([])
            axis.set_yticks([])
    shown_as = ("Display images are min-max scaled line integrals (bright = dense)" if args.display == "minmax" else
                "Display images: radiograph display (detail above a 5 mm Gaussian, percentile window; bright = dense)")
    figure.suptitle(
        f"Simulated fractures on the bundled chest CT (120 mm crops, {args.image_size} x {args.image_size}, default "
        "FractureConfig), rows from the most to the least visible of a batch of 8;\neach in its most visible view. "
        f"{shown_as}; the difference is in those display units.",
        fontsize=10,
    )
    figure.tight_layout()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=90)
    plt.close(figure)
    print(f"visibility per sample (best view): {[round(float(v), 3) for v in visibility]}")
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    begin = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - begin:.0f} s")
