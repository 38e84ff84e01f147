"""Pre-aggregators (fedsim/robust/preaggregators.py): NNM, bucketing, ARC and static clipping against
numpy written here, their symmetries, the ``pre`` key, and each one really used in a run."""

from __future__ import annotations

import doctest
import math
import pickle
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import fedsim.robust.preaggregators as pre
from fedsim import plugins
from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.robust.aggregators import (
    CoordinateMedianConfig,
    MDAConfig,
    MeanConfig,
    aggregate,
    is_plain_mean,
    mda,
    mean,
)
from fedsim.robust.preaggregators import (
    ARCConfig,
    BucketingConfig,
    ClippingConfig,
    NNMConfig,
    arc,
    bucketing,
    nnm,
    pre_aggregate,
    static_clipping,
)
from fedsim.scenario import load_scenario

from .test_aggregators_catalogue import ALGORITHMS, attacked_run, validate_error

PROPERTY = settings(max_examples=40, deadline=None)


@st.composite
def stacks(draw, min_n=2, max_n=9, max_d=3):
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_d))
    u = draw(arrays(np.float64, (n, d), elements=st.integers(-8, 8).map(lambda v: v / 4)))
    w = draw(arrays(np.float64, (n,), elements=st.floats(0.25, 4.0)))
    f = draw(st.integers(0, n - 1))
    return u, w, f


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# Against numpy


@pytest.mark.parametrize("seed", range(5))
def test_nnm_against_the_definition(seed):
    rng = np.random.default_rng(seed)
    u, w = rng.normal(size=(8, 3)), rng.uniform(0.5, 2.0, 8)
    f = 3
    expected = np.empty_like(u)
    for i in range(8):
        near = np.argsort(np.linalg.norm(u - u[i], axis=1), kind="stable")[: 8 - f]
        expected[i] = (w[near, None] * u[near]).sum(0) / w[near].sum()
    rows, weights = nnm(torch.tensor(u), torch.tensor(w), f=f)
    assert np.allclose(rows.numpy(), expected, atol=1e-12)
    assert np.array_equal(weights.numpy(), w)


def test_nnm_ties_share_places():
    rows, _ = nnm(torch.tensor([[0.0], [1.0], [-1.0]], dtype=torch.float64), f=1)
    # row 0: neighbours 1 and -1 are tied for the second place: (0 + (1 - 1)/2) / 2
    assert rows[:, 0].tolist() == [0.0, 0.5, -0.5]


