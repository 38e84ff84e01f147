"""benchmarks/experiments/attacks_aggregators.py: its tiny CPU version, checked against the runs
themselves, and its tables' marks checked against Student-t intervals computed here."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
from scipy import stats

import fedsim

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "benchmarks" / "experiments"


def _module():
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return importlib.import_module("attacks_aggregators")


def _t_mark(a: list[float], b: list[float]) -> str:
    """▲ / ▼ / '' from a two-sided 95 % t interval of the paired differences a − b."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return " ▲" if mean - half > 0 else " ▼" if mean + half < 0 else ""


def _row(attack: str, aggregator: str, pre: str, seed: int, acc: float) -> dict:
    return {"algorithm": "FedAvg", "attack": attack, "aggregator": aggregator, "pre": pre,
            "seed": seed, "final_acc": acc, "acc_at": acc / 2, "versions": 10,
            "robust_fallbacks": 0, "sets": 10, "byzantine_rows": 0 if attack == "none" else 40,
            "sets_over_f": 0 if attack == "none" else seed}  # fmt: skip


def test_aggregator_sections_tell_each_rule_f_of_twenty_percent():
    exp = _module()
    p = exp.PRESETS["cpu"]
    assert exp.f_of(p) == 4  # 20 % of the 20 rows of one aggregation
    assert exp.aggregator_section(p, "krum", "nnm") == {
        "name": "krum", "f": 4, "pre": [{"name": "nnm", "f": 4}]}  # fmt: skip
    assert exp.aggregator_section(p, "trimmed_mean", "none") == {
        "name": "trimmed_mean", "trim_fraction": 0.2}  # fmt: skip
    s = exp.scenario(p, "FedBuff", "none", "mean", "none", 3)
    assert "byzantine" not in s and s["algorithm"]["buffer_size"] == 20 and s["seed"] == 3
    assert s["data"]["partition"] == {"kind": "dirichlet", "alpha": 0.3}
    # every default cell is a valid scenario (validation only, no run)
    from fedsim.scenario import load_scenario

    for algorithm in exp.ALGORITHMS:
        for attack in exp.DEFAULT_ATTACKS:
            for aggregator in exp.AGGREGATORS:
                load_scenario(exp.scenario(p, algorithm, attack, aggregator, "nnm", 0))


def test_table_marks_are_the_t_intervals_of_the_paired_differences():
    exp = _module()
    mean = [0.10, 0.12, 0.09, 0.11, 0.10]
    robust = [0.60, 0.55, 0.62, 0.58, 0.61]  # clearly above the mean on every seed
    noisy = [0.30, 0.05, 0.20, 0.02, 0.15]  # around the mean: no difference
    rows = []
    for seed in range(5):
        rows += [
            _row("sign_flip", "mean", "none", seed, mean[seed]),
            _row("sign_flip", "krum", "none", seed, noisy[seed]),
            _row("sign_flip", "krum", "nnm", seed, robust[seed]),
            _row("sign_flip", "mean", "nnm", seed, mean[seed] - 0.05),  # NNM lower everywhere
        ]
    results = {"seeds": list(range(5)), "time_s": {"FedAvg": 60.0}, "at_s": {"FedAvg": 30.0},
               "preset": {"rows": 20}, "f": 4, "rows": rows}  # fmt: skip
    text = exp.table(results)
    krum_nnm = next(line for line in text.splitlines() if line.startswith("| krum + NNM |"))
    assert krum_nnm.endswith(_t_mark(robust, mean) + " |") and _t_mark(robust, mean) == " ▲"
    final, _at, nnm = [line for line in text.splitlines() if line.startswith("| krum |")]
    half = stats.t.ppf(0.975, 4) * stats.tstd(noisy) / math.sqrt(5)
    assert _t_mark(noisy, mean) == "" and final == f"| krum | {0.144:.3f} ± {half:.3f} |"
    # NNM's effect on krum: robust − noisy, paired; on the mean: −0.05 on every seed
    assert nnm.startswith("| krum | " + exp.paired(robust, noisy).format("+.3f"))
    assert nnm.endswith(_t_mark(robust, noisy) + " |")
    assert "| mean | -0.050 ± 0.000 ▼ |" in text
    # the summary counts the same marks: vs mean krum ▲ (with NNM), krum no difference,
    # mean + NNM ▼; NNM: krum ▲, mean ▼
    assert ("beats `mean` in 1, loses to it in 1, no difference seen in 1; NNM helps in 1, hurts "
            "in 1, no difference seen in 0.") in text  # fmt: skip
    # 40 Byzantine rows in 10 sets each run; seeds 0..4 have 0..4 sets over f: 40 of 200 sets
    assert "4.00 Byzantine rows per aggregation of 20, 20 % of the aggregations" in text


@pytest.mark.slow
def test_tiny_cpu_version_against_the_runs_themselves(tmp_path):
    exp = _module()
    out = tmp_path / "r.json"
    argv = ["--seeds", "0", "1", "--algorithms", "FedAvg", "--attacks", "sign_flip",
            "--aggregators", "mean", "trimmed_mean", "--pre", "none", "--out", str(out)]  # fmt: skip
    exp.main(argv)
    results = json.loads(out.read_text(encoding="utf-8"))
    rows = results["rows"]
    assert results["command"] == " ".join(argv) and len(rows) == 4
    by = {(r["aggregator"], r["seed"]): r for r in rows}

    p = exp.PRESETS["cpu"]
    result = fedsim.run(
        exp.scenario(p, "FedAvg", "sign_flip", "trimmed_mean", "none", 1), save=False
    )
    row = by[("trimmed_mean", 1)]
    assert row["final_acc"] == result.evals["accuracy"].iloc[-1] == result.summary["final_accuracy"]
    at = result.evals.set_index("sim_time")["accuracy"]
    assert row["acc_at"] == at.loc[30.0] and results["at_s"]["FedAvg"] == 30.0
    # Full participation: every round aggregates all 20 clients, exactly the 4 attackers among them.
    assert row["byzantine_clients"] == 4 and row["sets"] == row["versions"] > 10
    assert row["byzantine_rows"] == 4 * row["sets"] and row["sets_over_f"] == 0
    assert row["robust_fallbacks"] == 0

    # Sign-flipped ×4 updates from 4 of 20 clients: the mean's step points backwards (chance
    # accuracy: 10 classes), the trimmed mean drops 4 values per side per coordinate and learns.
    for seed in (0, 1):
        assert by[("mean", seed)]["final_acc"] < 0.2 < 0.3 < by[("trimmed_mean", seed)]["final_acc"]
    text = exp.table(results)
    tm = [by[("trimmed_mean", s)]["final_acc"] for s in (0, 1)]
    mn = [by[("mean", s)]["final_acc"] for s in (0, 1)]
    line = next(x for x in text.splitlines() if x.startswith("| trimmed_mean |"))
    assert line.endswith(_t_mark(tm, mn) + " |")
