"""The server update pipeline's share of the run on shipped scenarios (shortened), default keys.

A before/after comparison with the pre-pipeline tree was not made (a loaded 2-core machine: the
difference sought, under 2 %, is below the noise of whole runs there). Instead every call of the
pipeline's stages, ``Algorithm.aggregate`` (pre-aggregators and aggregator) and
``Algorithm.server_update`` (the server optimiser and the finite check; ``apply`` goes through it)
and ``Algorithm.mix`` (FedAsync's step, publishing included), is timed in CPU seconds (outermost calls only) and divided by the CPU time of the whole
run. This bounds the overhead from above: the old inline code did the same arithmetic (a weighted
sum, ``params + lr * step``), so the pipeline's overhead is part of this share, not more.

    python benchmarks/bench_pipeline.py --out benchmarks/results/pipeline.json
    python benchmarks/bench_pipeline.py --table benchmarks/results/pipeline.json
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from pathlib import Path

import torch

import fedsim
from fedsim.algorithms.base import Algorithm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_io

COMMAND = "python benchmarks/bench_pipeline.py --out benchmarks/results/pipeline.json"
SCENARIOS = (
    "scenarios/quickstart.yaml",
    "scenarios/fedbuff.yaml",
    "scenarios/fedavg_deadline.yaml",
    "scenarios/fedasync_stragglers.yaml",
)
STAGES = ("aggregate", "server_update", "mix")
GOAL = 0.02


class StageClock:
    """CPU seconds spent inside the pipeline's stages (nested calls counted once)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0

    def wrap(self, method):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            if self._depth:
                return method(*args, **kwargs)
            self._depth += 1
            started = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - started
                self.calls += 1
                self._depth -= 1

        return timed


def share(scenario: str, time_s: float) -> dict:
    """One run of ``scenario`` for ``time_s`` simulated seconds: its CPU time and the stages'."""
    clock = StageClock()
    originals = {name: getattr(Algorithm, name) for name in STAGES}
    for name, method in originals.items():
        setattr(Algorithm, name, clock.wrap(method))
    try:
        started, wall = time.process_time(), time.perf_counter()
        result = fedsim.run(scenario, save=False, stop__time_s=time_s)
        total, wall = time.process_time() - started, time.perf_counter() - wall
    finally:
        for name, method in originals.items():
            setattr(Algorithm, name, method)
    return {
        "cpu_s": total,
        "wall_s": wall,
        "pipeline_cpu_s": clock.seconds,
        "pipeline_calls": clock.calls,
        "updates": result.summary["updates"],
        "share": clock.seconds / total,
    }


def measure(scenarios: list[str], time_s: float, repeats: int) -> list[dict]:
    runs: dict[str, list[dict]] = {s: [] for s in scenarios}
    for _ in range(repeats):
        for scenario in scenarios:  # interleaved: a change of load hits all alike
            runs[scenario].append(share(scenario, time_s))
            print(scenario, f"{runs[scenario][-1]['share']:.4%}", flush=True)
    return [
        {
            "scenario": scenario,
            "shares": [r["share"] for r in rows],
            "cpu_s": [r["cpu_s"] for r in rows],
            "wall_s": [r["wall_s"] for r in rows],
            "pipeline_calls": rows[0]["pipeline_calls"],
            "updates": rows[0]["updates"],
        }
        for scenario, rows in runs.items()
    ]


def table(results: dict) -> str:
    """The markdown table of a results file (docs/performance.md holds it verbatim)."""
    lines = [
        "| scenario (shortened) | pipeline calls | run CPU s (median) | pipeline share: median (min–max) | share < 2 % in every repeat |",
        "|---|---:|---:|---:|---|",
    ]
    for row in results["rows"]:
        median = statistics.median(row["shares"])
        ok = "yes" if max(row["shares"]) < GOAL else "no"
        lines.append(
            f"| {Path(row['scenario']).name}, {results['time_s']:g} s | {row['pipeline_calls']} | "
            f"{statistics.median(row['cpu_s']):.2f} | {median:.2%} "
            f"({min(row['shares']):.2%}–{max(row['shares']):.2%}) | {ok} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = results_io.parser(__doc__)
    parser.add_argument("--time-s", type=float, default=120.0, help="simulated seconds per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    args = parser.parse_args()
    if results_io.reprint(args, table):
        return
    torch.set_num_threads(1)
    rows = measure(args.scenarios, args.time_s, args.repeats)
    results_io.write(
        args,
        table,
        rows,
        command=COMMAND,
        time_s=args.time_s,
        repeats=args.repeats,
        threads=1,
    )


if __name__ == "__main__":
    main()
