"""Decentralized SGD (gossip) with the single-global-merge schedule (arXiv 2507.06542; ALGORITHMS.md
§3.10), synchronous or asynchronous.

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

The steps of round t (its gossip matrices and merges) are one *plan* per round, drawn in round
order from the run's streams, so both modes use the same matrices.

``mode: sync``: each round waits for every peer's job (a peer whose job was lost keeps its model),
then gossips. ``mode: async``: every peer loops on its own (train, send, wait, mix, publish); with
``async_rule: wait`` a peer's gossip step waits only for the same round's models of the in-neighbours
of its row, so a straggler slows its neighbours, theirs one round later, and so on, but not the whole
graph; ``async_rule: latest`` instead asks each in-neighbour for the model it holds now (a round
trip, never a wait for a neighbour's training).
Merges wait in both rules (a merge averages one round's models). Evaluation: one row per peer (its
local model) and, with ``eval_merged``, one more row with ``server = -1`` for the merged model
``x̄ = mean_i x_i`` (what a global merge would give now; its version is the smallest round count).
The run stops after ``rounds`` rounds (in async mode, once every peer has done them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import simpy
import torch
from pydantic import Field, PositiveInt

from fedsim.algorithms.base import EvalTarget
from fedsim.algorithms.context import AlgorithmContext
from fedsim.algorithms.gossip import RSchedule, random_r_matrix, received_mixing, received_row
from fedsim.algorithms.multiserver import MultiServerAlgorithm, store_message
from fedsim.algorithms.schedule import call_now, start_soon
from fedsim.checks import needs_topology
from fedsim.clients import Job
from fedsim.config_base import Section

PROGRESS_TOL = 1e-9
END_OF_INSTANT = 2  # SimPy priority after every normal event of the same simulated time


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
    gossip (1 = one merge after the last round); null: no final merge. In async mode π is each
    peer's own round / rounds: the merge of round t waits for every peer's round-t model."""


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
    mode: Literal["sync", "async"] = "sync"
    """sync: every round is a global barrier (all peers train, then all gossip); async: each peer
    loops on its own (train, send to its out-neighbours, mix, publish), so peers run at different
    round counts and a straggler slows only its neighbours."""
    async_rule: Literal["wait", "latest"] = "wait"
    """async only. wait: a gossip step waits for the same round's models of the in-neighbours of the
    peer's row (equal job times give exactly the sync run); latest: ask each in-neighbour of the row
    for the model it holds now and mix the replies (one link latency for the request, then the
    model; merges still wait). The job row's staleness is the largest round gap to a mixed
    neighbour model (always 0 with wait)."""

    def check_scenario(self, scenario: Any) -> None:
        """Run by scenario validation: peers with one client each, linked by a topology."""
        needs_topology(self.name, scenario, one_client_each=True)


@dataclass(frozen=True, slots=True)
class Step:
    """One gossip step of a round: ``W`` shared by every peer, or None for the topology's mixing
    matrix at the moment each peer uses it; ``merge`` steps always wait for their models."""

    W: np.ndarray | None
    merge: bool = False


