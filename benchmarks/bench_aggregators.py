"""Wall time of one call of each robust aggregator versus the number n and the size d of the updates.

Updates are standard normal float32 ``[n, d]`` rows with equal weights (``--weighted`` draws
weights in [0.5, 1.5] instead, which takes the sort-based paths of the median and trimmed mean).
Combinations whose estimated peak memory exceeds ``--max-gb`` are skipped. Prints a Markdown table
(median milliseconds per call) headed by the command line. Example:

    python benchmarks/bench_aggregators.py --n 10 100 1000 --d 10000 100000 1000000 --max-gb 2
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch

from fedsim.robust.aggregators import (
    centered_clipping,
    coordinate_median,
    geometric_median,
    krum,
    mean,
    trimmed_mean,
)


def _krum_f(n: int) -> int:
    return min(n // 5, (n - 3) // 2)


AGGREGATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": mean,
    "coordinate_median": coordinate_median,
    "trimmed_mean": lambda u, w: trimmed_mean(u, w, trim_fraction=0.2),
    "krum": lambda u, w: krum(u, w, f=_krum_f(len(u))),
    "multi_krum": lambda u, w: krum(u, w, f=_krum_f(len(u)), m=len(u) - _krum_f(len(u))),
    "geometric_median": geometric_median,
    "centered_clipping": lambda u, w: centered_clipping(u, w, tau=10.0, iters=3),
}
"""What is timed: defaults of the scenario configs; Krum with f = n/5 (multi-Krum m = n − f)."""

EXTRA_MEMORY = {
    "mean": 1.0,
    "coordinate_median": 2.0,
    "trimmed_mean": 0.5,
    "krum": 2.5,
    "multi_krum": 2.5,
    "geometric_median": 1.5,
    "centered_clipping": 2.5,
}
"""Rough peak temporaries of each aggregator, in multiples of the float32 input."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000], help="updates per call")
    p.add_argument(
        "--d", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="update size"
    )
    p.add_argument("--aggregators", nargs="+", default=list(AGGREGATORS), choices=AGGREGATORS)
    p.add_argument("--max-gb", type=float, default=2.0, help="skip bigger combinations")
    p.add_argument("--weighted", action="store_true", help="unequal weights (general paths)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per cell (at least)")
    p.add_argument("--min-rounds", type=int, default=3, help="calls per cell (at least)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(args.seed)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def time_ms(fn: Callable[[], torch.Tensor]) -> float:
        fn()  # warm-up
        sync()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < args.min_rounds or time.perf_counter() - start < args.min_time:
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    rows: list[tuple[int, int, dict[str, float | None]]] = []
    for n in args.n:
        for d in args.d:
            input_gb = 4 * n * d / 1e9
            fits = {a: input_gb * (1 + EXTRA_MEMORY[a]) <= args.max_gb for a in args.aggregators}
            cells: dict[str, float | None] = dict.fromkeys(args.aggregators)
            if any(fits.values()):
                u = torch.randn(n, d, generator=gen, device=device)
                w = torch.ones(n, device=device)
                if args.weighted:
                    w = 0.5 + torch.rand(n, generator=gen, device=device)
                for a in args.aggregators:
                    if fits[a]:
                        cells[a] = time_ms(lambda a=a, u=u, w=w: AGGREGATORS[a](u, w))
                del u
            rows.append((n, d, cells))
            print(f"n={n} d={d}: done", file=sys.stderr, flush=True)

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"`python {shlex.join(sys.argv)}`\n")
    print(
        f"device {device} ({dev or platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; float32 updates, "
        f"{'unequal' if args.weighted else 'equal'} weights; median ms per call; "
        f"— = skipped (estimated peak over {args.max_gb:g} GB)\n"
    )
    head = ["n", "d", *args.aggregators]
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for n, d, cells in rows:
        shown = ["—" if cells[a] is None else f"{cells[a]:,.1f}" for a in args.aggregators]
        print("| " + " | ".join([str(n), f"{d:.0e}".replace("e+0", "e"), *shown]) + " |")


if __name__ == "__main__":
    main()
