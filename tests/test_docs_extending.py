"""docs/extending.md keeps up with the code: its complete algorithm runs, its contract is complete.

The page's ``buffered_mean.py`` code block is read from the page, written to a file and run as an
algorithm target: it must equal FedBuff in its limiting case, add its ``metrics()`` to the summary
and stay within 60 lines. Every field of the context and every method of the trace sink must be
named on the page, and the ``pyproject.toml`` entry-point example must name the real group.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import fedsim
from fedsim import plugins
from fedsim.algorithms.context import COUNTERS, AlgorithmContext, ClientFacts, ModelFacts, TraceSink

PAGE = Path(__file__).resolve().parent.parent / "docs" / "extending.md"


def _block(title: str) -> str:
    """The code of the fenced block whose info string has ``title="TITLE"``."""
    text = PAGE.read_text(encoding="utf-8")
    found = re.findall(rf'^```\w+ title="{re.escape(title)}"\n(.*?)^```$', text, re.S | re.M)
    assert len(found) == 1, f'docs/extending.md needs exactly one block titled "{title}"'
    return found[0]


def _fenced(language: str) -> list[str]:
    text = PAGE.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.S | re.M)


def test_the_complete_algorithm_is_at_most_60_lines():
    assert len(_block("buffered_mean.py").splitlines()) <= 60


def test_the_docs_algorithm_runs_and_equals_fedbuff_in_its_limiting_case(tmp_path, small_learning):
    (tmp_path / "buffered_mean.py").write_text(_block("buffered_mean.py"), encoding="utf-8")
    scenario = {
        **small_learning,
        "algorithm": {"name": "buffered_mean.py:BufferedMean", "concurrency": 6, "k": 3},
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    mine = fedsim.run(path, save=False)
    assert mine.summary["updates"] > 20
    fedbuff = {
        "name": "fedbuff", "concurrency": 6, "buffer_size": 3, "server_lr": 1.0,
        "staleness": {"kind": "constant"},
    }  # fmt: skip
    reference = fedsim.run({**small_learning, "algorithm": fedbuff}, save=False)
    pd.testing.assert_frame_equal(mine.events, reference.events, check_exact=True)
    columns = ["sim_time", "version", "accuracy", "loss"]
    pd.testing.assert_frame_equal(mine.evals[columns], reference.evals[columns], check_exact=True)
    # metrics(): one server step per published version
    assert mine.summary["server_steps"] == int(mine.evals["version"].max()) > 0


def test_the_docs_algorithm_takes_a_robust_aggregator_when_registered(
    tmp_path, monkeypatch, small_learning
):
    file = tmp_path / "docs_buffered_mean.py"
    file.write_text(_block("buffered_mean.py"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("docs_buffered_mean", file)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "docs_buffered_mean", module)
    spec.loader.exec_module(module)
    plugins.register_algorithm(module.BufferedMean)
    scenario = {
        **small_learning,
        "algorithm": {"name": "buffered_mean", "concurrency": 8, "k": 6},
        "aggregator": {"name": "trimmed_mean", "trim_fraction": 0.2},
        "byzantine": {"fraction": 0.1, "attack": {"name": "sign_flip"}},
    }
    result = fedsim.run(scenario, save=False)
    assert result.summary["byzantine_applied"] > 0
    assert result.summary["server_steps"] > 0


def test_every_field_of_the_contract_is_on_the_page():
    text = PAGE.read_text(encoding="utf-8")
    for field in dataclasses.fields(AlgorithmContext):
        assert f"`ctx.{field.name}`" in text, f"AlgorithmContext.{field.name} is not documented"
    for facts in (ClientFacts, ModelFacts):
        for field in dataclasses.fields(facts):
            assert f"`{field.name}`" in text, f"{facts.__name__}.{field.name} is not documented"
    methods = [m for m in vars(TraceSink) if not m.startswith("_")]
    assert methods
    for method in methods:
        assert f"`{method}(" in text, f"TraceSink.{method} is not documented"
    for counter in COUNTERS:
        assert f"`{counter}`" in text


def test_the_entry_point_example_names_the_real_group():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    (toml,) = _fenced("toml")
    group = tomllib.loads(toml)["project"]["entry-points"][plugins.ENTRY_POINT_GROUP]
    assert group
    for value in group.values():
        assert re.fullmatch(r"[\w.]+:[\w.]+", value)
