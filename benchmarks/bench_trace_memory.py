"""Peak memory of a long timing-only run against its length: bounded by flush_rows, not by the trace.

Each run is a fresh process (``ru_maxrss`` is its peak resident set) running
``scenarios/timing_only_1m.yaml`` to ``stop.max_updates`` updates into a temporary run directory.
With ``--baseline SRC`` the same runs are made with another checkout's ``fedsim`` (e.g. a git
worktree of the commit before the on-disk merge), so the ratio is measured in one sitting.

    python benchmarks/bench_trace_memory.py --out benchmarks/results/trace_memory.json \
        --baseline BEFORE_CHECKOUT   # e.g. a git worktree of d92ad09
    python benchmarks/bench_trace_memory.py --table benchmarks/results/trace_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "timing_only_1m.yaml"
SIZES = (300_000, 1_000_000, 3_000_000)

CHILD = """
import json, resource, sys, time
import fedsim
start = time.perf_counter()
result = fedsim.run(sys.argv[1], {"stop.max_updates": int(sys.argv[2])}, out=sys.argv[3])
rows = sum(result.summary["status_counts"].values())
print(json.dumps({"rows": rows, "wall_s": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(src: Path, updates: int) -> dict:
    """One run in a fresh interpreter importing fedsim from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "FEDSIM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(SCENARIO), str(updates), f"{tmp}/run"],
            env=env,
            cwd=tmp,  # not the repository: `python -c` puts the cwd first on sys.path
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(results: dict) -> str:
    """The markdown table of a results file (docs/performance.md holds it verbatim)."""
    lines = [
        "| updates | trace rows | peak RSS before (MB) | peak RSS now (MB) | before / now |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        before = row.get("before")
        shown = f"{before['peak_rss_mb']:,.0f}" if before else "—"
        ratio = f"{before['peak_rss_mb'] / row['now']['peak_rss_mb']:.1f}×" if before else "—"
        lines.append(
            f"| {row['updates']:,} | {row['now']['rows']:,} | {shown} | "
            f"{row['now']['peak_rss_mb']:,.0f} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="results file to write")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure beside this one")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--table", type=Path, help="print the table of a results file and exit")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    rows = []
    for updates in args.sizes:
        row = {"updates": updates, "now": measure(ROOT, updates)}
        if args.baseline is not None:
            row["before"] = measure(args.baseline, updates)
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = "python benchmarks/bench_trace_memory.py --out benchmarks/results/trace_memory.json"
    if args.baseline is not None:
        command += " --baseline BEFORE_CHECKOUT"
    results = {
        "command": command,
        "scenario": str(SCENARIO.relative_to(ROOT)),
        "baseline": "the commit before the on-disk merge (d92ad09)" if args.baseline else None,
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
