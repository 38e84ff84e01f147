"""BRAIN and FRAIN: SLERP maths, limiting cases L7/L8, committee, threshold, staleness, sync, attacks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from fedsim.algorithms.brain import AdaptiveStaleness
from fedsim.algorithms.committee import committee_median
from fedsim.algorithms.merging import lerp, slerp
from fedsim.cli import main
from fedsim.recorder import EVENT_SCHEMA
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation
from fedsim.world import split_validation

# -- SLERP ------------------------------------------------------------------------------------------


def _angle(u: torch.Tensor, v: torch.Tensor) -> float:
    u, v = u.double(), v.double()
    return math.acos(max(-1.0, min(1.0, float(u @ v / (u.norm() * v.norm())))))


def _pair(seed: int, d: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    return a, b * (a.norm() / b.norm())  # equal norms


def test_slerp_endpoints_and_orthonormal_midpoint():
    a, b = _pair(0)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-12)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-12)
    e0, e1 = torch.eye(2, dtype=torch.float64)
    mid = slerp(e0, e1, 0.5)
    assert torch.allclose(mid, (e0 + e1) / math.sqrt(2), atol=1e-12)
    assert abs(float(mid.norm()) - 1.0) < 1e-12


@pytest.mark.parametrize("t", [0.1, 0.3, 0.5, 0.77, 0.95])
def test_slerp_keeps_equal_norms_and_interpolates_the_angle(t):
    a, b = _pair(1)
    theta = _angle(a, b)
    w = slerp(a, b, t)
    assert abs(float(w.norm() - a.norm())) < 1e-9 * float(a.norm())
    assert abs(_angle(a, w) - t * theta) < 1e-9
    assert abs(_angle(w, b) - (1 - t) * theta) < 1e-9
    # symmetry: slerp(a, b, t) = slerp(b, a, 1 − t)
    assert torch.allclose(w, slerp(b, a, 1 - t), atol=1e-12)
    # LERP shrinks the norm of non-parallel equal-norm vectors; SLERP does not
    assert float(lerp(a, b, t).norm()) < float(w.norm())


def test_slerp_near_parallel_antiparallel_and_zero_are_finite():
    a, _ = _pair(2)
    near = a + 1e-6 * torch.ones_like(a)
    assert torch.equal(slerp(a, near, 0.3), lerp(a, near, 0.3))
    anti = -a
    out = slerp(a, anti, 0.5)
    assert torch.isfinite(out).all() and torch.equal(out, lerp(a, anti, 0.5))
    zero = torch.zeros_like(a)
    for t in (0.0, 0.25, 1.0):
        assert torch.equal(slerp(a, zero, t), lerp(a, zero, t))  # default: LERP
        assert torch.isfinite(slerp(zero, zero, t)).all()
        ortho = slerp(a, zero, t, zero="orthogonal")  # the authors' rule: cos(tπ/2)·a
        assert torch.allclose(ortho, math.cos(t * math.pi / 2) * a, atol=1e-12)


def test_slerp_works_tensor_by_tensor():
    a1, b1 = _pair(3, 10)
    a2, b2 = _pair(4, 7)
    a2 = 5 * a2
    a, b = torch.cat([a1, a2]), torch.cat([b1, 5 * b2])
    out = slerp(a, b, 0.4, bounds=[0, 10])
    assert torch.allclose(out[:10], slerp(a1, b1, 0.4), atol=1e-12)
    assert torch.allclose(out[10:], slerp(a2, 5 * b2, 0.4), atol=1e-12)


def test_hinge_factor_hits_one_and_zero_and_decreases():
    f = AdaptiveStaleness(kind="hinge", a=10, b=4, c=16)
    assert f.factor(4) == 1.0 and f.factor(16) == 0.0 and f.factor(30) == 0.0
    values = [f.factor(k) for k in range(0, 20)]
    assert all(x >= y for x, y in itertools.pairwise(values))
    assert abs(f.factor(4.000001) - 1.0) < 1e-3 and abs(f.factor(15.99999)) < 1e-3
    assert AdaptiveStaleness(kind="polynomial", a=0.5).factor(3) == 0.5


def test_validation_split_is_disjoint_and_complete():
    rows = [np.arange(0, 30), np.arange(30, 31), np.arange(31, 41)]
    train, val = split_validation(rows, 0.1, np.random.default_rng(0))
    assert [len(v) for v in val] == [3, 1, 1]
    for r, t, v in zip(rows, train, val, strict=True):
        if len(r) >= 2:
            assert set(t).isdisjoint(v) and set(t) | set(v) == set(r)


def test_committee_median_stays_in_the_honest_range_below_a_majority_of_liars():
    rng = np.random.default_rng(0)
    for _ in range(200):
        honest = rng.uniform(0.3, 0.4, size=6).tolist()
        liars = rng.choice([0.0, 1.0], size=5).tolist()  # the most extreme lies
        assert min(honest) <= committee_median(honest + liars) <= max(honest)
    assert committee_median([0.35] * 5 + [0.0] * 6) == 0.0  # a majority decides


# -- runs -------------------------------------------------------------------------------------------


def _scenario(algorithm: dict, **extra) -> dict:
    s = {
        "name": "bf",
        "seed": 1,
        "stop": {"time_s": 30},
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 1.0}},
        "model": {"kind": "mlp", "hidden": [16]},
        "training": {"local_steps": 5, "batch_size": 32, "lr": 0.1, "backend": "sequential"},
        "clients": {"count": 11, "compute": {"dist": "exponential", "mean_s": 2.0}},
        "algorithm": algorithm,
        "eval": {"every_s": 10.0},
    }
    s.update(extra)
    return s


def _run(algorithm: dict, **extra):
    sim = Simulation(load_scenario(_scenario(algorithm, **extra)))
    return sim, sim.run()


def test_L8_brain_with_constant_scores_is_fedasync_with_alpha_c():
    c = 0.6
    brain, rb = _run(
        {
            "name": "brain",
            "concurrency": 6,
            "scores": "constant",
            "constant_score": c,
            "threshold": 0.5,
            "max_staleness": 3,
        }
    )
    fa, rf = _run(
        {
            "name": "fedasync",
            "concurrency": 6,
            "alpha": c,
            "staleness": {"kind": "constant"},
            "max_staleness": 3,
        }
    )
    assert (rb.events["status"] == "late").any()  # the staleness limit was exercised
    cols = ["sim_time", "client", "base_version", "staleness", "status"]
    assert rb.events[cols].equals(rf.events[cols])
    assert np.allclose(rb.evals["accuracy"], rf.evals["accuracy"])
    assert torch.allclose(brain.servers[0].params, fa.servers[0].params, atol=1e-6, rtol=0)


def test_L7_frain_with_lerp_constant_factor_no_drift_is_brain():
    common = {"concurrency": 6, "committee_size": 5, "threshold": 0.05}
    brain, _ = _run({"name": "brain", **common})
    frain, _ = _run({"name": "frain", "merge": "lerp", "adaptive": {"kind": "constant"}, **common})
    assert brain.algorithm.score_log == frain.algorithm.score_log
    assert torch.equal(brain.servers[0].params, frain.servers[0].params)


def test_threshold_rejects_and_leaves_the_model_unchanged():
    sim, r = _run({"name": "brain", "scores": "constant", "constant_score": 0.3, "threshold": 0.5})
    initial = Simulation(load_scenario(_scenario({"name": "brain"}))).servers[0].params
    rejected = r.events[r.events["status"] == "rejected"]
    assert len(rejected) > 10 and (rejected["reason"] == "score").all()
    assert not r.events["status"].isin(["applied"]).any()
    assert sim.servers[0].version == 0 and torch.equal(sim.servers[0].params, initial)


def test_staleness_limit_discards_old_proposals():
    _, r = _run({"name": "frain", "concurrency": 8, "max_staleness": 2, "threshold": 0.0})
    ev = r.events
    assert (ev.loc[ev["status"] == "applied", "staleness"] <= 2).all()
    late = ev[ev["status"] == "late"]
    assert len(late) > 0 and (late["staleness"] > 2).all() and (late["reason"] == "staleness").all()


NULL = {"fraction": 0.5, "attack": {"name": "nullifier"}}
LEARN = {"local_steps": 20, "batch_size": 32, "lr": 0.1, "backend": "sequential"}


def test_nullifiers_collapse_fedasync_but_not_frain():
    extra = {"byzantine": NULL, "stop": {"time_s": 60}, "clients": {"count": 12}, "training": LEARN}
    _, rf = _run({"name": "fedasync", "concurrency": 8, "alpha": 0.6}, **extra)
    fr, rr = _run(
        {"name": "frain", "concurrency": 8, "committee_size": 5, "threshold": 0.2}, **extra
    )
    assert rf.summary["final_accuracy"] < 0.2  # chance level is 0.1
    assert rr.summary["final_accuracy"] > 0.5
    assert rr.summary["byzantine_applied"] == 0  # every nullified model was rejected
    assert float(fr.servers[0].params.norm()) > 0


def test_disruptors_tolerated_below_a_committee_majority_not_above():
    n = 11
    extra = {"byzantine": {"fraction": 0.45, "attack": {"name": "nullifier"}}, "training": LEARN}
    algo = {"name": "frain", "concurrency": 6, "committee_size": n, "threshold": 0.3}
    few, r_few = _run({**algo, "disruptors": n // 2}, **extra)
    log = few.algorithm.score_log
    assert log and all(lo <= s <= hi for s, lo, hi, _ in log)
    assert r_few.summary["byzantine_applied"] == 0
    _, r_many = _run({**algo, "disruptors": n}, **extra)
    assert r_many.summary["byzantine_applied"] > 0  # a lying majority lets nullifiers in


def test_sync_costs_replay_entries_or_fastsync_window():
    base = {
        "concurrency": 6,
        "committee_size": 3,
        "threshold": 0.0,
        "drift": 6,
        "entry_s": 0.5,
        "max_staleness": None,
    }
    extra = {"clients": {"count": 6, "compute": {"dist": "exponential", "mean_s": 2.0}}}
    gaps = {}
    for sync in ("replay", "fastsync"):
        sim, r = _run({"name": "frain", "sync": sync, **base}, **extra)
        ev = r.events[r.events["status"] != "in_flight"].sort_values("dispatched_at")
        got, want = [], []
        for _client, rows in ev.groupby("client"):
            rows = rows.sort_values("dispatched_at")
            prev = rows.iloc[:-1]
            nxt = rows.iloc[1:]
            got += list(nxt["dispatched_at"].to_numpy() - prev["sim_time"].to_numpy())
            if sync == "replay":  # versions missed since the node's last start
                applied = (prev["status"] == "applied").to_numpy()
                missed = prev["arrival_version"].to_numpy() + applied - prev["base_version"]
                want += list(0.5 * missed)
        if sync == "replay":
            assert np.allclose(got, want)
        else:
            assert set(np.round(got, 9)) <= {0.0, 0.5, 1.0} and np.mean(np.isclose(got, 1.0)) > 0.8
        gaps[sync] = sim.algorithm.sync_seconds
    assert gaps["fastsync"] < gaps["replay"]


def test_fastsync_estimate_and_fallback():
    sim, _ = _run({"name": "frain", "fastsync_window": 1, "threshold": 0.0})
    alg = sim.algorithm
    assert alg.fastsync_model() is alg.qualified[-1][0]
    sim, _ = _run({"name": "frain", "fastsync_window": 2, "fastsync_threshold": 1.0})
    alg = sim.algorithm
    assert not alg.qualified and len(alg.recent) == 2  # nothing qualifies: the fallback
    (w1, s1), (w2, s2) = alg.recent
    assert torch.allclose(alg.fastsync_model(), (s1 * w1 + s2 * w2) / (s1 + s2), atol=1e-6)


# -- bad input --------------------------------------------------------------------------------------

BAD = [
    ("algorithm: {name: brain, threshold: 1.5}", "algorithm.threshold: must be <= 1"),
    ("algorithm: {name: frain, threshold: -0.1}", "algorithm.threshold: must be >= 0"),
    ("clients: {count: 21}\nalgorithm: {name: brain, committee_size: 30}", "committee_size"),
    ("clients: {count: 21}\nalgorithm: {name: frain, disruptors: 22}", "algorithm.disruptors"),
    ("algorithm: {name: frain, adaptive: {kind: hinge, b: 8, c: 4}}", "hinge needs"),
    ("algorithm: {name: frain, merge: nlerp}", "algorithm.merge: must be one of"),
    ("algorithm: {name: brain}\naggregator: {name: median}", "aggregator.name"),
    ("algorithm: {name: brain}\ntraining: none", "algorithm.scores"),
]


@pytest.mark.parametrize("text,expected", BAD, ids=[b[1] for b in BAD])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(f"stop: {{time_s: 1}}\n{text}\n")
    try:
        main(["run", str(path), "--quiet", "--out", str(tmp_path / "run")])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err


def test_the_scenario_ships_and_switches_algorithms():
    from .conftest import SCENARIOS

    path = SCENARIOS / "frain_nullifiers.yaml"
    s = load_scenario(path)
    assert s.algorithm.name == "frain" and s.clients.count == 21 and s.algorithm.max_staleness == 16
    assert load_scenario(path, {"algorithm.name": "fedavg"}).algorithm.name == "fedavg"
    assert load_scenario(path, {"algorithm.name": "brain"}).algorithm.threshold == 0.2


# -- the α of each merge in the events trace --------------------------------------------------------


def _hinge(k: int, a: float, b: float, c: float) -> float:
    """FedAsync's hinge, rescaled to reach 0 at c (written here apart from AdaptiveStaleness)."""
    if k <= b:
        return 1.0
    if k >= c:
        return 0.0
    end = 1.0 / (a * (c - b) + 1.0)
    return (1.0 / (a * (k - b) + 1.0) - end) / (1.0 - end)


