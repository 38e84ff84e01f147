"""BRAIN and FRAIN (Park, Lee, Moon 2024; Park, Moon 2025): committee-scored asynchronous merging.

ALGORITHMS.md §3.6–3.7, event mode. The chain of the papers is an ordered log every node replays;
fedsim keeps one copy of the global model ``w_G`` (all honest replicas are identical by
construction) and simulates what decides its value:

- ``concurrency`` nodes train at once, each from ``w_G`` as it was when it started (like FedAsync).
- A finished local model ``w_p`` is a *proposal*. If it is more than ``max_staleness`` versions old
  it is discarded (status ``late``, reason ``staleness``). Otherwise a committee of
  ``committee_size`` nodes, drawn afresh for every proposal (stream ``brain.committee``; the
  proposer may be drawn), scores it: an honest member reports the proposal's accuracy on its own
  validation split (``validation_fraction`` of its rows, held out from its training); a disruptor
  reports ``U(0, 1)`` (stream ``brain.disruptor_scores``). The verdict ``σ`` is the median.
- ``σ < threshold`` rejects the proposal (status ``rejected``, reason ``score``); the model is
  unchanged. Otherwise ``σ' = σ · f(k)`` (FRAIN's adaptive staleness factor of the proposal's
  staleness ``k``; BRAIN: ``f ≡ 1``) enters the window of the last ``window`` accepted scores, the
  mixing weight is ``α = mean(window)`` and ``w_G ← merge(w_G, w_p, α)``: LERP
  ``(1 − α)·w_G + α·w_p`` for BRAIN, SLERP per parameter tensor for FRAIN (``merging.py``).
- The node that proposed starts again at once (the committee's work costs no simulated time unless
  ``committee_delay_s`` is set; then the proposal is scored and merged that long after it
  arrived, in arrival order, and its staleness is counted at the merge).

Drift and synchronisation (FRAIN's FastSync): a node that starts a job is "drifted" with
probability ``drift / N`` (stream ``brain.drift``) — it has not followed the chain since it last
synchronised. An in-sync node trains from ``w_G`` at no cost (it replayed the log in the
background). A drifted node must catch up first:

- ``sync: replay`` (BRAIN always): it fetches and applies every accepted entry it missed — the
  versions since it last synchronised (0 for a node that never trained) — costing ``entry_s``
  simulated seconds per entry, then trains from the exact ``w_G`` current at that moment.
- ``sync: fastsync``: it fetches only the FastSync entries (at most ``fastsync_window``) at
  ``entry_s`` each and trains from the FastSync estimate: the score-weighted average
  ``Σ σ'_j w_j / Σ σ'_j`` of the newest ``fastsync_window`` accepted local models with
  ``σ' ≥ fastsync_threshold``, or of the newest ``fastsync_window`` accepted ones if none
  qualifies (uniform if their scores sum to 0; ``w_G`` itself before the first acceptance). Its
  job's base version is the version current when it starts.

``entry_s`` defaults to the network's model download time (one ledger entry is one model).

Choices where the spec is uncertain (ALGORITHMS.md §6.1), each a key: ``alpha_rule`` (``mean`` of
the window, the authors' default, or ``ratio`` = ``σ' / Σ window``), the SLERP zero-vector rule
(``slerp_zero``), the metric (``accuracy`` or ``exp_loss``), committee timing
(``committee_delay_s``). ``scores: constant`` skips the committee and gives every proposal
``σ = constant_score`` (validation only: limiting case L8, BRAIN ≡ FedAsync with ``α = c``).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, model_validator

from fedsim.algorithms.base import Algorithm, weighted_sum
from fedsim.algorithms.committee import CommitteeScorer, committee_median
from fedsim.algorithms.context import AlgorithmContext, ValidationSplit
from fedsim.algorithms.merging import merge
from fedsim.clients import Job
from fedsim.config_base import Section
from fedsim.errors import ScenarioError
from fedsim.learning.data import dataset_info
from fedsim.robust.aggregators import is_plain_mean


class BrainConfig(Section):
    """BRAIN: committee-scored asynchronous FL with a score threshold and LERP merging."""

    name: Literal["brain"] = "brain"
    """Selects this variant."""
    concurrency: PositiveInt = 20
    """Nodes training at once (proposals in flight)."""
    committee_size: PositiveInt = 11
    """Scorers drawn for each proposal (the authors: ⌊0.55·N⌋ = 11 of 21); at most clients.count."""
    threshold: float = Field(0.125, ge=0, le=1)
    """θ: proposals whose median score is below it are rejected (authors: 0 benign, 0.2 Byzantine)."""
    window: PositiveInt = 4
    """W: accepted scores averaged into the mixing weight α."""
    alpha_rule: Literal["mean", "ratio"] = "mean"
    """α from the window: mean of the last W scores (authors' default), or ratio = this score / their sum."""
    max_staleness: int | None = Field(16, ge=0)
    """S: proposals more than S versions old are discarded (late). null = no limit."""
    scores: Literal["committee", "constant"] = "committee"
    """committee: scored on the members' validation splits; constant: every proposal scores
    constant_score, nothing is evaluated and nodes train on all their rows (validation of limiting
    case L8, not a protocol)."""
    constant_score: float = Field(0.6, ge=0, le=1)
    """The score of every proposal with scores: constant."""
    metric: Literal["accuracy", "exp_loss"] = "accuracy"
    """What an honest scorer reports: validation accuracy, or exp(−loss_scale · validation loss)."""
    loss_scale: float = Field(0.1, gt=0)
    """Scale of the exp_loss metric (authors' LLM runs: 0.1)."""
    validation_fraction: float = Field(0.1, gt=0, le=0.5)
    """Share of each node's rows held out of its training for scoring (authors: 0.1)."""
    disruptors: int = Field(0, ge=0)
    """Nodes (chosen once, stream brain.disruptors) that score every proposal U(0, 1)."""
    committee_delay_s: float = Field(0.0, ge=0)
    """Simulated seconds from a proposal's arrival to its scoring and merge (0 = immediate)."""
    drift: int = Field(0, ge=0)
    """Each job's node is out of sync with probability drift / clients.count and must catch up first."""
    entry_s: float | None = Field(None, ge=0)
    """Simulated seconds to fetch and apply one ledger entry when catching up; null = the network's
    model download time."""

    def check_scenario(self, scenario: Any) -> None:
        """Cross-section rules, run by scenario validation (so ``fedsim validate`` sees them)."""
        check_scenario(scenario)


def check_scenario(scenario: Any) -> None:
    """Raise a ScenarioError if a BRAIN/FRAIN scenario's sections do not fit together.

    Cross-section checks (the committee against ``clients.count``, the aggregator, the attack's
    stage, timing-only runs, the metric against the dataset), callable from scenario validation.
    """
    config = scenario.algorithm
    if config.name not in ("brain", "frain"):
        return
    n = scenario.clients.count
    for key in ("committee_size", "disruptors", "drift"):
        value = getattr(config, key)
        if value > n:
            raise ScenarioError(
                f"{value} is larger than the number of nodes (clients.count = {n})",
                path=f"algorithm.{key}",
            )
    if not is_plain_mean(scenario.aggregator):
        raise ScenarioError(
            f"{config.name} merges one proposal at a time and is robust by its committee; "
            "use aggregator: mean",
            path="aggregator.name",
        )
    byz = scenario.byzantine
    if byz is not None and byz.attack.stage == "server":
        raise ScenarioError(
            f"{config.name} has no aggregation set for a server-side attack; "
            "use a client or data attack (e.g. nullifier)",
            path="byzantine.attack.name",
        )
    if config.scores != "committee":
        return
    if scenario.training is None:
        raise ScenarioError(
            "a timing-only run has no model to score; use scores: constant",
            path="algorithm.scores",
        )
    if config.metric == "accuracy" and dataset_info(scenario.data).task != "classification":
        raise ScenarioError(
            "accuracy needs a classification dataset; use metric: exp_loss",
            path="algorithm.metric",
        )


class AdaptiveStaleness(Section):
    """FRAIN's staleness factor f(k) on an accepted score (a soft staleness threshold)."""

    kind: Literal["constant", "polynomial", "hinge"] = "hinge"
    """constant: f=1; polynomial: (1+k)^-a; hinge: 1 up to b, 0 from c, FedAsync's hinge rescaled between."""
    a: float = Field(10.0, ge=0)
    """Exponent (polynomial, authors 0.5) or slope (hinge, authors 10)."""
    b: float = Field(4.0, ge=0)
    """Hinge: staleness up to which f = 1."""
    c: float = Field(16.0, gt=0)
    """Hinge: staleness from which f = 0."""

    @model_validator(mode="after")
    def _hinge(self) -> AdaptiveStaleness:
        if self.kind == "hinge" and (self.c <= self.b or self.a <= 0):
            raise ValueError("hinge needs a > 0 and c > b")
        return self

    def factor(self, k: int) -> float:
        if self.kind == "constant":
            return 1.0
        if self.kind == "polynomial":
            return (1.0 + k) ** -self.a
        if k <= self.b:
            return 1.0
        if k >= self.c:
            return 0.0
        floor = 1.0 / (self.a * (self.c - self.b) + 1.0)
        return (1.0 / (self.a * (k - self.b) + 1.0) - floor) / (1.0 - floor)


class FrainConfig(BrainConfig):
    """FRAIN: BRAIN with SLERP merging, an adaptive staleness factor and FastSync."""

    name: Literal["frain"] = "frain"  # type: ignore[assignment]
    """Selects this variant."""
    merge: Literal["slerp", "lerp"] = "slerp"
    """How an accepted proposal is merged: SLERP per parameter tensor, or LERP (as BRAIN)."""
    slerp_zero: Literal["lerp", "orthogonal"] = "lerp"
    """SLERP of a zero tensor: LERP (a zero vector has no direction), or the authors' code rule
    (treated as orthogonal: cos(απ/2)·w_G)."""
    adaptive: AdaptiveStaleness = Field(default_factory=AdaptiveStaleness)
    """Staleness factor on the accepted score (kind constant gives BRAIN's behaviour)."""
    sync: Literal["fastsync", "replay"] = "fastsync"
    """How a drifted node catches up: the FastSync estimate (few entries) or a full replay."""
    fastsync_window: PositiveInt = 2
    """W_f: accepted local models averaged by FastSync."""
    fastsync_threshold: float = Field(0.125, ge=0, le=1)
    """θ_f: FastSync prefers accepted models whose adjusted score is at least this."""


class Brain(Algorithm):
    """BRAIN (see the module docstring); FRAIN is the same process with its three additions."""

    name = "brain"
    config_class = BrainConfig
    config: BrainConfig
    event_columns = ("alpha",)  # the mixing weight of each merge, in the events trace

    @classmethod
    def validation_split(cls, config: BrainConfig) -> ValidationSplit | None:
        """Committee scoring holds out ``validation_fraction`` of each node's rows."""
        if config.scores != "committee":
            return None
        return ValidationSplit(config.validation_fraction, stream="brain.validation")

    def __init__(self, config: BrainConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        n = self.pool.n_clients
        streams = ctx.streams
        self.window: deque[float] = deque(maxlen=config.window)
        self.last_sync = [0] * n
        self.is_disruptor = np.zeros(n, dtype=bool)
        if config.disruptors:
            chosen = streams.generator("brain.disruptors").choice(
                n, size=config.disruptors, replace=False
            )
            self.is_disruptor[chosen] = True
        self._committee_rng = streams.generator("brain.committee")
        self._disrupt_rng = streams.generator("brain.disruptor_scores")
        self._drift_rng = streams.generator("brain.drift")
        timing = ctx.timing
        self.entry_s = config.entry_s if config.entry_s is not None else timing.down_s
        self.scorer: CommitteeScorer | None = None
        if ctx.model.validation is not None:  # the world held it out (validation_split)
            self.scorer = CommitteeScorer(
                ctx.model.evaluator.module,
                ctx.model.spec,
                ctx.model.data,
                ctx.model.validation,
                config.metric,
                config.loss_scale,
            )
        self.pending: dict[int, Job] = {}  # proposals waiting for the committee (delay > 0)
        self.score_log: list[tuple[float, float, float, int]] = []
        """Per scored proposal: (median σ, lowest and highest honest score, disruptors in committee)."""
        self.rejected_by_score = 0
        self.syncing = 0
        self.sync_seconds = 0.0

    # -- what FRAIN changes --------------------------------------------------------------------------
    def staleness_factor(self, k: int) -> float:
        """f(k) applied to an accepted score (BRAIN: none)."""
        return 1.0

    def merged(self, w: torch.Tensor, w_p: torch.Tensor, alpha: float) -> torch.Tensor:
        """``(1 − α)·w + α·w_p`` (``torch.lerp``, exactly FedAsync's mixing)."""
        return torch.lerp(w, w_p, alpha)

    def remember(self, w_p: torch.Tensor, adjusted: float) -> None:
        """Bookkeeping of an accepted proposal (FRAIN: FastSync's entries)."""

    def catch_up(self, client: int) -> tuple[int, torch.Tensor | None]:
        """(ledger entries a drifted node fetches, model it trains from; None = ``w_G`` then)."""
        return self.server.version - self.last_sync[client], None

    # -- the process ------------------------------------------------------------------------------------
    def start(self) -> None:
        for client in self.pool.sample(self.config.concurrency):
            self.launch(client)

    def dispatch_one(self) -> None:
        if self.pool.idle:
            self.launch(self.pool.take_idle())

    def launch(self, client: int) -> None:
        """Start a job at ``client`` (taken from the idle list), catching up first if drifted."""
        cfg = self.config
        if cfg.drift and self._drift_rng.random() < cfg.drift / self.pool.n_clients:
            entries, _ = self.catch_up(client)
            cost = entries * self.entry_s
            if cost > 0:
                self.syncing += 1
                self.sync_seconds += cost
                self.env.timeout(cost).callbacks.append(lambda _e: self._synced(client))
            else:
                self._synced(client)
        else:
            self.last_sync[client] = self.server.version
            self.dispatch(client)

    def _synced(self, client: int) -> None:
        if self.syncing:
            self.syncing -= 1
        _, params = self.catch_up(client)
        if params is None:
            self.last_sync[client] = self.server.version
            self.dispatch(client)
            return
        s = self.server
        self.pool.dispatch(client, s.index, s.version, params, self._arrived, self._lost)

    def on_arrival(self, job: Job) -> None:
        if self.config.committee_delay_s > 0:
            self.pending[job.id] = job
            self.env.timeout(self.config.committee_delay_s).callbacks.append(
                lambda _e: self._decide_later(job)
            )
        else:
            self.decide(job)
        self.dispatch_one()

    def _decide_later(self, job: Job) -> None:
        if self.pending.pop(job.id, None) is not None:
            job.arrival_version = self.server.version
            self.decide(job)

    def decide(self, job: Job) -> None:
        """Staleness limit, committee score, threshold, merge: one proposal's fate."""
        cfg = self.config
        k = self.staleness(job)
        if cfg.max_staleness is not None and k > cfg.max_staleness:
            self.record(job, "late", "staleness")
            return
        w_p = self.local_model(job)
        if w_p is None:
            return
        sigma = self.score(w_p)
        if sigma < cfg.threshold:
            self.rejected_by_score += 1
            self.record(job, "rejected", "score")
            return
        adjusted = sigma * self.staleness_factor(k)
        self.window.append(adjusted)
        if cfg.alpha_rule == "mean":
            alpha = math.fsum(self.window) / len(self.window)
        else:
            total = math.fsum(self.window)
            alpha = adjusted / total if total > 0 else 0.0
        self.record(job, "applied", extra=(alpha,))
        if self.learning:
            self.publish(self.merged(self.server.params, w_p, alpha))
            self.remember(w_p, adjusted)
        else:
            self.publish(None)

    def score(self, w_p: torch.Tensor) -> float:
        """The committee's median score of the proposal (or constant_score)."""
        cfg = self.config
        if cfg.scores == "constant" or self.scorer is None:
            return cfg.constant_score
        members = self._committee_rng.choice(
            self.pool.n_clients, size=cfg.committee_size, replace=False
        ).tolist()
        liars = [m for m in members if self.is_disruptor[m]]
        honest = [m for m in members if not self.is_disruptor[m]]
        honest_scores = [s for s in self.scorer.member_scores(w_p, honest) if not math.isnan(s)]
        lies = self._disrupt_rng.random(len(liars)).tolist() if liars else []
        all_scores = honest_scores + lies
        sigma = committee_median(all_scores) if all_scores else 0.0
        lo = min(honest_scores) if honest_scores else math.nan
        hi = max(honest_scores) if honest_scores else math.nan
        self.score_log.append((sigma, lo, hi, len(liars)))
        return sigma

    def finish(self) -> None:
        for job in list(self.pending.values()):
            self.record(job, "buffered")  # uploaded, still waiting for the committee at the stop
        self.pending.clear()


class Frain(Brain):
    """FRAIN: SLERP merging, adaptive staleness factor and FastSync on top of BRAIN."""

    name = "frain"
    config_class = FrainConfig
    config: FrainConfig

    def __init__(self, config: FrainConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        self.bounds = list(ctx.model.spec.offsets)
        self.recent: deque[tuple[torch.Tensor, float]] = deque(maxlen=config.fastsync_window)
        self.qualified: deque[tuple[torch.Tensor, float]] = deque(maxlen=config.fastsync_window)

    def staleness_factor(self, k: int) -> float:
        return self.config.adaptive.factor(k)

    def merged(self, w: torch.Tensor, w_p: torch.Tensor, alpha: float) -> torch.Tensor:
        cfg = self.config
        return merge(cfg.merge, w, w_p, alpha, self.bounds, zero=cfg.slerp_zero)

    def remember(self, w_p: torch.Tensor, adjusted: float) -> None:
        self.recent.append((w_p, adjusted))
        if adjusted >= self.config.fastsync_threshold:
            self.qualified.append((w_p, adjusted))

    def fastsync_model(self) -> torch.Tensor | None:
        """FastSync's estimate of ``w_G`` from the newest accepted local models (module docstring)."""
        entries = list(self.qualified) or list(self.recent)
        if not entries:
            return self.server.params
        total = math.fsum(s for _, s in entries)
        if total > 0:
            coeffs = [s / total for _, s in entries]
        else:
            coeffs = [1.0 / len(entries)] * len(entries)
        if len(entries) == 1:
            return entries[0][0]
        return weighted_sum([w for w, _ in entries], coeffs)

    def catch_up(self, client: int) -> tuple[int, torch.Tensor | None]:
        if self.config.sync == "replay":
            return super().catch_up(client)
        entries = len(self.qualified) or len(self.recent)
        return entries, (self.fastsync_model() if self.learning else None)
