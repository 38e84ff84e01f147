"""DFL (ALGORITHMS.md §3.8) and gossip D-SGD with model merges (§3.10): limiting cases L9 and L10
against real FedAvg runs, the DFL toy against its least-squares solution, traffic and timing of the
consensus messages, and bad topology input through the command line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedsim
from fedsim.algorithms.gossip import RSchedule, random_r_matrix, received_mixing
from fedsim.cli import main
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation

# Full-batch local GD on digits (every client holds < 512 samples): the only difference between
# two runs is then the order of the samples inside a batch, i.e. float re-association.
DIGITS_GD = {
    "seed": 5,
    "data": {"dataset": "digits", "partition": {"kind": "iid"}},
    "model": {"kind": "logreg"},
    "training": {"local_steps": 4, "batch_size": 512, "lr": 0.5},
    "clients": {"compute": {"dist": "constant", "mean_s": 1.0}},
    "eval": {"every_s": 1000.0},
    "stop": {"time_s": 1e6},
}


def _run(spec: dict) -> Simulation:
    sim = Simulation(load_scenario(spec))
    sim.result = sim.run()
    return sim


def _fedavg(n_clients: int, rounds: int) -> torch.Tensor:
    spec = {
        **DIGITS_GD,
        "clients": {**DIGITS_GD["clients"], "count": n_clients},
        "algorithm": {"name": "fedavg", "cohort_size": n_clients, "weighting": "uniform"},
        "stop": {"time_s": 1e6, "max_updates": rounds * n_clients},
    }
    sim = _run(spec)
    assert sim.servers[0].version == rounds
    return sim.servers[0].params


def test_l9_dfl_on_a_complete_graph_with_uniform_mixing_is_fedavg_over_all_clients():
    servers, per_server, epochs = 3, 2, 3
    spec = {
        **DIGITS_GD,
        "topology": {
            "servers": servers,
            "graph": "complete",
            "mixing": "uniform",
            "clients_per_server": per_server,
        },
        "algorithm": {"name": "dfl", "consensus_steps": 2, "epochs": epochs},
    }
    sim = _run(spec)
    reference = _fedavg(servers * per_server, epochs)
    assert sim.result.summary["stop_reason"] == "epochs"
    moved = (reference - sim.servers[0].params).abs().max()
    for server in sim.servers:
        assert torch.allclose(server.params, reference, atol=1e-6, rtol=0), moved
    assert float((reference - torch.from_numpy(_initial_params(sim)).float()).abs().max()) > 1e-2


def test_l10_dsgd_with_uniform_mixing_is_fedavg_with_k_local_steps():
    peers, rounds = 6, 3
    spec = {
        **DIGITS_GD,
        "topology": {
            "servers": peers,
            "graph": "ring",
            "mixing": "uniform",
            "clients_per_server": 1,
        },
        "algorithm": {"name": "dsgd", "rounds": rounds},
    }
    sim = _run(spec)
    reference = _fedavg(peers, rounds)
    for server in sim.servers:
        assert torch.allclose(server.params, reference, atol=1e-6, rtol=0)
    # the merged model of uniform gossip is every peer's model
    merged = sim.result.evals.query("server == -1").iloc[-1]
    peer = sim.result.evals.query("server == 0").iloc[-1]
    assert merged["accuracy"] == pytest.approx(peer["accuracy"])


# ---------------------------------------------------------------------------------------------------
# The DFL toy (§3.8): y = 5x + 2 + N(0, 0.1²), 5 servers on a ring with MH weights, 5 clients each.


def _toy(lr: float, epochs: int, local_steps: int = 25) -> dict:
    return {
        "seed": 0,
        "data": {
            "dataset": "synthetic_regression",
            "partition": {"kind": "natural"},
            "synthetic_regression": {
                "n_samples": 1560,
                "w_star": [5.0, 2.0],
                "noise": 0.1,
                "feature_shift": 1.0,
            },
        },
        "model": {"kind": "linear"},
        "training": {"local_steps": local_steps, "batch_size": 1000, "lr": lr},
        "clients": {"compute": {"dist": "constant", "mean_s": 1.0}},
        "topology": {"servers": 5, "graph": "ring", "clients_per_server": 5},
        "algorithm": {"name": "dfl", "consensus_steps": 25, "epochs": epochs},
        "eval": {"every_s": 1e6},
        "stop": {"time_s": 1e6},
    }


def least_squares(sim: Simulation) -> np.ndarray:
    """argmin (1/MN) Σ_ij f_ij(w), f_ij the mean squared error on client (i, j)'s data."""
    x = sim.data.x_train.double().numpy()
    y = sim.data.y_train.double().numpy()
    A, b = np.zeros((2, 2)), np.zeros(2)
    for rows in sim.data.client_indices:
        X = np.c_[x[rows], np.ones(len(rows))]
        A += X.T @ X / len(rows)
        b += X.T @ y[rows] / len(rows)
    return np.linalg.solve(A, b)


