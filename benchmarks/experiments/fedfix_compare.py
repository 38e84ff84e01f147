"""FedFix against synchronous and asynchronous FedAvg, FedAsync, FedBuff and FedBuff-c (ALGORITHMS.md §5).

Runs ``scenarios/fedfix_compare.yaml`` (digits, 20 clients with F-80 speeds and 2 stragglers) once per
scheme and seed, then prints a Markdown table (final accuracy, time to the target accuracy, mean
staleness, server versions) and writes the accuracy-vs-time figure. The paper's expected shape:
asynchronous FedAvg fast but noisy (or unstable), FedFix smooth and faster than synchronous FedAvg.

    python benchmarks/experiments/fedfix_compare.py --seeds 0 1 2 --out docs/img
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fedsim
from fedsim.plots import accuracy_vs_time, time_to_target_s

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "fedfix_compare.yaml"

# label → algorithm section; every client of the 20 is busy in every scheme (FedAvg: full cohort).
SCHEMES: dict[str, dict] = {
    "FedAvg (sync, 20/round)": {"name": "fedavg", "cohort_size": 20},
    "FedAsync α=0.6 poly": {"name": "fedasync", "concurrency": 20},
    "FedBuff K=5": {"name": "fedbuff", "concurrency": 20, "buffer_size": 5},
    "FedFix Δt=0.5": {"name": "fedfix", "period_s": 0.5},
    "FedBuff-c c=5": {"name": "fedbuff_c", "buffer_size": 5},
    "Async FedAvg η_g=1": {"name": "async_fedavg"},
    "Async FedAvg η_g=0.1": {"name": "async_fedavg", "server_lr": 0.1},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--time-s", type=float, default=60.0, help="simulated horizon")
    parser.add_argument("--target", type=float, default=0.9, help="target test accuracy")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="figure directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    results: dict[str, list] = {label: [] for label in SCHEMES}
    started = time.perf_counter()
    for label, algorithm in SCHEMES.items():
        for seed in args.seeds:
            overrides = {"seed": seed, "stop.time_s": args.time_s, "algorithm": algorithm}
            result = fedsim.run(SCENARIO, overrides, save=False)
            results[label].append(result)
            print(f"  {label} seed {seed}: {result.summary['wall_time_s']:.1f} s", file=sys.stderr)
    wall = time.perf_counter() - started

    print(f"`python {' '.join(shlex.quote(a) for a in sys.argv)}` ({wall:.0f} s wall)\n")
    print(
        f"| scheme | final accuracy | best accuracy | time to {args.target:g} (s) "
        "| mean staleness | server versions |"
    )
    print("|---|---|---|---|---|---|")
    for label, runs in results.items():
        final = [r.summary["final_accuracy"] for r in runs]
        best = [r.summary["best_accuracy"] for r in runs]
        ttt = [time_to_target_s(r, args.target) for r in runs]
        reached = [t for t in ttt if not math.isnan(t)]
        ttt_text = f"{np.mean(reached):.0f} ± {_sd(reached):.0f}" if reached else "never"
        if reached and len(reached) < len(runs):
            ttt_text += f" ({len(reached)}/{len(runs)} seeds)"
        staleness = [r.summary["mean_staleness"] for r in runs]
        versions = [r.summary["versions"] for r in runs]
        print(
            f"| {label} | {np.mean(final):.3f} ± {_sd(final):.3f} "
            f"| {np.mean(best):.3f} ± {_sd(best):.3f} | {ttt_text} "
            f"| {np.mean(staleness):.2f} | {np.mean(versions):.0f} |"
        )

    args.out.mkdir(parents=True, exist_ok=True)
    flat = [r for runs in results.values() for r in runs]
    labels = [label for label, runs in results.items() for _ in runs]
    fig = accuracy_vs_time(flat, labels=labels)
    fig.axes[0].set_title(
        f"digits, 20 clients (F-80 speeds, 2 stragglers ×5): {len(args.seeds)} seeds per scheme"
    )
    path = args.out / "fedfix_compare_accuracy.png"
    fig.savefig(path, dpi=110)
    print(f"\nfigure: {path}")


def _sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


if __name__ == "__main__":
    main()
