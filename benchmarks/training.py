"""Training throughput of the correspondence model on the sampler's stream, and the sampler's share of a step.

Two set-ups on the bundled CT (V = 2): the demo's small model (CNN backbone,
d 64, 2 layers) at 128 x 128, batch 8; and the paper's model (ResNet-50-D to
stride 16, d 512, 8 heads, 8 layers) at 256 x 256, batch 16, with the
sampler's defaults. Samples per second and the sampler's share are measured
over the step time only (drawing + forward + backward + update), after the
first logging window.

Run: ``.venv/bin/python benchmarks/training.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import describe_machine, machine_info, markdown_table, write_markdown_section  # noqa: E402

import onthefly as otf  # noqa: E402
from onthefly.models import CorrespondenceConfig  # noqa: E402
from onthefly.train import TrainConfig, train_correspondence  # noqa: E402

SETUPS = {
    "small model, 128 x 128, B = 8": dict(
        model=lambda: CorrespondenceConfig.small(), data=dict(image_size=128, batch_size=8, crop_size=120.0, spacing=2.0),
        steps=30, log_every=10),
    "paper model, 256 x 256, B = 16": dict(
        model=lambda: CorrespondenceConfig(), data=dict(image_size=256, batch_size=16), steps=6, log_every=2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run; writes nothing to RESULTS.md")
    args = parser.parse_args()
    ct = otf.example_volume(labels=False)
    rows = []
    for name, setup in SETUPS.items():
        data = dict(setup["data"])
        steps, log_every = setup["steps"], setup["log_every"]
        if args.quick:
            data.update(image_size=64, batch_size=2, crop_size=100.0, spacing=4.0)
            steps, log_every = 4, 2
        sampler = otf.DRRCorrespondenceSampler(volumes=[ct], views=2, patch_size=16, seed=0, **data)
        with tempfile.TemporaryDirectory() as folder:
            config = TrainConfig(output=folder, steps=steps, lr=1e-4, eval_every=0, checkpoint_every=steps,
                                 log_every=log_every, progress=False)
            summary = train_correspondence(setup["model"](), sampler, config)
        rows.append({"setup": name, "parameters": summary["parameters"], "samples_per_s": summary["samples_per_s"],
                     "sampler_fraction": summary["sampler_fraction"], "steps": steps})
        print(json.dumps(rows[-1]), flush=True)
    table = markdown_table(
        ["set-up", "parameters", "samples/s", "s / step", "sampler's share of a step"],
        [[r["setup"], f"{r['parameters']:,}", f"{r['samples_per_s']:.2f}",
          f"{(8 if 'B = 8' in r['setup'] else 16) / r['samples_per_s']:.2f}" if not args.quick else "—",
          f"{100 * r['sampler_fraction']:.0f} %"] for r in rows],
        align=["l", "r", "r", "r", "r"],
    )
    print(table)
    if args.quick:
        return
    info = machine_info()
    out = Path(__file__).parent / "results" / "training.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "results": rows}, indent=2))
    body = "\n".join([
        "## Training throughput (`benchmarks/training.py`)",
        "",
        f"Machine: {describe_machine(info)}.",
        "",
        "Command: `.venv/bin/python benchmarks/training.py`. Correspondence model trained on the sampler's stream "
        "(bundled CT, V = 2, patch 16, sampler defaults otherwise), Adam, float32 on the CPU. Samples per second "
        "over step time after the first logging window; the sampler's share is drawing + rendering + correspondence "
        "+ augmentation over the whole step.",
        "",
        table,
    ])
    write_markdown_section(Path(__file__).parent / "RESULTS.md", "training", body)


if __name__ == "__main__":
    main()
