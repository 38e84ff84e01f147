"""Clients and their jobs: who is idle, how long a job takes, and when its update arrives.

A job is one client's round trip: download the model, compute, upload the update. Its three phases
are drawn from the timing model when it is dispatched and the job itself is scheduled as ONE event on
the SimPy queue (``env.schedule``; a Job has the ``callbacks``/``_ok`` an event needs), after which the
algorithm's ``on_arrival`` (or ``on_dropped``) callback runs. One light event per job, with no
Timeout object and no closure, is what lets a timing-only run reach a million updates. Training is submitted to the trainer at dispatch and
only computed when the algorithm asks for the update.

With ``clients.availability`` (:mod:`fedsim.availability`) the pool also keeps one pending switch
per client, in a calendar of its own with one event on the SimPy queue for the earliest (a plain
callback, like jobs; ties in client order): an offline client is not idle, so it is never
sampled nor dispatched; a client going offline loses its running job at that instant (status
``dropped``, reason ``offline``, its ``on_dropped`` runs then, the job's own event later finds it
closed); a client coming online is idle again, idle waiters wake, and ``on_online`` (the
algorithm's ``on_client_online``) is called.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import numpy as np
import simpy
import torch

from fedsim.availability import Availability
from fedsim.learning.trainer import Trainer, TrainHandle, TrainJob
from fedsim.rng import BlockSampler, SeedStreams
from fedsim.timing import ClientTiming

ArrivalCallback = Callable[["Job"], None]


class Job:
    """One dispatched piece of local work and everything the trace needs to know about it."""

    __slots__ = (
        "_ok",
        "_value",
        "arrival_version",
        "arrived_at",
        "base_version",
        "bytes_down",
        "bytes_up",
        "callbacks",
        "client",
        "comm_s",
        "compute_s",
        "dispatched_at",
        "drop_reason",
        "dropped",
        "handle",
        "id",
        "on_done",
        "on_lost",
        "open",
        "server",
        "start",
        "tag",
        "task",
    )

    def __init__(self, job_id: int, client: int, server: int, base_version: int, now: float):
        self.id = job_id
        self.client = client
        self.server = server
        self.base_version = base_version
        self.dispatched_at = now
        self.arrived_at = now
        self.arrival_version = base_version
        self.compute_s = 0.0
        self.comm_s = 0.0
        self.dropped = False
        self.drop_reason = ""  # "offline": lost because its client went offline
        self.open = True  # False once the job has arrived, was dropped or was cancelled
        self.handle: TrainHandle | None = None
        self.start: torch.Tensor | None = None
        self.tag: object = None  # free for the algorithm (e.g. FedAvg's round number)
        self.task = 0  # multi-task algorithms: which task's model this job trains
        # Bytes recorded for this job; None = a full model each way (the timing model's sizes).
        self.bytes_up: int | None = None
        self.bytes_down: int | None = None
        self.on_done: ArrivalCallback | None = None
        self.on_lost: ArrivalCallback | None = None  # with availability: called if it goes offline
        # What SimPy's event loop needs of an event: the job is its own arrival event.
        self.callbacks: list | None = None
        self._ok = True
        self._value = None


class ClientPool:
    """The client population: idle clients, dispatch, cancellation.

    Idle clients are kept in a list; a random one is taken by swapping it with the last entry, so
    picking is O(1) and depends only on the sampling stream (never on set iteration order). Each
    client's position in that list is kept too (``-1``: not idle), so taking a given client
    (cohorts, a client going offline) is O(1) as well, never a scan of 100k entries.
    """

    def __init__(
        self,
        env: simpy.Environment,
        n_clients: int,
        timing: ClientTiming,
        trainer: Trainer | None,
        streams: SeedStreams,
        availability: Availability | None = None,
    ) -> None:
        self.env = env
        self.n_clients = n_clients
        self.timing = timing
        self.trainer = trainer
        self.streams = streams
        self.flip_labels: list[bool] | None = None  # per client: train on flipped labels
        # Whether jobs keep their start model (``Job.start``) for updates Δ = w_end − w_start.
        # Algorithms that only need w_end switch it off: a job then holds one model, not two.
        self.keep_start = True
        self.idle: list[int] = list(range(n_clients))
        self._slot: list[int] = list(range(n_clients))  # client -> its index in idle, or -1
        self._pick_u = BlockSampler(streams.generator("sampling.clients").random)
        self._next_job = 0
        self.in_flight = 0
        self.open_jobs: dict[
            int, Job
        ] = {}  # id -> job, for the trace of jobs still out at the stop
        self._idle_waiters: list[simpy.Event] = []
        self._job_callbacks = (self._finish,)  # shared by every job; SimPy only iterates it
        # Simulated seconds with no job in flight (see idle_s).
        self._idle_since = env.now
        self._idle_total = 0.0
        # clients.availability: None = always online (no switch events, no extra state).
        self.availability = availability
        self.online: list[bool] | None = None
        # With availability: client -> its open job (a client runs one job at a time: it is taken
        # from idle to be dispatched and comes back when the job ends).
        self._running: dict[int, Job] | None = None
        self.n_online = n_clients
        self.on_online: Callable[[int], None] | None = None
        """Told of every client coming online (set by the algorithm: ``on_client_online``)."""
        if availability is not None:
            self._start_availability()

    # -- choosing clients ---------------------------------------------------------------------------
    def take_idle(self) -> int:
        """Remove and return a uniformly chosen idle client."""
        idle, slot = self.idle, self._slot
        i = int(self._pick_u() * len(idle))
        client = idle[i]
        slot[client] = -1
        last = idle.pop()  # the swap-and-pop of _remove_at, inline: the async hot path
        if i < len(idle):
            idle[i] = last
            slot[last] = i
        return client

    def take(self, client: int) -> None:
        """Remove a given idle ``client`` from the idle list (algorithms that pick clients
        themselves); O(1)."""
        i = self._slot[client]
        if i < 0:
            raise RuntimeError(f"client {client} is not idle")
        self._remove_at(i)

    def _remove_at(self, i: int) -> None:
        """Remove ``idle[i]`` by moving the last entry into its place (the order the sampling
        stream sees, unchanged from a plain swap-and-pop)."""
        idle, slot = self.idle, self._slot
        slot[idle[i]] = -1
        last = idle.pop()
        if i < len(idle):
            idle[i] = last
            slot[last] = i

    def _append_idle(self, client: int) -> None:
        self._slot[client] = len(self.idle)
        self.idle.append(client)

    def sample(self, k: int) -> list[int]:
        """``min(k, idle)`` distinct idle clients, uniformly, in draw order (they stop being idle)."""
        return [self.take_idle() for _ in range(min(k, len(self.idle)))]

    def wait_idle(self) -> simpy.Event:
        """An event that fires the next time a client becomes idle (now, if one is)."""
        event = self.env.event()
        if self.idle:
            event.succeed()
        else:
            self._idle_waiters.append(event)
        return event

    def _release(self, client: int) -> None:
        self._append_idle(client)
        if self._idle_waiters:
            self._wake_idle_waiters()

    def _wake_idle_waiters(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for event in waiters:
            event.succeed()

    # -- jobs ------------------------------------------------------------------------------------------
    def dispatch(
        self,
        client: int,
        server: int,
        base_version: int,
        params: torch.Tensor | None,
        on_arrival: ArrivalCallback,
        on_dropped: ArrivalCallback,
        *,
        trainer: Trainer | None = None,
        task: int = 0,
        network: bool = True,
        correction: torch.Tensor | None = None,
    ) -> Job:
        """Start a job for ``client`` (already taken from the idle list) from model ``params``.

        ``trainer`` overrides the pool's trainer (multi-task algorithms train each task's model with
        its own); ``task`` is recorded in the trace. ``network=False`` makes a compute-only job (no
        transfer time, 0 bytes) for algorithms that simulate their own communication.
        ``correction`` is added to every gradient of the job (SCAFFOLD's ``c − c_i``).
        """
        env, timing = self.env, self.timing
        job = Job(self._next_job, client, server, base_version, env.now)
        job.task = task
        self._next_job += 1
        if trainer is None:
            trainer = self.trainer
        job.compute_s = compute = timing.compute_s(client)
        job.dropped = dropped = timing.dropped()
        if not network:
            down_s = up_s = 0.0
            job.bytes_up = job.bytes_down = 0
        elif timing.down_of is None:
            down_s, up_s = timing.down_s, timing.up_s
        else:  # clients.devices: a bandwidth per client
            down_s, up_s = timing.down_of[client], timing.up_of[client]
        if dropped:
            job.comm_s = down_s
            delay = down_s + compute
        else:
            job.comm_s = down_s + up_s
            delay = job.comm_s + compute
            if trainer is not None and params is not None:
                if self.keep_start:
                    job.start = params
                seed = self.streams.sequence("training.job", job.id)
                flip = self.flip_labels is not None and self.flip_labels[client]
                train = TrainJob(job.id, client, params, seed, flip, correction)
                job.handle = trainer.submit(train)
        if not self.in_flight:
            self._idle_total += env.now - self._idle_since
        self.in_flight += 1
        self.open_jobs[job.id] = job
        job.on_done = on_dropped if dropped else on_arrival
        if self._running is not None:
            job.on_lost = on_dropped
            self._running[client] = job
        job.callbacks = self._job_callbacks
        env.schedule(job, delay=delay)
        return job

    def _finish(self, job: Job) -> None:
        if not job.open:  # cancelled while in flight
            return
        job.open = False
        job.arrived_at = self.env.now
        self.in_flight -= 1
        if not self.in_flight:
            self._idle_since = job.arrived_at
        del self.open_jobs[job.id]
        client = job.client
        if self._running is not None:
            del self._running[client]
        self._slot[client] = len(self.idle)
        self.idle.append(client)
        if self._idle_waiters:
            self._wake_idle_waiters()
        job.on_done(job)

    def cancel(self, job: Job) -> None:
        """Stop an in-flight job now: its client is free again and its update will never arrive."""
        if job.open:
            job.open = False
            job.arrived_at = self.env.now
            if job.handle is not None:
                job.handle.cancel()  # a batched trainer must not train it
            job.handle = None
            job.start = None
            self.in_flight -= 1
            if not self.in_flight:
                self._idle_since = job.arrived_at
            del self.open_jobs[job.id]
            if self._running is not None:
                del self._running[job.client]
            self._release(job.client)

    # -- the system's idle time ------------------------------------------------------------------------
    def idle_s(self) -> float:
        """Simulated seconds so far with no job in flight (waiting for clients to come online,
        or between rounds): summary.json's ``idle_s``."""
        now = self.env.now
        return self._idle_total + (now - self._idle_since if not self.in_flight else 0.0)

    # -- availability ----------------------------------------------------------------------------------
    def _start_availability(self) -> None:
        """Each client's state at time 0 and its first switch; offline clients leave idle.

        The pending switches are a calendar of its own with one event on the SimPy queue for its
        earliest entry, so 100k clients cost the event queue one entry, not 100k (see
        benchmarks/bench_availability.py). A model with a shortest spell (diurnal) gets a batched
        calendar: every switch of the next window of that length (at most one per client), sorted
        in numpy, with their next switches computed in bulk; others a heap of ``(time, client)``
        (one entry per client). Both apply switches in (time, client) order.
        """
        online, first = self.availability.initial_all(self.n_clients)
        self.online = online
        self.n_online = sum(online)
        self._running = {}
        self._tick = SwitchTick()
        self._window_s = self.availability.shortest_spell_s()
        if self._window_s > 0:
            self._next = np.asarray(first, dtype=np.float64)
            self._record = getattr(self.availability, "record", None)
            if self._record is not None:  # the log records each window when drawn
                self.availability.pending = self._unapplied
            self._refill()
            self._tick_callbacks = (self._on_batch_tick,)
            self._arm_batch()
        else:
            self._calendar = [(at, c) for c, at in enumerate(first) if at != math.inf]
            heapq.heapify(self._calendar)
            self._tick_callbacks = (self._on_tick,)
            self._arm()
        self.idle = [c for c in self.idle if online[c]]
        self._slot = [-1] * self.n_clients
        for i, client in enumerate(self.idle):
            self._slot[client] = i

    def _arm(self) -> None:
        """Put the tick on the SimPy queue at the calendar's earliest switch (if any)."""
        if self._calendar:
            self._tick.callbacks = self._tick_callbacks
            self.env.schedule(self._tick, delay=max(self._calendar[0][0] - self.env.now, 0.0))

    def _on_tick(self, _tick: SwitchTick) -> None:
        """Apply every switch due now, then let the algorithm react: clients sharing a switch
        time (one trace, one time zone) all change state before any job is lost or any client is
        dispatched, so nobody is dispatched at the instant it goes offline."""
        calendar, now, online = self._calendar, self.env.now, self.online
        next_switch = self.availability.next_switch
        lost: list[Job] = []
        came: list[int] = []
        while calendar and calendar[0][0] <= now:
            at, client = calendar[0]
            state = not online[client]
            at = next_switch(client, at, state)  # from the exact switch time, not env.now
            if at != math.inf:
                heapq.heapreplace(calendar, (at, client))  # pop and push in one sift
            else:
                heapq.heappop(calendar)
            self._switch(client, state, lost, came)
        self._arm()
        self._react(lost, came)

    def _refill(self) -> None:
        """The next window of the batched calendar: the switches in [t, t + shortest spell) from
        the earliest pending one t, in (time, client) order; their next switches fall after it."""
        pending = self._next
        start = float(pending.min()) if len(pending) else math.inf
        self._cursor = 0
        if start == math.inf:
            self._times, self._clients, self._states = [], [], []
            return
        clients = np.flatnonzero(pending < start + self._window_s)
        times = pending[clients]
        order = np.argsort(times, kind="stable")  # ties in client order, as the heap
        clients, times = clients[order], times[order]
        online = self.online
        states = [not online[c] for c in clients.tolist()]
        pending[clients] = self.availability.next_switch_all(times, np.asarray(states, dtype=bool))
        self._times, self._clients, self._states = times.tolist(), clients.tolist(), states
        if self._record is not None:
            self._record(self._times, self._clients, states)

    def _unapplied(self) -> int:
        return len(self._times) - self._cursor

    def _arm_batch(self) -> None:
        if self._cursor < len(self._times):
            self._tick.callbacks = self._tick_callbacks
            self.env.schedule(self._tick, delay=max(self._times[self._cursor] - self.env.now, 0.0))

    def _on_batch_tick(self, _tick: SwitchTick) -> None:
        """:meth:`_on_tick` for the batched calendar (:meth:`_switch` inline: the hot path)."""
        now, online, slot, running = self.env.now, self.online, self._slot, self._running
        lost: list[Job] = []
        came: list[int] = []
        i = self._cursor
        times, clients, states = self._times, self._clients, self._states
        while True:
            while i < len(times) and times[i] <= now:
                client = clients[i]
                state = online[client] = states[i]
                i += 1
                if state:
                    self.n_online += 1
                    slot[client] = len(self.idle)
                    self.idle.append(client)
                    came.append(client)
                    continue
                self.n_online -= 1
                job = running.pop(client, None)
                if job is not None:
                    lost.append(job)
                elif slot[client] >= 0:  # else taken but not dispatched: not idle
                    self._remove_at(slot[client])
            if i < len(times) or not times:
                break
            self._cursor = i
            self._refill()
            i = 0
            times, clients, states = self._times, self._clients, self._states
        self._cursor = i
        if i < len(times):  # re-arm (_arm_batch, inline)
            _tick.callbacks = self._tick_callbacks
            self.env.schedule(_tick, delay=max(times[i] - now, 0.0))
        if lost or came:
            self._react(lost, came)

    def _switch(self, client: int, state: bool, lost: list[Job], came: list[int]) -> None:
        """``client`` goes online (``state``) or offline now: the idle list, and its job (lost)."""
        self.online[client] = state
        if state:
            self.n_online += 1
            self._append_idle(client)
            came.append(client)
            return
        self.n_online -= 1
        job = self._running.pop(client, None)
        if job is not None:
            lost.append(job)
        elif (i := self._slot[client]) >= 0:  # else taken but not dispatched: not idle
            self._remove_at(i)

    def _react(self, lost: list[Job], came: list[int]) -> None:
        for job in lost:
            self._lose(job)
        if came:
            if self._idle_waiters:
                self._wake_idle_waiters()
            if self.on_online is not None:
                for client in came:
                    self.on_online(client)

    def _lose(self, job: Job) -> None:
        """``job``'s client went offline now: the job is dropped (reason ``offline``); the phases
        recorded are the parts of download, compute and upload that had elapsed."""
        now = self.env.now
        elapsed = now - job.dispatched_at
        down = self.timing.transfer_s(job.client)[0] if job.bytes_down is None else 0.0
        compute = job.compute_s
        job.compute_s = min(max(elapsed - down, 0.0), compute)
        job.comm_s = min(elapsed, down) + max(elapsed - down - compute, 0.0)
        job.open = False
        job.dropped = True
        job.drop_reason = "offline"
        job.arrived_at = now
        if job.handle is not None:
            job.handle.cancel()
        job.handle = None
        job.start = None
        self.in_flight -= 1
        if not self.in_flight:
            self._idle_since = now
        del self.open_jobs[job.id]
        job.on_lost(job)


class SwitchTick:
    """The pool's one event on the SimPy queue for availability: at the earliest pending switch
    (a plain callback, like jobs; re-armed after each firing)."""

    __slots__ = ("_ok", "_value", "callbacks")

    def __init__(self) -> None:
        self.callbacks: tuple | None = None
        self._ok = True
        self._value = None
