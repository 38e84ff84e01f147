"""MoDeST and DRPGA (ALGORITHMS.md §3.9, §3.11, limiting cases L11 and L12).

Real training on digits throughout. L11 compares whole DRPGA and FedAvg runs; L12 re-trains every
MoDeST job with a separate sequential trainer and re-averages the round by hand; the sampling rule
and the rate walk are checked as pure functions against their defining properties.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.algorithms.drpga import BetaRates, RateWalk, block_bounds, draw_mask
from fedsim.algorithms.modest import (
    aggregators_of,
    candidate_order,
    peer_hash,
    ping_sample,
    sample,
)
from fedsim.cli import main
from fedsim.learning.batched import make_trainer
from fedsim.learning.trainer import TrainJob
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation


def drpga_scenario(algorithm: dict, *, time_s: float = 12.0, training: dict | None = None) -> dict:
    return {
        "name": "drpga-test",
        "seed": 5,
        "stop": {"time_s": time_s},
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}},
        "model": {"kind": "mlp", "hidden": [16]},
        "training": training
        or {"local_steps": 3, "batch_size": 16, "lr": 0.1, "backend": "sequential"},
        "clients": {
            "count": 6,
            "compute": {"dist": "constant", "mean_s": 1.0},
            "network": {"latency_s": 0.25, "bandwidth_mbps": 10.0},
        },
        "algorithm": algorithm,
        "eval": {"every_s": math.sqrt(2.0)},
    }


def modest_scenario(algorithm: dict, *, time_s: float = 40.0, peers: int = 12) -> dict:
    return {
        "name": "modest-test",
        "seed": 4,
        "stop": {"time_s": time_s},
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}},
        "model": {"kind": "mlp", "hidden": [16]},
        "training": {"local_steps": 4, "batch_size": 16, "lr": 0.1, "backend": "sequential"},
        "clients": {"compute": {"dist": "exponential", "mean_s": 1.0}},
        "topology": {
            "servers": peers,
            "graph": "complete",
            "clients_per_server": 1,
            "link": {"latency_s": 0.05, "bandwidth_mbps": 100.0},
        },
        "algorithm": {"name": "modest", **algorithm},
        "eval": {"every_s": 5.0},
    }


def run_logged(data: dict) -> tuple[Simulation, list[torch.Tensor]]:
    """Run ``data``; return the simulation and every model server 0 published, in order."""
    sim = Simulation(load_scenario(data))
    server = sim.servers[0]
    published: list[torch.Tensor] = []
    publish = server.publish

    def logged(params):
        published.append(params.clone())
        publish(params)

    server.publish = logged
    sim.result = sim.run()
    return sim, published


# -- DRPGA -----------------------------------------------------------------------------------------


def test_l11_drpga_full_sharing_no_delay_equals_fedavg_full_participation():
    """p ≡ 1, D = 0 is periodic averaging of all clients every K steps: FedAvg, full participation.
    Full-batch local steps make each job independent of its job id's mini-batch stream."""
    full_batch = {"local_steps": 3, "batch_size": 4096, "lr": 0.1, "backend": "sequential"}
    _, fedavg = run_logged(
        drpga_scenario({"name": "fedavg", "cohort_size": 6}, training=full_batch)
    )
    sim, drpga = run_logged(
        drpga_scenario({"name": "drpga", "rates": [1.0], "delay_rounds": 0}, training=full_batch)
    )
    assert len(fedavg) >= 6
    for r, (a, b) in enumerate(zip(fedavg, drpga, strict=False)):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), f"round {r + 1}"
    assert not torch.allclose(fedavg[0], fedavg[-1], atol=1e-3)  # the model really moved
    alg = sim.algorithm  # clients that applied the same round hold the same anchor, bit for bit
    for i in range(6):
        t = alg.applied_round[i]
        assert t >= 1 and torch.equal(alg.anchor[i], drpga[t - 1])


def test_drpga_delayed_full_sharing_anchor_is_the_average_of_the_rounds_models():
    """p ≡ 1, D = 1 (DGA-style): after round t the anchor is Σ q_j w_j(t), the weighted mean of the
    models the clients had at the end of job t, although averages arrive one job late."""
    sim = Simulation(
        load_scenario(drpga_scenario({"name": "drpga", "rates": [1.0], "delay_rounds": 1}))
    )
    alg = sim.algorithm
    trained: dict[tuple[int, int], torch.Tensor] = {}
    local_model = alg.local_model

    def spy(job):
        w = local_model(job)
        trained[(job.client, job.tag)] = w
        return w

    alg.local_model = spy
    server = sim.servers[0]
    published: list[torch.Tensor] = []
    publish = server.publish
    server.publish = lambda p: (published.append(p.clone()), publish(p))
    sim.run()
    assert len(published) >= 5
    q = torch.tensor(alg.q, dtype=torch.float32)
    for t, anchor in enumerate(published, start=1):
        models = torch.stack([trained[(j, t)] for j in range(6)])
        assert torch.allclose(anchor, (q[:, None] * models).sum(0), atol=1e-5), f"round {t}"


