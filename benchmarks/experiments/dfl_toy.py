"""The DFL toy (ALGORITHMS.md §3.8, §5): all servers agree and sit within 1e-2 of the least-squares
solution; a smaller step size γ gives a smaller bias but converges more slowly.

Runs ``scenarios/dfl_toy.yaml`` (5 servers on a ring, 5 clients each, T_C = 250, T_S = 25) once per
γ, prints a Markdown table (final distance of the worst server to the least-squares solution, first
epoch within 1e-2, consensus error, traffic) and writes three figures: ‖w_m − w_LS‖ vs simulated time
for every γ, the consensus error vs time, and the server graph.

    python benchmarks/experiments/dfl_toy.py --lrs 0.003 0.01 0.03 --out docs/img
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fedsim
from fedsim.plots_network import (
    ParamRecorder,
    consensus_error_vs_time,
    distance_to_optimum,
    server_graph,
)
from fedsim.simulation import Simulation

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "dfl_toy.yaml"
TOLERANCE = 1e-2


def least_squares(sim: Simulation) -> np.ndarray:
    """argmin_w (1/MN) Σ_ij f_ij(w), f_ij the mean squared error on client (i, j)'s data."""
    x = sim.data.x_train.double().cpu().numpy()
    y = sim.data.y_train.double().cpu().numpy()
    d = x.shape[1]
    A, b = np.zeros((d + 1, d + 1)), np.zeros(d + 1)
    for rows in sim.data.client_indices:
        X = np.c_[x[rows], np.ones(len(rows))]
        A += X.T @ X / len(rows)
        b += X.T @ y[rows] / len(rows)
    return np.linalg.solve(A, b)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="figure directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()

    recorders, rows, results = [], [], []
    w_ls = None
    for lr in args.lrs:
        scenario = fedsim.load_scenario(
            SCENARIO, {"training.lr": lr, "algorithm.epochs": args.epochs}
        )
        rec = ParamRecorder(f"γ = {lr:g}")
        sim = Simulation(scenario, progress=rec)
        result = sim.run()
        w_ls = least_squares(sim) if w_ls is None else w_ls
        assert np.allclose(w_ls, least_squares(sim))  # same data for every γ
        dist = np.linalg.norm(np.stack(rec.params) - w_ls, axis=2).max(axis=1)
        times = np.asarray(rec.times)
        epoch_s = result.summary["sim_time_s"] / args.epochs
        within = np.flatnonzero(dist < TOLERANCE)
        final = np.stack([s.params.double().cpu().numpy() for s in sim.servers])
        rows.append(
            (
                lr,
                np.abs(final - w_ls).max(),
                np.linalg.norm(final - w_ls, axis=1).max(),
                times[within[0]] / epoch_s if len(within) else float("nan"),
                result.evals["consensus_error"].iloc[-5:].max(),
                result.summary["bytes"]["server_to_server"],
            )
        )
        recorders.append(rec)
        results.append(result)

    args.out.mkdir(parents=True, exist_ok=True)
    distance_to_optimum(recorders, w_ls, tolerance=TOLERANCE, target_label="w_LS").savefig(
        args.out / "dfl_toy_distance.png", dpi=120
    )
    # Consensus within epochs: two epochs evaluated every 0.05 s, on the shipped link and a 3× slower one.
    zoom = []
    for latency in (0.1, 0.3):
        zoom.append(
            fedsim.run(
                SCENARIO,
                {"algorithm.epochs": 2, "eval.every_s": 0.05, "topology.link.latency_s": latency},
                save=False,
            )
        )
    consensus_error_vs_time(zoom, ["link latency 0.1 s", "link latency 0.3 s"]).savefig(
        args.out / "dfl_toy_consensus.png", dpi=120
    )
    server_graph(results[0]).savefig(args.out / "dfl_toy_graph.png", dpi=120)

    print(f"least-squares solution w_LS = ({w_ls[0]:.5f}, {w_ls[1]:.5f}); w* = (5, 2)")
    print()
    print(
        f"| γ | max ‖w_m − w_LS‖ after {args.epochs} epochs | max coordinate error | first epoch within 1e-2 | "
        "consensus error (last evals) | server-to-server bytes |"
    )
    print("|---|---|---|---|---|---|")
    for lr, coord, norm, first, cons, nbytes in rows:
        print(f"| {lr:g} | {norm:.2e} | {coord:.2e} | {first:.1f} | {cons:.1e} | {nbytes:,} |")
    print()
    print(
        f"wall time {time.perf_counter() - started:.0f} s; command: "
        f"python {' '.join(shlex.quote(a) for a in sys.argv)}"
    )


if __name__ == "__main__":
    main()
