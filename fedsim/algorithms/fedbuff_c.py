"""FedBuff-c, the buffered scheme as Fraboni et al. (arXiv 2206.10189) define and run it.

Every client works all the time. The server waits for the ``c`` earliest returns, aggregates them
(at the time the c-th returns) and only then sends the new model to those ``c`` clients; a client that
returned waits idle until that aggregation. With ``K = c``:

    w ← w + η_g · Σ_{i ∈ S_n} d_i Δ_i
    d_i = 1/c                      (correction: identical, the policy of the paper's experiments)
    d_i = p_i / f_i                (correction: participation)

where ``f_i`` is the fraction of aggregations client ``i`` joined. The authors compute ``f_i`` from
the whole (deterministic) schedule in advance; here it is the running fraction up to and including
this aggregation, which needs no knowledge of the future and converges to the same value.

Compared with Nguyen et al.'s FedBuff (``fedbuff``) this is FedBuff with every client in flight,
``dispatch_policy: after_aggregation``, no staleness weight and ``normalize: buffer_size``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import PositiveFloat, PositiveInt

from fedsim.algorithms.context import AlgorithmContext
from fedsim.algorithms.fraboni import FraboniAlgorithm, Weighting
from fedsim.clients import Job
from fedsim.config_base import Section
from fedsim.errors import ScenarioError


class FedBuffCConfig(Section):
    """Aggregate the first c returns, then restart those c clients (every client always busy)."""

    takes_server_optimizer: ClassVar[bool] = True
    """Its server steps go through ``server_optimizer`` (see fedsim.algorithms.server_opt)."""

    name: Literal["fedbuff_c"] = "fedbuff_c"
    """Selects this variant."""
    buffer_size: PositiveInt = 10
    """c: returns per aggregation (the paper's FedBuff-5 and FedBuff-10); at most clients.count."""
    server_lr: PositiveFloat = 1.0
    """Server learning rate η_g (1 in every experiment of the paper)."""
    weighting: Weighting = "data_size"
    """Client importance p_i: share of the samples, or 1/N (used by correction: participation)."""
    correction: Literal["identical", "participation"] = "identical"
    """identical: d_i = 1/c; participation: d_i = p_i / (running fraction of aggregations i joined)."""

    def check_scenario(self, scenario: Any) -> None:
        if self.buffer_size > scenario.clients.count:
            raise ScenarioError(
                f"buffer_size ({self.buffer_size}) > clients.count ({scenario.clients.count}) "
                "never fills the buffer",
                path="algorithm.buffer_size",
            )


class FedBuffC(FraboniAlgorithm):
    name = "fedbuff_c"
    config_class = FedBuffCConfig
    config: FedBuffCConfig

    def __init__(self, config: FedBuffCConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        self.buffer: list[Job] = []
        self.aggregations = 0
        self.joined = [0] * self.pool.n_clients

    def start(self) -> None:
        self.start_everyone()

    def on_arrival(self, job: Job) -> None:
        self.buffer.append(job)
        if len(self.buffer) >= self.config.buffer_size:
            self.server_step()
            self.restart_idle()
        elif self.pool.in_flight == 0:
            self.restart_idle()  # drops left too few clients working to fill the buffer

    def on_dropped(self, job: Job) -> None:
        self.record(job, "dropped")
        if self.pool.in_flight == 0:
            self.restart_idle()

    def server_step(self) -> None:
        jobs, self.buffer = self.buffer, []
        cfg = self.config
        self.aggregations += 1
        for job in jobs:
            self.joined[job.client] += 1
        if cfg.correction == "identical":
            weights = [1.0 / cfg.buffer_size] * len(jobs)
        else:
            n = self.aggregations
            weights = [self.p[j.client] * n / self.joined[j.client] for j in jobs]
        self.apply_jobs(jobs, weights)

    def finish(self) -> None:
        """Updates waiting in the buffer at the stop: ``buffered``."""
        for job in self.buffer:
            self.record(job, "buffered")
        self.buffer = []
