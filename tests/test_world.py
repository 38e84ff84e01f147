"""The world builder (fedsim/world.py, issue 15): one place draws the clients, their data, speeds,
availability, attackers and servers, for the simulation and for each task of the multi-task
algorithms; the time each client was online, against a brute-force integration."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from fedsim.algorithms.context import ValidationSplit
from fedsim.checks import check_runnable
from fedsim.errors import ScenarioError
from fedsim.learning.data import DataConfig
from fedsim.rng import SeedStreams
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation
from fedsim.world import (
    AvailabilityLog,
    build_servers,
    build_task_data,
    build_world,
    label_counts,
    online_seconds,
    task_streams,
)

CPU = torch.device("cpu")


def scenario(**overrides) -> dict:
    base = {
        "name": "world",
        "seed": 7,
        "stop": {"time_s": 30},
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}},
        "model": {"kind": "mlp", "hidden": [8]},
        "training": {"local_steps": 1, "batch_size": 8, "lr": 0.05},
        "clients": {
            "count": 12,
            "compute": {"dist": "constant", "mean_s": 2.0},
            "heterogeneity": {"dist": "lognormal", "sigma": 0.5},
            "stragglers": {"fraction": 0.25, "slowdown": 4.0},
        },
        "byzantine": {"fraction": 0.25, "speed": 0.5},
        "algorithm": {"name": "fedasync", "concurrency": 3},
        "eval": {"every_s": 10.0},
    }
    base.update(overrides)
    return base


def test_the_simulation_runs_on_the_world_the_builder_makes():
    s = load_scenario(scenario())
    sim = Simulation(s, device="cpu")
    world = build_world(s, SeedStreams(s.seed), device=CPU, model_bytes=sim.spec.nbytes())
    assert sim.timing is sim.world.timing and sim.pool.timing is sim.world.timing
    np.testing.assert_array_equal(world.is_byzantine, sim.is_byzantine)
    assert world.timing.speed == sim.timing.speed
    np.testing.assert_array_equal(world.sizes, sim.context.clients.sizes)
    for a, b in zip(world.data.client_indices, sim.data.client_indices, strict=True):
        np.testing.assert_array_equal(a, b)
    # Attackers run at byzantine.speed × their drawn multiplier: the honest build of the same
    # streams (no byzantine section) gives the same multipliers but for the attackers.
    honest = build_world(
        load_scenario(scenario(byzantine=None)), SeedStreams(s.seed), device=CPU, model_bytes=0
    )
    speed, plain = np.array(world.timing.speed), np.array(honest.timing.speed)
    bad = world.is_byzantine
    assert bad.sum() == 3
    np.testing.assert_allclose(speed[bad], 0.5 * plain[bad])
    np.testing.assert_array_equal(speed[~bad], plain[~bad])
    np.testing.assert_array_equal(world.timing.is_straggler, honest.timing.is_straggler)


def test_servers_of_the_clients_follow_the_topology(root):
    s = load_scenario(root / "scenarios" / "dfl_toy.yaml")
    world = build_world(s, SeedStreams(s.seed), device=CPU, model_bytes=0)
    assert world.n_servers == 5 and world.n_clients == 25
    for server, members in enumerate(world.topology.assignment):
        assert set(np.flatnonzero(world.server_of == server)) == set(members)
    np.testing.assert_allclose(world.topology.W.sum(axis=1), 1.0)


def test_task_streams_give_task_zero_the_runs_partition_and_others_their_own():
    config = DataConfig(dataset="digits", partition={"kind": "dirichlet", "alpha": 0.3})
    streams = SeedStreams(4)
    run = build_task_data(config, 10, streams, CPU)
    task0 = build_task_data(config, 10, task_streams(streams, 0), CPU)
    task1 = build_task_data(config, 10, task_streams(streams, 1), CPU)
    task2 = build_task_data(config, 10, task_streams(streams, 2), CPU)
    assert task_streams(streams, 0) is streams
    np.testing.assert_array_equal(label_counts(run), label_counts(task0))
    assert not np.array_equal(label_counts(task1), label_counts(task0))
    assert not np.array_equal(label_counts(task1), label_counts(task2))


def test_label_counts_count_each_clients_samples():
    data = build_task_data(
        DataConfig(dataset="digits", partition={"kind": "dirichlet", "alpha": 0.5}),
        7,
        SeedStreams(1),
        CPU,
    )
    counts = label_counts(data)
    y = data.y_train.numpy()
    for client, rows in enumerate(data.client_indices):
        np.testing.assert_array_equal(counts[client], np.bincount(y[rows], minlength=10))


def _brute_online(at_start, switches, n, end) -> np.ndarray:
    """Walk each client's switches in time order (the reference for online_seconds)."""
    total = np.zeros(n)
    for client in range(n):
        online, since = bool(at_start[client]), 0.0
        for t, c, state in switches:
            if c != client:
                continue
            if online:
                total[client] += t - since
            online, since = state, t
        if online:
            total[client] += end - since
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_online_seconds_against_a_walk_over_the_switches(seed):
    rng = np.random.default_rng(seed)
    n, end = 6, 100.0
    at_start = rng.random(n) < 0.5
    switches = []
    for client in range(n):
        state = bool(at_start[client])
        times = np.sort(rng.uniform(0, end, rng.integers(0, 7)))
        for t in times:
            state = not state
            switches.append((float(t), client, state))
    switches.sort()
    got = online_seconds(
        at_start,
        np.array([c for _, c, _ in switches], dtype=np.int64),
        np.array([t for t, _, _ in switches]),
        np.array([s for _, _, s in switches], dtype=bool),
        end,
    )
    np.testing.assert_allclose(got, _brute_online(at_start, switches, n, end))


