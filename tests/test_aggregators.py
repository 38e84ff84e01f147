"""Robust aggregators: hand-computed vectors, Hypothesis properties, precondition messages."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import Field, ValidationError

import fedsim.robust.aggregators as agg
import fedsim.robust.rows as rows
from fedsim.config_base import Section
from fedsim.errors import ScenarioError
from fedsim.robust.aggregators import (
    AGGREGATORS,
    AggregatorField,
    CenteredClippingConfig,
    CoordinateMedianConfig,
    GeometricMedianConfig,
    KrumConfig,
    MeanConfig,
    ScreeningConfig,
    TrimmedMeanConfig,
    aggregate,
    centered_clipping,
    check_krum,
    coordinate_median,
    geometric_median,
    krum,
    krum_scores,
    mean,
    screen_updates,
    trimmed_mean,
)
from fedsim.scenario import scenario_error

PROPERTY = settings(max_examples=50, deadline=None)

T = torch.tensor


def f64(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# Hand-computed vectors


def test_mean_hand_values():
    u = f64([[1, 2], [3, 6]])
    assert torch.equal(mean(u), f64([[2, 4]])[0])
    assert torch.allclose(mean(u, f64([[3, 1]])[0]), f64([[1.5, 3.0]])[0])


def test_coordinate_median_hand_values():
    odd = f64([[1, 5], [2, -1], [40, 0]])
    assert torch.equal(coordinate_median(odd), f64([[2, 0]])[0])
    even = f64([[1, 0], [2, 10], [3, 2], [100, -50]])
    assert torch.equal(coordinate_median(even), f64([[2.5, 1.0]])[0])
    # weighted: cumulative weights 0.2, 0.4, 1.0 -> the heavy value
    col = f64([[1], [2], [40]])
    assert torch.equal(coordinate_median(col, T([1.0, 1.0, 3.0])), T([40.0], dtype=torch.float64))
    # weights 1, 0, 1: half the weight on each side of the middle value -> midpoint of 1 and 40
    assert torch.equal(coordinate_median(col, T([1.0, 0.0, 1.0])), T([20.5], dtype=torch.float64))


def test_trimmed_mean_hand_values():
    u = f64([[1], [2], [3], [4], [-90]])
    # n=5, b=⌊0.2·5⌋=1: drop -90 and 4, average 1, 2, 3
    assert torch.equal(trimmed_mean(u, trim_fraction=0.2), T([2.0], dtype=torch.float64))
    # weighted: kept 1 (w 1), 2 (w 1), 3 (w 2) -> (1 + 2 + 6) / 4
    w = T([1.0, 1.0, 2.0, 1.0, 1.0])
    assert torch.allclose(trimmed_mean(u, w, trim_fraction=0.2), T([2.25], dtype=torch.float64))
    # b = ⌊0.19·5⌋ = 0: exactly the mean
    assert torch.equal(trimmed_mean(u, w, trim_fraction=0.19), mean(u, w))


def test_krum_hand_values():
    u = f64([[0], [1], [2], [9], [10]])
    # n=5, f=1: scores over the 2 closest: 0:1+4, 1:1+1, 2:1+4, 9:1+49, 10:1+64
    assert torch.equal(krum_scores(u, f=1), f64([[5, 2, 5, 50, 65]])[0])
    assert torch.equal(krum(u, f=1), T([1.0], dtype=torch.float64))
    # multi-Krum m=2: 1 then the tie 0/2 broken by lexicographic order -> 0; average 0.5
    assert torch.equal(krum(u, f=1, m=2), T([0.5], dtype=torch.float64))
    # weighted multi-Krum average of rows 1 (w 3) and 0 (w 1)
    w = T([1.0, 3.0, 1.0, 1.0, 1.0])
    assert torch.allclose(krum(u, w, f=1, m=2), T([0.75], dtype=torch.float64))


def test_geometric_median_hand_values():
    line = f64([[0], [1], [2], [3], [100]])  # in 1-D the geometric median is the median
    assert torch.allclose(geometric_median(line, tol=1e-12), T([2.0], dtype=torch.float64))
    # three corners and a far point: by symmetry z = (t, t); the far and origin terms cancel -> t=1/2
    square = f64([[0, 0], [1, 0], [0, 1], [50, 50]])
    assert torch.allclose(geometric_median(square, tol=1e-14), f64([[0.5, 0.5]])[0], atol=1e-6)
    # eps larger than every distance: one step gives the weighted mean
    w = T([1.0, 2.0, 3.0, 4.0])
    one = geometric_median(square, w, eps=1e3, max_iter=1)
    assert torch.allclose(one, mean(square, w))


def test_centered_clipping_hand_values():
    u = f64([[0, 0], [2, 0], [100, 0]])
    zero = torch.zeros(2, dtype=torch.float64)
    # clipped differences (0,0), (1,0), (1,0) -> (2/3, 0)
    assert torch.allclose(centered_clipping(u, tau=1.0, iters=1, center=zero), f64([[2 / 3, 0]])[0])
    # second pass from 2/3: differences -2/3 (kept), 4/3 -> 1, 99.3 -> 1: moves by 4/9
    assert torch.allclose(
        centered_clipping(u, tau=1.0, iters=2, center=zero), f64([[10 / 9, 0]])[0]
    )
    assert torch.allclose(centered_clipping(u, tau=math.inf, iters=1, center=zero), mean(u))
    start = f64([[7, -3]])[0]
    assert torch.equal(centered_clipping(u, tau=0.0, iters=3, center=start), start)
    # default start: the weighted mean (a fixed point when nothing is clipped)
    assert torch.allclose(centered_clipping(u, tau=1e9), mean(u))


def test_screen_updates_reasons():
    u = T([[1.0, 0.0], [float("nan"), 0.0], [30.0, 40.0], [float("inf"), 1.0], [3e38, 3e38]])
    keep, why = screen_updates(u)
    assert keep.tolist() == [True, False, True, False, True]
    assert why == [None, "non_finite", None, "non_finite", None]
    keep, why = screen_updates(u, max_norm=50.0)
    assert keep.tolist() == [True, False, True, False, False]  # norm 50 is allowed; 4e38 is not
    assert why == [None, "non_finite", None, "non_finite", "norm_bound"]
    assert ScreeningConfig().max_norm is None
    with pytest.raises(ValidationError):
        ScreeningConfig(max_norm=0)


def test_aggregate_dispatches_every_config():
    u = f64([[1, 0], [2, 10], [3, 2], [4, 4], [100, -50]])
    w = T([1.0, 2.0, 1.0, 1.0, 1.0])
    assert torch.equal(aggregate(MeanConfig(), u, w), mean(u, w))
    assert torch.equal(aggregate(CoordinateMedianConfig(), u, w), coordinate_median(u, w))
    cfg = TrimmedMeanConfig(trim_fraction=0.2)
    assert torch.equal(aggregate(cfg, u, w), trimmed_mean(u, w, trim_fraction=0.2))
    assert torch.equal(aggregate(KrumConfig(f=1), u, w), krum(u, w, f=1))
    gm = GeometricMedianConfig(tol=1e-9)
    assert torch.equal(aggregate(gm, u, w), geometric_median(u, w, tol=1e-9))
    previous = f64([[1, 1]])[0]
    starts = {
        "previous": previous,
        "zero": torch.zeros(2, dtype=torch.float64),
        "mean": mean(u, w),
        "median": coordinate_median(u, w),
    }
    for kind, start in starts.items():
        cc = CenteredClippingConfig(tau=2.0, iters=2, center=kind)
        expected = centered_clipping(u, w, tau=2.0, iters=2, center=start)
        assert torch.equal(aggregate(cc, u, w, previous=previous), expected), kind
    cc = CenteredClippingConfig(tau=2.0, center="previous")
    no_previous = centered_clipping(u, w, tau=2.0, center=torch.zeros(2, dtype=torch.float64))
    assert torch.equal(aggregate(cc, u, w), no_previous)  # zero before the first aggregate
    assert set(AGGREGATORS) == {
        "mean",
        "coordinate_median",
        "trimmed_mean",
        "krum",
        "geometric_median",
        "centered_clipping",
        "mda",
        "smea",
        "caf",
        "monna",
        "meamed",
    }


def test_chunked_and_gram_paths_agree(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(9, 50, generator=gen, dtype=torch.float64)
    w = torch.rand(9, generator=gen, dtype=torch.float64) + 0.1
    whole = (coordinate_median(u, w), trimmed_mean(u, w, trim_fraction=0.3), krum_scores(u, f=2))
    monkeypatch.setattr(rows, "CHUNK_ELEMENTS", 40)
    monkeypatch.setattr(rows, "DIRECT_DISTANCE_ELEMENTS", 0)
    parts = (coordinate_median(u, w), trimmed_mean(u, w, trim_fraction=0.3), krum_scores(u, f=2))
    for a, b in zip(whole, parts, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)


def test_float32_in_float32_out():
    u = torch.arange(30, dtype=torch.float32).reshape(6, 5)
    for name, fn in AGGREGATORS.items():
        kwargs = {"krum": {"f": 1}}.get(name, {})
        assert fn(u, torch.ones(6), **kwargs).dtype == torch.float32, name


def test_doctests():
    assert doctest.testmod(agg).failed == 0
    assert doctest.testmod(rows).failed == 0


# --------------------------------------------------------------------------------------------------
# Preconditions: one message naming the scenario key


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda u: trimmed_mean(u, trim_fraction=0.6),
            "aggregator.trim_fraction: must be < 0.5, got 0.6",
        ),
        (
            lambda u: trimmed_mean(u, trim_fraction=0.5),
            "aggregator.trim_fraction: must be < 0.5, got 0.5",
        ),
        (
            lambda u: trimmed_mean(u, trim_fraction=-0.1),
            "aggregator.trim_fraction: must be >= 0, got -0.1",
        ),
        (lambda u: krum(u, f=2), "aggregator.f: Krum needs n > 2f+2, got n=5, f=2"),
        (lambda u: krum(u, f=-1), "aggregator.f: must be >= 0, got -1"),
        (
            lambda u: krum(u, f=1, m=5),
            "aggregator.m: multi-Krum needs 1 <= m <= n-f, got m=5, n=5, f=1",
        ),
        (
            lambda u: krum(u, f=1, m=0),
            "aggregator.m: multi-Krum needs 1 <= m <= n-f, got m=0, n=5, f=1",
        ),
        (lambda u: geometric_median(u, tol=-1.0), "aggregator.tol: must be >= 0, got -1.0"),
        (lambda u: geometric_median(u, max_iter=0), "aggregator.max_iter: must be >= 1, got 0"),
        (lambda u: geometric_median(u, eps=0.0), "aggregator.eps: must be > 0, got 0.0"),
        (lambda u: centered_clipping(u, tau=-1.0), "aggregator.tau: must be >= 0, got -1.0"),
        (lambda u: centered_clipping(u, tau=math.nan), "aggregator.tau: must be >= 0, got nan"),
        (lambda u: centered_clipping(u, iters=0), "aggregator.iters: must be >= 1, got 0"),
        (lambda u: screen_updates(u, max_norm=0.0), "screening.max_norm: must be > 0, got 0.0"),
    ],
)
def test_precondition_messages(call, message):
    u = torch.zeros(5, 3)
    with pytest.raises(ScenarioError) as err:
        call(u)
    assert str(err.value) == message


def test_check_krum_for_parse_time():
    check_krum(7, f=2, m=5)
    with pytest.raises(ScenarioError, match=r"^aggregator\.f: Krum needs n > 2f\+2, got n=6, f=2$"):
        check_krum(6, f=2)


@pytest.mark.parametrize(
    ("updates", "weights", "match"),
    [
        (torch.zeros(3), None, "non-empty"),
        (torch.zeros(0, 3), None, "non-empty"),
        (torch.zeros(2, 3, dtype=torch.int64), None, "floating point"),
        (torch.zeros(2, 3), torch.ones(3), "shape"),
        (torch.zeros(2, 3), T([1.0, -1.0]), ">= 0"),
        (torch.zeros(2, 3), T([0.0, 0.0]), "not all zero"),
        (torch.zeros(2, 3), T([1.0, math.nan]), "finite"),
    ],
)
def test_bad_shapes_and_weights_are_value_errors(updates, weights, match):
    for name, fn in AGGREGATORS.items():
        kwargs = {"krum": {"f": 0}}.get(name, {})
        with pytest.raises(ValueError, match=match):
            fn(updates, weights, **kwargs)


def test_center_shape_is_checked():
    with pytest.raises(ValueError, match="center must have shape"):
        centered_clipping(torch.zeros(2, 3), center=torch.zeros(2))


class _Scenario(Section):
    aggregator: AggregatorField = Field(default_factory=MeanConfig)


def _one_line(data: dict) -> str:
    with pytest.raises(ValidationError) as err:
        _Scenario.model_validate(data)
    return str(scenario_error(err.value, data))


def test_config_errors_read_as_one_line():
    assert (
        _one_line({"aggregator": {"name": "trimmed_mean", "trim_fraction": 0.6}})
        == "aggregator.trim_fraction: must be < 0.5, got 0.6"
    )
    assert (
        _one_line({"aggregator": {"name": "krum", "f": -1}}) == "aggregator.f: must be >= 0, got -1"
    )
    assert _one_line({"aggregator": {"name": "median"}}).startswith(
        "aggregator.name: unknown name 'median'; known: mean, coordinate_median"
    )
    assert _one_line({"aggregator": {"trim_fraction": 0.2}}).startswith(
        "aggregator.trim_fraction: unknown key"
    )
    parsed = _Scenario.model_validate(
        {"aggregator": {"name": "trimmed_mean", "trim_fraction": 0.2}}
    )
    assert parsed.aggregator == TrimmedMeanConfig(trim_fraction=0.2)
    assert _Scenario().aggregator == MeanConfig()


# --------------------------------------------------------------------------------------------------
# Properties


@st.composite
def stacks(draw, min_n: int = 1, max_n: int = 8, max_d: int = 4, bound: float = 100.0):
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_d))
    values = draw(arrays(np.float64, (n, d), elements=st.floats(-bound, bound)))
    weights = draw(arrays(np.float64, (n,), elements=st.floats(0.1, 10.0)))
    return torch.from_numpy(values), torch.from_numpy(weights)


CASES = {
    "mean": {},
    "coordinate_median": {},
    "trimmed_mean": {"trim_fraction": 0.3},
    "krum": {"f": 1},
    "multi_krum": {"f": 1, "m": 3},
    "geometric_median": {"tol": 0.0, "max_iter": 30},
    "centered_clipping": {"tau": 5.0, "iters": 3},
}


def _call(case: str, u: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    name = "krum" if case == "multi_krum" else case
    return AGGREGATORS[name](u, w, **CASES[case])


@pytest.mark.parametrize("case", list(CASES))
@PROPERTY
@given(data=stacks(min_n=5), weighted=st.booleans(), perm=st.randoms(use_true_random=False))
def test_permutation_invariance_and_identical_inputs(case, data, weighted, perm):
    u, w = data
    w = w if weighted else None
    order = list(range(u.shape[0]))
    perm.shuffle(order)
    permuted = _call(case, u[order], None if w is None else w[order])
    # Weiszfeld may stop an iteration earlier or later when rounding differs
    tol = 1e-6 if case == "geometric_median" else 1e-9
    assert torch.allclose(_call(case, u, w), permuted, rtol=tol, atol=tol)
    same = u[:1].expand_as(u).clone()  # all inputs identical: the output is that input
    assert torch.allclose(_call(case, same, w), u[0], rtol=1e-12, atol=1e-12)


big = st.floats(1e3, 1e12) | st.floats(-1e12, -1e3)


def _inside(out: torch.Tensor, honest: torch.Tensor) -> bool:
    slack = 1e-9 * (1 + honest.abs().max())
    return bool(
        ((out >= honest.min(0).values - slack) & (out <= honest.max(0).values + slack)).all()
    )


@PROPERTY
@given(data=stacks(min_n=1, max_n=8), extra=st.data())
def test_median_stays_in_honest_range(data, extra):
    honest, _ = data
    n_h, d = honest.shape
    n_bad = extra.draw(st.integers(0, n_h - 1))  # fewer than half of all rows
    bad = torch.tensor(extra.draw(arrays(np.float64, (n_bad, d), elements=big)))
    u = torch.cat([honest, bad.reshape(n_bad, d)])
    order = torch.tensor(extra.draw(st.permutations(range(len(u)))))
    assert _inside(coordinate_median(u[order]), honest)


@PROPERTY
@given(data=stacks(min_n=1, max_n=8), extra=st.data())
def test_weighted_median_stays_in_honest_range(data, extra):
    honest, w_h = data
    d = honest.shape[1]
    n_bad = extra.draw(st.integers(0, 4))
    bad = torch.tensor(extra.draw(arrays(np.float64, (n_bad, d), elements=big))).reshape(n_bad, d)
    # Byzantine rows hold less than half of the total weight
    shares = torch.tensor(extra.draw(arrays(np.float64, (n_bad,), elements=st.floats(0.01, 1.0))))
    w_bad = 0.999 * w_h.sum() * shares / max(1.0, float(shares.sum()))
    u, w = torch.cat([honest, bad]), torch.cat([w_h, w_bad])
    assert _inside(coordinate_median(u, w), honest)


@PROPERTY
@given(
    data=stacks(min_n=1, max_n=10),
    trim=st.floats(0.0, 0.49),
    weighted=st.booleans(),
    extra=st.data(),
)
def test_trimmed_mean_stays_in_honest_range(data, trim, weighted, extra):
    honest, w_h = data
    n_h, d = honest.shape
    n_bad = extra.draw(st.integers(0, 6))
    while n_bad > int(trim * (n_h + n_bad)):  # at most ⌊trim·n⌋ Byzantine rows
        n_bad -= 1
    bad = torch.tensor(extra.draw(arrays(np.float64, (n_bad, d), elements=big))).reshape(n_bad, d)
    w_bad = torch.tensor(extra.draw(arrays(np.float64, (n_bad,), elements=st.floats(0.1, 10.0))))
    u = torch.cat([honest, bad])
    w = torch.cat([w_h, w_bad]) if weighted else None
    assert _inside(trimmed_mean(u, w, trim_fraction=trim), honest)


@PROPERTY
@given(
    f=st.integers(0, 3),
    extra_honest=st.integers(0, 4),
    d=st.integers(1, 4),
    m=st.integers(1, 3),
    extra=st.data(),
)
def test_krum_selects_an_honest_vector(f, extra_honest, d, m, extra):
    n_h = f + 3 + extra_honest  # n = n_h + f > 2f + 2
    center = torch.tensor(extra.draw(arrays(np.float64, (d,), elements=st.floats(-10, 10))))
    noise = extra.draw(arrays(np.float64, (n_h, d), elements=st.floats(-1, 1)))
    honest = center + torch.tensor(noise)
    far = torch.tensor(extra.draw(arrays(np.float64, (f, d), elements=big))).reshape(f, d)
    u = torch.cat([honest, center + far])
    order = extra.draw(st.permutations(range(len(u))))
    out = krum(u[order], f=f)
    assert any(torch.equal(out, row) for row in honest)
    m = min(m, n_h)
    multi = krum(u[order], f=f, m=m)
    assert _inside(multi, honest)


def _objective(z: np.ndarray, u: np.ndarray, w: np.ndarray) -> float:
    return float((w * np.linalg.norm(u - z, axis=1)).sum())


@PROPERTY
@given(data=stacks(min_n=3, max_n=6, max_d=3, bound=10.0))
def test_geometric_median_minimises_weighted_distances(data):
    u, w = data
    z = geometric_median(u, w, tol=1e-13, max_iter=20_000, eps=1e-12).numpy()
    un, wn = u.numpy(), w.numpy()
    starts = [un.mean(0), *un]
    best = min(
        scipy.optimize.minimize(
            _objective,
            x0,
            args=(un, wn),
            method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20_000},
        ).fun
        for x0 in starts[:3]
    )
    best = min(best, *(_objective(x, un, wn) for x in starts))
    # Weiszfeld creeps when the minimiser sits next to an input, hence a relative 1e-6
    assert _objective(z, un, wn) <= best + 1e-6 * (1 + best)


@PROPERTY
@given(
    data=stacks(min_n=1, bound=1e6),
    tau=st.floats(0.0, 50.0),
    iters=st.integers(1, 5),
    extra=st.data(),
)
def test_centered_clipping_moves_at_most_iters_tau(data, tau, iters, extra):
    u, w = data
    v0 = torch.tensor(extra.draw(arrays(np.float64, (u.shape[1],), elements=st.floats(-100, 100))))
    out = centered_clipping(u, w, tau=tau, iters=iters, center=v0)
    assert float(torch.linalg.vector_norm(out - v0)) <= iters * tau * (1 + 1e-9) + 1e-9
