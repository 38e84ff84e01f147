"""benchmarks/experiments/stats.py against scipy.stats on hand-made numbers."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
from scipy import stats as st

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "experiment_stats", ROOT / "benchmarks" / "experiments" / "stats.py"
)
S = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = S  # dataclasses look their module up
_spec.loader.exec_module(S)

A = [0.392, 0.401, 0.377, 0.385, 0.410]
B = [0.372, 0.380, 0.379, 0.361, 0.395]


@pytest.mark.parametrize("values", [A, B, [1.0, 2.0], [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]])
@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_interval_is_scipy_t_interval(values, confidence):
    got = S.interval(values, confidence)
    lo, hi = st.t.interval(confidence, len(values) - 1, loc=st.tmean(values), scale=st.sem(values))
    assert got.mean == pytest.approx(st.tmean(values), abs=1e-12)
    assert got.low == pytest.approx(lo, abs=1e-12)
    assert got.high == pytest.approx(hi, abs=1e-12)
    assert got.n == len(values)


def test_interval_by_hand():
    # 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302652729...
    got = S.interval([1.0, 2.0, 3.0])
    assert got.mean == 2.0
    assert got.half == pytest.approx(4.302652729749464 / math.sqrt(3), rel=1e-12)
    assert got.format(".2f") == "2.00 ± 2.48"


def test_one_value_and_constant_values():
    one = S.interval([0.5])
    assert math.isnan(one.half) and one.format() == "0.500" and not one.excludes_zero()
    const = S.interval([0.25, 0.25, 0.25])
    assert const.half == 0.0 and const.excludes_zero()
    with pytest.raises(ValueError):
        S.interval([])


def test_paired_matches_ttest_rel():
    d = S.paired(A, B)
    diffs = [a - b for a, b in zip(A, B, strict=True)]
    lo, hi = st.t.interval(0.95, len(A) - 1, loc=st.tmean(diffs), scale=st.sem(diffs))
    assert (d.low, d.high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    # the interval excludes 0 exactly when the paired t-test rejects at 5 %
    assert d.excludes_zero() == (st.ttest_rel(A, B).pvalue < 0.05)


def test_paired_by_seed_maps_align_on_seeds():
    a = {0: 1.0, 1: 2.0, 2: 4.0}
    b = {2: 1.0, 0: 0.5, 1: 1.0}  # other order: aligned by seed, not position
    assert S.paired(a, b) == S.interval([0.5, 1.0, 3.0])
    with pytest.raises(ValueError):
        S.paired({0: 1.0}, {1: 1.0})
    with pytest.raises(ValueError):
        S.paired([1.0, 2.0], [1.0])


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (A, B, None),  # decided by scipy below
        ([0.50, 0.52, 0.51, 0.53], [0.40, 0.41, 0.40, 0.42], "X beats Y"),
        ([0.40, 0.41, 0.40, 0.42], [0.50, 0.52, 0.51, 0.53], "Y beats X"),
        ([0.40, 0.50, 0.30, 0.45], [0.45, 0.35, 0.40, 0.44], "no difference seen"),
    ],
)
def test_verdict(a, b, expected):
    d = S.paired(a, b)
    p = st.ttest_rel(a, b).pvalue
    if expected is None:
        expected = (
            "no difference seen" if p >= 0.05 else ("X beats Y" if d.mean > 0 else "Y beats X")
        )
    assert S.verdict("X", "Y", d) == expected
    assert (expected == S.NO_DIFFERENCE) == (p >= 0.05)


def test_verdict_lower_is_better_and_one_seed():
    d = S.paired([10.0, 11.0, 12.0], [20.0, 21.0, 23.0])  # X takes less time
    assert S.verdict("X", "Y", d, higher_is_better=False) == "X beats Y"
    assert S.verdict("X", "Y", S.paired([1.0], [0.0])) == S.NO_DIFFERENCE


def test_relative_drop():
    got = S.relative([0.3, 0.4], [0.4, 0.5])
    assert got == S.interval([0.3 / 0.4 - 1, 0.4 / 0.5 - 1])
