"""The attacks ByzFL 0.0.11 has that fedsim lacked (issue 13): Gaussian with a mean, inf, mimic and
the "optimal" ALIE and IPM, each against a computation written here, then in short real runs."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from fedsim.rng import SeedStreams
from fedsim.robust.aggregators import (
    CenteredClippingConfig,
    CoordinateMedianConfig,
    GeometricMedianConfig,
    KrumConfig,
    MeanConfig,
    TrimmedMeanConfig,
    aggregate,
)
from fedsim.robust.attacks import (
    GaussianConfig,
    InfConfig,
    MimicConfig,
    OptimalAlieConfig,
    OptimalIpmConfig,
    alie,
    alie_z,
    client_attack,
    gaussian,
    infinite,
    line_search,
    mimic,
    optimal_alie_z,
    optimal_ipm_epsilon,
    server_attack,
)
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation

# --------------------------------------------------------------------------------------------------
# Client-side: Gaussian with a mean, inf


def test_gaussian_mean_is_added_to_the_same_draw_and_zero_mean_is_today_bit_for_bit():
    d = 200_000
    h, w = torch.full((d,), 0.5), torch.zeros(d)
    draw = 3.0 * torch.randn(d, generator=torch.Generator().manual_seed(5))  # N(0, 9), by hand
    default = client_attack(GaussianConfig(std=3.0), h, w, torch.Generator().manual_seed(5))
    assert torch.equal(default, draw)  # mean 0: the bytes of the attack as it was
    shifted = gaussian(h, w, torch.Generator().manual_seed(5), std=3.0, mean=-7.0)
    assert torch.equal(shifted, draw + -7.0)
    # 200k draws of N(−7, 9): the sample mean's standard error is 0.0067
    assert abs(float(shifted.mean()) + 7.0) < 0.04
    honest_plus = client_attack(
        GaussianConfig(std=3.0, mean=2.0, add_to_honest=True),
        h,
        w,
        torch.Generator().manual_seed(5),
    )
    assert torch.equal(honest_plus, h + (draw + 2.0))
    assert GaussianConfig().mean == 0.0


def test_inf_sends_its_value_in_every_coordinate():
    delta = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    sent = client_attack(InfConfig(), delta, torch.zeros(3), None)
    assert sent.dtype == torch.float64 and sent.shape == (3,)
    assert bool(torch.isposinf(sent).all())
    assert torch.equal(
        infinite(delta, delta, None, value=-1e30), torch.full((3,), -1e30, dtype=torch.float64)
    )
    assert math.isnan(float(client_attack(InfConfig(value=math.nan), delta, delta, None)[0]))


# --------------------------------------------------------------------------------------------------
# Mimic


def test_mimic_copies_the_target_row():
    honest = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    for target in range(3):
        out = server_attack(MimicConfig(), honest, n_total=5, f=2, target=target)
        assert out.tolist() == honest.tolist()[target]
        out[0] = 99.0  # a copy: the honest row is untouched
        assert honest[target, 0] != 99.0
    with pytest.raises(ValueError, match="target row 3 is not one of 3 honest rows"):
        mimic(honest, target=3)


def _small(small_learning: dict, **extra) -> dict:
    data = dict(small_learning)
    data.update(extra)
    return data


def test_mimic_copies_the_honest_client_ranked_first_by_the_run_stream(small_learning):
    """The algorithms' choice of the copied row, against the ranking drawn here from the seed."""
    byz = {"clients": [0, 1], "attack": {"name": "mimic"}}
    scenario = load_scenario(_small(small_learning, byzantine=byz, algorithm={"name": "fedbuff"}))
    algorithm = Simulation(scenario, device="cpu").algorithm
    rank = SeedStreams(scenario.seed).generator("byzantine.mimic").permutation(20)
    rows = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 3)
    mask = torch.tensor([True, False, False, True, False])
    for honest_clients in ([4, 9, 17], [17, 4, 12], [5, 6, 7]):
        first = min(honest_clients, key=lambda c: rank[c])
        expected = rows[~mask][honest_clients.index(first)]
        ones = torch.ones(5, dtype=torch.float64)
        out = algorithm.attack_vector(rows, mask, honest_clients, ones, MeanConfig())
        assert torch.equal(out, expected)
    other = Simulation(load_scenario(_small(small_learning, byzantine=byz, seed=11)), device="cpu")
    assert other.algorithm.mimic_rank != algorithm.mimic_rank  # another seed, another ranking


