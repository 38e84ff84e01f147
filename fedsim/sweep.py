"""Sweeps: one base scenario × a grid of overrides × seeds, each cell run once.

A sweep file names a base scenario, a ``grid`` of dotted scenario keys with the values to try, the
``seeds`` and optional fixed overrides (``set``). Every cell is resolved to a validated
:class:`~fedsim.scenario.Scenario` before anything runs, so a bad key fails at once, and each cell is
run into ``OUT/cells/<scenario hash>/``: a cell whose directory holds its ``summary.json`` and readable
``events.parquet`` and ``evals.parquet`` is finished and is never recomputed, so an interrupted sweep
resumes where it stopped and two sweeps that share a cell share its run; a cell whose files were lost
or damaged is run again (and skipped, with one line, by :func:`collect`). ``results.parquet`` (one row per cell × evaluation) is rebuilt from the cell
directories at the end, or at any time by :func:`collect`; it holds no wall-clock figure, so it
depends only on the sweep file, not on ``--jobs``, the backend or interruptions.
"""

from __future__ import annotations

import difflib
import itertools
import json
import logging
import math
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from fedsim.errors import ScenarioError, SimulationError
from fedsim.scenario import Scenario, load_scenario, read_yaml
from fedsim.sweep_crossing import Registered, crossing, register_in_worker

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger(__name__)
"""Damaged cells are reported here (one line each time; plain on stderr when logging is not set up)."""

SWEEP_KEYS = ("name", "base", "grid", "seeds", "set")
MANIFEST = "sweep.json"
RESULTS = "results.parquet"
CELLS = "cells"
BACKENDS = ("local", "ray")
EVAL_DROPPED = ("real_time_s",)  # wall-clock: would make the table depend on the machine
SUMMARY_COLUMNS = {  # results column <- summary.json key
    "final_accuracy": "final_accuracy",
    "best_accuracy": "best_accuracy",
    "final_loss": "final_loss",
    "mean_staleness": "mean_staleness",
    "time_to_target_s": "time_to_target_s",
    "end_time_s": "sim_time_s",
    "total_updates": "updates",
    "stop_reason": "stop_reason",
}


