"""Checkpoints: the whole state of a running simulation, saved between two events and resumed.

A checkpoint pickles the simulation's object graph as it stands between two events: the SimPy
queue (every pending job with its start model, seeds and times), the servers' models and versions,
the algorithm's state (buffers, windows, counters), the client pool, the seed streams' positions
and the trace writers' offsets. What is rebuilt rather than saved, because a fresh build of the same
scenario gives it back exactly, is kept out by reference (a reducer per type that names it): the trainer
(its compiled functions; its pending jobs are saved and handed to the new one), the evaluator, the
dataset on its device, the progress and callback hooks.

It is written to ``RUN_DIR/checkpoint.pkl`` through a temporary file and a rename; it records how
many trace parts were on disk and how far the spill file of the next part goes (the rows recorded
but not yet in a part: each checkpoint appends only the rows new since the previous one, see
:meth:`fedsim.recorder.TraceWriter.spill`), so a resume drops the parts written after it and goes
on with those rows. The result equals a run never interrupted (tested after
SIGKILL at random moments).

Every built-in algorithm but the multi-task ones (``sync_st``, ``fedast``: a trainer per task) is
driven by callbacks on explicit state. An algorithm whose state lives in a running SimPy process (a
plugin's generator ``run()``) cannot be pickled; :func:`unsupported` names it, and such a scenario
with checkpoints is refused before it runs.
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
import torch

from fedsim.errors import ScenarioError, SimulationError
from fedsim.recorder import TraceWriter
from fedsim.rundir import writing

if TYPE_CHECKING:
    from fedsim.scenario import Scenario
    from fedsim.simulation import Simulation

CHECKPOINT = "checkpoint.pkl"
FORMAT = 2
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


def over_budget(sim: Simulation) -> bool:
    """Whether saving one more checkpoint now (at the mean cost so far) would take the time spent
    on checkpoints past ``output.checkpoint_max_overhead`` of the run's wall time: a periodic
    checkpoint is then skipped. The first one is always taken."""
    limit = sim.scenario.output.checkpoint_max_overhead
    if limit is None or not sim.checkpoints:
        return False
    spent = sim.checkpoint_wall_s
    elapsed = time.perf_counter() - sim._started
    return spent + spent / sim.checkpoints > limit * elapsed


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


def _tensor_from_bytes(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


def _tensor_state(tensor: torch.Tensor) -> tuple[Any, ...]:
    """A plain CPU tensor by its bytes: torch's own reduction writes a small torch.save archive per
    tensor (about ten times slower for the models and updates of a checkpoint). A view comes back
    as a tensor of its own (the algorithms never write into a tensor they share)."""
    if (
        tensor.device.type != "cpu"
        or tensor.requires_grad
        or not tensor.is_contiguous()
        or type(tensor) is not torch.Tensor
        or tensor.dtype not in _PLAIN_DTYPES
    ):
        return tensor.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    return _tensor_from_bytes, (tensor.numpy().tobytes(), tensor.dtype, tuple(tensor.shape))


_PLAIN_DTYPES = frozenset(
    {torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16,
     torch.int8, torch.uint8, torch.bool}
)  # fmt: skip


def _new_writer() -> TraceWriter:
    return TraceWriter.__new__(TraceWriter)


def _writer_state(writer: TraceWriter) -> tuple[Any, ...]:
    return _new_writer, (), writer.unspilled_state()


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
        table[TraceWriter] = _writer_state
        table[torch.Tensor] = _tensor_state
        self.dispatch_table = table


def _externals(sim: Simulation) -> dict[str, Any]:
    return {name: getattr(sim, name, None) for name in _EXTERNAL}


def save(sim: Simulation, path: Path) -> None:
    """Write ``sim``'s state atomically to ``path``."""
    # The rows not yet in a part go to the spill files, not into the checkpoint (so each row is
    # pickled once); a resume drops the parts written after it and reads the rows back.
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
    writers = (sim.events, sim.evals)
    for writer in writers:
        writer.spill()  # the buffered rows: only those new since the last checkpoint are written
    buffer = io.BytesIO()
    _Pickler(buffer, objects).dump(state)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing(path, tmp):  # a full disk keeps the previous checkpoint
        tmp.write_bytes(buffer.getbuffer())
    os.replace(tmp, path)
    for writer in writers:
        writer.drop_old_spills()


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
    for writer, name in ((sim.events, "events"), (sim.evals, "evals")):
        writer.truncate_parts(state["parts"][name])
        try:
            writer.restore_rows()
        except (OSError, ValueError, pickle.UnpicklingError, EOFError) as exc:
            raise ScenarioError(
                f"{path}: the rows it refers to are not readable ({type(exc).__name__}: {exc})"
            ) from None
    sim._started = time.perf_counter() - state["elapsed_s"]
    sim.resumed_from = float(sim.env.now)
    return sim
