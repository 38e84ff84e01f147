"""The world of a run, built once: its clients, their data, speeds, availability and attackers, and
the servers they belong to.

Everything a run draws about its clients is drawn here, from the scenario and its seed: the
simulation builds its world with :func:`build_world`, and the multi-task algorithms build each
task's data with :func:`build_task_data` on the same clients. At the end of the run
:func:`write_world` keeps what was drawn in the run directory (``clients.parquet``,
``topology.parquet``, ``mixing.npy``, ``availability.parquet``; columns in
:mod:`fedsim.result`), so figures and analyses read the run's facts instead of drawing them again.

Every draw comes from a named stream (``data.*``, ``byzantine.choice``, ``timing.*``,
``availability.*``, ``topology.graph``), so the order in which the parts are built changes nothing.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from fedsim.availability import Availability, build_availability
from fedsim.learning.data import DataConfig, FederatedData, load_federated
from fedsim.recorder import write_atomic
from fedsim.result import (
    AVAILABILITY_FILE,
    AVAILABILITY_SCHEMA,
    CLIENTS_FILE,
    CLIENTS_SCHEMA,
    MIXING_FILE,
    TOPOLOGY_FILE,
    TOPOLOGY_SCHEMA,
)
from fedsim.rng import SeedStreams
from fedsim.timing import ClientTiming
from fedsim.topology import Topology, build_topology

if TYPE_CHECKING:
    from fedsim.algorithms.context import ValidationSplit
    from fedsim.scenario import Scenario


class PrefixedStreams(SeedStreams):
    """The scenario's streams with every name prefixed: a task's own, independent draws."""

    def __init__(self, seed: int, prefix: str) -> None:
        super().__init__(seed)
        self.prefix = prefix

    def sequence(self, name: str, *index: int) -> np.random.SeedSequence:
        return super().sequence(self.prefix + name, *index)


class AvailabilityLog(Availability):
    """An availability model that keeps what the client pool asked of it: each client's state at
    time 0 and every switch applied (the pool asks for the next switch at each switch, in time
    order), for ``clients.parquet`` (time online) and ``availability.parquet``."""

    def __init__(self, model: Availability, n_clients: int) -> None:
        self.model = model
        self.online_at_start = [True] * n_clients
        self.times = array("d")
        self.clients = array("q")
        self.states = array("b")
        self.pending: Callable[[], int] | None = None
        """How many of the switches recorded are not applied yet (set by a batched calendar)."""

    def initial(self, client: int) -> tuple[bool, float]:
        online, at = self.model.initial(client)
        self.online_at_start[client] = online
        return online, at

    def initial_all(self, n_clients: int) -> tuple[list[bool], list[float]]:
        states, first = self.model.initial_all(n_clients)
        self.online_at_start = list(states)  # a copy: the pool updates its list in place
        return states, first

    def next_switch(self, client: int, t: float, online: bool) -> float:
        self.times.append(t)
        self.clients.append(client)
        self.states.append(online)
        return self.model.next_switch(client, t, online)

    def online_fraction(self) -> float:
        return self.model.online_fraction()

    def shortest_spell_s(self) -> float:
        return self.model.shortest_spell_s()

    def next_switch_all(self, times: np.ndarray, online: np.ndarray) -> np.ndarray:
        return self.model.next_switch_all(times, online)

    def record(self, times: list[float], clients: list[int], states: list[bool]) -> None:
        """A window of the pool's batched calendar, in time order, recorded when drawn: the
        last :attr:`pending` ones of them are not applied yet (a run may stop before them)."""
        self.times.extend(times)
        self.clients.extend(clients)
        self.states.extend(states)

    def _applied(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times, clients, states) of the switches applied so far."""
        n = len(self.times) - (self.pending() if self.pending is not None else 0)
        return (
            np.frombuffer(self.times, dtype=np.float64)[:n],
            np.frombuffer(self.clients, dtype=np.int64)[:n],
            np.frombuffer(self.states, dtype=np.int8)[:n].astype(bool),
        )

    def switches(self) -> pa.Table:
        """Every switch so far, in time order (``availability.parquet``)."""
        times, clients, states = self._applied()
        return pa.table(
            {"sim_time": times, "client": clients.astype(np.int32), "online": states},
            schema=AVAILABILITY_SCHEMA,
        )

    def online_seconds(self, end: float) -> np.ndarray:
        """Simulated seconds each client was online on ``[0, end]``."""
        times, clients, states = self._applied()
        return online_seconds(
            np.asarray(self.online_at_start, dtype=bool), clients, times, states, end
        )