def _distances(sim: Simulation) -> np.ndarray:
    w = torch.stack([s.params for s in sim.servers]).double().numpy()
    return np.linalg.norm(w - least_squares(sim), axis=1)


def test_dfl_toy_servers_agree_within_1e2_of_least_squares_and_bias_grows_with_step_size():
    small = _run(_toy(0.06, epochs=20))
    large = _run(_toy(0.1, epochs=20))
    ls = least_squares(small)
    assert np.allclose(ls, [5.0, 2.0], atol=0.05)  # the data really follow w* = (5, 2)
    d_small, d_large = _distances(small), _distances(large)
    assert d_small.max() < 1e-2 and d_large.max() < 1e-2
    # both have converged by epoch 20 (numpy reference), so the gap is a bias, not slowness
    assert d_large.min() > 1.5 * d_small.max()
    errors = small.result.evals["consensus_error"].to_numpy()
    assert np.nanmax(errors[-5:]) < 1e-4


def test_dfl_toy_matches_a_numpy_reimplementation():
    """Full-batch GD per client, 1/N server averages, T_S products with the MH ring matrix."""
    lr, epochs, steps = 0.1, 3, 25
    sim = _run(_toy(lr, epochs, steps))
    x = sim.data.x_train.double().numpy()
    y = sim.data.y_train.double().numpy()
    W = sim.topology.W
    z = np.tile(_initial_params(sim), (5, 1))
    for _ in range(epochs):
        averaged = []
        for s, clients in enumerate(sim.topology.assignment):
            local = []
            for c in clients:
                rows = sim.data.client_indices[c]
                X = np.c_[x[rows], np.ones(len(rows))]
                w = z[s].copy()
                for _ in range(steps):
                    w -= lr * 2 * X.T @ (X @ w - y[rows]) / len(rows)
                local.append(w)
            averaged.append(np.mean(local, axis=0))
        z = np.linalg.matrix_power(W, 25) @ np.array(averaged)
    got = torch.stack([s.params for s in sim.servers]).double().numpy()
    assert np.allclose(got, z, atol=1e-4, rtol=0)


def _initial_params(sim: Simulation) -> np.ndarray:
    from fedsim.learning.models import init_params

    return init_params(sim.spec, sim.streams.torch_generator("model.init")).double().numpy()


# ---------------------------------------------------------------------------------------------------
# Messages and simulated time (timing-only runs: no training, same events)


def _timing_dfl(latency: float, epochs: int = 2, steps: int = 3) -> dict:
    return {
        "seed": 1,
        "training": "none",
        "clients": {"compute": {"dist": "constant", "mean_s": 2.0}},
        "topology": {
            "servers": 5,
            "graph": "ring",
            "clients_per_server": 3,
            "link": {"latency_s": latency, "bandwidth_mbps": 8.0},
        },
        "algorithm": {"name": "dfl", "consensus_steps": steps, "epochs": epochs},
        "stop": {"time_s": 1e6},
    }


def test_dfl_sends_one_message_per_link_direction_per_consensus_step():
    result = fedsim.run(_timing_dfl(0.1, epochs=2, steps=3), save=False)
    messages = result.events.query("status == 'message'")
    assert len(messages) == 2 * 3 * (2 * 5)  # epochs × T_S × (2 × ring edges)
    pairs = set(zip(messages["server"], messages["receiver"], strict=True))
    assert pairs == {(i, (i + d) % 5) for i in range(5) for d in (1, -1)}
    assert result.summary["bytes"]["server_to_server"] == int(messages["bytes_up"].sum())
    assert (result.events.query("status == 'applied'").groupby("client").size() == 2).all()


