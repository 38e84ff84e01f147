"""FedAST's buffer and Realloc counters, and benchmarks/experiments/fedast_buffers.py's tiny run.

Independent checks: ``requests_moved`` against the allocation history (the positive part of each
reallocation's change of ``R_m``), ``largest_buffer`` against the traced ``buffered`` arrivals
between two server steps of a task, and the shipped budget's degenerate case (nothing to move and
buffers of 1 while all three tasks run) against the arithmetic ``24 − 3·8 = 0``.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "fedast_multitask.yaml"
EXPERIMENTS = ROOT / "benchmarks" / "experiments"


def _run(overrides: dict) -> Simulation:
    sim = Simulation(load_scenario(SCENARIO, {"stop.time_s": 25, **overrides}))
    sim.run()
    return sim


def _moved_from_history(algo) -> int:
    """Σ over reallocations of the requests some task gained, rebuilt from ``allocations``."""
    realloc_times = {t for t, _ in algo.mean_dispersion}
    total = 0
    for (_, before), (t, after) in zip(algo.allocations, algo.allocations[1:], strict=False):
        if t in realloc_times:
            total += sum(max(0, a - b) for a, b in zip(after, before, strict=True))
    return total


@pytest.mark.slow
def test_wider_budget_fills_buffers_and_realloc_moves_requests():
    sim = _run({"algorithm.concurrency": 48, "algorithm.buffer_ratio": 4})
    algo = sim.algorithm
    extra = algo.summary_extra()
    assert extra["requests_moved"] == _moved_from_history(algo) > 0
    assert max(extra["largest_buffer"]) > 1
    for m, largest in enumerate(extra["largest_buffer"]):
        assert largest <= math.ceil(max(r[m] for _, r in algo.allocations) / 4)


@pytest.mark.slow
def test_shipped_budget_moves_nothing_while_all_three_tasks_run():
    """24 = 3·8: Realloc has no slack until a task finished and its 8 requests went to the others;
    a buffer grows past ceil(8/8) = 1 only then too."""
    algo = _run({}).algorithm
    extra = algo.summary_extra()
    assert extra["requests_moved"] == _moved_from_history(algo)
    realloc_times = {t for t, _ in algo.mean_dispersion}
    first_done = min(
        (t for t, _ in algo.allocations[1:] if t not in realloc_times), default=math.inf
    )
    before = [r for t, r in algo.allocations if t < first_done]
    assert all(r == before[0] == (8, 8, 8) for r in before)
    for m, largest in enumerate(extra["largest_buffer"]):
        most = max(r[m] for _, r in algo.allocations)
        assert 1 <= largest <= math.ceil(most / 8)


@pytest.mark.slow
def test_no_buffer_arm_steps_on_every_arrival():
    extra = _run(
        {"algorithm.concurrency": 48, "algorithm.buffer_ratio": None, "algorithm.buffer_size": 1}
    ).algorithm.summary_extra()
    assert extra["largest_buffer"] == [1, 1, 1]


@pytest.mark.slow
def test_tiny_cpu_version_writes_rows_and_table(tmp_path):
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    exp = importlib.import_module("fedast_buffers")
    out = tmp_path / "r.json"
    argv = ["--seeds", "0", "1", "--time-s", "15", "--delays", "shifted exponential"]
    exp.main([*argv, "--out", str(out)])
    results = json.loads(out.read_text(encoding="utf-8"))
    assert len(results["rows"]) == 3 * 2
    assert {r["arm"] for r in results["rows"]} == set(exp.ARMS)
    text = exp.table(results)
    assert "| shifted exponential | no buffer |" in text and "FedAST − no Realloc" in text
