"""Building the world from a scenario and running it: the event loop, evaluation, stop conditions.

Simulated time comes only from the timing models. Real compute (training, evaluation) happens inside
event callbacks and never advances the clock, so the same scenario and seed give the same trace on
any machine and with any trainer backend.
"""

from __future__ import annotations

import gc
import inspect
import json
import math
import os
import platform
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import simpy
import torch
from simpy.core import EmptySchedule, StopSimulation
from simpy.events import URGENT

from fedsim import rundir
from fedsim.algorithms import ALGORITHMS
from fedsim.algorithms.base import ServerModel
from fedsim.algorithms.context import COUNTERS, AlgorithmContext, ClientFacts, ModelFacts
from fedsim.callbacks import Callbacks, ProgressCallback
from fedsim.checks import check_runnable
from fedsim.clients import ClientPool, Job
from fedsim.errors import ScenarioError, SimulationError
from fedsim.interrupts import stop_on_signals
from fedsim.learning.batched import make_trainer
from fedsim.learning.data import dataset_info
from fedsim.learning.models import ModelSource, build_model, init_params, using_model
from fedsim.learning.trainer import Evaluator, LocalTask
from fedsim.learning.user_data import Dataset, using_data
from fedsim.models_store import ModelStore
from fedsim.recorder import EVAL_SCHEMA, TraceWriter, event_schema, event_totals, read_table
from fedsim.result import Result
from fedsim.rng import SeedStreams
from fedsim.scenario import Scenario, load_scenario
from fedsim.threads import ThreadChoice, choose_threads, using_threads
from fedsim.topology import Topology
from fedsim.world import build_world, client_table, write_world

ACCEPTED = frozenset({"applied", "buffered"})


class _CheckpointNow(StopSimulation):
    """Raised by a checkpoint event: SimPy ends the step, the run loop saves and goes on."""


NOT_UPLOADED = frozenset({"dropped", "cancelled", "in_flight"})
PROGRESS_EVERY_ROWS = 1024
FLUSH_EVERY_WALL_S = 10.0
"""Both traces go to disk at least this often (wall-clock seconds), whatever ``output.flush_rows``:
a killed run loses at most this much."""
STALL_EVENTS = 1_000_000
"""A run whose simulated clock has not moved over this many events is stuck: it fails, trace kept."""
_STEPS_PER_CHECK = 65_536


