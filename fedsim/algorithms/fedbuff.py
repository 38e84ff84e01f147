"""FedBuff (Nguyen et al. 2022): asynchronous clients, buffered server steps.

Arrivals are added to a buffer with staleness weight ``s(k)`` (default ``1/sqrt(1+k)``); every
``buffer_size`` arrivals the server takes one step:

    w ← w + η_g · Σ_i s(k_i) Δ_i / K      (normalize: buffer_size; or / Σ s(k_i) with weight_sum)

``dispatch_policy: immediate`` replaces each arriving client at once (with the pre-aggregation model);
``after_aggregation`` refills the freed slots after the server step, which with
``buffer_size = concurrency`` and equal speeds makes FedBuff identical to FedAvg.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from fedsim.algorithms.base import Algorithm
from fedsim.algorithms.context import AlgorithmContext
from fedsim.algorithms.staleness import StalenessConfig
from fedsim.clients import Job
from fedsim.config_base import Section


class FedBuffConfig(Section):
    """Buffered asynchronous aggregation."""

    takes_server_optimizer: ClassVar[bool] = True
    """Its server steps go through ``server_optimizer`` (see fedsim.algorithms.server_opt)."""

    json_shorthands: ClassVar[dict[str, Any]] = {
        "dispatch_policy": {"const": "on_arrival"}
    }  # see _alias
    name: Literal["fedbuff"] = "fedbuff"
    """Selects this variant."""
    concurrency: PositiveInt = 20
    """Jobs kept in flight at once."""
    buffer_size: PositiveInt = 10
    """Arrivals per server step (K); with dispatch_policy after_aggregation, at most concurrency."""
    server_lr: PositiveFloat = 1.0
    """Server learning rate η_g."""
    staleness: StalenessConfig = Field(
        default_factory=lambda: StalenessConfig(kind="polynomial", a=0.5)
    )
    """Staleness weight s(k); the default (k+1)^-0.5 is the paper's 1/sqrt(1+k)."""
    normalize: Literal["buffer_size", "weight_sum"] = "buffer_size"
    """Divide the weighted sum by K (the paper) or by the sum of the staleness weights."""
    dispatch_policy: Literal["immediate", "after_aggregation"] = "immediate"
    """When freed slots get a new client: at once, or after the next server step.
    (Alias: on_arrival = immediate.)"""

    @field_validator("dispatch_policy", mode="before")
    @classmethod
    def _alias(cls, value: object) -> object:
        return "immediate" if value == "on_arrival" else value


class FedBuff(Algorithm):
    name = "fedbuff"
    config_class = FedBuffConfig
    config: FedBuffConfig

    def __init__(self, config: FedBuffConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        self.buffer: list[tuple[Job, Any, float]] = []

    def start(self) -> None:
        self.dispatch_idle(self.config.concurrency)

    def _refill(self) -> None:
        self.dispatch_idle(self.config.concurrency - self.pool.in_flight)

    def on_arrival(self, job: Job) -> None:
        cfg = self.config
        delta = self.delta(job)
        if delta is not None:
            weight = cfg.staleness.weight(self.staleness(job))
            self.buffer.append((job, delta, weight))
            self.record(job, "buffered")
        if cfg.dispatch_policy == "immediate":
            self._refill()
        if len(self.buffer) >= cfg.buffer_size:
            self.server_step()
            if cfg.dispatch_policy == "after_aggregation":
                self._refill()
        elif self.pool.in_flight == 0:
            self._refill()  # nothing left that could fill the buffer

    def on_dropped(self, job: Job) -> None:
        self.record(job, "dropped")
        if self.config.dispatch_policy == "immediate" or self.pool.in_flight == 0:
            self._refill()

    def server_step(self) -> None:
        cfg = self.config
        buffer, self.buffer = self.buffer, []
        if not self.learning:
            self.publish(None)
            return
        weights = [w for _, _, w in buffer]
        if not buffer:
            return
        # normalize: buffer_size divides Σ s_i Δ_i by K (the paper); weight_sum by Σ s_i.
        total = cfg.buffer_size if cfg.normalize == "buffer_size" else None
        jobs = [j for j, _, _ in buffer]
        self.apply(self.aggregate([d for _, d, _ in buffer], weights, jobs=jobs, total=total))
