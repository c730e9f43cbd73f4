"""Helpers shared by the benchmark scripts in this folder.

* :func:`machine_info`: the CPU, memory, OS and library versions to record with
  every result.
* :class:`MemoryProbe`: peak resident memory of the current process, split into
  "loading" and "after loading" (the rendering) with the kernel's peak-RSS reset.
* :func:`run_worker` / :func:`emit_worker_result`: run one measurement in a fresh
  Python process under an address-space cap, so that each configuration's peak
  memory is its own and a configuration that needs too much memory fails inside
  its process (``out of memory``) instead of taking the machine down. It also
  reports how many cores other processes kept busy meanwhile (the disturbance
  of the timings).
* :func:`time_calls` / :func:`summarize`: warm-up, repeats scaled to a time
  budget, median and spread.
* :func:`write_markdown_section`: replace one marked section of ``RESULTS.md``
  and leave the others (each benchmark owns one section).

Linux only for the memory parts (``/proc`` and ``ru_maxrss`` in KiB); elsewhere
they report ``None``.
"""

from __future__ import annotations

import datetime as _datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
"""JSON results (committed) and ``cache/`` (intermediate tensors, git-ignored)."""
RESULTS_MARKDOWN = BENCHMARKS_DIR / "RESULTS.md"

GIB = 2**30
GB = 10**9

_RESULT_PREFIX = "BENCHMARK-RESULT "
_MARKDOWN_TITLE = """# Benchmark results

Each section below is written by one script in `benchmarks/` (see
`benchmarks/README.md`); re-run the script named in a section to refresh it.
Timings depend on the machine and on what else runs on it: compare rows
within one section, which were measured in the same run.
"""


# ---------------------------------------------------------------------------
# Machine description


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _cpu_model() -> str:
    cpuinfo = _read_text("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _meminfo_bytes(key: str) -> int | None:
    """A ``/proc/meminfo`` entry (``MemTotal``, ``MemAvailable``) in bytes."""
    for line in (_read_text("/proc/meminfo") or "").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None


def memory_available_bytes() -> int | None:
    """Memory the kernel can give without swapping (``MemAvailable``), bytes; ``None`` off Linux."""
    return _meminfo_bytes("MemAvailable")


def _os_name() -> str:
    release = _read_text("/etc/os-release") or ""
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', release, re.MULTILINE)
    distribution = match.group(1) if match else platform.system()
    return f"{distribution}, {platform.system()} {platform.release()}"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+uncommitted changes" if dirty else "")


def machine_info(packages: Sequence[str] = ("torch", "onthefly", "diffdrr", "torchio")) -> dict:
    """CPU model, core count, RAM, OS, Python and package versions, git commit and date (UTC)."""
    import torch

    total = _meminfo_bytes("MemTotal")
    return {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": None if total is None else round(total / GIB, 1),
        "os": _os_name(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in packages},
        "git_commit": _git_commit(),
        "date_utc": _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def describe_machine(info: dict) -> str:
    """One line naming the machine of :func:`machine_info` for a Markdown section."""
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items() if version)
    commit = f" (git {info['git_commit']})" if info.get("git_commit") else ""
    return (
        f"{info['cpu']}, {info['cpu_cores']} cores ({info['torch_threads']} torch threads), "
        f"{info['ram_gib']} GiB RAM, {info['os']}; Python {info['python']}, {versions}{commit}; "
        f"{info['date_utc']}"
    )


# ---------------------------------------------------------------------------
# Peak memory of the current process


def current_rss_bytes() -> int | None:
    """Resident memory of this process now (``/proc/self/statm``), bytes."""
    statm = _read_text("/proc/self/statm")
    if statm is None:
        return None
    return int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (``ru_maxrss``; KiB on Linux), bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0). ``False`` if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


