"""Sync-ST: synchronous simultaneous training of several tasks, FedAST's baseline.

As in the FedAST authors' code (``sync_run``): each round, ``clients_per_round`` idle clients are
drawn and split over the unfinished tasks in proportion to their ``share`` (a finished task's share
goes to the others). Task ``m`` keeps its first ``k_m = min(first_k, n_m)`` reports and cancels the
rest; the round ends when every task has its reports (one barrier across all tasks), then every
task steps ``w_m ← w_m + η_g · mean(Δ)`` and is checked against its target. The run stops when
every task is finished.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, ClassVar, Literal

import simpy
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from fedsim.algorithms.context import AlgorithmContext
from fedsim.algorithms.multitask import (
    MultiTaskAlgorithm,
    TaskConfig,
    check_multitask_scenario,
    check_tasks,
)
from fedsim.algorithms.realloc import split_proportional
from fedsim.checks import at_most_clients
from fedsim.clients import Job
from fedsim.config_base import Section


class SyncStConfig(Section):
    """Synchronous multi-task baseline (Sync-ST): one barrier per round across all tasks."""

    takes_server_optimizer: ClassVar[bool] = True
    """Its server steps go through ``server_optimizer`` (see fedsim.algorithms.server_opt)."""

    name: Literal["sync_st"] = "sync_st"
    """Selects this variant."""
    tasks: list[TaskConfig] = Field(default_factory=list)
    """The tasks, as for fedast (keys name, data, model, training, target_accuracy, target_loss,
    share, server_lr; data/model/training left out mean the top-level sections); at least one."""
    clients_per_round: PositiveInt = 32
    """Clients dispatched each round over all unfinished tasks (split ∝ share, at least 1 each)."""
    first_k: PositiveInt | None = None
    """Per task, keep the first k reports of a round and cancel the rest (the code: 30); null: wait
    for every report."""
    server_lr: PositiveFloat = 1.0
    """Server learning rate η_g (the code's Sync-ST: 1; a task's server_lr overrides it)."""
    test_every: PositiveInt = 1
    """Check the targets after every this many rounds."""

    def check_scenario(self, scenario: Any) -> None:
        """Run by scenario validation: sections FedAST/Sync-ST cannot use, an empty task list."""
        check_multitask_scenario(self, scenario)
        at_most_clients(
            self.clients_per_round,
            scenario,
            "clients_per_round",
            f"{self.clients_per_round} clients per round",
        )

    @model_validator(mode="after")
    def _check(self) -> SyncStConfig:
        n_tasks = check_tasks(self)
        if self.clients_per_round < n_tasks:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) must give each of the "
                f"{n_tasks} tasks at least one client"
            )
        return self


class SyncSt(MultiTaskAlgorithm):
    name = "sync_st"
    config_class = SyncStConfig
    config: SyncStConfig

    def __init__(self, config: SyncStConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        n = len(self.tasks)
        self.round = 0
        self.reports: list[list[Job]] = [[] for _ in range(n)]
        self.wanted = [0] * n
        self.outstanding = [0] * n
        self.round_done: simpy.Event | None = None
        self.cohorts: list[tuple[float, tuple[int, ...]]] = []
        """(round start time, clients per task) of every round."""

    def run(self) -> Generator[simpy.Event, Any, None]:
        cfg = self.config
        while True:
            yield self.pool.wait_idle()
            live = [0.0 if t.finished else t.config.share for t in self.tasks]
            counts = split_proportional(cfg.clients_per_round, live, minimum=1)
            self.round += 1
            self.cohorts.append((self.now, tuple(counts)))
            self.round_done = self.env.event()
            for task, n in zip(self.tasks, counts, strict=True):
                m = task.index
                self.reports[m] = []
                self.wanted[m] = min(cfg.first_k or n, n)
                self.outstanding[m] = n
                for client in self.pool.sample(n):
                    job = self.dispatch_task(task, client)
                    job.tag = self.round
            if self._complete():
                self.round_done.succeed()
            yield self.round_done
            self.round_done = None
            self._close_round()
            if all(t.finished for t in self.tasks):
                return

    def _complete(self) -> bool:
        return all(
            len(self.reports[m]) >= self.wanted[m] or self.outstanding[m] == 0
            for m in range(len(self.tasks))
        )

    def _task_settled(self, m: int) -> None:
        """Task ``m`` has its k reports (cancel its other jobs) or nothing left to wait for."""
        if len(self.reports[m]) >= self.wanted[m]:
            for job in list(self.tasks[m].jobs.values()):
                job.arrival_version = self.tasks[m].server.version
                self.pool.cancel(job)
                self.record(job, "cancelled", "first_k")
                self.outstanding[m] -= 1
            self.tasks[m].jobs.clear()
        if self.round_done is not None and not self.round_done.triggered and self._complete():
            self.round_done.succeed()

    def on_arrival(self, job: Job) -> None:
        m = job.task
        self.outstanding[m] -= 1
        if len(self.reports[m]) < self.wanted[m]:
            self.reports[m].append(job)
        else:  # cannot happen: the rest is cancelled at the k-th report
            self.record(job, "late", "round_closed")
        self._task_settled(m)

    def on_dropped(self, job: Job) -> None:
        self.record(job, "dropped")
        m = job.task
        self.outstanding[m] -= 1
        self._task_settled(m)

    def _close_round(self) -> None:
        check = self.round % self.test_every == 0
        for task in self.tasks:
            m = task.index
            reports, self.reports[m] = self.reports[m], []
            deltas = []
            for job in reports:
                delta = self.delta(job)
                if delta is not None:
                    deltas.append(delta)
                    self.record(job, "applied")
            self.server_step(task, deltas, check=False)
        if check:
            for task in self.tasks:
                self.check_target(task)

    def finish(self) -> None:
        """Reports of the open round wait for its barrier at the stop: ``buffered``."""
        for m, reports in enumerate(self.reports):
            for job in reports:
                self.record(job, "buffered")
            self.reports[m] = []
        super().finish()