# --------------------------------------------------------------------------------------------------
# ALIE's z when the set is mostly Byzantine: a documented clamp, not an infinite z


@pytest.mark.parametrize(("n", "f"), [(10, 6), (10, 9), (5, 3), (3, 2)])
def test_alie_z_of_a_byzantine_majority_is_clamped_to_the_last_finite_case(n, f):
    # s = ⌊n/2 + 1⌋ − f ≤ 0: Φ⁻¹((n − s)/n) would be Φ⁻¹(≥ 1) = ∞; clamped to Φ⁻¹((n − 1)/n)
    assert math.floor(n / 2 + 1) - f <= 0
    assert alie_z(n, f) == NormalDist().inv_cdf((n - 1) / n)
    m = n - f
    expected = 0.0 if m == 1 else NormalDist().inv_cdf((m - 1) / m)
    assert alie_z(n, f, "reference") == expected
    honest = torch.tensor([[1.0, 2.0], [3.0, 7.0]])[: n - f]
    out = alie(honest, n_total=n, f=f)
    assert bool(torch.isfinite(out).all())


def test_alie_z_below_the_majority_is_the_formula_unchanged():
    for n, f in [(25, 5), (20, 4), (10, 4)]:
        s = math.floor(n / 2 + 1) - f
        assert alie_z(n, f) == NormalDist().inv_cdf((n - s) / n)
        assert alie_z(n, f, "reference") == NormalDist().inv_cdf((n - f - s) / (n - f))
    assert alie_z(2, 1, "reference") == 0.0  # one honest row: σ = 0, z cannot matter
    assert alie_z(2, 0) == 0.0  # paper, n = 2, f = 0: Φ⁻¹(0) clamped to Φ⁻¹(1/2)


# --------------------------------------------------------------------------------------------------
# Optimal ALIE / IPM: the chosen factor against a grid of fixed ones, same aggregator

AGGREGATORS = [
    MeanConfig(),
    CoordinateMedianConfig(),
    TrimmedMeanConfig(trim_fraction=0.3),
    KrumConfig(f=4),
    GeometricMedianConfig(),
    CenteredClippingConfig(),
]


def _distance(cfg, honest: torch.Tensor, f: int, v: torch.Tensor) -> float:
    """ByzFL's objective, written out: ‖agg(honest ∪ f·{v}) − mean(honest)‖₂."""
    rows = torch.cat([honest, v.unsqueeze(0).repeat(f, 1)])
    return float(torch.linalg.norm(aggregate(cfg, rows) - honest.mean(0)))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cfg", AGGREGATORS, ids=lambda c: c.name)
