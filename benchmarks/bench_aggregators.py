"""Wall time of one call of each aggregator and pre-aggregator, and the geometric median's accuracy.

Updates are standard normal float32 ``[n, d]`` rows with equal weights (``--weighted`` draws
weights in [0.5, 1.5] instead, which takes the sort-based paths of the median and trimmed mean).
Rules use ``f = ⌊n/5⌋``, except the subset searches MDA and SMEA, whose ``f`` keeps ``C(n, f)``
near 5,000 subsets (4 at n = 20, 2 at n = 100, 1 at n = 1000); rules named in :data:`SKIPPED` at an
``n`` are not run there (the reason is written in the results), nor are combinations whose
estimated peak memory exceeds ``--max-gb``. A call slower than ``--min-time`` is timed once (no
warm-up); faster ones are repeated and the median is kept. Examples:

    python benchmarks/bench_aggregators.py --threads 1 --out benchmarks/results/aggregators.json
    python benchmarks/bench_aggregators.py --gm-tolerance --out benchmarks/results/geometric_median_tolerance.json
    python benchmarks/bench_aggregators.py --table benchmarks/results/aggregators.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fedsim.robust.aggregators import (
    centered_clipping,
    coordinate_median,
    geometric_median,
    krum,
    mean,
    trimmed_mean,
)
from fedsim.robust.catalogue import caf, mda, meamed, monna, smea
from fedsim.robust.preaggregators import arc, bucketing, nnm, static_clipping

Rule = Callable[[torch.Tensor, torch.Tensor], object]


def _f(n: int) -> int:
    return n // 5


def _krum_f(n: int) -> int:
    return min(n // 5, (n - 3) // 2)


def _subset_f(n: int) -> int:
    """The f of the subset searches: C(n, f) near 5,000 subsets."""
    return max(f for f in range(n // 2) if math.comb(n, f) <= 6_000)


def _shuffle() -> torch.Generator:
    return torch.Generator().manual_seed(0)


AGGREGATORS: dict[str, Callable[[int], Rule]] = {
    "mean": lambda n: mean,
    "coordinate_median": lambda n: coordinate_median,
    "trimmed_mean": lambda n: lambda u, w: trimmed_mean(u, w, trim_fraction=0.2),
    "krum": lambda n: lambda u, w: krum(u, w, f=_krum_f(n)),
    "multi_krum": lambda n: lambda u, w: krum(u, w, f=_krum_f(n), m=n - _krum_f(n)),
    "geometric_median": lambda n: geometric_median,
    "centered_clipping": lambda n: lambda u, w: centered_clipping(u, w, tau=10.0, iters=3),
    "mda": lambda n: lambda u, w: mda(u, w, f=_subset_f(n)),
    "smea": lambda n: lambda u, w: smea(u, w, f=_subset_f(n)),
    "caf": lambda n: lambda u, w: caf(u, w, f=_f(n)),
    "monna": lambda n: lambda u, w: monna(u, w, f=_f(n)),
    "meamed": lambda n: lambda u, w: meamed(u, w, f=_f(n)),
}
"""Aggregator → its call at ``n`` rows (scenario defaults otherwise)."""

PRE_AGGREGATORS: dict[str, Callable[[int], Rule]] = {
    "nnm": lambda n: lambda u, w: nnm(u, w, f=_f(n)),
    "bucketing": lambda n: lambda u, w: bucketing(u, w, size=2, generator=_shuffle()),
    "arc": lambda n: lambda u, w: arc(u, w, f=_f(n)),
    "clipping": lambda n: lambda u, w: static_clipping(u, w, threshold=1.0),
}
"""Pre-aggregator → its call at ``n`` rows (bucketing: buckets of 2)."""

SKIPPED = {
    ("smea", 1000): "C(1000, 1) eigendecompositions of 999 × 999 matrices (about 1e12 flops)",
}
"""(rule, n) not run, with why."""

EXTRA_MEMORY = {"nnm": 2.0, "meamed": 3.0, "coordinate_median": 2.0, "trimmed_mean": 0.5}
"""Rough peak temporaries in multiples of the float32 input (2.5 where not listed)."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[20, 100, 1000], help="updates per call")
    p.add_argument("--d", type=int, default=100_000, help="update size")
    p.add_argument("--rules", nargs="+", default=[*AGGREGATORS, *PRE_AGGREGATORS])
    p.add_argument("--max-gb", type=float, default=4.0, help="skip bigger combinations")
    p.add_argument("--weighted", action="store_true", help="unequal weights (general paths)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per cell (at least)")
    p.add_argument("--min-rounds", type=int, default=3, help="calls per fast cell (at least)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gm-tolerance", action="store_true", help="the geometric median's accuracy")
    p.add_argument("--out", type=Path, help="write the results (JSON) here")
    p.add_argument("--table", type=Path, help="print the docs table of a results file")
    return p.parse_args()


