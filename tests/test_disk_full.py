"""A full disk (issue 16): the run stops with one line naming the file it could not write, exit 1,
and every file written before stays intact (a run with a checkpoint resumes once there is room).

The full disk is real to the process: a child runs ``fedsim run`` under a file-size limit
(``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored so that a write past it fails with EFBIG), which fedsim
treats as ENOSPC and EDQUOT.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

import fedsim
from fedsim.rundir import DiskFullError, writing

LIMITED = """
import resource, signal, sys
limit = int(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
{body}
"""
CLI = LIMITED.format(body="from fedsim.cli import main\nmain(sys.argv[2:])")

SCENARIO = {
    "name": "full_disk",
    "seed": 1,
    "stop": {"time_s": 2000.0},
    "training": "none",
    "clients": {"count": 200, "compute": {"dist": "exponential", "mean_s": 1.0}},
    "algorithm": {"name": "fedasync", "concurrency": 20},
    "eval": {"every_s": 50.0},
    "output": {
        "flush_rows": 2000,
        "checkpoint_every_s": 100.0,
        "checkpoint_max_overhead": None,
    },
}


def _fedsim(*args: str, cwd: Path, limit: int | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fedsim.cli", *args]
    if limit is not None:
        command = [sys.executable, "-c", CLI, str(limit), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """The run never interrupted, to compare with."""
    root = tmp_path_factory.mktemp("disk")
    (root / "s.yaml").write_text(yaml.safe_dump(SCENARIO))
    done = _fedsim("run", "s.yaml", "-q", "--no-plots", "--out", "whole", cwd=root)
    assert done.returncode == 0, done.stderr
    return root / "whole"


@pytest.mark.parametrize(
    "fraction",
    [0.02, pytest.param(0.3, marks=pytest.mark.slow), pytest.param(0.99, marks=pytest.mark.slow)],
)
def test_a_full_disk_stops_the_run_with_one_line_and_keeps_what_was_written(
    tmp_path, whole, fraction
):
    """The limit, a fraction of the finished events.parquet, is hit by the first trace part, by
    a later part or spill file, or by the final merge: each stops the run the same way."""
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SCENARIO))
    limit = int(fraction * (whole / "events.parquet").stat().st_size)
    done = _fedsim("run", "s.yaml", "-q", "--no-plots", "--out", "r", cwd=tmp_path, limit=limit)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: disk full: could not write r/")
    assert "(File too large) at simulated time" in lines[0]
    named = tmp_path / lines[0].split("could not write ")[1].split(" (")[0]
    assert not named.exists() or named.stat().st_size <= limit  # never a half-written file
    out = tmp_path / "r"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if ".tmp-" in p.name]  # half-written temporary files removed
    for path in files:
        if path.suffix == ".parquet":
            pq.read_table(path)  # every trace file and part left is whole
    assert (
        fedsim.load_scenario(out / "scenario.yaml").hash() == fedsim.load_scenario(SCENARIO).hash()
    )
    assert not (out / "summary.json").exists() and not (out / ".fedsim-lock").exists()
    if (out / "checkpoint.pkl").exists():  # room again: the resume gives the files of `whole`
        assert "fedsim run --resume r goes on from it" in lines[0]
        resumed = _fedsim("run", "-q", "--no-plots", "--resume", "r", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert (out / "events.parquet").read_bytes() == (whole / "events.parquet").read_bytes()
        evals = [
            pd.read_parquet(d / "evals.parquet").drop(columns="real_time_s") for d in (out, whole)
        ]
        pd.testing.assert_frame_equal(*evals, check_exact=True)
    else:
        assert fraction < 0.1  # only a limit hit before the first checkpoint leaves none


@pytest.mark.slow  # 20,000 clients
def test_the_first_checkpoint_on_a_full_disk_leaves_no_file(tmp_path):
    """A checkpoint larger than the room left: named, and no checkpoint (nor its temporary
    file) left behind to resume from."""
    data = {**SCENARIO, "clients": {"count": 20_000, "compute": {"dist": "exponential"}}}
    data["algorithm"] = {"name": "fedasync", "concurrency": 50}
    data["output"] = {**SCENARIO["output"], "flush_rows": 50}  # small parts: the checkpoint is big
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    done = _fedsim("run", "s.yaml", "-q", "--no-plots", "--out", "r", cwd=tmp_path, limit=60_000)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not write r/checkpoint.pkl (File too large)" in lines[0]
    assert "at simulated time 100.000s" in lines[0] and "--resume" not in lines[0]
    left = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert "checkpoint.pkl" not in left and not [n for n in left if ".tmp-" in n]
    parts = sorted((tmp_path / "r" / "events.parquet.parts").glob("part-*.parquet"))
    assert parts and sum(pq.read_table(p).num_rows for p in parts) >= 50 * len(parts) - 50


WRITE = LIMITED.format(
    body="""
from pathlib import Path
from fedsim.rundir import DiskFullError, writing
path, tmp = Path(sys.argv[2]), Path(sys.argv[3])
try:
    with writing(path, tmp):
        tmp.write_text("x" * 4096)
except DiskFullError as exc:
    print(exc.path, exc)
"""
)


def test_writing_turns_a_real_full_disk_into_one_error_and_removes_the_temporary_file(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", WRITE, "1000", str(tmp_path / "summary.json"), str(tmp_path / "t")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"{tmp_path / 'summary.json'} disk full: could not write {tmp_path / 'summary.json'} "
        "(File too large)"
    )
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_no_space_a_quota_and_a_size_limit_are_one_error(tmp_path, code):
    full = pytest.raises(DiskFullError, match=r"could not write .*x\.parquet \(")
    with full, writing(tmp_path / "x.parquet"):
        raise OSError(code, "no room")


def test_other_write_errors_pass_unchanged(tmp_path):
    with pytest.raises(PermissionError), writing(tmp_path / "x.parquet"):
        raise PermissionError(errno.EACCES, "denied")
