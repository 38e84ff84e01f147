"""Timing-only throughput at 100k clients with ``diurnal`` availability against ``always``.

FedAsync with 1000 jobs in flight, exponential 5 s jobs, no training, ``--updates`` updates per run;
each case runs ``--repeats`` times, the cases interleaved so that a change in the machine's load
hits them alike. The rate of a run is its updates over the CPU time of the process for the whole
run (building the 100k clients included): on a shared machine the wall time mostly measures the
other jobs; the wall-clock rates are kept in the results file too. The issue's goal: diurnal at least 0.9 of always. Two diurnal periods, half the
clients online at any time (phases spread over the period): a day (few switches in the simulated
minutes of a run) and an hour (every client switches every 30 simulated minutes: about one
switch per four jobs).

    python benchmarks/bench_availability.py --out benchmarks/results/availability.json
    python benchmarks/bench_availability.py --table benchmarks/results/availability.json
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import fedsim

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_io

COMMAND = "python benchmarks/bench_availability.py --out benchmarks/results/availability.json"
CLIENTS = 100_000
CASES = {
    "always": {"kind": "always"},
    "diurnal, period 1 day": {"kind": "diurnal", "period_s": 86400.0, "phase": "spread"},
    "diurnal, period 1 hour": {"kind": "diurnal", "period_s": 3600.0, "phase": "spread"},
}
GOAL = 0.9


def scenario(availability: dict, updates: int) -> dict:
    return {
        "name": "bench_availability",
        "seed": 0,
        "stop": {"time_s": None, "max_updates": updates},
        "training": "none",
        "clients": {
            "count": CLIENTS,
            "compute": {"dist": "exponential", "mean_s": 5.0},
            "availability": availability,
        },
        "algorithm": {"name": "fedasync", "concurrency": 1000},
        "eval": {"every_s": 1000.0},
    }


def rate(availability: dict, updates: int) -> tuple[float, float, float]:
    """(updates per CPU second, per wall-clock second, simulated seconds) of one run."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fedsim.run(scenario(availability, updates), save=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = result.summary["updates"]
    return done / cpu, done / wall, float(result.summary["sim_time_s"])


def measure(updates: int, repeats: int) -> list[dict]:
    rates: dict[str, list[float]] = {name: [] for name in CASES}
    wall_rates: dict[str, list[float]] = {name: [] for name in CASES}
    sim_time: dict[str, float] = {}
    for _ in range(repeats):
        for name, availability in CASES.items():
            per_cpu_s, per_wall_s, sim_time[name] = rate(availability, updates)
            rates[name].append(per_cpu_s)
            wall_rates[name].append(per_wall_s)
            print(f"{name}: {per_cpu_s:,.0f} updates/CPU s", flush=True)
    base = statistics.median(rates["always"])
    rows = []
    for name, availability in CASES.items():
        period = availability.get("period_s")
        # every client switches twice per period: the expected switch events per update
        switches = 0.0 if period is None else 2 * CLIENTS * sim_time[name] / period / updates
        rows.append(
            {
                "availability": name,
                "updates_per_cpu_s": rates[name],
                "updates_per_wall_s": wall_rates[name],
                "sim_time_s": sim_time[name],
                "switches_per_update": switches,
                "ratio": statistics.median(rates[name]) / base,
            }
        )
    return rows


def table(results: dict) -> str:
    """The markdown table of a results file (docs/performance.md holds it verbatim)."""
    lines = [
        "| availability | switches per update | updates per CPU s (median) | vs always | goal ≥ 0.9 |",
        "|---|---:|---:|---:|---|",
    ]
    for row in results["rows"]:
        ok = "yes" if row["ratio"] >= GOAL else "no"
        lines.append(
            f"| {row['availability']} | {row['switches_per_update']:.2f} | "
            f"{statistics.median(row['updates_per_cpu_s']):,.0f} | {row['ratio']:.2f} | {ok} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = results_io.parser(__doc__)
    parser.add_argument("--updates", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if results_io.reprint(args, table):
        return
    rows = measure(args.updates, args.repeats)
    results_io.write(
        args,
        table,
        rows,
        command=COMMAND,
        clients=CLIENTS,
        updates=args.updates,
        repeats=args.repeats,
    )


if __name__ == "__main__":
    main()
