"""Procedural extremity phantoms: an axial slice, a coronal slice and a DRR of three seeds of each region.

Run: ``.venv/bin/python examples/phantoms.py`` (about half a minute on a 2-core CPU); it writes
``outputs/phantoms.png``. The picture in the docs is made with
``.venv/bin/python examples/phantoms.py --output docs/images/phantoms.png``.

Each row is a region (forearm, wrist, hand) and each group of three panels one
seed: the axial slice (seen from the feet: the patient's right on the left,
anterior at the top), the coronal slice through the bones (seen from the
front: the patient's right on the left, superior at the top), both in a bone
window (-400 to 1600 HU), and an AP DRR (source anterior, ``CArm(alpha=0)``).
The last column is the DRR of the bundled chest CT with the same camera and
the same display, for comparison.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import onthefly as otf
from onthefly.phantoms import LABELS, REGIONS, phantom

SID_MM, SDD_MM = 1000.0, 1200.0
WINDOW_HU = (-400.0, 1600.0)
_SLICE_AT = {"forearm": ("radius", 0.5), "wrist": ("capitate", None), "hand": ("metacarpal_3", None)}


def drr(volume: otf.Volume, image_size: int, display: otf.Display) -> torch.Tensor:
    """An AP DRR ``(image_size, image_size)`` in ``[0, 1]`` of the whole volume, isocentre at its centre."""
    extent = float((volume.world_corners().amax(0) - volume.world_corners().amin(0)).max())
    pixel = 1.1 * extent * SDD_MM / SID_MM / image_size
    carm = otf.CArm(alpha=0.0, sid=SID_MM, sdd=SDD_MM, height=image_size, pixel_spacing=pixel,
                    isocenter=volume.center.tolist())
    return display(otf.render(volume, carm), pixel_spacing=pixel)[0, 0, 0]


def slices(volume: otf.Volume, region: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The axial slice through the region's landmark bone and the coronal slice through the bones' centre."""
    hu, labels = volume.hu[0], volume.labels[0]
    name, fraction = _SLICE_AT[region]
    voxels = (labels == LABELS[name]).nonzero().double()
    z = voxels[:, 2]
    k = int(z.min() + fraction * (z.max() - z.min())) if fraction is not None else int(z.mean())
    bones = (labels >= LABELS["radius"]).nonzero().double()
    j = int(bones[:, 1].mean())
    axial = hu[:, :, k].T.flip(0).flip(1)  # rows: y (anterior up); columns: x (the patient's right on the left)
    coronal = hu[:, j, :].T.flip(0).flip(1)  # rows: z (superior up)
    return axial, coronal


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="outputs/phantoms.png", help="where to write the picture (PNG)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="phantom seeds to show per region")
    parser.add_argument("--spacing", type=float, default=1.0, help="phantom voxel edge, mm")
    parser.add_argument("--image-size", type=int, default=256, help="DRR pixels per side")
    parser.add_argument("--display", default="radiograph", choices=sorted(otf.DISPLAYS),
                        help="how line integrals become the DRRs (the same for the phantoms and the chest CT)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")  # draws into a file only
    import matplotlib.pyplot as plt

    display = otf.DISPLAYS[args.display]
    columns = 3 * len(args.seeds) + 1
    figure, axes = plt.subplots(len(REGIONS), columns, figsize=(1.9 * columns, 2.9 * len(REGIONS)), squeeze=False,
                                gridspec_kw={"width_ratios": [0.7, 0.7, 1.0] * len(args.seeds) + [1.3]})
    for row, region in enumerate(REGIONS):
        for group, seed in enumerate(args.seeds):
            begin = time.perf_counter()
            volume = phantom(region, seed, spacing=args.spacing)
            made = time.perf_counter() - begin
            axial, coronal = slices(volume, region)
            image = drr(volume, args.image_size, display)
            panels = axes[row, 3 * group: 3 * group + 3]
            panels[0].imshow(axial.numpy(), cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1])
            panels[0].set_title(f"{region} {seed}: axial", fontsize=8)
            panels[1].imshow(coronal.numpy(), cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1])
            panels[1].set_title("coronal", fontsize=8)
            panels[2].imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
            panels[2].set_title(f"DRR ({volume.shape[0]}x{volume.shape[1]}x{volume.shape[2]} voxels)", fontsize=8)
            print(f"{region} seed {seed}: {tuple(volume.shape)} voxels in {made:.2f} s")
    chest = otf.example_volume(labels=False)
    axes[0, -1].imshow(drr(chest, args.image_size, display).numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0, -1].set_title("bundled chest CT: DRR", fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in axes[1:, -1]:
        axis.axis("off")
    figure.suptitle(f"Procedural phantoms at {args.spacing:g} mm (right arm; slices in a bone window "
                    f"{WINDOW_HU[0]:.0f} to {WINDOW_HU[1]:.0f} HU; AP DRRs, sid {SID_MM:.0f} mm, sdd {SDD_MM:.0f} mm, "
                    f"{args.display} display)", fontsize=10)
    figure.tight_layout()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=72)
    plt.close(figure)
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    begin = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - begin:.0f} s")
