"""A user's algorithm, written only against fedsim's public contract (the docs' complete example).

Buffered asynchronous averaging: keep ``concurrency`` clients busy, collect ``k`` updates, then move
the model by ``lr`` times their mean (or the scenario's robust aggregate). With ``lr = 1`` and no
staleness discount it is FedBuff with ``buffer_size = k`` and a constant staleness function.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from fedsim.algorithms.base import Algorithm, weighted_sum
from fedsim.config_base import Section


class BufferedMeanConfig(Section):
    """Buffered asynchronous averaging."""

    name: Literal["buffered_mean"] = "buffered_mean"
    concurrency: PositiveInt = 10
    """Clients kept busy."""
    k: PositiveInt = 5
    """Updates per server step."""
    lr: float = Field(1.0, gt=0)
    """Server learning rate."""


class BufferedMean(Algorithm):
    name = "buffered_mean"
    config_class = BufferedMeanConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.jobs, self.deltas = [], []

    def start(self):
        self.dispatch_idle(self.config.concurrency)

    def on_arrival(self, job):
        delta = self.delta(job)  # screened: None (recorded as rejected) if not finite
        if delta is not None:
            self.jobs.append(job)
            self.deltas.append(delta)
            self.record(job, "buffered")
        self.dispatch_idle(self.config.concurrency - self.pool.in_flight)
        if len(self.deltas) >= self.config.k:
            jobs, deltas, self.jobs, self.deltas = self.jobs, self.deltas, [], []
            if not self.learning:
                self.publish(None)
            elif self.robust:  # the scenario's aggregator, attacks and screening
                self.publish(
                    self.server.params
                    + self.config.lr * self.combine(jobs, deltas, [1.0] * len(jobs))
                )
            else:
                mean = weighted_sum(deltas, [1.0 / len(deltas)] * len(deltas))
                self.publish(self.server.params + self.config.lr * mean)

    def on_dropped(self, job):
        self.record(job, "dropped")
        self.dispatch_idle(self.config.concurrency - self.pool.in_flight)


class NotAnAlgorithm:
    name = "nope"
