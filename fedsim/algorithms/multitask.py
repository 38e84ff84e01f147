"""Several tasks on one client population: what FedAST and Sync-ST share.

Each task has its own dataset, partition, model, local training, server model, target and random
streams; all tasks share the scenario's clients and their timing (``clients:``). A task's ``data``,
``model`` and ``training`` default to the scenario's top-level sections, which are otherwise unused
by the multi-task algorithms.

Random streams: task 0 uses the scenario's own stream names (``data.partition``, ``model.init``,
…), so a one-task run sees the same partition and initial model as a single-task algorithm on the
same data (common random numbers; the limiting cases L4/L5 rely on it). Task ``i ≥ 1`` prefixes
every stream name with ``task{i}/``, so equal data configs still get independent draws. Client
sampling and per-job training seeds are the pool's (shared; job ids are unique).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field, PositiveFloat, model_validator

from fedsim.algorithms.base import Algorithm, EvalTarget, ServerModel
from fedsim.algorithms.context import AlgorithmContext
from fedsim.algorithms.server_opt import ServerOptimizer, ServerOptState
from fedsim.clients import Job
from fedsim.config_base import Section
from fedsim.errors import ScenarioError
from fedsim.learning.batched import make_trainer
from fedsim.learning.data import DataConfig, FederatedData, dataset_info
from fedsim.learning.models import Model, build_model, init_params
from fedsim.learning.trainer import Evaluator, LocalTask, TrainingConfig
from fedsim.robust.aggregators import is_plain_mean
from fedsim.world import build_task_data, task_streams


class TaskConfig(Section):
    """One task: its data, model, local training, target and initial share of the clients."""

    name: str | None = None
    """Label in plots and the summary; null: ``task{i}-{dataset}``."""
    data: DataConfig | None = None
    """Dataset and partition of this task; null: the scenario's ``data`` section."""
    model: Model | None = None
    """Model of this task; null: the scenario's ``model`` section."""
    training: TrainingConfig | None = None
    """Local training of this task; null: the scenario's ``training`` section."""
    target_accuracy: float | None = Field(0.8, gt=0, le=1)
    """The task is finished at the first check with test accuracy ≥ this (null: no accuracy
    target; then set target_loss)."""
    target_loss: PositiveFloat | None = None
    """The task is finished at the first check with test loss ≤ this (regression tasks); when both
    targets are set, both must be met."""
    share: PositiveFloat = 1.0
    """Initial share of the client budget (FedAST: active requests R_m; Sync-ST: clients per round),
    relative to the other tasks' shares."""
    server_lr: PositiveFloat | None = None
    """Server learning rate η_g of this task; null: the algorithm's server_lr."""

    @model_validator(mode="after")
    def _some_target(self) -> TaskConfig:
        if self.target_accuracy is None and self.target_loss is None:
            raise ValueError("set target_accuracy or target_loss (a task needs a target)")
        return self


def check_multitask_scenario(config: Any, scenario: Any) -> None:
    """Cross-section rules of FedAST and Sync-ST, run by scenario validation (``fedsim validate``)."""
    for key, value in (("byzantine", scenario.byzantine), ("topology", scenario.topology)):
        if value is not None:
            raise ScenarioError(f"not supported by {config.name}; set it to null", path=key)
    if not is_plain_mean(scenario.aggregator):
        raise ScenarioError(
            f"{config.name} averages each task's updates; only aggregator mean is supported",
            path="aggregator.name",
        )
    if not config.tasks:
        raise ScenarioError(
            "give at least one task (its data, model and target)", path="algorithm.tasks"
        )


def check_tasks(config: Section) -> int:
    """The number of tasks a config's ``tasks`` list gives (at least 1 for the checks that follow).

    An empty list is refused when the algorithm is built (``algorithm.tasks``): the config itself
    must stay constructible with its defaults, which the scenario reference instantiates.
    """
    return max(1, len(config.tasks))


@dataclass(eq=False)
class TaskState:
    """Everything one task owns during a run."""

    index: int
    name: str
    config: TaskConfig
    data: FederatedData
    trainer: Any
    evaluator: Evaluator
    server: ServerModel
    training: TrainingConfig
    server_lr: float
    local_steps: float
    """Mean SGD steps per job (τ of the dispersion statistic)."""
    weight_mask: torch.Tensor
    """Coordinates of non-bias tensors (the dispersion statistic skips biases, as the code does)."""
    model_bytes: int = 0
    """Bytes of the task's model (each job downloads and uploads one)."""
    server_opt: ServerOptimizer | None = None
    """The task's server optimiser (``server_optimizer`` with the task's ``server_lr``)."""
    opt_state: ServerOptState = field(default_factory=ServerOptState)
    """Its state (each task has its own)."""
    finished_at: float | None = None
    checks: int = 0
    last_accuracy: float = math.nan
    last_loss: float = math.nan
    jobs: dict[int, Job] = field(default_factory=dict)
    """Jobs of this task in flight, by id."""

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def reached(self, accuracy: float, loss: float) -> bool:
        cfg = self.config
        ok = True
        if cfg.target_accuracy is not None:
            ok = ok and accuracy >= cfg.target_accuracy
        if cfg.target_loss is not None:
            ok = ok and loss <= cfg.target_loss
        return ok