def test_optimal_factor_is_at_least_as_damaging_as_a_grid_of_fixed_factors(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    n_h, f, d = 9, 4, 30  # heterogeneous honest rows: a common drift plus noise
    honest = (torch.randn(n_h, d, generator=g) + 0.5 * torch.randn(d, generator=g)).double()
    mu, sigma = honest.mean(0), honest.std(0)

    def agg(v: torch.Tensor) -> torch.Tensor:
        return aggregate(cfg, torch.cat([honest, v.expand(f, -1)]))

    grid = [10.0 * i / 40 for i in range(41)]
    # ALIE: the paper's z and a grid of z in [0, z_max]
    out = server_attack(OptimalAlieConfig(), honest, n_total=n_h + f, f=f, aggregate=agg)
    z = optimal_alie_z(honest, aggregate=agg)
    assert 0.0 <= z <= 10.0
    assert torch.equal(out, alie(honest, n_total=n_h + f, f=f, z=z))
    assert torch.allclose(out, mu - z * sigma, atol=1e-12)
    fixed = [*grid, alie_z(n_h + f, f), alie_z(n_h + f, f, "reference")]
    best_fixed = max(_distance(cfg, honest, f, mu - t * sigma) for t in fixed)
    # 1e-3: the geometric median is iterated to a tolerance, so equal damages differ in noise
    assert _distance(cfg, honest, f, out) >= best_fixed * (1 - 1e-3)
    # IPM: the reference ε = 0.1, the large ε = 100 of the paper is outside [0, ε_max]
    out = server_attack(OptimalIpmConfig(), honest, n_total=n_h + f, f=f, aggregate=agg)
    eps = optimal_ipm_epsilon(honest, aggregate=agg)
    assert 0.0 <= eps <= 10.0
    assert torch.equal(out, -eps * mu)
    best_fixed = max(_distance(cfg, honest, f, -e * mu) for e in [*grid, 0.1])
    assert _distance(cfg, honest, f, out) >= best_fixed * (1 - 1e-3)
    if cfg.name == "mean":  # the damage grows without bound: the search takes the range's end
        assert z == 10.0 and eps == 10.0


def test_optimal_attacks_without_an_aggregator_aim_at_the_plain_mean():
    honest = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]], dtype=torch.float64)
    out = server_attack(OptimalIpmConfig(epsilon_max=4.0), honest, n_total=5, f=2)
    assert torch.equal(out, -4.0 * honest.mean(0))
    out = server_attack(OptimalAlieConfig(z_max=3.0), honest, n_total=5, f=2)
    assert torch.allclose(out, honest.mean(0) - 3.0 * honest.std(0))


def test_line_search_finds_a_peak_an_edge_and_keeps_the_first_of_ties():
    assert line_search(lambda x: -((x - 2.3) ** 2), high=10.0, evals=32) == pytest.approx(
        2.3, abs=10.0 / 15 / 2**8
    )
    # damage that rises to an edge at 3.7 and collapses beyond (Krum's choice flips)
    edge = line_search(lambda x: x if x <= 3.7 else 0.0, high=10.0, evals=32)
    assert 3.7 - 10.0 / 15 / 2**7 <= edge <= 3.7
    assert line_search(lambda x: 1.0, high=5.0, evals=10) == 0.0
    calls: list[float] = []
    line_search(lambda x: calls.append(x) or -x, high=1.0, evals=7)
    assert len(calls) <= 7 and all(0.0 <= x <= 1.0 for x in calls)
    with pytest.raises(ValueError, match="positive finite"):
        line_search(lambda x: x, high=math.inf, evals=4)


# --------------------------------------------------------------------------------------------------
# Short real runs: each attack changes the result; inf is rejected and logged

ALGORITHMS = {
    "fedavg": {"name": "fedavg", "cohort_size": 6},
    "fedbuff": {"name": "fedbuff", "concurrency": 8, "buffer_size": 6},
}
UNREAD = {"dropped", "in_flight", "cancelled", "late"}
"""Statuses of jobs the server never read (FedAvg's ``buffered``: reported to a round still open at
the stop; FedBuff's ``buffered`` is read, screened and accepted)."""


def _run(small_learning: dict, algorithm: str, attack: dict, aggregator: dict | None = None):
    byz = {"clients": [0, 3, 7, 11, 15], "attack": attack}
    data = _small(
        small_learning,
        byzantine=byz,
        algorithm=ALGORITHMS[algorithm],
        aggregator=aggregator or {"name": "mean"},
        stop={"time_s": 30},
    )
    sim = Simulation(load_scenario(data), device="cpu")
    result = sim.run()
    return result, sim.servers[0].params


