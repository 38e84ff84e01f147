"""MoDeST — Mostly-consistent Decentralized Sampling Training (de Vos et al., arXiv 2302.13837).

Serverless FL rounds (ALGORITHMS.md §3.11): the peers are the nodes of ``topology:`` (one client each,
``clients_per_server: 1``). In round ``k`` a sample ``S_k`` of ``s`` peers trains and its first ``a``
members aggregate; every peer derives the same sample from ``MD5(f"{peer_id}-{k}")``, so nobody
coordinates. The round protocol, as in the authors' code:

1. the peer that starts round ``k`` (an aggregator of round ``k − 1``) pings the peers in hash order,
   ``s`` at a time, replacing each one silent for ``ping_timeout_s`` by the next candidate; the
   first ``s`` responsive peers (in hash order) are ``S_k``, its first ``a`` the aggregators ``A_k``;
2. it sends its model to every member of ``S_k``; a member trains on the first copy it gets (a newer
   round's model cancels older training) and sends the result to every aggregator of ``A_k``;
3. an aggregator averages once it holds ``⌈sf·|S_k|⌉`` models, or ``aggregation_timeout_s`` after its
   first one if it holds at least ``min_models``; it adopts the average and starts round ``k + 1``.

Failed peers (``topology.failures`` node entries, or the ``crash`` key) neither answer pings nor
send nor receive; the round goes on with the peers that answer. A peer that fails a ping after more
than ``inactivity_threshold`` rounds of silence leaves everyone's view (so later samples stop
pinging it) and rejoins when it is up again. If no round ``k + 1`` has started
``round_timeout_s`` after round ``k``'s models were sent (every aggregator died, say), the live peer
holding the newest model restarts with round ``k + 1`` from it (an inferred liveness rule: peers are
assumed to learn each other's round numbers, as by gossip, at no cost).

Every model sent between peers is an events row with status ``message`` (server-to-server bytes);
training happens on the peer itself, so job rows carry no bytes. The evaluated model is the latest
aggregate.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import simpy
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from fedsim.algorithms.base import EvalTarget, weighted_sum
from fedsim.algorithms.context import AlgorithmContext
from fedsim.algorithms.multiserver import MultiServerAlgorithm
from fedsim.algorithms.schedule import start_soon
from fedsim.checks import needs_topology
from fedsim.clients import Job
from fedsim.config_base import Period, Section
from fedsim.errors import ScenarioError


class CrashConfig(Section):
    """A random fraction of the peers crashing together (besides ``topology.failures``)."""

    fraction: float = Field(0.0, ge=0, le=1)
    """Fraction of the peers that crash (round(fraction × peers), drawn with the run seed)."""
    at_s: float = Field(0.0, ge=0)
    """Simulated time of the crash, in seconds."""
    until_s: PositiveFloat | None = None
    """Simulated time at which the crashed peers come back; null means never."""

    @model_validator(mode="after")
    def _order(self) -> CrashConfig:
        if self.until_s is not None and self.until_s <= self.at_s:
            raise ValueError(f"until_s ({self.until_s}) must be > at_s ({self.at_s})")
        return self


class ModestConfig(Section):
    """MoDeST: per round, s peers sampled by hash train and the first a of them aggregate."""

    name: Literal["modest"] = "modest"
    """Selects this variant."""
    sample_size: PositiveInt = 10
    """s: peers that train each round (fewer if fewer answer)."""
    aggregators: PositiveInt = 1
    """a: the first a peers of the round's sample also aggregate (a <= s)."""
    success_fraction: float = Field(1.0, gt=0, le=1)
    """sf: an aggregator averages as soon as it holds ceil(sf·|S_k|) trained models."""
    aggregation_timeout_s: Period = 5.0
    """Seconds after its first model of a round after which an aggregator averages what it has."""
    min_models: PositiveInt = 1
    """Fewest models an aggregator averages at its timeout (fewer: it drops the round)."""
    ping_timeout_s: Period = 5.0
    """Seconds before an unanswered ping marks a candidate as unavailable."""
    inactivity_threshold: NonNegativeInt | None = 50
    """A peer that fails a ping and was last heard from more than this many rounds ago leaves the
    view (it rejoins when it is up again); null keeps every peer in the view."""
    round_timeout_s: Period = 30.0
    """Seconds after a round's models were sent after which, if no next round has started, the
    live peer holding the newest model restarts with the next round (inferred liveness rule)."""
    weighting: Literal["uniform", "data_size"] = "uniform"
    """Weights in an aggregate: equal, or by each trainer's number of samples."""
    crash: CrashConfig = Field(default_factory=CrashConfig)
    """A fraction of the peers crashing at a given time (e.g. 80 % mid-run)."""

    def check_scenario(self, scenario: Any) -> None:
        """Run by scenario validation: peers with one client each, talking over topology.link."""
        needs_topology(self.name, scenario, one_client_each=True)
        network = scenario.clients.network
        if network.latency_s > 0 or network.bandwidth_mbps is not None:
            raise ScenarioError(
                "modest peers talk over topology.link; leave clients.network at its default",
                path="clients.network",
            )

    @model_validator(mode="after")
    def _sizes(self) -> ModestConfig:
        if self.aggregators > self.sample_size:
            raise ValueError(
                f"aggregators ({self.aggregators}) must be <= sample_size ({self.sample_size})"
            )
        return self


