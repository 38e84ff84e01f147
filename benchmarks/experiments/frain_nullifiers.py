"""FRAIN under nullifiers (seed 000; ALGORITHMS.md §3.6–3.7, §5), CPU-sized, with attack-free rows.

Runs ``scenarios/frain_nullifiers.yaml`` (mnist1d, 21 nodes, Dirichlet(1.0), every node training at
once, staleness limit 16) twice per scheme and seed: **clean** (``byzantine.fraction=0``) and
**attacked** (the scenario as it is: 10 of the 21 nodes are nullifiers sending all-zero models).
Schemes: FedAvg (10 per round, same simulated time), FedAsync (α = 0.6), BRAIN, FRAIN with SLERP,
FRAIN with LERP, FRAIN with ``alpha_rule: ratio`` (the ablation of α = window mean), and a
**trip-matched FedAvg**: 21 trainers per round (FRAIN keeps all 21 nodes training) and as many
local trainings as FRAIN (SLERP) finished on the same seed and condition (``stop.max_updates``
rounded down to whole rounds; no time limit), the paper's comparison at an equal number of
trainers and rounds rather than at equal simulated time.

A probe (it records, it changes nothing) wraps ``Frain.staleness_factor`` and ``Frain.merged`` and
logs, for every merge, the staleness ``k``, the hinge factor ``f(k)`` and the merge weight α.

Writes ``--out`` (JSON: the command, the seeds, one row per run) and prints :func:`table`; every
figure is a mean over seeds ± the half-width of its 95 % Student-t interval
(benchmarks/experiments/stats.py), and a comparison says "A beats B" only where the interval of
the paired difference (same seeds) excludes 0.

    python benchmarks/experiments/frain_nullifiers.py --seeds 0 1 2 3 4 5 6 7 8 9 --jobs 2 \
        --out benchmarks/results/frain_nullifiers.json

``--table FILE`` prints the table of an existing results file (no runs).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stats import Interval, interval, paired, relative, verdict

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "frain_nullifiers.yaml"
NODES = 21
HINGE_B = 4  # proposals staler than b are down-weighted by the hinge (a = 10, b = 4, c = 16)

SCHEMES: dict[str, list[str]] = {
    "FedAvg (10/round)": ["algorithm.name=fedavg"],
    "FedAsync (α=0.6)": ["algorithm.name=fedasync", "algorithm.alpha=0.6"],
    "BRAIN": ["algorithm.name=brain"],
    "FRAIN (SLERP)": [],
    "FRAIN (LERP)": ["algorithm.merge=lerp"],
    "FRAIN (SLERP, α ratio)": ["algorithm.alpha_rule=ratio"],
}
MATCHED = "FedAvg (21/round, trips of FRAIN)"
"""Run after the others: 21 per round, as many local trainings as FRAIN (SLERP) on that seed."""
CONDITIONS = {"clean": ["byzantine.fraction=0"], "attacked": []}
COMPARISONS = [
    ("FRAIN (SLERP)", "BRAIN"),
    ("FRAIN (SLERP)", "FRAIN (LERP)"),
    ("FRAIN (SLERP)", "FRAIN (SLERP, α ratio)"),
    ("FRAIN (SLERP)", "FedAsync (α=0.6)"),
    ("FRAIN (SLERP)", "FedAvg (10/round)"),
    ("FRAIN (SLERP)", MATCHED),
    ("BRAIN", MATCHED),
]


# -- one run ------------------------------------------------------------------------------------------
@contextmanager
def alpha_probe() -> Iterator[list[tuple[int, float, float]]]:
    """Log ``(k, f(k), α)`` for every FRAIN merge in this process while the block runs."""
    from fedsim.algorithms.brain import Frain

    log: list[tuple[int, float, float]] = []
    last: dict[str, float] = {}
    factor, merged = Frain.staleness_factor, Frain.merged

    def staleness_factor(self, k: int) -> float:
        f = factor(self, k)
        last.update(k=k, f=f)
        return f

    def merged_probe(self, w, w_p, alpha: float):
        log.append((int(last.get("k", -1)), float(last.get("f", math.nan)), float(alpha)))
        return merged(self, w, w_p, alpha)

    Frain.staleness_factor, Frain.merged = staleness_factor, merged_probe
    try:
        yield log
    finally:
        Frain.staleness_factor, Frain.merged = factor, merged


def _mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else math.nan


def one_run(task: tuple[str, str, int, list[str]]) -> dict:
    """Run one scheme × condition × seed (in a worker process); return its row."""
    import torch

    import fedsim

    scheme, condition, seed, sets = task
    torch.set_num_threads(1)
    with alpha_probe() as log:
        result = fedsim.run(SCENARIO, [*sets, f"seed={seed}"], save=False)
    s = result.summary
    counts = s["status_counts"]
    stale = [(f, a) for k, f, a in log if k > HINGE_B]
    row = {
        "scheme": scheme,
        "condition": condition,
        "seed": seed,
        "final_acc": s["final_accuracy"],
        "best_acc": s["best_accuracy"],
        "applied": counts.get("applied", 0),
        "rejected": counts.get("rejected", 0),
        "late": counts.get("late", 0),
        "trips": sum(counts.get(k, 0) for k in ("applied", "rejected", "late")),
        "nullified_applied": s["byzantine_applied"],
        "mean_staleness": s["mean_staleness"],
        "sim_time_s": s["sim_time_s"],
        "merges": len(log),
        "alpha": _mean([a for _, _, a in log]),
        "stale_merges": len(stale),
        "stale_factor": _mean([f for f, _ in stale]),
        "stale_alpha": _mean([a for _, a in stale]),
        "wall_s": s["wall_time_s"],
    }
    print(f"{scheme} {condition} seed {seed}: final {row['final_acc']:.3f} "
          f"({row['wall_s']:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    return row


def run_all(tasks: list, jobs: int) -> list[dict]:
    if jobs <= 1:
        return [one_run(t) for t in tasks]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one_run, tasks))


def tasks_first(seeds: list[int], time_s: float) -> list:
    return [
        (scheme, cond, seed, [*sets, *CONDITIONS[cond], f"stop.time_s={time_s}"])
        for scheme, sets in SCHEMES.items()
        for cond in CONDITIONS
        for seed in seeds
    ]


def tasks_matched(rows: list[dict]) -> list:
    out = []
    for r in rows:
        if r["scheme"] != "FRAIN (SLERP)":
            continue
        rounds = max(1, r["trips"] // NODES)
        sets = [
            "algorithm.name=fedavg",
            f"algorithm.cohort_size={NODES}",
            "stop.time_s=null",
            f"stop.max_updates={rounds * NODES}",
            *CONDITIONS[r["condition"]],
        ]
        out.append((MATCHED, r["condition"], r["seed"], sets))
    return out


# -- tables -------------------------------------------------------------------------------------------
def _by(rows: list[dict], scheme: str, condition: str, col: str) -> dict[int, float]:
    return {
        r["seed"]: r[col] for r in rows if r["scheme"] == scheme and r["condition"] == condition
    }


def _ci(values: dict[int, float], fmt: str = ".3f") -> str:
    return interval(list(values.values())).format(fmt)


def _pct(iv: Interval) -> str:
    return f"{100 * iv.mean:+.1f} ± {100 * iv.half:.1f} %"


def table(results: dict) -> str:
    """The Markdown tables of a results file (accuracy, comparisons, merge weights)."""
    rows = results["rows"]
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    n = len(results["seeds"])
    lines = [
        f"Final test accuracy, mean ± 95 % interval over {n} seeds; drop = attacked / clean − 1, "
        "per seed. Counts per run (attacked), mean over seeds.",
        "",
        "| scheme | clean | attacked | drop under attack | applied | rejected | late "
        "| nullified applied | mean staleness | simulated s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scheme in schemes:
        clean = _by(rows, scheme, "clean", "final_acc")
        hit = _by(rows, scheme, "attacked", "final_acc")
        att = [r for r in rows if r["scheme"] == scheme and r["condition"] == "attacked"]
        keys = sorted(clean)
        drop = relative([hit[k] for k in keys], [clean[k] for k in keys])
        lines.append(
            f"| {scheme} | {_ci(clean)} | {_ci(hit)} | {_pct(drop)} "
            f"| {_mean([r['applied'] for r in att]):.0f} | {_mean([r['rejected'] for r in att]):.0f} "
            f"| {_mean([r['late'] for r in att]):.0f} "
            f"| {_mean([r['nullified_applied'] for r in att]):.0f} "
            f"| {_mean([r['mean_staleness'] for r in att]):.1f} "
            f"| {_mean([r['sim_time_s'] for r in att]):.0f} |"
        )
    lines += [
        "",
        "Paired differences of final accuracy (A − B, same seeds), 95 % interval:",
        "",
        "| A | B | clean: A − B | verdict | attacked: A − B | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in COMPARISONS:
        if a not in schemes or b not in schemes:
            continue
        cells = []
        for cond in CONDITIONS:
            d = paired(_by(rows, a, cond, "final_acc"), _by(rows, b, cond, "final_acc"))
            cells += [d.format("+.3f"), verdict(a, b, d)]
        lines.append(f"| {a} | {b} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"FRAIN's merge weight α (probe, mean over merges, then over seeds ± 95 % interval); "
        f"'stale' = proposals with staleness k > {HINGE_B}, where the hinge factor f(k) < 1:",
        "",
        "| scheme | condition | merges | α, all merges | stale merges | f(k), stale | α, stale |",
        "|---|---|---|---|---|---|---|",
    ]
    for scheme in schemes:
        if not scheme.startswith("FRAIN"):
            continue
        for cond in CONDITIONS:
            sub = [r for r in rows if r["scheme"] == scheme and r["condition"] == cond]
            cols = {c: {r["seed"]: r[c] for r in sub} for c in ("alpha", "stale_factor")}
            lines.append(
                f"| {scheme} | {cond} | {_mean([r['merges'] for r in sub]):.0f} "
                f"| {_ci(cols['alpha'], '.2f')} | {_mean([r['stale_merges'] for r in sub]):.0f} "
                f"| {_ci(cols['stale_factor'], '.2f')} "
                f"| {_ci({r['seed']: r['stale_alpha'] for r in sub}, '.2f')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--time-s", type=float, default=150.0, help="simulated horizon")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "frain_nullifiers.json"
    )
    parser.add_argument("--table", type=Path, help="print the table of this results file; no runs")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text(encoding="utf-8"))))
        return
    started = time.perf_counter()
    rows = run_all(tasks_first(args.seeds, args.time_s), args.jobs)
    rows += run_all(tasks_matched(rows), args.jobs)
    wall = time.perf_counter() - started
    results = {
        "command": f"python {shlex.join(sys.argv)}" if argv is None else shlex.join(argv),
        "seeds": args.seeds,
        "time_s": args.time_s,
        "scenario": "scenarios/frain_nullifiers.yaml",
        "wall_s": round(wall, 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(table(results))
    print(f"\n{len(rows)} runs in {wall:.0f} s wall; command: {results['command']}")


if __name__ == "__main__":
    main()
