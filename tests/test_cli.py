"""The command line: every malformed input exits 2 with ONE line naming the culprit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedsim.cli import main

# (case id, YAML text, extra CLI args, text the one-line error must contain)
BAD_INPUTS = [
    (
        "negative mean",
        "clients: {compute: {dist: exponential, mean_s: -1}}",
        [],
        "clients.compute.mean_s: must be > 0",
    ),
    ("zero mean", "clients: {compute: {mean_s: 0}}", [], "clients.compute.mean_s"),
    (
        "unknown key suggests",
        "clients: {compte: {dist: exponential}}",
        [],
        "did you mean 'compute'",
    ),
    ("unknown top key", "stpo: {time_s: 5}", [], "did you mean 'stop'"),
    ("unknown algorithm", "algorithm: {name: fedprox}", [], "known: fedavg, fedasync, fedbuff"),
    (
        "unknown delay law",
        "clients: {compute: {dist: gamma}}",
        [],
        "clients.compute.dist: unknown name 'gamma'",
    ),
    ("wrong type", "clients: {count: many}", [], 'clients.count: must be an integer, got "many"'),
    ("float count", "clients: {count: 2.5}", [], "clients.count: must be an integer"),
    ("yaml syntax", "clients: {count: 5", [], "line 2"),
    ("unknown dataset", "data: {dataset: imagenet}", [], "data.dataset: must be one of digits"),
    (
        "typo in algorithm key",
        "algorithm: {name: fedasync, alpah: 0.5}",
        [],
        "algorithm.alpah: unknown key; did you mean 'alpha'",
    ),
    ("no stop condition", "stop: {time_s: null}", [], "stop: set at least one of"),
    (
        "uniform bounds",
        "clients: {compute: {dist: uniform, low_s: 5, high_s: 1}}",
        [],
        "high_s must be > low_s",
    ),
    ("negative hidden width", "model: {hidden: [64, -3]}", [], "model.hidden.1: must be > 0"),
    ("zero lr", "training: {lr: 0}", [], "training.lr: must be > 0"),
    (
        "alpha above one",
        "algorithm: {name: fedasync, alpha: 1.5}",
        [],
        "algorithm.alpha: must be <= 1",
    ),
    (
        "negative latency",
        "clients: {network: {latency_s: -0.1}}",
        [],
        "clients.network.latency_s: must be >= 0",
    ),
    ("dropout prob 1", "clients: {dropout: {prob: 1.0}}", [], "clients.dropout.prob: must be < 1"),
    (
        "straggler fraction",
        "clients: {stragglers: {fraction: 2}}",
        [],
        "clients.stragglers.fraction: must be <= 1",
    ),
    (
        "unknown staleness kind",
        "algorithm: {name: fedasync, staleness: {kind: exp}}",
        [],
        "algorithm.staleness.kind: must be one of constant, polynomial or hinge",
    ),
    (
        "unknown partition",
        "data: {partition: {kind: stripes}}",
        [],
        "data.partition.kind: unknown name 'stripes'",
    ),
    (
        "class fractions",
        "clients: {heterogeneity: {dist: classes, multipliers: [1, 2], fractions: [0.5, 0.2]}}",
        [],
        "fractions must sum to 1",
    ),
    ("not a mapping", "[1, 2]", [], "must be a mapping of keys"),
    (
        "bad override path",
        "name: x",
        ["--set", "clients.compte.mean_s=3"],
        "did you mean 'compute'",
    ),
    (
        "override below a value",
        "name: x",
        ["--set", "clients.count.x=3"],
        "clients.count is not a section",
    ),
    ("override without =", "name: x", ["--set", "clients.count"], "key.path=value"),
    (
        "fedbuff buffer never fills",
        "algorithm: {name: fedbuff, concurrency: 5, buffer_size: 10, dispatch_policy: after_aggregation}",
        [],
        "never fills the buffer",
    ),
    ("negative seed", "seed: -4", [], "seed: must be >= 0"),
    ("test fraction", "data: {test_fraction: 1.5}", [], "data.test_fraction: must be < 1"),
    (
        "more clients than samples",
        "clients: {count: 5000}",
        ["--set", "stop.time_s=1"],
        "clients.count",
    ),
]


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("yaml_text", "extra", "expected"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_scenario_exits_2_with_one_line(tmp_path, capsys, yaml_text, extra, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text + "\n")
    command = "run" if "more clients" in yaml_text or expected == "clients.count" else "validate"
    args = [command, str(path), *extra]
    if command == "run":
        args += ["--quiet", "--out", str(tmp_path / "run")]
    code, _out, err = _run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert "Traceback" not in err


def test_at_least_twenty_bad_inputs_are_covered():
    assert len(BAD_INPUTS) >= 20


def test_missing_file_and_usage_errors_exit_2(capsys, tmp_path):
    for args in (
        ["validate", str(tmp_path / "nope.yaml")],
        ["run"],
        ["bogus"],
        ["run", "x.yaml", "--bogus"],
    ):
        code, _out, err = _run_cli(args, capsys)
        assert code == 2, args
        assert len(err.strip().splitlines()) == 1, err


def test_console_script_really_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("clients: {compute: {mean_s: -1}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "validate", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {path}:1: clients.compute.mean_s: must be > 0.0, got -1"


def test_run_writes_run_directory_and_summary(tmp_path, capsys, small_learning):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small_learning))
    out = tmp_path / "run"
    main(["run", str(path), "--out", str(out), "--set", "stop.time_s=20"])
    printed = capsys.readouterr().out
    assert "final accuracy" in printed and str(out) in printed
    assert {p.name for p in out.iterdir()} >= {
        "scenario.yaml",
        "events.parquet",
        "evals.parquet",
        "summary.json",
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sim_time_s"] == 20.0
    events = pd.read_parquet(out / "events.parquet")
    assert summary["updates"] == int(events["status"].isin(["applied", "buffered"]).sum())
    # The resolved scenario alone reproduces the run.
    main(["run", str(out / "scenario.yaml"), "--out", str(tmp_path / "again"), "--quiet"])
    again = pd.read_parquet(tmp_path / "again" / "events.parquet")
    pd.testing.assert_frame_equal(events, again)


def test_validate_schema_and_list(capsys, root: Path):
    code, out, _ = _run_cli(["validate", str(root / "scenarios" / "quickstart.yaml")], capsys)
    assert code == 0 and out.startswith("ok: quickstart")
    code, out, _ = _run_cli(["schema"], capsys)
    schema = json.loads(out)
    assert "clients" in schema["properties"]
    code, out, _ = _run_cli(["list"], capsys)
    assert "algorithms: fedavg, fedasync, fedbuff" in out
    assert "delay laws: constant, exponential" in out


def test_run_writes_standard_plots_and_plot_command(tmp_path, capsys, small_learning):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small_learning))
    out = tmp_path / "run"
    code, _, _ = _run_cli(["run", str(path), "--out", str(out), "--quiet"], capsys)
    assert code == 0
    assert {p.name for p in (out / "plots").iterdir()} == {
        "accuracy.png",
        "staleness.png",
        "timeline.png",
        "contribution.png",
    }
    figure = tmp_path / "fig" / "acc.png"
    code, _, _ = _run_cli(["plot", str(out), str(out), "--out", str(figure)], capsys)
    assert code == 0 and figure.stat().st_size > 10_000
    code, _, _ = _run_cli(
        ["run", str(path), "--out", str(tmp_path / "np"), "-q", "--no-plots"], capsys
    )
    assert not (tmp_path / "np" / "plots").exists()


@pytest.mark.parametrize("target", ["missing", "foreign"])
def test_plot_on_a_non_run_directory_exits_2(tmp_path, capsys, target):
    directory = tmp_path / target
    if target == "foreign":
        directory.mkdir()
        (directory / "notes.txt").write_text("not a run")
    code, _, err = _run_cli(["plot", str(directory), "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "not a fedsim run directory" in err


def test_data_describe_matches_the_simulation_partition(tmp_path, capsys, root: Path):
    import fedsim

    csv = tmp_path / "parts.csv"
    code, out, _ = _run_cli(
        ["data", "describe", str(root / "scenarios" / "quickstart.yaml"), "--csv", str(csv)], capsys
    )
    assert code == 0 and "100 clients" in out
    table = pd.read_csv(csv, index_col=0)
    sim = fedsim.Simulation(fedsim.load_scenario(root / "scenarios" / "quickstart.yaml"))
    assert table["samples"].tolist() == sim.client_sizes.tolist()
