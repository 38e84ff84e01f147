"""Algorithms from outside fedsim: by target in YAML, registered in Python, or by entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

import fedsim
from fedsim import plugins
from fedsim.errors import ScenarioError
from fedsim.scenario import Scenario

PLUGIN = Path(__file__).parent / "plugins" / "buffered_mean.py"
TARGET = "buffered_mean.py:BufferedMean"


def _scenario(small_learning: dict, **algorithm) -> dict:
    return {**small_learning, "algorithm": {"name": TARGET, "concurrency": 6, "k": 3, **algorithm}}


def _write(folder: Path, data: dict) -> Path:
    shutil.copy(PLUGIN, folder / "buffered_mean.py")
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedsim.cli", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_a_target_algorithm_equals_fedbuff_in_its_limiting_case(tmp_path, small_learning):
    """BufferedMean(k, lr=1) is FedBuff(buffer_size=k, constant staleness): the same trace."""
    path = _write(tmp_path, _scenario(small_learning))
    mine = fedsim.run(path, save=False)
    assert mine.summary["algorithm"].endswith("buffered_mean.py:BufferedMean")
    fedbuff = {
        "name": "fedbuff", "concurrency": 6, "buffer_size": 3, "server_lr": 1.0,
        "staleness": {"kind": "constant"},
    }  # fmt: skip
    reference = fedsim.run({**small_learning, "algorithm": fedbuff}, save=False)
    assert mine.summary["updates"] > 20
    pd.testing.assert_frame_equal(mine.events, reference.events, check_exact=True)
    columns = ["sim_time", "version", "accuracy", "loss"]
    pd.testing.assert_frame_equal(mine.evals[columns], reference.evals[columns], check_exact=True)


def test_a_target_algorithm_runs_from_the_cli_and_its_keys_are_checked(tmp_path, small_learning):
    path = _write(tmp_path, _scenario(small_learning))
    done = _cli("run", path, "-q", "--no-plots", "--out", "r", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert fedsim.Result.load(tmp_path / "r").summary["updates"] > 20
    bad = _write(tmp_path, _scenario(small_learning, kk=3))
    refused = _cli("validate", bad, cwd=tmp_path)
    assert refused.returncode == 2
    line = refused.stderr.strip()
    assert (
        line.startswith(f"error: {bad}:") and "algorithm.kk: unknown key; did you mean 'k'" in line
    )
    low = _write(tmp_path, _scenario(small_learning, lr=-1))
    refused = _cli("validate", low, cwd=tmp_path)
    assert refused.returncode == 2 and "algorithm.lr: must be > 0" in refused.stderr


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nowhere.py:BufferedMean", "no such file"),
        ("buffered_mean.py:Missing", "Missing"),
        (
            "buffered_mean.py:NotAnAlgorithm",
            "is not a subclass of fedsim.algorithms.base.Algorithm",
        ),
        ("no_such_module_xyz:Algo", "no_such_module_xyz"),
    ],
)
def test_a_bad_target_is_one_line_naming_the_key(tmp_path, small_learning, name, message):
    path = _write(tmp_path, {**small_learning, "algorithm": {"name": name}})
    refused = _cli("validate", path, cwd=tmp_path)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "algorithm.name" in lines[0] and message in lines[0], lines
    with pytest.raises(ScenarioError, match=message):
        fedsim.load_scenario(path)


def test_a_registered_algorithm_takes_a_robust_aggregator_and_attacks(small_learning):
    sys.path.insert(0, str(PLUGIN.parent))
    try:
        from buffered_mean import BufferedMean
    finally:
        sys.path.remove(str(PLUGIN.parent))
    plugins.register_algorithm(BufferedMean)
    assert plugins.catalogue_sources()["buffered_mean"] == "python"
    scenario = {
        **small_learning,
        "algorithm": {"name": "buffered_mean", "concurrency": 8, "k": 6},
        "aggregator": {"name": "trimmed_mean", "trim_fraction": 0.2},
        "byzantine": {"fraction": 0.1, "attack": {"name": "sign_flip"}},
    }
    result = fedsim.run(scenario, save=False)
    assert result.summary["byzantine_clients"] == 2
    assert result.summary["byzantine_applied"] > 0  # buffered, then trimmed by the aggregator
    assert result.summary["final_accuracy"] > 0.5
    with pytest.raises(ScenarioError, match="'fedavg' is a built-in algorithm"):
        plugins.register_algorithm(BufferedMean, name="fedavg")


def test_unregistering_restores_the_scenario_union(small_learning):
    sys.path.insert(0, str(PLUGIN.parent))
    try:
        from buffered_mean import BufferedMean
    finally:
        sys.path.remove(str(PLUGIN.parent))
    plugins.register_algorithm(BufferedMean)
    assert "buffered_mean" in str(Scenario.model_json_schema())
    plugins.unregister_algorithm("buffered_mean")
    assert "buffered_mean" not in str(Scenario.model_json_schema())
    with pytest.raises(ScenarioError, match="unknown name 'buffered_mean'"):
        fedsim.load_scenario({"algorithm": {"name": "buffered_mean"}})


def test_a_package_entry_point_registers_its_algorithm(tmp_path, small_learning):
    """An installed distribution (a dist-info on sys.path) with a fedsim.plugins entry point."""
    site = tmp_path / "site"
    package = site / "my_fl_algos"
    package.mkdir(parents=True)
    shutil.copy(PLUGIN, package / "__init__.py")
    info = site / "my_fl_algos-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-fl-algos\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[fedsim.plugins]\nbuffered_mean = my_fl_algos:BufferedMean\n"
    )
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        import fedsim
        from fedsim import plugins
        result = fedsim.run({_scenario(small_learning) | {"algorithm": {"name": "buffered_mean"}}!r}, save=False)
        print(plugins.catalogue_sources()["buffered_mean"], result.summary["updates"] > 20)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["entry", "point", "my-fl-algos", "True"]
    listing = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(site)!r}); "
         "from fedsim.cli import main; main(['list'])"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "buffered_mean (entry point my-fl-algos)" in listing.stdout, listing


def test_fedsim_list_names_every_kind(capsys):
    from fedsim.cli import main

    main(["list"])
    kinds = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert "ring" in kinds["graphs"] and "metropolis_hastings" in kinds["mixing rules"]
    assert kinds["staleness functions"] == "constant, polynomial, hinge"
    assert kinds["server optimizers"] == "sgd, momentum, nesterov, adam, yogi, adagrad"
    assert kinds["algorithms"].startswith("fedavg, fedasync, fedbuff")


def test_a_plugin_that_raises_during_the_run_is_named_and_the_trace_kept(tmp_path, small_learning):
    (tmp_path / "broken.py").write_text(
        PLUGIN.read_text()
        + "\n\nclass Broken(BufferedMean):\n"
        + "    def on_arrival(self, job):\n"
        + "        if self.server.version >= 2:\n"
        + "            raise ValueError('my bug')\n"
        + "        super().on_arrival(job)\n"
    )
    data = {**small_learning, "algorithm": {"name": "broken.py:Broken", "concurrency": 6, "k": 3}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    done = _cli("run", path, "-q", "--no-plots", "--out", "r", cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert (
        lines[0].startswith("error: algorithm plugin ") and "broken.py:Broken (target)" in lines[0]
    )
    assert "raised at simulated time" in lines[0] and lines[0].endswith("ValueError: my bug")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["stop_reason"] == "error" and summary["versions"] == 2