def online_seconds(
    at_start: np.ndarray, client: np.ndarray, time: np.ndarray, online: np.ndarray, end: float
) -> np.ndarray:
    """Seconds online on ``[0, end]`` per client, from the states at 0 and the switches (each
    switch: its client, its time and the state entered; in time order)."""
    n = len(at_start)
    order = np.argsort(client, kind="stable")  # by client, in time order within each
    c, t, s = client[order], np.minimum(time[order], end), online[order]
    last = np.ones(len(c), dtype=bool)
    last[:-1] = c[1:] != c[:-1]
    following = np.where(last, end, np.append(t[1:], end))
    spells = np.bincount(c, weights=np.where(s, following - t, 0.0), minlength=n)
    first_switch = np.full(n, float(end))
    firsts = np.flatnonzero(np.append(True, c[1:] != c[:-1])) if len(c) else np.array([], int)
    first_switch[c[firsts]] = t[firsts]
    return spells + np.where(at_start, first_switch, 0.0)


@dataclass(eq=False)
class World:
    """What a run drew about its clients and servers (indexed by client)."""

    scenario: Scenario
    data: FederatedData | None
    """The training and test data with each client's share (None in timing-only runs)."""
    sizes: np.ndarray
    """Training samples of each client (1 each in timing-only runs)."""
    is_byzantine: np.ndarray
    timing: ClientTiming
    """Each client's speed and straggler flag, and the per-job draws."""
    availability: AvailabilityLog | None
    """When each client is online (None: always), keeping each switch."""
    topology: Topology | None
    server_of: np.ndarray
    """The server (topology node) of each client; 0 with one server."""
    validation: list[np.ndarray] | None = None
    """Each client's held-out validation rows when the algorithm asked for a split (then
    ``data`` holds only the rows it trains on)."""

    @property
    def n_clients(self) -> int:
        return len(self.sizes)

    @property
    def n_servers(self) -> int:
        return self.topology.servers if self.topology is not None else 1


def build_world(
    scenario: Scenario,
    streams: SeedStreams,
    *,
    device: torch.device,
    model_bytes: int,
    validation: ValidationSplit | None = None,
) -> World:
    """Data and partition, Byzantine set, timing, availability, topology and server assignment.

    ``model_bytes`` is what each job downloads and uploads (the network time of a job);
    ``validation`` is the split the algorithm asked for (``Algorithm.validation_split``), held
    out of each client's training rows before timing sees their sizes.
    """
    n_clients = scenario.clients.count
    data = None
    held_out = None
    sizes = np.ones(n_clients, dtype=int)
    if scenario.training is not None:
        data = build_task_data(scenario.data, n_clients, streams, device)
        if validation is not None:
            train, held_out = split_validation(
                data.client_indices, validation.fraction, streams.generator(validation.stream)
            )
            data.client_indices = train
        sizes = data.client_sizes

    byzantine = scenario.byzantine
    is_byzantine = np.zeros(n_clients, dtype=bool)
    extra = None
    if byzantine is not None:
        is_byzantine = byzantine.choose(n_clients, streams.generator("byzantine.choice"))
        if byzantine.speed != 1.0:
            extra = np.where(is_byzantine, byzantine.speed, 1.0)

    timing = ClientTiming.for_scenario(
        scenario, sizes=sizes, streams=streams, model_bytes=model_bytes, extra_multipliers=extra
    )
    model = build_availability(scenario.clients.availability, n_clients, streams)
    availability = AvailabilityLog(model, n_clients) if model is not None else None

    topology, server_of = build_servers(scenario, streams)
    return World(
        scenario, data, sizes, is_byzantine, timing, availability, topology, server_of, held_out
    )


def build_servers(scenario: Scenario, streams: SeedStreams) -> tuple[Topology | None, np.ndarray]:
    """The topology (graph and mixing files read, connectivity checked; None without a
    ``topology:`` section) and the server of each client: what the run builds and what
    ``fedsim validate`` checks (:func:`fedsim.checks.check_runnable`), one code path."""
    server_of = np.zeros(scenario.clients.count, dtype=np.int64)
    if scenario.topology is None:
        return None, server_of
    topology = build_topology(scenario.topology, streams.generator("topology.graph"))
    for server, members in enumerate(topology.assignment):
        server_of[list(members)] = server
    return topology, server_of


