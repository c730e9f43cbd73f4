"""Strategy speed of ``onthefly.testing``: small random scenes generated (and rendered) per second.

What a property test pays per example before it checks anything: hypothesis
draws a :func:`~onthefly.testing.strategies.scenes` example (cameras, a
detector of 2 x 4 to 5 x 5 patches of 4 or 8 pixels, ``B`` 1-2 blob volumes
of 8-12 voxels, 2-3 views), then the test renders its views (``render``) and,
in the last row, computes its correspondence matrix as the scene says
(``Scene.correspondence``: exact, separable or sampled footprints). Each row
runs ``--examples`` examples through one ``@given`` test, derandomised (the
same examples every run, as in ``make test``), shrinking off; one untimed run
first, then ``--repeats`` timed runs: the table gives the median rate and the
range over the runs. The work per example is tiny, so hypothesis' own
bookkeeping is part of what is measured, as in a real test. Every row is
measured with torch's default threads and with one thread
(``torch.set_num_threads(1)``): the small tensors of these scenes gain little
from a second thread, and when other jobs load the cores its waits can cost
more than it gives (a run at a load average of 8 gave 72 scenes / s with one
thread and 25 with two).

Run: ``.venv/bin/python benchmarks/testing.py`` (under a minute on a quiet
2-core CPU, four on a busy one); writes ``benchmarks/results/testing.json`` and the
``testing`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from _common import RESULTS_DIR, RESULTS_MARKDOWN, describe_machine, machine_info, markdown_table, write_markdown_section
import torch
from hypothesis import Phase, given, settings

from onthefly import render
from onthefly.testing.strategies import scenes

STAGES = {
    "generated": "drawn by hypothesis",
    "generated and rendered": "drawn, then every view rendered",
    "generated, rendered, C computed": "drawn, rendered, and its correspondence matrix computed",
}


def run(stage: str, examples: int) -> float:
    """Seconds for ``examples`` examples of ``stage`` through one derandomised ``@given`` test."""

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate])
    @given(scenes())
    def test(scene):
        if stage != "generated":
            render(scene.volumes, scene.carm)
        if stage == "generated, rendered, C computed":
            scene.correspondence()

    begin = time.perf_counter()
    test()
    return time.perf_counter() - begin


def measure(examples: int, repeats: int) -> list[dict]:
    rows = []
    default_threads = torch.get_num_threads()
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        for stage in STAGES:
            run(stage, examples)  # warm-up: imports, first-call allocations
            rates = [examples / run(stage, examples) for _ in range(repeats)]
            rows.append({"stage": stage, "threads": threads, "examples": examples, "rates_per_s": rates,
                         "median_per_s": statistics.median(rates)})
            print(f"{stage}, {threads} thread(s): {statistics.median(rates):.0f} scenes/s "
                  f"({min(rates):.0f}-{max(rates):.0f})", flush=True)
    torch.set_num_threads(default_threads)
    return rows


def table(rows: list[dict]) -> str:
    body = [[row["stage"], STAGES[row["stage"]], str(row["threads"]), f"{row['median_per_s']:.0f}",
             f"{min(row['rates_per_s']):.0f}-{max(row['rates_per_s']):.0f}"] for row in rows]
    return markdown_table(["scenes", "per example", "torch threads", "scenes / s (median)", "range"], body,
                          align="llrrr")


def verdict(rows: list[dict]) -> str:
    """One sentence: the best rate of generated and rendered scenes against the target of 50 per second."""
    rendered = [row for row in rows if row["stage"] == "generated and rendered"]
    best = max(rendered, key=lambda row: row["median_per_s"])
    others = ", ".join(f"{row['median_per_s']:.0f} / s with {row['threads']}" for row in rendered if row is not best)
    status = "meets" if best["median_per_s"] >= 50 else "misses"
    return (f"Generated and rendered: {best['median_per_s']:.0f} scenes / s with {best['threads']} torch thread(s) "
            f"({others}), which {status} the target of 50 / s.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="examples per timed run (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (default 3)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "testing.json", help="JSON results")
    parser.add_argument("--no-markdown", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.examples < 1 or args.repeats < 1:
        parser.error(f"--examples and --repeats: expected at least 1, got {args.examples} and {args.repeats}")
    load_before = os.getloadavg()[0]
    rows = measure(args.examples, args.repeats)
    load_after = os.getloadavg()[0]
    info = machine_info()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": info, "load_average": [load_before, load_after], "rows": rows},
                                      indent=2))
    section = (
        "## Property-test scenes (`benchmarks/testing.py`)\n\n"
        f"Small random scenes of `onthefly.testing.strategies.scenes()` per second, {args.examples} derandomised "
        f"examples per run through one `@given` test, median and range of {args.repeats} runs after one warm-up. "
        f"Machine: {describe_machine(info)}. 1-minute load average {load_before:.1f} before and {load_after:.1f} "
        "after: other jobs shared the 2 cores.\n\n" + table(rows) + "\n\n" + verdict(rows)
    )
    print("\n" + table(rows))
    if not args.no_markdown:
        write_markdown_section(RESULTS_MARKDOWN, "testing", section)
        print(f"\nwrote {args.output} and the 'testing' section of {RESULTS_MARKDOWN}")


if __name__ == "__main__":
    main()
