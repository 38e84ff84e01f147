"""MoDeST against FedAvg (and gossip D-SGD when registered), and MoDeST with 80 % of the peers crashing.

Runs ``scenarios/modest.yaml`` (40 peers on digits, Dirichlet 0.5, 10 trainers and 2 aggregators per
round, 0.1 s links) once per seed for: FedAvg with a 10-client cohort over client links of the same
latency and bandwidth; MoDeST; MoDeST with 80 % of the peers crashing at ``--crash-at`` seconds; and,
if ``dsgd`` is registered, D-SGD gossip on a random 4-regular graph. Prints a Markdown table and
writes an accuracy-and-rounds-vs-time figure. The shape to check (ALGORITHMS.md §5): MoDeST converges
like FL, sends far less than gossip, and keeps learning when 80 % of the nodes stop answering.

    python benchmarks/experiments/modest_failures.py --seeds 0 1 2 --out docs/img
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from fedsim.algorithms import ALGORITHMS
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "modest.yaml"
LINK = {"latency_s": 0.1, "bandwidth_mbps": 100.0}


def schemes(crash_at: float) -> dict[str, dict]:
    out = {
        "FedAvg (10/round)": {
            "algorithm": {"name": "fedavg", "cohort_size": 10},
            "topology": None,
            "clients.count": 40,
            "clients.network": LINK,
        },
        "MoDeST s=10, a=2": {},
        "MoDeST, 80 % crash": {"algorithm.crash": {"fraction": 0.8, "at_s": crash_at}},
    }
    if "dsgd" in ALGORITHMS:
        out["D-SGD gossip, 4-regular"] = {
            "algorithm": {"name": "dsgd", "rounds": 100_000, "eval_merged": True},
            "topology.graph": {"kind": "random_regular", "k": 4},
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--time-s", type=float, default=300.0, help="simulated horizon")
    parser.add_argument("--crash-at", type=float, default=60.0, help="time of the 80 %% crash")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="figure directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    rows, curves = [], {}
    started = time.perf_counter()
    for label, overrides in schemes(args.crash_at).items():
        curves[label] = []
        for seed in args.seeds:
            sim = Simulation(
                load_scenario(SCENARIO, {**overrides, "seed": seed, "stop.time_s": args.time_s})
            )
            result = sim.run()
            evals = result.evals
            if "server" in evals and (evals["server"] == -1).any():  # D-SGD: the merged model
                evals = evals[evals["server"] == -1]
            curves[label].append(evals[["sim_time", "accuracy", "version"]].reset_index(drop=True))
            b = result.summary["bytes"]
            peer_to_peer = b["server_to_server"] > 0
            traffic = b["server_to_server"] if peer_to_peer else b["client_up"] + b["client_down"]
            rounds = int(evals["version"].iloc[-1])
            before = evals.loc[evals["sim_time"] <= args.crash_at, "version"].max()
            rate_after = (rounds - before) / (args.time_s - args.crash_at) * 60
            rows.append(
                {
                    "scheme": label,
                    "final": float(evals["accuracy"].iloc[-1]),
                    "at_crash": float(
                        evals.loc[evals["sim_time"] <= args.crash_at, "accuracy"].iloc[-1]
                    ),
                    "rounds": rounds,
                    "per_min_before": before / args.crash_at * 60,
                    "per_min_after": rate_after,
                    "mb": traffic / 1e6,
                    "models_per_round": traffic / max(rounds, 1) / (sim.spec.nbytes()),
                }
            )
            print(f"  {label} seed {seed}: {result.summary['wall_time_s']:.1f} s", file=sys.stderr)
    wall = time.perf_counter() - started
    table = pd.DataFrame(rows)

    print(f"`python {' '.join(shlex.quote(a) for a in sys.argv)}` ({wall:.0f} s wall)\n")
    print(
        f"| scheme | accuracy at {args.crash_at:g} s | final accuracy | rounds "
        f"| rounds/min before {args.crash_at:g} s | after | model traffic (MB) | models sent per round |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label in curves:
        t = table[table["scheme"] == label]
        print(
            f"| {label} | {_ms(t['at_crash'])} | {_ms(t['final'])} | {t['rounds'].mean():.0f} "
            f"| {t['per_min_before'].mean():.1f} | {t['per_min_after'].mean():.1f} "
            f"| {t['mb'].mean():.0f} | {t['models_per_round'].mean():.1f} |"
        )
    _plot(curves, args.out, args.crash_at)


def _ms(values: pd.Series) -> str:
    sd = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.3f} ± {sd:.3f}"


def _plot(curves: dict[str, list[pd.DataFrame]], out: Path, crash_at: float) -> None:
    from matplotlib.figure import Figure

    out.mkdir(parents=True, exist_ok=True)
    colors = dict(zip(curves, ["black", "tab:blue", "tab:red", "tab:green"], strict=False))
    fig = Figure(figsize=(10, 4), layout="constrained")
    acc_ax, rounds_ax = fig.subplots(1, 2)
    for label, runs in curves.items():
        for i, run in enumerate(runs):
            kw = {
                "color": colors[label],
                "lw": 1.2,
                "alpha": 0.8,
                "label": label if i == 0 else None,
            }
            acc_ax.plot(run["sim_time"], run["accuracy"], **kw)
            rounds_ax.plot(run["sim_time"], run["version"], **kw)
    for ax in (acc_ax, rounds_ax):
        ax.axvline(crash_at, color="tab:red", ls=":", lw=1)
        ax.set_xlabel("simulated time (s)")
        ax.grid(alpha=0.3)
    acc_ax.set_ylim(0.5, 1.0)
    acc_ax.set_ylabel("test accuracy (latest aggregate / global / merged)")
    rounds_ax.set_ylabel("rounds completed")
    acc_ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(
        f"MoDeST, 40 peers on digits Dir(0.5); red line: 80 % of peers crash ({crash_at:g} s)"
    )
    fig.savefig(out / "modest_failures.png", dpi=110)
    print(f"wrote {out / 'modest_failures.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
