"""benchmarks/experiments/drpga_frontier.py: a tiny CPU version checked against its own runs.

Bytes to target are recomputed from each run's event log (the client bytes of the jobs finished by
the first evaluation at or above the target), and the table's figures from the rows with numpy and
scipy's own t-interval, not with the script's helpers.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats as st

import fedsim

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "benchmarks" / "experiments"
TARGET = 0.6
HORIZON = 40.0


def _module(name: str):
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return importlib.import_module(name)


def _bytes_to_first_reach(result, target: float) -> float | None:
    """MB sent by clients up to the first evaluation at or above ``target`` (None: never)."""
    evals = result.evals
    hit = evals[evals["accuracy"] >= target]
    if hit.empty:
        return None
    jobs = result.events[result.events["status"] != "message"]
    done = jobs[jobs["sim_time"] <= float(hit["sim_time"].iloc[0])]
    return float((done["bytes_up"] + done["bytes_down"]).sum()) / 1e6


def _mean_half(values: list[float]) -> tuple[float, float]:
    xs = np.asarray(values, dtype=float)
    half = st.t.ppf(0.975, len(xs) - 1) * xs.std(ddof=1) / np.sqrt(len(xs))
    return float(xs.mean()), float(half)


def test_goal_verdicts_follow_the_intervals():
    exp = _module("drpga_frontier")
    from stats import Interval

    def i(lo: float, hi: float) -> Interval:
        return Interval((lo + hi) / 2, (hi - lo) / 2, 10)

    assert exp.goal(i(-0.95, -0.85), i(-0.8, 0.5), True) == "met"
    assert exp.goal(i(-0.95, -0.85), i(-0.8, 0.5), False) == "met on means only"  # censored
    assert exp.goal(i(-0.95, -0.70), i(-0.8, 0.5), True) == "met on means only"
    assert exp.goal(i(-0.95, -0.85), i(-1.6, 0.5), True) == "met on means only"
    assert exp.goal(i(-0.80, -0.70), i(-0.8, 0.5), True) == "not met"
    assert exp.goal(i(-0.95, -0.85), i(-3.0, -1.2), True) == "not met"


def test_tiny_version_against_its_runs(tmp_path):
    exp = _module("drpga_frontier")
    out = tmp_path / "r.json"
    argv = ["--seeds", "0", "1", "--time-s", str(HORIZON), "--target", str(TARGET),
            "--schemes", "DRPGA walk", "DRPGA fixed 0.05", "--out", str(out)]  # fmt: skip
    exp.main(argv)
    results = json.loads(out.read_text(encoding="utf-8"))
    rows = results["rows"]
    assert len(rows) == 6  # FedAvg is always run: the baseline
    by = {(r["scheme"], r["seed"]): r for r in rows}

    p = {**exp.PRESETS["cpu"], "time_s": HORIZON, "target": TARGET}
    for (scheme, seed), row in by.items():
        result = fedsim.run(exp.SCENARIO, exp.overrides(p, scheme, seed), save=False)
        b = result.summary["bytes"]
        total = (b["client_up"] + b["client_down"]) / 1e6
        to_target = _bytes_to_first_reach(result, TARGET)
        assert row["mb_total"] == total > 0
        assert row["reached"] == (to_target is not None)
        assert row["mb_to_target"] == (total if to_target is None else to_target)
        assert row["mb_to_target"] <= row["mb_total"]
    # A fixed 5 % rate uploads 5 % of the model per job: far fewer bytes than FedAvg over the run.
    for seed in (0, 1):
        assert by[("DRPGA fixed 0.05", seed)]["mb_total"] < 0.3 * by[("FedAvg", seed)]["mb_total"]

    text = exp.table(results)
    for scheme in ("DRPGA walk", "DRPGA fixed 0.05"):
        acc = [
            100 * (by[(scheme, s)]["final_acc"] - by[("FedAvg", s)]["final_acc"]) for s in (0, 1)
        ]
        mean, half = _mean_half(acc)
        assert f"| {scheme} | {mean:+.1f} ± {half:.1f} |" in text
        for col in ("mb_to_target", "mb_total"):
            rel = [100 * (by[(scheme, s)][col] / by[("FedAvg", s)][col] - 1) for s in (0, 1)]
            mean, half = _mean_half(rel)
            assert f"{mean:+.0f} ± {half:.0f} %" in text
        finals = [by[(scheme, s)]["final_acc"] for s in (0, 1)]
        mean, half = _mean_half(finals)
        assert f"| {scheme} | {mean:.3f} ± {half:.3f} |" in text
