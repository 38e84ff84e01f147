"""Checkpoints: the whole state of a running simulation, saved between two events and resumed.

A checkpoint pickles the simulation's object graph as it stands between two events: the SimPy
queue (every pending job with its start model, seeds and times), the servers' models and versions,
the algorithm's state (buffers, windows, counters), the client pool, the seed streams' positions
and the trace writers' offsets. What is rebuilt rather than saved, because a fresh build of the same
scenario gives it back exactly, is kept out by reference (a reducer per type that names it): the trainer
(its compiled functions; its pending jobs are saved and handed to the new one), the evaluator, the
dataset on its device, the progress and callback hooks.

It is written to ``RUN_DIR/checkpoint.pkl`` through a temporary file and a rename; it records how
many trace parts were on disk and holds the rows not yet written, so a resume drops the parts
written after it and goes on with those rows. The result equals a run never interrupted (tested after
SIGKILL at random moments).

Algorithms whose state lives in a running SimPy process (a generator: FedAvg's round loop, the
periodic and multi-server algorithms) cannot be pickled; :func:`unsupported` names them, and such a
scenario with checkpoints is refused before it runs.
"""

from __future__ import annotations

import copyreg
import io
import itertools
import os
import pickle
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import simpy

from fedsim.errors import ScenarioError, SimulationError

if TYPE_CHECKING:
    from fedsim.scenario import Scenario
    from fedsim.simulation import Simulation

CHECKPOINT = "checkpoint.pkl"
FORMAT = 1
_EXTERNAL = ("trainer", "evaluator", "data", "progress", "callbacks")
"""Simulation attributes rebuilt by a fresh build instead of being saved."""


def unsupported(scenario: Scenario) -> str | None:
    """Why this scenario's algorithm cannot be checkpointed (None: it can)."""
    from fedsim.algorithms import ALGORITHMS
    from fedsim.algorithms.base import Algorithm

    cls = ALGORITHMS.get(scenario.algorithm.name)
    if cls is None:
        return None
    if cls.run is not Algorithm.run:
        return (
            f"algorithm {scenario.algorithm.name} keeps its state in a running SimPy process "
            "(its run() loop), which cannot be saved yet"
        )
    if hasattr(scenario.algorithm, "tasks"):
        return f"algorithm {scenario.algorithm.name} builds a trainer per task, not saved yet"
    return None


def check(scenario: Scenario) -> None:
    """Refuse checkpoint keys for an algorithm that cannot be checkpointed (one line)."""
    out = scenario.output
    asked = out.checkpoint_every_s is not None or out.checkpoint_every_wall_s is not None
    reason = unsupported(scenario) if asked else None
    if reason is not None:
        key = (
            "checkpoint_every_s"
            if out.checkpoint_every_s is not None
            else "checkpoint_every_wall_s"
        )
        raise ScenarioError(f"{reason}; remove it to run without checkpoints", path=f"output.{key}")


def _rebuild_environment(now: float) -> simpy.Environment:
    return simpy.Environment(initial_time=now)


def _environment_state(env: simpy.Environment) -> tuple[Any, ...]:
    if env.active_process is not None:  # pragma: no cover - checkpoints are taken between events
        raise SimulationError("a checkpoint can only be taken between two events")
    next_eid = int(repr(env._eid)[6:-1])  # "count(N)": the next event id
    state = {"_queue": env._queue, "_eid": next_eid}
    return _rebuild_environment, (env.now,), state


_LOADING: dict[str, Any] = {}
"""The rebuilt objects a checkpoint being loaded refers to (set by :func:`load`)."""


def _load_external(tag: str) -> Any:
    return _LOADING[tag]


def _reducer(tags: dict[int, str]) -> Any:
    def reduce(obj: Any) -> tuple[Any, tuple[str]]:
        tag = tags.get(id(obj))
        if tag is None:
            raise SimulationError(
                f"cannot checkpoint a second {type(obj).__name__} (only the run's own is rebuilt)"
            )
        return _load_external, (tag,)

    return reduce


class _Pickler(pickle.Pickler):
    """Pickles by type: the rebuilt objects' classes and SimPy's environment have their own
    reducers (a per-type table, so the millions of plain objects pay nothing extra)."""

    def __init__(self, file: io.BytesIO, external: dict[str, Any]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        tags = {id(obj): tag for tag, obj in external.items()}
        table = dict(copyreg.dispatch_table)
        for obj in external.values():
            table[type(obj)] = _reducer(tags)
        table[simpy.Environment] = _environment_state
        self.dispatch_table = table


def _externals(sim: Simulation) -> dict[str, Any]:
    return {name: getattr(sim, name, None) for name in _EXTERNAL}


def save(sim: Simulation, path: Path) -> None:
    """Write ``sim``'s state atomically to ``path``."""
    # The rows not yet on disk travel inside the checkpoint (no part is written for it); a resume
    # drops the parts written after it.
    objects = {k: v for k, v in _externals(sim).items() if v is not None}
    pending = list(getattr(sim.trainer, "_pending", ()) or ())
    state = {
        "format": FORMAT,
        "scenario_hash": sim.scenario.hash(),
        "sim": sim,
        "pending": pending,
        "parts": {"events": sim.events.part_count, "evals": sim.evals.part_count},
        "elapsed_s": time.perf_counter() - sim._started,
    }
    buffer = io.BytesIO()
    _Pickler(buffer, objects).dump(state)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def load(fresh: Simulation, path: Path) -> Simulation:
    """The simulation saved in ``path``, wired to ``fresh``'s rebuilt trainer, data and hooks."""
    _LOADING.clear()
    _LOADING.update(_externals(fresh))
    try:
        with path.open("rb") as handle:
            state = pickle.load(handle)
    except Exception as exc:
        raise ScenarioError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    finally:
        _LOADING.clear()
    if state.get("format") != FORMAT or state.get("scenario_hash") != fresh.scenario.hash():
        raise ScenarioError(f"{path}: written for another scenario or fedsim version")
    sim: Simulation = state["sim"]
    sim.env._eid = itertools.count(sim.env._eid)
    if hasattr(fresh.trainer, "_pending"):
        fresh.trainer._pending.update(dict.fromkeys(state["pending"]))
    sim.events.truncate_parts(state["parts"]["events"])
    sim.evals.truncate_parts(state["parts"]["evals"])
    sim._started = time.perf_counter() - state["elapsed_s"]
    sim.resumed_from = float(sim.env.now)
    return sim
