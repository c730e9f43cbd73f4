"""The training loop both tasks share, and its bookkeeping: schedule, checkpoints, metrics, progress, summary.

A task (:mod:`~onthefly.train.correspondence`, :mod:`~onthefly.train.classifier`)
builds the model and gives its loss and evaluation; :func:`_train` runs it on a
sampler's stream, with resume, evaluation, checkpoints and logs.
"""

from __future__ import annotations

import contextlib
import csv
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from ..checkpoint import (
    TRAINING_KEYS,
    check_resume,
    load_checkpoint,
    prepare_metrics,
    restore_training,
    save_checkpoint,
    write_json,
)
from ..logs import Progress, TensorBoardLog, format_value
from ..sampling import DRRCorrespondenceSampler, Prefetcher
from .cluster import _Cluster, _cluster
from .config import TrainConfig

__all__ = ["CHECKPOINT", "METRICS", "SUMMARY"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
SUMMARY = "summary.json"


def _schedule(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _parameter_checksum(model: torch.nn.Module) -> list[float]:
    flat = torch.cat([p.detach().double().flatten().cpu() for p in model.parameters()])
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64) % 997
    return [float(flat.sum()), float((flat * flat).sum()), float((flat * weights).sum())]


class _StepMeter:
    """Samples per second and the share of step time spent waiting for batches, since the last :meth:`read`.

    Reads the clock only (no device synchronisation) except in :meth:`read`,
    once per log interval; time inside :meth:`excluded` blocks (evaluation,
    checkpoints) does not count.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.began, self.waited, self.skipped, self.samples, self.mark = time.perf_counter(), 0.0, 0.0, 0, 0.0

    def waiting(self) -> None:
        self.mark = time.perf_counter()

    def working(self) -> None:
        self.waited += time.perf_counter() - self.mark

    def count(self, samples: int) -> None:
        self.samples += samples

    @contextlib.contextmanager
    def excluded(self):
        began = time.perf_counter()
        yield
        self.skipped += time.perf_counter() - began

    def read(self) -> tuple[float, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = max(time.perf_counter() - self.began - self.skipped, 1e-9)
        result = (self.samples / elapsed, min(1.0, self.waited / elapsed))
        self._reset()
        return result


class _CountingSampler:
    """A stream that ticks a progress bar at every batch it makes (the evaluation's ``sample(step)`` calls)."""

    def __init__(self, sampler, progress: Progress) -> None:
        self._sampler, self._progress = sampler, progress

    def sample(self, *args, **kwargs):
        batch = self._sampler.sample(*args, **kwargs)
        self._progress.update()
        return batch

    def __getattr__(self, name: str):
        return getattr(self._sampler, name)


class _RunLog:
    """Where rank 0 reports a run: ``metrics.csv``, the progress bar or lines, and TensorBoard events.

    Other ranks get a log that writes nothing.
    """

    def __init__(self, task, config: TrainConfig, output: Path, *, start: int, main: bool) -> None:
        self.task, self.output, self.main = task, output, main
        self.columns = ["step", "loss", "lr", "samples_per_s", "sampler_fraction"] + [f"eval_{k}" for k in task.eval_keys]
        self.board = TensorBoardLog(config.tensorboard, purge_step=start) if main and config.tensorboard else None
        self.progress = Progress(total=config.steps, initial=start, description=f"train {task.name}",
                                 mode=config.progress if main else "off")
        self.eval_batches = config.eval_batches
        if main:
            prepare_metrics(output / METRICS, self.columns, resumed_step=start)

    def evaluate(self, evaluate, sampler, step: int) -> dict[str, float] | None:
        """``evaluate(counted_sampler)`` with a nested bar over its batches; the metrics, also reported."""
        if sampler is None or not self.main:
            return None
        mode = "bar" if self.progress.mode == "bar" else "off"
        began = time.perf_counter()
        with Progress(total=self.eval_batches, description="evaluate", unit="batch", mode=mode, leave=False,
                      stream=self.progress.stream) as bar:
            metrics = evaluate(_CountingSampler(sampler, bar))
        shown = ", ".join(f"{key} {format_value(value)}" for key, value in metrics.items())
        self.progress.write(f"evaluate {self.task.name} at step {step} ({self.eval_batches} held-out batches, "
                            f"{time.perf_counter() - began:.1f} s): {shown}")
        if self.board is not None:
            self.board.scalars(step, metrics, prefix="eval")
            self.board.picture("eval/prediction", self.output / "pictures" / f"step_{step:06d}.png", step)
        return metrics

    def row(self, row: dict, losses: Sequence[float] = (), last_eval: dict | None = None) -> None:
        """One row of ``metrics.csv`` (and TensorBoard, and the progress); ``losses``: the steps' losses
        since the last row; ``last_eval``: the latest held-out metrics, shown beside the loss."""
        if not self.main:
            return
        _write_row(self.output, self.columns, row)
        if "loss" not in row:
            return
        shown = {"loss": f"{row['loss']:.4f}", "samples/s": f"{row['samples_per_s']:.1f}"}
        if last_eval:
            shown[f"held-out {self.task.score}"] = f"{last_eval[self.task.score]:.3f}"
        self.progress.log(shown)
        if self.board is not None:
            first = row["step"] - len(losses) + 1
            for offset, loss in enumerate(losses):
                self.board.scalars(first + offset, {"loss": loss}, prefix="train")
            self.board.scalars(row["step"], {key: row[key] for key in ("lr", "samples_per_s", "sampler_fraction")},
                               prefix="train")

    def close(self) -> None:
        self.progress.close()
        if self.board is not None:
            self.board.close()


def _train(task, sampler: DRRCorrespondenceSampler, config: TrainConfig, eval_sampler) -> dict:
    """The training loop shared by the tasks (see :func:`train_correspondence`)."""
    if not isinstance(sampler, DRRCorrespondenceSampler):
        raise TypeError(f"sampler: expected a DRRCorrespondenceSampler, got {type(sampler).__name__}")
    cluster = _cluster(config.device)
    device = cluster.device
    output = Path(config.output)
    if cluster.main:
        (output / "pictures").mkdir(parents=True, exist_ok=True)

    checkpoint_path = output / CHECKPOINT
    saved = _resumable_state(task, sampler, config, cluster, checkpoint_path)
    with torch.random.fork_rng(devices=[]):  # the model's initial weights from the run's seed, global RNG untouched
        torch.manual_seed(config.seed)
        model = task.build().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    start = 0
    history: dict = {"losses": [], "initial_eval": None}
    if saved is not None:
        start = restore_training(saved, model=model, optimizer=optimizer, scheduler=scheduler, lr=config.lr)
        history = saved.get("history", history)
    trained = model
    if cluster.world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if config.compile:
        trained = torch.compile(trained)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if config.amp and device.type == "cuda" else contextlib.nullcontext()
    )
    log = _RunLog(task, config, output, start=start, main=cluster.main)

    def evaluate(step: int) -> dict[str, float] | None:
        def run(counted_sampler):
            with autocast:
                return task.evaluate(model, counted_sampler, config.eval_batches, device,
                                     output / "pictures" / f"step_{step:06d}.png")

        return log.evaluate(run, eval_sampler, step)

    if cluster.main and start == 0:
        history["initial_eval"] = evaluate(0)
    if cluster.main and history["initial_eval"] is not None and start == 0:
        log.row({"step": 0, **{f"eval_{k}": v for k, v in history["initial_eval"].items()}})

    last_eval = history.get("last_eval")
    meter = _StepMeter(device)
    pending: list[Tensor] = []  # losses of the steps since the last log, read from the device once per interval
    first_batch_sum = None
    step = start
    end = min(config.steps, config.stop_at) if config.stop_at is not None else config.steps
    batches = iter(Prefetcher(sampler, depth=config.prefetch, start=start, stop=end)) if config.prefetch else None
    for step in range(start, end):
        meter.waiting()
        batch = (next(batches) if batches is not None else sampler.sample(step)).to(device)
        meter.working()
        with autocast:
            loss = task.loss(trained, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step == start:
            first_batch_sum = float(batch.images.double().sum())  # tells the ranks' streams apart
        meter.count(batch.batch_size * cluster.world)
        pending.append(loss.detach())
        log.progress.update()
        done = step + 1
        row, losses = None, []
        if done % config.log_every == 0 or done == end:
            losses = torch.stack(pending).float().tolist()
            history["losses"].extend(losses)
            pending.clear()
            samples_per_s, sampler_fraction = meter.read()
            row = {"step": done, "loss": losses[-1], "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": samples_per_s, "sampler_fraction": sampler_fraction}
            history.setdefault("throughput", []).append(samples_per_s)
            history.setdefault("sampler_fraction", []).append(sampler_fraction)
        if config.eval_every and (done % config.eval_every == 0 or done == config.steps):
            with meter.excluded():
                last_eval = evaluate(done)
            history["last_eval"] = last_eval
            if last_eval is not None:
                row = (row or {"step": done}) | {f"eval_{k}": v for k, v in last_eval.items()}
        if row is not None:
            log.row(row, losses, last_eval)
        if cluster.main and (done % config.checkpoint_every == 0 or done == end):
            history["losses"].extend(torch.stack(pending).float().tolist() if pending else [])
            pending.clear()
            with meter.excluded():
                save_checkpoint({
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "step": done, "sampler": sampler.state_dict() | {"step": done},
                    "world": cluster.world, "model_config": task.model_config.to_dict(), "task": task.name,
                    "train_config": asdict(config), "history": history,
                }, checkpoint_path)
    log.close()

    summary = _summary(history, model, task.model_config, config, cluster, sampler,
                       finished_steps=step + 1 if end > start else start)
    if cluster.world > 1:
        checksums = [None] * cluster.world
        dist.all_gather_object(checksums, _parameter_checksum(model))
        summary["rank_checksums"] = checksums
        summary["ranks_in_sync"] = all(c == checksums[0] for c in checksums)
        first_batches = [None] * cluster.world
        dist.all_gather_object(first_batches, first_batch_sum if end > start else None)
        summary["rank_first_batch_sums"] = first_batches
    if cluster.main:
        write_json(output / SUMMARY, summary)
    if cluster.owns_group:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _resumable_state(task, sampler, config: TrainConfig, cluster: _Cluster, path: Path) -> dict | None:
    """The checkpoint to resume (checked against this run's configuration), or ``None`` to start afresh."""
    if not (config.resume and path.exists()):
        return None
    saved = load_checkpoint(path, name="resume", map_location=cluster.device, required=TRAINING_KEYS)
    check_resume(saved, path=path, task=task.name, model_config=task.model_config.to_dict(),
                 train_config=asdict(config), sampler_state=sampler.state_dict(), world=cluster.world)
    return saved


def _write_row(output: Path, columns: list[str], row: dict) -> None:
    with open(output / METRICS, "a", newline="") as handle:
        csv.writer(handle).writerow(["" if row.get(c) is None else f"{row[c]:.6g}" for c in columns])


def _summary(history, model, model_config, config, cluster, sampler, *, finished_steps: int) -> dict:
    losses = history["losses"]
    tenth = max(1, len(losses) // 10)
    throughput = history.get("throughput", [])
    fractions = history.get("sampler_fraction", [])
    return {
        "steps_done": finished_steps,
        "steps": config.steps,
        "world_size": cluster.world,
        "batch_size_per_rank": sampler.batch_size,
        "image_size": [sampler.height, sampler.width],
        "views": sampler.views,
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_config": model_config.to_dict(),
        "loss_first": sum(losses[:tenth]) / tenth if losses else None,
        "loss_last": sum(losses[-tenth:]) / tenth if losses else None,
        "samples_per_s": sum(throughput[1:] or throughput) / max(1, len(throughput[1:] or throughput)) if throughput else None,
        "sampler_fraction": sum(fractions[1:] or fractions) / max(1, len(fractions[1:] or fractions)) if fractions else None,
        "initial_eval": history.get("initial_eval"),
        "final_eval": history.get("last_eval"),
    }


# ---------------------------------------------------------------------------
# Real radiographs (multi-view studies, e.g. onthefly.datasets.MuraStudies)
