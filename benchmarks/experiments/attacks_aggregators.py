"""Attacks × aggregators (± NNM), 20 % Byzantine clients, Dirichlet 0.3, FedAvg and FedBuff.

Issue 13's robustness grid.

Every cell is one attack (none, sign_flip, alie, ipm, mimic, gaussian, and optimal_alie /
optimal_ipm, which search their factor against the aggregation in use) against one aggregator
(mean, coordinate_median, trimmed_mean, krum, geometric_median, centered_clipping, caf, monna,
meamed), with no pre-aggregator or with nearest-neighbour mixing (``aggregator.pre: [{name: nnm}]``),
run for each seed under FedAvg and under FedBuff. "none" runs without a ``byzantine`` section (all
clients honest); every other attack makes ``byzantine.fraction`` 0.2 of the clients attackers,
drawn per seed. The rules that take ``f`` (krum, caf, monna, meamed, NNM; mda, smea) are told
``f = 0.2 · n``, n the rows of one aggregation (the FedAvg cohort, the FedBuff buffer); the
trimmed mean trims the same share per side. Attack keys are the defaults of docs/robustness.md
except sign_flip's ``scale: 4`` (as in scenarios/byzantine_*.yaml). SMEA is left out: its brute-
force search over ``C(n, f)`` subsets made a run 5 to 7 times dearer than the others on this box,
and MDA's (same search, cheaper per subset) about twice as dear under FedBuff, so the CPU grid
would not have finished in 15 minutes on 2 shared cores; ``--aggregators mda smea`` runs them.

Per run: the final test accuracy (at the horizon) and the accuracy at a fixed simulated time (the
last evaluation at or before ``at_s``, half the horizon). Every figure is a mean over seeds ± the
half-width of its 95 % Student-t interval (benchmarks/experiments/stats.py); a verdict "A beats B"
is given only where the interval of the paired difference (same seeds: same data split, same
attackers, same client speeds) excludes 0, otherwise "no difference seen".

CPU preset (default): scikit-learn's digits, MLP [32], 20 clients (4 attackers), exponential job
times (mean 1 s), 5 local SGD steps (batch 32, lr 0.2), an evaluation every 6 simulated s; FedAvg
with all 20 clients every round for 60 simulated seconds (about 17 rounds), FedBuff with 20 in
flight and a buffer of 20 for 24 simulated seconds (about 25 server steps, 480 local trainings,
more than FedAvg's 340); centred clipping with τ = 1 (about twice an honest update's norm after the
first round). A run takes 1 to 4 s of wall time on one core:

    python benchmarks/experiments/attacks_aggregators.py --seeds 0 1 2 3 4 --jobs 2 \
        --out benchmarks/results/attacks_aggregators.json

Paper preset (documented, not run here): MNIST from local IDX files, the default CNN, 50 clients
(10 attackers), 20 local steps (lr 0.05), FedAvg for 1000 s and FedBuff (50 in flight, buffer 50)
for 400 s, the same aggregators (MDA and SMEA would search C(50, 10) ≈ 10¹⁰ subsets; fedsim refuses
that beyond ``max_subsets``), τ of centred clipping not recalibrated for the CNN:

    python benchmarks/experiments/attacks_aggregators.py --scale paper \
        --data-path ~/data/mnist --device cuda --seeds 0 1 2 3 4 \
        --out benchmarks/results/attacks_aggregators_paper.json

``--table FILE`` prints the tables of an existing results file (no runs).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from censored import experiment_parser, preset, run_and_write
from stats import NO_DIFFERENCE, interval, paired, verdict

ROOT = Path(__file__).resolve().parents[2]
BYZANTINE_FRACTION = 0.2
DIRICHLET_ALPHA = 0.3

AGGREGATORS = ("mean", "coordinate_median", "trimmed_mean", "krum", "geometric_median",
               "centered_clipping", "caf", "monna", "meamed")  # fmt: skip
"""The grid's aggregators (``mda`` and ``smea`` also run, with ``--aggregators``)."""

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "dataset": "digits",
        "clients": 20,
        "compute": {"dist": "exponential", "mean_s": 1.0},
        "training": {"local_steps": 5, "batch_size": 32, "lr": 0.2},
        "rows": 20,
        "time_s": {"FedAvg": 60.0, "FedBuff": 24.0},
        "eval_every_s": 6.0,
        "cc_tau": 1.0,
        "aggregators": AGGREGATORS,
    },
    "paper": {
        "dataset": "mnist_idx",
        "clients": 50,
        "compute": {"dist": "exponential", "mean_s": 1.0},
        "training": {"local_steps": 20, "batch_size": 32, "lr": 0.05},
        "rows": 50,
        "time_s": {"FedAvg": 1000.0, "FedBuff": 400.0},
        "eval_every_s": 50.0,  # 1000 / 2 and 400 / 2 are multiples: at_s is an evaluation
        "cc_tau": 1.0,
        "aggregators": AGGREGATORS,
    },
}
"""Everything a preset fixes; ``--dataset`` and ``--data-path`` override. ``rows``: the updates of
one aggregation (FedAvg's cohort, FedBuff's concurrency and buffer)."""

