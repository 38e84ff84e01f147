"""DRPGA's low-rate schedules against FedAvg: bytes to a target accuracy and over the run (issue 14).

The seed (arXiv 2412.19987, ALGORITHMS.md §3.9) claims up to 96 % less communication at no
accuracy loss. Its rate walk is inferred (``rate_schedule: walk``, over 5..100 %); fedsim's
``rate_schedule: beta`` draws each round's rate from a Beta(a, b) floored at ``rates[0]``, biased
toward low rates, and ``rates: [p]`` fixes the rate. Each row runs ``scenarios/drpga.yaml``
(D = 1 round of delay) with one of these schedules or FedAvg with the full cohort, once per seed.

Per run: the final accuracy, the client bytes (up + down) recorded by the first evaluation at or
above the target, and the bytes over the whole run. A run that never reaches the target is
censored (benchmarks/experiments/censored.py): its bytes to target are the run's bytes, a lower
bound, marked as such. Paired against FedAvg on the same seeds: Δ accuracy (points) and the
relative bytes ``scheme / FedAvg − 1``, mean ± 95 % interval. The goal "≥ 80 % fewer bytes to
target at ≤ 1 point of accuracy" is *met* where the bytes interval lies wholly below −80 %, the
scheme reached the target on every seed and the Δ accuracy interval lies above −1 point; *met on
means only* where only the means do; otherwise *not met*.

CPU preset (default): ``scenarios/drpga.yaml`` as it is (digits, 20 clients, 1 s latency,
1 Mbit/s), target 0.9, 300 simulated seconds (≈ 5 s wall per run):

    python benchmarks/experiments/drpga_frontier.py --seeds 0 1 2 3 4 5 6 7 8 9 --jobs 2 \
        --out benchmarks/results/drpga_frontier.json

Paper preset (documented, not run here): CIFAR-10 from local files, a CNN, the same 20 clients and
network, target 0.6, 3000 simulated seconds:

    python benchmarks/experiments/drpga_frontier.py --scale paper --data-path ~/data/cifar10 \
        --device cuda --seeds 0 1 2 3 4 --out benchmarks/results/drpga_frontier_paper.json

``--table FILE`` prints the tables of an existing results file (no runs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from censored import censored_of, experiment_parser, preset, run_and_write
from drpga_vs_fedavg import SCENARIO, cumulative_bytes, first_reach
from stats import Interval, interval, paired, relative

ROOT = Path(__file__).resolve().parents[2]
BASELINE = "FedAvg"
BYTES_GOAL = -0.80
"""Relative bytes to target the goal asks for (80 % fewer than FedAvg)."""
ACCURACY_BUDGET = -1.0
"""Accuracy change (points) the goal allows."""

SCHEMES: dict[str, dict[str, Any]] = {
    BASELINE: {"name": "fedavg", "cohort_size": 20},
    "DRPGA walk": {"name": "drpga"},
    "DRPGA beta(1,9)": {  # floored at the default rates[0] = 0.05
        "name": "drpga",
        "rate_schedule": "beta",
        "beta_a": 1,
        "beta_b": 9,
    },
    "DRPGA beta(1,19)": {  # floored at 0.01
        "name": "drpga",
        "rate_schedule": "beta",
        "beta_a": 1,
        "beta_b": 19,
        "rates": [0.01, 1.0],
    },
    "DRPGA fixed 0.05": {"name": "drpga", "rates": [0.05]},
}
"""Row name → the ``algorithm`` section it sets (the rest of scenarios/drpga.yaml is shared)."""

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"dataset": "digits", "target": 0.9, "time_s": 300.0, "eval_every_s": 10.0},
    "paper": {"dataset": "cifar10", "target": 0.6, "time_s": 3000.0, "eval_every_s": 50.0},
}
"""Everything a preset fixes; ``--dataset``, ``--data-path``, ``--time-s``, ``--target`` override."""

MODELS: dict[str, dict[str, Any]] = {
    "digits": {"kind": "mlp", "hidden": [64]},
    "mnist1d": {"kind": "mlp", "hidden": [64]},
    "mnist_idx": {"kind": "cnn"},
    "cifar10": {"kind": "cnn", "channels": [32, 64], "hidden": [128]},
}
"""The model each dataset is trained with."""


def overrides(p: dict[str, Any], scheme: str, seed: int) -> dict[str, Any]:
    """The dotted-path overrides of scenarios/drpga.yaml for one run."""
    data: dict[str, Any] = {"data.dataset": p["dataset"]}
    if p.get("data_path") is not None:
        data["data.path"] = p["data_path"]
    return {
        "seed": seed,
        "stop.time_s": p["time_s"],
        "eval.every_s": p["eval_every_s"],
        **data,
        "model": MODELS[p["dataset"]],
        "algorithm": SCHEMES[scheme],
    }


def one_run(task: tuple[dict[str, Any], str, int, str | None]) -> dict:
    """Run one scheme × seed (in a worker process); return its row."""
    import torch

    import fedsim

    p, scheme, seed, device = task
    torch.set_num_threads(1)
    result = fedsim.run(SCENARIO, overrides(p, scheme, seed), save=False, device=device)
    times = result.evals["sim_time"].to_numpy()
    accuracy = result.evals["accuracy"].to_numpy()
    mb_by_eval = cumulative_bytes(result, times) / 1e6
    b = result.summary["bytes"]
    mb_total = (b["client_up"] + b["client_down"]) / 1e6
    mb_target = first_reach(mb_by_eval, accuracy, p["target"])
    reached = mb_target == mb_target  # NaN: never reached
    row = {
        "scheme": scheme,
        "seed": seed,
        "reached": reached,
        "mb_to_target": mb_target if reached else mb_total,
        "mb_total": mb_total,
        "final_acc": result.summary["final_accuracy"],
        "rounds": result.summary["versions"],
        "wall_s": result.summary["wall_time_s"],
        "device": result.summary["device"],
    }
    print(f"{scheme} seed {seed}: {'reached' if reached else 'censored'}, "
          f"{row['mb_to_target']:.2f} MB to target, {mb_total:.1f} MB, "
          f"acc {row['final_acc']:.3f} ({row['wall_s']:.1f} s wall)", file=sys.stderr, flush=True)  # fmt: skip
    return row


# -- tables -------------------------------------------------------------------------------------------
def _by_seed(rows: list[dict], scheme: str, col: str) -> dict[int, float]:
    return {r["seed"]: float(r[col]) for r in rows if r["scheme"] == scheme}


def _relative(rows: list[dict], scheme: str, col: str) -> Interval:
    a, b = _by_seed(rows, scheme, col), _by_seed(rows, BASELINE, col)
    seeds = sorted(b)
    return relative([a[s] for s in seeds], [b[s] for s in seeds])


def _percent(i: Interval) -> str:
    return f"{Interval(100 * i.mean, 100 * i.half, i.n).format('+.0f')} %"


def goal(bytes_rel: Interval, accuracy_points: Interval, all_reached: bool) -> str:
    """Whether ≥ 80 % fewer bytes to target at ≤ 1 point of accuracy is met by the intervals."""
    if all_reached and bytes_rel.high < BYTES_GOAL and accuracy_points.low >= ACCURACY_BUDGET:
        return "met"
    if bytes_rel.mean <= BYTES_GOAL and accuracy_points.mean >= ACCURACY_BUDGET:
        return "met on means only"
    return "not met"


def table(results: dict) -> str:
    """The Markdown tables of a results file (per scheme, then paired against FedAvg)."""
    rows = results["rows"]
    names = list(dict.fromkeys(r["scheme"] for r in rows))
    n = len(results["seeds"])
    target = results["target"]
    lines = [
        f"Target accuracy {target:g}, horizon {results['time_s']:g} s; mean ± 95 % interval over "
        f"{n} seeds. '≥ x (k/{n} reached)': the seeds that never reached the target count with "
        "their bytes over the run (a lower bound). MB: client bytes, up + down.",
        "",
        f"| scheme | final accuracy | MB to {target:g} | MB over the run | rounds |",
        "|---|---|---|---|---|",
    ]
    for scheme in names:
        sub = [r for r in rows if r["scheme"] == scheme]
        lines.append(
            f"| {scheme} | {interval([r['final_acc'] for r in sub]).format('.3f')} "
            f"| {censored_of(sub, 'mb_to_target').format('.2f')} "
            f"| {interval([r['mb_total'] for r in sub]).format('.1f')} "
            f"| {sum(r['rounds'] for r in sub) / len(sub):.0f} |"
        )
    lines += [
        "",
        f"Paired against {BASELINE} (same seeds): Δ accuracy in points, bytes as scheme ÷ "
        f"{BASELINE} − 1; goal: ≥ 80 % fewer bytes to {target:g} at ≤ 1 point of accuracy.",
        "",
        f"| scheme | Δ accuracy (points) | bytes to {target:g} | bytes over the run | goal |",
        "|---|---|---|---|---|",
    ]
    for scheme in names:
        if scheme == BASELINE:
            continue
        acc = _by_seed(rows, scheme, "final_acc")
        base = _by_seed(rows, BASELINE, "final_acc")
        points = paired({s: 100 * v for s, v in acc.items()}, {s: 100 * v for s, v in base.items()})
        to_target = _relative(rows, scheme, "mb_to_target")
        sub = [r for r in rows if r["scheme"] == scheme]
        censored = any(not r["reached"] for r in rows if r["scheme"] in (scheme, BASELINE))
        lines.append(
            f"| {scheme} | {points.format('+.1f')} "
            f"| {_percent(to_target)}{' (censored)' if censored else ''} "
            f"| {_percent(_relative(rows, scheme, 'mb_total'))} "
            f"| {goal(to_target, points, all(r['reached'] for r in sub))} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    out = ROOT / "benchmarks" / "results" / "drpga_frontier.json"
    parser = experiment_parser(__doc__, PRESETS, MODELS, out)
    parser.add_argument("--schemes", nargs="+", help="a subset of the rows (default: all)")
    parser.add_argument("--target", type=float, help="override the preset's target accuracy")
    parser.add_argument("--time-s", type=float, help="override the preset's horizon")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text(encoding="utf-8"))))
        return
    p = preset(PRESETS, args, target=args.target, time_s=args.time_s)
    names = args.schemes or list(SCHEMES)
    unknown = sorted(set(names) - set(SCHEMES))
    if unknown:
        parser.error(f"unknown schemes {unknown}; known: {list(SCHEMES)}")
    if BASELINE not in names:
        names = [BASELINE, *names]  # every comparison is against it
    tasks = [(p, name, seed, args.device) for name in names for seed in args.seeds]
    run_and_write(
        one_run, tasks, args, argv, table, preset=p, target=p["target"], time_s=p["time_s"]
    )


if __name__ == "__main__":
    main()