@PROPERTY
@given(data=stacks(), size=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_bucketing_buckets_and_keeps_the_weighted_mean(data, size, seed):
    u, w, _ = data
    rows, weights = bucketing(torch.tensor(u), torch.tensor(w), size=size, generator=_gen(seed))
    n = len(u)
    assert rows.shape == (math.ceil(n / size), u.shape[1])
    assert weights.sum().item() == pytest.approx(w.sum())
    # the buckets of the same permutation, by hand
    perm = torch.randperm(n, generator=_gen(seed)).numpy()
    for b in range(len(rows)):
        members = perm[b * size : (b + 1) * size]
        expected = (w[members, None] * u[members]).sum(0) / w[members].sum()
        assert np.allclose(rows[b].numpy(), expected, atol=1e-12)
        assert weights[b].item() == pytest.approx(w[members].sum())
    # so the mean after bucketing is the mean
    assert np.allclose(mean(rows, weights).numpy(), mean(torch.tensor(u), torch.tensor(w)).numpy())


def test_bucketing_draws_from_its_generator_only():
    u = torch.arange(12.0).reshape(6, 2)
    a = bucketing(u, size=2, generator=_gen(5))[0]
    assert torch.equal(a, bucketing(u, size=2, generator=_gen(5))[0])
    assert any(not torch.equal(a, bucketing(u, size=2, generator=_gen(s))[0]) for s in range(6, 9))
    with pytest.raises(ValueError, match="Generator"):
        bucketing(u, size=2)


@PROPERTY
@given(data=stacks())
def test_arc_against_the_definition(data):
    u, w, f = data
    n = len(u)
    k = math.floor(Fraction(2 * f * (n - f), n))
    norms = np.linalg.norm(u, axis=1)
    expected = u.copy()
    if k > 0:
        cap = np.sort(norms)[::-1][k]  # the (k+1)-th largest norm
        big = norms > cap
        expected[big] = u[big] * (cap / norms[big])[:, None]
    rows, weights = arc(torch.tensor(u), torch.tensor(w), f=f)
    assert np.allclose(rows.numpy(), expected, atol=1e-12)
    assert np.array_equal(weights.numpy(), w)
    assert (np.linalg.norm(rows.numpy(), axis=1) > np.sort(norms)[::-1][k] + 1e-12).sum() == 0


@PROPERTY
@given(data=stacks(), threshold=st.floats(0.1, 3.0))
def test_static_clipping_against_the_definition(data, threshold):
    u, w, _ = data
    norms = np.linalg.norm(u, axis=1, keepdims=True)
    expected = u * np.minimum(1.0, threshold / np.where(norms > 0, norms, 1.0))
    rows, weights = static_clipping(torch.tensor(u), torch.tensor(w), threshold=threshold)
    assert np.allclose(rows.numpy(), expected, atol=1e-12)
    assert np.array_equal(weights.numpy(), w)


# --------------------------------------------------------------------------------------------------
# Symmetries


@pytest.mark.parametrize("name", ["nnm", "arc", "clipping"])
@PROPERTY
@given(data=stacks(), perm=st.randoms(use_true_random=False))
def test_permutation_equivariance(name, data, perm):
    """NNM, ARC and clipping permute their output with their input. (Bucketing is invariant in
    distribution only: a fixed generator puts other rows together once the rows move; what holds
    for every order is that the weighted mean is kept, tested above.)"""
    u, w, f = data
    kwargs = {"threshold": 1.0} if name == "clipping" else {"f": f}
    fn = pre.PRE_AGGREGATORS[name]
    order = list(range(len(u)))
    perm.shuffle(order)
    a, _ = fn(torch.tensor(u), torch.tensor(w), **kwargs)
    b, _ = fn(torch.tensor(u)[order], torch.tensor(w)[order], **kwargs)
    assert torch.allclose(a[order], b, atol=1e-12)


def test_pre_key_composes_in_order():
    u = torch.tensor(np.random.default_rng(1).normal(size=(9, 3)))
    u[0] = 50.0
    chain = [NNMConfig(f=2), ARCConfig(f=2), BucketingConfig(size=2), ClippingConfig(threshold=1.0)]
    rows, w = nnm(u, None, f=2)
    rows, w = arc(rows, w, f=2)
    rows, w = bucketing(rows, w, size=2, generator=_gen(3))
    rows, w = static_clipping(rows, w, threshold=1.0)
    got, got_w = pre_aggregate(chain, u, None, generator=_gen(3))
    assert torch.equal(got, rows) and torch.equal(got_w, w)
    config = MDAConfig(f=1, pre=chain)
    assert torch.equal(aggregate(config, u, generator=_gen(3)), mda(rows, w, f=1))
    assert pre_aggregate([], u, None) == (u, None)


def test_plain_mean_means_no_pre():
    assert is_plain_mean(MeanConfig())
    assert not is_plain_mean(MeanConfig(pre=[ClippingConfig(threshold=1.0)]))
    assert not is_plain_mean(CoordinateMedianConfig())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: nnm(torch.zeros(3, 2), f=3), "aggregator.pre: NNM needs f < n, got n=3, f=3"),
        (lambda: arc(torch.zeros(3, 2), f=4), "aggregator.pre: ARC needs f < n, got n=3, f=4"),
        (lambda: static_clipping(torch.zeros(3, 2), threshold=0.0), "threshold must be > 0"),
    ],
)
def test_precondition_messages(call, message):
    with pytest.raises(ScenarioError) as exc:
        call()
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("aggregator: {name: mean, pre: [{name: bucket}]}", "aggregator.pre.0.name: unknown name"),
        (
            "aggregator: {name: mean, pre: [{name: clipping, threshold: 1}, {name: nnm, f: 6}]}\n"
            "algorithm: {name: fedbuff, buffer_size: 6}",
            "aggregator.pre.1.f: NNM needs f < n, got n=6, f=6",
        ),
        (
            "aggregator: {name: krum, pre: [{name: bucketing, size: 2}]}\n"
            "algorithm: {name: fedbuff, buffer_size: 6}",
            "Krum needs n > 2f+2, got n=3, f=1 (the 6 updates bucketed into 3)",
        ),
        (
            "aggregator: {name: mean, pre: [{name: clipping}]}",
            "aggregator.pre.0.threshold: required: this key has no default",
        ),
        (
            "aggregator: {name: mean, pre: [{name: nnm}]}\nalgorithm: {name: async_fedavg}",
            "async_fedavg applies one update at a time",
        ),
    ],
)
def test_bad_scenarios_exit_2_with_one_line(tmp_path, capsys, text, expected):
    assert expected in validate_error(tmp_path, capsys, text)


