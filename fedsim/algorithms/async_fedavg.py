"""Asynchronous FedAvg, the "Async" scheme of Fraboni et al. (arXiv 2206.10189).

Every client works all the time; each returning update is applied at once, in delta form, and the
client starts again from the new model:

    w ← w + η_g · d_i · (w_i^received − w_i^sent)
    d_i = Λ · E[τ_i] · p_i,  Λ = Σ_j 1/E[τ_j]      (correction: rate, the paper's "weight" policy)
    d_i = 1                                          (correction: identical)

Fast clients return more often; ``rate`` scales each update by the client's mean job time so that,
per unit of time, client ``i`` contributes in proportion to ``p_i`` (the paper's bias correction).
Unlike FedAsync, the update is added to the *current* model (no mixing with ``w``): the two agree only
when nothing happened while the client trained (staleness 0).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import PositiveFloat

from fedsim.algorithms.context import AlgorithmContext
from fedsim.algorithms.fraboni import FraboniAlgorithm, Weighting, expected_job_s
from fedsim.clients import Job
from fedsim.config_base import Section
from fedsim.errors import ScenarioError
from fedsim.robust.aggregators import is_plain_mean


class AsyncFedAvgConfig(Section):
    """Asynchronous FedAvg: every return is one server step (every client always busy)."""

    takes_server_optimizer: ClassVar[bool] = True
    """Its server steps go through ``server_optimizer`` (see fedsim.algorithms.server_opt)."""

    def check_scenario(self, scenario: Any) -> None:
        """One update per step: no set for a robust aggregator or a server-side attack to act on."""
        if not is_plain_mean(scenario.aggregator):
            raise ScenarioError(
                "async_fedavg applies one update at a time; robust aggregators need a set of "
                "updates (use fedfix or fedbuff_c)",
                path="aggregator.name",
            )
        byz = scenario.byzantine
        if byz is not None and byz.attack.stage == "server":
            raise ScenarioError(
                "server-side attacks need several updates per step; async_fedavg has one",
                path="byzantine.attack",
            )

    name: Literal["async_fedavg"] = "async_fedavg"
    """Selects this variant."""
    server_lr: PositiveFloat = 1.0
    """Server learning rate η_g (1 in every experiment of the paper)."""
    weighting: Weighting = "data_size"
    """Client importance p_i: share of the samples, or 1/N (used by correction: rate)."""
    correction: Literal["rate", "identical"] = "rate"
    """rate: d_i = Λ·E[τ_i]·p_i, Λ = Σ_j 1/E[τ_j] (the paper's unbiased "weight" policy, from the
    timing model's mean job times); identical: d_i = 1."""


class AsyncFedAvg(FraboniAlgorithm):
    name = "async_fedavg"
    config_class = AsyncFedAvgConfig
    config: AsyncFedAvgConfig

    def __init__(self, config: AsyncFedAvgConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        n = self.pool.n_clients
        if config.correction == "identical":
            self.d = [1.0] * n
        else:
            tau = [expected_job_s(ctx.timing, i) for i in range(n)]
            rate = sum(1.0 / t for t in tau)
            self.d = [rate * t * p for t, p in zip(tau, self.p, strict=True)]

    def start(self) -> None:
        self.start_everyone()

    def on_arrival(self, job: Job) -> None:
        self.apply_jobs([job], [self.d[job.client]])
        self.restart_idle()

    def on_dropped(self, job: Job) -> None:
        self.record(job, "dropped")
        self.restart_idle()