def check_task_setup(configs: list[TaskConfig], scenario: Any) -> None:
    """What building the tasks refuses before loading anything (``fedsim validate`` runs it too):
    a training section for every task, and no accuracy target on a regression dataset."""
    if scenario.training is None and any(t.training is None for t in configs):
        raise ScenarioError(
            "multi-task algorithms train real models: set training (or every task's training)",
            path="training",
        )
    for i, cfg in enumerate(configs):
        info = dataset_info(cfg.data if cfg.data is not None else scenario.data)
        if info.task != "classification" and cfg.target_accuracy is not None:
            raise ScenarioError(
                f"{info.name} is a regression dataset: accuracy is undefined; set "
                "target_accuracy: null and a target_loss",
                path=f"algorithm.tasks.{i}.target_accuracy",
            )


def build_tasks(
    configs: list[TaskConfig], ctx: AlgorithmContext, server_lr: float
) -> list[TaskState]:
    """Data, model, trainer, evaluator and server model of every task (see the module docstring)."""
    scenario = ctx.scenario
    check_task_setup(configs, scenario)
    tasks = []
    for i, cfg in enumerate(configs):
        path = f"algorithm.tasks.{i}"
        data_cfg = cfg.data if cfg.data is not None else scenario.data
        model_cfg = cfg.model if cfg.model is not None else scenario.model
        training = cfg.training if cfg.training is not None else scenario.training
        info = dataset_info(data_cfg)
        reuse = (
            i == 0
            and ctx.model.learning
            and data_cfg == scenario.data
            and model_cfg == scenario.model
            and training == scenario.training
        )
        if reuse:  # the simulation already built exactly this task (same streams too)
            data, trainer, evaluator = ctx.model.data, ctx.model.trainer, ctx.model.evaluator
            spec, params = ctx.model.spec, ctx.servers[0].params
        else:
            streams = task_streams(ctx.streams, i)
            try:
                module, spec = build_model(model_cfg, info)
            except ScenarioError as exc:
                raise ScenarioError(exc.message, path=f"{path}.model") from None
            try:
                data = build_task_data(data_cfg, scenario.clients.count, streams, ctx.model.device)
            except ScenarioError as exc:
                where = exc.path or "data"
                if where.startswith("data"):
                    where = f"{path}.{where}" if cfg.data is not None else where
                raise ScenarioError(exc.message, path=where, value=exc.value) from None
            local = LocalTask(module, spec, data, training)
            trainer = make_trainer(local, training.backend, max_batch=training.max_batch)
            evaluator = Evaluator(module, spec, data)
            params = init_params(spec, streams.torch_generator("model.init")).to(ctx.model.device)
        mask = torch.zeros(spec.numel, dtype=torch.bool)
        for name, shape, off in zip(spec.names, spec.shapes, spec.offsets, strict=True):
            if not name.endswith("bias"):
                mask[off : off + math.prod(shape)] = True
        if training.local_epochs is None:
            steps = float(training.local_steps)
        else:
            sizes = [len(ix) for ix in data.client_indices if len(ix)]
            b = training.batch_size
            steps = float(
                np.mean([math.ceil(training.local_epochs * n / min(b, n)) for n in sizes])
            )
        task_lr = cfg.server_lr if cfg.server_lr is not None else server_lr
        tasks.append(
            TaskState(
                index=i,
                name=cfg.name or f"task{i}-{data_cfg.dataset}",
                config=cfg,
                data=data,
                trainer=trainer,
                evaluator=evaluator,
                server=ServerModel(0, params),
                training=training,
                server_lr=task_lr,
                local_steps=steps,
                weight_mask=mask.to(ctx.model.device),
                model_bytes=spec.nbytes(),
                server_opt=ServerOptimizer.of(scenario.server_optimizer, task_lr),
            )
        )
    return tasks


