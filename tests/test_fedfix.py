"""FedFix, asynchronous FedAvg and FedBuff-c (ALGORITHMS.md §3.5, §4 L6): limiting cases of real runs.

Each case compares the parameter sequence a run published with the sequence of another algorithm
run through the simulator (FedAvg, FedBuff) on the same seed; the schedules are checked against the
closed forms of §1/§3.5 in timing-only runs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.cli import main
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation

from .test_limiting_cases import accepted, scenario

CONSTANT = {"dist": "constant", "mean_s": 1.0}


class Run:
    """A simulation with its initial model and every model it published, with the simulated time."""

    def __init__(self, data: dict) -> None:
        self.sim = sim = Simulation(load_scenario(data))
        server = sim.servers[0]
        self.published: list[torch.Tensor | None] = []
        self.times: list[float] = []
        publish = server.publish

        def logged(params):
            self.published.append(None if params is None else params.clone())
            self.times.append(sim.env.now)
            publish(params)

        server.publish = logged  # instance attribute: observes, changes nothing
        self.result = sim.run()
        self.events = self.result.events
        self.evals = self.result.evals.drop(columns=["real_time_s"])
        assert len(self.published) == server.version


def assert_same_models(a: Run, b: Run, *, exact: bool = False) -> None:
    assert len(a.published) == len(b.published) >= 5
    for r, (x, y) in enumerate(zip(a.published, b.published, strict=True)):
        if exact:
            assert torch.equal(x, y), f"model {r + 1} differs"
        else:
            torch.testing.assert_close(x, y, atol=1e-6, rtol=0, msg=f"model {r + 1} differs")


# ---------------------------------------------------------------------------------------------------
# L6: FedFix with Δt ≥ max τ_i ≡ full-participation FedAvg (weights p_i), one round per Δt


@pytest.mark.parametrize("period", [1.0, 1.5])
def test_fedfix_with_period_at_least_every_job_is_full_fedavg(period):
    """Δt = τ = 1: every update returns exactly at the tick and joins it (``return ≤ nΔt``), so the
    runs agree bit for bit, events and evaluations included; Δt = 1.5: same models, later ticks."""
    n = 8
    clients = {"count": n, "compute": CONSTANT}
    horizon = 7.6
    fedavg = Run(scenario({"name": "fedavg", "cohort_size": n}, time_s=horizon, clients=clients))
    fedfix = Run(scenario({"name": "fedfix", "period_s": period}, time_s=horizon, clients=clients))
    rounds = math.ceil(horizon / period) - 1  # a tick at the stop time is not taken
    assert len(fedfix.published) == rounds
    fedavg.published = fedavg.published[:rounds]
    assert_same_models(fedavg, fedfix, exact=True)
    assert fedfix.times == [k * period for k in range(1, rounds + 1)]
    applied = accepted(fedfix.events, "applied")
    assert (applied["staleness"] == 0).all()
    if period == 1.0:
        assert applied.equals(accepted(fedavg.events, "applied"))
        assert fedfix.evals.equals(fedavg.evals)
    # Unequal data shares, so p_i = n_i / n really weights (uniform weights give other models).
    sizes = fedfix.sim.client_sizes
    assert sizes.max() > 1.5 * sizes.min()
    uniform = Run(
        scenario(
            {"name": "fedfix", "period_s": period, "weighting": "uniform"},
            time_s=period + 0.1,
            clients=clients,
        )
    )
    assert not torch.allclose(uniform.published[0], fedfix.published[0], atol=1e-4)


def test_fedfix_windows_weight_corrects_for_the_ticks_a_job_spans():
    """Δt = 0.5 and τ = 1: each job spans 2 windows, so d_i = 2·p_i (the paper's ⌈τ_i/Δt⌉ p_i): one
    FedAvg round with η_g = 2. Without the correction d_i = p_i: FedAvg with η_g = 1."""
    n, clients = 6, {"count": 6, "compute": CONSTANT}
    for correction, server_lr in (("windows", 2.0), ("none", 1.0)):
        fedfix = Run(
            scenario(
                {"name": "fedfix", "period_s": 0.5, "correction": correction},
                time_s=5.25,
                clients=clients,
            )
        )
        fedavg = Run(
            scenario(
                {"name": "fedavg", "cohort_size": n, "server_lr": server_lr},
                time_s=5.25,
                clients=clients,
            )
        )
        # Ticks at 0.5, 1.5, … have no return and publish nothing.
        assert fedfix.times == [float(k) for k in range(1, 6)]
        assert_same_models(fedavg, fedfix)


# ---------------------------------------------------------------------------------------------------
# The tick schedule in simulated time, and the closed forms of the schedules (timing only)


def timing_only(algorithm: dict, *, time_s: float, n: int, **clients) -> Run:
    data = {
        "name": "schedule",
        "seed": 3,
        "stop": {"time_s": time_s},
        "training": "none",
        "clients": {"count": n, "compute": CONSTANT, **clients},
        "algorithm": algorithm,
        "eval": {"every_s": 7.0},
    }
    return Run(data)


def joins_per_client(run: Run, n: int) -> np.ndarray:
    applied = run.events[run.events["status"] == "applied"]
    return np.bincount(applied["client"], minlength=n)


def test_fedfix_aggregates_exactly_at_multiples_of_the_period():
    """Ticks at exactly n·Δt (Δt = 0.3 is not a binary fraction); every job after the first starts at a
    tick; each client joins ⌊⌊T/Δt⌋ / ⌈τ_i/Δt⌉⌋ aggregations by T (§1, deterministic F-80 times)."""
    n, period, horizon = 10, 0.3, 40.0
    run = timing_only(
        {"name": "fedfix", "period_s": period},
        time_s=horizon,
        n=n,
        heterogeneity={"dist": "linear", "spread": 0.8},
    )
    ticks = [round(t / period) for t in run.times]
    assert run.times == [k * period for k in ticks]
    assert ticks == list(range(1, math.floor(horizon / period) + 1))  # every tick has a return
    starts = run.events["dispatched_at"].to_numpy()
    assert all(t == round(t / period) * period for t in starts)
    tau = np.asarray(run.sim.timing.speed)
    expected = np.floor(np.floor(horizon / period) / np.ceil(tau / period - 1e-9))
    np.testing.assert_array_equal(joins_per_client(run, n), expected)
    # The evaluations see the versions of the ticks before them.
    for row in run.evals.itertuples():
        assert row.version == sum(t < row.sim_time for t in run.times)  # ties: eval first


def test_async_fedavg_schedule_and_staleness_pattern():
    """F-80: client i joins ⌊T/τ_i⌋ aggregations by T. F-0 (all τ = 1): the first wave has staleness
    0, 1, …, M−1 in arrival order, every later update exactly M−1 (§3.5 Tests)."""
    n, horizon = 10, 30.5
    run = timing_only(
        {"name": "async_fedavg"},
        time_s=horizon,
        n=n,
        heterogeneity={"dist": "linear", "spread": 0.8},
    )
    tau = np.asarray(run.sim.timing.speed)
    np.testing.assert_array_equal(joins_per_client(run, n), np.floor(horizon / tau + 1e-9))
    assert len(run.times) == joins_per_client(run, n).sum()

    flat = timing_only({"name": "async_fedavg"}, time_s=horizon, n=n)
    applied = flat.events[flat.events["status"] == "applied"]
    assert applied["staleness"].iloc[:n].tolist() == list(range(n))
    assert (applied["staleness"].iloc[n:] == n - 1).all() and len(applied) == 30 * n


# ---------------------------------------------------------------------------------------------------
# FedBuff-c and asynchronous FedAvg as FedBuff, with real training and random job times


EXPONENTIAL = {"dist": "exponential", "mean_s": 1.0}


def test_fedbuff_c_equals_fedbuff_after_aggregation_with_every_client_in_flight():
    """FedBuff-c identical (d_i = 1/c) is FedBuff with K = c, C = N, after-aggregation dispatch,
    s ≡ 1, normalize buffer_size: same jobs, same models, with random times and dropped jobs."""
    n, c = 9, 3
    clients = {"count": n, "compute": EXPONENTIAL, "dropout": {"prob": 0.1}}
    fedbuff_c = Run(scenario({"name": "fedbuff_c", "buffer_size": c}, time_s=9.0, clients=clients))
    fedbuff = Run(
        scenario(
            {
                "name": "fedbuff",
                "concurrency": n,
                "buffer_size": c,
                "dispatch_policy": "after_aggregation",
                "staleness": {"kind": "constant"},
            },
            time_s=9.0,
            clients=clients,
        )
    )
    assert_same_models(fedbuff, fedbuff_c, exact=True)
    ours = fedbuff_c.events.replace({"status": {"applied": "buffered"}})
    assert "dropped" in set(ours["status"])
    by_job = ["job", "status"]
    assert (
        ours.sort_values(by_job)
        .reset_index(drop=True)
        .equals(fedbuff.events.sort_values(by_job).reset_index(drop=True))
    )
    # FedBuff counts an update when it is buffered, FedBuff-c when it is applied.
    assert fedbuff_c.evals.drop(columns="updates").equals(fedbuff.evals.drop(columns="updates"))


@pytest.mark.parametrize(
    ("correction", "weighting", "cohort_weighting"),
    [("identical", "data_size", "uniform"), ("participation", "data_size", "data_size")],
)
def test_fedbuff_c_with_c_equal_to_every_client_is_fedavg(correction, weighting, cohort_weighting):
    """F-0, c = M: every client joins every aggregation (f_i = 1), so identical weights give FedAvg
    with uniform p_i and participation weights FedAvg with p_i = n_i/n (§3.5 Tests)."""
    n, clients = 6, {"count": 6, "compute": CONSTANT}
    algo = {"name": "fedbuff_c", "buffer_size": n, "correction": correction, "weighting": weighting}
    fedbuff_c = Run(scenario(algo, time_s=8.5, clients=clients))
    fedavg = Run(
        scenario(
            {"name": "fedavg", "cohort_size": n, "weighting": cohort_weighting},
            time_s=8.5,
            clients=clients,
        )
    )
    assert_same_models(fedavg, fedbuff_c)


def test_async_fedavg_is_fedbuff_with_one_update_per_step():
    """Identical weights (d_i = 1), η_g: FedBuff K = 1, C = N, after aggregation, s ≡ 1, η_g."""
    n, clients = 6, {"count": 6, "compute": EXPONENTIAL}
    async_fedavg = Run(
        scenario(
            {"name": "async_fedavg", "correction": "identical", "server_lr": 0.3},
            time_s=6.0,
            clients=clients,
        )
    )
    fedbuff = Run(
        scenario(
            {
                "name": "fedbuff",
                "concurrency": n,
                "buffer_size": 1,
                "server_lr": 0.3,
                "dispatch_policy": "after_aggregation",
                "staleness": {"kind": "constant"},
            },
            time_s=6.0,
            clients=clients,
        )
    )
    assert_same_models(fedbuff, async_fedavg, exact=True)
    assert (accepted(async_fedavg.events, "applied")["staleness"] > 0).mean() > 0.5
    # ... which is not FedAsync: with stale updates w + α(w_i − w_sent) ≠ (1 − α)w + α w_i.
    fedasync = Run(
        scenario(
            {
                "name": "fedasync",
                "concurrency": n,
                "alpha": 0.3,
                "staleness": {"kind": "constant"},
            },
            time_s=6.0,
            clients=clients,
        )
    )
    assert not torch.allclose(fedasync.published[-1], async_fedavg.published[-1], atol=1e-3)


def test_async_fedavg_rate_weights_are_one_with_equal_speeds():
    """F-0, uniform p_i: d_i = (Σ_j 1/τ_j)·τ_i·p_i = M·1·(1/M) = 1, the identical policy (§3.5)."""
    clients = {"count": 6, "compute": CONSTANT}
    runs = [
        Run(
            scenario(
                {"name": "async_fedavg", "weighting": "uniform", "correction": correction},
                time_s=3.5,
                clients=clients,
            )
        )
        for correction in ("rate", "identical")
    ]
    assert_same_models(*runs)
    assert runs[0].sim.algorithm.d == pytest.approx([1.0] * 6, abs=1e-12)


def test_async_fedavg_rate_weights_follow_the_mean_job_time():
    """F-80 with stragglers: d_i = Λ·E[τ_i]·p_i, so Σ_i d_i/E[τ_i] = Λ (the per-time contribution)."""
    run = timing_only(
        {"name": "async_fedavg", "weighting": "uniform"},
        time_s=1.0,
        n=8,
        heterogeneity={"dist": "linear", "spread": 0.8},
        stragglers={"fraction": 0.25, "slowdown": 4.0},
    )
    tau = np.asarray(run.sim.timing.speed)
    d = np.asarray(run.sim.algorithm.d)
    np.testing.assert_allclose(d, np.sum(1 / tau) * tau / 8, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------
# The robust path (aggregator × Σ d_i) gives back the plain rule with the mean aggregator


@pytest.mark.parametrize(
    "algorithm",
    [{"name": "fedfix", "period_s": 0.4}, {"name": "fedbuff_c", "buffer_size": 3}],
    ids=["fedfix", "fedbuff_c"],
)
def test_robust_path_with_the_mean_is_the_plain_rule(algorithm):
    """A Byzantine section with no Byzantine client switches to the aggregator path; with ``mean``
    the weighted average rescaled by Σ d_i is Σ d_i Δ_i (F-80 speeds: unequal windows and weights)."""
    clients = {
        "count": 8,
        "compute": CONSTANT,
        "heterogeneity": {"dist": "linear", "spread": 0.8},
    }
    plain = Run(scenario(algorithm, time_s=4.0, clients=clients))
    robust = Run(scenario(algorithm, time_s=4.0, clients=clients, byzantine={"fraction": 0}))
    assert robust.sim.algorithm.robust and not plain.sim.algorithm.robust
    assert_same_models(plain, robust)
    median = Run(
        scenario(algorithm, time_s=4.0, clients=clients, aggregator={"name": "coordinate_median"})
    )
    assert not torch.allclose(median.published[-1], plain.published[-1], atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2


@pytest.mark.parametrize(
    ("yaml_text", "command", "expected"),
    [
        ("algorithm: {name: fedfix, period_s: 0}", "validate", "algorithm.period_s: must be > 0"),
        ("algorithm: {name: fedfix, period_s: -2}", "validate", "algorithm.period_s: must be > 0"),
        (
            "algorithm: {name: fedfix, correction: ceil}",
            "validate",
            "algorithm.correction: must be one of",
        ),
        (
            "algorithm: {name: async_fedavg, server_lr: 0}",
            "validate",
            "algorithm.server_lr: must be > 0",
        ),
        ("algorithm: {name: fedbuff_c, buffer_size: 0}", "validate", "algorithm.buffer_size"),
        (
            "{clients: {count: 4}, algorithm: {name: fedbuff_c, buffer_size: 5}}",
            "run",
            "never fills the buffer",
        ),
        (
            "{algorithm: {name: async_fedavg}, aggregator: {name: coordinate_median}}",
            "run",
            "aggregator.name: async_fedavg applies one update at a time",
        ),
    ],
    ids=["zero-period", "negative-period", "bad-correction", "zero-lr", "zero-c", "c>N", "robust"],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, yaml_text, command, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text + "\n")
    args = [command, str(path)]
    if command == "run":
        args += ["--quiet", "--out", str(tmp_path / "run"), "--set", "stop.time_s=1"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert expected in err


@pytest.mark.parametrize(
    "name", ["fedfix", "async_fedavg", "fedbuff_c", "fedavg", "fedasync", "fedbuff"]
)
def test_the_comparison_scenario_switches_algorithm_by_name(root, name):
    """``--set algorithm.name=…`` on scenarios/fedfix_compare.yaml gives a valid scenario for each."""
    path = root / "scenarios" / "fedfix_compare.yaml"
    assert load_scenario(path, [f"algorithm.name={name}"]).algorithm.name == name
