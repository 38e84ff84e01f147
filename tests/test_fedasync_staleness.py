"""benchmarks/experiments/fedasync_staleness.py: its tiny CPU version against the runs themselves.

Independent checks: the end accuracy and the updates to target recomputed from the run's own
evaluations; the measured staleness of ``concurrency`` jobs in flight (about ``concurrency − 1``,
0 alone); the limiting case staleness 0, where every staleness function weighs 1 and the runs are
identical; and the proximal term really changes the training.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

import fedsim

EXPERIMENTS = Path(__file__).resolve().parent.parent / "benchmarks" / "experiments"


def _module(name: str):
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return importlib.import_module(name)


@pytest.mark.slow
def test_tiny_cpu_version_against_the_runs_themselves(tmp_path):
    exp = _module("fedasync_staleness")
    out = tmp_path / "r.json"
    argv = ["--seeds", "0", "--updates", "80", "--rho", "0", "--target", "0.3", "--out", str(out)]
    exp.main(argv)
    results = json.loads(out.read_text(encoding="utf-8"))
    rows = results["rows"]
    assert results["command"] == " ".join(argv)
    assert len(rows) == 3 * 2 + 1  # three functions at two levels, and staleness 0

    p = {**exp.PRESETS["cpu"], "updates": 80, "target": 0.3}
    for row in rows:
        if row["staleness"] != "hinge" and row["level"] != exp.REFERENCE:
            continue  # one function per level is enough to recompute
        evals = fedsim.run(
            exp.scenario(p, row["staleness"], row["concurrency"], 0.0, 0), save=False
        ).evals
        tail = evals[evals["updates"] >= 0.8 * 80]
        assert row["end_acc"] == pytest.approx(float(tail["accuracy"].mean()))
        hit = evals[evals["accuracy"] >= 0.3]
        assert row["reached"] == (len(hit) > 0)
        assert row["updates_to_target"] == (int(hit["updates"].iloc[0]) if len(hit) else 80)

    staleness = {(r["level"], r["staleness"]): r["mean_staleness"] for r in rows}
    assert staleness[(exp.REFERENCE, "constant")] == 0
    assert 1.5 < staleness[("low", "constant")] < 4.5  # 4 in flight: about 3
    assert 10 < staleness[("high", "constant")] < 18  # 16 in flight: about 15
    text = exp.table(results)
    assert "| high staleness, ρ = 0 | polynomial | constant |" in text


@pytest.mark.slow
def test_staleness_zero_makes_the_functions_coincide_and_rho_matters():
    exp = _module("fedasync_staleness")
    p = {**exp.PRESETS["cpu"], "updates": 40}

    def final(staleness: str, rho: float) -> list[float]:
        evals = fedsim.run(exp.scenario(p, staleness, 1, rho, 3), save=False).evals
        return evals["accuracy"].tolist()

    constant = final("constant", 0.0)
    assert final("polynomial", 0.0) == constant == final("hinge", 0.0)
    assert final("constant", 1.0) != constant
