"""FedAsync (Xie, Koyejo, Gupta 2019): mix every arrival into the global model.

``concurrency`` jobs are kept in flight; each arriving local model is mixed with a weight that decays
with its staleness ``k = version_now − version_started``:

    α_k = α · s(k);   w ← (1 − α_k) · w + α_k · w_local

The mixing is a server step on the update ``α_k (w_local − w)``: with ``server_optimizer`` other
than the default (sgd at lr 1, computed as ``torch.lerp``) that update goes through the optimiser.
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar, Literal

import torch
from pydantic import Field, PositiveInt

from fedsim.algorithms.base import Algorithm
from fedsim.algorithms.context import AlgorithmContext
from fedsim.algorithms.staleness import StalenessConfig
from fedsim.clients import Job
from fedsim.config_base import Section
from fedsim.robust.aggregators import is_plain_mean


class FedAsyncConfig(Section):
    """Fully asynchronous FL with staleness-weighted mixing."""

    takes_server_optimizer: ClassVar[bool] = True
    """Its server steps go through ``server_optimizer`` (see fedsim.algorithms.server_opt)."""

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

    def __init__(self, config: FedAsyncConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        byz = ctx.scenario.byzantine
        size = byz.window if byz is not None else 10
        self.window: deque[tuple[Job, torch.Tensor]] = deque(maxlen=size)
        self.honest_window: deque[tuple[int, torch.Tensor]] = deque(maxlen=size)
        """(client, delta) of the recent honest arrivals: what server-side attacks imitate."""
        # Plain FedAsync mixes w_end in and never needs w_start: jobs need not keep it.
        needs_start = self.robust or self.max_norm is not None or self.attack is not None
        self.pool.keep_start = needs_start

    def start(self) -> None:
        self.dispatch_idle(self.config.concurrency)

    def on_arrival(self, job: Job) -> None:
        cfg = self.config
        k = self.staleness(job)
        if cfg.max_staleness is not None and k > cfg.max_staleness:
            self.record(job, "late", "staleness")
        else:
            if self.learning and (not is_plain_mean(self.aggregator) or self.server_attack):
                self._robust_arrival(job, k)
            else:
                w_local = self.local_model(job)
                if w_local is not None:
                    self.record(job, "applied")
                    if self.learning:
                        self.mix(w_local, cfg.alpha * cfg.staleness.weight(k))
                    else:
                        self.publish(None)
        self.dispatch_one()

    def _robust_arrival(self, job: Job, k: int) -> None:
        """Robust FedAsync: ``w ← w + α_k · agg(window)`` over the last W screened deltas.

        With the mean aggregator (only reached for server-side attacks) it keeps the lerp.
        Unlike the lerp of plain FedAsync this moves by the aggregate of recent updates (including
        this one), so one outlier is outvoted by the window; it cannot help when attackers supply most
        of the window (e.g. fast attackers). Server-side attacks (ALIE, IPM) are computed from the last
        W honest deltas the server has seen.
        """
        delta = self.delta(job)
        if delta is None:
            return
        byz = self.ctx.clients.byzantine[job.client]
        if self.server_attack and byz:
            if not self.honest_window:
                self.record(
                    job, "rejected", "no_honest_reference"
                )  # nothing to imitate yet: the attacker stays silent
                return
            # The set the attack aims at: the honest window plus its one Byzantine row.
            rows = torch.stack([d for _, d in self.honest_window] + [delta])
            mask = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
            mask[-1] = True
            ones = torch.ones(len(rows), dtype=torch.float64, device=rows.device)
            clients = [c for c, _ in self.honest_window]
            cfg = self.aggregator_for(len(rows))
            delta = self.attack_vector(rows, mask, clients, ones, cfg).to(delta.dtype)
        elif not byz:
            self.honest_window.append((job.client, delta))
        self.record(job, "applied")
        alpha_k = self.config.alpha * self.config.staleness.weight(k)
        if is_plain_mean(self.aggregator):  # plain FedAsync mixing of the (attacked) local model
            self.mix(job.start + delta, alpha_k)
            return
        self.window.append((job, delta))
        jobs = [j for j, _ in self.window]
        step = self.combine(jobs, [d for _, d in self.window], [1.0] * len(jobs), attacked=True)
        self.apply(alpha_k * step)

    def on_dropped(self, job: Job) -> None:
        self.record(job, "dropped")
        self.dispatch_one()