MODELS: dict[str, dict[str, Any]] = {
    "digits": {"kind": "mlp", "hidden": [32]},
    "mnist1d": {"kind": "mlp", "hidden": [32]},
    "mnist_idx": {"kind": "cnn"},
    "fashion_mnist_idx": {"kind": "cnn"},
    "cifar10": {"kind": "cnn", "channels": [32, 64], "hidden": [128]},
}
"""The model each dataset is trained with (``--dataset`` picks one of these)."""

ALGORITHMS = ("FedAvg", "FedBuff")
ATTACKS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "sign_flip": {"name": "sign_flip", "scale": 4.0},
    "alie": {"name": "alie"},
    "ipm": {"name": "ipm"},
    "mimic": {"name": "mimic"},
    "gaussian": {"name": "gaussian"},
    "optimal_alie": {"name": "optimal_alie"},
    "optimal_ipm": {"name": "optimal_ipm"},
}
"""Attack name → the ``byzantine.attack`` section (None: no Byzantine clients)."""
DEFAULT_ATTACKS = tuple(ATTACKS)
"""All of them: the optimal variants cost ``evals`` (32) aggregations per attacked set, which at
n = 20 made their runs about as dear as the others."""
PRES = ("none", "nnm")
BASELINE = "mean"


def f_of(p: dict[str, Any]) -> int:
    """The Byzantine rows an aggregation is assumed to hold: 20 % of its rows."""
    return round(BYZANTINE_FRACTION * p["rows"])


def aggregator_section(p: dict[str, Any], name: str, pre: str) -> dict[str, Any]:
    """The scenario's ``aggregator`` section of one aggregator and pre-aggregator."""
    f = f_of(p)
    keys: dict[str, Any] = {
        "trimmed_mean": {"trim_fraction": BYZANTINE_FRACTION},
        "centered_clipping": {"tau": p["cc_tau"]},
    }.get(name, {})
    if name in ("krum", "mda", "smea", "caf", "monna", "meamed"):
        keys = {"f": f}
    section = {"name": name, **keys}
    if pre == "nnm":
        section["pre"] = [{"name": "nnm", "f": f}]
    return section