@dataclass(frozen=True)
class Cell:
    """One point of the grid with one seed: its overrides and the scenario they resolve to."""

    index: int
    params: dict[str, Any]
    """Swept key → value, as written in the grid (the seed not included)."""
    seed: int
    scenario: Scenario

    @property
    def hash(self) -> str:
        return self.scenario.hash()

    @property
    def dir(self) -> str:
        """The cell's directory, relative to the sweep directory."""
        return f"{CELLS}/{self.hash}"

    @property
    def label(self) -> str:
        parts = [f"{k}={_compact(v)}" for k, v in self.params.items()]
        return ", ".join([*parts, f"seed={self.seed}"])


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: its keys as given and every cell resolved."""

    name: str
    base: Path
    grid: dict[str, list[Any]]
    seeds: list[int] | None
    fixed: dict[str, Any]
    cells: list[Cell]
    source: Path | None = None

    def manifest(self) -> dict[str, Any]:
        """What ``sweep.json`` records: enough for :func:`collect` to rebuild the table."""
        return {
            "name": self.name,
            "source": str(self.source) if self.source else None,
            "base": str(self.base),
            "grid": self.grid,
            "seeds": self.seeds,
            "set": self.fixed,
            "cells": [
                {"index": c.index, "hash": c.hash, "dir": c.dir, "seed": c.seed, "params": c.params}
                for c in self.cells
            ],
        }


# ---------------------------------------------------------------------------------------------------
# Reading and validating a sweep file


def load_sweep(source: str | Path | Mapping[str, Any], *, root: str | Path | None = None) -> Sweep:
    """A validated :class:`Sweep` from a sweep file (or a mapping with the same keys).

    ``base`` is looked up relative to the sweep file's directory (``root`` for a mapping, default the
    current directory), then relative to the current directory. Every cell is resolved here, so any
    error is raised before a cell runs.
    """
    if isinstance(source, Mapping):
        data, where, path = dict(source), "sweep", None
        here = Path(root) if root is not None else Path.cwd()
    else:
        path = Path(source)
        data, where = _read_sweep_file(path), str(path)
        here = path.parent
    try:
        return _build(data, here, path)
    except ScenarioError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _read_sweep_file(path: Path) -> dict[str, Any]:
    from fedsim.yamlio import read_yaml_file  # the reader of every input file (limits, UTF-8)

    if not path.is_file():
        raise ScenarioError(f"sweep file not found: {path}")
    data = read_yaml_file(path, "sweep file")
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a sweep file must be a mapping of keys")
    return data


def _build(data: dict[str, Any], here: Path, source: Path | None) -> Sweep:
    for key in data:
        if key not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ScenarioError(f"unknown key{hint} (known: {', '.join(SWEEP_KEYS)})", path=key)
    base = _resolve_base(data.get("base"), here)
    grid = _mapping(data.get("grid"), "grid")
    for key, values in grid.items():
        _check_values(key, values)
    fixed = _mapping(data.get("set"), "set")
    seeds = _seeds(data.get("seeds"))
    _check_overlaps(grid, fixed, seeds)
    default_name = source.stem if source is not None else "sweep"
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name or "/" in name:
        raise ScenarioError("must be a non-empty string without '/'", path="name", value=name)
    base_data = read_yaml(base)
    cells = _expand(base_data, grid, fixed, seeds)
    return Sweep(name, base, grid, seeds, fixed, cells, source)


def _resolve_base(base: Any, here: Path) -> Path:
    if base is None:
        raise ScenarioError("missing key: the base scenario file", path="base")
    if not isinstance(base, str) or not base:
        raise ScenarioError("must be the path of a scenario file", path="base", value=base)
    for candidate in (here / base, Path(base)):
        if candidate.is_file():
            return candidate
    raise ScenarioError(
        f"scenario file not found: {base} (looked in {here} and the current directory)", path="base"
    )


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ScenarioError("must be a mapping of dotted scenario keys", path=key)
    for k in value:
        if not isinstance(k, str) or not k:
            raise ScenarioError(f"keys must be dotted scenario keys, got {k!r}", path=key)
    return dict(value)


def _check_values(key: str, values: Any) -> None:
    where = f"grid.{key}"
    if not isinstance(values, list):
        raise ScenarioError("must be a list of values (a fixed value goes under set:)", path=where)
    if not values:
        raise ScenarioError("empty list: give at least one value", path=where)
    seen = [json.dumps(v, sort_keys=True) for v in values]
    for i, text in enumerate(seen):
        if text in seen[:i]:
            raise ScenarioError(f"value {_compact(values[i])} is listed twice", path=where)


def _seeds(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    ok = isinstance(value, list) and value
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
    if not ok:
        raise ScenarioError("must be a non-empty list of integers >= 0", path="seeds", value=value)
    if len(set(value)) != len(value):
        raise ScenarioError("a seed is listed twice", path="seeds", value=value)
    return list(value)


def _check_overlaps(grid: dict[str, Any], fixed: dict[str, Any], seeds: list[int] | None) -> None:
    keys = [("grid", k) for k in grid] + [("set", k) for k in fixed]
    if seeds is not None:
        keys.append(("seeds", "seed"))
    for (where_a, a), (where_b, b) in itertools.combinations(keys, 2):
        if a == b or a.startswith(b + ".") or b.startswith(a + "."):
            raise ScenarioError(f"{where_a}.{a} and {where_b}.{b} set the same key")


def _expand(
    base: dict[str, Any],
    grid: dict[str, list[Any]],
    fixed: dict[str, Any],
    seeds: list[int] | None,
) -> list[Cell]:
    """Every grid point × seed, in grid order with the seed varying fastest, validated."""
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    cells: list[Cell] = []
    by_hash: dict[str, Cell] = {}
    for params in points:
        for seed in seeds if seeds is not None else [None]:
            overrides = {**fixed, **params}
            if seed is not None:
                overrides["seed"] = seed
            label = ", ".join(f"{k}={_compact(v)}" for k, v in overrides.items())
            try:
                scenario = load_scenario(base, overrides)
            except ScenarioError as exc:
                raise ScenarioError(f"cell {label or '(base)'}: {exc}") from None
            if scenario.seed is None:
                raise ScenarioError("the base scenario has seed: null; give the sweep seeds:")
            cell = Cell(len(cells), params, scenario.seed, scenario)
            twin = by_hash.get(cell.hash)
            if twin is not None:
                raise ScenarioError(
                    f"cells {twin.label} and {cell.label} resolve to the same scenario"
                )
            by_hash[cell.hash] = cell
            cells.append(cell)
    return cells


def _compact(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()
    return str(value)


# ---------------------------------------------------------------------------------------------------
# Running


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` did: the table, and how many cells ran or were already finished."""

    out: Path
    table: pd.DataFrame
    ran: int
    skipped: int
    failed: list[tuple[Cell, str]] = field(default_factory=list)

    @property
    def results_path(self) -> Path:
        return self.out / RESULTS


