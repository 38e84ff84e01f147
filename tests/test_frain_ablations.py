"""benchmarks/experiments/frain_ablations.py: its exact chances and its tiny CPU version.

Independent checks: the hypergeometric chance of a lying majority against scipy, the chance that a
nullified model passes the committee against a Monte Carlo draw of committees and lies, and the
tiny run's figures against its own traces (α in (0, 1], no nullified model passes without liars).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

EXPERIMENTS = Path(__file__).resolve().parent.parent / "benchmarks" / "experiments"


def _module():
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return importlib.import_module("frain_ablations")


@pytest.mark.parametrize("liars", [0, 4, 6, 8, 13, 21])
def test_lying_majority_is_the_hypergeometric_tail(liars):
    exp = _module()
    assert exp.lying_majority(liars) == pytest.approx(
        stats.hypergeom.sf(5, 21, liars, 11), abs=1e-12
    )


@pytest.mark.parametrize("liars", [4, 8, 13])
def test_nullifier_acceptance_matches_a_monte_carlo_committee(liars):
    """Draw committees of 11 of 21, honest members score 0.1, liars U(0, 1); median ≥ 0.2 passes."""
    exp = _module()
    rng = np.random.default_rng(liars)
    trials = 40_000
    is_liar = np.arange(21) < liars
    members = np.argsort(rng.random((trials, 21)), axis=1)[:, :11]
    scores = np.where(is_liar[members], rng.random((trials, 11)), 0.1)
    passed = np.median(scores, axis=1) >= 0.2
    exact = exp.nullifier_acceptance(liars)
    assert abs(passed.mean() - exact) < 4 * np.sqrt(max(exact, 1e-4) / trials) + 1e-3


@pytest.mark.slow
def test_tiny_cpu_version_writes_rows_table_and_claims(tmp_path):
    exp = _module()
    out = tmp_path / "r.json"
    argv = ["--seeds", "0", "1", "--delays", "0", "--fractions", "0", "0.6", "--time-s", "20"]
    exp.main([*argv, "--out", str(out)])
    results = json.loads(out.read_text(encoding="utf-8"))
    rows = results["rows"]
    assert len(rows) == 2 * 2 + 2 * 2  # SLERP and LERP at one delay, two disruptor counts; 2 seeds
    assert {r["study"] for r in rows} == {"staleness", "disruptors"}
    assert all(0 < r["alpha"] <= 1 and r["applied"] > 0 for r in rows)
    no_liars = [r for r in rows if r.get("disruptors") == 0]
    assert all(r["nullified_applied"] == 0 and r["nullified_scored"] > 0 for r in no_liars)
    text = exp.table(results)
    assert "| claim of the seed | here | evidence |" in text
    assert "SLERP merges better than LERP under staleness" in text
