"""Tables in the docs that come from a results file are the table of that file.

Each entry names the results file under ``benchmarks/results/`` and the benchmark whose ``table()``
renders it; the rendered table must appear verbatim in docs/performance.md (or the page that
``PAGES`` names: docs/experiments.md for the experiment scripts under benchmarks/experiments/),
together with the command that wrote the file, so a re-run of the benchmark without the docs (or
a hand-edited figure) fails here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "performance.md"

TABLES = {
    "benchmarks/results/threads.json": "benchmarks/bench_threads.py",
    "benchmarks/results/trace_memory.json": "benchmarks/bench_trace_memory.py",
    "benchmarks/results/fault_injection.json": "benchmarks/fault_injection.py",
    "benchmarks/results/checkpoint.json": "benchmarks/bench_checkpoint.py",
    "benchmarks/results/availability.json": "benchmarks/bench_availability.py",
    "benchmarks/results/paths.json": "benchmarks/bench_paths.py",
    "benchmarks/results/frain_nullifiers.json": "benchmarks/experiments/frain_nullifiers.py",
    "benchmarks/results/scaffold_vs_fedavg.json": "benchmarks/experiments/scaffold_vs_fedavg.py",
    "benchmarks/results/fedbuff_vs_fedavgm.json": "benchmarks/experiments/fedbuff_vs_fedavgm.py",
    "benchmarks/results/fedasync_staleness.json": "benchmarks/experiments/fedasync_staleness.py",
    "benchmarks/results/dfl_toy.json": "benchmarks/experiments/dfl_toy.py",
    "benchmarks/results/dsgd_merge.json": "benchmarks/experiments/dsgd_merge.py",
    "benchmarks/results/aggregators.json": "benchmarks/bench_aggregators.py",
    "benchmarks/results/geometric_median_tolerance.json": "benchmarks/bench_aggregators.py",
    "benchmarks/results/attacks_aggregators.json": "benchmarks/experiments/attacks_aggregators.py",
    "benchmarks/results/frain_ablations.json": "benchmarks/experiments/frain_ablations.py",
    "benchmarks/results/pipeline.json": "benchmarks/bench_pipeline.py",
    "benchmarks/results/fedast_buffers.json": "benchmarks/experiments/fedast_buffers.py",
    "benchmarks/results/drpga_frontier.json": "benchmarks/experiments/drpga_frontier.py",
}
"""results file → benchmark script with ``table(results) -> str``."""
PAGES = {
    "benchmarks/results/fault_injection.json": ROOT / "docs" / "validation.md",
    "benchmarks/results/frain_nullifiers.json": ROOT / "docs" / "experiments.md",
    "benchmarks/results/scaffold_vs_fedavg.json": ROOT / "docs" / "algorithms" / "scaffold.md",
    "benchmarks/results/fedbuff_vs_fedavgm.json": ROOT / "docs" / "experiments.md",
    "benchmarks/results/fedasync_staleness.json": ROOT / "docs" / "experiments.md",
    "benchmarks/results/dfl_toy.json": ROOT / "docs" / "experiments.md",
    "benchmarks/results/dsgd_merge.json": ROOT / "docs" / "experiments.md",
    "benchmarks/results/geometric_median_tolerance.json": ROOT / "docs" / "robustness.md",
    "benchmarks/results/attacks_aggregators.json": ROOT / "docs" / "robustness.md",
    "benchmarks/results/frain_ablations.json": ROOT / "docs" / "experiments.md",
    "benchmarks/results/fedast_buffers.json": ROOT / "docs" / "experiments.md",
    "benchmarks/results/drpga_frontier.json": ROOT / "docs" / "experiments.md",
}
"""Tables that live on another page than docs/performance.md."""


def _script(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("results", sorted(TABLES))
def test_docs_table_is_the_results_file(results):
    data = json.loads((ROOT / results).read_text(encoding="utf-8"))
    table = _script(TABLES[results]).table(data)
    path = PAGES.get(results, PAGE)
    page = path.read_text(encoding="utf-8")
    assert table in page, (
        f"docs/{path.name} does not hold the table of {results}; regenerate it with "
        f"python {TABLES[results]} --table {results}"
    )
    assert data["command"] in page, f"docs/{path.name} does not show the command: {data['command']}"
