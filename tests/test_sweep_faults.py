"""Sweeps that lose no data (issue 16, item 4), through the CLI in a subprocess.

A finished cell whose files were damaged afterwards runs again (``fedsim sweep``) or is skipped with
one line (``fedsim collect``); ``kill -9`` of ``fedsim sweep --jobs 2`` leaves no process behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedsim.sweep import cell_state, collect_cells, run_sweep

ROOT = Path(__file__).resolve().parent.parent


def fedsim_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``fedsim ARGS`` in a fresh interpreter running this checkout's fedsim."""
    return subprocess.run(
        [sys.executable, "-m", "fedsim.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def write_sweep(tmp_path: Path, scenario: dict, grid: dict, fixed: dict | None = None) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(scenario))
    spec = {"base": "base.yaml", "grid": grid, "seeds": [0], "set": fixed or {}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_damaged_finished_cells_run_again_and_collect_skips_them(tmp_path, small_learning, caplog):
    path = write_sweep(
        tmp_path,
        {**small_learning, "training": "none", "stop": {"time_s": 30}},
        {"clients.count": [6, 7, 8, 9, 10]},
    )
    out = tmp_path / "out"
    first = run_sweep(path, out, progress=False)
    assert (first.ran, first.skipped) == (5, 0)
    whole = pd.read_parquet(out / "results.parquet")
    cells = [c["dir"] for c in json.loads((out / "sweep.json").read_text())["cells"]]
    events = {c: (out / c / "events.parquet").read_bytes() for c in cells}

    # What a kill, a full disk or a user leaves in a cell that had finished.
    intact, cut_evals, no_events, cut_summary, half_events = cells
    for cell, name, keep in [
        (cut_evals, "evals.parquet", 4),
        (cut_summary, "summary.json", 4),
        (half_events, "events.parquet", len(events[half_events]) // 2),
    ]:
        (out / cell / name).write_bytes((out / cell / name).read_bytes()[:keep])
    (out / no_events / "events.parquet").unlink()
    intact_mtime = (out / intact / "summary.json").stat().st_mtime_ns
    damage = [
        (cut_evals, "evals.parquet is unreadable"),
        (no_events, "events.parquet is missing"),
        (cut_summary, "summary.json is unreadable"),
        (half_events, "events.parquet is unreadable"),
    ]

    # collect: exit 0, the intact cell's rows, one line naming the damaged cells.
    collected = fedsim_cli("collect", out)
    assert collected.returncode == 0, collected.stderr
    assert "1 of 5 cells finished" in collected.stdout
    warning = collected.stderr.strip().splitlines()
    assert len(warning) == 1, collected.stderr
    assert warning[0].startswith("warning: 4 of 5 cells finished but their files are damaged")
    assert "skipped (`fedsim sweep` runs them again)" in warning[0]
    shown = [f"{cell} ({what})" for cell, what in damage]
    assert sum(s in warning[0] for s in shown) == 3 and "and 1 more" in warning[0]
    partial = pd.read_parquet(out / "results.parquet")
    expected = whole[whole["cell"] == Path(intact).name].reset_index(drop=True)
    pd.testing.assert_frame_equal(partial, expected)

    # sweep: the damaged cells run again (into their own directories), the intact one does not.
    again = fedsim_cli("sweep", path, "--out", out, "-q")
    assert again.returncode == 0, again.stderr
    assert "5 cells (4 run, 1 already finished)" in again.stdout
    assert "4 of 5 cells finished but their files are damaged, run again" in again.stderr
    assert (out / intact / "summary.json").stat().st_mtime_ns == intact_mtime
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), whole)
    for cell in cells:  # same seed, same bytes
        assert (out / cell / "events.parquet").read_bytes() == events[cell], cell

    # Nothing is damaged any more: every cell counts, and nothing is reported.
    with caplog.at_level(logging.WARNING, logger="fedsim.sweep"):
        table, finished, total = collect_cells(out)
    assert (finished, total) == (5, 5) and caplog.records == []
    pd.testing.assert_frame_equal(table, whole)


def test_an_interrupted_cell_is_not_finished(tmp_path, small_learning):
    """A run stopped by Ctrl-C or SIGTERM writes a summary with ``stop_reason: interrupted``."""
    path = write_sweep(
        tmp_path,
        {**small_learning, "training": "none", "stop": {"time_s": 30}},
        {"clients.count": [6, 7]},
    )
    out = tmp_path / "out"
    run_sweep(path, out, progress=False)
    cell = json.loads((out / "sweep.json").read_text())["cells"][0]
    summary_path = out / cell["dir"] / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert cell_state(out / cell["dir"], cell["hash"]) == (summary, None)
    summary_path.write_text(json.dumps({**summary, "stop_reason": "interrupted"}))
    assert cell_state(out / cell["dir"], cell["hash"]) == (None, None)  # unfinished, not damaged
    again = run_sweep(path, out, progress=False)
    assert (again.ran, again.skipped) == (1, 1)
    assert json.loads(summary_path.read_text())["stop_reason"] == "time"


# ---------------------------------------------------------------------------------------------------
# kill -9 of a sweep with a process pool


def _processes() -> dict[int, tuple[int, str, str]]:
    """pid → (parent pid, state, start time) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        table[int(entry.name)] = (int(fields[1]), fields[0], fields[19])
    return table


def _descendants(pid: int) -> dict[int, str]:
    """pid → start time of every live descendant of ``pid``."""
    table = _processes()
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, state, start) in table.items():
            if ppid == parent and child not in found and state != "Z":
                found[child] = start
                frontier.append(child)
    return found


def _alive(processes: dict[int, str]) -> list[int]:
    """Those of ``processes`` (pid → start time) still running (not zombies, not a reused pid)."""
    table = _processes()
    return [
        pid
        for pid, start in processes.items()
        if pid in table and table[pid][1] != "Z" and table[pid][2] == start
    ]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_kill_9_of_a_sweep_leaves_no_process_running(tmp_path, small_learning):
    # Cells long enough to be still running when the sweep is killed.
    path = write_sweep(
        tmp_path,
        {**small_learning, "stop": {"time_s": 100_000}},
        {"clients.count": [10, 11, 12, 13]},
    )
    out = tmp_path / "out"
    sweep = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedsim.cli",
            "sweep",
            str(path),
            "--out",
            str(out),
            "-j",
            "2",
            "-q",
        ],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # Wait until two workers run cells: forkserver → workers, each with its cell's directory.
        deadline = time.monotonic() + 180
        while True:
            children = _descendants(sweep.pid)
            started = list(out.glob("cells/*/scenario.yaml"))
            if len(started) >= 2 and len(children) >= 4:  # resource tracker, forkserver, 2 workers
                break
            assert sweep.poll() is None, sweep.stderr.read().decode()
            assert time.monotonic() < deadline, f"no workers after 180 s: {children}"
            time.sleep(0.2)
        time.sleep(1.0)  # the workers are inside their cells
        children = _descendants(sweep.pid)
        sweep.send_signal(signal.SIGKILL)
        sweep.wait(timeout=10)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    assert sweep.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = _alive(children)
    for pid in survivors:  # leave nothing behind, whatever the assertion says
        os.kill(pid, signal.SIGKILL)
    assert survivors == [], f"{len(survivors)} of {len(children)} processes outlived the sweep"
    # The killed cells did not finish: the next sweep runs them (none is counted as done).
    assert not list(out.glob("cells/*/summary.json"))


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_ctrl_c_of_a_sweep_keeps_the_running_cells_and_starts_no_other(tmp_path, small_learning):
    path = write_sweep(
        tmp_path,
        {**small_learning, "stop": {"time_s": 100_000}},
        {"clients.count": [10, 11, 12, 13]},
    )
    out = tmp_path / "out"
    sweep = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedsim.cli",
            "sweep",
            str(path),
            "--out",
            str(out),
            "-j",
            "2",
            "-q",
        ],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
    )
    try:
        deadline = time.monotonic() + 180
        while len(list(out.glob("cells/*/evals.parquet.parts"))) < 2:  # two cells recording
            assert sweep.poll() is None, sweep.stderr.read()
            assert time.monotonic() < deadline, "no cell started in 180 s"
            time.sleep(0.2)
        time.sleep(1.0)
        children = _descendants(sweep.pid)
        os.killpg(sweep.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = sweep.communicate(timeout=60)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    assert sweep.returncode == 130, err
    summaries = [json.loads(p.read_text()) for p in out.glob("cells/*/summary.json")]
    assert len(summaries) == 2, "the two running cells keep their trace, no other cell started"
    assert {s["stop_reason"] for s in summaries} == {"interrupted"}
    assert len(list(out.glob("cells/*"))) == 2
    deadline = time.monotonic() + 10
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = _alive(children)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


# ---------------------------------------------------------------------------------------------------
# The sweep process leaves no native thread behind at exit

THREADS_AFTER_SWEEP = """
import os, sys
import pyarrow, torch  # their own threads (jemalloc's, torch's) start at import: counted in before
from fedsim.sweep import collect, run_sweep

def threads():
    return len(os.listdir("/proc/self/task"))

if __name__ == "__main__":
    before = threads()
    run_sweep(sys.argv[1], sys.argv[2], jobs=2, progress=False)
    collect(sys.argv[2])
    print(before, threads())
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_a_sweep_leaves_no_arrow_thread_to_abort_at_exit(tmp_path, small_learning):
    """The exit abort ("terminate called without an active exception") needs a native thread that
    is still alive when the interpreter exits: the sweep process starts none that outlives it."""
    path = write_sweep(
        tmp_path,
        {**small_learning, "training": "none", "stop": {"time_s": 30}},
        {"clients.count": [6, 9]},
    )
    proc = subprocess.run(
        [sys.executable, "-c", THREADS_AFTER_SWEEP, str(path), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    before, after = map(int, proc.stdout.split())
    assert after == before, f"{after - before} more threads after the sweep than before"


def test_an_interrupted_cell_with_a_checkpoint_goes_on_from_it(tmp_path, small_learning):
    """A cell killed after a checkpoint resumes from it when the sweep runs again, and its files
    equal those of a sweep never interrupted."""
    import fedsim

    base = {
        **small_learning,
        "output": {"checkpoint_every_s": 20.0, "checkpoint_max_overhead": None},  # all taken
    }
    path = write_sweep(tmp_path, base, {"clients.count": [12, 16]})
    whole = tmp_path / "whole"
    run_sweep(path, whole, progress=False)
    out = tmp_path / "out"
    run_sweep(path, out, progress=False)
    cell = json.loads((out / "sweep.json").read_text())["cells"][1]
    cell_dir = out / cell["dir"]

    class Kill:
        def on_eval(self, *, sim_time):
            if sim_time >= 45:
                raise KeyboardInterrupt

    scenario = fedsim.load_scenario(cell_dir / "scenario.yaml")
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(scenario, out=cell_dir, overwrite=True, threads=1, callbacks=[Kill()])
    assert (cell_dir / "checkpoint.pkl").is_file()
    again = run_sweep(path, out, progress=False)
    assert (again.ran, again.skipped) == (1, 1)
    summary = json.loads((cell_dir / "summary.json").read_text())
    assert summary["resumed_from_s"] == 40.0
    assert (cell_dir / "events.parquet").read_bytes() == (
        whole / cell["dir"] / "events.parquet"
    ).read_bytes()