def test_drpga_anchors_identical_and_bytes_per_sync_match_the_trace():
    cfg = {"name": "drpga", "rates": [0.3], "delay_rounds": 2}
    sim, published = run_logged(drpga_scenario(cfg))
    alg, events = sim.algorithm, sim.result.events
    d = sim.spec.numel
    per_sync = math.ceil(0.3 * d) * 4
    jobs = events[events["status"] != "message"]
    uploaded = jobs[jobs["status"] == "applied"]
    assert len(uploaded) >= 30
    assert (uploaded["bytes_up"] == per_sync).all()
    assert set(jobs["bytes_down"]) == {0, per_sync}  # the first D + 1 jobs download nothing
    assert sim.result.summary["bytes"]["client_up"] == per_sync * len(uploaded)
    # every client's anchor equals the server's anchor of the round it has applied
    assert min(alg.applied_round) >= 1
    for i in range(6):
        t = alg.applied_round[i]
        assert torch.equal(alg.anchor[i], published[t - 1]), f"client {i} after round {t}"
    # the partial average really leaves coordinates untouched in a round
    changed = (published[1] != published[0]).sum().item()
    assert 0 < changed <= math.ceil(0.3 * d)


def test_drpga_rate_walk_traffic_is_the_mean_rate_of_full_sharing():
    cfg = {"name": "drpga", "rates": [0.1, 0.5, 1.0], "start_level": 1, "q_up": 0.3, "q_down": 0.3}
    sim, _ = run_logged(drpga_scenario(cfg, time_s=20.0))
    alg, events = sim.algorithm, sim.result.events
    d = sim.spec.numel
    rows = events[events["status"] == "applied"].sort_values(["client", "job"])
    for _, client_rows in rows.groupby("client"):
        rates = alg.rate_history[: len(client_rows)]
        expected = [math.ceil(p * d - 1e-9) * 4 if p < 1 else d * 4 for p in rates]
        assert client_rows["bytes_up"].tolist() == expected
    assert len(set(alg.rate_history)) > 1
    full = len(rows) * d * 4
    mean_rate = float(
        np.mean([alg.rate_history[t - 1] for t in rows.groupby("client").cumcount() + 1])
    )
    assert rows["bytes_up"].sum() / full == pytest.approx(mean_rate, rel=0.01)


def test_rate_walk_stays_on_the_grid_and_the_symmetric_walk_is_uniform():
    n, steps = 5, 200_000
    walk = RateWalk(n, 0, 0.25, 0.25, np.random.default_rng(1))
    levels = np.fromiter((next(walk) for _ in range(steps)), dtype=int, count=steps)
    assert levels.min() >= 0 and levels.max() <= n - 1
    assert set(np.abs(np.diff(levels)).tolist()) <= {0, 1}
    freq = np.bincount(levels[1000:], minlength=n) / (steps - 1000)
    np.testing.assert_allclose(freq, 1 / n, atol=0.015)
    # an asymmetric walk is not uniform (the check above can fail)
    up = RateWalk(n, 0, 0.4, 0.1, np.random.default_rng(1))
    biased = np.bincount([next(up) for _ in range(20_000)], minlength=n) / 20_000
    assert biased[-1] > 0.5


def test_beta_rates_mean_matches_the_floored_beta_mean():
    # Beta(1, b) has survival (1 - x)^b, so E[max(X, f)] = f + (1 - f)^(b + 1) / (b + 1)
    a, b, floor, steps = 1.0, 9.0, 0.05, 200_000
    rates = np.fromiter(BetaRates(a, b, floor, np.random.default_rng(3)), dtype=float, count=steps)
    assert rates.min() >= floor and rates.max() <= 1
    analytic = floor + (1 - floor) ** (b + 1) / (b + 1)
    assert abs(rates.mean() - analytic) < 4 * rates.std() / math.sqrt(steps)
    # without a floor that binds, the mean is a / (a + b)
    free = np.fromiter(BetaRates(2.0, 6.0, 1e-9, np.random.default_rng(4)), float, count=steps)
    assert abs(free.mean() - 0.25) < 4 * free.std() / math.sqrt(steps)


