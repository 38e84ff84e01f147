"""Synchronous vs asynchronous gossip D-SGD under stragglers (ALGORITHMS.md §3.10, issue 7).

``scenarios/dsgd_merge.yaml`` (16 peers on digits, Dirichlet 0.1, MLP, 10 local steps per round,
1 s jobs) with 30 % of the peers 5× slower (``clients.stragglers``), no final merge, in two gossip
settings: the paper's random-r operator (r = 0.2) and a ring with Metropolis–Hastings weights. Each is
run with ``algorithm.mode: sync`` (every round waits for the slowest peer), ``mode: async`` with the
wait rule (a peer waits only for its in-neighbours' models of the same round) and with the latest
rule (a peer pulls its in-neighbours' current models), for the same simulated time, seeds 0, 1, 2. Reported over simulated time: the merged model's accuracy (what one global merge would
give at that moment, evals ``server = -1``) and the mean local accuracy, averaged over the seeds.

    python benchmarks/experiments/dsgd_async.py --out docs/img
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

import fedsim

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "dsgd_merge.yaml"
SETTINGS = {
    "random-r (r = 0.2)": {"algorithm.gossip": "random"},
    "ring, MH weights": {"algorithm.gossip": "mixing", "topology.graph": "ring"},
}
MODES = {
    "sync": {"algorithm.mode": "sync"},
    "async (wait)": {"algorithm.mode": "async", "algorithm.async_rule": "wait"},
    "async (latest)": {"algorithm.mode": "async", "algorithm.async_rule": "latest"},
}


def curves(result: fedsim.Result) -> pd.DataFrame:
    """Per evaluation time: mean local accuracy (servers ≥ 0) and merged accuracy (server −1)."""
    ev = result.evals
    local = ev[ev["server"] >= 0].groupby("sim_time")["accuracy"].mean()
    merged = ev[ev["server"] == -1].groupby("sim_time")["accuracy"].mean()
    return pd.DataFrame({"local": local, "merged": merged})


def rounds_done(result: fedsim.Result) -> np.ndarray:
    """Rounds each peer completed (its last evaluated model version)."""
    ev = result.evals
    return ev[ev["server"] >= 0].groupby("server")["version"].max().to_numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--time-s", type=float, default=250.0, help="simulated seconds per run")
    parser.add_argument("--fraction", type=float, default=0.3, help="share of straggler peers")
    parser.add_argument("--slowdown", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="figure directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    base = {
        "algorithm.rounds": 100_000,  # the time budget ends the run, not the round count
        "algorithm.merge": None,
        "clients.stragglers": {"fraction": args.fraction, "slowdown": args.slowdown},
        "stop.time_s": args.time_s,
        "eval.every_s": args.time_s / 25,
    }
    runs: dict[tuple[str, str], list[fedsim.Result]] = {}
    for setting, extra in SETTINGS.items():
        for mode in MODES:
            runs[setting, mode] = [
                fedsim.run(
                    SCENARIO,
                    {**base, **extra, **MODES[mode], "seed": seed},
                    save=False,
                )
                for seed in args.seeds
            ]

    args.out.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, len(SETTINGS), sharey=True)
    colours = dict(zip(MODES, ("tab:orange", "tab:blue", "tab:green"), strict=True))
    rows = []
    for ax, setting in zip(axes, SETTINGS, strict=True):
        for mode in MODES:
            results = runs[setting, mode]
            mean = pd.concat([curves(r) for r in results]).groupby(level=0).mean()
            c = colours[mode]
            ax.plot(mean.index, mean["merged"], color=c, lw=2, label=f"{mode}: merged model")
            ax.plot(
                mean.index, mean["local"], color=c, lw=1.2, ls="--", label=f"{mode}: mean local"
            )
            done = np.concatenate([rounds_done(r) for r in results])
            half = mean[mean.index <= args.time_s / 2].iloc[-1]
            end = [curves(r)["merged"].iloc[-1] for r in results]
            applied = pd.concat([r.events[r.events["status"] == "applied"] for r in results])
            rows.append(
                (
                    setting,
                    mode,
                    half["merged"],
                    np.mean(end),
                    np.std(end),
                    mean["local"].iloc[-1],
                    done.min(),
                    done.mean(),
                    done.max(),
                    np.mean([(r.events["status"] == "message").sum() for r in results]),
                    applied["staleness"].mean(),
                )
            )
        ax.set_title(f"{setting}: {args.fraction:.0%} stragglers at {args.slowdown:g}×")
        ax.set_xlabel("simulated time (s)")
        ax.grid(True, alpha=0.3)
    axes[-1].legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel(f"test accuracy (mean of {len(args.seeds)} seeds)")
    fig.savefig(args.out / "dsgd_async.png", dpi=120)

    print(
        f"| gossip | mode | merged acc at {args.time_s / 2:g} s | merged acc at {args.time_s:g} s "
        "| mean local acc at the end | rounds per peer (min / mean / max) | messages "
        "| mean staleness |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for setting, mode, m_half, m_end, m_std, local, lo, avg, hi, msgs, stale in rows:
        print(
            f"| {setting} | {mode} | {m_half:.3f} | {m_end:.3f} ± {m_std:.3f} | {local:.3f} "
            f"| {lo} / {avg:.1f} / {hi} | {msgs:.0f} | {stale:.2f} |"
        )
    print()
    print(
        f"wall time {time.perf_counter() - started:.0f} s; command: "
        f"python {' '.join(shlex.quote(a) for a in sys.argv)}"
    )


if __name__ == "__main__":
    main()