def test_a_slow_link_delays_consensus_by_the_computed_amount():
    fast = fedsim.run(_timing_dfl(0.1, epochs=3), save=False)
    slow = fedsim.run(_timing_dfl(0.6, epochs=3), save=False)
    nbytes = int(fast.events.query("status == 'message'")["bytes_up"].iloc[0])
    steps, compute = 3, 2.0
    for latency, result in ((0.1, fast), (0.6, slow)):
        step = latency + nbytes * 8 / 8e6
        epoch = compute + steps * step
        arrivals = np.sort(result.events.query("status == 'applied'")["sim_time"].unique())
        assert np.allclose(arrivals, [k * epoch + compute for k in range(3)], rtol=0, atol=1e-9)
        assert result.summary["sim_time_s"] == pytest.approx(3 * epoch)
    assert slow.summary["sim_time_s"] - fast.summary["sim_time_s"] == pytest.approx(3 * 3 * 0.5)


def test_dsgd_message_count_with_gossip_steps_and_a_final_merge():
    spec = {
        "seed": 2,
        "training": "none",
        "clients": {"compute": {"dist": "exponential", "mean_s": 1.0}},
        "topology": {"servers": 4, "graph": "ring", "clients_per_server": 1},
        "algorithm": {"name": "dsgd", "rounds": 3, "gossip_steps": 2, "merge": {"final_at": 1.0}},
        "stop": {"time_s": 1e6},
    }
    result = fedsim.run(spec, save=False)
    messages = result.events.query("status == 'message'")
    # rounds 1-2: Q = 2 gossip steps × 8 ring messages; round 3: all 4 × 3 pairs
    assert len(messages) == 2 * 2 * 8 + 4 * 3
    assert result.summary["stop_reason"] == "rounds"


def test_consensus_error_drops_to_zero_after_the_final_global_merge():
    spec = {
        **DIGITS_GD,
        "training": {"local_steps": 3, "batch_size": 16, "lr": 0.1},
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 0.1}},
        "topology": {"servers": 8, "graph": "ring", "clients_per_server": 1},
        "algorithm": {"name": "dsgd", "rounds": 6, "merge": {"final_at": 1.0}},
        "eval": {"every_s": 1.0},
    }
    sim = _run(spec)
    evals = sim.result.evals
    peers = evals.query("server >= 0")
    before = peers[peers["sim_time"] < sim.result.summary["sim_time_s"]]
    assert before["consensus_error"].max() > 0.1  # Dirichlet 0.1: the peers drift apart
    last = peers[peers["sim_time"] == peers["sim_time"].max()]
    assert len(last) == 8 and last["consensus_error"].max() < 1e-6
    merged = evals.query("server == -1")
    assert len(merged) == evals["sim_time"].nunique()
    assert merged["consensus_error"].iloc[-1] < 1e-6
    assert last["accuracy"].nunique() == 1  # every peer holds the merged model


def test_periodic_partial_merges_average_the_chosen_peers_only():
    spec = {
        "seed": 4,
        "clients": {"compute": {"dist": "constant", "mean_s": 1.0}},
        "topology": {"servers": 10, "graph": "ring", "clients_per_server": 1},
        "algorithm": {
            "name": "dsgd",
            "rounds": 4,
            "gossip": "random",
            "r": {"kind": "fixed", "r_start": 0.0},
            "merge": {"fraction_r": 0.5, "every_steps": 20, "final_at": None},
        },
        "stop": {"time_s": 1e6},
    }
    learning = {
        **spec,
        "training": {"local_steps": 10, "batch_size": 8, "lr": 0.1},
        "data": {"dataset": "digits", "partition": {"kind": "iid"}},
        "model": {"kind": "logreg"},
    }
    result = fedsim.run(learning, save=False)
    messages = result.events.query("status == 'message'")
    # r = 0: no gossip; merges after rounds 2 and 4 among 5 peers: 5 × 4 messages each
    assert len(messages) == 2 * 5 * 4
    assert messages["sim_time"].nunique() == 2


