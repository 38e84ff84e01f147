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
tensor, their norm ratio and ``‖slerp − lerp‖ / ‖lerp‖``. Prints a table (final and best accuracy,
mean ± sd; the paired gap SLERP − LERP per seed, mean ± sd; mean staleness of applied proposals;
merge geometry) and draws the gap against the mean staleness.

``disruptors``: FRAIN (the scenario as it is) with ``round(f · 21)`` random-score scorers for each
fraction ``f``; prints accuracy, nullified models applied, honest proposals rejected, and the chance
that a committee of 11 drawn from 21 holds a lying majority (hypergeometric, exact).

    python benchmarks/experiments/frain_ablations.py staleness --seeds 0 1 2 3 4 \
        --delays 0 2 5 15 --jobs 2 --out docs/img
    python benchmarks/experiments/frain_ablations.py disruptors --seeds 0 1 2 \
        --fractions 0 0.2 0.4 0.6 --jobs 2 --out docs/img
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

import fedsim
from fedsim.algorithms.brain import Frain
from fedsim.algorithms.merging import lerp, slerp

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "frain_nullifiers.yaml"
STALENESS_SETS = ["algorithm.adaptive.kind=constant", "algorithm.max_staleness=null"]
NODES, COMMITTEE = 21, 11


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
def one_run(task: tuple[str, dict, list[str]]) -> dict:
    """Run one scenario variant (in a worker process); return its row of the table."""
    kind, keys, sets = task
    torch.set_num_threads(1)
    with merge_probe() as log:
        result = fedsim.run(SCENARIO, sets, save=False)
    s, ev = result.summary, result.events
    jobs = ev[ev["status"].isin(["applied", "rejected", "late"])]
    honest = jobs[~jobs["byzantine"]]
    geo = pd.DataFrame(log)
    row = {
        **keys,
        "seed": s["seed"],
        "final_acc": s["final_accuracy"],
        "best_acc": s["best_accuracy"],
        "applied": int((jobs["status"] == "applied").sum()),
        "honest_rejected": int((honest["status"] == "rejected").sum()),
        "honest_scored": int(honest["status"].isin(["applied", "rejected"]).sum()),
        "nullified_applied": s["byzantine_applied"],
        "nullified_scored": int(
            jobs[jobs["byzantine"]]["status"].isin(["applied", "rejected"]).sum()
        ),
        "mean_staleness": s["mean_staleness"],
        "max_staleness": float(ev.loc[ev["status"] == "applied", "staleness"].max()),
        "wall_s": s["wall_time_s"],
    }
    for col in ("alpha", "angle_deg", "max_angle_deg", "log_norm_ratio", "slerp_vs_lerp"):
        row[col] = float(geo[col].mean()) if len(geo) else math.nan
    print(f"{kind} {keys} seed {s['seed']}: final {row['final_acc']:.3f} "
          f"({row['wall_s']:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    return row


def run_all(tasks: list[tuple[str, dict, list[str]]], jobs: int) -> pd.DataFrame:
    if jobs <= 1:
        return pd.DataFrame([one_run(t) for t in tasks])
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return pd.DataFrame(list(pool.map(one_run, tasks)))


def ms(values: pd.Series, fmt: str = ".3f") -> str:
    """``mean ± sd`` (sample sd; a ``+`` in ``fmt`` signs the mean only)."""
    return f"{values.mean():{fmt}} ± {values.std(ddof=1):{fmt.replace('+', '')}}"


# -- SLERP vs LERP under staleness --------------------------------------------------------------------
def staleness_tasks(args: argparse.Namespace) -> list[tuple[str, dict, list[str]]]:
    tasks = []
    for delay in args.delays:
        for merge in ("slerp", "lerp"):
            for seed in args.seeds:
                sets = [
                    *STALENESS_SETS,
                    f"algorithm.merge={merge}",
                    f"algorithm.committee_delay_s={delay}",
                    f"seed={seed}",
                    f"stop.time_s={args.time_s}",
                    *args.extra,
                ]
                tasks.append(("staleness", {"delay_s": delay, "merge": merge}, sets))
    return tasks


def paired_gaps(frame: pd.DataFrame) -> pd.DataFrame:
    """Per delay level and seed: SLERP − LERP of final and best accuracy, and both staleness means."""
    wide = frame.pivot_table(
        index=["delay_s", "seed"],
        columns="merge",
        values=["final_acc", "best_acc", "mean_staleness"],
    )
    out = pd.DataFrame(
        {
            "gap_final": wide["final_acc"]["slerp"] - wide["final_acc"]["lerp"],
            "gap_best": wide["best_acc"]["slerp"] - wide["best_acc"]["lerp"],
            "staleness": (wide["mean_staleness"]["slerp"] + wide["mean_staleness"]["lerp"]) / 2,
        }
    )
    return out.reset_index()


def staleness_table(frame: pd.DataFrame, gaps: pd.DataFrame) -> str:
    lines = [
        "| delay (s) | mean staleness | merge | final accuracy | best accuracy | applied "
        "| α | angle (°) | ‖slerp−lerp‖/‖lerp‖ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (delay, merge), g in frame.groupby(["delay_s", "merge"], sort=False):
        lines.append(
            f"| {delay:g} | {ms(g.mean_staleness, '.1f')} | {merge.upper()} | {ms(g.final_acc)} "
            f"| {ms(g.best_acc)} | {g.applied.mean():.0f} | {g.alpha.mean():.2f} "
            f"| {g.angle_deg.mean():.1f} (max {g.max_angle_deg.mean():.0f}) "
            f"| {100 * g.slerp_vs_lerp.mean():.2f} % |"
        )
    lines += [
        "",
        "| delay (s) | mean staleness | SLERP − LERP, final | SLERP − LERP, best | seeds SLERP ahead |",
        "|---|---|---|---|---|",
    ]
    for delay, g in gaps.groupby("delay_s", sort=False):
        lines.append(
            f"| {delay:g} | {g.staleness.mean():.1f} | {ms(g.gap_final, '+.3f')} "
            f"| {ms(g.gap_best, '+.3f')} | {(g.gap_final > 0).sum()}/{len(g)} |"
        )
    return "\n".join(lines)


def staleness_figure(frame: pd.DataFrame, gaps: pd.DataFrame) -> Figure:
    """Left: final accuracy of each merge rule; right: the paired gap, both against staleness."""
    fig = Figure(figsize=(9.6, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    levels = gaps.groupby("delay_s", sort=True)
    x = levels.staleness.mean()
    span = float(x.max() - x.min()) if len(x) > 1 else 1.0
    for merge, shift, marker in (("slerp", -0.01, "o"), ("lerp", 0.01, "s")):
        g = frame[frame["merge"] == merge].groupby("delay_s", sort=True)
        left.errorbar(
            g.mean_staleness.mean() + shift * span,
            g.final_acc.mean(),
            xerr=g.mean_staleness.std(ddof=1),
            yerr=g.final_acc.std(ddof=1),
            marker=marker,
            capsize=3,
            label=merge.upper(),
        )
    left.set_ylabel("final test accuracy (150 s)")
    left.set_title("accuracy: mean ± 1 sd over seeds", fontsize=9)
    left.legend(fontsize=8, loc="lower left")
    for col, label, shift, marker in (
        ("gap_final", "final accuracy", -0.012, "o"),
        ("gap_best", "best accuracy", 0.012, "s"),
    ):
        line = right.errorbar(
            x + shift * span,
            levels[col].mean(),
            yerr=levels[col].std(ddof=1),
            marker=marker,
            capsize=4,
            label=f"{label} (mean ± 1 sd)",
        )
        level_x = gaps["delay_s"].map(x)  # each seed at its level's mean staleness
        right.scatter(
            level_x + shift * span,
            gaps[col],
            s=10,
            alpha=0.35,
            color=line[0].get_color(),
            label=f"{label}, one seed",
        )
    right.axhline(0.0, color="grey", lw=0.8, ls="--")
    right.set_ylabel("accuracy gap, SLERP − LERP (same seed)")
    right.set_title("paired gap; above 0 = SLERP better", fontsize=9)
    right.legend(fontsize=7, loc="lower left", ncols=2)
    right.set_xlim(left.get_xlim())  # one staleness scale; keeps the level labels inside
    for ax in (left, right):
        low, high = ax.get_ylim()
        ax.set_ylim(low - 0.25 * (high - low), high + 0.08 * (high - low))
        ax.set_xlabel("mean staleness of applied proposals (versions behind)")
        for xi, delay in zip(x, x.index, strict=True):
            ax.annotate(
                f"delay {delay:g} s",
                (xi, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, -10),
                textcoords="offset points",
                ha="center",
                fontsize=7,
                color="grey",
            )
    n_seeds = gaps["seed"].nunique()
    fig.suptitle(
        f"FRAIN on mnist1d, 21 nodes (10 nullifiers), staleness factor off, no limit S; "
        f"{n_seeds} seeds. Staleness raised by the committee delay",
        fontsize=9,
    )
    return fig


# -- disruptors -----------------------------------------------------------------------------------------
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


def disruptor_tasks(args: argparse.Namespace) -> list[tuple[str, dict, list[str]]]:
    tasks = []
    for fraction in args.fractions:
        count = round(fraction * NODES)
        for seed in args.seeds:
            sets = [
                f"algorithm.disruptors={count}",
                f"seed={seed}",
                f"stop.time_s={args.time_s}",
                *args.extra,
            ]
            tasks.append(("disruptors", {"fraction": fraction, "disruptors": count}, sets))
    return tasks


def disruptor_table(frame: pd.DataFrame) -> str:
    lines = [
        "| disruptors (of 21) | per committee of 11 (mean) | P(lying majority) | final accuracy "
        "| best accuracy | nullified applied / scored | P(nullifier passes): measured "
        "| exact | honest rejected |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (fraction, count), g in frame.groupby(["fraction", "disruptors"], sort=False):
        known = g.nullified_scored.notna().all()  # not recorded in a CSV written before the column
        scored = f"{g.nullified_scored.mean():.0f}" if known else "–"
        rate = g.nullified_applied.sum() / g.nullified_scored.sum() if known else math.nan
        measured = f"{rate:.3f}" if known else "0"
        lines.append(
            f"| {count} ({fraction:g}) | {COMMITTEE * count / NODES:.1f} "
            f"| {lying_majority(count):.3f} | {ms(g.final_acc)} | {ms(g.best_acc)} "
            f"| {g.nullified_applied.mean():.0f} / {scored} | {measured} "
            f"| {nullifier_acceptance(count):.3f} "
            f"| {g.honest_rejected.sum() / g.honest_scored.sum():.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=["staleness", "disruptors"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--delays", type=float, nargs="+", default=[0, 2, 5, 15])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0, 0.2, 0.4, 0.6])
    parser.add_argument("--time-s", type=float, default=150.0, help="simulated horizon")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="output directory")
    parser.add_argument(
        "--replot",
        action="store_true",
        help="redraw the table (and figure) from the CSV in --out, no runs",
    )
    parser.add_argument("--set", dest="extra", nargs="*", default=[], help="extra overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.study == "staleness":
        csv = args.out / "frain_slerp_vs_lerp.csv"
        if args.replot:
            frame = pd.read_csv(csv)
        else:
            frame = run_all(staleness_tasks(args), args.jobs)
            frame.to_csv(csv, index=False)
        gaps = paired_gaps(frame)
        staleness_figure(frame, gaps).savefig(args.out / "frain_slerp_vs_lerp.png", dpi=120)
        print(staleness_table(frame, gaps))
    else:
        csv = args.out / "frain_disruptors.csv"
        if args.replot:
            frame = pd.read_csv(csv)
        else:
            frame = run_all(disruptor_tasks(args), args.jobs)
            frame.to_csv(csv, index=False)
        print(disruptor_table(frame))
    print(
        f"\n{len(frame)} runs in {time.perf_counter() - started:.0f} s wall; command: "
        f"python {shlex.join(sys.argv)}"
    )


if __name__ == "__main__":
    main()
