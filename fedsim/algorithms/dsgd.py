"""Decentralized SGD (gossip) with the single-global-merge schedule (arXiv 2507.06542; ALGORITHMS.md
§3.10).

Every node of the ``topology:`` graph is a peer: a server with exactly one client (its own data). One
communication round (adapt-then-combine)::

    local:   x_i ← x_i − η ∇F_i(x_i; ξ)     k = training.local_steps times (one job per peer)
    gossip:  x_i ← Σ_j W_ij x_j             Q = gossip_steps times

``W`` is the topology's mixing matrix (``gossip: mixing``) or the authors' random-r operator
(``gossip: random``: each peer averages uniformly with itself and r random others, r following the
``r`` schedule over progress π = round / rounds; the graph is then ignored and any two peers may
talk). Every non-zero ``W_ij`` (j ≠ i) is a message j → i over a link.

``merge`` adds model merging on top of the gossip:

- ``final_at``: from the first round with π ≥ final_at, the gossip is replaced by a global merge
  (every peer averages all peers' models: the authors' ``truncate`` schedule with r_end = n − 1;
  final_at = 1 merges once, after the last round);
- ``every_steps`` / ``fraction_r``: every ``every_steps`` local steps, a random ``fraction_r`` of
  the peers (all of them with 1.0) average their models after the gossip.

Rounds are synchronous (each round waits for every peer's job; a peer whose job was lost keeps its
model). Evaluation: one row per peer (its local model) and, with ``eval_merged``, one more row with
``server = -1`` for the merged model ``x̄ = mean_i x_i`` (what a global merge would give now; its
version is the round). The run stops after ``rounds`` rounds.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Literal

import numpy as np
import simpy
import torch
from pydantic import Field, PositiveInt

from fedsim.algorithms.base import EvalTarget
from fedsim.algorithms.gossip import RSchedule, random_r_matrix, received_mixing
from fedsim.algorithms.multiserver import MultiServerAlgorithm
from fedsim.clients import Job
from fedsim.config_base import Section
from fedsim.errors import ScenarioError

PROGRESS_TOL = 1e-9


class MergeConfig(Section):
    """Global and partial model merges on top of the gossip (the single-global-merge schedule)."""

    fraction_r: float = Field(1.0, ge=0, le=1)
    """Share of the peers that take part in each periodic merge (a random subset of
    round(fraction_r · peers), at least 2; 1 = every peer, a global merge; 0 = no periodic merge)."""
    every_steps: PositiveInt | None = None
    """Periodic merge every this many local steps of each peer (checked after each round's gossip);
    null: no periodic merge."""
    final_at: float | None = Field(1.0, gt=0, le=1)
    """Progress π = round / rounds from which every round ends in a global merge instead of the
    gossip (1 = one merge after the last round); null: no final merge."""


class DSGDConfig(Section):
    """Gossip D-SGD: k local steps, then Q gossip rounds with W; optional model merges."""

    name: Literal["dsgd"] = "dsgd"
    """Selects this variant."""
    rounds: PositiveInt = 100
    """Communication rounds R; progress π = round / R, and the run stops after round R."""
    gossip: Literal["mixing", "random"] = "mixing"
    """mixing: the topology's mixing matrix; random: the random-r operator (r from the schedule)."""
    gossip_steps: PositiveInt = 1
    """Q: gossip rounds after each local-training round (DFedSAM-MGS's multiple gossip steps)."""
    r: RSchedule = Field(default_factory=RSchedule)
    """Schedule of r for gossip: random (extra random peers each peer averages with)."""
    merge: MergeConfig | None = None
    """Model merges: {fraction_r, every_steps, final_at}; null: plain gossip."""
    eval_merged: bool = True
    """Also evaluate the merged model mean_i x_i (an evals row with server = -1)."""


class DSGD(MultiServerAlgorithm):
    name = "dsgd"
    config_class = DSGDConfig
    config: DSGDConfig

    def __init__(self, config: DSGDConfig, sim: Any) -> None:
        super().__init__(config, sim)
        if any(len(members) != 1 for members in self.clients_of):
            raise ScenarioError(
                "dsgd peers train on their own data: every server needs exactly one client "
                "(clients_per_server: 1)",
                path="topology.clients_per_server",
            )
        self.round = 0
        self.merges = 0
        training = sim.scenario.training
        self.steps_per_round = training.local_steps if training is not None else 1
        self.gossip_rng = sim.streams.generator("dsgd.gossip")
        self.merge_rng = sim.streams.generator("dsgd.merge")
        self._jobs: list[Job | None] = []
        self._waiting = 0
        self._round_done: simpy.Event | None = None

    # -- the round --------------------------------------------------------------------------------------
    def run(self) -> Generator[simpy.Event, Any, None]:
        cfg = self.config
        n = len(self.servers)
        merge = cfg.merge
        for t in range(1, cfg.rounds + 1):
            self._jobs = [None] * n
            self._round_done = self.env.event()
            self._waiting = n
            for s in range(n):
                # A peer trains on itself: no client transfer; its models travel as messages.
                self.dispatch_to(
                    self.clients_of[s][0], self.servers[s].params, server=s, network=False
                )
            yield self._round_done
            models = [self._local_model(s) for s in range(n)]
            self._jobs = []
            progress = t / cfg.rounds
            if (
                merge is not None
                and merge.final_at is not None
                and (progress >= merge.final_at - PROGRESS_TOL)
            ):
                models = yield from self._gossip(models, np.full((n, n), 1.0 / n))
                self.merges += 1
            else:
                for _ in range(cfg.gossip_steps):
                    models = yield from self._gossip(models, self._gossip_matrix(progress))
                if merge is not None and self._merge_due(t, merge):
                    models = yield from self._gossip(models, self._merge_matrix(merge.fraction_r))
                    self.merges += 1
            for s, x in enumerate(models):
                self.publish_to(s, x)
            self.round = t
        self.sim.stop("rounds")

    def _local_model(self, s: int) -> torch.Tensor | None:
        job = self._jobs[s]
        current = self.servers[s].params
        if job is None:  # lost: the peer keeps its model
            return current
        if not self.learning:
            self.record(job, "applied")
            return current
        w = self.trained(job)
        if w is None:
            return current
        self.record(job, "applied")
        return w

    def _gossip_matrix(self, progress: float) -> np.ndarray:
        if self.config.gossip == "mixing":
            return self.mixing()
        return random_r_matrix(len(self.servers), self.config.r.at(progress), self.gossip_rng)

    def _merge_due(self, t: int, merge: MergeConfig) -> bool:
        if merge.every_steps is None or merge.fraction_r == 0:
            return False
        k = self.steps_per_round
        return t * k // merge.every_steps > (t - 1) * k // merge.every_steps

    def _merge_matrix(self, fraction: float) -> np.ndarray:
        """Identity, except that a random subset of round(fraction · n) ≥ 2 peers averages."""
        n = len(self.servers)
        size = min(n, max(2, round(fraction * n)))
        members = np.sort(self.merge_rng.choice(n, size=size, replace=False))
        W = np.eye(n)
        W[np.ix_(members, members)] = 1.0 / size
        return W

    def _gossip(
        self, models: list[torch.Tensor | None], W: np.ndarray
    ) -> Generator[simpy.Event, Any, list[torch.Tensor | None]]:
        """One gossip step with ``W``: message j → i for every ``W[i, j] > 0``, then mix with what
        arrived (a message over a failed link is not sent and its weight stays with the receiver)."""
        n = len(models)
        inbox: list[dict[int, Any]] = [{} for _ in range(n)]
        pending = []
        for i in range(n):
            for j in np.flatnonzero(W[i] > 0):
                j = int(j)
                if j == i:
                    continue
                event = self.send(j, i, models[j])
                if event is not None:
                    event.callbacks.append(lambda e, i=i, j=j: inbox[i].__setitem__(j, e.value))
                    pending.append(event)
        if pending:
            yield self.env.all_of(pending)
        if not self.learning:
            return models
        return self.mix(models, received_mixing(W, inbox))

    # -- arrivals ---------------------------------------------------------------------------------------
    def on_arrival(self, job: Job) -> None:
        self._jobs[job.server] = job
        self._one_done()

    def on_dropped(self, job: Job) -> None:
        self.record(job, "dropped")
        self._one_done()

    def _one_done(self) -> None:
        self._waiting -= 1
        if self._waiting == 0 and self._round_done is not None:
            self._round_done.succeed()

    def finish(self) -> None:
        """Local models of an open round not yet gossiped: ``buffered``."""
        for job in self._jobs:
            if job is not None:
                self.record(job, "buffered")
        self._jobs = []

    # -- evaluation -------------------------------------------------------------------------------------
    def merged_model(self) -> torch.Tensor | None:
        """``x̄ = mean_i x_i`` over the peers' current models (None in timing-only runs)."""
        params = [s.params for s in self.servers]
        if any(p is None for p in params):
            return None
        stacked = torch.stack(params)
        return stacked.double().mean(0).to(stacked.dtype)

    def eval_targets(self) -> list[EvalTarget]:
        """Every peer's model, then (``eval_merged``) the merged model as ``server = -1``."""
        targets = super().eval_targets()
        if self.config.eval_merged and self.learning:
            merged = self.merged_model()
            targets.append(EvalTarget(-1, self.round, merged, self.sim.evaluator))
        return targets
