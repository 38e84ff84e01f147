"""Tables in docs/performance.md that come from a results file are the table of that file.

Each entry names the results file under ``benchmarks/results/`` and the benchmark whose ``table()``
renders it; the rendered table must appear verbatim in docs/performance.md, so a re-run of the
benchmark without the docs (or a hand-edited figure) fails here.
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
}
"""results file → benchmark script with ``table(results) -> str``."""


def _script(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("results", sorted(TABLES))
def test_docs_table_is_the_results_file(results):
    data = json.loads((ROOT / results).read_text(encoding="utf-8"))
    table = _script(TABLES[results]).table(data)
    page = PAGE.read_text(encoding="utf-8")
    assert table in page, (
        f"docs/performance.md does not hold the table of {results}; regenerate it with "
        f"python {TABLES[results]} --table {results}"
    )
    assert data["command"] in page, (
        f"docs/performance.md does not show the command: {data['command']}"
    )