def scenario(
    p: dict[str, Any], algorithm: str, attack: str, aggregator: str, pre: str, seed: int
) -> dict[str, Any]:
    """The whole scenario of one run (a mapping ``fedsim.run`` takes)."""
    n = p["rows"]
    algo = (
        {"name": "fedavg", "cohort_size": n}
        if algorithm == "FedAvg"
        else {"name": "fedbuff", "concurrency": n, "buffer_size": n}
    )
    data: dict[str, Any] = {
        "dataset": p["dataset"],
        "partition": {"kind": "dirichlet", "alpha": DIRICHLET_ALPHA},
    }
    if p.get("data_path") is not None:
        data["path"] = p["data_path"]
    s: dict[str, Any] = {
        "name": "attacks_aggregators",
        "seed": seed,
        "stop": {"time_s": p["time_s"][algorithm]},
        "data": data,
        "model": MODELS[p["dataset"]],
        "training": p["training"],
        "clients": {"count": p["clients"], "compute": p["compute"]},
        "algorithm": algo,
        "aggregator": aggregator_section(p, aggregator, pre),
        "eval": {"every_s": p["eval_every_s"]},
    }
    if ATTACKS[attack] is not None:
        s["byzantine"] = {"fraction": BYZANTINE_FRACTION, "attack": ATTACKS[attack]}
    return s


def at_s(p: dict[str, Any], algorithm: str) -> float:
    """The fixed simulated time of the second accuracy: half the horizon."""
    return p["time_s"][algorithm] / 2


def set_counts(events: Any, n: int, f: int) -> tuple[int, int, int]:
    """``(aggregations, their Byzantine rows, aggregations with more than f Byzantine rows)``
    from a run's event log: the
    accepted updates (``applied`` / ``buffered``) that arrived at one model version form one set;
    a set of fewer than ``n`` rows (the buffer still filling at the horizon) is not counted."""
    used = events[events["status"].isin(("applied", "buffered"))]
    per_set = used.groupby("arrival_version")["byzantine"].agg(["size", "sum"])
    full = per_set[per_set["size"] == n]
    return len(full), int(full["sum"].sum()), int((full["sum"] > f).sum())


def one_run(task: tuple[dict[str, Any], str, str, str, str, int, str | None]) -> dict:
    """Run one algorithm × attack × aggregator × pre × seed (in a worker process); return its row."""
    import torch

    import fedsim

    p, algorithm, attack, aggregator, pre, seed, device = task
    torch.set_num_threads(1)
    started = time.perf_counter()
    result = fedsim.run(
        scenario(p, algorithm, attack, aggregator, pre, seed), save=False, device=device
    )
    s = result.summary
    evals = result.evals
    early = evals[evals["sim_time"] <= at_s(p, algorithm) + 1e-9]
    sets, byzantine_rows, over_f = set_counts(result.events, p["rows"], f_of(p))
    row = {
        "algorithm": algorithm,
        "attack": attack,
        "aggregator": aggregator,
        "pre": pre,
        "seed": seed,
        "final_acc": s["final_accuracy"],
        "acc_at": float(early["accuracy"].iloc[-1]),
        "versions": s["versions"],
        "byzantine_applied": s["byzantine_applied"],
        "rejected": s["status_counts"].get("rejected", 0),
        "rejected_models": s["rejected_models"],
        "robust_fallbacks": s["robust_fallbacks"],
        "byzantine_clients": s["byzantine_clients"],
        "unattacked_sets": s.get("byzantine_unattacked_sets", 0),
        "sets": sets,
        "byzantine_rows": byzantine_rows,
        "sets_over_f": over_f,
        "sim_time_s": s["sim_time_s"],
        "device": s["device"],
        "wall_s": round(time.perf_counter() - started, 2),
    }
    print(f"{algorithm} {attack} {aggregator}{' + NNM' if pre == 'nnm' else ''} seed {seed}: "
          f"final {row['final_acc']:.3f} ({row['wall_s']:.1f} s)", file=sys.stderr, flush=True)  # fmt: skip
    return row


# -- tables -------------------------------------------------------------------------------------------
def _label(aggregator: str, pre: str) -> str:
    return aggregator + (" + NNM" if pre == "nnm" else "")


def _values(rows: list[dict], key: tuple[str, str, str, str], col: str) -> dict[int, float]:
    return {
        r["seed"]: r[col]
        for r in rows
        if (r["algorithm"], r["attack"], r["aggregator"], r["pre"]) == key
    }