def default_out(sweep: Sweep) -> Path:
    return Path("runs") / "sweeps" / sweep.name


def run_sweep(
    sweep: Sweep | str | Path,
    out: str | Path | None = None,
    *,
    jobs: int = 1,
    backend: str = "local",
    device: str | None = None,
    progress: bool = True,
) -> SweepOutcome:
    """Run every unfinished cell of ``sweep`` into ``out`` and write ``out/results.parquet``.

    ``jobs`` cells run at once: ``local`` runs them in this process (``jobs=1``) or in a process
    pool, ``ray`` on a local Ray cluster with ``jobs`` CPUs. Each cell uses one torch thread, so
    results do not depend on either. Failed cells are reported after the others finished (as a
    :class:`~fedsim.errors.SimulationError`); the table then holds the cells that did finish.
    """
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep)
    if backend not in BACKENDS:
        raise ScenarioError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if jobs < 1:
        raise ScenarioError(f"jobs must be >= 1, got {jobs}")
    if backend == "ray":
        from fedsim.sweep_ray import require_ray

        require_ray()  # before anything is written
    out = Path(out) if out is not None else default_out(sweep)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / MANIFEST, json.dumps(sweep.manifest(), indent=2))
    todo: list[Cell] = []
    damaged: list[str] = []
    for cell in sweep.cells:
        summary, problem = cell_state(out / cell.dir, cell.hash)
        if summary is None:
            todo.append(cell)
        if problem is not None:
            damaged.append(f"{cell.dir} ({problem})")
    if damaged:
        _report_damaged(damaged, len(sweep.cells), "run again")
    skipped = len(sweep.cells) - len(todo)
    # Python-registered algorithms go to the workers with each cell; what cannot cross is refused now.
    in_workers = backend == "ray" or (jobs > 1 and len(todo) > 1)
    algorithms = crossing((cell.scenario for cell in todo), in_workers=in_workers)
    failed: list[tuple[Cell, str]] = []
    with _progress_bar(sweep, skipped, enabled=progress) as advance:

        def done(cell: Cell, error: BaseException | None) -> None:
            if error is not None:
                failed.append((cell, _error_text(error)))
            advance()

        tasks = [(cell, _task(cell, out, device, algorithms)) for cell in todo]
        if backend == "ray":
            from fedsim.sweep_ray import run_on_ray

            run_on_ray(tasks, jobs, done)
        elif jobs == 1 or len(tasks) <= 1:
            _run_here(tasks, done)
        else:
            _run_in_pool(tasks, jobs, done)
    table = collect(out)
    outcome = SweepOutcome(out, table, len(todo) - len(failed), skipped, failed)
    if failed:
        cell, message = failed[0]
        raise SimulationError(
            f"{len(failed)} of {len(sweep.cells)} cells failed; first: {cell.label} "
            f"({out / cell.dir}): {message}; {RESULTS} holds the others"
        )
    return outcome


Task = tuple[dict[str, Any], str, str | None, Registered]


def _task(cell: Cell, out: Path, device: str | None, algorithms: Registered) -> Task:
    return cell.scenario.to_dict(), str(out / cell.dir), device, algorithms


