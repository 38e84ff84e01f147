"""DRPGA against FedAvg under link latency: bytes vs accuracy and accuracy vs simulated time.

Runs ``scenarios/drpga.yaml`` (digits, Dirichlet 0.5, 20 clients all busy, 1 s one-way latency and
1 Mbit/s per transfer) for FedAvg with the full cohort and three DRPGA variants, once per seed, then
prints a Markdown table and writes two figures. The shape to check (ALGORITHMS.md §5, issue 7): about
mean(p) of FedAvg's traffic per round at no more than 1 point accuracy loss, and better simulated
wall-clock under latency, because delayed averaging overlaps communication with computation.

    python benchmarks/experiments/drpga_vs_fedavg.py --seeds 0 1 2 --out docs/img
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedsim.scenario import load_scenario
from fedsim.simulation import Result, Simulation

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "drpga.yaml"

SCHEMES: dict[str, dict] = {
    "FedAvg (20/round)": {"name": "fedavg", "cohort_size": 20},
    "DRPGA walk, D=1": {"name": "drpga", "delay_rounds": 1},
    "DRPGA walk, D=0": {"name": "drpga", "delay_rounds": 0},
    "DGA (p=1), D=1": {"name": "drpga", "rates": [1.0], "delay_rounds": 1},
}


def cumulative_bytes(result: Result, times: np.ndarray) -> np.ndarray:
    """Client bytes (up + down) recorded by each time in ``times``."""
    jobs = result.events[result.events["status"] != "message"].sort_values("sim_time")
    total = (jobs["bytes_up"] + jobs["bytes_down"]).cumsum().to_numpy()
    at = np.searchsorted(jobs["sim_time"].to_numpy(), times, side="right")
    return np.where(at > 0, total[np.maximum(at - 1, 0)], 0)


def first_reach(xs: np.ndarray, accuracy: np.ndarray, target: float) -> float:
    hit = np.flatnonzero(accuracy >= target)
    return float(xs[hit[0]]) if len(hit) else math.nan


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--time-s", type=float, default=300.0, help="simulated horizon")
    parser.add_argument("--target", type=float, default=0.9, help="target test accuracy")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="figure directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    rows = []
    curves: dict[str, list[pd.DataFrame]] = {label: [] for label in SCHEMES}
    started = time.perf_counter()
    for label, algorithm in SCHEMES.items():
        for seed in args.seeds:
            overrides = {"seed": seed, "stop.time_s": args.time_s, "algorithm": algorithm}
            sim = Simulation(load_scenario(SCENARIO, overrides))
            result = sim.run()
            model_bytes = result.summary["model_params"] * 4
            evals = result.evals
            times = evals["sim_time"].to_numpy()
            acc = evals["accuracy"].to_numpy()
            nbytes = cumulative_bytes(result, times)
            curves[label].append(pd.DataFrame({"t": times, "acc": acc, "mb": nbytes / 1e6}))
            b = result.summary["bytes"]
            rounds = result.summary["versions"]
            jobs = result.events[result.events["status"] == "applied"]
            history = getattr(sim.algorithm, "rate_history", [1.0] * rounds)
            rows.append(
                {
                    "scheme": label,
                    "seed": seed,
                    "final": result.summary["final_accuracy"],
                    "best": result.summary["best_accuracy"],
                    "rounds": rounds,
                    "mb": (b["client_up"] + b["client_down"]) / 1e6,
                    # upload per job relative to a full model: the traffic share of sharing p
                    "share": jobs["bytes_up"].mean() / model_bytes,
                    "t_target": first_reach(times, acc, args.target),
                    "mb_target": first_reach(nbytes / 1e6, acc, args.target),
                    "mean_p": float(np.mean(history[:rounds])),
                }
            )
            print(f"  {label} seed {seed}: {result.summary['wall_time_s']:.1f} s", file=sys.stderr)
    wall = time.perf_counter() - started
    table = pd.DataFrame(rows)

    print(f"`python {' '.join(shlex.quote(a) for a in sys.argv)}` ({wall:.0f} s wall)\n")
    print(
        "| scheme | final accuracy | best accuracy | rounds | client MB (up+down) "
        f"| mean p | upload per job / full model | time to {args.target:g} (s) | MB to {args.target:g} |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label in SCHEMES:
        t = table[table["scheme"] == label]
        print(
            f"| {label} | {_ms(t['final'], 3)} | {_ms(t['best'], 3)} | {t['rounds'].mean():.0f} "
            f"| {_ms(t['mb'], 1)} | {t['mean_p'].mean():.3f} | {t['share'].mean():.3f} | {_reach(t['t_target'], 0)} "
            f"| {_reach(t['mb_target'], 1)} |"
        )
    _plots(curves, args.out, args.target)


def _ms(values: pd.Series, digits: int) -> str:
    sd = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {sd:.{digits}f}"


def _reach(values: pd.Series, digits: int) -> str:
    reached = values.dropna()
    if reached.empty:
        return "never"
    text = _ms(reached, digits)
    return text if len(reached) == len(values) else f"{text} ({len(reached)}/{len(values)} seeds)"


def _plots(curves: dict[str, list[pd.DataFrame]], out: Path, target: float) -> None:
    from matplotlib.figure import Figure

    out.mkdir(parents=True, exist_ok=True)
    colors = dict(zip(curves, ["black", "tab:blue", "tab:orange", "tab:green"], strict=False))
    for name, x, xlabel in (
        ("drpga_bytes_accuracy.png", "mb", "client traffic, up + down (MB)"),
        ("drpga_accuracy_time.png", "t", "simulated time (s)"),
    ):
        fig = Figure(figsize=(6.4, 4.2), layout="constrained")
        ax = fig.add_subplot()
        for label, runs in curves.items():
            for i, run in enumerate(runs):
                run = run[run["mb"] > 0]  # nothing sent yet: off a log axis
                ax.plot(run[x], run["acc"], color=colors[label], lw=1.2, alpha=0.8,
                        label=label if i == 0 else None)  # fmt: skip
        ax.axhline(target, color="0.6", ls=":", lw=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (anchor / global model)")
        ax.set_ylim(0.5, 1.0)
        if x == "mb":
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title("DRPGA vs FedAvg, digits Dir(0.5), 20 clients, 1 s latency (3 seeds)")
        fig.savefig(out / name, dpi=110)
        print(f"wrote {out / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
