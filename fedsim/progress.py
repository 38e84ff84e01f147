"""A rich progress bar for runs: simulated time (or updates), updates/s and accuracy so far."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from fedsim.simulation import Simulation


class RichProgress:
    """Progress hook for :class:`fedsim.simulation.Simulation` (use as a context manager)."""

    def __init__(self, console: Console | None = None, min_interval_s: float = 0.1) -> None:
        self.console = console or Console(stderr=True)
        self.min_interval_s = min_interval_s
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[where]}"),
            TextColumn("updates {task.fields[updates]}"),
            TextColumn("{task.fields[rate]} upd/s"),
            TextColumn("acc {task.fields[accuracy]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._task = None
        self._last = 0.0
        self._t0 = time.perf_counter()

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, sim: Simulation) -> None:
        now = time.perf_counter()
        stop = sim.scenario.stop
        if self._task is None:
            total = stop.time_s if stop.time_s is not None else stop.max_updates
            self._task = self._progress.add_task(
                sim.scenario.name, total=total, **self._fields(sim)
            )
            self._t0 = now
        if now - self._last < self.min_interval_s and not sim.stop_event.triggered:
            return
        self._last = now
        done = sim.env.now if stop.time_s is not None else sim.updates
        self._progress.update(self._task, completed=done, **self._fields(sim))

    def finish(self, sim: Simulation) -> None:
        if self._task is None:
            self(sim)
        self._last = 0.0
        stop = sim.scenario.stop
        done = sim.env.now if stop.time_s is not None else sim.updates
        self._progress.update(self._task, completed=done, **self._fields(sim))

    def _fields(self, sim: Simulation) -> dict[str, str]:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        acc = sim.last_eval.get("accuracy", math.nan)
        horizon = sim.scenario.stop.time_s
        where = (
            f"sim {sim.env.now:,.0f}/{horizon:,.0f} s" if horizon else f"sim {sim.env.now:,.0f} s"
        )
        return {
            "where": where,
            "updates": f"{sim.updates:,}",
            "rate": f"{sim.updates / elapsed:,.0f}",
            "accuracy": "—" if math.isnan(acc) else f"{acc:.3f}",
        }
