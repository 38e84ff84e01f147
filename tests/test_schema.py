"""``fedsim schema`` is a JSON schema editors can use (yaml-language-server): it accepts every
shipped scenario, with the shorthands validation accepts, and the committed copy is current."""

from __future__ import annotations

import json

import pytest
import yaml

from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.scenario import Scenario, load_scenario

from .conftest import ROOT, SCENARIOS

jsonschema = pytest.importorskip("jsonschema")

SCHEMA_FILE = ROOT / "docs" / "scenario.schema.json"
SHIPPED = sorted(SCENARIOS.glob("*.yaml"))  # scenarios/sweeps/ holds sweep files, not scenarios
HEADER = "# yaml-language-server: $schema=../docs/scenario.schema.json"


def _validator() -> jsonschema.protocols.Validator:
    schema = Scenario.model_json_schema(by_alias=True)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _problems(data: object) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in _validator().iter_errors(data)]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_scenario_validates_against_the_schema(path):
    assert _problems(yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_scenarios_name_the_committed_schema(path):
    first = path.read_text().splitlines()[0]
    assert first == HEADER
    assert (path.parent / first.split("$schema=", 1)[1]).resolve() == SCHEMA_FILE.resolve()


def test_committed_schema_is_current(capsys):
    """Regenerate it with ``fedsim schema > docs/scenario.schema.json``."""
    main(["schema"])
    printed = capsys.readouterr().out
    assert json.loads(printed) == Scenario.model_json_schema(by_alias=True)
    assert SCHEMA_FILE.read_text() == printed, "run: fedsim schema > docs/scenario.schema.json"


@pytest.mark.parametrize(
    "data",
    [
        {"training": "none", "stop": {"time_s": 5}},
        {"topology": {"servers": 4, "graph": "ring", "mixing": "uniform"}},
        {"topology": {"servers": 4, "graph": {"kind": "torus"}}},
        {"algorithm": {"name": "fedbuff", "dispatch_policy": "on_arrival"}},
        {"clients": {"compute": {"mean_s": 3}}},  # no dist: the default law
        {"algorithm": {"alpha": 0.5}},  # no name: fedasync
        {"aggregator": {"name": "centered_clipping", "tau": 2.0}},
    ],
)
def test_shorthands_accepted_by_validation_are_in_the_schema(data):
    load_scenario(data)  # the simulator accepts it
    assert _problems(data) == []


def test_fedast_on_arrival_is_in_the_schema():
    data = yaml.safe_load((SCENARIOS / "fedast_hetero.yaml").read_text())
    data["algorithm"]["dispatch_policy"] = "on_arrival"
    assert load_scenario(data).algorithm.dispatch_policy == "immediate"
    assert _problems(data) == []


@pytest.mark.parametrize(
    "data",
    [
        {"topology": {"graph": "rings"}},
        {"training": "nothing"},
        {"algorithm": {"name": "fedbuff", "dispatch_policy": "whenever"}},
        {"clients": {"count": 0}},
        {"clients": {"cont": 5}},
        {"clients": {"compute": {"dist": "pareto", "mean_s": -1}}},
    ],
)
def test_the_schema_still_refuses_what_validation_refuses(data):
    with pytest.raises(ScenarioError):
        load_scenario(data)
    assert _problems(data) != []