def split_validation(
    indices: Sequence[np.ndarray], fraction: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each client's rows split into (train, validation), validation a random ``fraction`` of them.

    A client with ``n ≥ 2`` rows keeps ``min(n − 1, max(1, round(fraction·n)))`` for validation
    (drawn uniformly, rows kept in their original order); a client with fewer rows validates on
    the rows it trains on (it has nothing to hold out).
    """
    train, val = [], []
    for rows in indices:
        n = len(rows)
        if n < 2:
            train.append(rows)
            val.append(rows)
            continue
        k = min(n - 1, max(1, round(fraction * n)))
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, size=k, replace=False)] = True
        train.append(rows[~mask])
        val.append(rows[mask])
    return train, val


def task_streams(streams: SeedStreams, task: int) -> SeedStreams:
    """Task 0 draws from the run's own streams (a one-task run partitions like a single-task
    one: common random numbers); task ``i ≥ 1`` prefixes every stream name with ``task{i}/``."""
    return streams if task == 0 else PrefixedStreams(streams.seed, f"task{task}/")


def build_task_data(
    config: DataConfig, n_clients: int, streams: SeedStreams, device: torch.device
) -> FederatedData:
    """A dataset on ``device`` split over the clients (the run's, or one task's of several)."""
    return load_federated(config, n_clients, streams, device)


def partition_label_counts(scenario: Scenario) -> np.ndarray:
    """Samples of each class each client would hold in a run of ``scenario`` (its data section
    and seed; the dataset is loaded on the CPU), to look at a partition before running it."""
    data = build_task_data(
        scenario.data, scenario.clients.count, SeedStreams(scenario.seed or 0), torch.device("cpu")
    )
    counts = label_counts(data)
    if counts is None:
        raise ValueError(f"dataset {scenario.data.dataset!r} has no class labels (regression)")
    return counts


# ---------------------------------------------------------------------------------------------------
# The run directory's files of facts


def label_counts(data: FederatedData) -> np.ndarray | None:
    """Samples of each class held by each client, ``[clients, classes]`` (None: regression)."""
    if data.info.task != "classification":
        return None
    y = data.y_train.detach().cpu().numpy().astype(np.int64)
    k = max(int(data.info.n_classes), int(y.max(initial=-1)) + 1)
    sizes = data.client_sizes
    owner = np.repeat(np.arange(len(sizes)), sizes)
    rows = np.concatenate(data.client_indices).astype(np.int64) if len(owner) else owner
    counts = np.bincount(owner * k + y[rows], minlength=len(sizes) * k)
    return counts.reshape(len(sizes), k)


def client_table(world: World, tasks: Sequence[FederatedData | None], end: float) -> pa.Table:
    """``clients.parquet``: one row per client, and per task when there are several."""
    n = world.n_clients
    if world.availability is not None:
        at_start = np.asarray(world.availability.online_at_start, dtype=bool)
        online = world.availability.online_seconds(end)
    else:
        at_start, online = np.ones(n, dtype=bool), np.full(n, float(end))
    shared = {
        "client": np.arange(n, dtype=np.int32),
        "speed": np.asarray(world.timing.speed, dtype=np.float64),
        "straggler": np.asarray(world.timing.is_straggler, dtype=bool),
        "byzantine": np.asarray(world.is_byzantine, dtype=bool),
        "server": np.asarray(world.server_of, dtype=np.int32),
        "online_at_start": at_start,
        "online_s": online,
    }
    tables = []
    for task, data in enumerate(tasks or [None]):
        counts = label_counts(data) if data is not None else None
        columns = {
            "task": np.full(n, task, dtype=np.int32),
            **shared,
            "data_size": data.client_sizes if data is not None else np.zeros(n, dtype=np.int64),
            "label_counts": _rows_as_lists(counts, n),
        }
        tables.append(pa.table(columns).select(CLIENTS_SCHEMA.names).cast(CLIENTS_SCHEMA))
    return pa.concat_tables(tables)


def _rows_as_lists(counts: np.ndarray | None, n: int) -> pa.Array:
    """A ``list<int64>`` column with one row of ``counts`` each (nulls without counts)."""
    if counts is None:
        return pa.nulls(n, pa.list_(pa.int64()))
    offsets = np.arange(0, counts.size + 1, counts.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(offsets, counts.ravel().astype(np.int64))


def topology_table(topology: Topology) -> pa.Table:
    """``topology.parquet``: one row per link of the server graph (``source < target``)."""
    edges = sorted((min(u, v), max(u, v)) for u, v in topology.graph.edges())
    table = pa.table(
        {"source": [u for u, _ in edges], "target": [v for _, v in edges]}, schema=TOPOLOGY_SCHEMA
    )
    pos = {int(k): list(v) for k, v in topology.graph.nodes(data="pos") if v is not None}
    if pos:  # graphs drawn at fixed places (a torus) keep them
        table = table.replace_schema_metadata({"positions": json.dumps(pos)})
    return table


def write_world(
    run_dir: Path, world: World, tasks: Sequence[FederatedData | None], end: float
) -> None:
    """Write the facts of the run's world into ``run_dir`` (each file atomically)."""
    write_atomic(client_table(world, tasks, end), run_dir / CLIENTS_FILE)
    if world.availability is not None:
        write_atomic(world.availability.switches(), run_dir / AVAILABILITY_FILE)
    if world.topology is not None:
        write_atomic(topology_table(world.topology), run_dir / TOPOLOGY_FILE)
        path = run_dir / MIXING_FILE
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with tmp.open("wb") as handle:
            np.save(handle, np.asarray(world.topology.W, dtype=np.float64))
        os.replace(tmp, path)
