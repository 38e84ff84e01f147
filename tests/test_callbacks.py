"""Callbacks watch a run without patching it; the run directory keeps the models it trained."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import fedsim
from fedsim.callbacks import Callback
from fedsim.errors import ScenarioError, SimulationError
from fedsim.models_store import state_dict


class Recorder:
    """Names only some keywords: the others are not passed."""

    def __init__(self) -> None:
        self.started = 0
        self.published: list[tuple[int, int, torch.Tensor | None]] = []
        self.evals: list[tuple[float, float, list[dict]]] = []
        self.ended: dict | None = None

    def on_start(self, *, sim) -> None:
        assert sim.env.now == 0
        self.started += 1

    def on_publish(self, *, server, version, params) -> None:
        self.published.append((server, version, params))

    def on_eval(self, *, sim_time, accuracy, rows) -> None:
        self.evals.append((sim_time, accuracy, rows))

    def on_end(self, *, summary, result) -> None:
        self.ended = summary
        assert result.summary is summary


class Everything(Callback):
    """Takes every keyword with **kwargs."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}

    def on_eval(self, **kwargs) -> None:
        self.seen.setdefault("on_eval", set()).update(kwargs)

    def on_publish(self, **kwargs) -> None:
        self.seen.setdefault("on_publish", set()).update(kwargs)


def test_hooks_see_every_publish_and_evaluation(tmp_path, small_learning):
    rec, every = Recorder(), Everything()
    result = fedsim.run(small_learning, out=tmp_path / "r", callbacks=[rec, every])
    assert rec.started == 1 and rec.ended == result.summary
    assert [v for _, v, _ in rec.published] == list(range(1, result.summary["versions"] + 1))
    evals = result.evals
    assert [t for t, _, _ in rec.evals] == evals["sim_time"].tolist()
    assert [a for _, a, _ in rec.evals] == pytest.approx(evals["accuracy"].tolist())
    rows = [row for _, _, batch in rec.evals for row in batch]
    assert [r["version"] for r in rows] == evals["version"].tolist()
    assert every.seen["on_eval"] == {"sim", "sim_time", "accuracy", "loss", "rows"}
    assert every.seen["on_publish"] == {"server", "version", "params", "sim_time"}
    # The final model file holds exactly the last published parameters.
    saved = torch.load(tmp_path / "r" / "models" / "server-0.pt", weights_only=True)
    last = rec.published[-1][2]
    spec = fedsim.Simulation(fedsim.load_scenario(small_learning)).spec
    expected = state_dict(spec, last)
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in saved)
    assert result.summary["models"] == ["models/server-0.pt"]
    module = result.model(0)
    assert all(torch.equal(module.state_dict()[k], expected[k]) for k in expected)


def test_every_eval_keeps_one_model_per_evaluation(tmp_path, small_learning):
    result = fedsim.run(small_learning, {"output.save_models": "every_eval"}, out=tmp_path / "r")
    with (tmp_path / "r" / "models" / "evals.csv").open() as handle:
        index = list(csv.DictReader(handle))
    evals = result.evals
    assert [float(r["sim_time"]) for r in index] == evals["sim_time"].tolist()
    assert [int(r["version"]) for r in index] == evals["version"].tolist()
    for row in index:
        assert (tmp_path / "r" / "models" / row["file"]).is_file()
    none = fedsim.run(small_learning, {"output.save_models": "none"}, out=tmp_path / "n")
    assert not (tmp_path / "n" / "models").exists() and "models" not in none.summary
    with pytest.raises(ScenarioError, match="no model file"):
        none.model(0)


def test_a_failing_callback_stops_the_run_naming_it_and_keeps_the_trace(tmp_path, small_learning):
    class Broken:
        def on_publish(self, *, version):
            if version == 7:
                raise ValueError("boom")

    with pytest.raises(
        SimulationError,
        match=r"callback .*Broken\.on_publish failed at simulated time [\d.]+s: ValueError: boom",
    ):
        fedsim.run(small_learning, out=tmp_path / "r", callbacks=[Broken()])
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["stop_reason"] == "error" and "Broken.on_publish" in summary["error"]
    assert summary["versions"] == 7


def test_an_object_with_no_hook_is_refused(small_learning):
    with pytest.raises(ScenarioError, match="callbacks: object has none of the hooks on_start"):
        fedsim.run(small_learning, save=False, callbacks=[object()])


def test_timing_only_runs_save_no_model(tmp_path):
    result = fedsim.run({"training": "none", "stop": {"time_s": 30}}, out=tmp_path / "r")
    assert result.summary["models"] == [] and not (tmp_path / "r" / "models").exists()
