"""Building the world from a scenario and running it: the event loop, evaluation, stop conditions.

Simulated time comes only from the timing models. Real compute (training, evaluation) happens inside
event callbacks and never advances the clock, so the same scenario and seed give the same trace on
any machine and with any trainer backend.
"""

from __future__ import annotations

import gc
import json
import math
import platform
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import simpy
import torch

from fedsim.algorithms import ALGORITHMS
from fedsim.algorithms.base import ServerModel
from fedsim.clients import ClientPool, Job
from fedsim.errors import ScenarioError, SimulationError
from fedsim.learning.batched import make_trainer
from fedsim.learning.data import dataset_info, load_federated
from fedsim.learning.models import build_model, init_params
from fedsim.learning.trainer import Evaluator, LocalTask
from fedsim.recorder import EVAL_SCHEMA, EVENT_SCHEMA, TraceWriter, read_table
from fedsim.rng import SeedStreams
from fedsim.scenario import Scenario, load_scenario
from fedsim.timing import ClientTiming
from fedsim.topology import Topology, build_topology

ACCEPTED = frozenset({"applied", "buffered"})
NOT_UPLOADED = frozenset({"dropped", "cancelled", "in_flight"})
PROGRESS_EVERY_ROWS = 4096


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
    ) -> None:
        self.scenario = scenario
        self.device = resolve_device(device)
        self.run_dir = run_dir
        self.progress = progress
        self.streams = SeedStreams(scenario.seed)
        self.env = simpy.Environment()
        self.learning = scenario.training is not None
        n_clients = scenario.clients.count

        info = dataset_info(scenario.data)
        module, self.spec = build_model(scenario.model, info)
        model_bytes = self.spec.nbytes()
        self.trainer = None
        self.evaluator = None
        params = None
        if self.learning:
            self.data = load_federated(scenario.data, n_clients, self.streams, self.device)
            self.client_sizes = self.data.client_sizes
            task = LocalTask(module, self.spec, self.data, scenario.training)
            self.trainer = make_trainer(
                task, scenario.training.backend, max_batch=scenario.training.max_batch
            )
            self.evaluator = Evaluator(module, self.spec, self.data)
            params = init_params(self.spec, self.streams.torch_generator("model.init"))
            params = params.to(self.device)
        else:
            self.client_sizes = np.ones(n_clients, dtype=int)

        self.byzantine = scenario.byzantine
        self.is_byzantine = np.zeros(n_clients, dtype=bool)
        extra = None
        if self.byzantine is not None:
            self.is_byzantine = self.byzantine.choose(
                n_clients, self.streams.generator("byzantine.choice")
            )
            if self.byzantine.speed != 1.0:
                extra = np.where(self.is_byzantine, self.byzantine.speed, 1.0)
        self.byzantine_list: list[bool] = self.is_byzantine.tolist()
        self.attack_name = self.byzantine.attack.name if self.byzantine is not None else ""
        self.byzantine_applied = 0
        self.robust_fallbacks = 0

        clients = scenario.clients
        self.timing = ClientTiming(
            compute=clients.compute,
            heterogeneity=clients.heterogeneity,
            stragglers=clients.stragglers,
            dropout=clients.dropout,
            network=clients.network,
            n_clients=n_clients,
            bytes_down=model_bytes,
            bytes_up=model_bytes,
            streams=self.streams,
            extra_multipliers=extra,
        )
        self.pool = ClientPool(self.env, n_clients, self.timing, self.trainer, self.streams)
        if self.byzantine is not None and self.byzantine.attack.stage == "data":
            if self.learning and self.data.info.task != "classification":
                raise ScenarioError(
                    "label_flip needs a classification dataset", path="byzantine.attack"
                )
            self.pool.flip_labels = self.byzantine_list
        self.topology: Topology | None = None
        self.client_server = np.zeros(n_clients, dtype=np.int64)
        n_servers = 1
        if scenario.topology is not None:
            self.topology = build_topology(
                scenario.topology, self.streams.generator("topology.graph")
            )
            n_servers = self.topology.servers
            for server, members in enumerate(self.topology.assignment):
                self.client_server[list(members)] = server
        # Every server starts from the same initial model (a common initialisation).
        self.servers = [ServerModel(i, params) for i in range(n_servers)]
        self.message_bytes = 0
        self.algorithm = ALGORITHMS[scenario.algorithm.name](scenario.algorithm, self)

        chunk = scenario.output.flush_rows
        self.events = TraceWriter(
            run_dir and run_dir / "events.parquet", EVENT_SCHEMA, chunk_rows=chunk
        )
        self.evals = TraceWriter(
            run_dir and run_dir / "evals.parquet", EVAL_SCHEMA, chunk_rows=chunk
        )
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
    def record_job(self, job: Job, status: str, reason: str = "") -> None:
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
            )
        )
        if status in ACCEPTED:
            self.updates += 1
            if byz:
                self.byzantine_applied += 1
            if self.updates == self._max_updates:
                self.stop("max_updates")
        self.rows += 1
        if self.progress is not None and not self.rows & (PROGRESS_EVERY_ROWS - 1):
            self.progress(self)

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

    def stop(self, reason: str) -> None:
        if not self.stop_event.triggered:
            self.stop_reason = reason
            self.stop_event.succeed()

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
        target_acc = self.scenario.stop.target_accuracy
        if target_acc is not None and accuracy >= target_acc:
            if self.time_to_target is None:
                self.time_to_target = self.env.now
            self.stop("target_accuracy")
        if self.progress is not None:
            self.progress(self)

    def _evaluation_process(self):
        every = self.scenario.eval.every_s
        while True:
            self.evaluate()
            yield self.env.timeout(every)

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
            (self.run_dir / "scenario.yaml").write_text(self.scenario.to_yaml())
        env = self.env
        horizon = self.scenario.stop.time_s
        if horizon is not None:
            env.timeout(horizon).callbacks.append(lambda _e: self.stop("time"))
        env.process(self.algorithm.run())
        env.process(self._evaluation_process())
        try:
            env.run(until=self.stop_event)
        except RuntimeError as exc:
            if "No scheduled events left" not in str(exc):
                raise
            self.stop_reason = "no_events_left"
        except (ScenarioError, SimulationError):
            raise
        except Exception as exc:  # a failure inside the run: keep what was recorded, then report
            self._finish_files()
            raise SimulationError(f"run failed at simulated time {env.now:.3f}s: {exc!r}") from exc
        if self.last_eval.get("sim_time") != env.now or not self.evals.total + len(self.evals.rows):
            self.evaluate()
        self.algorithm.finish()
        for job in list(self.pool.open_jobs.values()):
            self.record_job(job, "in_flight")  # still out at the stop: downloaded, never returned
        return self._finish()

    def _finish_files(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return self.events.close(), self.evals.close()

    def summary(self, wall_time_s: float, events: pd.DataFrame) -> dict[str, Any]:
        accepted = self.updates
        evals_acc = self.last_eval.get("accuracy", math.nan)
        counts = events["status"].value_counts()
        used = events["status"].isin(ACCEPTED)
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
            "status_counts": {k: int(counts[k]) for k in sorted(counts.index)},
            "mean_staleness": float(events["staleness"][used].mean()) if accepted else math.nan,
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
            "bytes": _bytes_by_link_kind(events),
            "topology": self.topology.summary() if self.topology is not None else None,
            "model_params": self.spec.numel,
            "device": str(self.device),
            "versions_of": _library_versions(),
            "run_dir": str(self.run_dir) if self.run_dir else None,
        }

    def _finish(self) -> Result:
        events, evals = self._finish_files()
        summary = self.summary(time.perf_counter() - self._started, events)
        summary["best_accuracy"] = float(evals["accuracy"].max()) if len(evals) else math.nan
        extra = getattr(self.algorithm, "summary_extra", None)
        if extra is not None:  # an algorithm's own figures (e.g. FedAST's per-task times)
            summary.update(extra())
        if self.run_dir is not None:
            (self.run_dir / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2))
        return Result(self.scenario, events, evals, summary, self.run_dir)


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


