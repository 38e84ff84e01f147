"""FedBuff against FedAvgM, plain FedAvg and FedAvg with a deadline and over-selection, under
0 / 10 / 30 % stragglers: simulated time and client trips to a target accuracy (issue 14).

The FedBuff paper (Nguyen et al. 2022; ALGORITHMS.md §3.3) compares buffered asynchronous
aggregation with FedAvgM, synchronous FedAvg with server momentum, at the same concurrency. Here
every scheme keeps ``concurrency`` clients training at once: FedAvg-style rounds of ``concurrency``
clients (FedAvg; FedAvgM = ``server_optimizer: {name: momentum, momentum: 0.9}``; FedAvg with
``deadline_s`` at 3× the mean job time, ``over_selection: 0.3``, ``min_fraction: 0.5``, where
stragglers past the deadline are late), and FedBuff with ``concurrency`` in flight and a server
step every ``buffer_size`` arrivals (staleness weight 1/√(1+k)). A share of the clients
(``clients.stragglers.fraction`` 0, 0.1, 0.3) is 10× slower for the whole run. Each run stops at
the target accuracy (``stop.target_accuracy``, checked every ``eval.every_s``) or at the horizon.

Per run: the simulated time to the target and the client trips to it (uploads the server received:
applied, buffered, late or rejected; cancelled jobs are counted apart). A run that never reaches the
target is censored (benchmarks/experiments/censored.py): its figures are lower bounds, marked as such,
and a verdict is given only where the interval of the paired difference excludes 0 and the
winner reached the target on every seed. No hyper-parameter was tuned for any scheme (server
learning rate 1 everywhere, momentum 0.9 as in the FLSim FedBuff example).

CPU preset (default): FedProx's Synthetic(0.5, 0.5) (``data.dataset: synthetic_fedprox``, at most 200
samples per client, natural partition), logistic regression, 100 clients, 20 at once, buffer 10,
exponential job times (mean 1 s), target 0.6, horizon 1000 s:

    python benchmarks/experiments/fedbuff_vs_fedavgm.py --seeds 0 1 2 3 4 5 6 7 8 9 \
        --out benchmarks/results/fedbuff_vs_fedavgm.json

Paper preset (documented, not run here): CIFAR-10 from local files, a CNN, 1000 clients (Dirichlet
0.5), 100 at once, buffer 10, Pareto job times (shape 2.5, scale 3 s), target 0.5, horizon 20000 s:

    python benchmarks/experiments/fedbuff_vs_fedavgm.py --scale paper --data-path ~/data/cifar10 \
        --device cuda --seeds 0 1 2 3 4 --out benchmarks/results/fedbuff_vs_fedavgm_paper.json

``--table FILE`` prints the tables of an existing results file (no runs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from censored import Censored, censored_of, compare, experiment_parser, preset, run_and_write
from stats import interval

ROOT = Path(__file__).resolve().parents[2]
STRAGGLER_LEVELS = (0.0, 0.1, 0.3)
SLOWDOWN = 10.0

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "dataset": "synthetic_fedprox",
        "clients": 100,
        "concurrency": 20,
        "buffer_size": 10,
        "compute": {"dist": "exponential", "mean_s": 1.0},
        "mean_job_s": 1.0,
        "training": {"local_steps": 10, "batch_size": 10, "lr": 0.3},
        "target": 0.6,
        "time_s": 1000.0,
        "eval_every_s": 2.0,
    },
    "paper": {
        "dataset": "cifar10",
        "clients": 1000,
        "concurrency": 100,
        "buffer_size": 10,
        "compute": {"dist": "pareto", "shape": 2.5, "scale_s": 3.0},
        "mean_job_s": 5.0,  # Pareto(2.5, 3 s): 2.5 · 3 / 1.5
        "training": {"local_steps": 50, "batch_size": 32, "lr": 0.05},
        "target": 0.5,
        "time_s": 20000.0,
        "eval_every_s": 50.0,
    },
}
"""Everything a preset fixes; ``--dataset``, ``--data-path``, ``--time-s``, ``--target`` override."""

MODELS: dict[str, dict[str, Any]] = {
    "synthetic_fedprox": {"kind": "logreg"},
    "synthetic_classification": {"kind": "logreg"},
    "digits": {"kind": "mlp", "hidden": [64]},
    "mnist1d": {"kind": "mlp", "hidden": [64]},
    "mnist_idx": {"kind": "cnn"},
    "fashion_mnist_idx": {"kind": "cnn"},
    "cifar10": {"kind": "cnn", "channels": [32, 64], "hidden": [128]},
}
"""The model each dataset is trained with."""


def schemes(p: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Scheme name → the scenario sections it sets (the rest is shared)."""
    c = p["concurrency"]
    fedavg = {"name": "fedavg", "cohort_size": c}
    return {
        "FedAvg": {"algorithm": fedavg},
        "FedAvg + deadline": {
            "algorithm": {
                **fedavg,
                "deadline_s": 3 * p["mean_job_s"],
                "over_selection": 0.3,
                "min_fraction": 0.5,
            }
        },
        "FedAvgM": {
            "algorithm": fedavg,
            "server_optimizer": {"name": "momentum", "momentum": 0.9},
        },
        "FedBuff": {
            "algorithm": {
                "name": "fedbuff",
                "concurrency": c,
                "buffer_size": p["buffer_size"],
                "staleness": {"kind": "polynomial", "a": 0.5},
            }
        },
    }


