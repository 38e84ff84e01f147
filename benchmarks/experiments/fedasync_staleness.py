"""FedAsync's staleness comparison (Xie et al. 2019; ALGORITHMS.md §3.2): constant, polynomial and
hinge staleness functions at low and high staleness, with and without the proximal term (issue 14).

The paper mixes every arriving model with weight ``α · s(k)`` and shows that at a small maximum
staleness (4) every variant tracks single-thread SGD, while at a large one (16) the constant
``s ≡ 1`` degrades and the polynomial and hinge functions stay robust; its clients minimise the
regularised objective ``f_i(x) + (ρ/2)‖x − w_τ‖²`` (``training.proximal_mu`` = ρ here).

Here staleness is not drawn: it arises from ``concurrency`` jobs in flight with exponential job
times (about ``concurrency − 1`` versions on average, measured and shown). Low staleness is
concurrency 4, high is concurrency 16; a reference with concurrency 1 (staleness 0, where the three
functions coincide) stands for the paper's single-thread SGD. α = 0.9, polynomial ``a = 0.5``,
hinge ``a = 10, b = 4`` (the paper's values). Every run stops after the same number of applied
updates (the paper's x-axis is the number of gradients). Per run: the accuracy at the end (mean
over the evaluations of the last 20 % of updates, which smooths the step-to-step noise of α = 0.9)
and the updates to a target accuracy (censored where never reached; benchmarks/experiments/
censored.py). Verdicts only where the 95 % interval of the paired difference excludes 0.

CPU preset (default): FedProx's Synthetic(0.5, 0.5) (at most 200 samples per client, natural
partition), logistic regression, 100 clients, 600 updates, target 0.5, ρ = 1 (FedProx's μ for its
Synthetic data):

    python benchmarks/experiments/fedasync_staleness.py --seeds 0 1 2 3 4 5 6 7 8 9 \
        --out benchmarks/results/fedasync_staleness.json

Paper preset (documented, not run here): CIFAR-10 from local files, a CNN, 100 clients (Dirichlet
0.5), ρ = 0.005 (the paper's value for its CNN), 20000 updates, target 0.5:

    python benchmarks/experiments/fedasync_staleness.py --scale paper --data-path ~/data/cifar10 \
        --device cuda --seeds 0 1 2 3 4 --out benchmarks/results/fedasync_staleness_paper.json

``--table FILE`` prints the tables of an existing results file (no runs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from censored import censored_of, compare, experiment_parser, preset, run_and_write
from fedbuff_vs_fedavgm import MODELS, data_section
from stats import interval, paired, verdict

ROOT = Path(__file__).resolve().parents[2]
ALPHA = 0.9
STALENESS: dict[str, dict[str, Any]] = {
    "constant": {"kind": "constant"},
    "polynomial": {"kind": "polynomial", "a": 0.5},
    "hinge": {"kind": "hinge", "a": 10.0, "b": 4.0},
}
LEVELS = {"low": 4, "high": 16}
"""Staleness level → concurrency (jobs in flight)."""
REFERENCE = "none"
TAIL = 0.2
"""Share of the last updates whose evaluations make the end accuracy."""

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "dataset": "synthetic_fedprox",
        "clients": 100,
        "training": {"local_steps": 10, "batch_size": 10, "lr": 0.3},
        "rho": 1.0,
        "updates": 600,
        "target": 0.5,
        "evals_per_run": 60,
    },
    "paper": {
        "dataset": "cifar10",
        "clients": 100,
        "training": {"local_steps": 50, "batch_size": 50, "lr": 0.1},
        "rho": 0.005,
        "updates": 20000,
        "target": 0.5,
        "evals_per_run": 100,
    },
}
"""Everything a preset fixes; ``--dataset``, ``--data-path``, ``--updates``, ``--target`` override."""


def scenario(p: dict[str, Any], staleness: str, concurrency: int, rho: float, seed: int) -> dict:
    """The whole scenario of one run (a mapping ``fedsim.run`` takes)."""
    # Arrivals come at about `concurrency` per second (exponential jobs of mean 1 s): evaluate
    # every updates / evals_per_run arrivals.
    every_s = p["updates"] / p["evals_per_run"] / concurrency
    return {
        "name": "fedasync_staleness",
        "seed": seed,
        "stop": {"time_s": None, "max_updates": p["updates"]},
        "data": data_section(p["dataset"], p.get("data_path")),
        "model": MODELS[p["dataset"]],
        "training": {**p["training"], "proximal_mu": rho},
        "clients": {"count": p["clients"], "compute": {"dist": "exponential", "mean_s": 1.0}},
        "algorithm": {
            "name": "fedasync",
            "concurrency": concurrency,
            "alpha": ALPHA,
            "staleness": STALENESS[staleness],
        },
        "eval": {"every_s": every_s},
    }


def one_run(task: tuple[dict[str, Any], str, str, float, int, str | None]) -> dict:
    """Run one staleness function × level × ρ × seed (in a worker process); return its row."""
    import torch

    import fedsim

    p, staleness, level, rho, seed, device = task
    concurrency = 1 if level == REFERENCE else LEVELS[level]
    torch.set_num_threads(1)
    result = fedsim.run(scenario(p, staleness, concurrency, rho, seed), save=False, device=device)
    s, evals = result.summary, result.evals
    tail = evals[evals["updates"] >= (1 - TAIL) * p["updates"]]
    hit = evals[evals["accuracy"] >= p["target"]]
    reached = len(hit) > 0
    row = {
        "staleness": staleness,
        "level": level,
        "concurrency": concurrency,
        "rho": rho,
        "seed": seed,
        "end_acc": float(tail["accuracy"].mean()),
        "final_acc": s["final_accuracy"],
        "reached": reached,
        "updates_to_target": int(hit["updates"].iloc[0]) if reached else p["updates"],
        "curve": [
            [int(u), round(float(a), 4)]
            for u, a in zip(evals["updates"], evals["accuracy"], strict=True)
        ],
        "mean_staleness": s["mean_staleness"],
        "sim_time_s": s["sim_time_s"],
        "wall_s": s["wall_time_s"],
        "device": s["device"],
    }
    print(f"{staleness} {level} ρ={rho:g} seed {seed}: end {row['end_acc']:.3f}, staleness "
          f"{row['mean_staleness']:.1f} ({row['wall_s']:.1f} s wall)", file=sys.stderr, flush=True)  # fmt: skip
    return row


def tasks(p: dict[str, Any], seeds: list[int], rhos: list[float], device: str | None) -> list:
    out = [
        (p, name, level, rho, seed, device)
        for rho in rhos
        for level in LEVELS
        for name in STALENESS
        for seed in seeds
    ]
    # Staleness 0: every s(0) = 1, so one function stands for all three.
    out += [(p, "constant", REFERENCE, rho, seed, device) for rho in rhos for seed in seeds]
    return out


# -- tables -------------------------------------------------------------------------------------------
def _rows(rows: list[dict], staleness: str, level: str, rho: float) -> list[dict]:
    return [
        r for r in rows if r["staleness"] == staleness and r["level"] == level and r["rho"] == rho
    ]


def _by(rows: list[dict], col: str) -> dict[int, float]:
    return {r["seed"]: r[col] for r in rows}


def _level(level: str) -> str:
    return "no staleness" if level == REFERENCE else f"{level} staleness"


def _label(staleness: str, level: str) -> str:
    return "no staleness" if level == REFERENCE else staleness


def table(results: dict) -> str:
    """The Markdown tables of a results file."""
    rows = results["rows"]
    rhos = list(dict.fromkeys(r["rho"] for r in rows))
    cells = list(dict.fromkeys((r["level"], r["staleness"]) for r in rows))
    cells.sort(key=lambda c: (c[0] != REFERENCE, list(LEVELS).index(c[0]) if c[0] in LEVELS else 0))
    n = len(results["seeds"])
    head = " | ".join(
        f"end accuracy, ρ = {rho:g} | updates to {results['target']:g}, ρ = {rho:g}" for rho in rhos
    )
    lines = [
        f"{results['updates']} applied updates per run, α = {results['alpha']:g}; mean ± 95 % "
        f"interval over {n} seeds. End accuracy: mean of the evaluations over the last "
        f"{100 * TAIL:.0f} % of updates. '≥ x (k/{n} reached)': seeds that never reached the "
        "target count at the last update (a lower bound).",
        "",
        f"| staleness (concurrency) | mean staleness | s(k) | {head} |",
        "|---|---|---|" + "---|---|" * len(rhos),
    ]
    for level, name in cells:
        subs = [_rows(rows, name, level, rho) for rho in rhos]
        conc = subs[0][0]["concurrency"]
        stal = sum(r["mean_staleness"] for r in subs[0]) / len(subs[0])
        parts = []
        for sub in subs:
            parts += [
                interval(list(_by(sub, "end_acc").values())).format(".3f"),
                censored_of(sub, "updates_to_target").format(".0f"),
            ]
        lines.append(
            f"| {level} ({conc}) | {stal:.1f} | {_label(name, level)} | " + " | ".join(parts) + " |"
        )
    lines += [
        "",
        "Paired differences of end accuracy (A − B, same seeds; higher is better), 95 % interval:",
        "",
        "| comparison | A | B | A − B | verdict |",
        "|---|---|---|---|---|",
    ]
    for rho in rhos:
        for level in LEVELS:
            for a, b in (
                ("polynomial", "constant"),
                ("hinge", "constant"),
                ("hinge", "polynomial"),
            ):
                d = paired(
                    _by(_rows(rows, a, level, rho), "end_acc"),
                    _by(_rows(rows, b, level, rho), "end_acc"),
                )
                lines.append(
                    f"| {level} staleness, ρ = {rho:g} | {a} | {b} | {d.format('+.3f')} "
                    f"| {verdict(a, b, d)} |"
                )
        for name in STALENESS:
            hi = _by(_rows(rows, name, "high", rho), "end_acc")
            lo = _by(_rows(rows, name, "low", rho), "end_acc")
            d = paired(hi, lo)
            lines.append(
                f"| high − low staleness, ρ = {rho:g} | {name}, high | {name}, low "
                f"| {d.format('+.3f')} | {verdict(f'{name}, high', f'{name}, low', d)} |"
            )
    if len(rhos) > 1:
        base, prox = rhos[0], rhos[-1]
        for level, name in cells:
            d = paired(
                _by(_rows(rows, name, level, prox), "end_acc"),
                _by(_rows(rows, name, level, base), "end_acc"),
            )
            a, b = f"ρ = {prox:g}", f"ρ = {base:g}"
            lines.append(
                f"| proximal term, {_level(level)} | {_label(name, level)}, {a} "
                f"| {_label(name, level)}, {b} | {d.format('+.3f')} | {verdict(a, b, d)} |"
            )
    lines += [
        "",
        "Updates to the target, paired (A − B; lower is better; censored seeds at the last update):",
        "",
        "| staleness, ρ | A | B | A − B | verdict |",
        "|---|---|---|---|---|",
    ]
    for rho in rhos:
        for level in LEVELS:
            for a, b in (("polynomial", "constant"), ("hinge", "constant")):
                ca = censored_of(_rows(rows, a, level, rho), "updates_to_target")
                cb = censored_of(_rows(rows, b, level, rho), "updates_to_target")
                diff, said = compare(a, b, ca, cb)
                lines.append(f"| {level}, ρ = {rho:g} | {a} | {b} | {diff} | {said} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    out = ROOT / "benchmarks" / "results" / "fedasync_staleness.json"
    parser = experiment_parser(__doc__, PRESETS, MODELS, out)
    parser.add_argument(
        "--rho", type=float, nargs="+", help="proximal ρ values (default: 0 and the preset's)"
    )
    parser.add_argument("--updates", type=int, help="override the preset's updates per run")
    parser.add_argument("--target", type=float, help="override the preset's target accuracy")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text(encoding="utf-8"))))
        return
    p = preset(PRESETS, args, updates=args.updates, target=args.target)
    rhos = args.rho if args.rho is not None else [0.0, p["rho"]]
    run_and_write(
        one_run,
        tasks(p, args.seeds, rhos, args.device),
        args,
        argv,
        table,
        preset=p,
        alpha=ALPHA,
        updates=p["updates"],
        target=p["target"],
    )


if __name__ == "__main__":
    main()