# -- sampling (pure) -----------------------------------------------------------------------------


def peer_hash(peer: int, k: int) -> bytes:
    """MD5 of ``f"{peer}-{k}"``: the rank of ``peer`` in round ``k``'s candidate order."""
    return hashlib.md5(f"{peer}-{k}".encode(), usedforsecurity=False).digest()


def candidate_order(view: Sequence[int], k: int, exclude: Sequence[int] = ()) -> list[int]:
    """The peers of ``view`` sorted by their round-``k`` hash (``exclude``d peers left out)."""
    skip = set(exclude)
    return sorted((p for p in sorted(view) if p not in skip), key=lambda p: peer_hash(p, k))


def sample(view: Sequence[int], k: int, s: int, exclude: Sequence[int] = ()) -> list[int]:
    """``S_k``: the first ``min(s, |view|)`` peers of round ``k``'s candidate order."""
    return candidate_order(view, k, exclude)[:s]


def aggregators_of(members: Sequence[int], a: int) -> list[int]:
    """``A_k``: the first ``a`` members of the sample."""
    return list(members[:a])


def ping_sample(
    candidates: Sequence[int],
    count: int,
    up: Callable[[int, float], bool],
    start: float,
    rtt: float,
    timeout: float,
    me: int | None = None,
) -> tuple[list[int], float, list[int]]:
    """The first ``count`` available candidates (in candidate order), when that is known, and the
    candidates pinged in vain.

    ``count`` pings go out at ``start``; a live candidate answers after ``rtt``, a dead one (``up``
    false when pinged) is given up after ``timeout`` and that ping slot moves to the next candidate.
    ``me`` (the pinging peer) answers at once.
    """
    slots = [(start, slot) for slot in range(min(count, len(candidates)))]
    heapq.heapify(slots)
    found: list[tuple[int, int]] = []
    silent: list[int] = []
    done, last = start, start
    nxt = 0
    while slots and len(found) < count and nxt < len(candidates):
        t, slot = heapq.heappop(slots)
        index, peer = nxt, candidates[nxt]
        nxt += 1
        if peer == me:
            found.append((index, peer))
        elif up(peer, t):
            found.append((index, peer))
            done = max(done, t + rtt)
        else:
            silent.append(peer)
            last = max(last, t + timeout)
            heapq.heappush(slots, (t + timeout, slot))
    if len(found) < count:  # ran out of candidates: known once the last ping is resolved
        done = max(done, last)
    return [p for _, p in sorted(found)], done, silent


# -- the algorithm ------------------------------------------------------------------------------