def _bytes_by_link_kind(events: pd.DataFrame) -> dict[str, int]:
    """Total bytes per link kind: client uploads, client downloads, server-to-server messages."""
    messages = events["status"] == "message"
    jobs = events[~messages]
    return {
        "client_up": int(jobs["bytes_up"].sum()),
        "client_down": int(jobs["bytes_down"].sum()),
        "server_to_server": int(events.loc[messages, "bytes_up"].sum()),
    }


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


@dataclass
class Result:
    """What a run produced: the resolved scenario, the traces as DataFrames, and the summary."""

    scenario: Scenario
    events: pd.DataFrame
    evals: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None

    @classmethod
    def load(cls, run_dir: str | Path) -> Result:
        """Read a run directory back (also one a killed run left behind)."""
        run_dir = Path(run_dir)
        if not (run_dir / "scenario.yaml").is_file():
            raise ScenarioError(f"not a fedsim run directory (no scenario.yaml): {run_dir}")
        scenario = load_scenario(run_dir / "scenario.yaml")
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        return cls(
            scenario,
            read_table(run_dir / "events.parquet"),
            read_table(run_dir / "evals.parquet"),
            summary,
            run_dir,
        )


def run(
    scenario: str | Path | Mapping[str, Any] | Scenario,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    *,
    out: str | Path | None = None,
    save: bool = True,
    device: str | None = None,
    progress: ProgressHook | None = None,
    **keyword_overrides: Any,
) -> Result:
    """Run a scenario and return its :class:`Result`.

    ``overrides`` maps dotted key paths to values (``{"clients.count": 50}``) or is a list of
    ``"key.path=value"`` strings; keyword overrides use ``__`` for the dots
    (``run("s.yaml", stop__time_s=60)``). ``save=False`` keeps everything in memory.
    """
    merged: dict[str, Any] = {}
    if overrides:
        if isinstance(overrides, Mapping):
            merged.update(overrides)
        else:
            from fedsim.scenario import parse_override

            merged.update(parse_override(o) for o in overrides)
    merged.update({k.replace("__", "."): v for k, v in keyword_overrides.items()})
    resolved = load_scenario(scenario, merged or None)
    if resolved.seed is None:
        drawn = int(np.random.SeedSequence().entropy % (2**63))
        resolved = resolved.model_copy(update={"seed": drawn})
    run_dir = None
    if save:
        run_dir = Path(out) if out is not None else resolved.run_dir
        _clear_run_dir(run_dir)
    return Simulation(resolved, device=device, run_dir=run_dir, progress=progress).run()


RUN_FILES = ("events.parquet", "evals.parquet", "summary.json", "scenario.yaml")


def _clear_run_dir(run_dir: Path) -> None:
    """Remove a previous run's files from ``run_dir`` (never anything else)."""
    if not run_dir.exists():
        return
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / f"{name}.parts", ignore_errors=True)
