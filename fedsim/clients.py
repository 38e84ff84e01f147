"""Clients and their jobs: who is idle, how long a job takes, and when its update arrives.

A job is one client's round trip: download the model, compute, upload the update. Its three phases
are drawn from the timing model when it is dispatched and the job itself is scheduled as ONE event on
the SimPy queue (``env.schedule``; a Job has the ``callbacks``/``_ok`` an event needs), after which the
algorithm's ``on_arrival`` (or ``on_dropped``) callback runs. One light event per job, with no
Timeout object and no closure, is what lets a timing-only run reach a million updates. Training is submitted to the trainer at dispatch and
only computed when the algorithm asks for the update.

With ``clients.availability`` (:mod:`fedsim.availability`) the pool also keeps one pending switch
event per client (a plain callback, like jobs): an offline client is not idle, so it is never
sampled nor dispatched; a client going offline loses its running job at that instant (status
``dropped``, reason ``offline``, its ``on_dropped`` runs then, the job's own event later finds it
closed); a client coming online is idle again, idle waiters wake, and ``on_online`` (the
algorithm's ``on_client_online``) is called.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
    picking is O(1) and depends only on the sampling stream (never on set iteration order).
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
        self.n_online = n_clients
        self.on_online: Callable[[int], None] | None = None
        """Told of every client coming online (set by the algorithm: ``on_client_online``)."""
        if availability is not None:
            self._start_availability()

    # -- choosing clients ---------------------------------------------------------------------------
    def take_idle(self) -> int:
        """Remove and return a uniformly chosen idle client."""
        idle = self.idle
        i = int(self._pick_u() * len(idle))
        client = idle[i]
        idle[i] = idle[-1]
        idle.pop()
        return client

    def take(self, client: int) -> None:
        """Remove a given idle ``client`` from the idle list (algorithms that pick clients themselves).

        Linear in the number of idle clients: meant for per-server cohorts, not the async hot path.
        """
        try:
            i = self.idle.index(client)
        except ValueError:
            raise RuntimeError(f"client {client} is not idle") from None
        self.idle[i] = self.idle[-1]
        self.idle.pop()

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
        self.idle.append(client)
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
        down_s, up_s = (timing.down_s, timing.up_s) if network else (0.0, 0.0)
        if not network:
            job.bytes_up = job.bytes_down = 0
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
        if self.online is not None:
            job.on_lost = on_dropped
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
        self.idle.append(job.client)
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
            self._release(job.client)

    # -- the system's idle time ------------------------------------------------------------------------
    def idle_s(self) -> float:
        """Simulated seconds so far with no job in flight (waiting for clients to come online,
        or between rounds): summary.json's ``idle_s``."""
        now = self.env.now
        return self._idle_total + (now - self._idle_since if not self.in_flight else 0.0)

    # -- availability ----------------------------------------------------------------------------------
    def _start_availability(self) -> None:
        """Each client's state at time 0 and its first switch event; offline clients leave idle."""
        avail = self.availability
        self.online = online = [True] * self.n_clients
        self._switch_callbacks = (self._switch,)
        for client in range(self.n_clients):
            state, at = avail.initial(client)
            online[client] = state
            if not state:
                self.n_online -= 1
            self._schedule_switch(client, not state, at)
        self.idle = [c for c in self.idle if online[c]]

    def _schedule_switch(self, client: int, to_online: bool, at: float) -> None:
        if at == math.inf:
            return
        switch = Switch(client, to_online)
        switch.callbacks = self._switch_callbacks
        self.env.schedule(switch, delay=max(at - self.env.now, 0.0))

    def _switch(self, switch: Switch) -> None:
        client, now = switch.client, self.env.now
        self.online[client] = switch.online
        self._schedule_switch(
            client,
            not switch.online,
            self.availability.next_switch(client, now, switch.online),
        )
        if switch.online:
            self.n_online += 1
            self.idle.append(client)
            if self._idle_waiters:
                self._wake_idle_waiters()
            if self.on_online is not None:
                self.on_online(client)
            return
        self.n_online -= 1
        lost = [job for job in self.open_jobs.values() if job.client == client]
        if not lost:
            try:
                i = self.idle.index(client)
            except ValueError:
                return  # taken by the algorithm but not dispatched: it is not idle anyway
            self.idle[i] = self.idle[-1]
            self.idle.pop()
            return
        for job in lost:
            self._lose(job)

    def _lose(self, job: Job) -> None:
        """``job``'s client went offline now: the job is dropped (reason ``offline``); the phases
        recorded are the parts of download, compute and upload that had elapsed."""
        now = self.env.now
        elapsed = now - job.dispatched_at
        down = self.timing.down_s if job.bytes_down is None else 0.0
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


class Switch:
    """One client's switch online or offline: an event on the SimPy queue (a plain callback)."""

    __slots__ = ("_ok", "_value", "callbacks", "client", "online")

    def __init__(self, client: int, online: bool) -> None:
        self.client = client
        self.online = online
        self.callbacks: tuple | None = None
        self._ok = True
        self._value = None