def _mark(name_a: str, name_b: str, a: dict[int, float], b: dict[int, float]) -> str:
    """▲ where A beats B (paired interval above 0), ▼ where B beats A, else nothing."""
    said = verdict(name_a, name_b, paired(a, b))
    if said == NO_DIFFERENCE:
        return ""
    return " ▲" if said.startswith(name_a) else " ▼"


def _accuracy_table(rows: list[dict], algorithm: str, col: str, attacks: list, cells: list) -> list:
    lines = [
        "| aggregator | " + " | ".join(attacks) + " |",
        "|---" * (len(attacks) + 1) + "|",
    ]
    for aggregator, pre in cells:
        out = []
        for attack in attacks:
            v = _values(rows, (algorithm, attack, aggregator, pre), col)
            if not v:
                out.append("—")
                continue
            mark = ""
            base = _values(rows, (algorithm, attack, BASELINE, "none"), col)
            if base and (aggregator, pre) != (BASELINE, "none"):
                mark = _mark("A", "B", v, base)
            out.append(interval(list(v.values())).format(".3f") + mark)
        lines.append(f"| {_label(aggregator, pre)} | " + " | ".join(out) + " |")
    return lines


def _nnm_table(rows: list[dict], algorithm: str, attacks: list, aggregators: list) -> list:
    lines = [
        "| aggregator | " + " | ".join(attacks) + " |",
        "|---" * (len(attacks) + 1) + "|",
    ]
    for aggregator in aggregators:
        out = []
        for attack in attacks:
            with_nnm = _values(rows, (algorithm, attack, aggregator, "nnm"), "final_acc")
            without = _values(rows, (algorithm, attack, aggregator, "none"), "final_acc")
            if not with_nnm or not without:
                out.append("—")
                continue
            d = paired(with_nnm, without)
            out.append(d.format("+.3f") + _mark("A", "B", with_nnm, without))
        lines.append(f"| {aggregator} | " + " | ".join(out) + " |")
    return lines


def tally(rows: list[dict], algorithm: str) -> dict[str, dict[str, int]]:
    """Counts of verdicts over the attacked cells (attack ≠ none) of ``algorithm``, final accuracy:
    ``nnm``: NNM vs no pre-aggregator, per aggregator (the mean included); ``vs_mean``: every other
    aggregation (a robust aggregator with or without NNM, the mean with NNM) vs the mean without
    one; keys ``better``, ``worse``, ``same``."""
    counts = {k: {"better": 0, "worse": 0, "same": 0} for k in ("nnm", "vs_mean")}
    keys = {(r["attack"], r["aggregator"], r["pre"]) for r in rows if r["algorithm"] == algorithm}

    def count(kind: str, a: dict, b: dict) -> None:
        mark = _mark("A", "B", a, b)
        counts[kind][{" ▲": "better", " ▼": "worse", "": "same"}[mark]] += 1

    for attack, aggregator, pre in sorted(keys):
        if attack == "none" or (aggregator, pre) == (BASELINE, "none"):
            continue
        v = _values(rows, (algorithm, attack, aggregator, pre), "final_acc")
        base = _values(rows, (algorithm, attack, BASELINE, "none"), "final_acc")
        if base:
            count("vs_mean", v, base)
        if pre == "nnm" and (attack, aggregator, "none") in keys:
            count("nnm", v, _values(rows, (algorithm, attack, aggregator, "none"), "final_acc"))
    return counts