def run_cell(
    scenario: dict[str, Any], cell_dir: str, device: str | None = None, algorithms: Registered = ()
) -> str:
    """Run one cell into ``cell_dir`` with one torch thread; return its scenario hash.

    Module-level and given plain data (and the classes of ``algorithms``, registered in the
    parent, by reference), so process pools and Ray can ship it to a worker.
    """
    import torch

    from fedsim.simulation import run

    global _in_cell, _worker_stop
    if _worker_stop is not None:  # queued before the sweep was stopped: not started
        raise SimulationError(f"not started: the sweep was stopped by {_worker_stop}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _in_cell = True
    try:
        register_in_worker(algorithms)
        resolved = load_scenario(scenario)
        if _resumable(Path(cell_dir), resolved.hash()):
            # an interrupted cell with a checkpoint of this very scenario: go on from it
            result = run(resume=cell_dir, device=device, threads=1)
        else:
            # overwrite: what a cell directory holds is this cell's earlier, unfinished or damaged run
            result = run(resolved, out=cell_dir, device=device, overwrite=True, threads=1)
    finally:
        _in_cell = False
        torch.set_num_threads(threads)
    if result.summary.get("stop_reason") == "interrupted":  # kept on disk; the sweep stops here
        _worker_stop = str(result.summary.get("interrupted_by", "SIGINT"))
        raise KeyboardInterrupt(f"cell interrupted by {_worker_stop}")
    return result.summary["scenario_hash"]


def _resumable(cell_dir: Path, scenario_hash: str) -> bool:
    """A cell directory holding a checkpoint written for this scenario (fedsim/checkpoint.py)."""
    from fedsim import rundir

    if not (cell_dir / rundir.CHECKPOINT).is_file():
        return False
    return rundir.read_marker(cell_dir).get("scenario_hash") == scenario_hash


Done = Callable[[Cell, BaseException | None], None]


def _run_here(tasks: Sequence[tuple[Cell, Task]], done: Done) -> None:
    for cell, task in tasks:
        try:
            run_cell(*task)
        except Exception as exc:  # reported with the others at the end, like a worker's
            done(cell, exc)
        else:
            done(cell, None)


def _init_worker(lifeline: Connection | None = None) -> None:
    """One torch thread; Ctrl-C and SIGTERM noted (not raised) while no cell runs, so that cells
    queued before them do not start; and the worker dies with the sweep process, however that ends.

    ``lifeline`` is the read end of a pipe whose only write end the sweep process holds: when that
    process exits (even by ``kill -9``) the kernel closes it, the read returns end-of-file, and the
    worker exits at once instead of running its cell to the end and then waiting forever for work.
    (A pool worker is a child of the forkserver, not of the sweep, so neither its parent pid nor
    ``PR_SET_PDEATHSIG`` tells it that the sweep died; and the forkserver itself stays up as long as
    one worker does.)
    """
    import torch

    torch.set_num_threads(1)
    for sig in (signal.SIGINT, signal.SIGTERM):  # a running cell's own handler comes first
        signal.signal(sig, _note_stop)
    if lifeline is not None:
        threading.Thread(
            target=_exit_when_closed, args=(lifeline,), name="fedsim-lifeline", daemon=True
        ).start()


_worker_stop: str | None = None
"""The signal that stopped the sweep (in this process); cells queued before it do not start."""
_in_cell = False


def _note_stop(signum: int, _frame: object) -> None:
    """A pool worker's SIGINT / SIGTERM handler outside a run (a run installs its own)."""
    global _worker_stop
    _worker_stop = signal.Signals(signum).name
    if _in_cell:  # a cell being set up, or a second signal to a stopping run: stop now
        raise KeyboardInterrupt


def _exit_when_closed(lifeline: Connection) -> None:
    with suppress(EOFError, OSError):
        lifeline.recv_bytes()  # blocks: the sweep process never writes
    os._exit(1)


def _pool_context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one (torch is imported once, in the server), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["fedsim.sweep", "fedsim.simulation"])
        return context
    return multiprocessing.get_context("spawn")


def _run_in_pool(tasks: Sequence[tuple[Cell, Task]], jobs: int, done: Done) -> None:
    """Run ``tasks`` in a process pool.

    Ctrl-C reaches the workers too (one process group): their running cells stop at the next event
    and keep their trace (``stop_reason: interrupted``, run again by the next sweep), so the sweep
    cancels the cells not started, waits for the running ones, then stops (KeyboardInterrupt, exit
    130). A second Ctrl-C stops at once: the workers then exit with this process (lifeline).
    """
    workers = min(jobs, len(tasks))
    context = _pool_context()
    lifeline, keep_alive = context.Pipe(duplex=False)  # workers get the read end, see _init_worker
    pool = ProcessPoolExecutor(workers, context, initializer=_init_worker, initargs=(lifeline,))
    try:
        pending: dict[Future[str], Cell] = {pool.submit(run_cell, *t): c for c, t in tasks}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = pending.pop(future)
                done(cell, future.exception())
    except KeyboardInterrupt:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:  # after the pool is shut down: a worker still running its cell exits now
        keep_alive.close()
        lifeline.close()