COMPARISONS = [
    ("FedBuff", "FedAvgM"),
    ("FedBuff", "FedAvg"),
    ("FedBuff", "FedAvg + deadline"),
    ("FedAvgM", "FedAvg"),
    ("FedAvg + deadline", "FedAvg"),
]


def data_section(dataset: str, data_path: str | None) -> dict[str, Any]:
    if dataset == "synthetic_fedprox":
        return {
            "dataset": dataset,
            "partition": {"kind": "natural"},
            "synthetic_fedprox": {"alpha": 0.5, "beta": 0.5, "max_samples": 200},
        }
    section: dict[str, Any] = {"dataset": dataset, "partition": {"kind": "dirichlet", "alpha": 0.5}}
    if data_path is not None:
        section["path"] = data_path
    return section


def scenario(p: dict[str, Any], scheme: str, stragglers: float, seed: int) -> dict[str, Any]:
    """The whole scenario of one run (a mapping ``fedsim.run`` takes)."""
    return {
        "name": "fedbuff_vs_fedavgm",
        "seed": seed,
        "stop": {"time_s": p["time_s"], "target_accuracy": p["target"]},
        "data": data_section(p["dataset"], p.get("data_path")),
        "model": MODELS[p["dataset"]],
        "training": p["training"],
        "clients": {
            "count": p["clients"],
            "compute": p["compute"],
            "stragglers": {"fraction": stragglers, "slowdown": SLOWDOWN},
        },
        "eval": {"every_s": p["eval_every_s"]},
        **schemes(p)[scheme],
    }


UPLOADS = ("applied", "buffered", "late", "rejected")
"""Statuses of a job whose update reached the server: a client trip."""


def one_run(task: tuple[dict[str, Any], str, float, int, str | None]) -> dict:
    """Run one scheme × straggler share × seed (in a worker process); return its row."""
    import torch

    import fedsim

    p, scheme, stragglers, seed, device = task
    torch.set_num_threads(1)
    result = fedsim.run(scenario(p, scheme, stragglers, seed), save=False, device=device)
    s = result.summary
    counts = s["status_counts"]
    reached = s["time_to_target_s"] is not None
    row = {
        "scheme": scheme,
        "stragglers": stragglers,
        "seed": seed,
        "reached": reached,
        "time_to_target_s": s["time_to_target_s"] if reached else s["sim_time_s"],
        "trips": sum(counts.get(k, 0) for k in UPLOADS),
        "late": counts.get("late", 0),
        "cancelled": counts.get("cancelled", 0),
        "server_steps": s["versions"],
        "final_acc": s["final_accuracy"],
        "sim_time_s": s["sim_time_s"],
        "wall_s": s["wall_time_s"],
        "device": s["device"],
    }
    print(f"{scheme} stragglers {stragglers:g} seed {seed}: "
          f"{'reached' if reached else 'censored'} at {row['time_to_target_s']:.0f} s, "
          f"{row['trips']} trips ({row['wall_s']:.1f} s wall)", file=sys.stderr, flush=True)  # fmt: skip
    return row


