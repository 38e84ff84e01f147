"""Golden tier: every shipped scenario validates and runs (briefly) as shipped."""

from __future__ import annotations

import pytest

import fedsim
from fedsim.scenario import load_scenario

from .conftest import SCENARIOS

FILES = sorted(SCENARIOS.glob("*.yaml"))


def test_the_required_scenarios_ship():
    names = {p.name for p in FILES}
    assert {
        "quickstart.yaml",
        "fedavg_deadline.yaml",
        "fedasync_stragglers.yaml",
        "fedbuff.yaml",
        "timing_only_1m.yaml",
    } <= names


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario_runs_briefly(path, tmp_path):
    scenario = load_scenario(path)
    short = {"stop.time_s": 30.0, "stop.max_updates": 2000}
    result = fedsim.run(scenario, short, out=tmp_path / path.stem)
    assert result.summary["sim_time_s"] <= 30.0
    assert result.summary["updates"] > 0
    assert len(result.evals) >= 1
    assert (tmp_path / path.stem / "scenario.yaml").is_file()
    if scenario.training is not None:
        # Every evaluation produced numbers (accuracy is NaN by design for regression data).
        assert result.evals["loss"].notna().all()
        if scenario.data.dataset != "synthetic_regression":
            assert result.evals["accuracy"].notna().all()