def table(results: dict) -> str:
    """The Markdown tables of a results file: per algorithm, final accuracy, accuracy at a fixed
    time, and NNM's paired effect."""
    rows = results["rows"]
    n = len(results["seeds"])
    lines: list[str] = []
    for algorithm in [a for a in ALGORITHMS if any(r["algorithm"] == a for r in rows)]:
        sub = [r for r in rows if r["algorithm"] == algorithm]
        attacks = [a for a in ATTACKS if any(r["attack"] == a for r in sub)]
        aggregators = list(dict.fromkeys(r["aggregator"] for r in sub))
        cells = [(g, pre) for g in aggregators for pre in PRES if any(
            r["aggregator"] == g and r["pre"] == pre for r in sub)]  # fmt: skip
        horizon = results["time_s"][algorithm]
        attacked = [r for r in sub if r["attack"] != "none"]
        sets = sum(r["sets"] for r in attacked)
        rows_per_set = sum(r["byzantine_rows"] for r in attacked) / sets if sets else math.nan
        over_f = sum(r["sets_over_f"] for r in attacked) / sets if sets else math.nan
        lines += [
            f"**{algorithm}**, final test accuracy at {horizon:g} simulated s, mean ± 95 % interval "
            f"over {n} seeds. ▲ / ▼: the paired difference with `mean` (no pre-aggregator, same "
            "attack, same seeds) has a 95 % interval above / below 0; no mark: no difference seen.",
            "",
            *_accuracy_table(rows, algorithm, "final_acc", attacks, cells),
            "",
            f"**{algorithm}**, test accuracy at {results['at_s'][algorithm]:g} simulated s "
            "(same marks):",
            "",
            *_accuracy_table(rows, algorithm, "acc_at", attacks, cells),
        ]
        if any(r["pre"] == "nnm" for r in sub) and any(r["pre"] == "none" for r in sub):
            lines += [
                "",
                f"**{algorithm}**, NNM's effect: final accuracy with NNM − without (paired by seed), "
                "95 % interval; ▲ / ▼: NNM better / worse, no mark: no difference seen.",
                "",
                *_nnm_table(rows, algorithm, attacks, aggregators),
            ]
        c = tally(rows, algorithm)
        fallbacks = sum(r["robust_fallbacks"] for r in sub)
        lines += [
            "",
            f"{algorithm}, attacked cells, final accuracy: an aggregation other than `mean` alone "
            f"beats `mean` in "
            f"{c['vs_mean']['better']}, loses to it in {c['vs_mean']['worse']}, no difference seen "
            f"in {c['vs_mean']['same']}; NNM helps in {c['nnm']['better']}, hurts in "
            f"{c['nnm']['worse']}, no difference seen in {c['nnm']['same']}. Attacked runs: "
            f"{rows_per_set:.2f} Byzantine rows per aggregation of {results['preset']['rows']}, "
            f"{100 * over_f:.0f} % of the aggregations hold more than f = {results['f']}; "
            f"robust fallbacks: {fallbacks}.",
            "",
        ]
    return "\n".join(lines).rstrip()


# -- command line -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    out = ROOT / "benchmarks" / "results" / "attacks_aggregators.json"
    parser = experiment_parser(__doc__, PRESETS, MODELS, out)
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument(
        "--attacks", nargs="+", choices=list(ATTACKS), default=list(DEFAULT_ATTACKS)
    )
    parser.add_argument("--aggregators", nargs="+", help="a subset (default: the preset's)")
    parser.add_argument("--pre", nargs="+", choices=PRES, default=list(PRES))
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text(encoding="utf-8"))))
        return
    p = preset(PRESETS, args)
    tasks = [
        (p, algorithm, attack, aggregator, pre, seed, args.device)
        for algorithm in args.algorithms
        for attack in args.attacks
        for aggregator in args.aggregators or p["aggregators"]
        for pre in args.pre
        for seed in args.seeds
    ]
    run_and_write(
        one_run,
        tasks,
        args,
        argv,
        table,
        preset={k: v for k, v in p.items() if k != "aggregators"},
        f=f_of(p),
        time_s={a: p["time_s"][a] for a in args.algorithms},
        at_s={a: at_s(p, a) for a in args.algorithms},
    )


if __name__ == "__main__":
    main()
