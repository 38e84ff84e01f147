"""Wall time of whole shipped scenarios with each training backend, and whether their evals agree.

    OMP_NUM_THREADS=1 python benchmarks/bench_scenarios.py [--threads 1] [--time-s 300]

Each scenario runs once per backend (after a short warm-up run), in one process, for ``--time-s``
simulated seconds; the line says whether the three runs' accuracies agree to 6 decimals.
"""

from __future__ import annotations

import argparse
import time

import torch

import fedsim

SCENARIOS = (
    "scenarios/fedavg_deadline.yaml",
    "scenarios/fedbuff.yaml",
    "scenarios/quickstart.yaml",
)
BACKENDS = ("sequential", "batched", "auto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--time-s", type=float, default=300.0, help="simulated seconds per run")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| scenario | " + " | ".join(f"{b} s" for b in BACKENDS) + " | evals |")
    print("|---|" + "---:|" * len(BACKENDS) + "---|")
    for scenario in args.scenarios:
        walls, accuracies = [], []
        for backend in BACKENDS:
            overrides = {"training.backend": backend}
            fedsim.run(scenario, overrides, save=False, stop__time_s=20)  # warm-up
            started = time.perf_counter()
            result = fedsim.run(scenario, overrides, save=False, stop__time_s=args.time_s)
            walls.append(time.perf_counter() - started)
            accuracies.append(result.evals["accuracy"].round(6).tolist())
        same = all(a == accuracies[0] for a in accuracies)
        cells = " | ".join(f"{w:.1f}" for w in walls)
        print(f"| {scenario} | {cells} | {'identical' if same else 'DIFFER'} |")


if __name__ == "__main__":
    main()
