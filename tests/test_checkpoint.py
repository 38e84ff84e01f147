"""Checkpoints: a run stopped at any moment and resumed gives the files of a run never stopped."""

from __future__ import annotations

import json
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import fedsim
from fedsim.errors import ScenarioError

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"

# Every algorithm that can be checkpointed, on a shipped scenario made short.
CASES = {
    "fedasync": ("quickstart.yaml", {}),
    "dfl": ("dfl_toy.yaml", {}),
    "drpga": ("drpga.yaml", {}),
    "dsgd": ("dsgd_merge.yaml", {}),
    "dsgd_async": (
        "dsgd_merge.yaml",
        {
            "algorithm.mode": "async",
            "algorithm.async_rule": "latest",
            "clients.compute": {"dist": "exponential", "mean_s": 1.0},
        },
    ),
    "fedavg": ("fedavg_deadline.yaml", {}),
    "fedbuff": ("fedbuff.yaml", {}),
    "fedbuff_c": ("fedfix_compare.yaml", {"algorithm": {"name": "fedbuff_c"}}),
    "fedfix": ("fedfix_compare.yaml", {}),
    "async_fedavg": ("fedfix_compare.yaml", {"algorithm": {"name": "async_fedavg"}}),
    "frain": ("frain_nullifiers.yaml", {}),
    "modest": ("modest.yaml", {}),
    "brain": ("frain_nullifiers.yaml", {"algorithm.name": "brain", "-": ("merge", "adaptive")}),
}


def _scenario(name: str) -> dict:
    file, change = CASES[name]
    data = yaml.safe_load((SCENARIOS / file).read_text())
    for key, value in change.items():
        if key == "-":  # FRAIN's own keys, which BRAIN does not take
            for leaf in value:
                data["algorithm"].pop(leaf, None)
        elif "." in key:
            section, leaf = key.split(".")
            data[section][leaf] = value
        else:
            data[key] = value
    data["stop"] = {"time_s": 120.0}
    data["eval"] = {"every_s": 10.0}
    if "topology" not in data:  # with one, the topology says how many clients
        data.setdefault("clients", {})["count"] = min(data["clients"].get("count", 100), 40)
    # Every checkpoint taken (none skipped for its cost), so the test knows where a resume starts.
    data["output"] = {"checkpoint_every_s": 25.0, "checkpoint_max_overhead": None, "flush_rows": 64}
    return data


class StopAt:
    """Stops the process at an evaluation, as a kill would: no file is finished."""

    def __init__(self, at: float) -> None:
        self.at = at

    def on_eval(self, *, sim_time: float) -> None:
        if sim_time >= self.at:
            raise KeyboardInterrupt


def _same_files(a: Path, b: Path) -> None:
    assert (a / "events.parquet").read_bytes() == (b / "events.parquet").read_bytes()
    evals = [pd.read_parquet(d / "evals.parquet").drop(columns="real_time_s") for d in (a, b)]
    pd.testing.assert_frame_equal(*evals, check_exact=True)


@pytest.mark.parametrize(
    "name",
    [n if n == "fedasync" else pytest.param(n, marks=pytest.mark.slow) for n in sorted(CASES)],
)
def test_a_stopped_run_resumes_to_the_same_files(tmp_path, name):
    data = _scenario(name)
    try:
        reference = fedsim.run(data, out=tmp_path / "whole")
    except ScenarioError as exc:  # pragma: no cover - a shortened scenario that is invalid
        pytest.fail(f"{name}: {exc}")
    assert reference.summary["checkpoints"] >= 3
    assert not (tmp_path / "whole" / "checkpoint.pkl").exists()  # finished: nothing to resume
    rng = random.Random(name)
    for trial in range(2):
        at = rng.choice([30.0, 50.0, 70.0, 100.0])
        out = tmp_path / f"stopped{trial}"
        with pytest.raises(KeyboardInterrupt):
            fedsim.run(data, out=out, callbacks=[StopAt(at)])
        assert (out / "checkpoint.pkl").is_file() and not (out / "events.parquet").exists()
        resumed = fedsim.run(resume=out)
        assert resumed.summary["resumed_from_s"] == 25.0 * int(at // 25.0)
        assert resumed.summary["updates"] == reference.summary["updates"]
        _same_files(out, tmp_path / "whole")


WAITING_ALGORITHM = """
from typing import Literal
from fedsim.algorithms.base import Algorithm
from fedsim.config_base import Section


class WaitsConfig(Section):
    name: Literal["waits"] = "waits"


class Waits(Algorithm):
    \"\"\"Keeps its state in a generator process: one update per 5 simulated seconds.\"\"\"

    name = "waits"
    config_class = WaitsConfig

    def run(self):
        while True:
            yield self.env.timeout(5.0)
            self.publish(None)

    def on_arrival(self, job):
        self.record(job, "applied")
"""


def test_rows_kept_across_checkpoints_are_spilled_once_and_read_back(tmp_path):
    """With no trace part written for the whole run, every checkpoint appends only its new rows
    to the spill file; a stop and resume reads them back (and cuts what came after)."""
    data = _scenario("fedbuff")
    data["output"]["flush_rows"] = 1_000_000
    reference = fedsim.run(data, out=tmp_path / "whole")
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(data, out=out, callbacks=[StopAt(80.0)])
    parts = out / "events.parquet.parts"
    assert not list(parts.glob("part-*"))  # stopped as by a kill: no part written
    spills = list(parts.glob("rows-*.pkl"))
    assert [p.name for p in spills] == ["rows-00000.pkl"]
    with spills[0].open("rb") as file:  # one chunk per checkpoint, each with new rows only
        chunks = []
        while file.tell() < spills[0].stat().st_size:
            chunks.append(pickle.load(file))
    assert len(chunks) == 3 and all(chunks)  # at 25, 50 and 75 s
    rows = [row for chunk in chunks for row in chunk]
    assert len(set(rows)) == len(rows)  # no row twice
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)  # in recording order
    with spills[0].open("ab") as file:  # bytes after what the last checkpoint knew: cut
        file.write(b"junk")
    resumed = fedsim.run(resume=out)
    assert resumed.summary["updates"] == reference.summary["updates"]
    _same_files(out, tmp_path / "whole")


