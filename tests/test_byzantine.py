"""Byzantine clients and robust aggregation wired into the simulator (scenario, trace, algorithms)."""

from __future__ import annotations

import numpy as np
import pytest

import fedsim
from fedsim.cli import main
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation

from .conftest import SCENARIOS

BAD = [
    (
        "trim fraction",
        "aggregator: {name: trimmed_mean, trim_fraction: 0.5}",
        "aggregator.trim_fraction: must be < 0.5",
    ),
    (
        "krum n <= 2f+2",
        "algorithm: {name: fedbuff, buffer_size: 5}\naggregator: {name: krum, f: 2}",
        "aggregator.f: Krum needs n > 2f+2, got n=5, f=2",
    ),
    (
        "krum fedavg cohort",
        "algorithm: {name: fedavg, cohort_size: 4}\naggregator: {name: krum, f: 1}",
        "Krum needs n > 2f+2, got n=4, f=1",
    ),
    (
        "unknown attack",
        "byzantine: {attack: {name: backdoor}}",
        "byzantine.attack.name: unknown name",
    ),
    ("unknown aggregator", "aggregator: {name: bulyan}", "aggregator.name: unknown name"),
    ("fraction and clients", "byzantine: {fraction: 0.2, clients: [1]}", "not both"),
    ("fraction 1", "byzantine: {fraction: 1.0}", "byzantine.fraction: must be < 1"),
]


