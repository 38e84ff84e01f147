"""FedAvg (McMahan et al. 2017): synchronous rounds, with a deadline and over-selection.

Each round samples a cohort from the idle clients and waits until the cohort has reported, or until
``deadline_s`` passes. With ``over_selection = x`` it dispatches ``ceil(cohort·(1+x))`` clients, keeps
the first ``cohort_size`` reports and cancels the rest (Bonawitz et al. 2019). Reports after the round
closed are recorded as ``late``; a round with fewer than ``min_fraction·cohort_size`` reports is
``abandoned`` (model unchanged).

    w ← w + η_g · Σ_i q_i Δ_i,   q_i = n_i / Σ_j n_j   (or 1/m with weighting: uniform)

(``η_g ·`` is the default ``server_optimizer: sgd``; ``momentum`` makes it FedAvgM, ``adam`` FedAdam.)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import simpy
import torch
from pydantic import Field, PositiveFloat, PositiveInt

from fedsim.algorithms.base import Algorithm
from fedsim.algorithms.context import AlgorithmContext
from fedsim.clients import Job
from fedsim.config_base import Period, Section
from fedsim.errors import ScenarioError


class FedAvgConfig(Section):
    """Synchronous federated averaging."""

    takes_server_optimizer: ClassVar[bool] = True
    """Its server steps go through ``server_optimizer`` (see fedsim.algorithms.server_opt)."""

    name: Literal["fedavg"] = "fedavg"
    """Selects this variant."""
    cohort_size: PositiveInt = 10
    """Clients whose reports are averaged each round."""
    deadline_s: Period | None = None
    """Round deadline in simulated seconds; reports after it are recorded as late. null = wait for all."""
    over_selection: float = Field(0.0, ge=0)
    """Dispatch ceil(cohort_size·(1+x)) clients, keep the first cohort_size reports, cancel the rest."""
    min_fraction: float = Field(0.0, ge=0, le=1)
    """A round with fewer than min_fraction·cohort_size reports is abandoned (model unchanged)."""
    server_lr: PositiveFloat = 1.0
    """Server learning rate η_g applied to the averaged update (1 = classic FedAvg)."""
    weighting: Literal["data_size", "uniform"] = "data_size"
    """Weights of the reports: by the client's number of samples, or equal."""

    def check_scenario(self, scenario: Any) -> None:
        if self.cohort_size > scenario.clients.count:
            raise ScenarioError(
                f"cohort_size ({self.cohort_size}) > clients.count ({scenario.clients.count}): "
                "a round could never gather its cohort",
                path="algorithm.cohort_size",
            )


class FedAvg(Algorithm):
    name = "fedavg"
    config_class = FedAvgConfig
    config: FedAvgConfig

    def __init__(self, config: FedAvgConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        self.round = 0
        self.reports: list[Job] = []
        self.finished = 0
        self.expected = 0
        self.round_done: simpy.Event | None = None
        self.round_jobs: list[Job] = []

    def start(self) -> None:
        self._await_idle()

    # A round is three callbacks, not a generator process, so that a run can be checkpointed:
    # wait for an idle client, open the round (dispatch the cohort), close it when the cohort has
    # reported or at the deadline. Each waits on the same SimPy events the round loop yielded, so
    # the trace is the loop's.
    def _await_idle(self) -> None:
        self.pool.wait_idle().callbacks.append(self._open_round)

    def _open_round(self, _event: simpy.Event) -> None:
        cfg = self.config
        n_select = math.ceil(cfg.cohort_size * (1 + cfg.over_selection) - 1e-9)
        self.round += 1
        self.reports, self.finished = [], 0
        self.round_done = self.env.event()
        jobs = self.dispatch_idle(n_select)
        self.expected = len(jobs)
        for job in jobs:
            job.tag = self.round
        self.round_jobs = jobs
        if cfg.deadline_s is None:
            wait = self.round_done
        else:
            wait = self.round_done | self.env.timeout(cfg.deadline_s)
        wait.callbacks.append(self._close_round)

    def _close_round(self, _event: simpy.Event) -> None:
        self.round_done = None  # the round is closed: later reports are late
        jobs, self.round_jobs = self.round_jobs, []
        self.close_round(jobs)
        self._await_idle()

    def on_arrival(self, job: Job) -> None:
        if self.round_done is None or job.tag != self.round:
            self.record(job, "late", "round_closed")
            return
        self.reports.append(job)
        self._count_finished()

    def on_dropped(self, job: Job) -> None:
        self.record(job, "dropped")
        if self.round_done is not None and job.tag == self.round:
            self._count_finished()

    def _count_finished(self) -> None:
        self.finished += 1
        enough = len(self.reports) >= self.config.cohort_size
        if (enough or self.finished == self.expected) and not self.round_done.triggered:
            self.round_done.succeed()

    def finish(self) -> None:
        """At the stop, reports of the open round are waiting for it to close: ``buffered``."""
        for job in self.reports:
            self.record(job, "buffered")
        self.reports = []

    def close_round(self, jobs: list[Job]) -> None:
        cfg = self.config
        accepted = self.reports[: cfg.cohort_size]
        self.reports = []
        if len(accepted) >= cfg.cohort_size:
            for job in jobs:
                if job.open:
                    self.record(job, "cancelled")  # before cancel: the row describes this moment
                    self.pool.cancel(job)
        if not accepted or len(accepted) < cfg.min_fraction * cfg.cohort_size:
            for job in accepted:
                self.record(job, "abandoned")
            return
        if not self.learning:
            for job in accepted:
                self.record(job, "applied")
            self.publish(None)
            return
        deltas, kept = [], []
        for job in accepted:
            delta = self.delta(job)
            if delta is not None:
                deltas.append(delta)
                kept.append(job)
        if not kept:
            return
        if cfg.weighting == "uniform":
            raw = [1.0] * len(kept)
        else:
            raw = [float(self.ctx.clients.sizes[job.client]) for job in kept]
        self.step(kept, deltas, raw)

    def step(self, jobs: list[Job], deltas: list[torch.Tensor], raw: list[float]) -> None:
        """The round's server step from its screened reports ``deltas`` (weights ``raw``);
        SCAFFOLD extends it with its control variates."""
        average = self.aggregate(deltas, raw, jobs=jobs)
        for job in jobs:
            self.record(job, "applied")
        self.apply(average)
