"""FedAST with Realloc vs FedAST with a fixed allocation vs Sync-ST (ALGORITHMS.md §5, FedAST row).

Two configurations (``--config``), each a scenario run once per scheme and seed until every task
reached its target:

* ``multitask`` — ``scenarios/fedast_multitask.yaml``: three small tasks of similar
  heterogeneity (Dirichlet label skew), 200 clients, log-normal job times;
* ``hetero`` — ``scenarios/fedast_hetero.yaml``: one hard task (one class per client) and three
  easy IID ones, where Realloc has something to move; also prints the per-seed paired difference
  Realloc − fixed and the dispersion statistic Realloc saw.

Prints a Markdown table of the simulated time to each target and to all of them, and writes the
per-task accuracy and clients-per-task figures. Every scheme has the same busy-client budget
(FedAST: ``concurrency``; Sync-ST: ``clients_per_round``). The paper's shape: FedAST reaches all
targets in less simulated time than Sync-ST (up to 46 % less), and Realloc helps over a fixed
allocation when the tasks differ in heterogeneity.

    python benchmarks/experiments/fedast_multitask.py --seeds 0 1 2 --out docs/img
    python benchmarks/experiments/fedast_multitask.py --config hetero --seeds 0 1 2 3 4 5 6 7 8 9
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

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
CONFIGS = {
    "multitask": (SCENARIOS / "fedast_multitask.yaml", "fedast_"),
    "hetero": (SCENARIOS / "fedast_hetero.yaml", "fedast_hetero_"),
}
"""--config → (scenario, prefix of the figure files)."""


def schemes(scenario: Path, first_k: int) -> dict[str, dict]:
    """label → overrides of the scenario (which is FedAST with Realloc)."""
    algo = yaml.safe_load(scenario.read_text())["algorithm"]
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


def dispersion_means(runs: list[dict]) -> list[float]:
    """Each task's dispersion statistic, averaged over every reallocation of every run while the
    task was unfinished (a finished task enters a reallocation as 0)."""
    per_task: list[list[float]] = []
    for run in runs:
        for _, values in run["dispersion"]:
            per_task.extend([] for _ in range(len(values) - len(per_task)))
            for m, v in enumerate(values):
                if v > 0:
                    per_task[m].append(v)
    return [float(np.mean(v)) if v else float("nan") for v in per_task]


def mean_allocation(runs: list[dict]) -> list[float]:
    """Each task's target R_m averaged over time until the first task finished, over runs."""
    out = []
    for run in runs:
        first_done = min(t for t in run["tasks"] if t is not None)
        steps = [(t, r) for t, r in run["allocations"] if t < first_done] + [(first_done, None)]
        weights = np.diff([t for t, _ in steps])
        out.append(np.average([r for _, r in steps[:-1]], axis=0, weights=weights))
    return list(np.mean(out, axis=0))


def paired(rows: dict[str, list[dict]], a: str, b: str, key: str = "all") -> list[float] | None:
    """Per-seed differences a − b of the time to all targets (None when a run missed a target)."""
    first = [r[key] for r in rows[a]]
    second = [r[key] for r in rows[b]]
    if any(v is None for v in first + second):
        return None
    return [x - y for x, y in zip(first, second, strict=True)]


