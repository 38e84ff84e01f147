"""MDA, SMEA, CAF, MoNNA, Meamed (fedsim/robust/catalogue.py) against brute force written here in
numpy, their permutation invariance, their preconditions, and each one really used in a run."""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import fedsim
import fedsim.robust.catalogue as catalogue
from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.robust.aggregators import (
    AGGREGATORS,
    CAFConfig,
    MDAConfig,
    MeamedConfig,
    MoNNAConfig,
    SMEAConfig,
    aggregate,
    shortfall,
    trimmed_mean,
)
from fedsim.robust.catalogue import caf, mda, meamed, monna, smea
from fedsim.scenario import load_scenario

PROPERTY = settings(max_examples=40, deadline=None)
NEW = ("mda", "smea", "caf", "monna", "meamed")


@st.composite
def stacks(draw, min_n=3, max_n=7, max_d=3):
    """Rows on a coarse grid (exact ties happen), f with n > 2f, and positive weights."""
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_d))
    grid = st.integers(-6, 6).map(lambda v: v / 2)
    u = draw(arrays(np.float64, (n, d), elements=grid))
    w = draw(arrays(np.float64, (n,), elements=st.floats(0.25, 4.0)))
    f = draw(st.integers(0, (n - 1) // 2))
    return u, w, f


def _gaussian(seed: int, n: int, d: int, bad: int) -> tuple[np.ndarray, np.ndarray]:
    """Continuous rows (no ties) with ``bad`` planted outliers, and weights."""
    gen = np.random.default_rng(seed)
    u = gen.normal(size=(n, d))
    u[:bad] += gen.normal(scale=20.0, size=(bad, d))
    return u, gen.uniform(0.5, 2.0, size=n)


def _weighted_mean(u: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (w[:, None] * u).sum(0) / w.sum()


# --------------------------------------------------------------------------------------------------
# Against brute force


def _mda_candidates(u: np.ndarray, w: np.ndarray, f: int) -> list[np.ndarray]:
    """The weighted means of every subset of n − f rows of minimal diameter."""
    n = len(u)
    best, means = math.inf, []
    for kept in itertools.combinations(range(n), n - f):
        diam = max(
            (np.linalg.norm(u[i] - u[j]) for i, j in itertools.combinations(kept, 2)), default=0
        )
        sub = list(kept)
        if diam < best - 1e-12:
            best, means = diam, [_weighted_mean(u[sub], w[sub])]
        elif abs(diam - best) <= 1e-12:
            means.append(_weighted_mean(u[sub], w[sub]))
    return means


@PROPERTY
@given(data=stacks())
def test_mda_is_a_minimum_diameter_subset_mean(data):
    u, w, f = data
    out = mda(torch.tensor(u), torch.tensor(w), f=f).numpy()
    assert any(np.allclose(out, m, atol=1e-9) for m in _mda_candidates(u, w, f))


def _smea_candidates(u: np.ndarray, w: np.ndarray, f: int) -> list[np.ndarray]:
    """Weighted means of the subsets whose weighted covariance has the smallest top eigenvalue."""
    n = len(u)
    scored = []
    for kept in itertools.combinations(range(n), n - f):
        sub = list(kept)
        a = w[sub] / w[sub].sum()
        centred = u[sub] - a @ u[sub]
        cov = (a[:, None] * centred).T @ centred  # d × d, the definition
        scored.append((np.linalg.eigvalsh(cov)[-1], _weighted_mean(u[sub], w[sub])))
    low = min(s for s, _ in scored)
    return [m for s, m in scored if s <= low + 1e-9 * (1 + abs(low))]


@PROPERTY
@given(data=stacks(max_n=6))
def test_smea_is_a_smallest_top_eigenvalue_subset_mean(data):
    u, w, f = data
    out = smea(torch.tensor(u), torch.tensor(w), f=f).numpy()
    assert any(np.allclose(out, m, atol=1e-8) for m in _smea_candidates(u, w, f))


def _caf(u: np.ndarray, w: np.ndarray, f: int) -> np.ndarray:
    """CAF as the paper writes it, with d × d covariance matrices."""
    n = len(u)
    c = w * n / w.sum()
    best, best_mu = math.inf, None
    while True:
        mu = _weighted_mean(u, c)
        centred = u - mu
        cov = (c[:, None] * centred).T @ centred / c.sum()
        values, vectors = np.linalg.eigh(cov)
        if values[-1] < best:
            best, best_mu = values[-1], mu
        if not c.sum() > n - 2 * f:
            return best_mu
        tau = (centred @ vectors[:, -1]) ** 2
        c = np.clip(c * (1 - tau / tau[c > 0].max()), 0, None)
        if not c.sum() > n - 2 * f:
            return best_mu


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("weighted", [False, True])
def test_caf_against_the_definition(seed, weighted):
    n, f = 9, 3
    u, w = _gaussian(seed, n, 4, bad=f)
    w = w if weighted else np.ones(n)
    out = caf(torch.tensor(u), torch.tensor(w), f=f).numpy()
    assert np.allclose(out, _caf(u, w, f), atol=1e-9)
    # the planted outliers are filtered: the output is near the honest mean, the mean is not
    honest = _weighted_mean(u[f:], w[f:])
    assert np.linalg.norm(out - honest) < 0.3 * np.linalg.norm(_weighted_mean(u, w) - honest)


def _nearest_mean(u: np.ndarray, w: np.ndarray, point: np.ndarray, k: int) -> np.ndarray:
    nearest = np.argsort(np.linalg.norm(u - point, axis=1), kind="stable")[:k]
    return _weighted_mean(u[nearest], w[nearest])


@pytest.mark.parametrize("seed", range(6))
def test_monna_against_the_definition(seed):
    u, w = _gaussian(seed, 9, 3, bad=2)
    median = np.median(u, axis=0)
    out = monna(torch.tensor(u), torch.tensor(w), f=2).numpy()
    assert np.allclose(out, _nearest_mean(u, w, median, 7), atol=1e-12)
    ref = u[5]
    out = monna(torch.tensor(u), torch.tensor(w), f=3, reference=torch.tensor(ref)).numpy()
    assert np.allclose(out, _nearest_mean(u, w, ref, 6), atol=1e-12)


def test_monna_and_meamed_share_ties():
    # distances 1 and 1 to the median 2 of column [1, 2, 3]: the two tied rows share one place
    u = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    assert torch.equal(monna(u, f=1), torch.tensor([2.0], dtype=torch.float64))
    assert torch.equal(meamed(u, f=1), torch.tensor([2.0], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(6))
def test_meamed_against_the_definition(seed):
    u, _ = _gaussian(seed, 9, 5, bad=3)
    expected = np.empty(u.shape[1])
    for j in range(u.shape[1]):
        col = u[:, j]
        closest = np.argsort(np.abs(col - np.median(col)), kind="stable")[:6]
        expected[j] = col[closest].mean()
    assert np.allclose(meamed(torch.tensor(u), f=3).numpy(), expected, atol=1e-12)
    # f = 0 is the mean
    assert np.allclose(meamed(torch.tensor(u), f=0).numpy(), u.mean(0), atol=1e-12)


def test_trimmed_mean_trims_exactly_29_of_100():
    values = np.arange(100.0) ** 2  # asymmetric: trimming 28 or 29 per side differs
    order = np.random.default_rng(0).permutation(100)
    u = torch.tensor(values[order][:, None])
    assert trimmed_mean(u, trim_fraction=0.29).item() == pytest.approx(values[29:71].mean())
    weights = torch.linspace(1.0, 2.0, 100, dtype=torch.float64)  # the weighted path too
    kept = torch.tensor(np.sort(values)[29:71])
    w_kept = weights[torch.tensor(order).argsort()][29:71]
    expected = float((kept * w_kept).sum() / w_kept.sum())
    assert trimmed_mean(u, weights, trim_fraction=0.29).item() == pytest.approx(expected)


# --------------------------------------------------------------------------------------------------
# Properties


@pytest.mark.parametrize("name", NEW)
@PROPERTY
@given(data=stacks(), weighted=st.booleans(), perm=st.randoms(use_true_random=False))
def test_permutation_invariance(name, data, weighted, perm):
    u, w, f = data
    u, w = torch.tensor(u), torch.tensor(w) if weighted else None
    order = list(range(len(u)))
    perm.shuffle(order)
    fn = AGGREGATORS[name]
    a = fn(u, w, f=f)
    b = fn(u[order], None if w is None else w[order], f=f)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)
    same = u[:1].expand_as(u).clone()  # identical inputs: the output is that input
    assert torch.allclose(fn(same, w, f=f), u[0], atol=1e-12)


@pytest.mark.parametrize("name", NEW)
def test_float32_in_float32_out_and_f_zero(name):
    u = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    assert AGGREGATORS[name](u, torch.ones(7), f=2).dtype == torch.float32
    if name != "monna":  # f = 0: every row kept (MoNNA: all n nearest = all)
        assert torch.allclose(AGGREGATORS[name](u.double(), f=0), u.double().mean(0))
    assert torch.allclose(AGGREGATORS["monna"](u.double(), f=0), u.double().mean(0))


@pytest.mark.parametrize("name", NEW)
def test_one_far_row_is_ignored(name):
    u, _ = _gaussian(3, 7, 3, bad=0)
    u[0] = 1e6
    out = AGGREGATORS[name](torch.tensor(u), f=1).numpy()
    assert np.abs(out).max() < 10


# --------------------------------------------------------------------------------------------------
# Preconditions and configs


@pytest.mark.parametrize("name", NEW)
def test_honest_majority_is_required(name):
    with pytest.raises(ScenarioError, match=r"aggregator\.f: .* needs n > 2f, got n=4, f=2"):
        AGGREGATORS[name](torch.zeros(4, 2), f=2)


def test_subset_searches_are_guarded():
    u = torch.zeros(30, 2)
    for fn in (mda, smea):
        with pytest.raises(
            ScenarioError, match=r"aggregator\.max_subsets: .* C\(30, 5\) = 142,506"
        ):
            fn(u, f=5)
        assert torch.equal(fn(u, f=5, max_subsets=200_000), torch.zeros(2))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "aggregator: {name: mda, f: 5}\nalgorithm: {name: fedbuff, buffer_size: 40}",
            "aggregator.max_subsets: MDA would search C(40, 5) = 658,008 subsets",
        ),
        (
            "aggregator: {name: caf, f: 3}\nalgorithm: {name: fedbuff, buffer_size: 6}",
            "aggregator.f: CAF needs n > 2f, got n=6, f=3",
        ),
        ("aggregator: {name: monna, reference: first}", "aggregator.reference"),
    ],
)
def test_bad_scenarios_exit_2_with_one_line(tmp_path, capsys, text, expected):
    assert expected in validate_error(tmp_path, capsys, text)


