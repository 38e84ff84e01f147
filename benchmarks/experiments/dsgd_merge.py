"""Gossip D-SGD and the single global merge (arXiv 2507.06542; ALGORITHMS.md §3.10, §5).

Runs ``scenarios/dsgd_merge.yaml`` (16 peers on digits, Dirichlet 0.1, random-r gossip) in these
variants:

- r = 0.2 and r = 0 (no gossip), each with one global merge after the last round: mean local
  accuracy against the merged model's accuracy over simulated time;
- r = 0.2 with periodic merges of a random fraction_r of the peers every 100 local steps,
  fraction_r ∈ {0, 0.25, 0.5, 1}: the gap between merged and mean local accuracy.

Prints a Markdown table and writes two figures. Expected shape: merged accuracy ≫ mean local
accuracy under Dirichlet 0.1; the gap closes as the merge fraction grows.

    python benchmarks/experiments/dsgd_merge.py --out docs/img
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
FRACTIONS = (0.0, 0.25, 0.5, 1.0)


def curves(result: fedsim.Result) -> pd.DataFrame:
    """Per evaluation time: mean local accuracy (servers ≥ 0) and merged accuracy (server −1)."""
    ev = result.evals
    local = ev[ev["server"] >= 0].groupby("sim_time")["accuracy"].mean()
    merged = ev[ev["server"] == -1].groupby("sim_time")["accuracy"].mean()
    return pd.DataFrame({"local": local, "merged": merged})


def gap_before_final(result: fedsim.Result) -> tuple[float, float, float]:
    """Mean local and merged accuracy over the second half of the run, before the final merge."""
    c = curves(result)
    c = c[c.index < result.summary["sim_time_s"]]
    half = c[c.index >= c.index.max() / 2]
    return (
        float(half["local"].mean()),
        float(half["merged"].mean()),
        float((half["merged"] - half["local"]).mean()),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="figure directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    base = {"seed": args.seed, "algorithm.rounds": args.rounds}

    def run(extra: dict) -> fedsim.Result:
        return fedsim.run(SCENARIO, {**base, **extra}, save=False)

    gossip = {"r=0.2": run({}), "r=0": run({"algorithm.r.r_start": 0.0})}
    merges = {}
    for f in FRACTIONS:
        merge = {"fraction_r": f, "every_steps": 100, "final_at": None}
        merges[f] = run({"algorithm.merge": merge})

    args.out.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    for (name, result), colour in zip(gossip.items(), ("tab:blue", "tab:orange"), strict=True):
        c = curves(result)
        ax.plot(c.index, c["merged"], color=colour, lw=2, label=f"{name}: merged model")
        ax.plot(c.index, c["local"], color=colour, lw=1.2, ls="--", label=f"{name}: mean local")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title("16 peers, Dirichlet 0.1; one global merge at the end")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    stats = [gap_before_final(merges[f]) for f in FRACTIONS]
    xs = np.arange(len(FRACTIONS))
    bx.bar(xs - 0.2, [s[1] for s in stats], 0.4, label="merged model", color="tab:blue")
    bx.bar(xs + 0.2, [s[0] for s in stats], 0.4, label="mean local", color="tab:gray")
    bx.set_xticks(xs, [f"{f:g}" for f in FRACTIONS])
    bx.set_xlabel("fraction_r: share of peers in each merge (every 100 local steps)")
    bx.set_ylabel("accuracy, mean over the second half")
    bx.set_title("Periodic partial merges (r = 0.2 gossip)")
    bx.set_ylim(0, 1)
    bx.grid(True, axis="y", alpha=0.3)
    bx.legend(fontsize=8, loc="lower right")
    fig.savefig(args.out / "dsgd_merge.png", dpi=120)

    print(
        "| run | mean local acc (2nd half) | merged acc (2nd half) | gap | final acc after "
        "the global merge | messages |"
    )
    print("|---|---|---|---|---|---|")
    for name, result in gossip.items():
        local, merged, gap = gap_before_final(result)
        final = curves(result)["local"].iloc[-1]
        msgs = int((result.events["status"] == "message").sum())
        print(
            f"| {name}, final merge | {local:.3f} | {merged:.3f} | {gap:+.3f} | {final:.3f} | {msgs} |"
        )
    for f, (local, merged, gap) in zip(FRACTIONS, stats, strict=True):
        msgs = int((merges[f].events["status"] == "message").sum())
        print(
            f"| r=0.2, fraction_r={f:g} every 100 steps | {local:.3f} | {merged:.3f} | "
            f"{gap:+.3f} | — | {msgs} |"
        )
    print()
    print(
        f"wall time {time.perf_counter() - started:.0f} s; command: "
        f"python {' '.join(shlex.quote(a) for a in sys.argv)}"
    )


if __name__ == "__main__":
    main()
