"""Time per update with real training, split into training, evaluation and simulator overhead.

    python benchmarks/bench_overhead.py [--scenario scenarios/quickstart.yaml] [--backend sequential]

The trainer and the evaluator time themselves (``summary['train_wall_s']``, ``['eval_wall_s']``);
the simulator's overhead is the rest of the run's wall time (event loop, timing models, trace rows,
Parquet writing, summary). Goal: overhead <= 10 % of the wall time.
"""

from __future__ import annotations

import argparse
import time

import fedsim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", default="scenarios/quickstart.yaml")
    parser.add_argument("--backend", default=None, help="training.backend override")
    args = parser.parse_args()
    overrides = {"training.backend": args.backend} if args.backend else {}
    fedsim.run(args.scenario, overrides, save=False, stop__time_s=30)  # warm-up (imports, caches)
    started = time.perf_counter()
    result = fedsim.run(args.scenario, overrides, save=False)
    wall = time.perf_counter() - started
    s = result.summary
    train, evaluation = s["train_wall_s"], s["eval_wall_s"]
    overhead = wall - train - evaluation
    n = s["updates"]
    print(
        f"scenario {args.scenario}: {n:,} updates, {s['jobs_trained']:,} jobs trained, {wall:.2f} s wall"
    )
    print()
    print("| part | wall s | share | per update (ms) |")
    print("|---|---|---|---|")
    for name, seconds in (
        ("training", train),
        ("evaluation", evaluation),
        ("simulator overhead", overhead),
    ):
        print(f"| {name} | {seconds:.2f} | {seconds / wall:.1%} | {seconds / n * 1e3:.3f} |")
    print(f"| total | {wall:.2f} | 100% | {wall / n * 1e3:.3f} |")


if __name__ == "__main__":
    main()