def validate_error(tmp_path, capsys, text: str) -> str:
    """The one line ``fedsim validate`` prints (exit 2) for the scenario ``text``."""
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_aggregate_dispatches_the_new_configs():
    u, w = (torch.tensor(a) for a in _gaussian(0, 7, 3, bad=1))
    previous = torch.ones(3, dtype=torch.float64)
    assert torch.equal(aggregate(MDAConfig(f=2), u, w), mda(u, w, f=2))
    assert torch.equal(aggregate(SMEAConfig(f=2), u, w), smea(u, w, f=2))
    assert torch.equal(aggregate(CAFConfig(f=2), u, w), caf(u, w, f=2))
    assert torch.equal(aggregate(MeamedConfig(f=2), u, w), meamed(u, w, f=2))
    assert torch.equal(aggregate(MoNNAConfig(f=2), u, w, previous=previous), monna(u, w, f=2))
    by_previous = aggregate(MoNNAConfig(f=2, reference="previous"), u, w, previous=previous)
    assert torch.equal(by_previous, monna(u, w, f=2, reference=previous))


def test_doctests():
    assert doctest.testmod(catalogue).failed == 0


# --------------------------------------------------------------------------------------------------
# Really used in a run


def attacked_run(small_learning: dict, algorithm: dict, aggregator: dict):
    """16 simulated seconds of digits with 20 % sign-flip attackers (about 0.3 s); FedAsync's
    window holds six updates."""
    scenario = {
        **small_learning,
        "stop": {"time_s": 16},
        "eval": {"every_s": 4.0},
        "algorithm": algorithm,
        "aggregator": aggregator,
        "byzantine": {"fraction": 0.2, "attack": {"name": "sign_flip", "scale": 4.0}, "window": 6},
    }
    return fedsim.run(scenario, save=False, device="cpu")


