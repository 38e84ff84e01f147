"""Make the example figures of docs/plotting.md that are missing from docs/img/.

    python docs/gen_images.py            # only the missing ones
    python docs/gen_images.py --force    # every figure this script knows, overwriting
    python docs/gen_images.py label_distribution time_to_target   # just these

Each figure comes from real, seeded runs of the shipped scenarios (in memory, ``save=False``), so the
images show what a user gets. Not run by the tests; a few minutes on 2 CPU cores with ``--force``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure

import fedsim
from fedsim import plots

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
SCENARIOS = ROOT / "scenarios"
AUTO = {"training.backend": "auto"}


def _run(name: str, overrides: dict | None = None) -> fedsim.Result:
    return fedsim.run(SCENARIOS / f"{name}.yaml", {**AUTO, **(overrides or {})}, save=False)


def accuracy_seeds() -> Figure:
    """Quickstart (3 seeds), FedBuff (2 seeds) and FedAsync with stragglers, 300 simulated s."""
    short = {"stop.time_s": 300}
    runs = [_run("quickstart", {**short, "seed": s}) for s in (0, 1, 2)]
    runs += [_run("fedbuff", {**short, "seed": s}) for s in (0, 1)]
    runs.append(_run("fedasync_stragglers", short))
    return plots.accuracy_vs_time(runs)


def staleness() -> Figure:
    """Staleness histogram and CDF of the same runs."""
    short = {"stop.time_s": 300}
    runs = [_run("quickstart", {**short, "seed": s}) for s in (0, 1, 2)]
    runs += [_run("fedbuff", {**short, "seed": s}) for s in (0, 1)]
    runs.append(_run("fedasync_stragglers", short))
    return plots.staleness(runs)


def staleness_time() -> Figure:
    """Staleness over time of FedAsync with 30 % stragglers."""
    return plots.staleness_over_time(_run("fedasync_stragglers", {"stop.time_s": 300}))


def timeline_fedavg_deadline() -> Figure:
    """Client timeline of FedAvg with a deadline and over-selection."""
    return plots.client_timeline(_run("fedavg_deadline", {"stop.time_s": 300}))


def contribution_fedavg() -> Figure:
    """Per-client contribution of a timing-only FedAvg run."""
    result = _run("timing_only_1m", {"algorithm.name": "fedavg", "stop.max_updates": 5000})
    return plots.client_contribution(result, speeds=plots.client_speeds(result))


def time_to_target() -> Figure:
    """Time to 85 % test accuracy vs straggler fraction, FedAvg vs FedAsync vs FedBuff, 2 seeds."""
    algorithms = {
        "fedavg": {"algorithm.name": "fedavg", "algorithm.cohort_size": 10},
        "fedasync": {"algorithm.name": "fedasync", "algorithm.concurrency": 20},
        "fedbuff": {
            "algorithm.name": "fedbuff",
            "algorithm.concurrency": 20,
            "algorithm.buffer_size": 5,
        },
    }
    runs = []
    for algo in algorithms.values():
        for fraction in (0.0, 0.1, 0.3):
            for seed in (0, 1):
                runs.append(
                    _run(
                        "quickstart",
                        {
                            **algo,
                            "seed": seed,
                            "clients.stragglers.fraction": fraction,
                            "stop.time_s": 1000,
                            "stop.target_accuracy": 0.85,
                        },
                    )
                )
    table = plots.time_to_target_table(runs, 0.85)
    return plots.time_to_target(table, target=0.85)


def label_distribution() -> Figure:
    """Dirichlet(0.5) label skew of the quickstart partition, first 30 of its 100 clients."""
    scenario = fedsim.load_scenario(SCENARIOS / "quickstart.yaml")
    counts = plots.client_label_counts(scenario)[:30]
    return plots.label_distribution(
        counts,
        title="Label distribution — quickstart (digits, Dirichlet α = 0.5), clients 0–29 of 100",
    )


@functools.cache
def _sleepy_quickstart() -> fedsim.Result:
    """The quickstart with half the clients asleep at any time: on/off spells of 2 minutes on
    average (Markov), so clients differ in how long they were online."""
    spells = {"dist": "exponential", "mean_s": 120.0}
    return _run(
        "quickstart",
        {"clients.availability": {"kind": "markov", "online": spells, "offline": spells}},
    )


def online_quickstart() -> Figure:
    """Clients online and test accuracy of the quickstart with sleepy clients."""
    return plots.online_clients(_sleepy_quickstart())


def participation_quickstart() -> Figure:
    """Accepted updates against the share of the run online, same run."""
    return plots.participation(_sleepy_quickstart())


def timeline_sleepy() -> Figure:
    """Client timeline of the same run: offline spans hatched."""
    return plots.client_timeline(_sleepy_quickstart(), first_n=12, time_range=(0, 400))


FIGURES: dict[str, Callable[[], Figure]] = {
    "accuracy_seeds": accuracy_seeds,
    "staleness": staleness,
    "staleness_time": staleness_time,
    "timeline_fedavg_deadline": timeline_fedavg_deadline,
    "contribution_fedavg": contribution_fedavg,
    "time_to_target": time_to_target,
    "label_distribution": label_distribution,
    "online_quickstart": online_quickstart,
    "participation_quickstart": participation_quickstart,
    "timeline_sleepy": timeline_sleepy,
}
"""PNG stem in docs/img → how it is made."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"figures to make: {', '.join(FIGURES)}")
    parser.add_argument("--force", action="store_true", help="overwrite existing images")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figure(s) {unknown}; known: {', '.join(FIGURES)}")
    IMG.mkdir(parents=True, exist_ok=True)
    for name in args.names or FIGURES:
        path = IMG / f"{name}.png"
        if path.exists() and not (args.force or args.names):
            continue
        FIGURES[name]().savefig(path, dpi=110)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
