"""Runs never lose data, tried as a user would: kills, Ctrl-C, SIGTERM, re-runs, two runs at once.

Every case goes through the CLI in a subprocess (the real signals, exit statuses and files).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import fedsim
from fedsim import rundir
from fedsim.errors import ScenarioError, SimulationError

# Timing only and fast: about 20k events a second, so a long horizon runs until it is stopped.
ENDLESS = {
    "name": "endless",
    "seed": 5,
    "stop": {"time_s": 1e7},
    "training": "none",
    "clients": {"count": 200, "compute": {"dist": "exponential", "mean_s": 1.0}},
    "algorithm": {"name": "fedasync", "concurrency": 20},
    "eval": {"every_s": 5.0},
    "output": {"flush_rows": 1000},
}
SHORT = {**ENDLESS, "name": "short", "stop": {"time_s": 400.0}}


def _write(tmp_path: Path, data: dict, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _fedsim(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fedsim.cli", *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def _start(*args: str | Path, cwd: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "fedsim.cli", *map(str, args)]
    return subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until the run is in its event loop (its first evaluation was flushed to a part)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_and_keeps_its_trace(tmp_path, sig, code):
    scenario = _write(tmp_path, ENDLESS)
    process = _start("run", scenario, "-q", "--out", "run", cwd=tmp_path)
    _wait_for(tmp_path / "run" / "evals.parquet.parts", process)
    time.sleep(1.0)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code
    line = _one_error_line(stderr)
    name = signal.Signals(sig).name
    assert line.startswith(f"error: interrupted by {name} at simulated time ")
    assert line.endswith("`fedsim run --resume run` runs it to the end")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted" and summary["interrupted_by"] == name
    result = fedsim.Result.load(tmp_path / "run")
    assert len(result.events) == sum(summary["status_counts"].values()) > 0
    assert len(result.evals) >= 1 and not (tmp_path / "run" / rundir.LOCK).exists()


@pytest.mark.slow  # several CLI processes
def test_a_killed_run_is_readable_and_resume_finishes_it_exactly(tmp_path):
    scenario = _write(tmp_path, {**ENDLESS, "stop": {"time_s": 3000.0}})
    process = _start("run", scenario, "-q", "--out", "killed", cwd=tmp_path)
    _wait_for(tmp_path / "killed" / "events.parquet.parts", process)
    process.kill()  # SIGKILL: nothing is finished, no handler runs
    process.communicate(timeout=60)
    killed = fedsim.Result.load(tmp_path / "killed")
    assert len(killed.events) > 0 and len(killed.evals) > 0
    assert not (tmp_path / "killed" / "events.parquet").exists()
    # The stale lock of the dead process does not block the resume.
    assert (tmp_path / "killed" / rundir.LOCK).exists()
    resumed = _fedsim("run", "-q", "--resume", "killed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    whole = _fedsim("run", scenario, "-q", "--out", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    for name in ("events.parquet",):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    evals = [
        pd.read_parquet(tmp_path / d / "evals.parquet").drop(columns="real_time_s")
        for d in ("killed", "whole")
    ]
    pd.testing.assert_frame_equal(*evals)


@pytest.mark.slow  # several CLI processes
def test_resume_refuses_another_scenario_or_another_version(tmp_path):
    scenario = _write(tmp_path, SHORT)
    assert _fedsim("run", scenario, "-q", "--no-plots", "--out", "r", cwd=tmp_path).returncode == 0
    other = _write(tmp_path, {**SHORT, "seed": 6}, "other.yaml")
    refused = _fedsim("run", other, "--resume", "r", cwd=tmp_path)
    assert refused.returncode == 2
    assert "the scenario differs from the one in r (hash" in _one_error_line(refused.stderr)
    marker = tmp_path / "r" / rundir.MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "fedsim": "0.0.1"}))
    refused = _fedsim("run", "--resume", "r", cwd=tmp_path)
    assert refused.returncode == 2
    assert "r was written by fedsim 0.0.1, this is fedsim" in _one_error_line(refused.stderr)
    nothing = _fedsim("run", "--resume", "elsewhere", cwd=tmp_path)
    assert nothing.returncode == 2
    assert (
        _one_error_line(nothing.stderr) == "error: nothing to resume: elsewhere holds no fedsim run"
    )


@pytest.mark.slow  # several CLI processes
def test_a_directory_holding_a_run_is_refused_and_kept(tmp_path):
    scenario = _write(tmp_path, SHORT)
    first = _fedsim("run", scenario, "-q", "--out", "r", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "r" / "plots").is_dir()
    before = (tmp_path / "r" / "events.parquet").read_bytes()
    again = _fedsim("run", scenario, "-q", "--out", "r", "--set", "seed=9", cwd=tmp_path)
    assert again.returncode == 2
    assert _one_error_line(again.stderr) == (
        "error: r already holds a run; pass --overwrite to replace it, --resume to continue it, "
        "or choose another --out"
    )
    # --overwrite with a scenario refused only when built (a missing data file): old run intact.
    missing = _fedsim(
        "run", scenario, "-q", "--out", "r", "--overwrite",
        "--set", "training={}", "--set", "data.dataset=mnist", "--set", "data.path=nowhere",
        cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2, missing.stderr
    assert (tmp_path / "r" / "events.parquet").read_bytes() == before
    # A real overwrite replaces everything, the old plots too when the new run makes none.
    replaced = _fedsim(
        "run", scenario, "-q", "--out", "r", "--overwrite", "--no-plots", "--set", "seed=9",
        cwd=tmp_path,
    )  # fmt: skip
    assert replaced.returncode == 0, replaced.stderr
    assert not (tmp_path / "r" / "plots").exists()
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["seed"] == 9
    assert yaml.safe_load((tmp_path / "r" / "scenario.yaml").read_text())["seed"] == 9


@pytest.mark.slow  # several CLI processes
def test_a_folder_that_is_not_a_run_is_never_written_into(tmp_path):
    own = tmp_path / "mine"
    own.mkdir()
    scenario = _write(own, SHORT)
    text = "# my comments\n" + scenario.read_text()
    scenario.write_text(text)
    for extra in ([], ["--overwrite"]):
        refused = _fedsim("run", scenario, "-q", "--out", "mine", *extra, cwd=tmp_path)
        assert refused.returncode == 2
        assert _one_error_line(refused.stderr) == (
            "error: mine is not a fedsim run directory; fedsim never writes into it "
            "(choose another --out)"
        )
    assert scenario.read_text() == text and sorted(os.listdir(own)) == ["scenario.yaml"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        _fedsim("run", scenario, "-q", "--no-plots", "--out", "empty", cwd=tmp_path).returncode == 0
    )


@pytest.mark.slow  # several CLI processes
def test_two_runs_into_one_directory_at_once(tmp_path):
    """One runs; the other is refused with one line; the directory holds one consistent run."""
    scenario = _write(tmp_path, ENDLESS)
    first = _start("run", scenario, "-q", "--no-plots", "--out", "r", cwd=tmp_path)
    _wait_for(tmp_path / "r" / "events.parquet.parts", first)
    second = _fedsim("run", scenario, "-q", "--out", "r", "--set", "seed=1", cwd=tmp_path)
    assert second.returncode == 2
    assert _one_error_line(second.stderr) == (
        f"error: r is in use by another fedsim run (pid {first.pid})"
    )
    forced = _fedsim("run", scenario, "-q", "--out", "r", "--overwrite", cwd=tmp_path)
    assert forced.returncode == 2 and "in use by another fedsim run" in forced.stderr
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 143
    result = fedsim.Result.load(tmp_path / "r")
    assert result.summary["seed"] == 5 and result.scenario.seed == 5
    assert len(result.events) == sum(result.summary["status_counts"].values())


def test_a_stale_lock_is_taken_over(tmp_path):
    (tmp_path / "r").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "r" / rundir.LOCK).write_text(f"{dead.pid}\n")
    run = fedsim.run(SHORT, out=tmp_path / "r")
    assert run.summary["stop_reason"] == "time" and not (tmp_path / "r" / rundir.LOCK).exists()


def test_python_api_errors_are_scenario_errors(tmp_path):
    with pytest.raises(
        ScenarioError, match="must be a file path, a mapping or a Scenario, got list"
    ):
        fedsim.run([1, 2])
    with pytest.raises(ScenarioError, match="overrides must be a mapping"):
        fedsim.run(SHORT, [1, 2], save=False)
    one = fedsim.run(SHORT, "stop.time_s=50", save=False)  # one string is one override
    assert one.summary["sim_time_s"] == 50
    with pytest.raises(ScenarioError, match="out: an empty path"):
        fedsim.run(SHORT, out="")
    with pytest.raises(ScenarioError, match="already holds a run"):
        fedsim.run(SHORT, out=tmp_path / "r")
        fedsim.run(SHORT, out=tmp_path / "r")


def test_a_clock_that_cannot_advance_fails_with_the_trace_kept(tmp_path, monkeypatch):
    """A process that keeps scheduling at the same instant: the guard names the smallest period."""
    from fedsim import simulation

    monkeypatch.setattr(simulation, "STALL_EVENTS", 200_000)
    sim = simulation.Simulation(fedsim.load_scenario(SHORT), run_dir=tmp_path / "r")

    def stuck():
        yield sim.env.timeout(3.0)
        while True:
            yield sim.env.timeout(0)

    sim.env.process(stuck())
    with pytest.raises(SimulationError, match=r"simulated time stuck at 3 s for 262,144 events"):
        sim.run()
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["stop_reason"] == "error"
    assert "the smallest duration is clients.compute.mean_s = 1" in summary["error"]
    assert len(pd.read_parquet(tmp_path / "r" / "events.parquet")) > 0


def test_an_empty_out_is_refused_not_the_current_directory(tmp_path):
    scenario = _write(tmp_path, SHORT)
    refused = _fedsim("run", scenario, "-q", "--out", "", cwd=tmp_path)
    assert refused.returncode == 2
    assert _one_error_line(refused.stderr) == (
        "error: Invalid value for --out: an empty path; name the directory"
    )
    assert sorted(os.listdir(tmp_path)) == ["scenario.yaml"]
