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

from collections.abc import Generator
from typing import Any, Literal

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

    def run(self) -> Generator[simpy.Event, Any, None]:
        cfg = self.config
        n = len(self.servers)
        while True:
            # Client period: every client of every server trains T_C steps from its server's model.
            self._reports = {s: [] for s in range(n)}
            self._epoch_done = self.env.event()
            self._waiting = 0
            for s in range(n):
                for client in self.clients_of[s]:
                    self.dispatch_to(client, self.servers[s].params, server=s)
                    self._waiting += 1
            yield self._epoch_done
            models = [self._aggregate(s) for s in range(n)]
            self._reports = {}
            for s, z in enumerate(models):
                self.publish_to(s, z)
            # Server period: T_S consensus steps over the links.
            for _ in range(cfg.consensus_steps):
                W = self.mixing()
                inbox = yield from self.exchange(models)
                if self.learning:
                    models = self.mix(models, received_mixing(W, inbox))
                for s, z in enumerate(models):
                    self.publish_to(s, z)
            self.epoch += 1
            if cfg.epochs is not None and self.epoch >= cfg.epochs:
                self.ctx.trace.stop("epochs")
                return

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
