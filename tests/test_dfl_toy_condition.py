"""benchmarks/experiments/dfl_toy.py --results: the seed's step-size condition γ < 1/(L·T_C).

L is recomputed here in closed form (the larger eigenvalue of each client's 2×2 MSE Hessian
2·[[E x², E x], [E x, 1]]), the distances from the servers' final models, and the run that meets
the condition must move every server towards w_LS without diverging.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import fedsim
from fedsim.simulation import Simulation

EXPERIMENTS = Path(__file__).resolve().parent.parent / "benchmarks" / "experiments"


def _module(name: str):
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return importlib.import_module(name)


def _largest_smoothness(sim: Simulation) -> float:
    x = sim.data.x_train.double().cpu().numpy()
    best = 0.0
    for rows in sim.data.client_indices:
        a, b, d = 2 * np.mean(x[rows] ** 2), 2 * np.mean(x[rows]), 2.0
        best = max(best, (a + d) / 2 + math.sqrt(((a - d) / 2) ** 2 + b**2))
    return best


@pytest.mark.slow
def test_results_file_of_a_run_that_meets_the_condition(tmp_path):
    exp = _module("dfl_toy")
    out = tmp_path / "dfl.json"
    argv = ["--lrs", "0.00015", "0.01", "--epochs", "3", "--eval-every-s", "12.5", "--no-figures",
            "--results", str(out)]  # fmt: skip
    exp.main(argv)
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["command"] == " ".join(argv)

    scenario = fedsim.load_scenario(exp.SCENARIO, {"training.lr": 0.00015, "algorithm.epochs": 3})
    sim = Simulation(scenario)
    w_star = np.array([5.0, 2.0])
    start = np.linalg.norm(sim.servers[0].params.double().cpu().numpy() - w_star)
    sim.run()
    L = _largest_smoothness(sim)
    assert results["L"] == pytest.approx(L, rel=1e-9)
    assert results["bound"] == pytest.approx(1 / (L * 250), rel=1e-9)
    meets, breaks = results["rows"]
    assert meets["ratio"] == pytest.approx(0.00015 * L * 250) and meets["ratio"] < 1
    assert breaks["ratio"] > 40  # γ = 0.01 breaks it about 50-fold

    final = np.stack([s.params.double().cpu().numpy() for s in sim.servers])
    assert meets["to_star"] == pytest.approx(np.linalg.norm(final - w_star, axis=1).max())
    assert meets["to_ls"] == {} and 0 < meets["to_star"] < 0.9 * start  # closer, not diverging
    text = exp.table(results)
    assert "| 0.00015 | " in text and "| met |" in text and "| broken |" in text
