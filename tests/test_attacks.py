"""Byzantine attacks: hand-computed ALIE/IPM, client attacks, label flip, configs and messages."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import Field, ValidationError

import fedsim.robust.attacks as attacks
from fedsim.config_base import Section
from fedsim.errors import ScenarioError
from fedsim.robust.attacks import (
    ATTACKS,
    AlieConfig,
    AttackField,
    GaussianConfig,
    IpmConfig,
    LabelFlipConfig,
    NullifierConfig,
    RandomUpdateConfig,
    ScalingConfig,
    SignFlipConfig,
    alie,
    alie_z,
    client_attack,
    flip_labels,
    gaussian,
    ipm,
    nullifier,
    random_update,
    scaling,
    server_attack,
    sign_flip,
)
from fedsim.scenario import scenario_error

PROPERTY = settings(max_examples=50, deadline=None)


def f64(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# Omniscient attacks, by hand


def test_alie_hand_values():
    honest = f64([[1, 2], [3, 2], [5, 8]])
    # μ = (3, 4); σ (n−1 denominator) = (sqrt(8/2), sqrt(24/2)) = (2, sqrt(12))
    out = alie(honest, n_total=5, f=2, z=1.0)
    assert torch.allclose(out, f64([3 - 2, 4 - math.sqrt(12)]))
    out = alie(honest, n_total=5, f=2, z=-0.5)
    assert torch.allclose(out, f64([3 + 1, 4 + 0.5 * math.sqrt(12)]))
    # n=5, f=2: s = ⌊3.5⌋ − 2 = 1; paper z = Φ⁻¹(4/5) = 0.8416; reference z = Φ⁻¹(2/3) = 0.4307
    assert alie_z(5, 2) == pytest.approx(0.841621, abs=1e-6)
    assert alie_z(5, 2, "reference") == pytest.approx(0.430727, abs=1e-6)
    out = alie(honest, n_total=5, f=2)
    assert torch.allclose(out, f64([3 - 0.841621 * 2, 4 - 0.841621 * math.sqrt(12)]), atol=1e-5)
    # a single honest row: σ = 0, the attack sends μ
    assert torch.equal(alie(honest[:1], n_total=3, f=1), honest[0])


@pytest.mark.parametrize(
    ("n", "f", "paper", "reference"),
    [(25, 5, 0.468, 0.253), (20, 4, 0.385, 0.157), (21, 5, 0.566, 0.319)],
)
def test_alie_z_table_of_the_spec(n, f, paper, reference):
    assert round(alie_z(n, f), 3) == paper
    assert round(alie_z(n, f, "reference"), 3) == reference


def test_ipm_hand_values():
    honest = f64([[1, 2], [3, 4]])
    assert torch.equal(ipm(honest, epsilon=0.5), f64([-1.0, -1.5]))
    assert torch.equal(ipm(honest), f64([-0.2, -0.30000000000000004]))  # ε = 0.1


@PROPERTY
@given(
    honest=st.integers(2, 8).flatmap(
        lambda n: arrays(np.float64, (n, 3), elements=st.floats(-100, 100))
    ),
    z=st.floats(-3, 3),
    epsilon=st.floats(0.01, 100),
)
def test_alie_is_z_sigmas_from_the_mean_and_ipm_opposes_it(honest, z, epsilon):
    h = torch.from_numpy(honest)
    mu, sigma = h.mean(0), h.std(0)
    out = alie(h, n_total=len(h) + 2, f=2, z=z)
    assert torch.allclose(out, mu - z * sigma, rtol=1e-12, atol=1e-12)
    spread = sigma > 1e-6
    assert torch.allclose(((mu - out) / sigma)[spread], torch.full_like(mu, z)[spread])
    attack = ipm(h, epsilon=epsilon)
    inner = float(attack @ mu)
    assert inner == pytest.approx(-epsilon * float(mu @ mu), rel=1e-9, abs=1e-9)
    assert inner <= 0


# --------------------------------------------------------------------------------------------------
# Client attacks


def test_client_attacks_hand_values():
    h = f64([1.0, -2.0, 0.5])
    w = f64([10.0, 0.0, -1.0])
    assert torch.equal(sign_flip(h, w, None), -h)
    assert torch.equal(sign_flip(h, w, None, scale=4.0), f64([-4.0, 8.0, -2.0]))
    assert torch.equal(scaling(h, w, None, factor=3.0), f64([3.0, -6.0, 1.5]))
    assert torch.equal(nullifier(h, w, None), f64([-10.0, 0.0, 1.0]))
    assert torch.equal(w + nullifier(h, w, None), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(
        nullifier(h, w, None, target="zero_delta"), torch.zeros(3, dtype=torch.float64)
    )


def test_noise_attacks_are_seeded_and_have_the_asked_spread():
    d = 200_000
    h, w = torch.full((d,), 0.5), torch.full((d,), 3.0)

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(7)

    g = gaussian(h, w, gen(), std=2.0)
    assert torch.equal(g, gaussian(h, w, gen(), std=2.0))  # same seed, same draw
    # mean and std of 200k N(0, 4) draws: standard errors 0.0045 and 0.0032
    assert abs(float(g.mean())) < 0.03 and abs(float(g.std()) - 2.0) < 0.03
    assert torch.equal(gaussian(h, w, gen(), std=2.0, add_to_honest=True), h + g)
    sent = w + random_update(h, w, gen(), std=1.0)  # the weights sent are N(0, 1)
    assert abs(float(sent.mean())) < 0.015 and abs(float(sent.std()) - 1.0) < 0.015
    assert g.dtype == h.dtype and sent.dtype == w.dtype


def test_label_flip_hand_values_and_involution():
    y = torch.arange(10)
    assert flip_labels(y, 10).tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert flip_labels(torch.tensor([0, 1, 2]), 3).tolist() == [2, 1, 0]
    assert torch.equal(flip_labels(flip_labels(y, 10), 10), y)


def test_client_and_server_dispatch():
    h, w = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 4.0])
    configs = {
        SignFlipConfig(scale=2.0): torch.tensor([-2.0, 4.0]),
        ScalingConfig(factor=5.0): torch.tensor([5.0, -10.0]),
        NullifierConfig(): torch.tensor([-3.0, -4.0]),
        LabelFlipConfig(): h,  # acts on the data; the delta passes through
        AlieConfig(): h,  # acts at the server
        IpmConfig(): h,
    }
    for config, expected in configs.items():
        assert torch.equal(client_attack(config, h, w, None), expected), config.name
    g = torch.Generator().manual_seed(1)
    noisy = client_attack(GaussianConfig(std=3.0), h, w, g)
    assert torch.equal(noisy, gaussian(h, w, torch.Generator().manual_seed(1), std=3.0))
    rnd = client_attack(RandomUpdateConfig(), h, w, torch.Generator().manual_seed(1))
    assert torch.equal(rnd, random_update(h, w, torch.Generator().manual_seed(1)))

    honest = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])
    out = server_attack(AlieConfig(z=1.0), honest, n_total=5, f=2)
    assert torch.equal(out, alie(honest, n_total=5, f=2, z=1.0))
    out = server_attack(AlieConfig(formula="reference"), honest, n_total=25, f=5)
    assert torch.allclose(out, honest.mean(0) - alie_z(25, 5, "reference") * honest.std(0))
    assert torch.equal(
        server_attack(IpmConfig(epsilon=2.0), honest, n_total=5, f=2), -2 * honest.mean(0)
    )
    with pytest.raises(ValueError, match="sign_flip is a client-side attack"):
        server_attack(SignFlipConfig(), honest, n_total=5, f=2)
    assert {c.stage for c in configs} == {"client", "data", "server"}
    assert set(ATTACKS) == {
        "sign_flip",
        "scaling",
        "gaussian",
        "random_update",
        "nullifier",
        "inf",
        "label_flip",
        "alie",
        "ipm",
        "mimic",
        "optimal_alie",
        "optimal_ipm",
    }


def test_doctests():
    assert doctest.testmod(attacks).failed == 0


# --------------------------------------------------------------------------------------------------
# Preconditions and config messages


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: alie_z(4, 4), "attack.z: ALIE needs 0 <= f < n, got n=4, f=4"),
        (
            lambda: alie_z(5, 1, "median"),
            "attack.formula: must be one of paper, reference, got 'median'",
        ),
        (
            lambda: alie(torch.ones(2, 2), n_total=4, f=1, z=math.inf),
            "attack.z: must be a finite number, got inf",
        ),
        (lambda: ipm(torch.ones(2, 2), epsilon=0.0), "attack.epsilon: must be > 0, got 0.0"),
    ],
)
def test_precondition_messages(call, message):
    with pytest.raises(ScenarioError) as err:
        call()
    assert str(err.value) == message


def test_bad_honest_shapes():
    for fn in (lambda h: alie(h, n_total=3, f=1, z=1.0), ipm):
        with pytest.raises(ValueError, match="non-empty"):
            fn(torch.zeros(0, 2))
        with pytest.raises(ValueError, match="non-empty"):
            fn(torch.zeros(3))


class _Byzantine(Section):
    attack: AttackField = Field(default_factory=SignFlipConfig)


def _one_line(data: dict) -> str:
    with pytest.raises(ValidationError) as err:
        _Byzantine.model_validate(data)
    return str(scenario_error(err.value, data))


def test_config_errors_read_as_one_line():
    assert _one_line({"attack": {"name": "backdoor"}}).startswith(
        "attack.name: unknown name 'backdoor'; known: sign_flip, scaling"
    )
    assert (
        _one_line({"attack": {"name": "ipm", "epsilon": 0}})
        == "attack.epsilon: must be > 0.0, got 0"
    )
    assert _one_line({"attack": {"name": "alie", "formula": "x"}}).startswith(
        "attack.formula: must be one of paper or reference"
    )
    parsed = _Byzantine.model_validate({"attack": {"name": "sign_flip", "scale": 4.0}})
    assert parsed.attack == SignFlipConfig(scale=4.0)
    assert _Byzantine.model_validate({"attack": {"scale": 4.0}}).attack == SignFlipConfig(scale=4.0)