# ---------------------------------------------------------------------------------------------------
# Asynchronous D-SGD (mode: async): each peer trains, sends, waits for its in-neighbours, mixes.


def _async_pair(gossip: dict, training: dict) -> tuple[Simulation, Simulation]:
    spec = {
        **DIGITS_GD,
        "training": training,
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 0.3}},
        "topology": {"servers": 8, "graph": "ring", "clients_per_server": 1},
        "algorithm": {"name": "dsgd", "rounds": 6, **gossip},
    }
    sync = _run(spec)
    spec["algorithm"] = {**spec["algorithm"], "mode": "async"}
    return sync, _run(spec)


@pytest.mark.parametrize(
    ("gossip", "batch_size"),
    [
        ({}, 16),  # MH ring, minibatch SGD: same jobs, same seeds, same rounds
        (  # random-r rows, 2 gossip steps, partial merges, final merge; full-batch GD
            {
                "gossip": "random",
                "r": {"r_start": 1.3},
                "gossip_steps": 2,
                "merge": {"fraction_r": 0.5, "every_steps": 6, "final_at": 0.8},
            },
            512,
        ),
    ],
)
def test_async_with_equal_job_times_is_the_sync_run(gossip, batch_size):
    training = {"local_steps": 3, "batch_size": batch_size, "lr": 0.1}
    sync, asyn = _async_pair(gossip, training)
    for a, b in zip(sync.servers, asyn.servers, strict=True):
        assert a.version == b.version == 6
        assert torch.allclose(a.params, b.params, atol=1e-6, rtol=0)
    spread = float((sync.servers[0].params - sync.servers[1].params).abs().max())
    assert spread > 1e-3 if "merge" not in gossip else spread == 0  # final merge: consensus
    assert asyn.result.summary["stop_reason"] == "rounds"
    # a peer whose random row has no in-neighbours need not wait for the step's messages
    t_sync, t_async = sync.result.summary["sim_time_s"], asyn.result.summary["sim_time_s"]
    assert t_async == pytest.approx(t_sync) if not gossip else t_async <= t_sync
    for status in ("applied", "message"):
        n_sync = (sync.result.events["status"] == status).sum()
        assert (asyn.result.events["status"] == status).sum() == n_sync
    assert asyn.algorithm.merges == sync.algorithm.merges


def _straggler_ring(mode: str, **alg) -> Simulation:
    """8-peer ring, 1 s jobs, one peer 5× slower, timing only, 100 simulated seconds."""
    return _run(
        {
            "seed": 1,
            "training": "none",
            "clients": {
                "compute": {"dist": "constant", "mean_s": 1.0},
                "stragglers": {"fraction": 1 / 8, "slowdown": 5.0},
            },
            "topology": {"servers": 8, "graph": "ring", "clients_per_server": 1},
            "algorithm": {"name": "dsgd", "rounds": 1000, "mode": mode, **alg},
            "stop": {"time_s": 100.5},
        }
    )


