"""Sweeps: cell expansion and hashing, resume after a kill, collect, local ≡ ray, bad sweep files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.scenario import load_scenario
from fedsim.sweep import collect, load_sweep, run_sweep

RESULTS_NAME = "results.parquet"


@pytest.fixture
def base_file(tmp_path: Path, small_learning: dict) -> Path:
    """A digits scenario whose cells take a fraction of a second."""
    scenario = {**small_learning, "stop": {"time_s": 20}, "clients": {"count": 10}}
    path = tmp_path / "scenarios" / "small.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(scenario))
    return path


def write_sweep(tmp_path: Path, spec: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / "sweeps" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


LEARNING = {
    "base": "../scenarios/small.yaml",
    "grid": {"clients.stragglers.fraction": [0.0, 0.3], "algorithm.name": ["fedasync", "fedbuff"]},
    "seeds": [0],
    "set": {"algorithm.concurrency": 4},
}


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cells_are_the_grid_product_with_seeds_fastest(tmp_path, base_file):
    spec = {
        "name": "expand",
        "base": "../scenarios/small.yaml",
        "grid": {
            "clients.stragglers.fraction": [0, 0.1, 0.5],
            "algorithm.name": ["fedavg", "fedbuff"],
        },
        "seeds": [4, 7],
        "set": {"stop.time_s": 30},
    }
    sweep = load_sweep(write_sweep(tmp_path, spec))
    assert sweep.name == "expand" and sweep.base.resolve() == base_file.resolve()
    assert len(sweep.cells) == 3 * 2 * 2
    expected = [(f, a, s) for f in (0, 0.1, 0.5) for a in ("fedavg", "fedbuff") for s in (4, 7)]
    got = [
        (c.params["clients.stragglers.fraction"], c.params["algorithm.name"], c.seed)
        for c in sweep.cells
    ]
    assert got == expected
    for cell, (fraction, algorithm, seed) in zip(sweep.cells, expected, strict=True):
        scenario = cell.scenario
        assert scenario.clients.stragglers.fraction == fraction
        assert scenario.algorithm.name == algorithm
        assert scenario.seed == seed and scenario.stop.time_s == 30
        # The hash is the resolved scenario's, computed independently of the sweep machinery.
        independent = load_scenario(
            base_file,
            [
                f"clients.stragglers.fraction={fraction}",
                f"algorithm.name={algorithm}",
                f"seed={seed}",
                "stop.time_s=30",
            ],
        )
        assert cell.hash == independent.hash()
        assert load_scenario(scenario.to_dict()).hash() == cell.hash  # what a worker receives
        assert cell.dir == f"cells/{cell.hash}"
    assert len({c.hash for c in sweep.cells}) == len(sweep.cells)


def test_base_relative_to_the_sweep_file_then_to_cwd(tmp_path, base_file, monkeypatch):
    spec = {"base": "scenarios/small.yaml", "grid": {"clients.count": [5, 8]}}
    path = write_sweep(tmp_path, spec)  # sweeps/scenarios/small.yaml does not exist
    monkeypatch.chdir(tmp_path)  # ... but ./scenarios/small.yaml does
    sweep = load_sweep(path)
    assert sweep.base.resolve() == base_file.resolve()
    assert sweep.name == "sweep"  # the file's stem
    assert [c.seed for c in sweep.cells] == [3, 3]  # no seeds: the base's seed
    monkeypatch.chdir(tmp_path / "sweeps")
    with pytest.raises(ScenarioError, match="base: scenario file not found"):
        load_sweep(path)


def test_mapping_values_switch_variants_and_become_leaf_columns(tmp_path, base_file):
    spec = {
        "base": "../scenarios/small.yaml",
        "grid": {
            "data.partition": [{"kind": "iid"}, {"kind": "dirichlet", "alpha": 0.5}],
            "algorithm": [
                {"name": "fedavg", "cohort_size": 4},
                {"name": "fedbuff", "concurrency": 4, "buffer_size": 2},
            ],
        },
        "set": {"stop.time_s": 10, "training": "none"},
    }
    out = tmp_path / "out"
    outcome = run_sweep(write_sweep(tmp_path, spec), out, progress=False)
    table = outcome.table
    assert outcome.ran == 4 and outcome.skipped == 0
    assert list(table.columns[:7]) == [
        "cell",
        "data.partition.kind",
        "data.partition.alpha",
        "algorithm.name",
        "algorithm.cohort_size",
        "algorithm.concurrency",
        "algorithm.buffer_size",
    ]
    per_cell = table.drop_duplicates("cell")
    assert per_cell["data.partition.kind"].tolist() == ["iid", "iid", "dirichlet", "dirichlet"]
    assert per_cell["data.partition.alpha"].isna().tolist() == [True, True, False, False]
    assert per_cell["algorithm.name"].tolist() == ["fedavg", "fedbuff"] * 2
    # Every row's figures are its own cell's: the summary and the evaluations on disk.
    for _, row in per_cell.iterrows():
        summary = json.loads((out / "cells" / row["cell"] / "summary.json").read_text())
        assert row["algorithm.name"] == summary["algorithm"]
        assert row["total_updates"] == summary["updates"]
        evals = pd.read_parquet(out / "cells" / row["cell"] / "evals.parquet")
        rows = table[table["cell"] == row["cell"]]
        assert rows["sim_time"].tolist() == evals["sim_time"].tolist()
        assert rows["updates"].tolist() == evals["updates"].tolist()
    assert "real_time_s" not in table.columns


def _mtimes(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*/summary.json")}


def test_resume_after_a_kill_recomputes_only_unfinished_cells(tmp_path, base_file, capsys):
    path = write_sweep(tmp_path, LEARNING)
    whole = run_sweep(path, tmp_path / "whole", progress=False).table
    assert whole["accuracy"].notna().all() and whole["accuracy"].nunique() > 4  # it trains

    out = tmp_path / "resumed"
    first = run_sweep(path, out, progress=False)
    assert first.ran == 4
    before = _mtimes(out)
    killed = sorted(before)[1]
    # A kill mid-way: the cell has its scenario and a partial trace but no summary.json.
    (out / "cells" / killed / "summary.json").unlink()
    (out / "cells" / killed / "evals.parquet").write_bytes(b"truncated")
    (out / RESULTS_NAME).unlink()

    code, printed, _ = _run_cli(["sweep", str(path), "--out", str(out), "--quiet"], capsys)
    assert code == 0
    assert "4 cells (1 run, 3 already finished)" in printed
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if k != killed} == {
        k: v for k, v in before.items() if k != killed
    }
    assert after[killed] > before[killed]
    resumed = pd.read_parquet(out / RESULTS_NAME)
    pd.testing.assert_frame_equal(resumed, whole)

    # A third run finds nothing to do.
    again = run_sweep(path, out, progress=False)
    assert (again.ran, again.skipped) == (0, 4) and _mtimes(out) == after

    # fedsim collect rebuilds the identical table from the cell directories alone.
    (out / RESULTS_NAME).unlink()
    code, printed, _ = _run_cli(["collect", str(out)], capsys)
    assert code == 0 and "4 of 4 cells finished" in printed
    pd.testing.assert_frame_equal(pd.read_parquet(out / RESULTS_NAME), whole)


def test_collect_of_a_partial_sweep_holds_the_finished_cells(tmp_path, base_file, capsys):
    spec = {**LEARNING, "set": {"training": "none", "algorithm.concurrency": 4}}
    path = write_sweep(tmp_path, spec)
    out = tmp_path / "out"
    table = run_sweep(path, out, progress=False).table
    cells = table["cell"].unique().tolist()
    (out / "cells" / cells[0] / "summary.json").unlink()
    partial = collect(out)
    assert partial["cell"].unique().tolist() == cells[1:]
    expected = table[table["cell"] != cells[0]].reset_index(drop=True)
    pd.testing.assert_frame_equal(partial, expected)
    # The progress bar counts the finished cells found on disk as done.
    capsys.readouterr()
    run_sweep(path, out, progress=True)
    err = capsys.readouterr().err
    assert "(3 already finished)" in err and "4/4 cells" in err and "ETA" in err


@pytest.mark.slow
def test_local_pool_and_ray_give_the_same_table(tmp_path, base_file):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'fedsim[ray]')")
    assert not ray.is_initialized()
    spec = {**LEARNING, "grid": {"algorithm.name": ["fedasync", "fedbuff"]}}
    path = write_sweep(tmp_path, spec)
    here = run_sweep(path, tmp_path / "here", jobs=1, progress=False)
    pool = run_sweep(path, tmp_path / "pool", jobs=2, progress=False)
    on_ray = run_sweep(path, tmp_path / "ray", jobs=2, backend="ray", progress=False)
    assert here.ran == pool.ran == on_ray.ran == 2
    assert not ray.is_initialized()  # the sweep's own cluster was shut down
    assert here.table["accuracy"].notna().all()
    pd.testing.assert_frame_equal(pool.table, here.table)
    pd.testing.assert_frame_equal(on_ray.table, here.table)
    for cell in here.table["cell"].unique():
        events = [
            pd.read_parquet(tmp_path / d / "cells" / cell / "events.parquet")
            for d in ("here", "ray")
        ]
        pd.testing.assert_frame_equal(events[0], events[1])


BAD_SWEEPS = [
    ("unknown top key", {"base": "../scenarios/small.yaml", "grids": {}}, "did you mean 'grid'"),
    ("missing base", {"grid": {"clients.count": [5]}}, "base: missing key"),
    (
        "base not found",
        {"base": "nope.yaml", "grid": {"clients.count": [5]}},
        "base: scenario file not found",
    ),
    (
        "grid key not a scenario key",
        {"base": "../scenarios/small.yaml", "grid": {"clients.stragglers.fractoin": [0.1]}},
        "did you mean 'fraction'",
    ),
    (
        "empty grid list",
        {"base": "../scenarios/small.yaml", "grid": {"clients.count": []}},
        "grid.clients.count: empty list",
    ),
    (
        "grid value not a list",
        {"base": "../scenarios/small.yaml", "grid": {"clients.count": 5}},
        "grid.clients.count: must be a list",
    ),
    (
        "bad value in one cell",
        {"base": "../scenarios/small.yaml", "grid": {"clients.stragglers.fraction": [0.1, 2]}},
        "clients.stragglers.fraction: must be <= 1",
    ),
    (
        "bad seeds",
        {"base": "../scenarios/small.yaml", "seeds": [0, -1]},
        "seeds: must be a non-empty list",
    ),
    (
        "key both swept and set",
        {
            "base": "../scenarios/small.yaml",
            "grid": {"algorithm.name": ["fedavg"]},
            "set": {"algorithm": {"name": "fedbuff"}},
        },
        "set the same key",
    ),
    (
        "duplicate value",
        {"base": "../scenarios/small.yaml", "grid": {"clients.count": [5, 5]}},
        "listed twice",
    ),
]


@pytest.mark.parametrize(
    ("spec", "expected"), [c[1:] for c in BAD_SWEEPS], ids=[c[0] for c in BAD_SWEEPS]
)
def test_bad_sweep_files_exit_2_before_any_cell_runs(tmp_path, base_file, capsys, spec, expected):
    path = write_sweep(tmp_path, spec)
    out = tmp_path / "out"
    code, _, err = _run_cli(["sweep", str(path), "--out", str(out), "-q"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0] and str(path) in lines[0]
    assert not out.exists()  # nothing ran, nothing was written


def test_missing_sweep_file_and_foreign_collect_dir_exit_2(tmp_path, capsys):
    code, _, err = _run_cli(["sweep", str(tmp_path / "none.yaml")], capsys)
    assert code == 2 and err.strip() == f"error: sweep file not found: {tmp_path / 'none.yaml'}"
    (tmp_path / "foreign").mkdir()
    for target in ("foreign", "missing"):
        code, _, err = _run_cli(["collect", str(tmp_path / target)], capsys)
        assert code == 2 and "not a fedsim sweep directory" in err
        assert len(err.strip().splitlines()) == 1


def test_a_failing_cell_is_reported_after_the_others_finish(tmp_path, base_file, capsys):
    # 10 clients × 150 samples > the 1,437 digits training samples: the partition fails as it runs.
    spec = {
        "base": "../scenarios/small.yaml",
        "grid": {
            "data.partition": [
                {"kind": "iid"},
                {"kind": "dirichlet", "alpha": 0.01, "min_samples": 150},
            ]
        },
        "set": {"stop.time_s": 5},
    }
    path = write_sweep(tmp_path, spec)
    out = tmp_path / "out"
    code, _, err = _run_cli(["sweep", str(path), "--out", str(out), "-q"], capsys)
    assert code == 1 and err.startswith("error: 1 of 2 cells failed")
    assert len(err.strip().splitlines()) == 1
    table = pd.read_parquet(out / RESULTS_NAME)
    assert table["data.partition.kind"].unique().tolist() == ["iid"]


def test_shipped_sweep_files_resolve(root):
    stragglers = load_sweep(root / "scenarios" / "sweeps" / "stragglers.yaml")
    assert len(stragglers.cells) == 4 * 3 * 3
    assert {c.scenario.algorithm.name for c in stragglers.cells} == {
        "fedavg",
        "fedasync",
        "fedbuff",
    }
    heterogeneity = load_sweep(root / "scenarios" / "sweeps" / "heterogeneity.yaml")
    kinds = {c.scenario.data.partition.kind for c in heterogeneity.cells}
    assert kinds == {"iid", "dirichlet"}
    assert os.path.samefile(stragglers.base, root / "scenarios" / "fedasync_stragglers.yaml")