# -- tables -------------------------------------------------------------------------------------------
def _rows(rows: list[dict], scheme: str, level: float) -> list[dict]:
    return [r for r in rows if r["scheme"] == scheme and r["stragglers"] == level]


def _mean(rows: list[dict], col: str) -> float:
    return sum(r[col] for r in rows) / len(rows)


def _speedup(a: Censored, b: Censored) -> str:
    """B's time over A's, per seed (how many times faster A is); a lower bound where B is censored."""
    if a.censored:
        return "—"
    ratio = interval([b.values[k] / a.values[k] for k in sorted(a.values)])
    return ("≥ " if b.censored else "") + ratio.format(".2f") + "×"


def table(results: dict) -> str:
    """The Markdown tables of a results file (per scheme, then paired comparisons)."""
    rows = results["rows"]
    names = list(dict.fromkeys(r["scheme"] for r in rows))
    levels = list(dict.fromkeys(r["stragglers"] for r in rows))
    n = len(results["seeds"])
    lines = [
        f"Target accuracy {results['target']:g}, horizon {results['time_s']:g} s; mean ± 95 % "
        f"interval over {n} seeds. '≥ x (k/{n} reached)': the seeds that never reached the "
        "target count at the horizon (a lower bound). Trips: uploads the server received.",
        "",
        "| stragglers | scheme | time to target (s) | trips to target | server steps "
        "| cancelled jobs | final accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for level in levels:
        for scheme in names:
            sub = _rows(rows, scheme, level)
            lines.append(
                f"| {100 * level:.0f} % | {scheme} "
                f"| {censored_of(sub, 'time_to_target_s').format('.0f')} "
                f"| {censored_of(sub, 'trips').format('.0f')} "
                f"| {_mean(sub, 'server_steps'):.0f} | {_mean(sub, 'cancelled'):.0f} "
                f"| {_mean(sub, 'final_acc'):.3f} |"
            )
    lines += [
        "",
        "Paired differences A − B (same seeds; lower is better), 95 % interval, and verdicts:",
        "",
        "| stragglers | A | B | time: A − B (s) | verdict | time: B ÷ A | trips: A − B | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level in levels:
        for a, b in COMPARISONS:
            if a not in names or b not in names:
                continue
            cells = []
            for col in ("time_to_target_s", "trips"):
                ca = censored_of(_rows(rows, a, level), col)
                cb = censored_of(_rows(rows, b, level), col)
                cells += compare(a, b, ca, cb)
                if col == "time_to_target_s":
                    cells.append(_speedup(ca, cb))
            lines.append(f"| {100 * level:.0f} % | {a} | {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    out = ROOT / "benchmarks" / "results" / "fedbuff_vs_fedavgm.json"
    parser = experiment_parser(__doc__, PRESETS, MODELS, out)
    parser.add_argument("--stragglers", type=float, nargs="+", default=list(STRAGGLER_LEVELS))
    parser.add_argument("--schemes", nargs="+", help="a subset of the schemes (default: all)")
    parser.add_argument("--target", type=float, help="override the preset's target accuracy")
    parser.add_argument("--time-s", type=float, help="override the preset's horizon")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text(encoding="utf-8"))))
        return
    p = preset(PRESETS, args, target=args.target, time_s=args.time_s)
    names = args.schemes or list(schemes(p))
    unknown = sorted(set(names) - set(schemes(p)))
    if unknown:
        parser.error(f"unknown schemes {unknown}; known: {list(schemes(p))}")
    tasks = [
        (p, name, level, seed, args.device)
        for level in args.stragglers
        for name in names
        for seed in args.seeds
    ]
    run_and_write(
        one_run, tasks, args, argv, table, preset=p, target=p["target"], time_s=p["time_s"]
    )


if __name__ == "__main__":
    main()
