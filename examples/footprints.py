"""Correspondence footprints side by side: many rays, exact, separable and 2 x 2 rays.

Run: ``.venv/bin/python examples/footprints.py`` (about a minute on a 2-core CPU); it writes
``outputs/footprints.png``. The picture in the docs is made with
``.venv/bin/python examples/footprints.py --output docs/images/footprints.png``.

Top row: the footprint of one coarse voxel (a 12 mm cube at the isocentre,
850 mm from the source: the sampler's scale) on a 4 x 4 window of 16-pixel
patches, seen obliquely so that its shadow (the outline: its projected
corners' hull) is a sheared hexagon. The pose is the one of 324 (poses and
offsets of this cube) where the separable footprint differs most from the
reference (0.13; median 0.009). Each patch holds the integral over the patch of the ray
lengths inside the cube, normalised to a largest entry of 1
(:mod:`onthefly.footprints`): with 64 x 64 rays per patch (the reference),
exact (closed form, the default), separable (the product of the exact
footprint's row and column marginals, ``footprint="separable"``) and 2 x 2
rays per patch (the former default).

Bottom row: what that does to the matrix. One sampler-like sample of the
bundled CT (a 200 mm crop filling a 256 x 256 detector, patch 16, V = 2): for
the patch of view 0 marked by a square, the heat map of its matches in view
1 (``onthefly.correspondence_map``), with each matrix's IoU of ``C >= 0.5``
against the 64-ray matrix and its largest difference.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import onthefly as otf
from onthefly.footprints import footprint_window, voxel_footprints

METHODS = (("64 x 64 rays (reference)", dict(rays_per_patch=64)), ("exact (default)", {}),
           ("separable", dict(footprint="separable")), ("2 x 2 rays", dict(rays_per_patch=2)))
PATCH = 16


def one_voxel(reference_rays: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Footprints ``(4, 4)`` of one cube for each method, and its 8 projected corners ``(8, 2)`` in patch units."""
    carm = otf.CArm(alpha=torch.tensor([[0.8]]), beta=torch.tensor([[0.2]]), gamma=torch.tensor([[0.6]]),
                    sid=850.0, sdd=1050.0, height=64, pixel_spacing=1.0)
    centre = torch.zeros(1, 3, dtype=torch.float64)  # the shadow's centre on a patch corner
    edges = torch.diag(torch.full((3,), 12.0, dtype=torch.float64))[None]
    which = torch.zeros(1, dtype=torch.long)
    values = []
    for _, option in METHODS:
        option = dict(option, rays_per_patch=reference_rays) if option.get("rays_per_patch") == 64 else option
        footprint, patches = voxel_footprints(centre, edges, which, carm, patch_size=PATCH, window=4, **option)
        grid = torch.zeros(carm.height // PATCH * (carm.width // PATCH))
        grid[patches[0, 0]] = footprint[0, 0]  # the window's entries at their patches
        values.append(grid.reshape(carm.height // PATCH, carm.width // PATCH))
    corners = torch.tensor([[x, y, z] for x in (-6.0, 6.0) for y in (-6.0, 6.0) for z in (-6.0, 6.0)],
                           dtype=torch.float64) + centre
    pixels = otf.project_points(carm.to(dtype=torch.float64), corners[None])[0, 0]  # (8, 2) row, col
    return values, (pixels + 0.5) / PATCH - 0.5  # patch units, patch centres at integers


def hull(points: torch.Tensor) -> torch.Tensor:
    """Convex hull of 2-D points ``(n, 2)`` as a closed loop (Andrew's monotone chain)."""
    ordered = sorted({(round(float(a), 9), round(float(b), 9)) for a, b in points})

    def half(sequence):
        kept = []
        for point in sequence:
            while len(kept) >= 2 and ((kept[-1][0] - kept[-2][0]) * (point[1] - kept[-2][1])
                                      - (kept[-1][1] - kept[-2][1]) * (point[0] - kept[-2][0])) <= 0:
                kept.pop()
            kept.append(point)
        return kept[:-1]

    loop = half(ordered) + half(ordered[::-1])
    return torch.tensor(loop + loop[:1])


def one_sample(image_size: int, reference_rays: int) -> tuple[torch.Tensor, list[torch.Tensor], float]:
    """A sampler-like view pair of the bundled CT: the images ``(2, H, W)`` and each method's matrix."""
    sampler = otf.DRRCorrespondenceSampler(volumes=[otf.example_volume()], views=2, image_size=image_size,
                                           patch_size=PATCH, batch_size=1, seed=3, augmentation=None,
                                           correspondence=False)
    batch = sampler.sample(0)
    params = batch.params
    pooled = sampler.store.pooled_weights(params.volume_index, params.crop_start, params.crop_stop,
                                          params.coarse_factor)
    window = footprint_window(batch.carm, pooled.affine, tuple(pooled.weight.shape[1:]), PATCH)
    start = time.perf_counter()
    matrices = []
    for _, option in METHODS:
        option = dict(option, rays_per_patch=reference_rays) if option.get("rays_per_patch") == 64 else option
        matrices.append(otf.patch_correspondence(pooled, batch.carm, patch_size=PATCH, window=window,
                                                 memory_budget=2**30, **option)[0])
    return batch.images[0, :, 0], matrices, time.perf_counter() - start


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="outputs/footprints.png", help="where to write the picture (PNG)")
    parser.add_argument("--image-size", type=int, default=256, help="detector pixels per side (bottom row)")
    parser.add_argument("--reference-rays", type=int, default=64, help="rays per patch side of the reference")
    args = parser.parse_args(argv)
    if args.image_size < 2 * PATCH or args.image_size % PATCH:
        parser.error(f"--image-size: expected a multiple of {PATCH} of at least {2 * PATCH}, got {args.image_size}")
    if not 1 <= args.reference_rays <= 64:
        parser.error(f"--reference-rays: expected 1 to 64, got {args.reference_rays}")

    import matplotlib

    matplotlib.use("Agg")  # draws into a file only
    import matplotlib.pyplot as plt

    footprints, corners = one_voxel(args.reference_rays)
    images, matrices, seconds = one_sample(args.image_size, args.reference_rays)
    grid = args.image_size // PATCH
    reference = matrices[0]
    # The central patch of view 0 with the most strong matches in view 1 (of the reference).
    strong = (reference[: grid * grid, grid * grid:] >= 0.5).sum(1).reshape(grid, grid)
    inner = torch.zeros_like(strong)
    inner[grid // 4: grid - grid // 4, grid // 4: grid - grid // 4] = 1
    patch = int((strong * inner).argmax())
    row, col = divmod(patch, grid)

    figure, axes = plt.subplots(2, len(METHODS) + 1, figsize=(3.2 * (len(METHODS) + 1), 7.4))
    outline = hull(corners)
    for axis, (name, _), values in zip(axes[0, 1:], METHODS, footprints):
        axis.imshow(values.numpy(), cmap="viridis", vmin=0, vmax=1)
        axis.plot(outline[:, 1].numpy(), outline[:, 0].numpy(), color="white", linewidth=1)
        for (r, c), value in zip(torch.cartesian_prod(torch.arange(values.shape[0]), torch.arange(values.shape[1])),
                                 values.reshape(-1)):
            if value > 0:
                axis.text(int(c), int(r), f"{float(value):.2f}", ha="center", va="center", fontsize=8,
                          color="black" if value > 0.6 else "white")
        difference = float((values - footprints[0]).abs().max())
        axis.set_title(name if values is footprints[0] else f"{name}\nlargest difference {difference:.3f}",
                       fontsize=9)
    axes[0, 0].axis("off")
    axes[0, 0].text(0.0, 0.5, "one coarse voxel:\nits footprint on a\n4 x 4 patch window\n(outline: its shadow)",
                    fontsize=10, va="center")

    axes[1, 0].imshow(images[0].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[1, 0].add_patch(plt.Rectangle((col * PATCH - 0.5, row * PATCH - 0.5), PATCH, PATCH, fill=False,
                                       color="tab:red", linewidth=1.5))
    axes[1, 0].set_title(f"view 0, patch ({row}, {col})", fontsize=9)
    truth = reference >= 0.5
    for axis, (name, _), matrix in zip(axes[1, 1:], METHODS, matrices):
        heat = otf.correspondence_map(matrix, 0, patch, 1, grid_shape=(grid, grid))
        axis.imshow(images[1].numpy(), cmap="gray", vmin=0, vmax=1)
        shown = torch.nn.functional.interpolate(heat[None, None], scale_factor=PATCH, mode="nearest")[0, 0]
        axis.imshow(shown.numpy(), cmap="magma", vmin=0, vmax=1, alpha=0.6)
        union = (truth | (matrix >= 0.5)).sum().clamp_min(1)
        iou = float((truth & (matrix >= 0.5)).sum() / union)
        difference = float((matrix - reference).abs().max())
        axis.set_title(f"{name}: its matches in view 1" if matrix is reference else
                       f"{name}\nIoU {iou:.3f}, largest difference {difference:.2f}", fontsize=9)
    for axis in axes.reshape(-1)[1:]:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle("Correspondence footprints: the reference (many rays per patch), exact (closed form), "
                    "separable (product of exact marginals) and 2 x 2 rays", fontsize=11)
    figure.tight_layout()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=90)
    plt.close(figure)
    for (name, _), matrix in zip(METHODS[1:], matrices[1:]):
        iou = float((truth & (matrix >= 0.5)).sum() / (truth | (matrix >= 0.5)).sum().clamp_min(1))
        print(f"{name}: IoU of C >= 0.5 with the {args.reference_rays}-ray matrix {iou:.3f}")
    print(f"matrices in {seconds:.1f} s; wrote {output}")
    return output


if __name__ == "__main__":
    main()
