"""The documentation site builds under ``mkdocs build --strict`` and keeps up with the code.

Strict mode turns every broken link, missing image, unknown anchor, page left out of the nav and
mkdocstrings failure into an error. The other checks are cheap text checks that fail when code grows
something the docs do not mention: a docs page missing from the nav, a trace column or status missing
from the concepts page, a plotting function or ``fedsim plot --kind`` missing from the plotting page.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _nav_pages(nav: list) -> list[str]:
    """Every page path in an mkdocs ``nav`` (nested sections flattened)."""
    pages: list[str] = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            pages += _nav_pages(value)
        elif not re.match(r"^[a-z]+://", value):
            pages.append(value)
    return pages


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    problems = [line for line in proc.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(
        problems or proc.stderr.splitlines()[-20:]
    )
    return out


@pytest.mark.slow
def test_strict_build_has_the_key_pages(site):
    for page in [
        "index.html",
        "getting-started/index.html",
        "concepts/index.html",
        "scenario-reference/index.html",
        "algorithms/fedavg/index.html",
        "algorithms/fedasync/index.html",
        "algorithms/fedbuff/index.html",
        "algorithms/robust/index.html",
        "plotting/index.html",
        "sweeps/index.html",
        "performance/index.html",
        "validation/index.html",
        "api/simulation/index.html",
        "api/plots/index.html",
    ]:
        assert (site / page).is_file(), f"{page} was not built"
    # mkdocstrings rendered the API from the code (not an empty page).
    api = (site / "api" / "simulation" / "index.html").read_text(encoding="utf-8")
    assert 'id="fedsim.simulation.run"' in api and 'id="fedsim.simulation.Result"' in api
    plots_api = (site / "api" / "plots" / "index.html").read_text(encoding="utf-8")
    assert 'id="fedsim.plots.accuracy_vs_time"' in plots_api
    training_api = (site / "api" / "training" / "index.html").read_text(encoding="utf-8")
    assert 'id="fedsim.learning.stacked.stack_model"' in training_api
    assert 'id="fedsim.learning.optim.LocalOptimizer"' in training_api
    # The generated scenario reference is included as it is.
    reference = (site / "scenario-reference" / "index.html").read_text(encoding="utf-8")
    assert "clients.compute.mean_s" in reference
    # The plotting page's figures were copied.
    assert (site / "img" / "staleness.png").is_file()


def test_every_docs_page_is_in_the_nav(config):
    nav = _nav_pages(config["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    orphans = [p for p in pages if p not in nav]
    assert not orphans, f"docs pages missing from mkdocs.yml's nav: {orphans}"
    duplicates = sorted({p for p in nav if nav.count(p) > 1})
    assert not duplicates, f"pages listed twice in the nav: {duplicates}"


def test_nav_helper_sees_nested_sections():
    nav = [{"A": "a.md"}, {"S": [{"B": "s/b.md"}, "s/c.md", {"X": "https://example.org"}]}]
    assert _nav_pages(nav) == ["a.md", "s/b.md", "s/c.md"]


def test_concepts_page_documents_every_trace_column_and_status():
    from fedsim.recorder import EVAL_SCHEMA, EVENT_SCHEMA, STATUSES

    text = (DOCS / "concepts.md").read_text(encoding="utf-8")
    table_names = set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.MULTILINE))
    missing = [
        n for n in [*EVENT_SCHEMA.names, *EVAL_SCHEMA.names, *STATUSES] if n not in table_names
    ]
    assert not missing, f"docs/concepts.md has no table row for: {missing}"


def test_plotting_page_covers_every_plot_function_and_kind():
    from fedsim import plots
    from fedsim.cli import PLOT_KINDS

    text = (DOCS / "plotting.md").read_text(encoding="utf-8")
    functions = [
        name
        for name, obj in vars(plots).items()
        if inspect.isfunction(obj) and obj.__module__ == plots.__name__ and not name.startswith("_")
    ]
    assert "accuracy_vs_time" in functions
    missing = [f for f in functions if f"`{f}(" not in text]
    assert not missing, f"docs/plotting.md does not describe: {missing}"
    kinds = [k for k in PLOT_KINDS if f"| `{k}` |" not in text]
    assert not kinds, f"docs/plotting.md's fedsim plot table lacks --kind {kinds}"
    images = re.findall(r"!\[[^\]]*\]\((img/[^)]+)\)", text)
    assert len(images) >= 6 and all((DOCS / i).is_file() for i in images), images