def report_paired(rows: dict[str, list[dict]], names: list[str], seeds: list[int]) -> None:
    """Realloc − fixed per seed (same data, partition, init and client draws in both), and what
    Realloc saw: its dispersion statistic per task and its mean allocation before the first
    task finished."""
    realloc, fixed = list(rows)[:2]
    diff = paired(rows, realloc, fixed)
    if diff is not None:
        wins = sum(d < 0 for d in diff)
        print(
            f"\nRealloc − fixed, time to all targets, per seed {seeds}: "
            + ", ".join(f"{d:+.1f}" for d in diff)
            + f" s; mean {np.mean(diff):+.1f} ± {np.std(diff):.1f} s "
            f"(standard error {np.std(diff, ddof=1) / np.sqrt(len(diff)):.1f}), "
            f"Realloc earlier in {wins} of {len(diff)} seeds"
        )
    for m, name in enumerate(names):
        runs_r = [r["tasks"][m] for r in rows[realloc]]
        runs_f = [r["tasks"][m] for r in rows[fixed]]
        if all(v is not None for v in runs_r + runs_f):
            d = [x - y for x, y in zip(runs_r, runs_f, strict=True)]
            print(f"  {name}: Realloc − fixed {np.mean(d):+.1f} ± {np.std(d):.1f} s")
    disp = dispersion_means(rows[realloc])
    print(
        "dispersion statistic (mean over reallocations): "
        + ", ".join(f"{n} {v:.1f}" for n, v in zip(names, disp, strict=False))
    )
    for label in (realloc, fixed):
        alloc = mean_allocation(rows[label])
        print(
            f"{label}: mean R_m until the first task finished: "
            + ", ".join(f"{n} {v:.1f}" for n, v in zip(names, alloc, strict=True))
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="multitask")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--time-s", type=float, default=None, help="simulated horizon override")
    parser.add_argument("--first-k", type=int, default=6, help="Sync-ST: reports kept per task")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="figure directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    scenario, prefix = CONFIGS[args.config]

    rows: dict[str, list[dict]] = {}
    examples = {}
    started = time.perf_counter()
    for label, overrides in schemes(scenario, args.first_k).items():
        rows[label] = []
        for seed in args.seeds:
            merged = {"seed": seed, **overrides}
            if args.time_s is not None:
                merged["stop.time_s"] = args.time_s
            sim = Simulation(load_scenario(scenario, merged))
            result = sim.run()
            extra = sim.algorithm.summary_extra()
            rows[label].append(
                {
                    "tasks": [t["time_to_target_s"] for t in extra["tasks"]],
                    "names": [t["name"] for t in extra["tasks"]],
                    "all": extra["time_to_all_targets_s"],
                    "jobs": len(result.events),
                    "allocations": [
                        (a["time_s"], a["requests"]) for a in extra.get("allocations", [])
                    ],
                    "dispersion": list(getattr(sim.algorithm, "mean_dispersion", [])),
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
    if args.config == "hetero":
        report_paired(rows, names, args.seeds)

    args.out.mkdir(parents=True, exist_ok=True)
    fig = task_accuracy(examples)
    fig.suptitle(f"Per-task test accuracy, seed {args.seeds[0]} (dot: target reached)")
    if args.config == "hetero":  # Sync-ST takes ~4x longer: show where the FedAST runs differ
        fedast_end = max(
            float(r.evals["sim_time"].max()) for k, r in examples.items() if "FedAST" in k
        )
        for ax in fig.axes:
            ax.set_xlim(0, 1.6 * fedast_end)
        fig.suptitle(
            f"Per-task test accuracy, seed {args.seeds[0]} (dot: target reached; "
            "Sync-ST continues past the right edge)"
        )
    fig.savefig(args.out / f"{prefix}task_accuracy.png", dpi=110)
    fedast_ends = [float(r.events["sim_time"].max()) for k, r in examples.items() if "FedAST" in k]
    for label, stem in zip(examples, ("realloc", "fixed", "sync"), strict=True):
        fig = clients_per_task(examples[label], ax_title=f"Clients per task — {label}")
        if args.config == "hetero" and "FedAST" in label:  # same time axis for both FedAST runs
            fig.axes[0].set_xlim(0, max(fedast_ends))
        fig.savefig(args.out / f"{prefix}clients_{stem}.png", dpi=110)
    print(
        f"\nfigures: {args.out}/{prefix}task_accuracy.png, {prefix}clients_*.png", file=sys.stderr
    )


if __name__ == "__main__":
    main()
