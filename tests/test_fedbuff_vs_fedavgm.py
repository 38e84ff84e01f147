"""benchmarks/experiments/fedbuff_vs_fedavgm.py: its tiny CPU version, and the censoring rules.

The runs are checked against the runs' own event logs (time to target = the first evaluation at
or above the target; trips = the uploads in the event log) and against what the schemes imply
(a synchronous round uploads its whole cohort; FedAvgM's momentum changes the trajectory).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

import fedsim

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "benchmarks" / "experiments"


def _module(name: str):
    """An experiment script as a module (they import their neighbours: stats, censored)."""
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return importlib.import_module(name)


def test_censored_comparisons_claim_only_what_the_bounds_allow():
    censored = _module("censored")
    C = censored.Censored
    fast = C({0: 10.0, 1: 12.0, 2: 11.0, 3: 9.0, 4: 10.0}, frozenset())
    slow_cut = C({0: 50.0, 1: 50.0, 2: 50.0, 3: 50.0, 4: 50.0}, frozenset({1, 3}))
    # B's censored seeds are lower bounds: the true gap is larger still, so A beats B stands.
    assert censored.compare("A", "B", fast, slow_cut)[1] == "A beats B"
    # ... but a censored winner is never declared the winner.
    assert censored.compare("B", "A", slow_cut, fast)[1] == "A beats B"
    cut_early = C({0: 40.0, 1: 50.0, 2: 40.0, 3: 50.0, 4: 40.0}, frozenset({1, 3}))
    late = C({0: 90.0, 1: 100.0, 2: 95.0, 3: 99.0, 4: 97.0}, frozenset())
    said = censored.compare("A", "B", cut_early, late)[1]
    assert said.startswith("no difference seen") and "censored" in said
    assert slow_cut.format() == "≥ 50 (3/5 reached)"
    assert C({0: 50.0, 1: 50.0}, frozenset({0, 1})).format() == "> 50 (0/2 reached)"
    assert fast.format(".1f").startswith("10.4 ± ")


def _first_at_or_above(evals, target: float) -> float | None:
    hit = evals[evals["accuracy"] >= target]
    return float(hit["sim_time"].iloc[0]) if len(hit) else None


@pytest.mark.slow
def test_tiny_cpu_version_against_the_runs_themselves(tmp_path):
    exp = _module("fedbuff_vs_fedavgm")
    out = tmp_path / "r.json"
    argv = ["--seeds", "0", "1", "--stragglers", "0.1", "--time-s", "60", "--target", "0.5",
            "--schemes", "FedAvg", "FedAvgM", "FedBuff", "--out", str(out)]  # fmt: skip
    exp.main(argv)
    results = json.loads(out.read_text(encoding="utf-8"))
    rows = results["rows"]
    assert results["command"] == " ".join(argv) and len(rows) == 6
    by = {(r["scheme"], r["seed"]): r for r in rows}

    p = {**exp.PRESETS["cpu"], "time_s": 60.0, "target": 0.5}
    for (scheme, seed), row in by.items():
        result = fedsim.run(exp.scenario(p, scheme, 0.1, seed), save=False)
        first = _first_at_or_above(result.evals, 0.5)
        assert row["reached"] == (first is not None)
        assert row["time_to_target_s"] == (first if first is not None else 60.0)
        uploads = result.events["status"].isin(exp.UPLOADS).sum()
        assert row["trips"] == uploads > 0
        if scheme != "FedBuff":  # a finished round uploaded its whole cohort of 20
            assert row["trips"] >= 20 * row["server_steps"]
    # Server momentum is really applied: same seed, same rounds, another model.
    for seed in (0, 1):
        assert by[("FedAvgM", seed)]["final_acc"] != by[("FedAvg", seed)]["final_acc"]
    # With 10 % of clients 10x slower, 60 s is too short for FedAvg's rounds: censored, and shown so.
    assert not by[("FedAvg", 0)]["reached"] and by[("FedBuff", 0)]["reached"]
    text = exp.table(results)
    assert "reached)" in text and "| 10 % | FedBuff | FedAvgM |" in text
