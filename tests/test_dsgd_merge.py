"""benchmarks/experiments/dsgd_merge.py: FedAvg and D-SGD on the same data, and its tiny CPU version
checked against independent runs (a shorter run's own final evaluation, the message budget).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import fedsim

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "benchmarks" / "experiments"


def _module():
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location("dsgd_merge", EXPERIMENTS / "dsgd_merge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fedavg_comparator_trains_on_the_same_split_and_partition():
    exp = _module()
    built = {}
    for scheme in (exp.FEDAVG, exp.MERGED):
        scenario = fedsim.load_scenario(exp.SCENARIO, {**exp._sets(scheme, 5, {}, None), "seed": 3})
        built[scheme] = fedsim.Simulation(scenario, device="cpu")
    fed, dsgd = built[exp.FEDAVG], built[exp.MERGED]
    assert fed.scenario.algorithm.name == "fedavg" and fed.scenario.topology is None
    assert dsgd.scenario.algorithm.name == "dsgd" and len(dsgd.servers) == 16
    assert np.array_equal(fed.data.y_train.numpy(), dsgd.data.y_train.numpy())
    assert np.array_equal(fed.data.x_test.numpy(), dsgd.data.x_test.numpy())
    assert len(fed.data.client_indices) == len(dsgd.data.client_indices) == 16
    for a, b in zip(fed.data.client_indices, dsgd.data.client_indices, strict=True):
        assert np.array_equal(a, b)
    assert fed.scenario.training == dsgd.scenario.training


def _final_merged_accuracy(result: fedsim.Result) -> float:
    ev = result.evals
    return float(ev[ev["server"] == -1]["accuracy"].iloc[-1])


@pytest.mark.slow
def test_tiny_cpu_version_against_shorter_runs(tmp_path):
    exp = _module()
    out = tmp_path / "r.json"
    exp.main(
        ["--seeds", "0", "1", "--lengths", "3", "6", "--window-rounds", "20", "--out", str(out)]
    )
    results = json.loads(out.read_text(encoding="utf-8"))
    rows = results["rows"]
    assert results["lengths"] == [3, 6, 20]
    # After 3 rounds of a 20-round run = a 3-round run's own final evaluation (the merged model,
    # server -1; FedAvg's model), for both seeds.
    for seed in (0, 1):
        short = fedsim.run(
            exp.SCENARIO, {**exp._sets(exp.MERGED, 3, {}, None), "seed": seed}, save=False
        )
        assert exp.at(rows, exp.MERGED, 3, "merged")[seed] == _final_merged_accuracy(short)
        fed = fedsim.run(
            exp.SCENARIO, {**exp._sets(exp.FEDAVG, 3, {}, None), "seed": seed}, save=False
        )
        assert fed.summary["final_accuracy"] == exp.at(rows, exp.FEDAVG, 3, "merged")[seed]
    # Without gossip nothing is sent; the three windows of a 20-round run hold one round each in
    # which every peer sends to the 15 others: the same budget, far above r = 0.2 throughout.
    assert set(exp.at(rows, exp.NO_GOSSIP, 20, "message_mb").values()) == {0.0}
    for seed in (0, 1):
        budgets = [exp.at(rows, exp.MERGED, 20, "message_mb", s)[seed] for s in exp.WINDOW_STARTS]
        baseline = exp.at(rows, exp.MERGED, 20, "message_mb")[seed]
        assert budgets[0] > 4 * baseline
        assert max(budgets) - min(budgets) < 0.1 * budgets[0]  # the rest is r = 0.2 noise
    text = exp.table(results)
    assert "| 3 | " in text and "| window at π = 0.9 | " in text
    assert text.count("no difference seen") + text.count(" beats ") >= 4


@pytest.mark.parametrize("rounds", [20, 100, 1000])
def test_budget_windows_of_one_width_hold_the_same_rounds(rounds):
    """π = t / rounds against point1 + window_size: float rounding must not give the window at
    π = 0.1 or 0.9 one round more than the one at 0.5 (0.1 + 0.05 > 15 / 100)."""
    from fedsim.algorithms.gossip import RSchedule

    exp = _module()
    held = []
    for start in exp.WINDOW_STARTS:
        schedule = RSchedule(
            kind="truncate_v2", r_start=0.2, r_end=15, point1=start, window_size=exp.WINDOW
        )
        inside = [t for t in range(1, rounds + 1) if schedule.at(t / rounds) == 15]
        assert inside == list(range(inside[0], inside[0] + len(inside)))
        assert inside[0] == round(start * rounds)
        held.append(len(inside))
    assert held == [round(exp.WINDOW * rounds)] * len(exp.WINDOW_STARTS)