class _Round:
    """Round ``k``: its sample, aggregators, the model its members train from, and its start."""

    __slots__ = ("aggregated", "aggregators", "k", "members", "params", "received", "sent_at")

    def __init__(self, k: int, members: list[int], a: int, params: Any, sent_at: float) -> None:
        self.k = k
        self.members = members
        self.aggregators = aggregators_of(members, a)
        self.params = params
        self.sent_at = sent_at
        self.received: set[int] = set()  # members that got the round's model
        self.aggregated = False


class _Collect:
    """What one aggregator holds for the round it is aggregating."""

    __slots__ = ("done", "k", "models")

    def __init__(self, k: int) -> None:
        self.k = k
        self.models: dict[int, tuple[Job, Any]] = {}
        self.done = False


class Modest(MultiServerAlgorithm):
    name = "modest"
    config_class = ModestConfig
    config: ModestConfig

    def __init__(self, config: ModestConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        self.n = len(self.servers)
        self.client_of = [c[0] for c in self.clients_of]
        self.view = list(range(self.n))
        self.last_active = [0] * self.n  # newest round each peer was heard from
        self.left: set[int] = set()  # peers that left the view (inactive)
        crash = config.crash
        n_crash = round(crash.fraction * self.n)
        chosen = ctx.streams.generator("modest.crash").choice(self.n, n_crash, replace=False)
        self.crashed = frozenset(int(p) for p in chosen)
        self._node_failures = [f for f in self.topology.config.failures if f.node is not None]
        self.rtt = 2 * self.topology.link_delay_s(0)
        self.rounds: dict[int, _Round] = {}
        self.started = 0  # newest round whose models were sent
        self.peer_round = [0] * self.n  # newest round each peer was sent a model of
        self.peer_job: list[Job | None] = [None] * self.n
        self.collect: list[_Collect | None] = [None] * self.n
        self.pending: dict[int, Job] = {}
        self.latest = (0, 0, self.servers[0].params)  # (round, aggregator, model) evaluated
        self.rounds_aggregated = 0
        self.restarts = 0
        # Per peer: the newest model it holds, as (index of the round that made it, model).
        self.held: list[tuple[int, Any]] = [(0, self.servers[0].params)] * self.n

    # -- liveness ----------------------------------------------------------------------------------
    def peer_up(self, peer: int, t: float) -> bool:
        """Whether ``peer`` is up at time ``t`` (no node failure, not crashed)."""
        if peer in self.crashed and self.config.crash.fraction > 0:
            c = self.config.crash
            if c.at_s <= t and (c.until_s is None or t < c.until_s):
                return False
        return not any(f.node == peer and f.active(t) for f in self._node_failures)

    def server_up(self, server: int) -> bool:
        return self.peer_up(server, self.now)

    def _update_view(self, k: int, answered: list[int], silent: list[int]) -> None:
        """Activity bookkeeping after round ``k``'s pings: a peer leaves the view once it failed a
        ping and was last heard from more than ``inactivity_threshold`` rounds ago; a peer out of the
        view that is up again announces itself and rejoins (modelled as instant)."""
        for p in answered:
            self.last_active[p] = k
        threshold = self.config.inactivity_threshold
        if threshold is None:
            return
        for p in silent:
            if k - self.last_active[p] > threshold:
                self.left.add(p)
        back = {p for p in self.left if self.peer_up(p, self.now)}
        for p in back:
            self.last_active[p] = k
        self.left -= back
        self.view = [p for p in range(self.n) if p not in self.left]

    # -- rounds ------------------------------------------------------------------------------------
    # The protocol's waits are callbacks on the same SimPy events its processes waited on (each
    # started as a process would be, :func:`start_soon`), so the trace is theirs and a run can be
    # checkpointed.
    def start(self) -> None:
        params = self.servers[0].params
        members = [p for p in candidate_order(self.view, 1) if self.peer_up(p, 0.0)]
        state = self._open_round(1, members[: self.config.sample_size], params)
        for p in state.members:
            self._model_arrived(p, 1, params)

    def _open_round(self, k: int, members: list[int], params: Any) -> _Round:
        state = self.rounds[k] = _Round(k, members, self.config.aggregators, params, self.now)
        self.started = k
        for job_id in [j for j, job in self.pending.items() if job.tag <= k - 2]:
            self.record(self.pending.pop(job_id), "late", "not_aggregated")
        for old in [r for r in self.rounds if r < k - 2]:
            del self.rounds[old]
        start_soon(self.env, partial(self._watch, k))
        return state

    def _start_round(self, sender: int, k: int, params: Any, _event: simpy.Event) -> None:
        """``sender`` finds round ``k``'s available sample by pinging, then sends it ``params``.

        A second sender of the same round (another aggregator) sends to the sample already found.
        """
        cfg = self.config
        if k not in self.rounds:
            order = candidate_order(self.view, k)
            members, ready, silent = ping_sample(
                order, cfg.sample_size, self.peer_up, self.now, self.rtt, cfg.ping_timeout_s, sender
            )
            pinged = self.env.timeout(ready - self.now)
            pinged.callbacks.append(partial(self._pinged, sender, k, params, members, silent))
            return
        self._send_round(sender, k, params)

    def _pinged(
        self,
        sender: int,
        k: int,
        params: Any,
        members: list[int],
        silent: list[int],
        _event: simpy.Event,
    ) -> None:
        """The pings of round ``k`` are answered (or timed out): open it if nobody did."""
        self._update_view(k, members, silent)
        if k not in self.rounds and self.started < k and self.peer_up(sender, self.now):
            self._open_round(k, members, params)
        self._send_round(sender, k, params)

    def _send_round(self, sender: int, k: int, params: Any) -> None:
        """``sender`` sends round ``k``'s model to its sample."""
        state = self.rounds.get(k)
        if state is None or self.started > k or not self.peer_up(sender, self.now):
            return
        for p in state.members:
            if p == sender:
                self._model_arrived(p, k, params)
            else:
                self.send(sender, p, params, on_delivery=partial(self._model_arrived, p, k))

    def _watch(self, k: int, _event: simpy.Event) -> None:
        """Liveness: restart with round ``k + 1`` if round ``k`` produced nothing in time.

        The live peer holding the newest model restarts from it (ties: round ``k + 1``'s candidate
        order); with no live peer at all, it looks again a round timeout later.
        """
        self.env.timeout(self.config.round_timeout_s).callbacks.append(partial(self._timed_out, k))

    def _timed_out(self, k: int, event: simpy.Event) -> None:
        if self.started > k:
            return
        live = [p for p in candidate_order(self.view, k + 1) if self.peer_up(p, self.now)]
        if not live:
            self._watch(k, event)
            return
        restarter = max(live, key=lambda p: self.held[p][0])  # first of the newest
        self.restarts += 1
        params = self.held[restarter][1]
        start_soon(self.env, partial(self._start_round, restarter, k + 1, params))

    # -- trainers ----------------------------------------------------------------------------------
    def _model_arrived(self, peer: int, k: int, params: Any) -> None:
        """``peer`` got round ``k``'s model: train on it (dropping older training)."""
        if not self.peer_up(peer, self.now) or self.peer_round[peer] >= k:
            return
        self.peer_round[peer] = k
        self.last_active[peer] = max(self.last_active[peer], k)
        if k - 1 > self.held[peer][0]:
            self.held[peer] = (k - 1, params)
        self.rounds[k].received.add(peer)
        old = self.peer_job[peer]
        if old is not None and old.open:
            self.record(old, "cancelled", "newer_round")
            self.pool.cancel(old)
        job = self.dispatch_to(self.client_of[peer], params, server=peer, version=k, network=False)
        job.tag = k
        self.peer_job[peer] = job

    def _arrived_at(self, job: Job) -> None:
        job.arrival_version = self.started
        self.on_arrival(job)

    def _lost_at(self, job: Job) -> None:
        job.arrival_version = self.started
        self.on_dropped(job)

    def on_arrival(self, job: Job) -> None:
        peer, k = job.server, job.tag
        if not self.peer_up(peer, self.now):
            if job.handle is not None:
                job.handle.cancel()
                job.handle = None
            self.record(job, "dropped", "node_down")
            return
        trained = self.trained(job)
        if self.learning and trained is None:
            return  # rejected (recorded)
        state = self.rounds.get(k)
        if state is None:  # so slow that its round is long gone
            self.record(job, "late", "round_closed")
            return
        self.pending[job.id] = job
        for agg in state.aggregators:
            if agg == peer:
                self._model_in(agg, k, job, trained)
            else:
                self.send(peer, agg, trained, on_delivery=partial(self._model_in, agg, k, job))

    # -- aggregators -------------------------------------------------------------------------------
    def _need(self, k: int) -> int:
        members = len(self.rounds[k].members)
        return max(1, math.ceil(self.config.success_fraction * members - 1e-9))

    def _model_in(self, agg: int, k: int, job: Job, model: Any) -> None:
        """Aggregator ``agg`` received a trained model of round ``k``."""
        if not self.peer_up(agg, self.now) or k not in self.rounds:
            return
        held = self.collect[agg]
        if held is None or held.k < k:  # a newer round: abandon the older aggregation
            held = self.collect[agg] = _Collect(k)
            start_soon(self.env, partial(self._aggregation_timeout, agg, held))
        if held.k > k or held.done:
            return
        held.models[job.server] = (job, model)
        if len(held.models) >= self._need(k):
            self._aggregate(agg, held)

    def _aggregation_timeout(self, agg: int, held: _Collect, _event: simpy.Event) -> None:
        timeout = self.env.timeout(self.config.aggregation_timeout_s)
        timeout.callbacks.append(partial(self._aggregation_due, agg, held))

    def _aggregation_due(self, agg: int, held: _Collect, _event: simpy.Event) -> None:
        if held.done or self.collect[agg] is not held or not self.peer_up(agg, self.now):
            return
        if len(held.models) >= self.config.min_models:
            self._aggregate(agg, held)
        else:
            held.done = True  # drops the round

    def _aggregate(self, agg: int, held: _Collect) -> None:
        held.done = True
        k = held.k
        peers = sorted(held.models)
        jobs = [held.models[p][0] for p in peers]
        average = None
        if self.learning:
            models = [held.models[p][1] for p in peers]
            if self.config.weighting == "uniform":
                raw = [1.0] * len(jobs)
            else:
                raw = [float(self.ctx.clients.sizes[j.client]) for j in jobs]
            total = sum(raw)
            average = weighted_sum(models, [r / total for r in raw])
        for job in jobs:
            if self.pending.pop(job.id, None) is not None:
                self.record(job, "applied")
        self.publish_to(agg, average)
        if k > self.held[agg][0]:
            self.held[agg] = (k, average)
        self.rounds[k].aggregated = True
        if k > self.latest[0]:
            self.latest = (k, agg, average)
            self.rounds_aggregated = k
        if self.started <= k + 1:
            start_soon(self.env, partial(self._start_round, agg, k + 1, average))

    # -- evaluation and the end --------------------------------------------------------------------
    def eval_targets(self) -> list[EvalTarget]:
        """The latest aggregate, as the model of the aggregator that made it."""
        k, agg, params = self.latest
        return [EvalTarget(agg, k, params, self.ctx.model.evaluator)]

    def finish(self) -> None:
        """Trained models no aggregator used by the stop, and jobs still training."""
        for job in self.pending.values():
            state = self.rounds.get(job.tag)
            if state is not None and state.aggregated:
                self.record(job, "late", "not_aggregated")
            else:
                self.record(job, "buffered")
        self.pending = {}
        for job in list(self.pool.open_jobs.values()):
            self.record(job, "in_flight")
            self.pool.cancel(job)