def test_drpga_beta_schedule_shares_its_drawn_rates_and_fewer_bytes():
    cfg = {"name": "drpga", "rate_schedule": "beta", "beta_a": 1.0, "beta_b": 9.0}
    sim, _ = run_logged(drpga_scenario(cfg, time_s=20.0))
    alg, events = sim.algorithm, sim.result.events
    d = sim.spec.numel
    assert len(set(alg.rate_history)) > 5  # continuous rates, not the grid
    assert min(alg.rate_history) >= 0.05
    rows = events[events["status"] == "applied"].sort_values(["client", "job"])
    for _, client_rows in rows.groupby("client"):
        rates = alg.rate_history[: len(client_rows)]
        expected = [math.ceil(p * d - 1e-9) * 4 if p < 1 else d * 4 for p in rates]
        assert client_rows["bytes_up"].tolist() == expected
    assert rows["bytes_up"].sum() < 0.3 * len(rows) * d * 4


def test_masks_have_the_requested_size():
    gen = torch.Generator().manual_seed(0)
    mask = draw_mask(0.37, 1000, gen)
    assert mask.numel() == 370 and mask.unique().numel() == 370
    assert draw_mask(1.0, 1000, gen) is None
    blocks = block_bounds(1000, (0, 640, 650, 990), None)  # one block per parameter tensor
    assert blocks == [(0, 640), (640, 650), (650, 990), (990, 1000)]
    chunks = block_bounds(1000, (0,), 300)
    assert chunks[-1] == (900, 1000) and len(chunks) == 4
    picked = draw_mask(0.5, 1000, gen, chunks)
    chosen = [(a, b) for a, b in chunks if a in set(picked.tolist())]
    assert len(chosen) == 2  # ⌈0.5 · 4⌉ whole chunks
    assert picked.tolist() == [c for a, b in chosen for c in range(a, b)]


# -- MoDeST sampling -----------------------------------------------------------------------------


def test_sample_is_the_md5_order_and_deterministic():
    view = list(range(30))
    s1 = sample(view, 7, 5)
    assert s1 == sample(list(reversed(view)), 7, 5)  # same view, any order: same sample
    import hashlib

    ranked = sorted(view, key=lambda p: hashlib.md5(f"{p}-7".encode()).digest())
    assert s1 == ranked[:5]
    assert peer_hash(3, 7) == hashlib.md5(b"3-7").digest()
    assert sample(view, 8, 5) != s1  # another round, another sample
    for s in (1, 5, 30, 40):
        assert len(sample(view, 2, s)) == min(s, len(view))
    agg = aggregators_of(s1, 2)
    assert set(agg) <= set(s1) and agg == s1[:2]
    assert 3 not in sample(view, 7, 30, exclude=[3])


def test_removing_a_non_selected_peer_keeps_the_order_of_the_others():
    view = list(range(40))
    for k in range(1, 20):
        order = candidate_order(view, k)
        chosen = order[:6]
        gone = order[10]
        assert candidate_order([p for p in view if p != gone], k) == [p for p in order if p != gone]
        assert sample([p for p in view if p != gone], k, 6) == chosen


def test_ping_sample_skips_dead_peers_after_the_ping_timeout():
    candidates = [5, 1, 9, 3, 7, 2]
    dead = {1, 9}
    members, ready, silent = ping_sample(
        candidates, 3, lambda p, t: p not in dead, 10.0, rtt=0.2, timeout=2.0
    )
    assert members == [5, 3, 7]  # the first three live ones, in candidate order
    assert ready == pytest.approx(12.2)  # two slots timed out once, then answered
    assert silent == [1, 9]
    members, ready, silent = ping_sample(candidates, 3, lambda p, t: True, 0.0, 0.2, 2.0)
    assert members == [5, 1, 9] and ready == pytest.approx(0.2) and silent == []
    members, _, _ = ping_sample(candidates, 10, lambda p, t: p not in dead, 0.0, 0.2, 2.0)
    assert members == [5, 3, 7, 2]  # fewer live peers than asked: all of them


# -- MoDeST runs ------------------------------------------------------------------------------------