def _machine() -> dict:
    return {
        "processor": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _time_ms(fn: Callable[[], object], min_time: float, min_rounds: int) -> tuple[float, int]:
    """Median milliseconds per call and the calls timed."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first >= min_time:
        return 1e3 * first, 1
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_rounds or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), len(times)


def run_costs(args: argparse.Namespace) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for n in args.n:
        u = torch.randn(n, args.d, generator=gen)
        w = 0.5 + torch.rand(n, generator=gen) if args.weighted else torch.ones(n)
        input_gb = 4 * n * args.d / 1e9
        cells: dict[str, dict] = {}
        for rule in args.rules:
            make = AGGREGATORS.get(rule) or PRE_AGGREGATORS[rule]
            if (rule, n) in SKIPPED:
                cells[rule] = {"skipped": SKIPPED[rule, n]}
                continue
            if input_gb * (1 + EXTRA_MEMORY.get(rule, 2.5)) > args.max_gb:
                cells[rule] = {"skipped": f"estimated peak over {args.max_gb:g} GB"}
                continue
            call = make(n)
            ms, calls = _time_ms(
                lambda call=call, u=u, w=w: call(u, w), args.min_time, args.min_rounds
            )
            cells[rule] = {"ms": ms, "calls": calls}
            print(f"n={n} {rule}: {ms:,.1f} ms", file=sys.stderr, flush=True)
        rows.append({"n": n, "loadavg": list(os.getloadavg()), "cells": cells})
        del u
    return {
        "kind": "costs",
        "command": "python " + shlex.join(["benchmarks/bench_aggregators.py", *sys.argv[1:]]),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": _machine(),
        "d": args.d,
        "weighted": args.weighted,
        "aggregators": [r for r in args.rules if r in AGGREGATORS],
        "pre_aggregators": [r for r in args.rules if r in PRE_AGGREGATORS],
        "f": {str(n): {"f": _f(n), "krum": _krum_f(n), "subsets": _subset_f(n)} for n in args.n},
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------------
# The geometric median's accuracy at its defaults


def _objective(z: np.ndarray, u: np.ndarray) -> float:
    return float(np.linalg.norm(u - z, axis=1).sum())


def _byzfl_weiszfeld(u: np.ndarray, nu: float = 0.1, iters: int = 3) -> np.ndarray:
    """ByzFL 0.0.11's defaults as its documentation states them: smoothed Weiszfeld from zero,
    distances below ``nu`` counted as ``nu``, ``iters`` steps."""
    z = np.zeros(u.shape[1])
    for _ in range(iters):
        beta = 1.0 / np.maximum(np.linalg.norm(u - z, axis=1), nu)
        z = (beta[:, None] * u).sum(0) / beta.sum()
    return z


def run_gm_tolerance(args: argparse.Namespace) -> dict:
    """Relative objective gap ``(F(z) − F*) / F*`` and distance ``‖z − z*‖ / ‖z*‖`` of fedsim's
    defaults (float32 rows, as in a run) and ByzFL's, against ``z*`` from 10,000 float64
    iterations with tol 0 and eps 1e-12. Honest rows ``N(1, 1/d)`` per coordinate (norm about
    √d), a fifth far rows ``N(−5, 1/d)``."""
    rows = []
    for n in (20, 100):
        for seed in range(5):
            rng = np.random.default_rng(seed)
            d = 1_000
            u = rng.normal(1.0, 1 / math.sqrt(d), size=(n, d))
            u[: n // 5] = rng.normal(-5.0, 1 / math.sqrt(d), size=(n // 5, d))
            exact = geometric_median(torch.tensor(u), tol=0.0, max_iter=10_000, eps=1e-12).numpy()
            best = _objective(exact, u)
            ours = geometric_median(torch.tensor(u, dtype=torch.float32)).double().numpy()
            byzfl = _byzfl_weiszfeld(u)
            rows.append(
                {
                    "n": n,
                    "seed": seed,
                    "fedsim_gap": (_objective(ours, u) - best) / best,
                    "fedsim_distance": float(np.linalg.norm(ours - exact) / np.linalg.norm(exact)),
                    "byzfl_gap": (_objective(byzfl, u) - best) / best,
                    "byzfl_distance": float(np.linalg.norm(byzfl - exact) / np.linalg.norm(exact)),
                }
            )
    return {
        "kind": "gm_tolerance",
        "command": "python " + shlex.join(["benchmarks/bench_aggregators.py", *sys.argv[1:]]),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": _machine(),
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------------
# Tables


def table(results: dict) -> str:
    """The markdown of docs/performance.md ("Robust aggregators") or docs/robustness.md (the
    geometric median's accuracy) for ``results``."""
    if results["kind"] == "gm_tolerance":
        return _gm_table(results)
    names = results["aggregators"] + results["pre_aggregators"]
    lines = [
        "| rule | " + " | ".join(f"n = {row['n']:,}" for row in results["rows"]) + " |",
        "|---|" + "---:|" * len(results["rows"]),
    ]
    skipped = []
    for name in names:
        shown = []
        for row in results["rows"]:
            cell = row["cells"][name]
            if "ms" in cell:
                shown.append(f"{cell['ms']:,.1f}")
            else:
                shown.append("—")
                skipped.append(f"{name} at n = {row['n']:,}: {cell['skipped']}")
        pre = " (pre)" if name in results["pre_aggregators"] else ""
        lines.append(f"| `{name}`{pre} | " + " | ".join(shown) + " |")
    m = results["machine"]
    f = results["f"]
    loads = ", ".join(f"{row['loadavg'][0]:.1f}" for row in results["rows"])
    lines += [
        "",
        f"Median ms per call; float32 updates of d = {results['d']:,}, "
        f"{'unequal' if results['weighted'] else 'equal'} weights; f = ⌊n/5⌋ "
        f"(Krum {', '.join(str(v['krum']) for v in f.values())}; MDA and SMEA "
        f"{', '.join(str(v['subsets']) for v in f.values())}, so that C(n, f) stays near 5,000); "
        f"bucketing in buckets of 2, clipping at norm 1. CPU ({m['processor']}), {m['cores']} "
        f"cores, {m['threads']} torch thread(s), torch {m['torch']}, load average {loads}; "
        f"{results['date_utc']} UTC.",
    ]
    if skipped:
        lines += ["", "Skipped (—): " + "; ".join(skipped) + "."]
    return "\n".join(lines)


def _gm_table(results: dict) -> str:
    lines = [
        "| n | fedsim objective gap | fedsim distance | ByzFL objective gap | ByzFL distance |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in sorted({row["n"] for row in results["rows"]}):
        rows = [row for row in results["rows"] if row["n"] == n]
        worst = {key: max(row[key] for row in rows) for key in rows[0] if key not in ("n", "seed")}
        lines.append(
            f"| {n} | {worst['fedsim_gap']:.1e} | {worst['fedsim_distance']:.1e} | "
            f"{worst['byzfl_gap']:.1e} | {worst['byzfl_distance']:.1e} |"
        )
    lines += [
        "",
        f"Worst of {len(results['rows']) // 2} seeds; objective gap (F(z) − F*)/F*, distance "
        "‖z − z*‖/‖z*‖ against 10,000 float64 Weiszfeld steps. fedsim: defaults (tol 1e-6, "
        "max_iter 100, eps 1e-6) on float32 rows; ByzFL: its smoothed Weiszfeld as documented, "
        "re-implemented in the script, at its defaults (nu 0.1, T 3, from zero). d = 1,000, "
        f"a fifth of the rows far away; {results['date_utc']} UTC.",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text(encoding="utf-8"))))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run_gm_tolerance(args) if args.gm_tolerance else run_costs(args)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(table(results))


if __name__ == "__main__":
    main()
