"""Faults injected into real CLI runs, and whether each run's data came through exactly.

Each trial runs ``fedsim run`` in a subprocess on a small timing-only scenario and injects one fault
at a random moment (seeded): SIGKILL then ``--resume``, SIGINT, SIGTERM, a second run into the same
directory, a damaged trace part after a kill. "Recovered exactly" means: the resumed files equal an
uninterrupted run's (events byte for byte, evals but for the wall-clock column); an interrupted run
is readable with ``stop_reason: interrupted`` and the right exit status; a concurrent run is refused
with exit 2 and leaves the first run whole; a damaged part is skipped and every other row read.

    python benchmarks/fault_injection.py --out benchmarks/results/fault_injection.json
    python benchmarks/fault_injection.py --table benchmarks/results/fault_injection.json
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

from fedsim.simulation import Result

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_io

SCENARIO = {
    "name": "faults",
    "seed": 11,
    "stop": {"time_s": 10000.0},
    "training": "none",
    "clients": {"count": 200, "compute": {"dist": "exponential", "mean_s": 1.0}},
    "algorithm": {"name": "fedasync", "concurrency": 20},
    "eval": {"every_s": 5.0},
    "output": {"flush_rows": 2000},
}
LONG = {**SCENARIO, "name": "faults_long", "stop": {"time_s": 1e6}}
"""Runs until it is stopped: for the faults that must find the run still going."""
COMMAND = "python benchmarks/fault_injection.py --out benchmarks/results/fault_injection.json"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedsim.cli", "run", *args]


def _start(work: Path, out: str, *extra: str, scenario: str = "scenario.yaml") -> subprocess.Popen:
    return subprocess.Popen(
        _cli(scenario, "-q", "--no-plots", "--out", out, *extra),
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _in_loop(work: Path, out: str, process: subprocess.Popen) -> None:
    """Wait until the run writes its trace (it is inside the event loop)."""
    while not (work / out / "evals.parquet.parts").exists():
        if process.poll() is not None:
            raise RuntimeError(f"run ended early: {process.stderr.read()}")
        time.sleep(0.05)


def _same(work: Path, a: str, b: str) -> bool:
    if (work / a / "events.parquet").read_bytes() != (work / b / "events.parquet").read_bytes():
        return False
    evals = [
        pd.read_parquet(work / d / "evals.parquet").drop(columns="real_time_s") for d in (a, b)
    ]
    return evals[0].equals(evals[1])


def kill_and_resume(work: Path, rng: random.Random) -> bool:
    reference = subprocess.run(
        _cli("scenario.yaml", "-q", "--no-plots", "--out", "reference"),
        cwd=work,
        capture_output=True,
    )
    assert reference.returncode == 0, reference.stderr
    process = _start(work, "run")
    _in_loop(work, "run", process)
    time.sleep(rng.uniform(0.0, 3.0))
    process.kill()
    process.wait()
    resumed = subprocess.run(_cli("-q", "--resume", "run"), cwd=work, capture_output=True)
    return resumed.returncode == 0 and _same(work, "run", "reference")


def interrupt(sig: signal.Signals, code: int) -> Callable[[Path, random.Random], bool]:
    def trial(work: Path, rng: random.Random) -> bool:
        process = _start(work, "run", scenario="long.yaml")
        _in_loop(work, "run", process)
        time.sleep(rng.uniform(0.0, 3.0))
        process.send_signal(sig)
        if process.wait(timeout=300) != code:
            return False
        result = Result.load(work / "run")
        return result.summary.get("stop_reason") == "interrupted" and len(result.events) == sum(
            result.summary["status_counts"].values()
        )

    return trial


def concurrent_run(work: Path, rng: random.Random) -> bool:
    """The second run is refused; the first, stopped later by Ctrl-C, is whole and its own."""
    first = _start(work, "run", scenario="long.yaml")
    _in_loop(work, "run", first)
    time.sleep(rng.uniform(0.0, 1.0))
    second = subprocess.run(
        _cli("long.yaml", "-q", "--out", "run", "--overwrite", "--set", "seed=3"),
        cwd=work,
        capture_output=True,
    )
    first.send_signal(signal.SIGINT)
    if second.returncode != 2 or first.wait(timeout=600) != 130:
        return False
    result = Result.load(work / "run")
    counts = sum(result.summary["status_counts"].values())
    return result.summary["seed"] == result.scenario.seed == 11 and len(result.events) == counts


def damaged_part(work: Path, rng: random.Random) -> bool:
    process = _start(work, "run", scenario="long.yaml")
    folder = work / "run" / "events.parquet.parts"
    _in_loop(work, "run", process)
    while len(list(folder.glob("part-*.parquet"))) < 3:  # a part to damage, and others to read
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 2.0))
    process.kill()
    process.wait()
    parts = sorted(folder.glob("part-*.parquet"))
    victim = rng.choice(parts)
    others = sum(len(pd.read_parquet(p)) for p in parts if p != victim)
    victim.write_bytes(victim.read_bytes()[: rng.randint(0, 64)])  # a write cut short
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return len(Result.load(work / "run").events) == others


FAULTS: dict[str, tuple[str, Callable[[Path, random.Random], bool], int]] = {
    "kill": ("SIGKILL at a random moment, then `fedsim run --resume`", kill_and_resume, 4),
    "sigint": ("Ctrl-C (SIGINT) at a random moment", interrupt(signal.SIGINT, 130), 3),
    "sigterm": ("SIGTERM at a random moment", interrupt(signal.SIGTERM, 143), 3),
    "concurrent": (
        "a second run (with --overwrite) into a running run's directory",
        concurrent_run,
        2,
    ),
    "damaged": ("SIGKILL, then one trace part cut short", damaged_part, 3),
}


def run_trials(seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for key, (label, trial, count) in FAULTS.items():
        recovered = 0
        for _ in range(count):
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                (work / "scenario.yaml").write_text(yaml.safe_dump(SCENARIO))
                (work / "long.yaml").write_text(yaml.safe_dump(LONG))
                recovered += bool(trial(work, rng))
        rows.append({"fault": key, "label": label, "tried": count, "recovered": recovered})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(results: dict) -> str:
    """The markdown table of a results file (docs/validation.md holds it verbatim)."""
    lines = ["| fault injected | tried | recovered exactly |", "|---|---:|---:|"]
    for row in results["rows"]:
        lines.append(f"| {row['label']} | {row['tried']} | {row['recovered']} |")
    return "\n".join(lines)


def main() -> None:
    parser = results_io.parser(__doc__)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if results_io.reprint(args, table):
        return
    results_io.write(args, table, run_trials(args.seed), command=COMMAND, seed=args.seed)


if __name__ == "__main__":
    main()