class MemoryProbe:
    """Peak RSS of this process, and of the part of its life after :meth:`mark_loaded`.

    Call :meth:`mark_loaded` once the inputs are loaded (volume, renderer): it
    records the RSS then and the peak so far (the loading peak, which may exceed
    the RSS after loading because of temporaries), and resets the kernel's
    peak mark, so that :meth:`report` can tell the rendering's own peak apart.
    """

    def __init__(self) -> None:
        self.loaded_rss: int | None = None
        self.loading_peak: int | None = None
        self.reset_worked = False

    def mark_loaded(self) -> None:
        import gc

        gc.collect()
        self.loaded_rss = current_rss_bytes()
        self.loading_peak = peak_rss_bytes()
        self.reset_worked = reset_peak_rss()

    def report(self) -> dict:
        """Bytes: ``peak_rss`` (whole process, as ``ru_maxrss``), ``rss_after_load``,
        ``peak_after_load`` and ``peak_above_load = peak_after_load - rss_after_load``.

        Without the peak reset, ``peak_after_load`` is the whole-process peak
        (so ``peak_above_load`` is an upper bound) and ``peak_reset`` is ``False``.
        """
        later_peak = peak_rss_bytes()
        if self.loaded_rss is None:
            return {"peak_rss": later_peak, "rss_after_load": None, "peak_after_load": None,
                    "peak_above_load": None, "peak_reset": False}
        process_peak = max(later_peak, self.loading_peak) if self.reset_worked else later_peak
        return {
            "peak_rss": process_peak,
            "rss_after_load": self.loaded_rss,
            "peak_after_load": later_peak,
            "peak_above_load": later_peak - self.loaded_rss,
            "peak_reset": self.reset_worked,
        }


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is an allocation failure (PyTorch's allocator or Python's)."""
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "Cannot allocate memory" in text or "out of memory" in text
    )


# ---------------------------------------------------------------------------
# Worker processes


def emit_worker_result(payload: dict) -> None:
    """Print a worker's result as the marked JSON line :func:`run_worker` looks for."""
    sys.stdout.write(_RESULT_PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have spent busy since boot (``/proc/stat``)."""
    stat = _read_text("/proc/stat")
    if stat is None:
        return None
    fields = [int(value) for value in stat.splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class WorkerOutcome:
    """What came back from one worker process."""

    payload: dict | None  # the emitted result, or None if the worker emitted none
    returncode: int | None  # None after a timeout
    wall_s: float
    stderr_tail: str
    memory_limit_bytes: int | None
    other_cpu_cores: float | None = None  # mean cores busy with other processes meanwhile (disturbance)

    @property
    def failure(self) -> str | None:
        """``None`` if the worker emitted a result, else a short reason."""
        if self.payload is not None:
            return None
        if self.returncode is None:
            return "timed out"
        if self.returncode < 0:
            name = signal.Signals(-self.returncode).name
            hint = " (likely the kernel's out-of-memory killer)" if name == "SIGKILL" else ""
            return f"killed by {name}{hint}"
        return f"exited with status {self.returncode} without a result"


def capped_memory_limit(requested_bytes: int, *, margin_bytes: int = GIB) -> int:
    """The address-space cap for a worker: ``requested_bytes``, lowered to the memory
    available now minus ``margin_bytes`` so that a worker cannot push other
    processes on a shared machine into the out-of-memory killer."""
    available = memory_available_bytes()
    if available is None:
        return requested_bytes
    return max(GIB, min(requested_bytes, available - margin_bytes))


def run_worker(
    argv: Sequence[str], *, memory_limit_bytes: int | None, timeout_s: float, env: dict | None = None
) -> WorkerOutcome:
    """Run ``python argv...`` in a fresh process and collect what it passed to :func:`emit_worker_result`.

    ``memory_limit_bytes`` caps the child's address space (``RLIMIT_AS``), so an
    allocation beyond it fails in the child (PyTorch raises) rather than
    exhausting the machine. The child's stderr is kept (last 4000 characters)
    for diagnosis.
    """

    def limit_memory() -> None:  # runs in the child, before Python starts
        if memory_limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))

    start, busy_start, children_start = time.perf_counter(), _busy_cpu_seconds(), _children_cpu_seconds()
    try:
        completed = subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, timeout=timeout_s,
            preexec_fn=limit_memory, cwd=REPO_ROOT, env=env,
        )
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else (expired.stderr or "")
        return WorkerOutcome(None, None, time.perf_counter() - start, stderr[-4000:], memory_limit_bytes)
    wall = time.perf_counter() - start
    busy_end = _busy_cpu_seconds()
    others = None
    if busy_start is not None and busy_end is not None:
        # All busy CPU time minus the worker's own: what other processes (and this driver) used meanwhile.
        others = max(0.0, (busy_end - busy_start) - (_children_cpu_seconds() - children_start)) / max(wall, 1e-9)
    payload = None
    for line in completed.stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            payload = json.loads(line[len(_RESULT_PREFIX):])
    return WorkerOutcome(payload, completed.returncode, wall, completed.stderr[-4000:], memory_limit_bytes, others)


# ---------------------------------------------------------------------------
# Timing


def time_calls(
    function: Callable[[], object],
    *,
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 10,
    budget_s: float = 20.0,
) -> tuple[list[float], object]:
    """Call ``function`` ``warmup`` times untimed, then time it repeatedly.

    The number of timed calls is ``ceil(budget_s / duration)`` clamped to
    ``[min_repeats, max_repeats]``, where ``duration`` is the last warm-up call's
    (or the first timed call's, with no warm-up). Returns the durations in
    seconds and the last call's result.
    """
    duration = None
    result = None
    for _ in range(warmup):
        start = time.perf_counter()
        result = function()
        duration = time.perf_counter() - start
    times: list[float] = []
    target = None if duration is None else _repeats_for(duration, min_repeats, max_repeats, budget_s)
    while target is None or len(times) < target:
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
        if target is None:
            target = _repeats_for(times[0], min_repeats, max_repeats, budget_s)
    return times, result


def _repeats_for(duration: float, min_repeats: int, max_repeats: int, budget_s: float) -> int:
    wanted = math.ceil(budget_s / max(duration, 1e-9))
    return max(min_repeats, min(max_repeats, wanted))


def summarize(values: Sequence[float]) -> dict:
    """Median, min, max and the quartiles of ``values``."""
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1], "q1": q1, "q3": q3, "n": len(ordered)}


# ---------------------------------------------------------------------------
# Markdown


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, align: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table; ``align`` holds ``"l"`` or ``"r"`` per column (default: left)."""
    align = align or ["l"] * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown_section(path: Path, name: str, body: str, *, title: str = _MARKDOWN_TITLE) -> None:
    """Put ``body`` between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path``.

    An existing section of that name is replaced; other text and sections are
    kept. A missing section is appended; a missing file is created with ``title``.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    path = Path(path)
    text = path.read_text() if path.exists() else title
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