@pytest.mark.parametrize("rule", ["mean", "ratio"])
def test_the_alpha_of_each_merge_is_in_the_trace_and_follows_the_rule(rule):
    hinge = {"kind": "hinge", "a": 2.0, "b": 1.0, "c": 5.0}
    algorithm = {"name": "frain", "concurrency": 8, "committee_size": 5, "threshold": 0.05}
    sim, r = _run({**algorithm, "alpha_rule": rule, "window": 4, "adaptive": hinge})
    ev = r.events
    scored = ev[(ev["status"] == "applied") | (ev["reason"] == "score")]
    assert len(scored) == len(sim.algorithm.score_log)  # one committee score per scored proposal
    window: list[float] = []
    expected = []
    for (_, row), (sigma, *_rest) in zip(scored.iterrows(), sim.algorithm.score_log, strict=True):
        if row["status"] != "applied":
            continue
        adjusted = sigma * _hinge(int(row["staleness"]), 2.0, 1.0, 5.0)
        window = [*window, adjusted][-4:]
        expected.append(
            sum(window) / len(window)
            if rule == "mean"
            else adjusted / sum(window)
            if sum(window)
            else 0.0
        )
    applied = ev[ev["status"] == "applied"]
    assert len(applied) > 10 and (applied["staleness"] > 1).any()  # the hinge bites on some
    assert np.allclose(applied["alpha"].to_numpy(), expected, rtol=0, atol=1e-12)
    assert ev.loc[ev["status"] != "applied", "alpha"].isna().all()


def test_other_algorithms_traces_have_no_alpha_column():
    _, r = _run({"name": "fedasync", "concurrency": 4, "alpha": 0.6})
    assert "alpha" not in r.events.columns
    assert list(r.events.columns) == EVENT_SCHEMA.names
