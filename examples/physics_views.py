"""One view of the bundled chest CT through each stage of the radiograph physics, side by side.

Run: ``.venv/bin/python examples/physics_views.py`` (about 10 s on a 2-core CPU); it writes
``outputs/physics.png``. The picture in the docs is made with
``.venv/bin/python examples/physics_views.py --output docs/images/physics.png``.

Panels: the ideal monochromatic line integral (``render``, 60 keV water); the
polychromatic primary beam (tungsten spectrum, CsI detector: beam hardening)
as ``-ln(I)``; with scatter (kernel superposition, anti-scatter grid); with
quantum noise, detector blur and electronic noise at the chosen dose; and the
processed radiograph (log normalisation, local contrast, window). Panels 2-4
share one grey window, so the loss of contrast to scatter shows.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import onthefly as otf


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="outputs/physics.png", help="where to write the picture (PNG)")
    parser.add_argument("--image-size", type=int, default=256, help="detector pixels per side")
    parser.add_argument("--kv", type=float, default=120.0, help="tube voltage, kV (40-150)")
    parser.add_argument("--dose", type=float, default=3e4, help="photons per pixel at the unattenuated detector")
    parser.add_argument("--no-grid", action="store_true", help="leave the anti-scatter grid out")
    parser.add_argument("--spacing", type=float, default=2.0, help="the CT is resampled to this voxel size, mm")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")  # draws into a file only
    import matplotlib.pyplot as plt

    from onthefly import physics

    volume = otf.example_volume(labels=False).resample(args.spacing)
    size = args.image_size
    # A chest radiograph's geometry: the detector (43 cm across) 150 mm behind the isocentre, the source 1.8 m away;
    # the body's exit surface is then about 30 mm from the detector (the air gap).
    pixel_spacing = 435.0 / size
    carm = otf.CArm(alpha=0.0, sid=1650.0, sdd=1800.0, height=size, pixel_spacing=pixel_spacing)
    line_integrals = otf.render(volume, carm, mu_water=0.0206)  # water's mu at 60 keV, 1/mm
    material_integrals = physics.render_materials(volume, carm)  # (1, 1, 3, H, W) g/cm^2
    config = physics.Physics(kv=args.kv, dose=args.dose, grid=not args.no_grid, air_gap_mm=30.0, blur_mm=0.2,
                             electronic_noise=2.0)
    params = config.draw(1, torch.Generator().manual_seed(0))
    stages = physics.radiograph_stages(material_integrals, params, pixel_spacing=pixel_spacing)
    grid_primary = config.grid_primary_transmission if not args.no_grid else 1.0
    grid_scatter = config.grid_scatter_transmission if not args.no_grid else 1.0
    primary = stages["primary"]
    scattered = primary + stages["scatter"] * grid_scatter / grid_primary
    polychromatic_log, scattered_log = -torch.log(primary), -torch.log(scattered)
    window = (0.0, float(polychromatic_log.amax()))
    spr = float((stages["scatter"] * grid_scatter / (primary * grid_primary))[0, 0, 0, size // 2, size // 2])

    panels = [
        (line_integrals, None, "line integral (60 keV, monochromatic)"),
        (polychromatic_log, window, f"polychromatic primary, {args.kv:.0f} kV: -ln I"),
        (scattered_log, window, f"+ scatter ({'grid' if not args.no_grid else 'no grid'}; SPR {spr:.2f} mid-chest)"),
        (stages["log"], window, f"+ noise, blur ({args.dose:.0f} photons/pixel)"),
        (stages["image"], (0.0, 1.0), "processed radiograph (display)"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.6))
    for axis, (image, limits, title) in zip(axes, panels):
        picture = image[0, 0, 0].detach()
        low, high = limits if limits is not None else (float(picture.min()), float(picture.max()))
        axis.imshow(picture.numpy(), cmap="gray", vmin=low, vmax=high)
        axis.set_title(title, fontsize=8.5)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"The bundled chest CT ({args.spacing:g} mm voxels), AP view, {size} x {size} pixels of "
                    f"{pixel_spacing:.1f} mm, through onthefly.physics (bright = dense)", fontsize=10)
    figure.tight_layout()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=80)
    plt.close(figure)
    print(f"scatter-to-primary ratio at the centre: {spr:.2f}")
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    begin = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - begin:.0f} s")