def test_the_availability_log_keeps_what_the_pool_asked():
    s = load_scenario(
        scenario(
            training="none",
            byzantine=None,
            clients={
                "count": 8,
                "availability": {
                    "kind": "diurnal",
                    "period_s": 10.0,
                    "on_fraction": 0.3,
                    "phase": "spread",
                },
            },
            algorithm={"name": "fedasync", "concurrency": 2},
            stop={"time_s": 47.0},
        )
    )
    sim = Simulation(s, device="cpu")
    log = sim.world.availability
    assert isinstance(log, AvailabilityLog) and sim.pool.availability is log
    sim.run()
    switches = log.switches().to_pandas()
    assert switches["sim_time"].is_monotonic_increasing and len(switches) > 8
    # Diurnal: each client online for 3 s of every 10, starting at its phase.
    phase = np.asarray(log.model.phase)
    t = np.linspace(0, 47, 47_001)[:-1] + 47 / 47_000 / 2
    expected = [((t - p) % 10.0 < 3.0).mean() * 47 for p in phase]
    np.testing.assert_allclose(log.online_seconds(47.0), expected, atol=0.01)


def test_a_validation_split_the_algorithm_asks_for_is_held_out_by_the_world(tmp_path):
    """BRAIN's committee validation rows are carved out by the world, seeded by their own stream:
    the run trains on the rest (clients.parquet counts those), scores on the held-out rows, and
    an algorithm that asks for nothing gets the whole partition."""
    algo = {"name": "brain", "concurrency": 4, "committee_size": 3, "validation_fraction": 0.25}
    s = load_scenario(scenario(algorithm=algo, byzantine=None))
    whole = build_world(load_scenario(scenario()), SeedStreams(s.seed), device=CPU, model_bytes=8)
    assert whole.validation is None
    sim = Simulation(s, device="cpu", run_dir=tmp_path / "run")
    held = sim.world.validation
    assert held is sim.context.model.validation
    for rows, train, val in zip(
        whole.data.client_indices, sim.data.client_indices, held, strict=True
    ):
        if len(rows) >= 2:
            assert len(val) == min(len(rows) - 1, max(1, round(0.25 * len(rows))))
            assert set(train).isdisjoint(val) and set(train) | set(val) == set(rows)
    # Scored on exactly the held-out rows, in the order the world drew them.
    for rows, val in zip(sim.algorithm.scorer.rows, held, strict=True):
        np.testing.assert_array_equal(rows.numpy(), val)
    # The same seeded carve-out again, from the builder alone.
    again = build_world(
        s,
        SeedStreams(s.seed),
        device=CPU,
        model_bytes=8,
        validation=ValidationSplit(0.25, stream="brain.validation"),
    )
    for a, b in zip(again.validation, held, strict=True):
        np.testing.assert_array_equal(a, b)
    sim.run()
    sizes = pq.read_table(tmp_path / "run" / "clients.parquet")["data_size"].to_pylist()
    assert sizes == [len(t) for t in sim.data.client_indices]
    assert sum(sizes) + sum(len(v) for v in held) == sum(len(r) for r in whole.data.client_indices)


def test_validate_refuses_a_topology_with_the_line_the_world_builder_raises(root, tmp_path):
    """check_runnable (``fedsim validate``, the run's first step) builds the servers with the
    world's own builder: the same disconnected graph is the same one line in both."""
    edges = tmp_path / "two.txt"
    edges.write_text("0 1\n1 2\n3 4\n")
    s = load_scenario(root / "scenarios" / "dfl_toy.yaml")
    raw = s.model_dump(mode="json", exclude_none=True)
    raw["topology"]["graph"] = {"kind": "from_file", "path": str(edges)}
    bad = load_scenario(raw)
    with pytest.raises(ScenarioError) as from_world:
        build_world(bad, SeedStreams(bad.seed), device=CPU, model_bytes=0)
    with pytest.raises(ScenarioError) as from_validate:
        check_runnable(bad)
    assert str(from_validate.value) == str(from_world.value)
    assert str(from_world.value).startswith("topology.graph: ") and "disconnected" in str(
        from_world.value
    )
    topology, server_of = build_servers(s, SeedStreams(s.seed))
    world = build_world(s, SeedStreams(s.seed), device=CPU, model_bytes=0)
    np.testing.assert_array_equal(topology.W, world.topology.W)
    np.testing.assert_array_equal(server_of, world.server_of)
