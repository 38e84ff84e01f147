"""The DFL toy (ALGORITHMS.md §3.8, §5): all servers agree and sit within 1e-2 of the least-squares
solution; a smaller step size γ gives a smaller bias but converges more slowly.

Runs ``scenarios/dfl_toy.yaml`` (5 servers on a ring, 5 clients each, T_C = 250, T_S = 25) once per
γ, prints a Markdown table (final distance of the worst server to the least-squares solution, first
epoch within 1e-2, consensus error, traffic) and writes three figures: ‖w_m − w_LS‖ vs simulated time
for every γ, the consensus error vs time, and the server graph.

    python benchmarks/experiments/dfl_toy.py --lrs 0.003 0.01 0.03 --out docs/img

The seed's sufficient condition for convergence is γ < 1/(L·T_C), L the largest smoothness constant
of the clients' losses (for the mean squared error, the largest eigenvalue of 2·XᵀX/n over clients).
``--results FILE`` writes, per γ, γ·L·T_C (below 1: the condition holds), the largest distance of a
server to the least-squares solution w_LS after chosen epochs and to the true w* = (5, 2) at the
end; ``--table FILE`` reprints its table:

    python benchmarks/experiments/dfl_toy.py --lrs 0.00015 0.003 0.01 --epochs 200 --eval-every-s 12.5 \
        --no-figures --results benchmarks/results/dfl_toy.json
"""

from __future__ import annotations

import argparse
import json
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


def smoothness(sim: Simulation) -> tuple[float, float]:
    """(L, μ): the largest and smallest eigenvalue of a client's MSE Hessian 2·XᵀX/n, over clients."""
    x = sim.data.x_train.double().cpu().numpy()
    eig = []
    for rows in sim.data.client_indices:
        X = np.c_[x[rows], np.ones(len(rows))]
        eig.append(np.linalg.eigvalsh(2 * X.T @ X / len(rows)))
    return float(max(e[-1] for e in eig)), float(min(e[0] for e in eig))


CHECKPOINTS = (25, 50, 100, 200)
"""Epochs after which the results file keeps the distance to w_LS."""


def table(results: dict) -> str:
    """The Markdown table of a results file written with ``--results``."""
    marks = [e for e in CHECKPOINTS if e <= results["epochs"]]
    lines = [
        f"L = {results['L']:.2f} (largest client smoothness), T_C = {results['T_C']}: the seed's "
        f"condition is γ < 1/(L·T_C) = {results['bound']:.3g}. w_LS = "
        f"({results['w_ls'][0]:.5f}, {results['w_ls'][1]:.5f}), ‖w_LS − w*‖ = "
        f"{results['ls_to_star']:.2e}. Largest distance over the {results['servers']} servers.",
        "",
        "| γ | γ·L·T_C | condition | "
        + " | ".join(f"‖w − w_LS‖, epoch {e}" for e in marks)
        + " | ‖w − w*‖, end | first epoch within 1e-2 of w_LS | consensus error, end |",
        "|---|---|---|" + "---|" * len(marks) + "---|---|---|",
    ]
    for r in results["rows"]:
        first = r["first_epoch_within"]
        lines.append(
            f"| {r['lr']:g} | {r['ratio']:.2f} | {'met' if r['ratio'] < 1 else 'broken'} | "
            + " | ".join(f"{r['to_ls'][str(e)]:.2e}" for e in marks)
            + f" | {r['to_star']:.2e} | {first if first is not None else 'never'} "
            f"| {r['consensus']:.1e} |"
        )
    return "\n".join(lines)


def _at_epochs(
    times: np.ndarray, dist: np.ndarray, epoch_s: float, epochs: int
) -> dict[str, float]:
    """The distance at the last evaluation of each checkpoint epoch."""
    out = {}
    for e in CHECKPOINTS:
        if e <= epochs:
            upto = np.flatnonzero(times <= e * epoch_s + 1e-9)
            out[str(e)] = float(dist[upto[-1]])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="figure directory")
    parser.add_argument(
        "--eval-every-s", type=float, help="evaluation period (default: scenario's)"
    )
    parser.add_argument("--no-figures", action="store_true", help="no figures, no zoomed runs")
    parser.add_argument("--results", type=Path, help="write the results file (JSON) here")
    parser.add_argument("--table", type=Path, help="print the table of this results file; no runs")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text(encoding="utf-8"))))
        return
    torch.set_num_threads(1)
    started = time.perf_counter()

    recorders, rows, results, records = [], [], [], []
    w_ls = None
    for lr in args.lrs:
        overrides = {"training.lr": lr, "algorithm.epochs": args.epochs}
        if args.eval_every_s is not None:
            overrides["eval.every_s"] = args.eval_every_s
        scenario = fedsim.load_scenario(SCENARIO, overrides)
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
        L, mu = smoothness(sim)
        t_c = scenario.training.local_steps
        records.append(
            {
                "lr": lr,
                "ratio": lr * L * t_c,
                "to_ls": _at_epochs(times, dist, epoch_s, args.epochs),
                "to_star": float(
                    np.linalg.norm(final - np.asarray(sim.data.meta["w_star"]), axis=1).max()
                ),
                "first_epoch_within": int(np.ceil(times[within[0]] / epoch_s - 1e-9))
                if len(within)
                else None,
                "consensus": float(result.evals["consensus_error"].iloc[-5:].max()),
                "wall_s": round(result.summary["wall_time_s"], 1),
            }
        )
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

    if args.results is not None:
        out = {
            "command": f"python {shlex.join(sys.argv)}" if argv is None else shlex.join(argv),
            "epochs": args.epochs,
            "T_C": t_c,
            "servers": len(sim.servers),
            "L": L,
            "mu": mu,
            "bound": 1 / (L * t_c),
            "w_ls": [float(v) for v in w_ls],
            "ls_to_star": float(np.linalg.norm(w_ls - np.asarray(sim.data.meta["w_star"]))),
            "rows": records,
        }
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
        print(table(out))
    if args.no_figures:
        return
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
