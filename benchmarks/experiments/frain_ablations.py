"""FRAIN ablations (seed 000; ALGORITHMS.md §3.6–3.7): SLERP vs LERP under staleness, and disruptors.

Both start from ``scenarios/frain_nullifiers.yaml`` (mnist1d, 21 nodes, 10 nullifiers, all 21
nodes training at once, committee of 11, θ = 0.2).

``staleness``: FRAIN with ``merge: slerp`` and ``merge: lerp`` on the same seeds, at several
levels of ``committee_delay_s`` (a proposal is scored and merged that long after it arrives, so
the merge sees it that many more versions stale; nothing else about training changes). To let
stale proposals reach the merge with their full weight the staleness factor is off
(``adaptive.kind: constant``, the authors' default) and there is no staleness limit
(``max_staleness: null``). A probe wraps ``Frain.merged`` (it records, it does not change the
result) and measures at every merge the angle between ``w_G`` and the proposal per parameter
tensor and ``‖slerp − lerp‖ / ‖lerp‖``; α is read from the events trace (column ``alpha``).

``disruptors``: FRAIN (the scenario as it is) with ``round(f · 21)`` random-score scorers for each
fraction ``f``: accuracy, nullified models applied against the exact chance that one passes, and
the chance that a committee of 11 drawn from 21 holds a lying majority (hypergeometric, exact).

Every figure is a mean over seeds ± the half-width of its 95 % Student-t interval, and a
comparison says "A beats B" only where the interval of the paired difference (same seeds) excludes
0 (benchmarks/experiments/stats.py). Writes ``--out`` (JSON: the command, the seeds, one row per
run) and prints :func:`table`, which ends with a verdict per claim of the seed.

    python benchmarks/experiments/frain_ablations.py --seeds 0 1 2 3 4 --jobs 2 \
        --out benchmarks/results/frain_ablations.json

``--table FILE`` prints the tables of an existing results file (no runs).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from censored import experiment_parser, run_and_write
from stats import NO_DIFFERENCE, interval, paired, verdict

import fedsim
from fedsim.algorithms.brain import Frain
from fedsim.algorithms.merging import lerp, slerp

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "frain_nullifiers.yaml"
STALENESS_SETS = ["algorithm.adaptive.kind=constant", "algorithm.max_staleness=null"]
NODES, COMMITTEE = 21, 11
PRESETS = {"cpu": {"dataset": "mnist1d", "time_s": 150.0}}
"""Only a CPU preset: the seed's CIFAR-10 setting is not sized here (see docs/experiments.md)."""


# -- merge geometry probe -------------------------------------------------------------------------
def _geometry(w: torch.Tensor, w_p: torch.Tensor, alpha: float, bounds: list[int]) -> dict:
    """Angles and norm ratios of one merge's endpoints, per tensor, and how far SLERP is from LERP."""
    ends = [*bounds[1:], w.numel()]
    angles, ratios = [], []
    for lo, hi in zip(bounds, ends, strict=True):
        a, b = w[lo:hi].double(), w_p[lo:hi].double()
        na, nb = float(a.norm()), float(b.norm())
        if na > 1e-8 and nb > 1e-8:
            cos = min(1.0, max(-1.0, float(a @ b) / (na * nb)))
            angles.append(math.degrees(math.acos(cos)))
            ratios.append(abs(math.log(nb / na)))
    lin = lerp(w, w_p, alpha).double()
    sph = slerp(w, w_p, alpha, bounds).double()
    return {
        "alpha": alpha,
        "angle_deg": float(np.mean(angles)) if angles else math.nan,
        "max_angle_deg": max(angles) if angles else math.nan,
        "log_norm_ratio": float(np.mean(ratios)) if ratios else math.nan,
        "slerp_vs_lerp": float((sph - lin).norm() / lin.norm()),
        "norm_gain": float(sph.norm() / lin.norm() - 1.0),
    }


@contextmanager
def merge_probe() -> Iterator[list[dict]]:
    """Record the geometry of every FRAIN merge in this process while the block runs."""
    log: list[dict] = []
    original = Frain.merged

    def merged(self: Frain, w: torch.Tensor, w_p: torch.Tensor, alpha: float) -> torch.Tensor:
        log.append(_geometry(w, w_p, alpha, list(self.bounds or [0])))
        return original(self, w, w_p, alpha)

    Frain.merged = merged  # type: ignore[method-assign]
    try:
        yield log
    finally:
        Frain.merged = original  # type: ignore[method-assign]


