"""SCAFFOLD against FedAvg on the same clients (issue 13), CPU-sized.

Runs ``scenarios/scaffold.yaml`` (digits, 100 clients, 10 per round, 10 local SGD steps, 20 s
deadline, 600 simulated seconds) with ``algorithm.name`` scaffold and fedavg, everything else equal
(same seeds: same data split, client speeds and cohorts), under two partitions: Dirichlet 0.1 (the
scenario, strongly non-IID) and Dirichlet 1.0. Figures per run: the final test accuracy, the mean
accuracy of the last five evaluations (the last 100 s, less noisy than one), and for SCAFFOLD the
bytes its control variates ``c_i`` hold at the end, measured on the tensors themselves.

Writes ``--out`` (JSON: the command, the seeds, one row per run) and prints :func:`table`; every
figure is a mean over seeds ± the half-width of its 95 % Student-t interval
(benchmarks/experiments/stats.py), and "A beats B" is said only where the interval of the paired
difference (same seeds) excludes 0.

    python benchmarks/experiments/scaffold_vs_fedavg.py --seeds 0 1 2 3 4 5 6 7 8 9 \
        --out benchmarks/results/scaffold_vs_fedavg.json

``--table FILE`` prints the table of an existing results file (no runs).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stats import interval, paired, verdict

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "scaffold.yaml"
SCHEMES = {"SCAFFOLD": "scaffold", "FedAvg": "fedavg"}
CONDITIONS = {"Dirichlet 0.1": [], "Dirichlet 1.0": ["data.partition.alpha=1.0"]}
LAST = 5
"""Evaluations averaged for the 'last 100 s' accuracy (one every 20 s)."""
CLIENTS_AT_SCALE = 100_000


def one_run(scheme: str, condition: str, seed: int) -> dict:
    import torch

    from fedsim.scenario import load_scenario
    from fedsim.simulation import Simulation

    torch.set_num_threads(1)
    sets = [f"algorithm.name={SCHEMES[scheme]}", f"seed={seed}", *CONDITIONS[condition]]
    sim = Simulation(load_scenario(SCENARIO, sets))
    result = sim.run()
    controls = getattr(sim.algorithm, "controls", {})
    summary = result.summary
    row = {
        "scheme": scheme,
        "condition": condition,
        "seed": seed,
        "final_acc": summary["final_accuracy"],
        "last_acc": float(result.evals["accuracy"].iloc[-LAST:].mean()),
        "applied": summary["status_counts"].get("applied", 0),
        "model_params": summary["model_params"],
        "control_variates": len(controls),
        "control_bytes": sum(c.numel() * c.element_size() for c in controls.values()),
        "wall_s": summary["wall_time_s"],
    }
    print(f"{scheme} {condition} seed {seed}: final {row['final_acc']:.3f}", file=sys.stderr)
    return row


def _by(rows: list[dict], scheme: str, condition: str, col: str) -> dict[int, float]:
    return {
        r["seed"]: r[col] for r in rows if r["scheme"] == scheme and r["condition"] == condition
    }


def table(results: dict) -> str:
    """The Markdown tables of a results file (accuracy, paired differences, memory)."""
    rows = results["rows"]
    n = len(results["seeds"])
    lines = [
        f"Test accuracy after {results['time_s']:.0f} simulated s, mean ± 95 % interval over "
        f"{n} seeds (last {LAST}: the mean of the last {LAST} evaluations of each run).",
        "",
        "| partition | scheme | final accuracy | last-5 accuracy | reports applied |",
        "|---|---|---|---|---|",
    ]
    for cond in CONDITIONS:
        for scheme in SCHEMES:
            final = _by(rows, scheme, cond, "final_acc")
            last = _by(rows, scheme, cond, "last_acc")
            applied = _by(rows, scheme, cond, "applied")
            lines.append(
                f"| {cond} | {scheme} | {interval(list(final.values()))} "
                f"| {interval(list(last.values()))} "
                f"| {math.fsum(applied.values()) / len(applied):.0f} |"
            )
    lines += [
        "",
        "Paired differences SCAFFOLD − FedAvg (same seeds), 95 % interval:",
        "",
        "| partition | final accuracy | verdict | last-5 accuracy | verdict |",
        "|---|---|---|---|---|",
    ]
    for cond in CONDITIONS:
        cells = []
        for col in ("final_acc", "last_acc"):
            d = paired(_by(rows, "SCAFFOLD", cond, col), _by(rows, "FedAvg", cond, col))
            cells += [d.format("+.3f"), verdict("SCAFFOLD", "FedAvg", d)]
        lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    ours = [r for r in rows if r["scheme"] == "SCAFFOLD"]
    per_client = {r["control_bytes"] / r["control_variates"] for r in ours if r["control_variates"]}
    (each,) = {int(b) for b in per_client}  # d floats of 4 bytes: the same for every client and run
    params = {r["model_params"] for r in ours}
    held = [r["control_variates"] for r in ours]
    lines += [
        "",
        f"Control variates held at the end (measured on the tensors): {min(held)}–{max(held)} of "
        f"100 clients, {each:,} bytes each (the model's {', '.join(f'{p:,}' for p in params)} "
        f"parameters in float32); at {CLIENTS_AT_SCALE:,} clients that all took part: "
        f"{each * CLIENTS_AT_SCALE / 1e9:.2f} GB.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from fedsim.scenario import load_scenario

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "scaffold_vs_fedavg.json"
    )
    parser.add_argument("--table", type=Path, help="print the table of this results file; no runs")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text(encoding="utf-8"))))
        return
    started = time.perf_counter()
    rows = [
        one_run(scheme, cond, seed)
        for cond in CONDITIONS
        for scheme in SCHEMES
        for seed in args.seeds
    ]
    wall = time.perf_counter() - started
    results = {
        "command": f"python {shlex.join(sys.argv)}" if argv is None else shlex.join(argv),
        "seeds": args.seeds,
        "time_s": load_scenario(SCENARIO).stop.time_s,
        "scenario": "scenarios/scaffold.yaml",
        "wall_s": round(wall, 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(table(results))
    print(f"\n{len(rows)} runs in {wall:.0f} s wall; command: {results['command']}")


if __name__ == "__main__":
    main()
