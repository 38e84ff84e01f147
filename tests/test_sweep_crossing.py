"""What a sweep's worker processes get from the process that started it (fedsim/sweep_crossing.py):
a registered algorithm importable by module path runs there (the same traces as in-process), and
what cannot cross (a class of ``python -c``, a ``kind: memory`` model) is one line at the start,
before any cell runs. Each case runs in a fresh interpreter, as a user's script would."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGINS = Path(__file__).parent / "plugins"

SCRIPT = """
import sys
import yaml
from fedsim import plugins
from fedsim.errors import ScenarioError
from fedsim.sweep import load_sweep, run_sweep
{define}
if __name__ == "__main__":
    plugins.register_algorithm(BufferedMean, name={name!r})
    base = {{
        "name": "small", "seed": 3, "stop": {{"time_s": 20}},
        "data": {{"dataset": "digits", "partition": {{"kind": "iid"}}}},
        "model": {{"kind": {model!r}, "hidden": [8]}} if {model!r} == "mlp" else {{"kind": "memory"}},
        "training": {{"local_steps": 2, "batch_size": 16, "lr": 0.05}},
        "clients": {{"count": 10, "compute": {{"dist": "exponential", "mean_s": 2.0}}}},
        "algorithm": {{"name": {name!r}, "concurrency": 4, "k": 2}},
        "eval": {{"every_s": 10.0}},
    }}
    open("base.yaml", "w").write(yaml.safe_dump(base))
    sweep = {{"name": "t", "base": "base.yaml", "grid": {{"algorithm.k": [2, 3]}}}}
    try:
        run_sweep(load_sweep(sweep, root="."), sys.argv[2], jobs=int(sys.argv[1]), progress=False)
    except ScenarioError as exc:
        print(exc)
        sys.exit(2)
"""

IMPORTED = "from buffered_mean import BufferedMean"
IN_SCRIPT = f"exec(open({str(PLUGINS / 'buffered_mean.py')!r}).read())  # defined in __main__"


def _sweep(tmp_path: Path, jobs: int, out: str, *, define: str, name: str, model: str = "mlp",
           as_file: bool = True) -> subprocess.CompletedProcess:  # fmt: skip
    code = SCRIPT.format(define=define, name=name, model=model)
    if as_file:
        script = tmp_path / "sweep_script.py"
        script.write_text(code)
        command = [sys.executable, str(script), str(jobs), out]
    else:
        command = [sys.executable, "-c", code, str(jobs), out]
    return subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**_env(), "PYTHONPATH": str(PLUGINS)},
    )  # fmt: skip


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _event_hashes(out: Path) -> list[str]:
    files = sorted((out / "cells").glob("*/events.parquet"))
    return [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]


@pytest.mark.parametrize("name", ["buffered_mean", "my_mean"])
def test_an_importable_registered_algorithm_runs_in_the_workers_as_in_process(tmp_path, name):
    """Registered as itself or under another name: two workers give the in-process traces."""
    pooled = _sweep(tmp_path, 2, "pooled", define=IMPORTED, name=name)
    assert pooled.returncode == 0, pooled.stderr[-2000:]
    here = _sweep(tmp_path, 1, "here", define=IMPORTED, name=name)
    assert here.returncode == 0, here.stderr[-2000:]
    hashes = _event_hashes(tmp_path / "pooled")
    assert len(hashes) == 2 and hashes[0] != hashes[1]
    assert hashes == _event_hashes(tmp_path / "here")


def test_a_class_the_workers_cannot_import_is_one_line_before_any_cell(tmp_path):
    done = _sweep(tmp_path, 2, "out", define=IN_SCRIPT, name="mine", as_file=False)
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stdout.strip()
    assert "\n" not in line
    assert line.startswith("algorithm.name: 'mine' was registered in this process")
    assert "__main__.BufferedMean cannot cross into the sweep's worker processes" in line
    assert "'pkg.mod:Class'" in line and "jobs=1" in line
    assert not (tmp_path / "out" / "cells").exists()
    # The same script as a file: its __main__ is imported by the workers, so the class crosses.
    assert _sweep(tmp_path, 2, "file", define=IN_SCRIPT, name="mine").returncode == 0
    assert len(_event_hashes(tmp_path / "file")) == 2


def test_a_memory_model_is_one_line_before_any_cell(tmp_path):
    done = _sweep(tmp_path, 2, "out", define=IMPORTED, name="buffered_mean", model="memory")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout.strip() == (
        "model.kind: the model passed to fedsim.run is an object of this process and cannot "
        "cross into the sweep's worker processes; use kind: import with target 'pkg.mod:Factory' "
        "(or 'file.py:Factory'), or jobs=1"
    )
    assert not (tmp_path / "out" / "cells").exists()