# -- one run ------------------------------------------------------------------------------------------
def one_run(task: tuple[str, dict, int, list[str]]) -> dict:
    """Run one variant on one seed (in a worker process); return its row of the results file."""
    study, keys, seed, sets = task
    torch.set_num_threads(1)
    with merge_probe() as log:
        result = fedsim.run(SCENARIO, [*sets, f"seed={seed}"], save=False)
    s, ev = result.summary, result.events
    applied = ev[ev["status"] == "applied"]
    scored = ev[(ev["status"] == "applied") | (ev["reason"] == "score")]
    honest = scored[~scored["byzantine"]]

    def mean_of(col: str) -> float:
        values = [g[col] for g in log if not math.isnan(g[col])]
        return float(np.mean(values)) if values else math.nan

    row = {
        "study": study,
        **keys,
        "seed": seed,
        "device": s.get("device", "cpu"),
        "final_acc": s["final_accuracy"],
        "best_acc": s["best_accuracy"],
        "applied": len(applied),
        "honest_rejected": int((honest["status"] == "rejected").sum()),
        "honest_scored": len(honest),
        "nullified_applied": int(applied["byzantine"].sum()),
        "nullified_scored": int(scored["byzantine"].sum()),
        "mean_staleness": s["mean_staleness"],
        "alpha": float(applied["alpha"].mean()) if len(applied) else math.nan,
        "angle_deg": mean_of("angle_deg"),
        "max_angle_deg": mean_of("max_angle_deg"),
        "slerp_vs_lerp": mean_of("slerp_vs_lerp"),
        "wall_s": s["wall_time_s"],
    }
    print(f"{study} {keys} seed {seed}: final {row['final_acc']:.3f} "
          f"({row['wall_s']:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    return row


def tasks_for(args) -> list[tuple[str, dict, int, list[str]]]:
    horizon = [f"stop.time_s={args.time_s}", f"data.dataset={args.dataset or 'mnist1d'}"]
    if args.data_path:
        horizon.append(f"data.path={args.data_path}")
    if args.device:
        horizon.append(f"device={args.device}")
    tasks = []
    if "staleness" in args.studies:
        for delay in args.delays:
            for merge in ("slerp", "lerp"):
                sets = [*STALENESS_SETS, f"algorithm.merge={merge}"]
                sets += [f"algorithm.committee_delay_s={delay}", *horizon]
                keys = {"delay_s": delay, "merge": merge}
                tasks += [("staleness", keys, seed, sets) for seed in args.seeds]
    if "disruptors" in args.studies:
        for fraction in args.fractions:
            count = round(fraction * NODES)
            sets = [f"algorithm.disruptors={count}", *horizon]
            keys = {"fraction": fraction, "disruptors": count}
            tasks += [("disruptors", keys, seed, sets) for seed in args.seeds]
    return tasks


# -- disruptors: exact chances ---------------------------------------------------------------------------
def lying_majority(liars: int, nodes: int = NODES, committee: int = COMMITTEE) -> float:
    """P(more than half of a committee drawn without replacement are liars) (hypergeometric)."""
    need = committee // 2 + 1
    total = math.comb(nodes, committee)
    hits = sum(
        math.comb(liars, k) * math.comb(nodes - liars, committee - k)
        for k in range(need, min(liars, committee) + 1)
    )
    return hits / total


def nullifier_acceptance(liars: int, classes: int = 10, threshold: float = 0.2) -> float:
    """P(a nullified model passes θ) with ``liars`` disruptors among the 21 nodes (exact).

    Every honest member scores an all-zero model exactly ``1/classes`` (ties split) < θ. With ``k``
    liars in the committee of 11 the median (6th smallest) is ≥ θ iff at most ``k − 6`` liars
    drew below θ: impossible for ``k ≤ 5``, ``BinomCDF(k − 6; k, θ)`` otherwise.
    """
    assert 1 / classes < threshold
    need = COMMITTEE // 2 + 1
    total = math.comb(NODES, COMMITTEE)
    p = 0.0
    for k in range(need, min(liars, COMMITTEE) + 1):
        draw = math.comb(liars, k) * math.comb(NODES - liars, COMMITTEE - k) / total
        below = sum(
            math.comb(k, j) * threshold**j * (1 - threshold) ** (k - j) for j in range(k - need + 1)
        )
        p += draw * below
    return p


# -- tables -------------------------------------------------------------------------------------------
def _seeds(rows: list[dict], col: str, **match) -> dict[int, float]:
    return {r["seed"]: r[col] for r in rows if all(r.get(k) == v for k, v in match.items())}


def _ci(values: dict[int, float], fmt: str = ".3f") -> str:
    return interval(list(values.values())).format(fmt)


def _avg(rows: list[dict], col: str, **match) -> float:
    values = list(_seeds(rows, col, **match).values())
    return math.fsum(values) / len(values)


def staleness_table(rows: list[dict]) -> tuple[str, list[str]]:
    """The tables of the staleness study and the verdict of each delay level."""
    delays = list(dict.fromkeys(r["delay_s"] for r in rows))
    lines = [
        "| delay (s) | merge | mean staleness | final accuracy | best accuracy | applied | α "
        "| angle (°) | ‖slerp−lerp‖/‖lerp‖ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for delay in delays:
        for merge in ("slerp", "lerp"):
            m = {"delay_s": delay, "merge": merge}
            lines.append(
                f"| {delay:g} | {merge.upper()} | {_ci(_seeds(rows, 'mean_staleness', **m), '.1f')} "
                f"| {_ci(_seeds(rows, 'final_acc', **m))} | {_ci(_seeds(rows, 'best_acc', **m))} "
                f"| {_avg(rows, 'applied', **m):.0f} | {_avg(rows, 'alpha', **m):.2f} "
                f"| {_avg(rows, 'angle_deg', **m):.1f} (max {_avg(rows, 'max_angle_deg', **m):.0f}) "
                f"| {100 * _avg(rows, 'slerp_vs_lerp', **m):.2f} % |"
            )
    lines += [
        "",
        "Paired gap SLERP − LERP (same seed: same data split, same node speeds), 95 % interval:",
        "",
        "| delay (s) | SLERP − LERP, final | verdict | SLERP − LERP, best | seeds SLERP ahead |",
        "|---|---|---|---|---|",
    ]
    verdicts = []
    per_seed: dict[str, dict[int, list[float]]] = {"final_acc": {}, "best_acc": {}}
    for delay in delays:
        cells = {}
        for col in per_seed:
            a = _seeds(rows, col, delay_s=delay, merge="slerp")
            b = _seeds(rows, col, delay_s=delay, merge="lerp")
            cells[col] = paired(a, b)
            for seed in a:
                per_seed[col].setdefault(seed, []).append(a[seed] - b[seed])
        a = _seeds(rows, "final_acc", delay_s=delay, merge="slerp")
        b = _seeds(rows, "final_acc", delay_s=delay, merge="lerp")
        verdicts.append(verdict("SLERP", "LERP", cells["final_acc"]))
        lines.append(
            f"| {delay:g} | {cells['final_acc'].format('+.3f')} | {verdicts[-1]} "
            f"| {cells['best_acc'].format('+.3f')} | {sum(a[k] > b[k] for k in a)}/{len(a)} |"
        )
    pooled = {col: interval([np.mean(v) for v in d.values()]) for col, d in per_seed.items()}
    verdicts.append(verdict("SLERP", "LERP", pooled["final_acc"]))
    lines.append(
        f"| all (per-seed mean over levels) | {pooled['final_acc'].format('+.3f')} "
        f"| {verdicts[-1]} | {pooled['best_acc'].format('+.3f')} | – |"
    )
    return "\n".join(lines), verdicts


def disruptor_table(rows: list[dict]) -> tuple[str, dict]:
    """The table of the disruptor study and the facts the claims need."""
    counts = list(dict.fromkeys((r["fraction"], r["disruptors"]) for r in rows))
    lines = [
        "| disruptors (of 21) | liars per committee of 11 (mean) | P(lying majority) "
        "| final accuracy | − none, paired | verdict | nullified applied / scored "
        "| P(nullifier passes): measured | exact | honest rejected |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = _seeds(rows, "final_acc", disruptors=counts[0][1])
    facts = {}
    for fraction, count in counts:
        sub = [r for r in rows if r["disruptors"] == count]
        acc = _seeds(rows, "final_acc", disruptors=count)
        diff = paired(acc, base)
        said = (
            verdict(f"{count} disruptors", f"{counts[0][1]} disruptors", diff)
            if count != counts[0][1]
            else "–"
        )
        applied = sum(r["nullified_applied"] for r in sub)
        scored = sum(r["nullified_scored"] for r in sub)
        facts[count] = (lying_majority(count), applied, said)
        lines.append(
            f"| {count} ({fraction:g}) | {COMMITTEE * count / NODES:.1f} "
            f"| {lying_majority(count):.3f} | {_ci(acc)} "
            f"| {diff.format('+.3f') if count != counts[0][1] else '–'} | {said} "
            f"| {applied / len(sub):.0f} / {scored / len(sub):.0f} "
            f"| {applied / scored if scored else math.nan:.3f} "
            f"| {nullifier_acceptance(count):.3f} "
            f"| {sum(r['honest_rejected'] for r in sub) / sum(r['honest_scored'] for r in sub):.0%} |"
        )
    return "\n".join(lines), facts


def table(results: dict) -> str:
    """The Markdown tables of a results file, then a verdict per claim of the seed."""
    rows = results["rows"]
    n = len(results["seeds"])
    out = [f"Mean ± 95 % interval over {n} seeds (counts, α and geometry: means over seeds)."]
    claims = []
    stale = [r for r in rows if r["study"] == "staleness"]
    if stale:
        text, verdicts = staleness_table(stale)
        out += ["", "**SLERP vs LERP under staleness**", "", text]
        wins = sum(v == "SLERP beats LERP" for v in verdicts[:-1])
        said = (
            "reproduced"
            if wins == len(verdicts) - 1
            else "partly"
            if wins or verdicts[-1] == "SLERP beats LERP"
            else "not reproduced"
        )
        claims.append(
            f"| SLERP merges better than LERP under staleness | {said} | SLERP beats LERP at "
            f"{wins} of {len(verdicts) - 1} delay levels; over all levels: {verdicts[-1]} |"
        )
    dis = [r for r in rows if r["study"] == "disruptors"]
    if dis:
        text, facts = disruptor_table(dis)
        out += ["", "**Disruptors**", "", text]
        safe = [c for c, (p, _, _) in facts.items() if p == 0.0 and c > 0]
        unsafe = [c for c, (p, _, _) in facts.items() if p > 0.5]
        held = all(facts[c][1] == 0 and facts[c][2] == NO_DIFFERENCE for c in safe)
        broke = all(facts[c][1] > 0 for c in unsafe)
        if safe:
            said = (
                "reproduced"
                if held
                else "partly"
                if all(facts[c][1] == 0 for c in safe)
                else "not reproduced"
            )
            claims.append(
                f"| Disruptors are tolerated while they cannot hold a committee majority | {said} "
                f"| {', '.join(map(str, safe))} disruptors: no lying majority possible; nullified "
                f"applied: {', '.join(str(facts[c][1]) for c in safe)}; accuracy against none: "
                f"{', '.join(facts[c][2] for c in safe)} |"
            )
        if unsafe:
            claims.append(
                f"| … and not beyond it | {'reproduced' if broke else 'not reproduced'} "
                f"| {', '.join(map(str, unsafe))} disruptors: nullified applied "
                f"{', '.join(str(facts[c][1]) for c in unsafe)} (all seeds) |"
            )
    out += ["", "| claim of the seed | here | evidence |", "|---|---|---|", *claims]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = experiment_parser(
        __doc__, PRESETS, ["mnist1d", "cifar10"], ROOT / "benchmarks/results/frain_ablations.json"
    )
    parser.add_argument(
        "--studies",
        nargs="+",
        choices=["staleness", "disruptors"],
        default=["staleness", "disruptors"],
    )
    parser.add_argument("--delays", type=float, nargs="+", default=[0, 2, 5, 15])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0, 0.2, 0.4, 0.6])
    parser.add_argument("--time-s", type=float, default=PRESETS["cpu"]["time_s"])
    args = parser.parse_args(argv)
    if args.table:
        import json

        print(table(json.loads(args.table.read_text(encoding="utf-8"))))
        return
    torch.set_num_threads(1)
    run_and_write(one_run, tasks_for(args), args, argv, table, time_s=args.time_s)


if __name__ == "__main__":
    main()
