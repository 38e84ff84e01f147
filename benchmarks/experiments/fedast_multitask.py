"""FedAST with Realloc vs FedAST with a fixed allocation vs Sync-ST (ALGORITHMS.md §5, FedAST row).

Runs ``scenarios/fedast_multitask.yaml`` (three small tasks, 200 clients, Dirichlet label skew,
log-normal job times) once per scheme and seed until every task reached its target, prints a
Markdown table of the simulated time to each target and to all of them, and writes the per-task
accuracy and clients-per-task figures. Every scheme has the same busy-client budget (FedAST:
``concurrency``; Sync-ST: ``clients_per_round``). The paper's shape: FedAST reaches all targets in
less simulated time than Sync-ST (up to 46 % less), and Realloc helps over a fixed allocation.

    python benchmarks/experiments/fedast_multitask.py --seeds 0 1 2 --out docs/img
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from fedsim.plots_tasks import clients_per_task, task_accuracy
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "fedast_multitask.yaml"


def schemes(first_k: int) -> dict[str, dict]:
    """label → overrides of the scenario (which is FedAST with Realloc)."""
    algo = yaml.safe_load(SCENARIO.read_text())["algorithm"]
    budget = algo["concurrency"]
    return {
        "FedAST (Realloc)": {},
        "FedAST (fixed allocation)": {"algorithm.realloc": False},
        f"Sync-ST (first {first_k} per task)": {
            "algorithm": {
                "name": "sync_st",
                "tasks": algo["tasks"],
                "clients_per_round": budget,
                "first_k": first_k,
                "server_lr": algo["server_lr"],
            }
        },
    }


def fmt(values: list[float | None]) -> str:
    done = [v for v in values if v is not None]
    if not done:
        return "never"
    text = f"{np.mean(done):.0f} ± {np.std(done):.0f}"
    return text if len(done) == len(values) else f"{text} ({len(done)}/{len(values)} seeds)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--time-s", type=float, default=None, help="simulated horizon override")
    parser.add_argument("--first-k", type=int, default=6, help="Sync-ST: reports kept per task")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="figure directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    rows: dict[str, list[dict]] = {}
    examples = {}
    started = time.perf_counter()
    for label, overrides in schemes(args.first_k).items():
        rows[label] = []
        for seed in args.seeds:
            merged = {"seed": seed, **overrides}
            if args.time_s is not None:
                merged["stop.time_s"] = args.time_s
            sim = Simulation(load_scenario(SCENARIO, merged))
            result = sim.run()
            extra = sim.algorithm.summary_extra()
            rows[label].append(
                {
                    "tasks": [t["time_to_target_s"] for t in extra["tasks"]],
                    "names": [t["name"] for t in extra["tasks"]],
                    "all": extra["time_to_all_targets_s"],
                    "jobs": len(result.events),
                }
            )
            if seed == args.seeds[0]:
                examples[label] = result
            print(
                f"  {label} seed {seed}: all targets at {extra['time_to_all_targets_s']} "
                f"({result.summary['wall_time_s']:.1f} s wall)",
                file=sys.stderr,
            )
    wall = time.perf_counter() - started

    names = next(iter(rows.values()))[0]["names"]
    print(f"`python {' '.join(shlex.quote(a) for a in sys.argv)}` ({wall:.0f} s wall)\n")
    print("| scheme | " + " | ".join(f"{n} (s)" for n in names) + " | all targets (s) | jobs |")
    print("|---|" + "---|" * (len(names) + 2))
    for label, runs in rows.items():
        cells = [fmt([r["tasks"][m] for r in runs]) for m in range(len(names))]
        alls = fmt([r["all"] for r in runs])
        jobs = f"{np.mean([r['jobs'] for r in runs]):.0f}"
        print(f"| {label} | " + " | ".join(cells) + f" | {alls} | {jobs} |")
    sync = [r["all"] for label, runs in rows.items() if label.startswith("Sync") for r in runs]
    for label, runs in rows.items():
        if label.startswith("Sync"):
            continue
        ours = [r["all"] for r in runs]
        if all(v is not None for v in ours + sync):
            saving = 1 - np.mean(ours) / np.mean(sync)
            print(
                f"\n{label}: {100 * saving:.0f} % less simulated time to all targets than Sync-ST"
            )

    args.out.mkdir(parents=True, exist_ok=True)
    fig = task_accuracy(examples)
    fig.suptitle(f"Per-task test accuracy, seed {args.seeds[0]} (dot: target reached)")
    fig.savefig(args.out / "fedast_task_accuracy.png", dpi=110)
    for label, stem in zip(examples, ("realloc", "fixed", "sync"), strict=True):
        fig = clients_per_task(examples[label], ax_title=f"Clients per task — {label}")
        fig.savefig(args.out / f"fedast_clients_{stem}.png", dpi=110)
    print(f"\nfigures: {args.out}/fedast_task_accuracy.png, fedast_clients_*.png", file=sys.stderr)


if __name__ == "__main__":
    main()