class ProgressHook(Protocol):
    """Receives the running simulation now and then (every few thousand events and every eval)."""

    def __call__(self, sim: Simulation) -> None: ...


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None → CUDA when present, else CPU; anything else is taken as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ScenarioError(f"unknown device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ScenarioError("device cuda requested but CUDA is not available")
    return resolved


class Simulation:
    """One run of one scenario: the world (clients, servers, trainer), its event loop and its trace."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        device: str | torch.device | None = None,
        run_dir: Path | None = None,
        progress: ProgressHook | None = None,
        callbacks: Iterable[Any] = (),
    ) -> None:
        check_runnable(scenario)  # what `fedsim validate` checks, so validate = run
        self.scenario = scenario
        self.device = resolve_device(device)
        self.run_dir = run_dir
        self.progress = progress
        hooks = [*callbacks, *([ProgressCallback(progress)] if progress is not None else [])]
        self.callbacks = Callbacks(hooks)
        self.streams = SeedStreams(scenario.seed)
        self.env = simpy.Environment()
        self.learning = scenario.training is not None
        n_clients = scenario.clients.count

        info = dataset_info(scenario.data)
        module, self.spec = build_model(scenario.model, info)
        algorithm = ALGORITHMS[scenario.algorithm.name]
        self.world = world = build_world(
            scenario,
            self.streams,
            device=self.device,
            model_bytes=self.spec.nbytes(),
            validation=algorithm.validation_split(scenario.algorithm),
        )
        self.client_sizes = world.sizes
        self.trainer = None
        self.evaluator = None
        params = None
        if self.learning:
            self.data = world.data
            task = LocalTask(module, self.spec, self.data, scenario.training)
            self.trainer = make_trainer(
                task, scenario.training.backend, max_batch=scenario.training.max_batch
            )
            self.evaluator = Evaluator(module, self.spec, self.data)
            params = init_params(self.spec, self.streams.torch_generator("model.init"))
            params = params.to(self.device)

        self.byzantine = scenario.byzantine
        self.is_byzantine = world.is_byzantine
        self.byzantine_list: list[bool] = self.is_byzantine.tolist()
        self.attack_name = self.byzantine.attack.name if self.byzantine is not None else ""
        self.byzantine_applied = 0
        self.robust_fallbacks = 0

        self.timing = world.timing
        self.pool = ClientPool(
            self.env,
            n_clients,
            self.timing,
            self.trainer,
            self.streams,
            availability=world.availability,
        )
        if self.byzantine is not None and self.byzantine.attack.stage == "data":
            if self.learning and self.data.info.task != "classification":
                raise ScenarioError(
                    "label_flip needs a classification dataset", path="byzantine.attack"
                )
            self.pool.flip_labels = self.byzantine_list
        self.topology: Topology | None = world.topology
        self.client_server = world.server_of
        n_servers = world.n_servers
        # Every server starts from the same initial model (a common initialisation).
        self.servers = [ServerModel(i, params) for i in range(n_servers)]
        if self.callbacks.wants("on_publish"):
            for server in self.servers:
                server.listener = self._published
        self.message_bytes = 0
        self.context = AlgorithmContext(
            env=self.env,
            pool=self.pool,
            servers=self.servers,
            streams=self.streams,
            scenario=scenario,
            clients=ClientFacts(
                count=n_clients,
                sizes=self.client_sizes,
                byzantine=self.byzantine_list,
                server=self.client_server,
            ),
            model=ModelFacts(
                learning=self.learning,
                spec=self.spec,
                device=self.device,
                evaluator=self.evaluator,
                data=getattr(self, "data", None),
                trainer=self.trainer,
                validation=world.validation,
            ),
            timing=self.timing,
            topology=self.topology,
            trace=self,
        )
        self.algorithm = algorithm(scenario.algorithm, self.context)

        chunk = scenario.output.flush_rows
        self.events = TraceWriter(
            run_dir and run_dir / "events.parquet",
            event_schema(self.algorithm.event_columns),
            chunk_rows=chunk,
        )
        self.evals = TraceWriter(
            run_dir and run_dir / "evals.parquet", EVAL_SCHEMA, chunk_rows=chunk
        )
        self.events.companion = self.evals
        self.threads: ThreadChoice | None = None
        self.evaluations = 0
        self.checkpoints = 0
        self.checkpoints_skipped = 0
        self.checkpoint_wall_s = 0.0
        """Wall-clock seconds spent saving checkpoints (``output.checkpoint_max_overhead``)."""
        self.resumed_from: float | None = None
        self._last_checkpoint = 0.0
        self._wall_checkpoint_pending = False
        self.models = ModelStore(run_dir and run_dir / "models", self.spec)
        """How many torch threads the run was given and why (set by :func:`run`)."""
        self._last_flush = -math.inf
        self.interrupted_by: str | None = None
        self.updates = 0
        self.rows = 0
        self._max_updates = scenario.stop.max_updates
        self.rejected_models = 0
        self.last_eval: dict[str, float] = {}
        self.stop_event = self.env.event()
        self.stop_reason = ""
        self.time_to_target: float | None = None
        self._started = 0.0

    # -- recording -------------------------------------------------------------------------------------
    def record_job(self, job: Job, status: str, reason: str = "", extra: tuple = ()) -> None:
        """Append one row to the events trace (the hot path: keep it lean)."""
        if job.open:  # still in flight (being cancelled): arrival fields describe this moment
            arrival_version = self.servers[job.server].version
            at = self.env.now
        else:
            arrival_version = job.arrival_version
            at = job.arrived_at
        timing = self.timing
        byz = self.byzantine_list[job.client]
        self.events.append(
            (
                at,
                job.client,
                job.server,
                job.id,
                job.dispatched_at,
                job.base_version,
                arrival_version,
                arrival_version - job.base_version,
                job.compute_s,
                job.comm_s,
                status,
                0
                if status in NOT_UPLOADED
                else (timing.bytes_up if job.bytes_up is None else job.bytes_up),
                timing.bytes_down if job.bytes_down is None else job.bytes_down,
                byz,
                self.attack_name if byz else "",
                reason,
                job.task,
                -1,
                *extra,
            )
        )
        if status in ACCEPTED:
            self.updates += 1
            if byz:
                self.byzantine_applied += 1
            if self.updates == self._max_updates:
                self.stop("max_updates")
        self.rows += 1
        if not self.rows & (PROGRESS_EVERY_ROWS - 1):
            self._tick()

    def _tick(self) -> None:
        """Every thousand rows and every evaluation: the progress hooks, the flush timer."""
        if self.callbacks.wants("on_progress"):
            self.callbacks.call("on_progress", self.env.now, sim=self)
        if time.perf_counter() - self._last_flush >= FLUSH_EVERY_WALL_S:
            self._last_flush = time.perf_counter()
            self.events.flush()  # and the evals with it
        every_wall = self.scenario.output.checkpoint_every_wall_s
        if every_wall is not None and time.perf_counter() - self._last_checkpoint >= every_wall:
            self._request_wall_checkpoint()

    def record_message(self, sender: int, receiver: int, nbytes: int, sent_at: float) -> None:
        """One model sent from server ``sender`` to ``receiver``, arriving now (status ``message``)."""
        now = self.env.now
        self.events.append(
            (now, -1, sender, -1, sent_at, -1, -1, 0, 0.0, now - sent_at, "message", nbytes, 0,
             False, "", "", 0, receiver)
        )  # fmt: skip
        self.message_bytes += nbytes
        self.rows += 1

    def note_rejected_model(self) -> None:
        self.rejected_models += 1

    def count(self, name: str, n: int = 1) -> None:
        """A figure of summary.json an algorithm adds to (:data:`~fedsim.algorithms.context.COUNTERS`)."""
        if name not in COUNTERS:
            raise SimulationError(f"unknown counter {name!r}; known: {', '.join(COUNTERS)}")
        setattr(self, name, getattr(self, name) + n)

    def reach_target(self, sim_time: float) -> None:
        """An algorithm's own target was reached: ``time_to_target_s``, and the run stops."""
        if self.time_to_target is None:
            self.time_to_target = sim_time
        self.stop("target_accuracy")

    def _published(self, server: ServerModel) -> None:
        now = self.env.now
        self.callbacks.call(
            "on_publish",
            now,
            server=server.index,
            version=server.version,
            params=server.params,
            sim_time=now,
        )

    def stop(self, reason: str) -> None:
        if not self.stop_event.triggered:
            self.stop_reason = reason
            self.stop_event.succeed()

    def interrupt(self, signal_name: str) -> None:
        """Stop at the next event because the user (or the system) asked: the files are kept."""
        if not self.stop_event.triggered:
            self.interrupted_by = signal_name
        self.stop("interrupted")

    # -- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self) -> None:
        """Evaluate every model the algorithm exposes (one per server, or per task) now.

        The target-accuracy stop and the progress bar use the mean over the evaluated models.
        """
        targets = self.algorithm.eval_targets()
        errors = _consensus_errors(targets)
        accuracies, losses = [], []
        for target, error in zip(targets, errors, strict=True):
            evaluator = target.evaluator
            if evaluator is not None and target.params is not None:
                accuracy, loss = evaluator(target.params)
            else:
                accuracy, loss = math.nan, math.nan
            accuracies.append(accuracy)
            losses.append(loss)
            self.evals.append(
                (
                    self.env.now,
                    time.perf_counter() - self._started,
                    target.server,
                    target.version,
                    self.updates,
                    accuracy,
                    loss,
                    target.task,
                    error,
                )
            )
        accuracy = float(np.mean(accuracies)) if accuracies else math.nan
        loss = float(np.mean(losses)) if losses else math.nan
        self.last_eval = {"sim_time": self.env.now, "accuracy": accuracy, "loss": loss}
        self.evaluations += 1
        if self.scenario.output.save_models == "every_eval":
            self.models.save_eval(self.evaluations, self.env.now, targets)
        if self.callbacks.wants("on_eval"):
            rows = [
                dict(zip(EVAL_SCHEMA.names, row, strict=True))
                for row in self.evals.rows[-len(targets) :]
            ]
            self.callbacks.call(
                "on_eval",
                self.env.now,
                sim=self,
                sim_time=self.env.now,
                accuracy=accuracy,
                loss=loss,
                rows=rows,
            )
        target_acc = self.scenario.stop.target_accuracy
        if target_acc is not None and accuracy >= target_acc:
            if self.time_to_target is None:
                self.time_to_target = self.env.now
            self.stop("target_accuracy")
        self._tick()

    def _start_evaluations(self) -> None:
        """The first evaluation at time 0 (after the algorithm's start), then every ``every_s``.

        Plain callbacks, not a generator process: a run's state must be picklable (checkpoints).
        """
        first = simpy.Event(self.env)
        first._ok, first._value = True, None
        self.env.schedule(first, URGENT)
        first.callbacks.append(self._evaluation_tick)

    def _evaluation_tick(self, _event: simpy.Event) -> None:
        self.evaluate()
        self.env.timeout(self.scenario.eval.every_s).callbacks.append(self._evaluation_tick)

    def _time_up(self, _event: simpy.Event) -> None:
        self.stop("time")

    # -- checkpoints -----------------------------------------------------------------------------------
    def _schedule_checkpoint(self) -> None:
        every = self.scenario.output.checkpoint_every_s
        if every is not None and self.run_dir is not None:
            self.env.timeout(every).callbacks.append(self._checkpoint_due)

    def _checkpoint_due(self, _event: simpy.Event) -> None:
        """A periodic checkpoint event: the next one is scheduled, and this step ends, so that the
        run loop saves between two events (unless saving now would exceed
        ``output.checkpoint_max_overhead``: then it is skipped and counted)."""
        from fedsim import checkpoint

        self._schedule_checkpoint()
        if checkpoint.over_budget(self):
            self.checkpoints_skipped += 1
            return
        raise _CheckpointNow

    def _wall_checkpoint_due(self, _event: simpy.Event) -> None:
        self._wall_checkpoint_pending = False
        raise _CheckpointNow

    def _request_wall_checkpoint(self) -> None:
        """From inside an event (the row timer): save at the next event boundary."""
        if self._wall_checkpoint_pending or self.run_dir is None:
            return
        self._wall_checkpoint_pending = True
        event = simpy.Event(self.env)
        event._ok, event._value = True, None
        self.env.schedule(event, URGENT)
        event.callbacks.append(self._wall_checkpoint_due)

    def save_checkpoint(self) -> None:
        """Save the run's state now (between two events) to ``RUN_DIR/checkpoint.pkl``."""
        from fedsim import checkpoint

        self._last_checkpoint = started = time.perf_counter()
        checkpoint.save(self, self.run_dir / checkpoint.CHECKPOINT)
        self.checkpoints += 1
        self.checkpoint_wall_s += time.perf_counter() - started

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self) -> Result:
        """Run to the stop condition and return the Result (files written if there is a run dir)."""
        # A run allocates a few small objects per event; with the default gen-0 threshold (700) the
        # collector runs every ~100 updates and rescans torch's import-time objects in older
        # generations. Freeze what exists, collect young objects less often, restore afterwards.
        thresholds = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(50_000, 20, 10)
        try:
            return self._run()
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()

    def _run(self) -> Result:
        self._started = time.perf_counter()
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            path = self.run_dir / "scenario.yaml"
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            with rundir.writing(path, tmp):
                tmp.write_text(self.scenario.to_yaml())
            os.replace(tmp, path)
        env = self.env
        horizon = self.scenario.stop.time_s
        if horizon is not None:
            env.timeout(horizon).callbacks.append(self._time_up)
        env.process(self.algorithm.run())
        self._start_evaluations()
        self._schedule_checkpoint()
        self._last_checkpoint = self._started
        self.callbacks.call("on_start", env.now, sim=self)
        return self._continue()

    def resume(self) -> Result:
        """Go on from a checkpoint (:func:`fedsim.checkpoint.load` built this simulation)."""
        self.stop_event = self.env.event()
        self.stop_reason = ""
        self.interrupted_by = None
        self._last_checkpoint = time.perf_counter()
        self._wall_checkpoint_pending = False
        thresholds = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(50_000, 20, 10)
        try:
            return self._continue()
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()

    def _continue(self) -> Result:
        env = self.env
        try:
            with stop_on_signals(self.interrupt):
                self._loop()
        except rundir.DiskFullError as exc:
            raise self._disk_full(exc) from None
        except (ScenarioError, SimulationError) as exc:
            self._finish(error=str(exc))
            raise
        except Exception as exc:  # a failure inside the run: keep what was recorded, then report
            message = f"run failed at simulated time {env.now:.3f}s: {exc!r}"
            plugin = _plugin_in_traceback(exc, self.algorithm)
            if plugin is not None:
                message = (
                    f"{plugin} raised at simulated time {env.now:.3f}s: {type(exc).__name__}: {exc}"
                )
            self._finish(error=message)
            raise SimulationError(message) from exc
        keep_parts = False
        try:
            if self.stop_reason == "interrupted" and self._checkpointing():
                self.save_checkpoint()  # a resume goes on from here, with these parts
                keep_parts = True
            if self.last_eval.get("sim_time") != env.now or not (
                self.evals.total + len(self.evals.rows)
            ):
                self.evaluate()
            self.algorithm.finish()
            for job in list(self.pool.open_jobs.values()):
                self.record_job(job, "in_flight")  # still out at the stop: never returned
            return self._finish(keep_parts=keep_parts)
        except rundir.DiskFullError as exc:
            raise self._disk_full(exc) from None

    def _disk_full(self, exc: rundir.DiskFullError) -> rundir.DiskFullError:
        """The disk filled: the run stops and writes nothing more, so the trace parts, the last
        checkpoint and every file written before stay as they were (a half-written file was
        removed); with a checkpoint, a resume goes on once there is room."""
        hint = ""
        if self.run_dir is not None and (self.run_dir / rundir.CHECKPOINT).is_file():
            hint = f"; after freeing space, fedsim run --resume {self.run_dir} goes on from it"
        message = (
            f"{exc} at simulated time {self.env.now:.3f}s; the run stopped and keeps the files "
            f"written before{hint}"
        )
        return rundir.DiskFullError(message, exc.path)

    def _checkpointing(self) -> bool:
        out = self.scenario.output
        asked = out.checkpoint_every_s is not None or out.checkpoint_every_wall_s is not None
        return asked and self.run_dir is not None

    def _loop(self) -> None:
        """SimPy's run loop until the stop event, watching that the simulated clock advances."""
        env = self.env
        step = env.step
        self.stop_event.callbacks.append(StopSimulation.callback)
        last, still = env.now, 0
        while True:
            try:
                while True:
                    for _ in range(_STEPS_PER_CHECK):
                        step()
                    if env.now != last:
                        last, still = env.now, 0
                        continue
                    still += _STEPS_PER_CHECK
                    if still >= STALL_EVENTS:
                        raise SimulationError(self._stall_message(still))
            except _CheckpointNow:
                self.save_checkpoint()
            except StopSimulation:
                return
            except EmptySchedule:
                self.stop_reason = "no_events_left"
                return

    def _stall_message(self, events: int) -> str:
        key, value = _smallest_duration(self.scenario.to_dict())
        hint = f"; the smallest duration is {key} = {value:g}" if key else ""
        return (
            f"simulated time stuck at {self.env.now:g} s for {events:,} events: a delay or period "
            f"is too small for the clock to advance{hint}"
        )

    def summary(self, wall_time_s: float, totals: dict[str, Any]) -> dict[str, Any]:
        accepted = self.updates
        evals_acc = self.last_eval.get("accuracy", math.nan)
        return {
            "name": self.scenario.name,
            "scenario_hash": self.scenario.hash(),
            "seed": self.scenario.seed,
            "algorithm": self.scenario.algorithm.name,
            "stop_reason": self.stop_reason,
            "sim_time_s": self.env.now,
            "wall_time_s": wall_time_s,
            "updates": accepted,
            "versions": self.servers[0].version,
            "status_counts": totals["status_counts"],
            "mean_staleness": totals["mean_staleness"] if accepted else math.nan,
            "final_accuracy": evals_acc,
            "final_loss": self.last_eval.get("loss", math.nan),
            "time_to_target_s": self.time_to_target,
            "updates_per_wall_s": accepted / wall_time_s if wall_time_s > 0 else math.nan,
            "jobs_trained": self.trainer.jobs_trained if self.trainer else 0,
            "train_wall_s": self.trainer.train_seconds if self.trainer else 0.0,
            "eval_wall_s": self.evaluator.seconds if self.evaluator else 0.0,
            "rejected_models": self.rejected_models,
            "byzantine_clients": int(self.is_byzantine.sum()),
            "byzantine_applied": self.byzantine_applied,
            "robust_fallbacks": self.robust_fallbacks,
            "bytes": totals["bytes"],
            "topology": self.topology.summary() if self.topology is not None else None,
            "model_params": self.spec.numel,
            "device": str(self.device),
            "trainer": self.trainer.training_path.to_summary() if self.trainer else None,
            "threads": (
                self.threads.to_summary()
                if self.threads is not None
                else {
                    "n": torch.get_num_threads(),
                    "source": "caller",
                    "reason": "set by the caller",
                }
            ),
            "versions_of": _library_versions(),
            "run_dir": str(self.run_dir) if self.run_dir else None,
        }

    def _finish(self, error: str | None = None, *, keep_parts: bool = False) -> Result:
        """Close both traces and write the summary (also after an interrupt or a failure).

        ``keep_parts``: an interrupted run with a checkpoint keeps its trace parts beside the
        finished files, for the resume to go on from."""
        events = self.events.close(keep_parts=keep_parts)
        evals = self.evals.close(keep_parts=keep_parts)
        if error is None and not keep_parts and self.run_dir is not None:
            from fedsim.checkpoint import CHECKPOINT

            (self.run_dir / CHECKPOINT).unlink(missing_ok=True)  # finished: nothing to resume
        events_path = self.run_dir / "events.parquet" if self.run_dir is not None else None
        summary = self.summary(
            time.perf_counter() - self._started, event_totals(events_path, events)
        )
        summary["best_accuracy"] = self.best_accuracy(evals)
        if self.pool.availability is not None:  # seconds with no job in flight (clients offline)
            summary["idle_s"] = self.pool.idle_s()
        if self.interrupted_by is not None:
            summary["interrupted_by"] = self.interrupted_by
        if self.checkpoints or self.resumed_from is not None:
            summary["checkpoints"] = self.checkpoints
            summary["checkpoints_skipped"] = self.checkpoints_skipped
            summary["resumed_from_s"] = self.resumed_from
        if error is not None:
            summary["stop_reason"] = "error"
            summary["error"] = error
        if error is None:  # an algorithm's own figures (FedAST's per-task times, metrics())
            for name in ("summary_extra", "metrics"):
                extra = getattr(self.algorithm, name, None)
                if extra is not None:
                    summary.update(extra())
            if self.scenario.output.save_models != "none":
                summary["models"] = self.models.save_final(self.algorithm.eval_targets())
        if self.run_dir is not None:
            text = json.dumps(_jsonable(summary), indent=2)
            tmp = self.run_dir / f".summary.json.tmp-{os.getpid()}"
            with rundir.writing(self.run_dir / "summary.json", tmp):
                tmp.write_text(text)
            os.replace(tmp, self.run_dir / "summary.json")
        result = self._result(events, evals, summary)
        if error is None:
            self.callbacks.call("on_end", self.env.now, summary=summary, result=result)
        return result

    def _result(
        self, events: pd.DataFrame | None, evals: pd.DataFrame | None, summary: dict[str, Any]
    ) -> Result:
        """The Result; the facts of the world go to the run directory, or into the Result."""
        tasks = getattr(self.algorithm, "task_data", None)
        data = tasks() if tasks is not None else [self.world.data]
        if self.run_dir is not None:
            write_world(self.run_dir, self.world, data, self.env.now)
            return Result(self.scenario, events, evals, summary, self.run_dir)
        availability = self.world.availability
        return Result(
            self.scenario,
            events,
            evals,
            summary,
            clients=client_table(self.world, data, self.env.now).to_pandas(),
            availability=availability.switches().to_pandas() if availability is not None else None,
            topology=self.topology,
        )

    def best_accuracy(self, evals: pd.DataFrame | None) -> float:
        if evals is None:
            evals = read_table(self.run_dir / "evals.parquet", EVAL_SCHEMA)
        return float(evals["accuracy"].max()) if len(evals) else math.nan