class MultiTaskAlgorithm(Algorithm):
    """Base of FedAST and Sync-ST: per-task models, dispatch, target checks, evaluation, summary.

    ``ctx.servers[0]`` (the scenario's own model) is left untouched; each task has its own
    :class:`ServerModel` whose version is the task's round counter ``r_m``. Jobs carry their task
    in ``job.task`` (the ``task`` column of events) and ``server`` 0.
    """

    def __init__(self, config: Any, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        self.tasks = build_tasks(list(config.tasks), ctx, config.server_lr)
        self.test_every = config.test_every

    # -- jobs ----------------------------------------------------------------------------------
    def dispatch_task(self, task: TaskState, client: int) -> Job:
        """Start ``client`` (already taken from the idle list) on ``task``'s current model."""
        s = task.server
        job = self.pool.dispatch(
            client,
            0,
            s.version,
            s.params,
            self._arrived,
            self._lost,
            trainer=task.trainer,
            task=task.index,
        )
        job.bytes_up = job.bytes_down = task.model_bytes  # the task's model, not the top-level one
        task.jobs[job.id] = job
        return job

    def _arrived(self, job: Job) -> None:
        task = self.tasks[job.task]
        task.jobs.pop(job.id, None)
        job.arrival_version = task.server.version
        self.on_arrival(job)

    def _lost(self, job: Job) -> None:
        task = self.tasks[job.task]
        task.jobs.pop(job.id, None)
        job.arrival_version = task.server.version
        self.on_dropped(job)

    def staleness(self, job: Job) -> int:
        return self.tasks[job.task].server.version - job.base_version

    def cancel_task_jobs(self, task: TaskState) -> None:
        """Cancel every job of ``task`` still in flight (recorded as ``cancelled``)."""
        for job in list(task.jobs.values()):
            job.arrival_version = task.server.version
            self.pool.cancel(job)  # closes the job: its row now uses the fields set here
            self.record(job, "cancelled", "task_finished")
        task.jobs.clear()

    # -- models --------------------------------------------------------------------------------
    def server_step(
        self, task: TaskState, deltas: list[torch.Tensor], *, check: bool = True
    ) -> None:
        """``w_m ← w_m + η_g · mean(Δ)`` (the order of ``deltas`` is the summation order; ``η_g ·``
        is the default server optimiser, each task has its own state); then, every ``test_every``
        versions and if ``check``, test the task against its target."""
        if not deltas:
            return
        average = self.aggregate(deltas, [1.0] * len(deltas))
        params, task.opt_state = self.server_update(
            task.server.params, average, task.opt_state, task.server_opt
        )
        if params is None:
            return
        task.server.publish(params)
        if check and task.server.version % self.test_every == 0:
            self.check_target(task)

    def check_target(self, task: TaskState) -> None:
        """Test the task's model; mark it finished at its target; stop when every task is."""
        if task.finished:
            return
        accuracy, loss = task.evaluator(task.server.params)
        task.checks += 1
        task.last_accuracy, task.last_loss = accuracy, loss
        if not task.reached(accuracy, loss):
            return
        task.finished_at = self.now
        self.on_task_finished(task)
        if all(t.finished for t in self.tasks):
            self.ctx.trace.reach_target(self.now)

    def on_task_finished(self, task: TaskState) -> None:
        """Hook: a task just reached its target."""

    # -- what the simulation asks --------------------------------------------------------------
    def eval_targets(self) -> list[EvalTarget]:
        """Each task's model with its own test set, in the ``task`` column."""
        return [
            EvalTarget(0, t.server.version, t.server.params, t.evaluator, t.index)
            for t in self.tasks
        ]

    def finish(self) -> None:
        """Jobs still out at the stop: give their rows the task's version, not the scenario's."""
        now = self.now
        for task in self.tasks:
            for job in task.jobs.values():
                # The simulation records every open job as in_flight after this; a closed job's
                # row uses arrival_version/arrived_at, which are the task's version and now.
                job.arrival_version = task.server.version
                job.arrived_at = now
                job.open = False

    def task_data(self) -> list[FederatedData]:
        """Each task's data and partition over the clients (``clients.parquet`` has a row per
        client and task)."""
        return [t.data for t in self.tasks]

    def summary_extra(self) -> dict[str, Any]:
        """Per-task results for the run summary (time to each target, versions, last check)."""
        finished = [t.finished_at for t in self.tasks]
        return {
            "tasks": [
                {
                    "task": t.index,
                    "name": t.name,
                    "target_accuracy": t.config.target_accuracy,
                    "target_loss": t.config.target_loss,
                    "time_to_target_s": t.finished_at,
                    "versions": t.server.version,
                    "last_check_accuracy": t.last_accuracy,
                    "last_check_loss": t.last_loss,
                }
                for t in self.tasks
            ],
            "time_to_all_targets_s": max(finished)
            if all(f is not None for f in finished)
            else None,
        }