def _error_text(error: BaseException) -> str:
    cause = getattr(error, "cause", None)  # a Ray task error wraps the worker's exception
    error = cause if isinstance(cause, BaseException) else error
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(error, (ScenarioError, SimulationError)):
        return first
    return f"{type(error).__name__}: {first}"


@contextmanager
def _progress_bar(sweep: Sweep, skipped: int, *, enabled: bool) -> Iterator[Callable[[], None]]:
    """Cells done / total with the ETA (finished cells found on disk count as done from the start)."""
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("cells"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        speed_estimate_period=3600,
    )
    description = f"sweep {sweep.name}" + (f" ({skipped} already finished)" if skipped else "")
    with bar:
        task = bar.add_task(description, total=len(sweep.cells), completed=skipped)
        yield lambda: bar.advance(task)


# ---------------------------------------------------------------------------------------------------
# Collecting the table


def finished_summary(cell_dir: Path, expected_hash: str) -> dict[str, Any] | None:
    """The cell's summary if it finished and its files are whole (see :func:`cell_state`)."""
    return cell_state(cell_dir, expected_hash)[0]


def cell_state(cell_dir: Path, expected_hash: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(summary, None)`` for a finished cell; ``(None, None)`` for one that never finished (no
    summary.json: not started, killed, or stopped with ``stop_reason: interrupted``); ``(None,
    why)`` for a cell that finished but whose files were damaged or lost since.

    A finished cell has a summary.json that parses and names its scenario, and an
    ``events.parquet`` and ``evals.parquet`` whose Parquet footers read (a file cut short loses its
    footer), the events holding as many rows as the summary's ``status_counts`` add up to.
    """
    path = cell_dir / "summary.json"
    if not path.exists():
        return None, None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, "summary.json is unreadable"
    if not isinstance(summary, dict):
        return None, "summary.json is unreadable"
    if summary.get("scenario_hash") != expected_hash:
        return None, f"summary.json is scenario {summary.get('scenario_hash')}'s"
    if summary.get("stop_reason") == "interrupted":
        return None, None
    rows: dict[str, int] = {}
    for name in ("events.parquet", "evals.parquet"):
        problem, rows[name] = _parquet_rows(cell_dir / name)
        if problem is not None:
            return None, problem
    counts = summary.get("status_counts")
    if isinstance(counts, dict) and sum(counts.values()) != rows["events.parquet"]:
        return None, (
            f"events.parquet holds {rows['events.parquet']} rows, "
            f"summary.json counts {sum(counts.values())}"
        )
    return summary, None


def _parquet_rows(path: Path) -> tuple[str | None, int]:
    """``(None, rows)`` from a Parquet file's footer, or ``(why it cannot be read, 0)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        return f"{path.name} is missing", 0
    try:
        return None, pq.read_metadata(path).num_rows
    except (OSError, ValueError, pa.ArrowException):
        return f"{path.name} is unreadable", 0


def _report_damaged(damaged: list[str], total: int, action: str) -> None:
    """One line for the cells whose files were damaged after they finished."""
    shown = "; ".join(damaged[:3]) + (f"; and {len(damaged) - 3} more" if len(damaged) > 3 else "")
    log.warning(
        "warning: %d of %d cells finished but their files are damaged, %s: %s",
        len(damaged),
        total,
        action,
        shown,
    )


def collect(out: str | Path, *, write: bool = True) -> pd.DataFrame:
    """Rebuild ``results.parquet`` from a sweep directory and return it (see :func:`collect_cells`)."""
    return collect_cells(out, write=write)[0]


def collect_cells(out: str | Path, *, write: bool = True) -> tuple[pd.DataFrame, int, int]:
    """Rebuild ``results.parquet`` from a sweep directory: one row per finished cell × evaluation.

    Columns: ``cell`` (scenario hash), the swept keys (a grid key whose values are mappings gives one
    column per leaf key, e.g. ``algorithm.name``), ``seed``, the evaluation columns (``sim_time``,
    ``accuracy``, ``loss``, ...; not the wall-clock ``real_time_s``) and the cell's summary figures.
    Rows follow the sweep's cell order, then simulated time. Returns the table, the number of
    finished cells and the number of cells in the sweep.
    """
    from pyarrow import ArrowException

    out = Path(out)
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        raise ScenarioError(
            f"not a fedsim sweep directory (no readable {MANIFEST}): {out}"
        ) from None
    entries = manifest["cells"]
    cells = _cell_columns(entries)
    frames = []
    damaged: list[str] = []
    for i, entry in enumerate(entries):
        summary, problem = cell_state(out / entry["dir"], entry["hash"])
        if summary is not None:
            try:
                evals = _read_parquet(out / entry["dir"] / "evals.parquet")
            except (OSError, ValueError, ArrowException):
                summary, problem = None, "evals.parquet is unreadable"
        if problem is not None:
            damaged.append(f"{entry['dir']} ({problem})")
        if summary is None:
            continue
        evals = evals.drop(columns=[c for c in EVAL_DROPPED if c in evals.columns])
        left = cells.iloc[[i] * len(evals)].reset_index(drop=True)
        right = pd.DataFrame(
            {col: [summary.get(key)] * len(evals) for col, key in SUMMARY_COLUMNS.items()}
        )
        frames.append(pd.concat([left, evals.reset_index(drop=True), right], axis=1))
    if damaged:
        _report_damaged(damaged, len(entries), "skipped (`fedsim sweep` runs them again)")
    if frames:
        table = pd.concat(frames, ignore_index=True)
    else:
        table = pd.DataFrame(columns=list(cells.columns) + list(SUMMARY_COLUMNS))
    for col in SUMMARY_COLUMNS:
        if col == "stop_reason":
            table[col] = table[col].astype(object)
        elif col == "total_updates":
            table[col] = table[col].astype("int64") if frames else table[col]
        else:
            table[col] = pd.to_numeric(table[col], errors="coerce").astype("float64")
    # Round-trip through Parquet so the table returned has exactly the dtypes of the file.
    data = _parquet_bytes(table)
    if write:
        tmp = out / (RESULTS + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(out / RESULTS)
    return _read_parquet(data), len(frames), len(entries)


# Parquet I/O of the sweep process itself, on the calling thread only. Arrow reads through a Python
# file object (``pd.read_parquet(io.BytesIO(...))``) with its I/O and CPU thread pools, and a pool
# thread still busy (read-ahead) when the interpreter exits is killed while it waits for the GIL:
# its C++ frames are unwound by pthread_exit and the process aborts with "terminate called without
# an active exception" (apache/arrow#34314, #39862). The sweep's last act was such a read. Read
# from bytes in memory with ``use_threads=False``, Arrow starts no thread, so none is left at exit.


def _parquet_bytes(table: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False, nthreads=1), sink)
    return sink.getvalue().to_pybytes()


def _read_parquet(source: bytes | Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = source if isinstance(source, bytes) else source.read_bytes()  # a path's reads use a pool
    table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False, use_pandas_metadata=True)
    return table.to_pandas(use_threads=False)


def _cell_columns(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per manifest cell: hash, swept keys (mappings flattened to leaf keys) and seed."""
    flat = [_flatten(e["params"]) for e in entries]
    swept: list[str] = []  # each swept key's columns together, in grid order
    for key in dict.fromkeys(k for e in entries for k in e["params"]):
        leaves = dict.fromkeys(c for f in flat for c in f if c == key or c.startswith(key + "."))
        swept += [c for c in leaves if c not in swept]
    rows = [{"cell": e["hash"], **f, "seed": e["seed"]} for e, f in zip(entries, flat, strict=True)]
    names = ["cell", *swept, "seed"]
    return pd.DataFrame({name: _column([row.get(name) for row in rows]) for name in names})


def _flatten(params: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            for sub, leaf in _flatten(value).items():
                flat[f"{key}.{sub}"] = leaf
        else:
            flat[key] = value
    return flat


def _column(values: list[Any]) -> pd.Series:
    """A typed column: bool, int, float or str when the values allow, else their YAML text."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if present and numbers:
        if all(isinstance(v, int) for v in present) and len(present) == len(values):
            return pd.Series(values, dtype="int64")
        return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
    if all(isinstance(v, str) for v in present):
        return pd.Series(values, dtype=object)
    return pd.Series([None if v is None else _compact(v) for v in values], dtype=object)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
