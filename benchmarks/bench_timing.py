"""Timing-only throughput of the simulator, beside the raw SimPy event rate measured in the same run.

    python benchmarks/bench_timing.py [--updates 1000000]

Prints a Markdown table: simulated client updates per wall-clock second for FedAsync with 1000 jobs
in flight (1k and 100k clients), and the rate of a bare SimPy loop doing the least a job needs (one
timeout per job with an exponential delay and a callback that schedules the next), so the ratio says
what the simulator's bookkeeping (sampling, timing models, trace rows) costs on top of SimPy.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import simpy

import fedsim


def raw_simpy_rate(n_events: int, in_flight: int = 1000) -> float:
    """Events/s of a minimal SimPy model: ``in_flight`` timeouts, each re-armed by its callback."""
    env = simpy.Environment()
    rng = np.random.default_rng(0)
    delays = rng.exponential(5.0, n_events + in_flight).tolist()
    state = {"left": n_events, "i": 0}

    def rearm(_event: simpy.Event) -> None:
        if state["left"]:
            state["left"] -= 1
            state["i"] += 1
            env.timeout(delays[state["i"]]).callbacks.append(rearm)

    for i in range(in_flight):
        env.timeout(delays[i]).callbacks.append(rearm)
        state["i"] = i
    started = time.perf_counter()
    env.run()
    return n_events / (time.perf_counter() - started)


def fedsim_rate(clients: int, updates: int, in_flight: int = 1000) -> tuple[float, float]:
    scenario = {
        "name": f"bench_timing_{clients}",
        "seed": 0,
        "stop": {"time_s": None, "max_updates": updates},
        "training": "none",
        "clients": {"count": clients, "compute": {"dist": "exponential", "mean_s": 5.0}},
        "algorithm": {"name": "fedasync", "concurrency": in_flight},
        "eval": {"every_s": 1000.0},
    }
    started = time.perf_counter()
    result = fedsim.run(scenario, save=False)
    wall = time.perf_counter() - started
    return result.summary["updates"] / wall, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--updates", type=int, default=1_000_000)
    args = parser.parse_args()
    raw = raw_simpy_rate(args.updates)
    print(
        f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    print()
    print("| run | updates | wall s | updates/s | ratio to raw SimPy |")
    print("|---|---|---|---|---|")
    print(f"| raw SimPy (1 timeout + callback per job) | {args.updates:,} | | {raw:,.0f} | 1.00 |")
    for clients in (1_000, 100_000):
        rate, wall = fedsim_rate(clients, args.updates)
        print(
            f"| fedsim FedAsync, {clients:,} clients, 1,000 in flight | {args.updates:,} | "
            f"{wall:.1f} | {rate:,.0f} | {rate / raw:.2f} |"
        )


if __name__ == "__main__":
    main()
