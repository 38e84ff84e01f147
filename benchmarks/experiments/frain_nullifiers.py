"""FRAIN under nullifiers (seed 000; ALGORITHMS.md §3.6–3.7, §5), CPU-sized.

Runs ``scenarios/frain_nullifiers.yaml`` (mnist1d, 21 nodes, Dirichlet 1.0, 10 nullifiers sending
all-zero models, every node training at once, staleness limit 16) for FedAvg, FedAsync (α = 0.6),
BRAIN, FRAIN with SLERP and FRAIN with LERP, once per seed; prints a Markdown table (final and best
test accuracy, mean ± sd over seeds; proposals applied / rejected / late; nullified models applied;
mean staleness of applied updates) and writes the accuracy-vs-time plot (mean ± 1 sd band) and the
table as CSV. The shape to check: FedAvg and FedAsync collapse to chance (0.1), BRAIN and FRAIN keep
learning, FRAIN-SLERP ≥ FRAIN-LERP.

    python benchmarks/experiments/frain_nullifiers.py --seeds 0 1 2 --time-s 150 --out docs/img

``--schemes`` picks a subset, ``--set`` adds overrides to every run (e.g. ``algorithm.drift=11``
for drifted nodes; keys a scheme's algorithm lacks are refused), ``--tag`` names the output files.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import fedsim
from fedsim.plots import accuracy_vs_time

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "frain_nullifiers.yaml"

SCHEMES: dict[str, list[str]] = {
    "FedAvg": ["algorithm.name=fedavg"],
    "FedAsync (α=0.6)": ["algorithm.name=fedasync", "algorithm.alpha=0.6"],
    "BRAIN": ["algorithm.name=brain"],
    "FRAIN (SLERP)": [],
    "FRAIN (LERP)": ["algorithm.merge=lerp"],
}


def row(label: str, seed: int, result: fedsim.Result) -> dict:
    s = result.summary
    counts = s["status_counts"]
    return {
        "scheme": label,
        "seed": seed,
        "final_acc": s["final_accuracy"],
        "best_acc": s["best_accuracy"],
        "applied": counts.get("applied", 0),
        "rejected": counts.get("rejected", 0),
        "late": counts.get("late", 0),
        "nullified_applied": s["byzantine_applied"],
        "mean_staleness": s["mean_staleness"],
        "wall_s": s["wall_time_s"],
    }


def table(rows: pd.DataFrame) -> str:
    lines = [
        "| scheme | final accuracy | best accuracy | applied | rejected | late "
        "| nullified applied | mean staleness |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, g in rows.groupby("scheme", sort=False):
        lines.append(
            f"| {label} | {g.final_acc.mean():.3f} ± {g.final_acc.std(ddof=1):.3f} "
            f"| {g.best_acc.mean():.3f} ± {g.best_acc.std(ddof=1):.3f} "
            f"| {g.applied.mean():.0f} | {g.rejected.mean():.0f} | {g.late.mean():.0f} "
            f"| {g.nullified_applied.mean():.0f} | {g.mean_staleness.mean():.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--time-s", type=float, default=150.0, help="simulated horizon")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="figure directory")
    parser.add_argument(
        "--schemes", nargs="+", choices=list(SCHEMES), default=list(SCHEMES), help="which to run"
    )
    parser.add_argument(
        "--set", dest="extra", nargs="*", default=[], help="extra key.path=value overrides"
    )
    parser.add_argument("--tag", default="frain_nullifiers", help="stem of the output files")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()

    rows, results, labels = [], [], []
    for label in args.schemes:
        for seed in args.seeds:
            sets = [*SCHEMES[label], *args.extra, f"seed={seed}", f"stop.time_s={args.time_s}"]
            result = fedsim.run(SCENARIO, sets, save=False)
            rows.append(row(label, seed, result))
            results.append(result)
            labels.append(label)
            print(
                f"{label} seed {seed}: final {result.summary['final_accuracy']:.3f} "
                f"({result.summary['wall_time_s']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / f"{args.tag}.csv", index=False)
    fig = accuracy_vs_time(results, labels=labels)
    extra = f", {' '.join(args.extra)}" if args.extra else ""
    fig.axes[0].set_title(
        f"mnist1d, 21 nodes, 10 nullifiers, S = 16{extra} ({len(args.seeds)} seeds, mean ± 1 sd)",
        fontsize=9,
    )
    fig.savefig(args.out / f"{args.tag}_accuracy.png", dpi=110)
    print(table(frame))
    print(
        f"\n{len(rows)} runs in {time.perf_counter() - started:.0f} s wall; command: "
        f"python {shlex.join(sys.argv)}"
    )


if __name__ == "__main__":
    main()
