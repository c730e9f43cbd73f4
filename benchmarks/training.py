"""Training throughput of the correspondence model on the sampler's stream, with and without prefetching.

Two set-ups on the bundled CT (V = 2): the demo's small model (CNN backbone,
d 64, 2 layers) at 128 x 128, batch 8; and the paper's model (ResNet-50-D to
stride 16, d 512, 8 heads, 8 layers) at 256 x 256, batch 16, with the
sampler's defaults. For each, in one run:

* the sampler alone: seconds per batch;
* the model alone: seconds per optimisation step on one fixed batch;
* training with each batch made inside the step (``prefetch=0``, the sum of
  the two) and with the :class:`~onthefly.Prefetcher` making the next batch in
  a background thread (``prefetch=2``): seconds per step and the share of the
  step spent waiting for a batch, over the step time after the first logging
  window. The target: a prefetched step within 1.1x of the slower of the two.

Run: ``.venv/bin/python benchmarks/training.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

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


def sampler_seconds(sampler, batches: int) -> float:
    """Median seconds per batch of the sampler alone (after one warm-up batch)."""
    sampler.sample(0)
    times = []
    for step in range(1, batches + 1):
        began = time.perf_counter()
        sampler.sample(step)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def model_seconds(model_config, batch, steps: int) -> float:
    """Median seconds per optimisation step of the model alone on one fixed batch (after one warm-up step)."""
    model = otf.models.CorrespondenceModel(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for step in range(steps + 1):
        began = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(batch.images), batch.correspondence)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def training_seconds(model_config, sampler, steps: int, log_every: int, prefetch: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(output=folder, steps=steps, lr=1e-4, eval_every=0, checkpoint_every=steps,
                             log_every=log_every, progress=False, prefetch=prefetch)
        summary = train_correspondence(model_config, sampler, config)
    return {"step_s": sampler.batch_size / summary["samples_per_s"], "waiting": summary["sampler_fraction"],
            "parameters": summary["parameters"]}


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
        repeats = max(2, steps // 3)
        alone = sampler_seconds(sampler, repeats)
        model = model_seconds(setup["model"](), sampler.sample(0), repeats)
        inline = training_seconds(setup["model"](), sampler, steps, log_every, prefetch=0)
        sampler.seek(0)
        prefetched = training_seconds(setup["model"](), sampler, steps, log_every, prefetch=2)
        rows.append({"setup": name, "parameters": inline["parameters"], "sampler_s": alone, "model_s": model,
                     "inline_s": inline["step_s"], "inline_waiting": inline["waiting"],
                     "prefetched_s": prefetched["step_s"], "prefetched_waiting": prefetched["waiting"],
                     "ratio": prefetched["step_s"] / max(alone, model), "steps": steps,
                     "batch_size": sampler.batch_size})
        print(json.dumps(rows[-1]), flush=True)
    table = markdown_table(
        ["set-up", "parameters", "sampler s / batch", "model s / step", "training s / step, batch in the step",
         "training s / step, prefetched", "prefetched / slower of the two", "waiting share, prefetched",
         "samples/s, prefetched"],
        [[r["setup"], f"{r['parameters']:,}", f"{r['sampler_s']:.3f}", f"{r['model_s']:.3f}",
          f"{r['inline_s']:.3f} ({100 * r['inline_waiting']:.0f} % waiting)", f"{r['prefetched_s']:.3f}",
          f"{r['ratio']:.2f}x", f"{100 * r['prefetched_waiting']:.0f} %", f"{r['batch_size'] / r['prefetched_s']:.2f}"]
         for r in rows],
        align=["l", "r", "r", "r", "r", "r", "r", "r", "r"],
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
        "(bundled CT, V = 2, patch 16, sampler defaults otherwise), Adam, float32 on the CPU. The sampler and the "
        "model are timed alone (medians), then training runs with each batch made inside the step "
        "(`TrainConfig(prefetch=0)`) and with the next batches made by `onthefly.Prefetcher` in a background thread "
        "(`prefetch=2`, the default): seconds per step after the first logging window. Target: a prefetched step "
        "within 1.1x of the slower of sampler and model.",
        "",
        table,
    ])
    write_markdown_section(Path(__file__).parent / "RESULTS.md", "training", body)


if __name__ == "__main__":
    main()