def test_checkpoints_past_the_overhead_budget_are_skipped(tmp_path):
    data = _scenario("fedasync")
    data["output"]["checkpoint_max_overhead"] = 1e-6  # after the first, every one is too dear
    result = fedsim.run(data, out=tmp_path / "tight")
    assert result.summary["checkpoints"] == 1 and result.summary["checkpoints_skipped"] == 3
    data["output"]["checkpoint_max_overhead"] = None
    result = fedsim.run(data, out=tmp_path / "all")
    assert result.summary["checkpoints"] == 4 and result.summary["checkpoints_skipped"] == 0
    with pytest.raises(ScenarioError, match=r"output\.checkpoint_max_overhead"):
        fedsim.load_scenario({**data, "output": {"checkpoint_max_overhead": 0}})


def test_checkpoints_are_refused_for_an_algorithm_that_cannot_save_its_state(tmp_path):
    (tmp_path / "waits.py").write_text(WAITING_ALGORITHM)
    data = _scenario("fedasync")
    data["algorithm"] = {"name": f"{tmp_path / 'waits.py'}:Waits"}
    data["training"] = "none"
    with pytest.raises(
        ScenarioError, match=r"output\.checkpoint_every_s: algorithm .*waits\.py:Waits keeps"
    ):
        fedsim.run(data, save=False)
    data["output"] = {}
    assert fedsim.run(data, save=False).summary["versions"] == 24  # it runs without checkpoints


def test_a_damaged_checkpoint_is_one_line(tmp_path):
    data = _scenario("fedasync")
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(data, out=tmp_path / "r", callbacks=[StopAt(60.0)])
    (tmp_path / "r" / "checkpoint.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ScenarioError, match=r"checkpoint\.pkl: not a readable checkpoint"):
        fedsim.run(resume=tmp_path / "r")


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", *args], cwd=cwd,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.slow  # several CLI processes
def test_sigkill_and_sigint_at_random_moments_then_resume(tmp_path):
    """Real signals: kill -9 (the checkpoint taken by the wall-clock timer) and Ctrl-C (a
    checkpoint taken at the stop), each resumed with `fedsim run --resume`."""
    data = _scenario("fedbuff")
    data["stop"] = {"time_s": 900.0}
    data["output"] = {"checkpoint_every_wall_s": 0.5, "flush_rows": 64}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    whole = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", "s.yaml", "-q", "--no-plots", "--out", "whole"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    rng = random.Random(7)
    for trial, sig in enumerate([signal.SIGKILL, signal.SIGKILL, signal.SIGINT]):
        out = f"r{trial}"
        process = _cli("run", "s.yaml", "-q", "--no-plots", "--out", out, cwd=tmp_path)
        deadline = time.monotonic() + 300
        while not (tmp_path / out / "checkpoint.pkl").exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(sig)
        process.communicate(timeout=300)
        if process.returncode == 0:  # finished before the signal: nothing to resume
            continue
        assert process.returncode in (-signal.SIGKILL, 130)
        resumed = subprocess.run(
            [sys.executable, "-m", "fedsim.cli", "run", "-q", "--no-plots", "--resume", out],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        summary = json.loads((tmp_path / out / "summary.json").read_text())
        assert summary["resumed_from_s"] > 0
        _same_files(tmp_path / out, tmp_path / "whole")