def test_a_straggler_slows_only_its_neighbourhood_in_async_mode():
    sync, asyn = _straggler_ring("sync"), _straggler_ring("async")
    slow = int(np.flatnonzero(sync.pool.timing.is_straggler)[0])
    distance = [min((s - slow) % 8, (slow - s) % 8) for s in range(8)]
    sync_rounds = [s.version for s in sync.servers]
    rounds = [s.version for s in asyn.servers]
    # sync: every round waits for the straggler's 5 s job plus one message (0.1 s + transfer)
    nbytes = int(sync.result.events.query("status == 'message'")["bytes_up"].iloc[0])
    period = 5.0 + 0.1 + nbytes * 8 / 100e6
    assert sync_rounds == [int(100.5 // period)] * 8
    # async: the straggler never waits (its neighbours' models are there before its job ends)
    assert rounds[slow] == int(100.5 // 5.0) == sync_rounds[0] + 1
    for s in range(8):  # ring neighbours are at most one round apart (the wait rule)
        assert abs(rounds[s] - rounds[(s + 1) % 8]) <= 1
    by_distance = [
        min(r for r, d in zip(rounds, distance, strict=True) if d == k) for k in range(5)
    ]
    assert by_distance == sorted(by_distance)  # the further from the straggler, the more rounds
    assert by_distance[4] >= rounds[slow] + 2 > sync_rounds[0] + 2
    # staleness column: 0 with wait; latest mixes older neighbour models next to the straggler
    applied = asyn.result.events.query("status == 'applied'")
    assert (applied["staleness"] == 0).all() and len(applied) == sum(rounds)
    # latest: a round is the job plus one request (latency) and one reply (a message), never a wait
    latest = _straggler_ring("async", async_rule="latest")
    fast = [s.version for i, s in enumerate(latest.servers) if i != slow]
    assert fast == [int(100.5 // (1.0 + 0.1 + (period - 5.0)))] * 7
    late = latest.result.events.query("status == 'applied'")
    assert late["staleness"].max() > 1
    assert late.query(f"server == {slow}")["staleness"].max() == 0  # neighbours are ahead


def test_async_message_counts_match_the_rounds_and_the_final_merge():
    spec = {
        "seed": 2,
        "training": "none",
        "clients": {
            "compute": {"dist": "exponential", "mean_s": 1.0},
            "stragglers": {"fraction": 0.25, "slowdown": 5.0},
        },
        "topology": {"servers": 4, "graph": "ring", "clients_per_server": 1},
        "algorithm": {
            "name": "dsgd",
            "rounds": 3,
            "gossip_steps": 2,
            "merge": {"final_at": 1.0},
            "mode": "async",
        },
        "stop": {"time_s": 1e6},
    }
    result = fedsim.run(spec, save=False)
    messages = result.events.query("status == 'message'")
    assert len(messages) == 2 * 2 * 8 + 4 * 3  # as in sync: Q × 2|E| per gossip round + n(n−1)
    assert result.summary["stop_reason"] == "rounds"
    # the merge waits for every peer: the run ends one message after the slowest peer's last job
    applied = result.events.query("status == 'applied'")
    delay = float(messages["comm_s"].iloc[0])
    assert result.summary["sim_time_s"] == pytest.approx(applied["sim_time"].max() + delay)
    assert (applied.groupby("server").size() == 3).all()


def test_async_mixing_preserves_the_peer_mean_once_every_peer_has_the_same_round():
    """Toy regression on a 5-ring with MH weights (doubly stochastic), exponential job times and a
    straggler: after round R every peer mixed its neighbours' round-R models, so x^R = W · h^R with
    h^R the half-step (k steps of full-batch GD from x^{R-1}, recomputed here in numpy)."""
    lr, steps, R = 0.05, 5, 4

    def run(rounds: int) -> Simulation:
        spec = _toy(lr, epochs=1, local_steps=steps)
        spec["clients"] = {
            "compute": {"dist": "exponential", "mean_s": 1.0},
            "stragglers": {"fraction": 0.2, "slowdown": 5.0},
        }
        spec["topology"] = {"servers": 5, "graph": "ring", "clients_per_server": 1}
        spec["algorithm"] = {"name": "dsgd", "rounds": rounds, "mode": "async"}
        return _run(spec)

    before, after = run(R - 1), run(R)
    x = torch.stack([s.params for s in before.servers]).double().numpy()
    got = torch.stack([s.params for s in after.servers]).double().numpy()
    data_x = after.data.x_train.double().numpy()
    data_y = after.data.y_train.double().numpy()
    half = x.copy()
    for i, rows in enumerate(after.data.client_indices):
        X = np.c_[data_x[rows], np.ones(len(rows))]
        for _ in range(steps):
            half[i] -= lr * 2 * X.T @ (X @ half[i] - data_y[rows]) / len(rows)
    W = after.topology.W
    assert np.allclose(W.sum(axis=0), 1.0) and np.allclose(W.sum(axis=1), 1.0)
    assert np.allclose(got.mean(axis=0), half.mean(axis=0), atol=1e-5, rtol=0)
    assert np.allclose(got, W @ half, atol=1e-5, rtol=0)
    assert np.abs(got - half).max() > 1e-2  # the mixing moved the models
    # the run really was asynchronous: some job started while another peer was rounds behind
    jobs = after.result.events.query("status == 'applied'")
    assert (jobs.groupby("base_version")["dispatched_at"].agg(np.ptp) > 1.0).any()


@pytest.mark.parametrize("gossip", ["mixing", "random"])
def test_async_survives_failed_links_peers_and_lost_jobs(gossip):
    spec = {
        "seed": 3,
        "training": "none",
        "clients": {
            "compute": {"dist": "exponential", "mean_s": 1.0},
            "stragglers": {"fraction": 0.3, "slowdown": 5.0},
            "dropout": {"prob": 0.1},
        },
        "topology": {
            "servers": 8,
            "graph": "ring",
            "clients_per_server": 1,
            "failures": [
                {"at_s": 3.0, "until_s": 9.0, "link": [0, 1]},
                {"at_s": 5.0, "until_s": 20.0, "node": 4},
            ],
        },
        "algorithm": {
            "name": "dsgd",
            "rounds": 12,
            "gossip": gossip,
            "r": {"r_start": 1.5},
            "gossip_steps": 2,
            "mode": "async",
            "merge": {"fraction_r": 0.5, "every_steps": 6, "final_at": 0.9},
        },
        "stop": {"time_s": 1e6},
    }
    sim = _run(spec)
    counts = sim.result.events["status"].value_counts()
    assert sim.result.summary["stop_reason"] == "rounds" and sim.algorithm.round == 12
    assert counts["applied"] + counts["dropped"] == 8 * 12 and counts["dropped"] > 0
    assert not sim.algorithm._slots and not sim.algorithm._discard  # every message consumed


# ---------------------------------------------------------------------------------------------------
# The gossip operators


def test_random_r_operator_rows_and_expected_extra_peers():
    rng = np.random.default_rng(0)
    n, r = 16, 0.2
    extra = []
    for _ in range(300):
        W = random_r_matrix(n, r, rng)
        assert np.allclose(W.sum(axis=1), 1.0) and (np.diag(W) > 0).all()
        extra.append(((W > 0).sum(axis=1) - 1).mean())
    assert np.mean(extra) == pytest.approx(r, abs=0.03)  # ± ~4 standard errors
    assert np.array_equal(random_r_matrix(n, 0.0, rng), np.eye(n))
    assert np.allclose(random_r_matrix(n, n - 1, rng), 1.0 / n)
    two = random_r_matrix(n, 2.0, rng)
    assert ((two > 0).sum(axis=1) == 3).all()


def test_r_schedules_hit_their_end_points():
    lin = RSchedule(kind="linear", r_start=0.2, r_end=1.2)
    cos = RSchedule(kind="cosine", r_start=0.2, r_end=1.2)
    for s in (lin, cos):
        assert s.at(0.0) == pytest.approx(0.2) and s.at(1.0) == pytest.approx(1.2)
        assert s.at(0.5) == pytest.approx(0.7)
    trunc = RSchedule(kind="truncate", r_start=0.2, r_end=15, point1=0.9)
    assert trunc.at(0.89) == 0.2 and trunc.at(0.9) == 15
    v2 = RSchedule(kind="truncate_v2", r_start=0.2, r_end=3, point1=0.5, window_size=0.1)
    assert [v2.at(p) for p in (0.49, 0.5, 0.55, 0.6)] == [0.2, 3, 3, 0.2]
    assert RSchedule(r_start=0.4).at(0.7) == 0.4


def test_received_mixing_moves_missing_weight_to_the_diagonal():
    W = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]])
    got = received_mixing(W, [{1: 0, 2: 0}, {0: 0}, {}])
    assert np.allclose(got.sum(axis=1), 1.0)
    assert got[1, 1] == 0.75 and got[1, 2] == 0 and got[2, 2] == 1.0
    assert np.array_equal(got[0], W[0])


# ---------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2


def _cli(tmp_path, capsys, yaml_text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text + "\n")
    try:
        main(["run", str(path), "--quiet", "--out", str(tmp_path / "run")])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


DFL_HEAD = "algorithm: {name: dfl, epochs: 1}\ntraining: none\nstop: {time_s: 5}\n"


def test_bad_topologies_exit_2_with_one_line(tmp_path, capsys):
    edges = tmp_path / "edges.txt"
    edges.write_text("0 1\n1 2\n3 4\n")
    err = _cli(
        tmp_path,
        capsys,
        DFL_HEAD + f"topology: {{servers: 5, graph: {{kind: from_file, path: {edges}}}}}",
    )
    assert "topology.graph" in err and "disconnected" in err
    err = _cli(tmp_path, capsys, DFL_HEAD + "topology: {servers: 0}")
    assert "topology.servers" in err
    W = np.full((4, 4), 0.25)
    W[2, 2] = 0.5
    mixing = tmp_path / "W.txt"
    np.savetxt(mixing, W)
    err = _cli(
        tmp_path,
        capsys,
        DFL_HEAD
        + f"topology: {{servers: 4, graph: complete, mixing: {{kind: from_file, path: {mixing}}}}}",
    )
    assert "topology.mixing" in err and "row 2" in err
    err = _cli(tmp_path, capsys, DFL_HEAD + "topology: {graph: {kind: star}}")
    assert "topology.graph.kind" in err and "star" in err
    err = _cli(
        tmp_path, capsys, "algorithm: {name: dsgd}\ntopology: {servers: 3, clients_per_server: 2}"
    )
    assert "topology.clients_per_server" in err
    err = _cli(tmp_path, capsys, "algorithm: {name: dfl}")
    assert "topology" in err


def test_a_disconnected_dfl_never_reaches_consensus_across_components():
    """Two servers that only ever exchange with each other keep their own average (§3.8 tests):
    with a failed link the ring splits, so the consensus error stays far from zero."""
    spec = _toy(0.1, epochs=4)
    spec["topology"] = {
        "servers": 4,
        "graph": "ring",
        "clients_per_server": 5,
        "failures": [{"at_s": 0.0, "link": [0, 1]}, {"at_s": 0.0, "link": [2, 3]}],
    }
    spec["data"]["synthetic_regression"]["feature_shift"] = 3.0
    spec["data"]["synthetic_regression"]["noise"] = 3.0
    sim = _run(spec)
    w = torch.stack([s.params for s in sim.servers]).double()
    assert torch.allclose(w[1], w[2], atol=1e-5) and torch.allclose(w[3], w[0], atol=1e-5)
    assert float((w[0] - w[1]).norm()) > 1e-3
    assert not math.isnan(sim.result.evals["consensus_error"].iloc[-1])


# ---------------------------------------------------------------------------------------------------
# Network figures


def test_network_figures_read_the_trace(tmp_path):
    from fedsim.plots_network import (
        ParamRecorder,
        bytes_vs_accuracy,
        consensus_error_vs_time,
        cumulative_bytes,
        distance_to_optimum,
        server_graph,
    )

    spec = {
        **DIGITS_GD,
        "topology": {"servers": 4, "graph": "ring", "clients_per_server": 1},
        "algorithm": {"name": "dsgd", "rounds": 4, "merge": {"final_at": 1.0}},
        "eval": {"every_s": 0.5},
    }
    rec = ParamRecorder("dsgd")
    result = fedsim.run(spec, save=False, progress=rec)
    sent = cumulative_bytes(result)
    assert sent.is_monotonic_increasing
    assert sent.iloc[-1] == sum(result.summary["bytes"].values())
    assert len(rec.times) == result.evals["sim_time"].nunique()
    assert np.allclose(rec.params[-1], rec.params[-1][0])  # merged at the end
    figures = {
        "consensus": consensus_error_vs_time([result]),
        "bytes": bytes_vs_accuracy([result, result], ["a", "b"], server=-1),
        "distance": distance_to_optimum(rec, rec.params[-1][0], tolerance=1e-2),
        "graph": server_graph(result),
    }
    line = figures["bytes"].axes[0].lines[0]
    assert line.get_xdata()[-1] == pytest.approx(sent.iloc[-1] / 1e6)
    # 4-ring with MH weights 1/3: eigenvalues 1, 1/3, 1/3, −1/3, so the gap is 2/3
    assert "spectral gap 0.667" in figures["graph"].axes[0].get_title()
    for name, fig in figures.items():
        fig.savefig(tmp_path / f"{name}.png")