def _consensus_errors(targets: list[Any]) -> list[float]:
    """Per target: distance of its model from the mean model of its task's targets (NaN alone)."""
    errors = [math.nan] * len(targets)
    by_task: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        if t.params is not None and t.params.numel():
            by_task.setdefault(t.task, []).append(i)
    for members in by_task.values():
        if len(members) < 2:
            continue
        stacked = torch.stack([targets[i].params for i in members]).double()
        distances = (stacked - stacked.mean(0)).norm(dim=1).tolist()
        for i, d in zip(members, distances, strict=True):
            errors[i] = d
    return errors


def _plugin_in_traceback(exc: BaseException, algorithm: Any) -> str | None:
    """``algorithm plugin NAME (SOURCE)`` when a plugin algorithm's own code raised ``exc``."""
    from fedsim.plugins import SOURCES

    name = algorithm.name
    source = SOURCES.get(name, "fedsim")
    if source == "fedsim":
        return None
    files = {
        inspect.getsourcefile(cls)
        for cls in type(algorithm).__mro__
        if cls.__module__ != "builtins" and not cls.__module__.startswith("fedsim.")
    }
    frame = exc.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename in files:
            return f"algorithm plugin {name} ({source})"
        frame = frame.tb_next
    return None


def _smallest_duration(data: Any, prefix: str = "") -> tuple[str, float]:
    """The scenario key ending in ``_s`` with the smallest positive value (a stalled clock's hint)."""
    best: tuple[str, float] = ("", math.inf)
    items = data.items() if isinstance(data, dict) else ()
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            found = _smallest_duration(value, path + ".")
            best = found if found[1] < best[1] else best
        elif (
            str(key).endswith("_s")
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and 0 < value < best[1]
        ):
            best = (path, float(value))
    return best


