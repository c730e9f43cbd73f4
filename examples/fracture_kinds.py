"""One phantom radiograph per fracture kind, intact and fractured, side by side.

Run: ``.venv/bin/python examples/fracture_kinds.py`` (a few minutes on a 2-core CPU); it writes
``outputs/fracture_kinds.png``. The picture in ``docs/fractures.md`` is made with
``--output docs/images/fracture_kinds.png``.

For each kind of :data:`~onthefly.fractures.FRACTURE_KINDS` the phantom of a region holding its site (forearm,
wrist or hand, seed 0, 1 mm voxels) gets one fracture of that kind at the obvious severity
(``FractureConfig(kinds={kind: 1}, severity={"obvious": 1})``), cut at its site by
:func:`~onthefly.fractures.apply_fractures` with the phantom's bone geometry
(:func:`~onthefly.fractures.kind_geometry`). Both volumes are rendered with the same cameras centred on the
fracture, a posteroanterior and a lateral view, and the view the fracture changes most is shown, zoomed to 80 mm.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import onthefly as otf
from onthefly.fractures import (
    FRACTURE_KINDS,
    FractureConfig,
    apply_fractures,
    bone_weight_table,
    draw_fractures,
    kind_geometry,
)
from onthefly.phantoms import phantom

REGION = {"distal_radius": "wrist", "ulnar_styloid": "wrist", "radius_shaft": "forearm", "ulna_shaft": "forearm",
          "scaphoid_waist": "wrist", "metacarpal_neck": "hand", "metacarpal_shaft": "hand", "phalanx": "hand"}


def fractured_views(volume, kind: str, *, seed: int, size: int, field_mm: float):
    """Intact and fractured views ``(2, 1, size, size)`` (display) of ``volume`` with one fracture of ``kind``."""
    config = FractureConfig(probability=1.0, kinds={kind: 1.0}, severity={"obvious": 1.0}, kind_min_visibility=0.0)
    attenuation = otf.hu_to_attenuation(volume.hu)
    affine = volume.affine.double()[None]
    params = draw_fractures(config, 1, torch.Generator().manual_seed(seed))
    result = apply_fractures(attenuation, affine, params, config=config, labels=volume.labels,
                             table=bone_weight_table(volume.label_names, config),
                             geometry=kind_geometry(volume.labels, volume.affine, volume.label_names, config)[None])
    centre = result.center[0].float()
    carm = otf.CArm(alpha=torch.tensor([[0.0, math.pi / 2]]), beta=torch.zeros(1, 2), gamma=torch.zeros(1, 2),
                    sid=torch.full((1, 2), 800.0), sdd=torch.full((1, 2), 1000.0),
                    isocenter=centre.expand(1, 2, 3).contiguous(), height=size, width=size,
                    pixel_spacing=field_mm / size * 1000.0 / 800.0)
    views = []
    for crop in (attenuation, result.attenuation):
        lines = otf.render(otf.VolumeBatch(attenuation=crop[:, None], affine=affine.float()), carm)
        views.append(otf.to_display(lines)[0])  # (2, 1, H, W)
    change = (views[1] - views[0]).abs().flatten(1).amax(1)
    best = int(change.argmax())
    return views[0][best], views[1][best], float(change[best]), int(result.kind[0]) >= 0, ("PA", "lateral")[best]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="outputs/fracture_kinds.png")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed")
    parser.add_argument("--spacing", type=float, default=1.0, help="phantom voxel edge, mm")
    parser.add_argument("--size", type=int, default=192, help="detector pixels per side")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volumes = {region: phantom(region, args.seed, spacing=args.spacing) for region in sorted(set(REGION.values()))}
    kinds = list(FRACTURE_KINDS)
    figure, axes = plt.subplots(4, 4, figsize=(12, 12.6))
    for index, kind in enumerate(kinds):
        intact, fractured, change, placed, view = fractured_views(volumes[REGION[kind]], kind, seed=args.seed + 1,
                                                                  size=args.size, field_mm=80.0)
        row, column = divmod(index, 2)
        for offset, (image, label) in enumerate(((intact, "intact"), (fractured, "fractured"))):
            axis = axes[row, 2 * column + offset]
            axis.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
            axis.set_title(f"{kind.replace('_', ' ')}: {label}" + (f"\n{view}, change {change:.2f}" if offset else
                                                                   f"\n{REGION[kind]} phantom"), fontsize=9)
            axis.axis("off")
        if not placed:
            print(f"{kind}: no site in the {REGION[kind]} phantom (generic fracture shown)")
        print(f"{kind}: {view} view, largest display change {change:.3f}")
    figure.tight_layout()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=80)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
