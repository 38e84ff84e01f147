"""The base class algorithms derive from: the protocol of the papers' event pseudo-code.

An algorithm is built as ``Algorithm(config, ctx)`` with an
:class:`~fedsim.algorithms.context.AlgorithmContext`, and reads like ``ALGORITHMS.md``: ``start``
(or a ``run`` process for algorithms that wait), ``dispatch`` a client, react ``on_arrival`` /
``on_dropped``, ``staleness(job)``, ``publish`` a new model, ``record`` an outcome. How jobs are
timed and trained, how rows are written and when the run stops are not its business.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, ClassVar

import simpy
import torch

from fedsim.algorithms.context import AlgorithmContext, ValidationSplit
from fedsim.algorithms.server_opt import ServerOptimizer, ServerOptState
from fedsim.clients import ClientPool, Job
from fedsim.learning.params import all_finite
from fedsim.robust.aggregators import (
    CoordinateMedianConfig,
    is_plain_mean,
    screen_updates,
    shortfall,
    uses_generator,
)
from fedsim.robust.aggregators import aggregate as robust_aggregate
from fedsim.robust.attacks import MimicConfig, client_attack, server_attack


class ServerModel:
    """A server's current model and its version counter (the reference for staleness)."""

    def __init__(self, index: int, params: torch.Tensor | None) -> None:
        self.index = index
        self.params = params
        self.version = 0
        self.listener: Callable[[ServerModel], None] | None = None
        """Told of every new version (the simulation's ``on_publish`` callbacks)."""

    def publish(self, params: torch.Tensor | None) -> None:
        """Install a new model version (always a new tensor; old versions stay valid for jobs)."""
        self.params = params
        self.version += 1
        if self.listener is not None:
            self.listener(self)


@dataclass(frozen=True, slots=True)
class EvalTarget:
    """One model to evaluate: whose it is and with which evaluator (None: nothing to evaluate)."""

    server: int
    version: int
    params: torch.Tensor | None
    evaluator: Any
    task: int = 0


