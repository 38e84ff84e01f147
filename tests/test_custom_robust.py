"""Aggregators and attacks of the user's own (issue 12 §3): by target, by registered name, by entry
point. Each user function is a second implementation of a built-in and must give its trace exactly."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import fedsim
from fedsim import plugins
from fedsim.errors import ScenarioError, SimulationError
from fedsim.robust import aggregate, client_attack, server_attack
from fedsim.robust.aggregators import CoordinateMedianConfig, MeanConfig
from fedsim.robust.attacks import IpmConfig, SignFlipConfig
from fedsim.robust.custom import CustomAggregatorConfig, CustomAttackConfig
from fedsim.scenario import Scenario

FUNCTIONS = Path(__file__).parent / "plugins" / "robust_functions.py"


def _target(name: str) -> str:
    return f"{FUNCTIONS}:{name}"


def _custom(name: str, **more) -> dict:
    return {"name": "custom", "target": _target(name), **more}


def _same_trace(mine: fedsim.Result, reference: fedsim.Result) -> None:
    """The same events and evaluations, byte for byte; the events' ``attack`` column names the
    attack (``custom`` or the registered name instead of the built-in's) in the same rows."""
    assert mine.summary["updates"] > 10
    ours, theirs = mine.events, reference.events
    if "attack" in ours:
        assert ((ours["attack"] == "") == (theirs["attack"] == "")).all()
        ours, theirs = ours.drop(columns="attack"), theirs.drop(columns="attack")
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    columns = ["sim_time", "version", "accuracy", "loss"]
    pd.testing.assert_frame_equal(mine.evals[columns], reference.evals[columns], check_exact=True)


def _with(small_learning: dict, **sections) -> dict:
    return {**small_learning, **sections}


SIGN_FLIP = {"fraction": 0.1, "attack": {"name": "sign_flip"}}


@pytest.mark.parametrize(
    "algorithm",
    [
        {"name": "fedbuff", "concurrency": 6, "buffer_size": 3},
        {"name": "fedavg", "cohort_size": 5},
    ],
    ids=["fedbuff", "fedavg"],
)
def test_a_user_mean_equals_the_builtin_mean(small_learning, algorithm):
    """With Byzantine clients both take the robust path, so the aggregate is all that differs."""
    base = _with(small_learning, algorithm=algorithm, byzantine=SIGN_FLIP)
    mine = fedsim.run(_with(base, aggregator=_custom("user_mean")), save=False)
    reference = fedsim.run(_with(base, aggregator={"name": "mean"}), save=False)
    _same_trace(mine, reference)
    assert mine.summary["byzantine_applied"] > 0


@pytest.mark.parametrize(
    "algorithm",
    [
        {"name": "fedasync", "concurrency": 5},
        # equal weights: the user's median is the unweighted one
        {"name": "fedbuff", "concurrency": 6, "buffer_size": 5, "staleness": {"kind": "constant"}},
    ],
    ids=["fedasync-window", "fedbuff"],
)
def test_a_user_coordinate_median_equals_the_builtin(small_learning, algorithm):
    base = _with(small_learning, algorithm=algorithm, byzantine=SIGN_FLIP)
    mine = fedsim.run(_with(base, aggregator=_custom("user_median")), save=False)
    reference = fedsim.run(_with(base, aggregator={"name": "coordinate_median"}), save=False)
    _same_trace(mine, reference)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_a_user_sign_flip_equals_the_builtin(small_learning, scale):
    attack = _custom("user_sign_flip", stage="client", kwargs={"scale": scale})
    mine = fedsim.run(
        _with(small_learning, byzantine={"fraction": 0.2, "attack": attack}), save=False
    )
    builtin = {"fraction": 0.2, "attack": {"name": "sign_flip", "scale": scale}}
    reference = fedsim.run(_with(small_learning, byzantine=builtin), save=False)
    _same_trace(mine, reference)
    assert mine.summary["byzantine_applied"] > 0


def test_a_user_server_side_attack_equals_the_builtin_ipm(small_learning):
    base = _with(
        small_learning,
        algorithm={"name": "fedbuff", "concurrency": 8, "buffer_size": 4},
        aggregator={"name": "trimmed_mean", "trim_fraction": 0.25},
    )
    attack = _custom("user_ipm", stage="server", kwargs={"epsilon": 2.0})
    mine = fedsim.run(_with(base, byzantine={"fraction": 0.2, "attack": attack}), save=False)
    builtin = {"fraction": 0.2, "attack": {"name": "ipm", "epsilon": 2.0}}
    reference = fedsim.run(_with(base, byzantine=builtin), save=False)
    _same_trace(mine, reference)


def test_the_functions_are_called_like_the_builtins():
    """aggregate / client_attack / server_attack dispatch to the user's function with the same
    arguments the built-ins get (weights None means uniform)."""
    torch.manual_seed(0)
    rows = torch.randn(7, 5)
    weights = torch.rand(7, dtype=torch.float64)
    mean = CustomAggregatorConfig(target=_target("user_mean"))
    assert torch.equal(aggregate(mean, rows, weights), aggregate(MeanConfig(), rows, weights))
    assert torch.equal(aggregate(mean, rows), aggregate(MeanConfig(), rows))
    median = CustomAggregatorConfig(target=_target("user_median"))
    assert torch.equal(aggregate(median, rows), aggregate(CoordinateMedianConfig(), rows))
    assert torch.equal(aggregate(median, rows[:6]), aggregate(CoordinateMedianConfig(), rows[:6]))
    flip = CustomAttackConfig(target=_target("user_sign_flip"), kwargs={"scale": 2.0})
    delta, start = rows[0], rows[1]
    expected = client_attack(SignFlipConfig(scale=2.0), delta, start, None)
    assert torch.equal(client_attack(flip, delta, start, None), expected)
    ipm = CustomAttackConfig(target=_target("user_ipm"), stage="server", kwargs={"epsilon": 0.5})
    expected = server_attack(IpmConfig(epsilon=0.5), rows, n_total=9, f=2)
    assert torch.equal(server_attack(ipm, rows, n_total=9, f=2), expected)
    assert torch.equal(client_attack(ipm, delta, start, None), delta)  # server side: untouched


def test_the_probe_leaves_the_global_random_state_alone():
    state = torch.get_rng_state()
    CustomAttackConfig(target=_target("user_noise"))
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------------------------------
# Bad input: one line naming the key, at validation (exit 2) and through the API


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedsim.cli", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


BAD = [
    ("aggregator", _custom("nowhere"), "aggregator.target", "has no attribute 'nowhere'"),
    ("aggregator", _custom("NOT_A_FUNCTION"), "aggregator.target", "is not callable (a int)"),
    ("aggregator", _custom("wrong_shape"), "aggregator.target", "returned shape (11, 3), expected (3,)"),
    ("aggregator", _custom("returns_list"), "aggregator.target", "returned a list, not a torch.Tensor"),
    ("aggregator", _custom("raises"), "aggregator.target", "raised ValueError: no aggregation today"),
    ("aggregator", _custom("user_mean", kwargs={"k": 1}), "aggregator.target", "unexpected keyword argument 'k'"),
    ("aggregator", {"name": "custom", "target": "no_such_module_xyz:fn"}, "aggregator.target", "no module named 'no_such_module_xyz'"),
    ("aggregator", {"name": "custom", "target": "not a target"}, "aggregator.target", "is not a target"),
    ("attack", _custom("user_ipm", stage="client"), "byzantine.attack.target", "returned shape (), expected (3,)"),
    ("attack", _custom("user_sign_flip", stage="server"), "byzantine.attack.target", "unexpected keyword argument 'n_total'"),
    ("attack", _custom("missing_attack"), "byzantine.attack.target", "has no attribute 'missing_attack'"),
    ("attack", _custom("user_sign_flip", stage="data"), "byzantine.attack.stage", "must be one of client or server"),
]  # fmt: skip


@pytest.mark.parametrize(("where", "section", "key", "message"), BAD, ids=[b[3][:30] for b in BAD])
def test_a_bad_function_is_one_line_naming_the_key(
    tmp_path, small_learning, where, section, key, message
):
    if where == "aggregator":
        data = _with(small_learning, aggregator=section)
    else:
        data = _with(small_learning, byzantine={"fraction": 0.1, "attack": section})
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ScenarioError, match=None) as caught:
        fedsim.load_scenario(data)
    assert caught.value.path == key and message in caught.value.message, caught.value
    with pytest.raises(ScenarioError) as caught:
        fedsim.run(path, save=False)
    assert len(str(caught.value).splitlines()) == 1
    assert str(caught.value).startswith(f"{path}:") and f"{key}: " in str(caught.value)