@pytest.mark.parametrize(("text", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_robust_input_exits_2_with_one_line(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert expected in err[0]


def test_unknown_attack_lists_the_known_ones(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("byzantine: {attack: {name: backdoor}}\n")
    with pytest.raises(SystemExit):
        main(["validate", str(path)])
    err = capsys.readouterr().err
    assert "sign_flip" in err and "ipm" in err


def _small(small_learning, **extra):
    data = dict(small_learning)
    data.update(extra)
    return load_scenario(data)


def test_byzantine_clients_are_chosen_deterministically(small_learning):
    byz = {"fraction": 0.25, "attack": {"name": "sign_flip", "scale": 4.0}}
    a = Simulation(_small(small_learning, byzantine=byz), device="cpu")
    b = Simulation(_small(small_learning, byzantine=byz), device="cpu")
    assert a.is_byzantine.sum() == 5
    assert np.array_equal(a.is_byzantine, b.is_byzantine)
    other = Simulation(_small(small_learning, byzantine=byz, seed=4), device="cpu")
    assert not np.array_equal(a.is_byzantine, other.is_byzantine)


def test_trace_columns_and_summary(small_learning):
    byz = {"clients": [0, 3, 7], "attack": {"name": "scaling", "factor": 2.0}}
    result = fedsim.run(_small(small_learning, byzantine=byz), save=False, device="cpu")
    events = result.events
    assert events["byzantine"].tolist() == events["client"].isin([0, 3, 7]).tolist()
    assert set(events.loc[events["byzantine"], "attack"]) == {"scaling"}
    assert set(events.loc[~events["byzantine"], "attack"]) == {""}
    applied = events["status"].isin(["applied", "buffered"])
    assert result.summary["byzantine_applied"] == int((applied & events["byzantine"]).sum()) > 0


def test_honest_run_has_honest_columns(small_learning):
    result = fedsim.run(_small(small_learning), save=False, device="cpu")
    assert not result.events["byzantine"].any()
    assert (result.events["attack"] == "").all()
    assert result.summary["byzantine_applied"] == 0


@pytest.mark.parametrize("algorithm", ["fedasync", "fedbuff", "fedavg"])
def test_non_finite_and_oversized_updates_are_rejected(small_learning, algorithm):
    algo = {"name": algorithm, **({"cohort_size": 5} if algorithm == "fedavg" else {})}
    # never read: lost, cut off, or (FedAvg) waiting in the round still open at the stop
    unread = {"dropped", "in_flight", "cancelled", "late"} | (
        {"buffered"} if algorithm == "fedavg" else set()
    )
    if algorithm == "fedbuff":
        algo.update(concurrency=5, buffer_size=3)
    infinite = {"clients": [1, 2], "attack": {"name": "scaling", "factor": float("inf")}}
    result = fedsim.run(
        _small(
            small_learning,
            byzantine=infinite,
            algorithm=algo,
            aggregator={"name": "coordinate_median"},
        ),
        save=False,
        device="cpu",
    )
    ev = result.events
    byz_outcomes = set(ev.loc[ev["byzantine"], "status"]) - unread
    assert byz_outcomes <= {"rejected"}
    assert (ev["status"] == "rejected").sum() > 0
    assert set(ev.loc[ev["status"] == "rejected", "reason"]) == {"non_finite"}
    assert (ev.loc[ev["status"] == "applied", "reason"] == "").all()
    assert np.isfinite(result.summary["final_accuracy"])
    big = {"clients": [1, 2], "attack": {"name": "scaling", "factor": 1e4}}
    result = fedsim.run(
        _small(small_learning, byzantine=big, algorithm=algo, screening={"max_norm": 50.0}),
        save=False,
        device="cpu",
    )
    ev = result.events
    assert set(ev.loc[ev["byzantine"], "status"]) - unread <= {"rejected"}
    assert set(ev.loc[ev["status"] == "rejected", "reason"]) == {"norm_bound"}


def test_fast_attackers_compute_faster(small_learning):
    byz = {"clients": [0, 1, 2, 3], "attack": {"name": "sign_flip"}, "speed": 0.1}
    sim = Simulation(_small(small_learning, byzantine=byz), device="cpu")
    plain = Simulation(_small(small_learning), device="cpu")
    assert sim.timing.speed[:4] == pytest.approx([0.1 * s for s in plain.timing.speed[:4]])
    assert sim.timing.speed[4:] == plain.timing.speed[4:]
    ev = fedsim.run(_small(small_learning, byzantine=byz), save=False, device="cpu").events
    by = ev.groupby("byzantine")["compute_s"].mean()
    assert by[True] < 0.3 * by[False]


@pytest.mark.parametrize(
    "aggregator", ["trimmed_mean", "krum", "geometric_median", "centered_clipping"]
)
@pytest.mark.parametrize("algorithm", ["fedasync", "fedbuff", "fedavg"])
def test_every_aggregator_runs_in_every_algorithm(small_learning, algorithm, aggregator):
    algo = {"name": algorithm}
    if algorithm == "fedavg":
        algo["cohort_size"] = 6
    if algorithm == "fedbuff":
        algo.update(concurrency=6, buffer_size=6)
    agg = {"name": aggregator, **({"f": 1} if aggregator == "krum" else {})}
    byz = {"fraction": 0.2, "attack": {"name": "ipm"}, "window": 6}
    result = fedsim.run(
        _small(small_learning, algorithm=algo, aggregator=agg, byzantine=byz, stop={"time_s": 20}),
        save=False,
        device="cpu",
    )
    assert result.summary["updates"] > 0
    assert np.isfinite(result.summary["final_accuracy"])


def _three_runs(path, overrides=None):
    base = dict(overrides or {})
    clean = fedsim.run(
        path, {**base, "byzantine": None, "aggregator": {"name": "mean"}}, save=False, device="cpu"
    )
    plain = fedsim.run(path, {**base, "aggregator": {"name": "mean"}}, save=False, device="cpu")
    robust = fedsim.run(path, base, save=False, device="cpu")
    return (
        clean.summary["final_accuracy"],
        plain.summary["final_accuracy"],
        robust.summary["final_accuracy"],
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "overrides"),
    [("byzantine_fedavg", {}), ("byzantine_fedbuff", {"stop.time_s": 300})],
)
def test_sign_flip_breaks_mean_but_not_trimmed_mean(name, overrides):
    clean, plain, robust = _three_runs(SCENARIOS / f"{name}.yaml", overrides)
    assert clean > 0.85
    assert plain <= clean - 0.20, (clean, plain, robust)
    assert robust >= clean - 0.05, (clean, plain, robust)