ALGORITHMS = {
    "fedavg": {"name": "fedavg", "cohort_size": 6},
    "fedbuff": {"name": "fedbuff", "concurrency": 6, "buffer_size": 6},
}
"""Every set holds six rows (no dropout, no deadline): no rule falls back."""
MORE_ALGORITHMS = {
    "fedbuff_c": {"name": "fedbuff_c", "buffer_size": 6},
    "fedasync": {"name": "fedasync", "concurrency": 6},
}
"""FedBuff-C aggregates its first six returns; FedAsync a window of six (byzantine.window) that
fills one arrival at a time."""
RULES = {
    "coordinate_median": {},
    "trimmed_mean": {"trim_fraction": 0.2},
    "krum": {"f": 1},
    "geometric_median": {},
    "centered_clipping": {"tau": 0.05},
    **{name: {"f": 1} for name in NEW},
}
"""Every built-in rule but the mean, with keys that make it act on six rows."""
_MEAN_LOSSES: dict[str, np.ndarray] = {}


def _mean_losses(small_learning: dict, algorithm: str, config: dict) -> np.ndarray:
    if algorithm not in _MEAN_LOSSES:
        run = attacked_run(small_learning, config, {"name": "mean"})
        _MEAN_LOSSES[algorithm] = run.evals["loss"].to_numpy()
    return _MEAN_LOSSES[algorithm]


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("algorithm", [*ALGORITHMS, *MORE_ALGORITHMS])
def test_each_aggregator_is_really_used(small_learning, algorithm, name):
    config = {**ALGORITHMS, **MORE_ALGORITHMS}[algorithm]
    aggregator = {"name": name, **RULES[name]}
    result = attacked_run(small_learning, config, aggregator)
    assert result.summary["updates"] > 6
    assert result.summary["byzantine_applied"] > 0
    losses = result.evals["loss"].to_numpy()
    assert not np.array_equal(losses, _mean_losses(small_learning, algorithm, config))
    if algorithm == "fedasync":  # sets of 1 … 5 rows while the window fills, then six
        parsed = load_scenario({"aggregator": aggregator}).aggregator
        expected = sum(shortfall(parsed, n) is not None for n in range(1, 6))
        assert result.summary["robust_fallbacks"] == expected
    else:
        assert result.summary["robust_fallbacks"] == 0