CHANGES = [
    ({"name": "gaussian", "std": 0.01, "mean": 0.05}, None),
    ({"name": "mimic"}, None),
    ({"name": "optimal_alie", "evals": 8}, {"name": "trimmed_mean", "trim_fraction": 0.2}),
    ({"name": "optimal_ipm", "evals": 8}, {"name": "trimmed_mean", "trim_fraction": 0.2}),
]


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize(("attack", "aggregator"), CHANGES, ids=[c[0]["name"] for c in CHANGES])
def test_each_new_attack_changes_the_run(small_learning, algorithm, attack, aggregator):
    honest = {"name": "scaling", "factor": 1.0}  # the same attackers, sending what they trained
    clean, clean_params = _run(small_learning, algorithm, honest, aggregator)
    attacked, params = _run(small_learning, algorithm, attack, aggregator)
    assert bool(torch.isfinite(params).all())
    assert not torch.equal(params, clean_params)
    ev = attacked.events
    assert set(ev.loc[ev["byzantine"], "attack"]) == {attack["name"]}
    assert attacked.summary["byzantine_applied"] > 0
    assert (ev["status"] != "rejected").all()
    # the timing does not depend on the attack: the same jobs arrive at the same times
    assert ev["sim_time"].tolist() == clean.events["sim_time"].tolist()
    if attack["name"] == "gaussian":  # the mean key matters
        _, zero_mean = _run(small_learning, algorithm, {**attack, "mean": 0.0}, aggregator)
        assert not torch.equal(params, zero_mean)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_inf_is_rejected_with_its_reason_and_never_reaches_the_model(small_learning, algorithm):
    result, params = _run(small_learning, algorithm, {"name": "inf"})
    ev = result.events
    unread = UNREAD | ({"buffered"} if algorithm == "fedavg" else set())
    read = ev[~ev["status"].isin(unread)]
    byz, honest = read[read["byzantine"]], read[~read["byzantine"]]
    assert len(byz) > 0 and set(byz["status"]) == {"rejected"}
    assert set(byz["reason"]) == {"non_finite"}
    assert set(honest["status"]) <= {"applied", "buffered"} and len(honest) > 0
    assert bool(torch.isfinite(params).all())
    assert np.isfinite(result.summary["final_accuracy"])
    _, clean_params = _run(small_learning, algorithm, {"name": "scaling", "factor": 1.0})
    assert not torch.equal(params, clean_params)  # their updates are missing from the model


def test_alie_on_mostly_byzantine_buffers_runs_to_the_end(small_learning):
    """Half the clients attack and the buffer is 3: many buffers hold 2 Byzantine rows of 3, where
    the paper's z is infinite. The clamp keeps the run going, with a finite model."""
    byz = {"fraction": 0.5, "attack": {"name": "alie"}}
    algo = {"name": "fedbuff", "concurrency": 6, "buffer_size": 3}
    data = _small(small_learning, byzantine=byz, algorithm=algo, stop={"time_s": 30})
    sim = Simulation(load_scenario(data), device="cpu")
    majority = []
    combine = sim.algorithm.combine

    def spy(jobs, deltas, raw, **kw):
        n_byz = sum(sim.algorithm.ctx.clients.byzantine[j.client] for j in jobs)
        majority.append(math.floor(len(jobs) / 2 + 1) - n_byz <= 0 < len(jobs) - n_byz)
        return combine(jobs, deltas, raw, **kw)

    sim.algorithm.combine = spy
    result = sim.run()
    assert any(majority)  # the clamp was really needed
    assert bool(torch.isfinite(sim.servers[0].params).all())
    assert result.summary["stop_reason"] != "error"


@pytest.mark.parametrize("attack", [{"name": "mimic"}, {"name": "optimal_ipm", "evals": 8}])
def test_fedasync_attacks_from_its_honest_window(small_learning, attack):
    """FedAsync has no set to attack: the Byzantine arrival imitates the last honest deltas."""
    algorithm = {"name": "fedasync", "concurrency": 5}
    byz = {"clients": [0, 3, 7, 11, 15], "attack": attack}
    params, events = [], []
    for sent in (attack, {"name": "scaling", "factor": 1.0}):
        data = _small(
            small_learning,
            byzantine={**byz, "attack": sent},
            algorithm=algorithm,
            aggregator={"name": "trimmed_mean", "trim_fraction": 0.2},
            stop={"time_s": 30},
        )
        sim = Simulation(load_scenario(data), device="cpu")
        events.append(sim.run().events)
        params.append(sim.servers[0].params)
    ev = events[0]
    assert (ev.loc[ev["byzantine"], "attack"] == attack["name"]).all()
    assert (ev.loc[ev["byzantine"], "status"] == "applied").sum() > 0
    assert not torch.equal(params[0], params[1])
    assert bool(torch.isfinite(params[0]).all())
