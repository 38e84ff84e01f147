"""FedAsync (Xie, Koyejo, Gupta 2019): mix every arrival into the global model.

``concurrency`` jobs are kept in flight; each arriving local model is mixed with a weight that decays
with its staleness ``k = version_now − version_started``:

    α_k = α · s(k);   w ← (1 − α_k) · w + α_k · w_local
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Literal

import simpy
import torch
from pydantic import Field, PositiveInt

from fedsim.algorithms.base import Algorithm
from fedsim.algorithms.staleness import StalenessConfig
from fedsim.clients import Job
from fedsim.config_base import Section


class FedAsyncConfig(Section):
    """Fully asynchronous FL with staleness-weighted mixing."""

    name: Literal["fedasync"] = "fedasync"
    """Selects this variant."""
    concurrency: PositiveInt = 20
    """Jobs kept in flight at once."""
    alpha: float = Field(0.6, gt=0, le=1)
    """Base mixing weight α."""
    staleness: StalenessConfig = Field(default_factory=StalenessConfig)
    """Staleness function s(k) that scales α."""
    max_staleness: int | None = Field(None, ge=0)
    """Updates staler than this are not applied (recorded as late). null = no limit."""


class FedAsync(Algorithm):
    name = "fedasync"
    config_class = FedAsyncConfig
    config: FedAsyncConfig

    def run(self) -> Generator[simpy.Event, Any, None]:
        self.dispatch_idle(self.config.concurrency)
        return
        yield

    def on_arrival(self, job: Job) -> None:
        cfg = self.config
        k = self.server.version - job.base_version
        if cfg.max_staleness is not None and k > cfg.max_staleness:
            self.record(job, "late")
        else:
            w_local = self.local_model(job)
            if w_local is not None:
                self.record(job, "applied")
                if self.learning:
                    alpha_k = cfg.alpha * cfg.staleness.weight(k)
                    self.publish(torch.lerp(self.server.params, w_local, alpha_k))
                else:
                    self.publish(None)
        self.dispatch_one()

    def on_dropped(self, job: Job) -> None:
        self.record(job, "dropped")
        self.dispatch_one()