def test_bad_targets_through_fedsim_validate(tmp_path, small_learning):
    """The CLI: exit 2, one line ``error: FILE:LINE: key: message`` per bad scenario."""
    cases = [BAD[0], BAD[2], BAD[4], BAD[9]]
    for i, (where, section, key, message) in enumerate(cases):
        if where == "aggregator":
            data = _with(small_learning, aggregator=section)
        else:
            data = _with(small_learning, byzantine={"fraction": 0.1, "attack": section})
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        refused = _cli("validate", path, cwd=tmp_path)
        assert refused.returncode == 2, refused
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}:"), lines
        assert f"{key}: " in lines[0] and message in lines[0], lines
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_with(small_learning, aggregator=_custom("user_median"))))
    assert _cli("validate", good, cwd=tmp_path).returncode == 0


def test_a_function_that_fails_during_the_run_names_itself_and_the_time(tmp_path, small_learning):
    data = _with(small_learning, aggregator=_custom("fails_in_run"))
    out = tmp_path / "run"
    with pytest.raises(SimulationError) as caught:
        fedsim.run(data, out=out)
    text = str(caught.value)
    assert len(text.splitlines()) == 1
    assert "run failed at simulated time" in text
    assert f"aggregator.target '{_target('fails_in_run')}' raised RuntimeError" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "error" and "fails_in_run" in summary["error"]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    failed = _cli("run", path, "-q", "--no-plots", "--out", tmp_path / "cli", cwd=tmp_path)
    assert failed.returncode == 1
    assert "fails_in_run' raised RuntimeError: only three coordinates" in failed.stderr