def test_default_pre_is_empty_and_round_trips(small_learning):
    scenario = load_scenario({**small_learning, "aggregator": {"name": "krum", "f": 1}})
    assert scenario.aggregator.pre == []
    chain = [{"name": "nnm", "f": 1}, {"name": "bucketing", "size": 3}]
    scenario = load_scenario({**small_learning, "aggregator": {"name": "mda", "pre": chain}})
    again = load_scenario(scenario.to_dict())
    assert again.aggregator == scenario.aggregator


def test_doctests():
    assert doctest.testmod(pre).failed == 0


# --------------------------------------------------------------------------------------------------
# Really used in a run


STAGES = {
    "nnm": ("mean", {"name": "nnm", "f": 1}),
    # the mean of the buckets is the mean: bucketing shows through a median
    "bucketing": ("coordinate_median", {"name": "bucketing", "size": 2}),
    "arc": ("mean", {"name": "arc", "f": 1}),
    "clipping": ("mean", {"name": "clipping", "threshold": 0.05}),
}


def _losses(result) -> np.ndarray:
    return result.evals["loss"].to_numpy()


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_each_pre_aggregator_is_really_used(small_learning, algorithm, stage):
    rule, config = STAGES[stage]
    algo = ALGORITHMS[algorithm]
    without = attacked_run(small_learning, algo, {"name": rule})
    result = attacked_run(small_learning, algo, {"name": rule, "pre": [config]})
    assert result.summary["updates"] > 0
    assert result.summary["robust_fallbacks"] == 0
    assert not np.array_equal(_losses(result), _losses(without))
    if rule != "mean":
        mean_run = attacked_run(small_learning, algo, {"name": "mean"})
        assert not np.array_equal(_losses(result), _losses(mean_run))


def test_bucketing_runs_reproduce_and_keep_the_timing_draws(small_learning):
    algo = ALGORITHMS["fedbuff"]
    config = {"name": "coordinate_median", "pre": [{"name": "bucketing", "size": 2}]}
    a = attacked_run(small_learning, algo, config)
    b = attacked_run(small_learning, algo, config)
    assert a.events.equals(b.events) and np.array_equal(_losses(a), _losses(b))
    # the shuffle is its own stream: the timing draws do not move with it
    median = attacked_run(small_learning, algo, {"name": "coordinate_median"})
    assert np.array_equal(a.events["sim_time"], median.events["sim_time"])


def test_nnm_in_fedasync_window(small_learning):
    algo = {"name": "fedasync", "concurrency": 5}
    plain = attacked_run(small_learning, algo, {"name": "mean"})
    result = attacked_run(small_learning, algo, {"name": "mean", "pre": [{"name": "nnm", "f": 1}]})
    # the window fills from one update: only its first set (n = 1 = f) falls back
    assert result.summary["robust_fallbacks"] == 1
    assert not np.array_equal(_losses(result), _losses(plain))


def test_fedsim_list_shows_pre_aggregators_and_server_optimizers(capsys):
    main(["list"])
    lines = capsys.readouterr().out.splitlines()
    assert "pre-aggregators: nnm, bucketing, arc, clipping" in lines
    assert "server optimizers: sgd, momentum, nesterov, adam, yogi, adagrad" in lines
    aggregators = next(line for line in lines if line.startswith("aggregators: "))
    assert all(name in aggregators for name in ("mda", "smea", "caf", "monna", "meamed"))


def _user_median(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A plugin's aggregator: the coordinate median."""
    return updates.median(dim=0).values


def test_pre_runs_before_custom_and_registered_aggregators():
    u = torch.tensor(np.random.default_rng(2).normal(size=(7, 3)))
    chain = [{"name": "nnm", "f": 2}, {"name": "clipping", "threshold": 0.5}]
    expected = _user_median(*pre_aggregate(load_scenario_chain(chain), u, None))
    custom = load_scenario(
        {"aggregator": {"name": "custom", "target": f"{__name__}:_user_median", "pre": chain}}
    ).aggregator
    assert torch.equal(aggregate(custom, u), expected)
    plugins.register_aggregator("user_median", _user_median)
    registered = load_scenario({"aggregator": {"name": "user_median", "pre": chain}}).aggregator
    assert torch.equal(aggregate(registered, u), expected)
    assert pickle.loads(pickle.dumps(registered)) == registered  # pre survives (sweeps pickle)


def load_scenario_chain(chain: list[dict]) -> list:
    return load_scenario({"aggregator": {"name": "mean", "pre": chain}}).aggregator.pre
