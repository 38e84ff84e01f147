"""Time (or updates) to a target over seeds when some runs never reach it: censored figures.

A run that stops at its horizon without reaching the target is *censored*: its time to target is
only known to exceed the horizon. Such a cell is never averaged as if it were a measurement: it
shows how many seeds reached the target, and where some did not, the mean with the horizon put in
for the censored seeds, as a lower bound (``≥``). A comparison "A beats B" (lower is better) is
made only where A reached the target on every seed and the 95 % interval of the paired difference
A − B, with B's censored seeds at the horizon, lies below 0: B's true values are larger still, so
the true difference is lower than the one tested. Otherwise the verdict says what was seen.

Also the shared plumbing of the experiment scripts that use it: a worker pool, the results file.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stats import NO_DIFFERENCE, interval, paired


@dataclass(frozen=True)
class Censored:
    """Per-seed values with the seeds that never reached the target (value = the bound)."""

    values: Mapping[int, float]
    censored: frozenset[int]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def reached(self) -> int:
        return self.n - len(self.censored)

    def format(self, fmt: str = ".0f") -> str:
        """``mean ± half`` (all reached), ``≥ mean (k/n reached)`` or ``never (0/n reached)``."""
        if not self.censored:
            return interval(list(self.values.values())).format(fmt)
        if self.reached == 0:
            return f"> {min(self.values.values()):{fmt}} (0/{self.n} reached)"
        mean = math.fsum(self.values.values()) / self.n
        return f"≥ {mean:{fmt}} ({self.reached}/{self.n} reached)"


def censored_of(rows: Iterable[dict], value: str, reached: str = "reached") -> Censored:
    """The :class:`Censored` of ``rows`` (one per seed), ``value`` a column, ``reached`` a flag."""
    rows = list(rows)
    return Censored(
        {r["seed"]: float(r[value]) for r in rows},
        frozenset(r["seed"] for r in rows if not r[reached]),
    )


def compare(
    name_a: str, name_b: str, a: Censored, b: Censored, fmt: str = "+.0f"
) -> tuple[str, str]:
    """``(A − B interval, verdict)`` where lower is better, with censoring taken into account."""
    diff = paired(a.values, b.values)
    shown = diff.format(fmt) + (" (censored)" if a.censored or b.censored else "")
    if a.censored and b.censored:
        return shown, "both censored on some seeds"
    if diff.excludes_zero():
        a_ahead = diff.mean < 0
        winner, loser = (name_a, name_b) if a_ahead else (name_b, name_a)
        if not (a.censored if a_ahead else b.censored):
            return shown, f"{winner} beats {loser}"
        return shown, f"{NO_DIFFERENCE} ({winner} censored on some seeds)"
    return shown, NO_DIFFERENCE


def run_all(work: Callable[[Any], dict], tasks: list, jobs: int) -> list[dict]:
    """``work(task)`` for every task, in order; in ``jobs`` worker processes when above 1."""
    if jobs <= 1:
        return [work(t) for t in tasks]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(work, tasks))


def command_line(argv: list[str] | None) -> str:
    """The command that produced a results file, as written in the docs."""
    return f"python {shlex.join(sys.argv)}" if argv is None else shlex.join(argv)


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def experiment_parser(doc: str, presets: Iterable[str], datasets: Iterable[str], out: Path):
    """The flags every experiment script takes (issue 14): a preset, seeds, the dataset, its local
    files, the device, worker processes, the results file, and ``--table`` to reprint one."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(presets), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    parser.add_argument("--dataset", choices=sorted(datasets), help="override the preset's dataset")
    parser.add_argument("--data-path", help="data.path of a file dataset (cifar10, mnist_idx, ...)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: fedsim's choice)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--table", type=Path, help="print the tables of this results file; no runs")
    return parser


def preset(presets: Mapping[str, dict[str, Any]], args: Any, **overrides: Any) -> dict[str, Any]:
    """The chosen preset with ``--dataset``, ``--data-path`` and ``overrides`` that were given."""
    p = dict(presets[args.scale])
    given = {"dataset": args.dataset, "data_path": args.data_path, **overrides}
    p.update({key: value for key, value in given.items() if value is not None})
    return p


def run_and_write(
    work: Callable[[Any], dict],
    tasks: list,
    args: Any,
    argv: list[str] | None,
    table: Callable[[dict], str],
    **fields: Any,
) -> None:
    """Run the tasks, write the results file (command, seeds, ``fields``, rows), print its tables."""
    started = time.perf_counter()
    rows = run_all(work, tasks, args.jobs)
    wall = time.perf_counter() - started
    results = {
        "command": command_line(argv),
        "scale": args.scale,
        "seeds": args.seeds,
        **fields,
        "device": rows[0]["device"],
        "wall_s": round(wall, 1),
        "rows": rows,
    }
    write_results(args.out, results)
    print(table(results))
    print(f"\n{len(rows)} runs in {wall:.0f} s wall; command: {results['command']}")
