"""DFL — distributed FL by alternating periods of training (Bhattacharyya, Kalaimani; arXiv
2601.01793; ALGORITHMS.md §3.8).

``M`` servers, each with its own clients, linked by the ``topology:`` graph. One epoch::

    every client (i, j) starts from its server's model z_i
    client period:  T_C local steps  w_ij ← w_ij − γ ∇f_ij(w_ij)     (T_C = training.local_steps,
                                                                       γ = training.lr)
    aggregation:    z_i ← Σ_j q_ij w_ij   (q_ij = 1/N, or data shares)
    server period:  T_S times  z_i ← Σ_k a_ik z_k                     (A = topology mixing matrix)

Each consensus step is a real exchange: every server sends ``z_i`` to its neighbours over the links
(latency + bytes/bandwidth), waits for that step's messages, then mixes with what arrived (weights of
neighbours whose message could not be sent — failed link or server — move to the diagonal). Servers
publish after the aggregation and after every consensus step, so the evals show the consensus error
shrinking in simulated time. Synchronous: an epoch waits for every client of every server (lost jobs
are left out of their server's average; a server that heard from no client keeps its model).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import simpy
import torch
from pydantic import NonNegativeInt, PositiveInt

from fedsim.algorithms.context import AlgorithmContext
from fedsim.algorithms.gossip import received_mixing
from fedsim.algorithms.multiserver import MultiServerAlgorithm
from fedsim.checks import needs_topology
from fedsim.clients import Job
from fedsim.config_base import Section


class DFLConfig(Section):
    """DFL: T_C client steps (training.local_steps, step size training.lr), then T_S consensus steps."""

    name: Literal["dfl"] = "dfl"
    """Selects this variant."""
    consensus_steps: NonNegativeInt = 25
    """T_S: server-to-server consensus steps per epoch, each one message exchange over the links."""
    epochs: PositiveInt | None = None
    """Stop the run after this many epochs (null: run until the scenario's stop)."""
    weighting: Literal["uniform", "data_size"] = "uniform"
    """How a server averages its clients: 1/N each (the paper's objective) or by data size."""

    def check_scenario(self, scenario: Any) -> None:
        """Run by scenario validation: DFL needs servers linked by a topology."""
        needs_topology(self.name, scenario)


class DFL(MultiServerAlgorithm):
    name = "dfl"
    config_class = DFLConfig
    config: DFLConfig

    def __init__(self, config: DFLConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        self.epoch = 0
        self._reports: dict[int, list[Job]] = {}
        self._waiting = 0
        self._epoch_done: simpy.Event | None = None
        self._models: list[torch.Tensor | None] = []
        """The servers' models during the consensus steps of an epoch."""
        self._steps = 0
        self._W: np.ndarray | None = None
        self._inbox: list[dict[int, Any]] = []

    # An epoch is callbacks on the same SimPy events the epoch loop waited on (so the trace is the
    # loop's), with its progress in attributes, so that a run can be checkpointed: open the epoch
    # (dispatch every client), close it when all reported (aggregate), then the consensus steps,
    # each resumed when its messages have arrived.
    def start(self) -> None:
        self._open_epoch()

    def _open_epoch(self) -> None:
        """Client period: every client of every server trains T_C steps from its server's model."""
        n = len(self.servers)
        self._reports = {s: [] for s in range(n)}
        self._epoch_done = self.env.event()
        self._waiting = 0
        for s in range(n):
            for client in self.clients_of[s]:
                self.dispatch_to(client, self.servers[s].params, server=s)
                self._waiting += 1
        self._epoch_done.callbacks.append(self._close_epoch)

    def _close_epoch(self, _event: simpy.Event) -> None:
        models = [self._aggregate(s) for s in range(len(self.servers))]
        self._reports = {}
        for s, z in enumerate(models):
            self.publish_to(s, z)
        self._models, self._steps = models, 0
        self._consensus()

    def _consensus(self) -> None:
        """Server period: T_S consensus steps over the links, then the next epoch."""
        cfg = self.config
        while self._steps < cfg.consensus_steps:
            self._W = self.mixing()
            self._inbox, arrived = self.start_exchange(self._models)
            if arrived is not None:
                arrived.callbacks.append(self._step_arrived)
                return
            self._mix_step()
        self.epoch += 1
        if cfg.epochs is not None and self.epoch >= cfg.epochs:
            self.ctx.trace.stop("epochs")
            return
        self._open_epoch()

    def _step_arrived(self, _event: simpy.Event) -> None:
        self._mix_step()
        self._consensus()

    def _mix_step(self) -> None:
        """One consensus step with the messages that arrived (W: the mixing matrix at sending)."""
        if self.learning:
            self._models = self.mix(self._models, received_mixing(self._W, self._inbox))
        self._inbox = []
        for s, z in enumerate(self._models):
            self.publish_to(s, z)
        self._steps += 1

    def _aggregate(self, server: int) -> torch.Tensor | None:
        """``z_i ← Σ_j q_ij w_ij`` over the server's clients that reported (in float64)."""
        jobs = self._reports[server]
        current = self.servers[server].params
        if not self.learning:
            for job in jobs:
                self.record(job, "applied")
            return current
        kept, models = [], []
        for job in jobs:
            w = self.trained(job)
            if w is not None:
                kept.append(job)
                models.append(w)
        if not kept:
            return current
        if self.config.weighting == "uniform":
            q = torch.full((len(kept),), 1.0 / len(kept), dtype=torch.float64)
        else:
            sizes = torch.tensor([float(self.ctx.clients.sizes[j.client]) for j in kept])
            q = (sizes / sizes.sum()).double()
        for job in kept:
            self.record(job, "applied")
        stacked = torch.stack(models)
        z = (q.to(stacked.device)[:, None] * stacked.double()).sum(0)
        return z.to(stacked.dtype)

    def on_arrival(self, job: Job) -> None:
        self._reports[job.server].append(job)
        self._one_done()

    def on_dropped(self, job: Job) -> None:
        self.record(job, "dropped")
        self._one_done()

    def _one_done(self) -> None:
        self._waiting -= 1
        if self._waiting == 0 and self._epoch_done is not None:
            self._epoch_done.succeed()

    def finish(self) -> None:
        """Reports of the open epoch have not been averaged yet: ``buffered``."""
        for jobs in self._reports.values():
            for job in jobs:
                self.record(job, "buffered")
        self._reports = {}
