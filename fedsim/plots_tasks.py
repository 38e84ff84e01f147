"""Figures of multi-task runs (FedAST, Sync-ST): per-task accuracy over time, clients per task.

Both read only a run's traces: the ``task`` column of ``evals`` and ``events``. Like
:mod:`fedsim.plots`, figures are built with ``Figure(...)`` (no pyplot) and returned.

>>> from fedsim import plots_tasks
>>> plots_tasks.task_accuracy({"FedAST": r1, "Sync-ST": r2})   # doctest: +SKIP
>>> plots_tasks.clients_per_task(r1)                           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from fedsim.result import Result

TIME_LABEL = "simulated time (s)"


def task_names(result: Result) -> list[str]:
    """Names of a run's tasks (its scenario's ``algorithm.tasks``; ``task{i}`` otherwise)."""
    tasks = getattr(result.scenario.algorithm, "tasks", None) or []
    n = int(result.evals["task"].max()) + 1 if len(result.evals) else len(tasks)
    names = []
    for i in range(max(n, len(tasks))):
        cfg = tasks[i] if i < len(tasks) else None
        data = getattr(cfg, "data", None) or result.scenario.data
        names.append((cfg.name if cfg is not None else None) or f"task{i}-{data.dataset}")
    return names


def task_targets(result: Result) -> list[float | None]:
    tasks = getattr(result.scenario.algorithm, "tasks", None) or []
    return [t.target_accuracy for t in tasks]


def _as_runs(runs: Result | Mapping[str, Result] | Sequence[Result]) -> dict[str, Result]:
    if isinstance(runs, Result):
        return {runs.scenario.algorithm.name: runs}
    if isinstance(runs, Mapping):
        return dict(runs)
    return {f"{r.scenario.algorithm.name} (seed {r.scenario.seed})": r for r in runs}


def task_accuracy(
    runs: Result | Mapping[str, Result] | Sequence[Result], *, width: float = 4.2
) -> Figure:
    """One panel per task: test accuracy over simulated time for each run, with the target.

    ``runs`` maps a legend label to a Result (or is one Result, or a list). A dot marks the first
    evaluation at or above the task's target in each run.
    """
    runs = _as_runs(runs)
    first = next(iter(runs.values()))
    names, targets = task_names(first), task_targets(first)
    n = len(names)
    fig = Figure(figsize=(width * n, 3.4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    colors = colormaps["tab10"].colors
    for m, ax in enumerate(axes):
        for k, (label, result) in enumerate(runs.items()):
            ev = result.evals[result.evals["task"] == m].sort_values("sim_time")
            color = colors[k % len(colors)]
            ax.plot(ev["sim_time"], ev["accuracy"], color=color, label=label, lw=1.4)
            target = targets[m] if m < len(targets) else None
            if target is not None:
                hit = ev[ev["accuracy"] >= target]
                if len(hit):
                    ax.plot(hit["sim_time"].iloc[0], hit["accuracy"].iloc[0], "o", color=color)
        target = targets[m] if m < len(targets) else None
        if target is not None:
            ax.axhline(target, color="0.4", ls="--", lw=1)
            ax.annotate(
                f"target {target:g}",
                (0.01, target),
                xycoords=("axes fraction", "data"),
                ha="left",
                va="bottom",
                fontsize=8,
                color="0.3",
            )
        ax.set_title(names[m])
        ax.set_xlabel(TIME_LABEL)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[-1].legend(loc="lower right", fontsize=8)
    return fig


def clients_in_flight(result: Result, grid: np.ndarray) -> pd.DataFrame:
    """Jobs in flight per task at each time of ``grid`` (rows: times; columns: task index).

    A job counts from its dispatch until its row's time (arrival, cancellation, drop, or the stop).
    """
    ev = result.events[result.events["status"] != "message"]
    out = {}
    for m, rows in ev.groupby("task"):
        starts = np.sort(rows["dispatched_at"].to_numpy())
        ends = np.sort(rows["sim_time"].to_numpy())
        out[int(m)] = np.searchsorted(starts, grid, side="right") - np.searchsorted(
            ends, grid, side="right"
        )
    return pd.DataFrame(out, index=grid).sort_index(axis=1)


def clients_per_task(
    result: Result, *, bins: int = 120, ax_title: str | None = None, samples: int = 20
) -> Figure:
    """Stacked area: mean number of clients working on each task per time bin (FedAST's ``a_m``).

    Each bin shows the time-average of jobs in flight (sampled ``samples`` times per bin), so a
    synchronous run's barrier waits read as a lower band rather than as spikes. Reallocations and
    finished tasks show as shifts between the bands; the top edge is the mean number of busy clients.
    """
    horizon = float(result.events["sim_time"].max()) if len(result.events) else 0.0
    edges = np.linspace(0.0, horizon, bins + 1)
    fine = np.linspace(0.0, horizon, bins * samples, endpoint=False) + horizon / (
        2 * bins * samples
    )
    counts = clients_in_flight(result, fine)
    means = counts.groupby(np.arange(len(fine)) // samples).mean()
    names = task_names(result)
    fig = Figure(figsize=(8.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    colors = colormaps["tab10"].colors
    labels = [names[m] if m < len(names) else f"task{m}" for m in counts.columns]
    ax.stackplot(
        edges[:-1],
        *[means[m].to_numpy() for m in counts.columns],
        labels=labels,
        colors=[colors[m % len(colors)] for m in counts.columns],
        step="post",
        alpha=0.85,
    )
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(f"clients training\n(mean per {horizon / bins:.2g} s bin)")
    ax.set_xlim(0, horizon)
    ax.set_title(ax_title or f"clients per task — {result.scenario.name}")
    fig.legend(loc="outside right upper", fontsize=8, title="task")
    ax.grid(alpha=0.3)
    return fig


def time_to_targets(result: Result) -> dict[str, Any]:
    """First evaluation at or above each task's target accuracy (None: never), and the maximum.

    Uses the evals trace (the eval schedule); the algorithm's own checks after every server step
    are finer (``Simulation.algorithm.summary_extra()``).
    """
    names, targets = task_names(result), task_targets(result)
    per_task = {}
    for m, name in enumerate(names):
        target = targets[m] if m < len(targets) else None
        ev = result.evals[result.evals["task"] == m]
        hit = ev[ev["accuracy"] >= target] if target is not None else ev.iloc[:0]
        per_task[name] = float(hit["sim_time"].min()) if len(hit) else None
    times = list(per_task.values())
    every = None if any(t is None for t in times) else max(times, default=None)
    return {"tasks": per_task, "all": every}
