"""fedsim.run's own-model keyword, the trainer it reports, and what a resume refuses."""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest

import fedsim
from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.imports import resolve_target

NET = textwrap.dedent(
    """
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self, input_shape, n_outputs, hidden=16):
            super().__init__()
            size = 1
            for d in input_shape:
                size *= d
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(size, hidden), nn.ReLU(),
                                      nn.Linear(hidden, n_outputs))

        def forward(self, x):
            return self.body(x)
    """
)


def test_a_model_passed_to_run_equals_the_same_model_by_target(tmp_path, small_learning):
    (tmp_path / "nets.py").write_text(NET)
    target = f"{tmp_path / 'nets.py'}:TinyNet"
    by_target = fedsim.run(
        {**small_learning, "model": {"kind": "import", "target": target}}, out=tmp_path / "a"
    )
    passed = fedsim.run(small_learning, out=tmp_path / "b", model=resolve_target(target, key="m"))
    assert passed.scenario.model.kind == "memory"
    assert (tmp_path / "a" / "events.parquet").read_bytes() == (
        tmp_path / "b" / "events.parquet"
    ).read_bytes()
    columns = ["sim_time", "version", "accuracy", "loss"]
    pd.testing.assert_frame_equal(by_target.evals[columns], passed.evals[columns])
    assert passed.summary["trainer"]["path"] in ("vmap", "loop")
    assert passed.summary["trainer"]["reason"]
    with pytest.raises(ScenarioError, match=r"trained a model passed to fedsim\.run"):
        fedsim.run(resume=tmp_path / "b")


def test_the_summary_and_validate_say_how_training_runs(tmp_path, small_learning, capsys):
    result = fedsim.run(small_learning, save=False)
    assert result.summary["trainer"]["path"] == "stacked"
    timing = fedsim.run({"training": "none", "stop": {"time_s": 20}}, save=False)
    assert timing.summary["trainer"] is None
    path = tmp_path / "s.yaml"
    path.write_text("model: {kind: mlp, hidden: [8]}\ntraining: {backend: sequential}\n")
    main(["validate", str(path)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok: scenario (fedasync, hash ")
    assert out[1].startswith("trainer: sequential, loop (")