def _library_versions() -> dict[str, str]:
    import pydantic

    from fedsim import __version__

    return {
        "fedsim": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "simpy": simpy.__version__,
        "pandas": pd.__version__,
        "pydantic": pydantic.__version__,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


ScenarioSource = str | Path | Mapping[str, Any] | Scenario


def run(
    scenario: ScenarioSource | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | str | None = None,
    *,
    out: str | Path | None = None,
    save: bool = True,
    device: str | None = None,
    progress: ProgressHook | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    threads: int | None = None,
    data: Dataset | Mapping[str, Any] | None = None,
    model: ModelSource | None = None,
    callbacks: Iterable[Any] = (),
    **keyword_overrides: Any,
) -> Result:
    """Run a scenario and return its :class:`Result`.

    ``overrides`` maps dotted key paths to values (``{"clients.count": 50}``) or is a list of
    ``"key.path=value"`` strings; keyword overrides use ``__`` for the dots
    (``run("s.yaml", stop__time_s=60)``). ``save=False`` keeps everything in memory.

    A run directory that already holds a run is refused unless ``overwrite=True`` (the new run is
    built and validated before the old one is removed). ``resume=RUN_DIR`` runs an interrupted
    run's own scenario to the end again, into its directory: the finished files are identical to an
    uninterrupted run's (the run is replayed from its start; checkpoints are not implemented yet).
    ``threads`` sets torch's intra-op thread count for the run (else ``FEDSIM_THREADS``, else a
    choice from the workload: see :mod:`fedsim.threads`); ``summary.json`` records it.
    ``data`` trains on your own arrays (a :class:`fedsim.Dataset`, or a mapping with ``x_train,
    y_train, x_test, y_test`` and optionally ``owner_train``): ``data.dataset`` becomes ``memory``.
    Bad input raises :class:`ScenarioError`, a failure during the run :class:`SimulationError`.
    """
    if resume is not None:
        if overrides or keyword_overrides or out is not None or not save:
            raise ScenarioError(
                "resume takes no overrides, out or save: it reruns the saved scenario"
            )
        run_dir = Path(resume)
        resolved = _resumable_scenario(run_dir, scenario)
    else:
        if scenario is None:
            raise ScenarioError("fedsim.run needs a scenario (a path, a mapping or a Scenario)")
        if data is not None:
            keyword_overrides = {**keyword_overrides, "data__dataset": "memory"}
        if model is not None:
            keyword_overrides = {**keyword_overrides, "model": {"kind": "memory"}}
        resolved = _resolve(scenario, overrides, keyword_overrides)
        run_dir = (Path(out) if out is not None else resolved.run_dir) if save else None
        if out is not None and not str(out).strip():
            raise ScenarioError("out: an empty path; name the run directory")
    if run_dir is not None:
        rundir.check(run_dir, overwrite=overwrite, resume=resume is not None)
    with using_data(data), using_model(model):
        build = {"device": device, "progress": progress, "callbacks": list(callbacks)}
        try:
            return _run_resolved(resolved, run_dir, build, threads, overwrite, resume)
        except ScenarioError as exc:  # found after loading: FILE:LINE of its key, like validation
            raise resolved.locate_error(exc) from None


def _run_resolved(
    resolved: Scenario,
    run_dir: Path | None,
    build: dict[str, Any],
    threads: int | None,
    overwrite: bool,
    resume: str | Path | None,
) -> Result:
    """Check the run directory, choose threads, build, claim the directory, run."""
    choice = choose_threads(resolved, threads, device=build["device"])
    with using_threads(choice):
        simulation = _build(resolved, run_dir, build)
        simulation.threads = choice
        if run_dir is None:
            return simulation.run()
        saved = run_dir / rundir.CHECKPOINT
        from_checkpoint = resume is not None and saved.is_file()
        lock = rundir.claim(
            run_dir,
            scenario_hash=resolved.hash(),
            overwrite=overwrite,
            resume=resume is not None,
            from_checkpoint=from_checkpoint,
        )
        try:
            if from_checkpoint:
                from fedsim import checkpoint

                return checkpoint.load(simulation, saved).resume()
            return simulation.run()
        finally:
            lock.release()


def _resolve(
    scenario: ScenarioSource, overrides: Any, keyword_overrides: Mapping[str, Any]
) -> Scenario:
    if not isinstance(scenario, (str, Path, Mapping, Scenario)):
        raise ScenarioError(
            "fedsim.run: the scenario must be a file path, a mapping or a Scenario, "
            f"got {type(scenario).__name__}"
        )
    merged: dict[str, Any] = {}
    if isinstance(overrides, str):
        overrides = [overrides]  # one "key=value" string, not its characters
    if overrides:
        if isinstance(overrides, Mapping):
            merged.update(overrides)
        elif isinstance(overrides, Iterable) and all(isinstance(o, str) for o in overrides):
            from fedsim.scenario import parse_override

            merged.update(parse_override(o) for o in overrides)
        else:
            raise ScenarioError(
                "fedsim.run: overrides must be a mapping of key paths to values or a list of "
                f'"key.path=value" strings, got {overrides!r}'
            )
    merged.update({k.replace("__", "."): v for k, v in keyword_overrides.items()})
    resolved = load_scenario(scenario, merged or None)
    if resolved.seed is None:
        drawn = int(np.random.SeedSequence().entropy % (2**63))
        resolved = resolved.model_copy(update={"seed": drawn})
    return resolved


def _resumable_scenario(run_dir: Path, given: ScenarioSource | None) -> Scenario:
    """The scenario saved in ``run_dir``, after checking that it can be resumed here."""
    if rundir.state(run_dir) != "run" or not (run_dir / "scenario.yaml").is_file():
        raise ScenarioError(f"nothing to resume: {run_dir} holds no fedsim run")
    from fedsim import __version__

    written_by = rundir.read_marker(run_dir).get("fedsim")
    if written_by is not None and written_by != __version__:
        raise ScenarioError(
            f"{run_dir} was written by fedsim {written_by}, this is fedsim {__version__}: "
            "a resumed run would not match; start it again with --overwrite"
        )
    saved = load_scenario(run_dir / "scenario.yaml")
    if saved.model.kind == "memory":
        raise ScenarioError(
            f"{run_dir} trained a model passed to fedsim.run(model=...), which a run directory "
            "does not keep: run it again with the same model and overwrite=True"
        )
    if saved.data.dataset == "memory":
        raise ScenarioError(
            f"{run_dir} trained on in-memory data (fedsim.run(data=...)), which a run directory "
            "does not keep: run it again with the same data and overwrite=True"
        )
    if given is not None:
        asked = load_scenario(given)
        if asked.hash() != saved.hash():
            raise ScenarioError(
                f"the scenario differs from the one in {run_dir} (hash {asked.hash()} vs "
                f"{saved.hash()}); resume takes the run directory alone"
            )
    return saved


def _build(scenario: Scenario, run_dir: Path | None, build: dict[str, Any]) -> Simulation:
    """Build the world; input found wrong only now (a file, its size) is a ScenarioError too."""
    try:
        return Simulation(scenario, run_dir=run_dir, **build)
    except (ScenarioError, SimulationError):
        raise
    except MemoryError:
        raise ScenarioError(
            "not enough memory to build this scenario (clients, data or model too large)"
        ) from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise ScenarioError(f"{where}{exc.strerror or exc}") from None
    except Exception as exc:
        raise SimulationError(f"could not build the run: {type(exc).__name__}: {exc}") from exc
