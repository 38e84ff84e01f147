"""Wall-time cost of checkpoints every 60 simulated seconds on the shipped scenarios that take them.

Each scenario (shortened to a few simulated minutes) runs into a temporary run directory with and
without ``output.checkpoint_every_s: 60``, alternately, ``--repeats`` times; the cost is the ratio
of the medians. The issue's goal: at most 5 % more wall time.

    python benchmarks/bench_checkpoint.py --out benchmarks/results/checkpoint.json
    python benchmarks/bench_checkpoint.py --table benchmarks/results/checkpoint.json
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import fedsim
from fedsim.checkpoint import unsupported

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_io

ROOT = Path(__file__).resolve().parent.parent
SHORT = {"stop.time_s": 240.0}
CASES = {
    "quickstart": SHORT,
    "fedavg_deadline": SHORT,
    "byzantine_fedavg": SHORT,
    "fedasync_stragglers": SHORT,
    "fedbuff": SHORT,
    "byzantine_fedbuff": SHORT,
    "frain_nullifiers": SHORT,
    "scaffold": SHORT,
    "fedfix_compare": SHORT,
    "drpga": SHORT,
    "modest": SHORT,
    "dsgd_merge": SHORT,
    "dfl_toy": SHORT,
    "timing_only_1m": {"stop.max_updates": 200_000},
    "timing_only_1m, every checkpoint": {
        "stop.max_updates": 200_000,
        "output.checkpoint_max_overhead": None,
    },
}
"""Shortened shipped scenarios; the last row takes every checkpoint (no overhead budget)."""
COMMAND = "python benchmarks/bench_checkpoint.py --out benchmarks/results/checkpoint.json"


def _file(case: str) -> Path:
    return ROOT / "scenarios" / f"{case.split(',')[0]}.yaml"


def _run(case: str, overrides: dict, every: float | None) -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = {**overrides, "output.checkpoint_every_s": every}
        start = time.perf_counter()
        result = fedsim.run(_file(case), settings, out=f"{tmp}/run")
        summary = result.summary
        seconds = time.perf_counter() - start
        return (
            seconds,
            int(summary.get("checkpoints", 0)),
            int(summary.get("checkpoints_skipped", 0)),
        )


def measure(repeats: int) -> list[dict]:
    rows = []
    for name, overrides in CASES.items():
        scenario = fedsim.load_scenario(_file(name), overrides)
        if unsupported(scenario) is not None:
            continue
        plain, saved, count, skipped = [], [], 0, 0
        for _ in range(repeats):
            plain.append(_run(name, overrides, None)[0])
            seconds, count, skipped = _run(name, overrides, 60.0)
            saved.append(seconds)
        row = {
            "scenario": name,
            "checkpoints": count,
            "skipped": skipped,
            "plain_s": plain,
            "checkpointed_s": saved,
            "ratio": statistics.median(saved) / statistics.median(plain),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(results: dict) -> str:
    """The markdown table of a results file (docs/performance.md holds it verbatim)."""
    lines = [
        "| scenario | checkpoints | skipped | without (s) | with (s) | cost | within 5 % |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in results["rows"]:
        plain = statistics.median(row["plain_s"])
        saved = statistics.median(row["checkpointed_s"])
        cost = row["ratio"] - 1
        lines.append(
            f"| {row['scenario']} | {row['checkpoints']} | {row.get('skipped', 0)} | "
            f"{plain:.2f} | {saved:.2f} | "
            f"{cost:+.1%} | {'yes' if cost <= 0.05 else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = results_io.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if results_io.reprint(args, table):
        return
    rows = measure(args.repeats)
    results_io.write(args, table, rows, command=COMMAND, repeats=args.repeats)


if __name__ == "__main__":
    main()