class DSGD(MultiServerAlgorithm):
    name = "dsgd"
    config_class = DSGDConfig
    config: DSGDConfig

    def __init__(self, config: DSGDConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        self.round = 0
        self.merges = 0
        training = ctx.scenario.training
        self.steps_per_round = training.local_steps if training is not None else 1
        self.gossip_rng = ctx.streams.generator("dsgd.gossip")
        self.merge_rng = ctx.streams.generator("dsgd.merge")
        self._plans: dict[int, list[Step]] = {}
        self._planned = 0
        # sync: round t's jobs, then its models through the gossip steps
        self._t = 0
        self._jobs: list[Job | None] = []
        self._waiting = 0
        self._round_done: simpy.Event | None = None
        self._models: list[torch.Tensor | None] = []
        self._round_steps: list[Step] = []
        self._q = 0
        self._W: np.ndarray | None = None
        self._inbox: list[dict[int, Any]] = []
        # async
        n = len(self.servers)
        self.rounds_done = [0] * n
        self._arrival: list[simpy.Event | None] = [None] * n
        self._held: list[Job | None] = [None] * n
        self._to_dispatch: list[tuple[int, simpy.Event]] = []
        self._slots: dict[tuple[int, int, int, int], simpy.Event] = {}
        self._discard: set[tuple[int, int, int, int]] = set()
        self._completed: Counter[int] = Counter()
        self._peers = [_Peer() for _ in range(n)]

    # -- the plan of a round ---------------------------------------------------------------------------
    def _steps(self, t: int) -> list[Step]:
        """Round ``t``'s gossip steps, drawn once and in round order (same draws in both modes)."""
        while self._planned < t:
            self._planned += 1
            self._plans[self._planned] = self._plan(self._planned)
        return self._plans[t]

    def _plan(self, t: int) -> list[Step]:
        cfg, n = self.config, len(self.servers)
        merge = cfg.merge
        progress = t / cfg.rounds
        final_at = merge.final_at if merge is not None else None
        if final_at is not None and progress >= final_at - PROGRESS_TOL:
            return [Step(np.full((n, n), 1.0 / n), merge=True)]
        steps = [Step(self._gossip_matrix(progress)) for _ in range(cfg.gossip_steps)]
        if merge is not None and self._merge_due(t, merge):
            steps.append(Step(self._merge_matrix(merge.fraction_r), merge=True))
        return steps

    def _gossip_matrix(self, progress: float) -> np.ndarray | None:
        if self.config.gossip == "mixing":
            return None  # the topology's W at the moment of use (links may fail)
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

    def _round_completed(self, t: int) -> None:
        """Bookkeeping once every peer has finished round ``t``: merges counted, plan freed."""
        self.merges += sum(step.merge for step in self._plans.pop(t))
        self.round = t

    # Both modes are callbacks on the same SimPy events the round loops waited on (so the traces
    # are the loops'), with their progress in attributes, not generator processes: a run can be
    # checkpointed.
    def start(self) -> None:
        if self.config.mode == "async":
            # Each peer starts as a process would: an urgent event of time 0, in peer order.
            for s in range(len(self.servers)):
                start_soon(self.env, partial(self._peer_round, s))
            return
        self._open_round()

    # -- synchronous rounds -----------------------------------------------------------------------------
    def _open_round(self) -> None:
        n = len(self.servers)
        self._t += 1
        self._jobs = [None] * n
        self._round_done = self.env.event()
        self._waiting = n
        for s in range(n):
            # A peer trains on itself: no client transfer; its models travel as messages.
            self.dispatch_to(self.clients_of[s][0], self.servers[s].params, server=s, network=False)
        self._round_done.callbacks.append(self._close_round)

    def _close_round(self, _event: simpy.Event) -> None:
        models = []
        for s in range(len(self.servers)):
            job = self._jobs[s]
            accepted, x = self._local_model(s, job)
            if accepted:
                self.record(job, "applied")
            models.append(x)
        self._jobs = []
        self._models, self._round_steps, self._q = models, self._steps(self._t), 0
        self._gossip_steps()

    def _gossip_steps(self) -> None:
        """The round's gossip steps, each resumed when its messages have arrived; then publish."""
        while self._q < len(self._round_steps):
            step = self._round_steps[self._q]
            self._W = self.mixing() if step.W is None else step.W
            arrived = self._send_gossip(self._models, self._W)
            if arrived is not None:
                arrived.callbacks.append(self._gossip_arrived)
                return
            self._mix_gossip()
        n, t = len(self.servers), self._t
        for s, x in enumerate(self._models):
            self.publish_to(s, x)
        self._models = []
        self.rounds_done = [t] * n
        self._round_completed(t)
        if t < self.config.rounds:
            self._open_round()
        else:
            self.ctx.trace.stop("rounds")

    def _gossip_arrived(self, _event: simpy.Event) -> None:
        self._mix_gossip()
        self._gossip_steps()

    def _local_model(self, s: int, job: Job | None) -> tuple[bool, torch.Tensor | None]:
        """(accepted, model): the peer's trained model, or its current one when the job was lost
        or rejected (recorded) and in timing-only runs."""
        current = self.servers[s].params
        if job is None:
            return False, current
        if not self.learning:
            return True, current
        w = self.trained(job)
        return (False, current) if w is None else (True, w)

    def _send_gossip(self, models: list[torch.Tensor | None], W: np.ndarray) -> simpy.Event | None:
        """Send the messages of one gossip step with ``W``: j → i for every ``W[i, j] > 0`` (a
        message over a failed link is not sent). They land in ``self._inbox``; returns the event
        of the last arrival (None: nothing sent)."""
        n = len(models)
        self._inbox = inbox = [{} for _ in range(n)]
        pending = []
        for i in range(n):
            for j in np.flatnonzero(W[i] > 0):
                j = int(j)
                if j == i:
                    continue
                event = self.send(j, i, models[j])
                if event is not None:
                    event.callbacks.append(partial(store_message, inbox[i], j))
                    pending.append(event)
        return self.env.all_of(pending) if pending else None

    def _mix_gossip(self) -> None:
        """Mix with what arrived (a message not sent leaves its weight with the receiver)."""
        if self.learning:
            self._models = self.mix(self._models, received_mixing(self._W, self._inbox))
        self._inbox = []
        self._q += 1

    # -- asynchronous peers -----------------------------------------------------------------------------
    def _peer_round(self, s: int, _event: simpy.Event | None = None) -> None:
        """Peer ``s`` on its own: ask for its next job (train), then each step of the round's
        plan (:meth:`_peer_steps`), then publish; after round ``rounds`` it stops."""
        peer = self._peers[s]
        if peer.t < self.config.rounds:
            peer.t += 1
            self._request_job(s).callbacks.append(partial(self._peer_trained, s))

    def _peer_trained(self, s: int, event: simpy.Event) -> None:
        peer = self._peers[s]
        accepted, peer.x = self._local_model(s, event.value)
        self._held[s] = event.value if accepted else None  # lost or rejected: keeps its model
        peer.gap, peer.q, peer.steps = 0, 0, self._steps(peer.t)
        self._peer_steps(s)

    def _peer_steps(self, s: int) -> None:
        """The steps of peer ``s``'s round from ``peer.q`` on; a step that waits resumes here."""
        peer, rule = self._peers[s], self.config.async_rule
        while peer.q < len(peer.steps):
            step = peer.steps[peer.q]
            peer.W = self.mixing() if step.W is None else step.W
            if step.merge or rule == "wait":
                self._send_step(s, peer.t, peer.q, step, peer.W, peer.x)
                waiting = self._start_wait_step(s, peer)
                if waiting is not None:
                    waiting.callbacks.append(partial(self._peer_waited, s))
                    return
                self._end_wait_step(s, peer)
            else:
                peer.wanted = [int(j) for j in np.flatnonzero(peer.W[s] > 0) if j != s]
                if peer.wanted:
                    latency = self.topology.config.link.latency_s
                    self.env.timeout(latency).callbacks.append(partial(self._peer_asked, s))
                    return
                peer.x = self._mix_row(s, peer.W, peer.x, {})
            peer.q += 1
        self._peer_round_done(s)

    def _peer_waited(self, s: int, _event: simpy.Event) -> None:
        self._end_wait_step(s, self._peers[s])
        self._peers[s].q += 1
        self._peer_steps(s)

    def _peer_round_done(self, s: int) -> None:
        peer = self._peers[s]
        t = peer.t
        if self._held[s] is not None:
            held = self._held[s]
            held.arrival_version = held.base_version + peer.gap  # staleness column = round gap
            self.record(held, "applied")
            self._held[s] = None
        self.publish_to(s, peer.x)
        peer.x, peer.steps, peer.W = None, [], None
        self.rounds_done[s] = t
        self._completed[t] += 1
        if self._completed[t] == len(self.servers):
            del self._completed[t]
            self._round_completed(t)
            if t == self.config.rounds:
                self.ctx.trace.stop("rounds")
        self._peer_round(s)

    def _request_job(self, s: int) -> simpy.Event:
        """Start peer ``s``'s next job at the end of this instant: jobs asked for at the same time
        start in peer order, so job ids (hence training seeds) match the sync mode's."""
        done = self.env.event()
        if not self._to_dispatch:
            _at_end_of_instant(self.env, self._dispatch_requested)
        self._to_dispatch.append((s, done))
        return done

    def _dispatch_requested(self, _event: simpy.Event) -> None:
        requests, self._to_dispatch = sorted(self._to_dispatch, key=lambda r: r[0]), []
        for s, done in requests:
            self._arrival[s] = done
            self.dispatch_to(self.clients_of[s][0], self.servers[s].params, server=s, network=False)

    def _in_candidates(self, i: int, step: Step) -> np.ndarray:
        """Peers that may send to ``i`` in this step: its row of the shared W, or its graph
        neighbours when each peer reads the topology's W at its own time."""
        row = self.topology.W[i] if step.W is None else step.W[i]
        return np.array([j for j in np.flatnonzero(row > 0) if j != i], dtype=int)

    def _slot(self, key: tuple[int, int, int, int]) -> simpy.Event:
        event = self._slots.get(key)
        if event is None:
            event = self._slots[key] = self.env.event()
        return event

    def _deliver(self, key: tuple[int, int, int, int], model: Any) -> None:
        """A (receiver, sender, round, step) message arrived, or will not (``model`` None)."""
        if key in self._discard:
            self._discard.discard(key)
            return
        self._slot(key).succeed(model)

    def _delivered_step(self, key: tuple[int, int, int, int], event: simpy.Event) -> None:
        self._deliver(key, event.value)

    def _send_step(self, s: int, t: int, q: int, step: Step, W: np.ndarray, x: Any) -> None:
        """Send ``x`` to every out-neighbour of ``s`` in ``W``; a peer that might wait for it but
        gets nothing (link down, or not in the column now) is told at once."""
        if step.W is None:
            receivers = [int(i) for i in np.flatnonzero(self.topology.W[:, s] > 0) if i != s]
        else:
            receivers = [int(i) for i in np.flatnonzero(W[:, s] > 0) if i != s]
        for i in receivers:
            key = (i, s, t, q)
            event = self.send(s, i, x) if W[i, s] > 0 else None
            if event is None:
                self._deliver(key, None)
            else:
                event.callbacks.append(partial(self._delivered_step, key))

    def _start_wait_step(self, i: int, peer: _Peer) -> simpy.Event | None:
        """Wait for this step's models from the in-neighbours of row ``i`` of ``W``: the event
        when all are in (None: the row wants none)."""
        peer.wanted = [int(j) for j in np.flatnonzero(peer.W[i] > 0) if j != i]
        peer.events = [self._slot((i, j, peer.t, peer.q)) for j in peer.wanted]
        return self.env.all_of(peer.events) if peer.events else None

    def _end_wait_step(self, i: int, peer: _Peer) -> None:
        """Mix peer ``i``'s model with the step's models that came."""
        t, q, wanted, events = peer.t, peer.q, peer.wanted, peer.events
        inbox = {j: e.value for j, e in zip(wanted, events, strict=True) if e.value is not None}
        for j in wanted:
            del self._slots[(i, j, t, q)]
        for j in set(self._in_candidates(i, peer.steps[q]).tolist()) - set(wanted):
            key = (i, j, t, q)  # a link that went down since the send: that model is not used
            event = self._slots.pop(key, None)
            if event is None:
                self._discard.add(key)
        peer.wanted, peer.events = [], []
        peer.x = self._mix_row(i, peer.W, peer.x, inbox)

    def _peer_asked(self, i: int, _event: simpy.Event) -> None:
        """``async_rule: latest``: the request reached the in-neighbours of row ``i`` (one link
        latency, no trace row); they send the model they hold now. The peer's gap is the largest
        round gap ``t − 1 − rounds_j`` (0 if none behind)."""
        peer = self._peers[i]
        peer.replies, gap = {}, 0
        for j in peer.wanted:
            event = self.send(j, i, self.servers[j].params)
            if event is not None:
                peer.replies[j] = event
                gap = max(gap, peer.t - 1 - self.rounds_done[j])
        peer.gap = max(peer.gap, gap)
        if peer.replies:
            waiting = self.env.all_of(list(peer.replies.values()))
            waiting.callbacks.append(partial(self._peer_replied, i))
            return
        self._peer_replied(i, None)

    def _peer_replied(self, i: int, _event: simpy.Event | None) -> None:
        peer = self._peers[i]
        inbox = {j: e.value for j, e in peer.replies.items()}
        peer.x = self._mix_row(i, peer.W, peer.x, inbox)
        peer.wanted, peer.replies = [], {}
        peer.q += 1
        self._peer_steps(i)

    def _mix_row(self, i: int, W: np.ndarray, x: Any, inbox: dict[int, Any]) -> Any:
        """``x_i ← Σ_j W'_ij x_j`` with ``W'`` row ``i`` of ``W`` restricted to what arrived."""
        if not self.learning:
            return x
        row = received_row(W[i], i, inbox)
        senders = [i, *sorted(inbox)]
        stacked = torch.stack([x, *(inbox[j] for j in senders[1:])])
        weights = torch.tensor(row[senders], dtype=torch.float64, device=stacked.device)
        return (weights @ stacked.double()).to(stacked.dtype)

    # -- arrivals ---------------------------------------------------------------------------------------
    def on_arrival(self, job: Job) -> None:
        if self.config.mode == "async":
            self._arrived_async(job.server, job)
            return
        self._jobs[job.server] = job
        self._one_done()

    def on_dropped(self, job: Job) -> None:
        self.record(job, "dropped")
        if self.config.mode == "async":
            self._arrived_async(job.server, None)
            return
        self._one_done()

    def _arrived_async(self, s: int, job: Job | None) -> None:
        done, self._arrival[s] = self._arrival[s], None
        assert done is not None
        done.succeed(job)

    def _one_done(self) -> None:
        self._waiting -= 1
        if self._waiting == 0 and self._round_done is not None:
            self._round_done.succeed()

    def finish(self) -> None:
        """Local models not yet gossiped (an open round, or a peer waiting): ``buffered``."""
        for job in [*self._jobs, *self._held]:
            if job is not None:
                self.record(job, "buffered")
        self._jobs = []
        self._held = [None] * len(self.servers)

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
            targets.append(EvalTarget(-1, self.round, merged, self.ctx.model.evaluator))
        return targets


def _at_end_of_instant(env: simpy.Environment, callback: Callable[[simpy.Event], None]) -> None:
    """Run ``callback`` after every other event of the current simulated time."""
    call_now(env, callback, priority=END_OF_INSTANT)


class _Peer:
    """Where an asynchronous peer is in its loop: round ``t``, its model ``x`` through the steps
    of the round's plan, step ``q`` and what it waits for (explicit, so that a run can be
    checkpointed)."""

    def __init__(self) -> None:
        self.t = 0
        self.steps: list[Step] = []
        self.q = 0
        self.x: Any = None
        self.gap = 0
        self.W: np.ndarray | None = None
        self.wanted: list[int] = []
        self.events: list[simpy.Event] = []
        self.replies: dict[int, simpy.Event] = {}