class Algorithm:
    """Base of every algorithm: the small API of the papers' pseudo-code.

    Subclasses set ``name`` and ``config_class`` and implement ``run`` (a generator) and
    ``on_arrival``; ``on_dropped`` defaults to ``on_arrival``'s bookkeeping-free sibling below.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    event_columns: ClassVar[tuple[str, ...]] = ()
    """Optional events columns this algorithm fills (``fedsim.recorder.OPTIONAL_EVENT_COLUMNS``)."""

    @classmethod
    def validation_split(cls, config: Any) -> ValidationSplit | None:
        """The share of each client's rows to hold out for validation (``ctx.model.validation``),
        or None (the default). The world builder carves it out before anything trains (runs with
        training only), so clients never train on it and ``clients.parquet`` counts what they do."""
        return None

    def __init__(self, config: Any, ctx: AlgorithmContext) -> None:
        self.config = config
        self.ctx = ctx
        self.env: simpy.Environment = ctx.env
        self.pool: ClientPool = ctx.pool
        self.server: ServerModel = ctx.servers[0]
        self.learning = ctx.model.learning
        scenario = ctx.scenario
        self.aggregator = scenario.aggregator
        self.max_norm = scenario.screening.max_norm
        byz = scenario.byzantine
        self.attack = byz.attack if byz is not None else None
        self.client_attack = self.attack is not None and self.attack.stage == "client"
        self.server_attack = self.attack is not None and self.attack.stage == "server"
        # mimic: one ranking of the clients per run; attackers copy the best-ranked honest row.
        self.mimic_rank: list[int] | None = None
        if isinstance(self.attack, MimicConfig):
            draw = ctx.streams.generator("byzantine.mimic").permutation(ctx.clients.count)
            self.mimic_rank = draw.tolist()
        # The exact historical code path (weighted_sum / lerp) unless robustness is asked for.
        self.robust = byz is not None or (
            self.aggregator is not None and not is_plain_mean(self.aggregator)
        )
        self.pre_key: tuple[int, ...] = ()
        """The ids of the jobs of the set being aggregated: the key of bucketing's shuffle."""
        self.last_aggregate: torch.Tensor | None = None
        self.server_opt = ServerOptimizer.of(
            scenario.server_optimizer, getattr(config, "server_lr", 1.0)
        )
        """The last stage of the server pipeline (``server_optimizer``; :meth:`apply`)."""
        self.opt_state: ServerOptState = self.server_opt.init()
        """The server optimiser's state of ``self.server`` (explicit, for checkpoints)."""
        # Aggregation sets a server-side attack could not attack (no honest row to imitate), and
        # the Byzantine updates in them (they went in as trained): summary.json reports both.
        self.unattacked_sets = 0
        self.unattacked_updates = 0
        if getattr(self.pool, "availability", None) is not None and self.pool.on_online is None:
            self.pool.on_online = self.on_client_online  # clients.availability

    @property
    def now(self) -> float:
        return self.env.now

    def run(self) -> Generator[simpy.Event, Any, None]:
        """The algorithm's main process, started at time 0: override it for an algorithm that waits
        (FedAvg's rounds, periodic steps). By default it calls :meth:`start` and ends, which is all
        a callback-driven algorithm (FedAsync, FedBuff) needs."""
        self.start()
        return
        yield  # a generator, so that SimPy can run it as a process

    def start(self) -> None:
        """At time 0, for algorithms driven by callbacks: dispatch the first clients."""

    def dispatch(self, client: int) -> Job:
        """Send the current model to ``client`` and start its local training."""
        s = self.server
        return self.pool.dispatch(client, s.index, s.version, s.params, self._arrived, self._lost)

    def _arrived(self, job: Job) -> None:
        job.arrival_version = self.server.version
        self.on_arrival(job)

    def _lost(self, job: Job) -> None:
        job.arrival_version = self.server.version
        self.on_dropped(job)

    def dispatch_idle(self, k: int = 1) -> list[Job]:
        """Dispatch up to ``k`` uniformly chosen idle clients."""
        return [self.dispatch(c) for c in self.pool.sample(k)]

    def dispatch_one(self) -> None:
        """Dispatch one uniformly chosen idle client, if any (the asynchronous hot path)."""
        if self.pool.idle:
            self.dispatch(self.pool.take_idle())

    def on_arrival(self, job: Job) -> None:
        raise NotImplementedError

    def on_client_online(self, client: int) -> None:
        """A client came online (``clients.availability``; it is idle now). By default an algorithm
        with a ``concurrency`` refills up to it (asynchronous algorithms keep their concurrency with
        the online clients and resume after a time with none online); others do nothing (FedAvg's
        rounds wait on ``pool.wait_idle``)."""
        concurrency = getattr(self.config, "concurrency", None)
        if isinstance(concurrency, int) and self.pool.in_flight < concurrency:
            self.dispatch_idle(concurrency - self.pool.in_flight)

    def finish(self) -> None:
        """Called once at the stop: record what the algorithm still holds (nothing by default)."""

    def eval_targets(self) -> list[EvalTarget]:
        """The models evaluated at each eval tick: every server's, with the scenario's test set.

        Multi-task algorithms override this to evaluate each task's model on its own data.
        """
        evaluator = self.ctx.model.evaluator
        return [EvalTarget(s.index, s.version, s.params, evaluator) for s in self.ctx.servers]

    def on_dropped(self, job: Job) -> None:
        """A job was lost; by default just record it."""
        self.record(job, "dropped")

    # -- helpers shared by every algorithm -------------------------------------------------------------
    def record(self, job: Job, status: str, reason: str = "", extra: tuple = ()) -> None:
        """One events row for ``job``; ``reason`` says why when it is rejected or late; ``extra``
        holds the values of the algorithm's ``event_columns`` (omitted: null)."""
        if status == "dropped" and not reason:
            reason = job.drop_reason  # "offline" when its client went offline
        self.ctx.trace.record_job(job, status, reason, extra)

    def staleness(self, job: Job) -> int:
        """Versions the server moved since ``job`` started (0: the job is fresh)."""
        return self.server.version - job.base_version

    def local_model(self, job: Job) -> torch.Tensor | None:
        """The client's trained model ``w_end``; None (recorded as rejected) if it is not finite.

        A Byzantine job running a client-side attack sends ``w_start + attacked delta``.
        In timing-only runs there is no model and this returns an empty tensor.
        """
        if not self.learning:
            return _EMPTY
        w_end = job.handle.result()
        job.handle = None
        if self.client_attack and self.ctx.clients.byzantine[job.client]:
            w_end = job.start + self._attacked(job, w_end - job.start)
        if not all_finite(w_end):
            self.record(job, "rejected", "non_finite")
            return None
        if self.max_norm is not None and not self._within_bound(w_end - job.start):
            self.record(job, "rejected", "norm_bound")
            return None
        return w_end

    def delta(self, job: Job) -> torch.Tensor | None:
        """The job's update ``w_end − w_start`` (points downhill); None if rejected.

        Rejected (before any aggregator): non-finite updates, and updates whose L2 norm exceeds
        ``screening.max_norm``. A Byzantine job's client-side attack is applied first.
        """
        if not self.learning:
            return _EMPTY
        w_end = job.handle.result()
        job.handle = None
        if not all_finite(w_end):
            self.record(job, "rejected", "non_finite")
            return None
        delta = w_end - job.start
        if self.client_attack and self.ctx.clients.byzantine[job.client]:
            delta = self._attacked(job, delta)
            if not all_finite(delta):
                self.record(job, "rejected", "non_finite")
                return None
        if not self._within_bound(delta):
            self.record(job, "rejected", "norm_bound")
            return None
        return delta

    def _attacked(self, job: Job, delta: torch.Tensor) -> torch.Tensor:
        gen = self.ctx.streams.torch_generator("attacks", job.id, device=delta.device)
        return client_attack(self.attack, delta, job.start, gen)

    def _within_bound(self, delta: torch.Tensor) -> bool:
        if self.max_norm is None:
            return True
        keep, _ = screen_updates(delta[None, :], max_norm=self.max_norm)
        return bool(keep[0])

    def combine(
        self,
        jobs: list[Job],
        deltas: list[torch.Tensor],
        raw: list[float],
        *,
        attacked: bool = False,
    ) -> torch.Tensor:
        """Robust path: the aggregate of ``deltas`` (weights ``raw``, any scale) by the scenario's
        aggregator, after server-side attacks replaced the Byzantine rows.

        A set whose rows are all Byzantine has no honest row for the attack to imitate: its rows
        go in as trained, and the set is counted in ``byzantine_unattacked_sets`` (its rows in
        ``byzantine_unattacked_updates``) rather than passing for attacked. ``attacked``: the
        Byzantine rows were attacked already (FedAsync attacks each arrival), so such a set is
        not counted.
        """
        rows = torch.stack(deltas)
        weights = torch.tensor(raw, dtype=torch.float64, device=rows.device)
        self.pre_key = tuple(sorted(j.id for j in jobs))
        cfg = self.aggregator_for(len(jobs))
        if self.server_attack:
            byz = [self.ctx.clients.byzantine[j.client] for j in jobs]
            n_byz = sum(byz)
            if 0 < n_byz < len(jobs):
                mask = torch.tensor(byz, device=rows.device)
                honest_clients = [j.client for j, b in zip(jobs, byz, strict=True) if not b]
                bad = self.attack_vector(rows, mask, honest_clients, weights, cfg)
                rows = rows.clone()
                rows[mask] = bad.to(rows.dtype)
            elif n_byz and not attacked:  # every row Byzantine: nothing to imitate
                self.unattacked_sets += 1
                self.unattacked_updates += n_byz
        if cfg is not self.aggregator:
            self.ctx.trace.count("robust_fallbacks")
        result = robust_aggregate(
            cfg, rows, weights, previous=self.last_aggregate, generator=self.pre_generator()
        )
        self.last_aggregate = result
        return result

    def pre_generator(self) -> torch.Generator | None:
        """The shuffle of a bucketing pre-aggregator for the current set: the stream
        ``aggregator.pre`` keyed by the set's job ids (the same set shuffles the same way, a
        resumed run included); None when no pre-aggregator draws."""
        if not uses_generator(self.aggregator):
            return None
        return self.ctx.streams.torch_generator("aggregator.pre", *self.pre_key)

    def aggregator_for(self, n: int) -> Any:
        """The aggregator for a set of ``n`` rows: the scenario's, or the coordinate median when
        its pipeline cannot run on ``n`` rows (Krum's ``n ≤ 2f + 2``, ``n ≤ 2f``, a pre-aggregator's
        ``f ≥ n``: :func:`~fedsim.robust.aggregators.shortfall`), counted in ``robust_fallbacks``
        by :meth:`combine`."""
        cfg = self.aggregator
        if shortfall(cfg, n) is not None:
            return CoordinateMedianConfig()
        return cfg

    def attack_vector(
        self,
        rows: torch.Tensor,
        mask: torch.Tensor,
        honest_clients: list[int],
        weights: torch.Tensor,
        cfg: Any,
    ) -> torch.Tensor:
        """What every Byzantine slot (``mask``) of the set ``rows`` sends under the server-side
        attack: computed from the honest rows (of ``honest_clients``); the optimal attacks search
        against ``cfg`` with ``weights`` (the aggregation in use), mimic copies the honest row of
        the client ranked first by the run's ``byzantine.mimic`` stream."""

        def aggregate_with(v: torch.Tensor) -> torch.Tensor:
            trial = rows.clone()
            trial[mask] = v.to(rows.dtype)
            return robust_aggregate(
                cfg, trial, weights, previous=self.last_aggregate, generator=self.pre_generator()
            )

        rank = self.mimic_rank
        target = (
            0
            if rank is None
            else min(range(len(honest_clients)), key=lambda i: rank[honest_clients[i]])
        )
        honest = rows[~mask]
        n_byz = int(mask.sum())
        return server_attack(
            self.attack, honest, n_total=len(rows), f=n_byz, aggregate=aggregate_with, target=target
        )

    # -- the server pipeline: aggregate(updates, weights) → apply(step) --------------------------------
    def aggregate(
        self,
        updates: list[torch.Tensor],
        weights: list[float],
        *,
        jobs: list[Job] | None = None,
        total: float | None = None,
        attacked: bool = False,
    ) -> torch.Tensor:
        """The aggregation stage: ``Σ_i w_i u_i / total`` (``total``: ``Σ_i w_i`` unless given)
        by the scenario's aggregator, after server-side attacks replaced the Byzantine rows.

        The one path of every algorithm. With the mean aggregator and no Byzantine clients it is
        :func:`weighted_sum` with coefficients ``w_i / total`` in the order given (the historical
        summation order, so traces stay byte-identical); otherwise :meth:`combine` (``jobs``
        needed: the Byzantine rows are theirs), whose weighted *average* is rescaled by
        ``Σ w_i / total`` so that the mean aggregator gives back the same step.
        """
        if not self.robust:
            norm = sum(weights) if total is None else total
            return weighted_sum(updates, [w / norm for w in weights])
        if jobs is None:
            raise ValueError("a robust aggregation needs the jobs of its updates")
        result = self.combine(jobs, updates, weights, attacked=attacked)
        if total is not None:
            result = result * (sum(weights) / total)
        return result

    def server_update(
        self,
        params: torch.Tensor,
        step: torch.Tensor,
        state: ServerOptState,
        optimizer: ServerOptimizer | None = None,
    ) -> tuple[torch.Tensor | None, ServerOptState]:
        """The server optimiser stage: ``(w + u, state')`` for the aggregated ``step`` by
        ``optimizer`` (the algorithm's own by default); ``None`` (counted in ``rejected_models``,
        ``state`` kept) if the new model is not finite."""
        u, new_state = (optimizer or self.server_opt).update(step, state)
        params = params + u
        if not all_finite(params):
            # Finite updates can still overflow when combined; never let that reach the model.
            self.ctx.trace.count("rejected_models")
            return None, state
        return params, new_state

    def apply(self, step: torch.Tensor) -> None:
        """One server step: ``w ← w + u_t`` with ``u_t`` the server optimiser's step for the
        aggregated update ``step`` (``η_g · step`` with the default ``sgd``), then publish."""
        params, self.opt_state = self.server_update(self.server.params, step, self.opt_state)
        if params is not None:
            self.server.publish(params)

    def mix(self, w_local: torch.Tensor, alpha: float) -> None:
        """FedAsync's mixing as a server step: the update ``Δ = α (w_local − w)`` through the server
        optimiser. With the default (sgd at lr 1, ``u = Δ``) it is ``torch.lerp(w, w_local, α)``,
        computed as such (the historical bytes)."""
        if self.server_opt.identity:
            self.publish(torch.lerp(self.server.params, w_local, alpha))
        else:
            self.apply(alpha * (w_local - self.server.params))

    def summary_extra(self) -> dict[str, Any]:
        """Figures of this algorithm for summary.json: with a server-side attack, the aggregation
        sets it could not attack (see :meth:`combine`)."""
        if not self.server_attack:
            return {}
        return {
            "byzantine_unattacked_sets": self.unattacked_sets,
            "byzantine_unattacked_updates": self.unattacked_updates,
        }

    def publish(self, params: torch.Tensor | None) -> None:
        """Install a new global model (``None`` in timing-only runs: only the version moves)."""
        if params is not None and not all_finite(params):
            # Finite updates can still overflow when combined; never let that reach the model.
            self.ctx.trace.count("rejected_models")
            return
        self.server.publish(params)


_EMPTY = torch.empty(0)


def weighted_sum(updates: list[torch.Tensor], coeffs: list[float]) -> torch.Tensor:
    """``Σ c_i · u_i`` over stacked updates, in the order given (the one FedAvg and FedBuff share)."""
    stacked = torch.stack(updates)
    c = torch.tensor(coeffs, dtype=stacked.dtype, device=stacked.device)
    return (c[:, None] * stacked).sum(0)
