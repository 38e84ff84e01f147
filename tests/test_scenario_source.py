"""Where a scenario came from: relative paths are relative to the scenario file (not the working
directory), a loaded Scenario remembers its file and the line of each key, and errors found after
validation (check_runnable, the run's build) name ``FILE:LINE:`` of their key."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import fedsim
from fedsim.checks import check_runnable
from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.scenario import load_scenario, read_yaml
from fedsim.sweep import load_sweep

SCENARIO = """\
name: portable
seed: 3
stop: {time_s: 20}
data:
  dataset: npz
  path: data/small.npz
  partition: {kind: iid}
model: {kind: mlp, hidden: [8]}
training: {local_steps: 2, batch_size: 8, lr: 0.1}
clients:
  compute: {dist: exponential, mean_s: 2.0}
algorithm: {name: dfl, consensus_steps: 2}
topology:
  servers: 4
  clients_per_server: 1
  graph:
    kind: from_file
    path: tables/edges.txt
  mixing: {kind: from_file, path: tables/w.txt}
eval: {every_s: 10}
"""
"""A learning run reading three files by relative paths: data.path is on line 6 and
topology.graph on line 16 (its path on line 18)."""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """``proj/s.yaml`` with its npz file and topology tables beside it; the tests run elsewhere."""
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "tables").mkdir()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(
        proj / "data" / "small.npz", x_train=x[:80], y_train=y[:80], x_test=x[80:], y_test=y[80:]
    )
    (proj / "tables" / "edges.txt").write_text("0 1\n1 2\n2 3\n3 0\n")
    (proj / "tables" / "w.txt").write_text(
        "1/3 1/3 0 1/3\n1/3 1/3 1/3 0\n0 1/3 1/3 1/3\n1/3 0 1/3 1/3\n"
    )
    (proj / "s.yaml").write_text(SCENARIO)
    (tmp_path / "elsewhere").mkdir()
    return proj


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------------
# Relative paths: against the scenario file's folder


def test_loading_makes_relative_paths_absolute_against_the_file(project, monkeypatch):
    monkeypatch.chdir(project.parent / "elsewhere")
    scenario = load_scenario("../proj/s.yaml")
    assert scenario.data.path == str(project / "data" / "small.npz")
    assert scenario.topology.graph.path == str(project / "tables" / "edges.txt")
    assert scenario.topology.mixing.path == str(project / "tables" / "w.txt")
    # The run directory is not a data path: it stays relative to where the command runs.
    assert scenario.output.dir == "runs/{name}"
    # read_yaml (a sweep's base) resolves the same way.
    assert read_yaml("../proj/s.yaml")["data"]["path"] == scenario.data.path


def test_mappings_and_overrides_resolve_against_the_working_directory(project, monkeypatch):
    here = project.parent / "elsewhere"
    monkeypatch.chdir(here)
    given = {"data": {"dataset": "npz", "path": "x.npz"}}
    assert load_scenario(given).data.path == str(here / "x.npz")
    # An override is typed where the command runs, not in the file.
    scenario = load_scenario(project / "s.yaml", ["data.path=other/y.npz"])
    assert scenario.data.path == str(here / "other" / "y.npz")
    assert scenario.topology.graph.path == str(project / "tables" / "edges.txt")
    # base_dir: another folder for a mapping (what a sweep file's own values would use).
    assert load_scenario(given, base_dir=project).data.path == str(project / "x.npz")
    # Absolute paths, ~ and module targets are left as they are (~ expanded).
    absolute = {"data": {"dataset": "npz", "path": str(project / "data" / "small.npz")}}
    assert load_scenario(absolute).data.path == str(project / "data" / "small.npz")
    home = load_scenario({"data": {"dataset": "npz", "path": "~/z.npz"}}).data.path
    assert home == str(Path("~/z.npz").expanduser())
    module = {"data": {"dataset": "import", "target": "my_pkg.loaders:load"}}
    assert load_scenario(module).data.target == "my_pkg.loaders:load"


def test_file_targets_and_default_topology_files_resolve_against_the_file(project, monkeypatch):
    (project / "loaders").mkdir()
    (project / "loaders" / "mine.py").write_text(
        "import numpy as np\n"
        "def load():\n"
        "    x = np.arange(60, dtype=np.float32).reshape(30, 2)\n"
        "    y = np.arange(30) % 2\n"
        "    return {'x_train': x[:20], 'y_train': y[:20], 'x_test': x[20:], 'y_test': y[20:]}\n"
    )
    path = project / "t.yaml"
    path.write_text(
        "data: {dataset: import, target: 'loaders/mine.py:load', partition: {kind: iid}}\n"
        "clients: {count: 4}\n"
        "algorithm: {name: dfl}\n"
        "topology: {servers: 4, clients_per_server: 1, graph: {kind: from_file}}\n"
    )
    (project / "edges.txt").write_text("0 1\n1 2\n2 3\n")  # the default file name, beside t.yaml
    monkeypatch.chdir(project.parent / "elsewhere")
    scenario = load_scenario(path)
    assert scenario.data.target == f"{project / 'loaders' / 'mine.py'}:load"
    assert scenario.topology.graph.path == str(project / "edges.txt")
    check_runnable(scenario)  # the loader is imported and called, the graph read, from elsewhere


def test_run_from_another_directory_matches_a_run_beside_the_file(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    code, _out, err = _cli(["run", "s.yaml", "-q", "--no-plots", "--out", "../beside"], capsys)
    assert code == 0, err
    monkeypatch.chdir(project.parent / "elsewhere")
    code, _out, err = _cli(["run", "../proj/s.yaml", "-q", "--no-plots", "--out", "far"], capsys)
    assert code == 0, err
    beside, far = project.parent / "beside", project.parent / "elsewhere" / "far"
    # The same scenario (same hash: the paths resolve to the same files), the same events.
    saved = yaml.safe_load((far / "scenario.yaml").read_text())
    assert saved["data"]["path"] == str(project / "data" / "small.npz")
    assert saved["topology"]["graph"]["path"] == str(project / "tables" / "edges.txt")
    assert (far / "scenario.yaml").read_text() == (beside / "scenario.yaml").read_text()
    pd.testing.assert_frame_equal(
        pd.read_parquet(beside / "events.parquet"), pd.read_parquet(far / "events.parquet")
    )


def test_validate_from_another_directory(project):
    elsewhere = project.parent / "elsewhere"
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "validate", "../proj/s.yaml"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: portable (dfl, hash ")
    # Before, data/small.npz was looked up in the working directory: the same file there fails.
    (project / "data" / "small.npz").rename(project / "data" / "moved.npz")
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "validate", "../proj/s.yaml"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: ../proj/s.yaml:6: data.path: no such file {project / 'data' / 'small.npz'}"
    )


def test_a_saved_run_resumes_from_another_directory(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    code, _out, err = _cli(["run", "s.yaml", "-q", "--no-plots", "--out", "run"], capsys)
    assert code == 0, err
    first = pd.read_parquet(project / "run" / "events.parquet")
    monkeypatch.chdir(project.parent / "elsewhere")
    code, _out, err = _cli(["run", "-q", "--no-plots", "--resume", "../proj/run"], capsys)
    assert code == 0, err
    pd.testing.assert_frame_equal(first, pd.read_parquet(project / "run" / "events.parquet"))
    # With the scenario named too: it is the same scenario wherever it is loaded from.
    code, _out, err = _cli(
        ["run", "../proj/s.yaml", "-q", "--no-plots", "--resume", "../proj/run"], capsys
    )
    assert code == 0, err


def test_sweep_cells_resolve_against_the_base_file(project, monkeypatch):
    sweeps = project / "sweeps"
    sweeps.mkdir()
    (sweeps / "grid.yaml").write_text(
        "base: ../s.yaml\ngrid: {algorithm.consensus_steps: [1, 2]}\nseeds: [0]\n"
    )
    monkeypatch.chdir(project.parent / "elsewhere")
    sweep = load_sweep("../proj/sweeps/grid.yaml")
    for cell in sweep.cells:
        assert cell.scenario.data.path == str(project / "data" / "small.npz")
        # What a worker receives (a mapping) loads to the same scenario in any directory.
        assert load_scenario(cell.scenario.to_dict()).hash() == cell.hash


# ---------------------------------------------------------------------------------------------------
# The scenario remembers its source; its keys, hash and YAML do not


def test_source_is_kept_but_not_part_of_the_scenario(project, monkeypatch):
    monkeypatch.chdir(project)
    scenario = load_scenario("s.yaml", ["seed=4"])
    source = scenario.source
    assert source is not None and source.file == "s.yaml"
    assert source.lines[("data", "path")] == 6
    assert source.lines[("topology", "graph", "path")] == 18
    assert source.overrides == ("seed",)
    # Not a key: to_dict/to_yaml (the run's scenario.yaml) and the hash ignore it.
    again = load_scenario(scenario.to_dict())
    assert again.source is not None and again.source.file is None
    assert again.to_dict() == scenario.to_dict() and again.to_yaml() == scenario.to_yaml()
    assert again.hash() == scenario.hash() and again == scenario
    assert "source" not in scenario.to_dict()
    # Copies and re-loads keep it.
    assert scenario.model_copy(update={"seed": 9}).source == source
    reloaded = load_scenario(scenario, {"clients.compute.mean_s": 3.0})
    assert reloaded.source.file == "s.yaml"
    assert reloaded.source.overrides == ("seed", "clients.compute.mean_s")
    # A Scenario built directly has none.
    assert fedsim.Scenario().source is None


def test_hash_does_not_depend_on_the_working_directory(project, monkeypatch):
    monkeypatch.chdir(project)
    beside = load_scenario("s.yaml")
    monkeypatch.chdir(project.parent / "elsewhere")
    far = load_scenario("../proj/s.yaml")
    assert far.hash() == beside.hash()
    assert load_scenario(project / "s.yaml").hash() == beside.hash()
    # A scenario without file paths hashes the same in any folder.
    plain = "name: plain\nclients: {count: 7}\n"
    (project / "plain.yaml").write_text(plain)
    (project.parent / "elsewhere" / "plain.yaml").write_text(plain)
    assert load_scenario(project / "plain.yaml").hash() == load_scenario("plain.yaml").hash()
    # Documented: a copy of a file with relative paths in another folder names other files, so it
    # is another scenario (its data may differ) and hashes differently.
    (project.parent / "elsewhere" / "s.yaml").write_text(SCENARIO)
    assert load_scenario("s.yaml").hash() != beside.hash()


# ---------------------------------------------------------------------------------------------------
# Errors after validation name FILE:LINE


def test_check_runnable_errors_name_the_line_of_their_key(project, monkeypatch, capsys):
    monkeypatch.chdir(project.parent / "elsewhere")
    (project / "tables" / "edges.txt").write_text("0 1\n2 3\n")  # two components
    path = "../proj/s.yaml"
    code, _out, err = _cli(["validate", path], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:16: topology.graph: "), err
    assert "connected" in lines[0]
    # The same line from the API (check_runnable, Simulation and fedsim.run).
    scenario = load_scenario(path)
    with pytest.raises(ScenarioError) as info:
        check_runnable(scenario)
    assert info.value.lines == [lines[0].removeprefix("error: ")]
    assert info.value.problems[0].file == path and info.value.problems[0].line == 16
    with pytest.raises(ScenarioError) as info:
        fedsim.Simulation(scenario, device="cpu")
    assert str(info.value) == lines[0].removeprefix("error: ")
    with pytest.raises(ScenarioError) as info:
        fedsim.run(path, save=False)
    assert str(info.value) == lines[0].removeprefix("error: ")
    # fedsim run says the same.
    code, _out, err = _cli(["run", path, "-q", "--out", "r"], capsys)
    assert code == 2 and err.strip() == lines[0]


def test_an_override_names_the_set_and_resolves_in_the_working_directory(
    project, monkeypatch, capsys
):
    here = project.parent / "elsewhere"
    monkeypatch.chdir(here)
    code, _out, err = _cli(["validate", "../proj/s.yaml", "--set", "data.path=gone.npz"], capsys)
    assert code == 2
    assert err.strip() == f"error: --set data.path: no such file {here / 'gone.npz'}"


def test_a_key_the_file_does_not_hold_names_the_file(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: crowded\nstop: {time_s: 10}\n\nclients:\n  count: 5000\n")
    code, _out, err = _cli(["validate", str(path)], capsys)
    assert code == 2
    assert err.strip() == (
        f"error: {path}:5: clients.count: 5000 clients for the 1438 training samples of digits: "
        "every client needs at least one"
    )
    # A key left to its default is shown at the file (no line to point at).
    path.write_text("name: big\ntraining: none\nmodel:\n  kind: mlp\n")
    scenario = load_scenario(path)
    error = scenario.locate_error(ScenarioError("too large", path="model.hidden"))
    assert error.lines == [f"{path}:3: model.hidden: too large"]  # its closest section
    error = scenario.locate_error(ScenarioError("too many", path="clients.count"))
    assert error.lines == [f"{path}: clients.count: too many"]
    # A problem that names no key, or already has its place, is left alone.
    assert scenario.locate_error(ScenarioError("no key")).lines == ["no key"]
    # A scenario given as a mapping has no file: the key path alone.
    plain = load_scenario({"clients": {"count": 5000}})
    with pytest.raises(ScenarioError) as info:
        check_runnable(plain)
    assert info.value.lines[0].startswith("clients.count: 5000 clients")


def test_aggregator_and_attack_file_targets_resolve_against_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(Path(__file__).parent / "plugins" / "robust_functions.py", folder / "fns.py")
    (folder / "s.yaml").write_text(
        "aggregator: {name: custom, target: 'fns.py:user_mean'}\n"
        "byzantine: {fraction: 0.1, attack: {name: custom, target: 'fns.py:user_sign_flip',"
        " stage: client}}\n"
    )
    monkeypatch.chdir(tmp_path)  # not the scenario's folder
    scenario = fedsim.load_scenario("study/s.yaml")
    assert scenario.aggregator.target == f"{folder / 'fns.py'}:user_mean"
    assert scenario.byzantine.attack.target == f"{folder / 'fns.py'}:user_sign_flip"