# --------------------------------------------------------------------------------------------------
# By registered name and by entry point


def _import_functions():
    sys.path.insert(0, str(FUNCTIONS.parent))
    try:
        import robust_functions
    finally:
        sys.path.remove(str(FUNCTIONS.parent))
    return robust_functions


def test_registered_names_equal_the_builtins_and_are_in_the_schema(small_learning):
    functions = _import_functions()
    plugins.register_aggregator("my_median", functions.user_median)
    plugins.register_attack("my_flip", functions.user_sign_flip, "client")
    plugins.register_attack("my_ipm", functions.user_ipm, "server")
    schema = json.dumps(Scenario.model_json_schema())
    assert all(name in schema for name in ("my_median", "my_flip", "my_ipm"))
    from fedsim.registry import catalogue

    listed = catalogue()
    assert "my_median (python)" in listed["aggregators"] and "custom" in listed["aggregators"]
    assert {"my_flip (python)", "my_ipm (python)"} <= set(listed["attacks"])

    byz = {"fraction": 0.2, "attack": {"name": "my_flip", "kwargs": {"scale": 2.0}}}
    mine = fedsim.run(
        _with(small_learning, aggregator={"name": "my_median"}, byzantine=byz), save=False
    )
    builtin = {"fraction": 0.2, "attack": {"name": "sign_flip", "scale": 2.0}}
    reference = fedsim.run(
        _with(small_learning, aggregator={"name": "coordinate_median"}, byzantine=builtin),
        save=False,
    )
    _same_trace(mine, reference)

    scenario = fedsim.load_scenario({"byzantine": {"fraction": 0.1, "attack": {"name": "my_ipm"}}})
    assert scenario.byzantine.attack.stage == "server"
    assert pickle.loads(pickle.dumps(scenario)) == scenario
    with pytest.raises(ScenarioError) as caught:
        fedsim.load_scenario({"aggregator": {"name": "my_median", "kwargs": {"x": 1}}})
    assert caught.value.path == "aggregator.kwargs"
    assert "'my_median' (python)" in caught.value.message and "'x'" in caught.value.message
    with pytest.raises(ScenarioError, match="unknown key"):
        fedsim.load_scenario({"aggregator": {"name": "my_median", "x": 1}})
    with pytest.raises(ScenarioError, match="'krum' is a built-in aggregator"):
        plugins.register_aggregator("krum", functions.user_median)
    with pytest.raises(ScenarioError, match="'custom' is a built-in attack"):
        plugins.register_attack("custom", functions.user_sign_flip, "client")
    with pytest.raises(ScenarioError, match="stage must be client or server"):
        plugins.register_attack("late", functions.user_sign_flip, "data")

    plugins.unregister_aggregator("my_median")
    plugins.unregister_attack("my_ipm")
    schema = json.dumps(Scenario.model_json_schema())
    assert "my_median" not in schema and "my_ipm" not in schema and "my_flip" in schema
    with pytest.raises(ScenarioError, match="unknown name 'my_median'"):
        fedsim.load_scenario({"aggregator": {"name": "my_median"}})


def test_a_package_entry_point_registers_an_aggregator_and_an_attack(tmp_path, small_learning):
    """An installed distribution (a dist-info on sys.path) whose register(plugins) adds both."""
    site = tmp_path / "site"
    package = site / "my_robust"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FUNCTIONS.read_text())
    info = site / "my_robust-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-robust\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[fedsim.plugins]\nrobust = my_robust:register\n")
    scenario = _with(
        small_learning,
        aggregator={"name": "user_median"},
        byzantine={"fraction": 0.2, "attack": {"name": "user_flip"}},
    )
    builtin = _with(
        small_learning,
        aggregator={"name": "coordinate_median"},
        byzantine={"fraction": 0.2, "attack": {"name": "sign_flip"}},
    )
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        import fedsim, pandas as pd
        from fedsim.registry import catalogue
        mine = fedsim.run({scenario!r}, save=False)
        reference = fedsim.run({builtin!r}, save=False)
        columns = [c for c in mine.events.columns if c != "attack"]
        pd.testing.assert_frame_equal(mine.events[columns], reference.events[columns], check_exact=True)
        print(catalogue()["aggregators"][-1], "|", catalogue()["attacks"][-1])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "user_median (entry point my-robust) | user_flip (entry point my-robust)"
    )
