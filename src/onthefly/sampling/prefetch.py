"""Data made while the model trains: :class:`Prefetcher` makes batch ``step + 1`` while the caller uses ``step``.

A background thread makes the batches (PyTorch releases the interpreter lock
inside its operators, so the thread's work runs beside the training step). On
a CUDA device the thread works on its own CUDA stream; each batch is handed
over once its kernels are done, and its tensors are recorded on the
consumer's stream so the caching allocator never reuses their memory early.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator

import torch
from torch import Tensor

from .._checks import is_int

__all__ = ["Prefetcher"]

_DONE = object()


class Prefetcher:
    """Iterate a sampler's stream with up to ``depth`` batches made ahead.

    Args:
        sampler: a :class:`~onthefly.sampling.stream.DRRCorrespondenceSampler` (or task sampler).
        depth: batches made ahead of the one in use (at least 1).
        start: first step (default: the sampler's position, so a resumed sampler continues).
        stop: end step, exclusive (default: the sampler's ``steps``, or endless).
        threads: intra-op threads of the background thread on the CPU (``torch.set_num_threads``
            there only; the caller's threads are unchanged). Default: torch's setting. On a CPU
            whose cores the training step already fills, fewer threads here avoid oversubscription.

    Yields the batches of steps ``start, start + 1, ...`` in order, exactly
    those ``sampler.sample(step)`` gives; after yielding batch ``s`` the
    sampler's position is ``s + 1`` (so ``sampler.state_dict()`` resumes after
    it). An error while making a batch is raised in the consumer.

    Example:
        >>> sampler = DRRCorrespondenceSampler(volumes=[example_volume()], image_size=64, spacing=4.0, batch_size=2,
        ...                                    steps=3)
        >>> [batch.step for batch in Prefetcher(sampler, depth=2)]
        [0, 1, 2]
    """

    def __init__(self, sampler, *, depth: int = 2, start: int | None = None, stop: int | None = None,
                 threads: int | None = None) -> None:
        missing = [name for name in ("sample", "state_dict") if not callable(getattr(sampler, name, None))]
        missing += [name for name in ("steps", "device") if not hasattr(sampler, name)]
        if missing:
            raise TypeError(
                f"sampler: expected a DRRCorrespondenceSampler (or a task sampler: sample(step), "
                f"state_dict(), seek(step), steps, device), got a {type(sampler).__name__} without {', '.join(missing)}; "
                "pass the sampler itself, not an iterator over its batches"
            )
        if not is_int(depth) or depth < 1:
            raise ValueError(f"depth: expected an int >= 1 (batches made ahead), got {depth!r}")
        if threads is not None and (not is_int(threads) or threads < 1):
            raise ValueError(f"threads: expected an int >= 1 or None, got {threads!r}")
        self.threads = threads
        for name, value in (("start", start), ("stop", stop)):
            if value is not None and (not is_int(value) or value < 0):
                raise ValueError(f"{name}: expected an int >= 0 or None, got {value!r}")
        self.sampler = sampler
        self.depth = depth
        self.start = start
        self.stop = stop if stop is not None else sampler.steps

    def __iter__(self) -> Iterator:
        start = self.sampler.state_dict()["step"] if self.start is None else self.start
        batches: queue.Queue = queue.Queue(maxsize=self.depth)
        stopping = threading.Event()
        device = self.sampler.device
        worker = threading.Thread(target=self._work, args=(start, batches, stopping, device), daemon=True,
                                  name="onthefly-prefetch")
        worker.start()
        try:
            while True:
                item = batches.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                if device.type == "cuda":
                    _record_stream(item, torch.cuda.current_stream(device))
                self.sampler.seek(item.step + 1)
                yield item
        finally:
            stopping.set()
            while worker.is_alive():  # unblock a worker waiting on a full queue
                try:
                    batches.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)

    def _work(self, start: int, batches: queue.Queue, stopping: threading.Event, device: torch.device) -> None:
        step = start
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        if self.threads is not None:
            torch.set_num_threads(self.threads)  # this thread's OpenMP team only
        try:
            while not stopping.is_set() and (self.stop is None or step < self.stop):
                if stream is None:
                    batch = self.sampler.sample(step)
                else:
                    with torch.cuda.stream(stream):
                        batch = self.sampler.sample(step)
                    stream.synchronize()
                _put(batches, batch, stopping)
                step += 1
            _put(batches, _DONE, stopping)
        except BaseException as error:  # handed to the consumer, raised there
            _put(batches, error, stopping)


def _put(batches: queue.Queue, item, stopping: threading.Event) -> None:
    while not stopping.is_set():
        try:
            batches.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _record_stream(value, stream) -> None:
    """Mark every CUDA tensor reachable from a batch as used by ``stream`` (for the caching allocator)."""
    if isinstance(value, Tensor):
        if value.is_cuda:
            value.record_stream(stream)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            _record_stream(getattr(value, item.name), stream)
    elif isinstance(value, dict):
        for item in value.values():
            _record_stream(item, stream)
    elif hasattr(value, "__dict__"):  # cameras and volumes
        for item in vars(value).values():
            _record_stream(item, stream)
