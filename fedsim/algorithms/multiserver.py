"""What multi-server and decentralized algorithms share: servers with their own clients, and
messages between servers over the topology's links.

A :class:`MultiServerAlgorithm` sees ``ctx.servers`` (one :class:`ServerModel` per node of the
``topology:`` graph, all starting from the same initial model), ``ctx.topology`` (graph, mixing matrix
``W``, failures, link delays) and ``ctx.clients.server`` (the server of each client). Messages are
SimPy timeouts of ``latency + bytes / bandwidth`` simulated seconds; each delivery is one events row
with status ``message`` (sender in ``server``, ``receiver``, ``bytes_up`` = bytes), so traffic per
link kind and consensus in simulated time come out of the same trace as client jobs.

A message over a link that is down (or to/from a server that is down) at send time is not sent:
:meth:`send` returns None and the algorithm decides what to do (the mixing matrix of that moment,
:meth:`mixing`, already moves the weight of unreachable neighbours to the diagonal).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import numpy as np
import simpy
import torch

from fedsim.algorithms.base import Algorithm
from fedsim.algorithms.context import AlgorithmContext
from fedsim.clients import Job
from fedsim.errors import ScenarioError
from fedsim.learning.params import all_finite
from fedsim.topology import Topology


class MultiServerAlgorithm(Algorithm):
    """Base for algorithms with several servers (or peers) linked by ``topology:``."""

    def __init__(self, config: Any, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        topology = ctx.topology
        if topology is None:
            raise ScenarioError(
                f"algorithm {self.name} needs a topology: section (servers, graph, mixing)",
                path="topology",
            )
        self.topology: Topology = topology
        self.servers = ctx.servers
        self.clients_of: tuple[tuple[int, ...], ...] = topology.assignment
        self.model_bytes = ctx.model.spec.nbytes()

    # -- clients -----------------------------------------------------------------------------------------
    def dispatch_to(
        self,
        client: int,
        params: torch.Tensor | None,
        *,
        server: int | None = None,
        version: int | None = None,
        network: bool = True,
    ) -> Job:
        """Start ``client`` (taking it from the idle list) training from ``params``.

        ``server`` defaults to the client's own server and ``version`` to that server's version; the
        arrival goes to :meth:`on_arrival` as usual. ``network=False``: a compute-only job (a peer
        training on itself: no transfer time, no client bytes; its models travel as messages).
        """
        if server is None:
            server = int(self.ctx.clients.server[client])
        if version is None:
            version = self.servers[server].version
        self.pool.take(client)
        return self.pool.dispatch(
            client, server, version, params, self._arrived_at, self._lost_at, network=network
        )

    def _arrived_at(self, job: Job) -> None:
        job.arrival_version = self.servers[job.server].version
        self.on_arrival(job)

    def _lost_at(self, job: Job) -> None:
        job.arrival_version = self.servers[job.server].version
        self.on_dropped(job)

    def trained(self, job: Job) -> torch.Tensor | None:
        """The job's local model, or None when rejected (recorded); empty in timing-only runs."""
        return self.local_model(job)

    # -- the graph ---------------------------------------------------------------------------------------
    def mixing(self) -> np.ndarray:
        """The mixing matrix now (failed links and servers cut, weights moved to the diagonal)."""
        return self.topology.mixing_at(self.now)

    def neighbours(self, server: int) -> tuple[int, ...]:
        """Servers that ``server`` can mix with now."""
        return self.topology.neighbours(server, self.mixing())

    def server_up(self, server: int) -> bool:
        """Whether ``server`` is up now (no active node failure names it)."""
        return not any(
            f.node == server and f.active(self.now) for f in self.topology.config.failures
        )

    def link_up(self, a: int, b: int) -> bool:
        """Whether servers ``a`` and ``b`` can talk now (their link and both ends are up)."""
        if not (self.server_up(a) and self.server_up(b)):
            return False
        pair = {a, b}
        return not any(
            f.link is not None and set(f.link) == pair and f.active(self.now)
            for f in self.topology.config.failures
        )

    def send(
        self,
        sender: int,
        receiver: int,
        payload: Any,
        nbytes: int | None = None,
        on_delivery: Callable[[Any], None] | None = None,
    ) -> simpy.Event | None:
        """Send ``payload`` from ``sender`` to ``receiver`` over their link.

        Returns the delivery event (its value is the payload), or None when the link or an end is
        down now. ``nbytes`` defaults to one full model. The delivery is recorded in the events
        trace and ``on_delivery(payload)`` runs at the arrival time.
        """
        if not self.link_up(sender, receiver):
            return None
        nbytes = self.model_bytes if nbytes is None else int(nbytes)
        event = self.env.timeout(self.topology.link_delay_s(nbytes), value=payload)
        # A partial of a method, not a closure: the queue of a checkpointed run is pickled.
        event.callbacks.append(
            partial(self._delivered, sender, receiver, nbytes, self.now, on_delivery)
        )
        return event

    def _delivered(
        self,
        sender: int,
        receiver: int,
        nbytes: int,
        sent_at: float,
        on_delivery: Callable[[Any], None] | None,
        event: simpy.Event,
    ) -> None:
        self.ctx.trace.record_message(sender, receiver, nbytes, sent_at)
        if on_delivery is not None:
            on_delivery(event.value)

    def exchange(
        self, models: list[torch.Tensor | None], nbytes: int | None = None
    ) -> Generator[simpy.Event, Any, list[dict[int, Any]]]:
        """One gossip step as a SimPy sub-process of a generator ``run()``
        (``inbox = yield from self.exchange(models)``): it waits until every message of the step has
        arrived and returns, per server, ``{sender: model}`` received. A run whose algorithm waits
        in a generator cannot be checkpointed: the built-in ones use :meth:`start_exchange`."""
        inbox, arrived = self.start_exchange(models, nbytes)
        if arrived is not None:
            yield arrived
        return inbox

    def start_exchange(
        self, models: list[torch.Tensor | None], nbytes: int | None = None
    ) -> tuple[list[dict[int, Any]], simpy.Event | None]:
        """One gossip step: every up server sends its model to each reachable neighbour.

        Returns, per server, the ``{sender: model}`` it receives (filled as the messages arrive)
        and the event of the last arrival (None when nothing could be sent): the caller goes on
        in a callback of that event (no generator process, so that a run can be checkpointed).
        """
        inbox: list[dict[int, Any]] = [{} for _ in self.servers]
        pending = []
        W = self.mixing()
        for i in range(len(self.servers)):
            for j in self.topology.neighbours(i, W):
                event = self.send(i, j, models[i], nbytes)
                if event is not None:
                    event.callbacks.append(partial(store_message, inbox[j], i))
                    pending.append(event)
        return inbox, (self.env.all_of(pending) if pending else None)

    def mix(self, models: list[torch.Tensor], W: np.ndarray | None = None) -> list[torch.Tensor]:
        """``z_i ← Σ_k W_ik z_k`` for every server (one consensus step, in float64 then cast back)."""
        W = self.mixing() if W is None else W
        stacked = torch.stack(models)
        weights = torch.tensor(np.asarray(W), dtype=torch.float64, device=stacked.device)
        return list((weights @ stacked.double()).to(stacked.dtype).unbind(0))

    def publish_to(self, server: int, params: torch.Tensor | None) -> None:
        """Install a new model at ``server`` (non-finite models are refused, as in :meth:`publish`)."""
        if params is not None and not all_finite(params):
            self.ctx.trace.count("rejected_models")
            return
        self.servers[server].publish(params)


def store_message(inbox: dict[int, Any], sender: int, event: simpy.Event) -> None:
    """Store a delivered message in its receiver's inbox (a partial: picklable)."""
    inbox[sender] = event.value