def test_l12_modest_round_aggregate_is_fedavg_of_its_trainers():
    """sf = 1, no failures: each round's aggregate is the data-size weighted mean of the models its
    s sampled trainers trained from the previous aggregate (re-trained here independently)."""
    data = modest_scenario(
        {"sample_size": 4, "aggregators": 2, "weighting": "data_size"}, time_s=25
    )
    sim = Simulation(load_scenario(data))
    alg = sim.algorithm
    aggregates: dict[int, list[tuple[int, torch.Tensor]]] = {}
    publish_to = alg.publish_to

    def logged(server, params):
        k = alg.collect[server].k
        aggregates.setdefault(k, []).append((server, params.clone()))
        publish_to(server, params)

    alg.publish_to = logged
    initial = sim.servers[0].params.clone()
    result = sim.run()
    events = result.events
    trainer = make_trainer(sim.trainer.task, "sequential")
    sizes = sim.client_sizes
    assert len(aggregates) >= 4
    previous = initial
    for k in range(1, len(aggregates) + 1):
        members = sample(range(12), k, 4)
        rows = events[(events["status"] == "applied") & (events["base_version"] == k)]
        assert sorted(rows["client"]) == sorted(members)
        ws = []
        for job_id, client in zip(rows["job"], rows["client"], strict=True):
            seed = sim.streams.sequence("training.job", int(job_id))
            ws.append(trainer.submit(TrainJob(int(job_id), int(client), previous, seed)).result())
        n = torch.tensor([float(sizes[c]) for c in rows["client"]])
        expected = (n[:, None] * torch.stack(ws)).sum(0) / n.sum()
        assert sorted(a for a, _ in aggregates[k]) == sorted(aggregators_of(members, 2))
        for _, got in aggregates[k]:
            assert torch.allclose(got, expected, atol=1e-6), f"round {k}"
        previous = aggregates[k][0][1]
    assert (events["status"] == "message").sum() > 0
    assert set(events["status"]) <= {"applied", "message", "in_flight", "buffered", "cancelled"}


def test_modest_continues_through_node_failures():
    crash_at = 15.0
    data = modest_scenario(
        {
            "sample_size": 4,
            "success_fraction": 1.0,
            "aggregation_timeout_s": 2.0,
            "ping_timeout_s": 1.0,
            "round_timeout_s": 6.0,
            "crash": {"fraction": 0.75, "at_s": crash_at},
        },
        time_s=80,
        peers=16,
    )
    sim = Simulation(load_scenario(data))
    result = sim.run()
    alg, events = sim.algorithm, result.events
    assert len(alg.crashed) == 12
    jobs = events[events["status"] != "message"]
    after = jobs[jobs["dispatched_at"] > crash_at]
    assert len(after) > 0 and not after["client"].isin(alg.crashed).any()
    rounds_at_crash = result.evals.loc[result.evals["sim_time"] <= crash_at, "version"].max()
    assert alg.rounds_aggregated >= rounds_at_crash + 3  # rounds keep completing
    messages = events[(events["status"] == "message") & (events["sim_time"] > crash_at + 1)]
    assert not messages["receiver"].isin(alg.crashed).any()
    assert not messages["server"].isin(alg.crashed).any()


def test_same_seed_same_trace():
    data = modest_scenario({"sample_size": 3}, time_s=15)
    a = Simulation(load_scenario(data)).run().events
    b = Simulation(load_scenario(data)).run().events
    assert a.equals(b)


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "command", "expected"),
    [
        ("algorithm: {name: drpga, rates: [0.5, 0.2]}", "validate", "algorithm.rates"),
        ("algorithm: {name: drpga, rates: [0.0, 0.5]}", "validate", "(0, 1]"),
        ("algorithm: {name: drpga, start_level: 3, rates: [0.5]}", "validate", "start_level"),
        ("algorithm: {name: drpga, q_up: 0.7, q_down: 0.6}", "validate", "q_up + q_down"),
        ("algorithm: {name: drpga, share: rows}", "validate", "algorithm.share"),
        ("algorithm: {name: modest, aggregators: 5, sample_size: 3}", "validate", "aggregators"),
        ("algorithm: {name: modest, success_fraction: 0}", "validate", "success_fraction"),
        ("algorithm: {name: modest, crash: {fraction: 1.5}}", "validate", "crash.fraction"),
        ("algorithm: {name: modest}\nclients: {count: 4}", "run", "needs a topology"),
        (
            "algorithm: {name: modest}\ntopology: {servers: 3, clients_per_server: 2}",
            "run",
            "clients_per_server: 1",
        ),
        (
            "algorithm: {name: drpga}\nclients: {count: 4, dropout: {prob: 0.1}}",
            "run",
            "clients.dropout.prob",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, yaml_text, command, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text + "\ntraining: none\nstop: {time_s: 5}\n")
    args = [command, str(path)]
    if command == "run":
        args += ["--quiet", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert expected in err[0]
