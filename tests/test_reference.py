"""The scenario reference in docs/ is generated from the models and must never go stale."""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field

from fedsim.config_base import Section
from fedsim.reference import generate
from fedsim.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "scenario-reference.md"
TAG_KEYS = ("name", "dist", "kind")
REGENERATE = "python -m fedsim.reference > docs/scenario-reference.md"


def _sections_of(annotation: Any) -> list[type[Section]]:
    """Section classes a field may hold (through Annotated, Optional and unions)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [s for arg in typing.get_args(annotation) for s in _sections_of(arg)]
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return [annotation]
    return []


def _walk(
    cls: type[Section], prefix: str = ""
) -> typing.Iterator[tuple[str, type, str, Any, bool]]:
    """``(key path, class, field name, field, is a variant's tag)`` for every field, every variant."""
    for name, field in cls.model_fields.items():
        path = f"{prefix}.{field.alias or name}" if prefix else field.alias or name
        yield path, cls, name, field, False
        members = _sections_of(field.annotation)
        for sub in members:
            for item in _walk(sub, path):
                sub_path, sub_cls, sub_name, sub_field, inner_tag = item
                is_tag = inner_tag or (
                    len(members) > 1
                    and sub_cls is sub
                    and sub_name in TAG_KEYS
                    and typing.get_origin(sub_field.annotation) is Literal
                    and len(typing.get_args(sub_field.annotation)) == 1
                )
                yield sub_path, sub_cls, sub_name, sub_field, is_tag


def _undocumented(cls: type[Section]) -> list[str]:
    """Key paths whose docstring is missing; a variant's tag is documented by its class and union."""
    missing = []
    for path, owner, _name, field, is_tag in _walk(cls):
        if is_tag:
            if not (owner.__dict__.get("__doc__") or "").strip():
                missing.append(f"{path} (class {owner.__name__} has no docstring)")
        elif not (field.description or "").strip():
            missing.append(path)
    return missing


def test_committed_reference_is_up_to_date():
    assert REFERENCE.is_file(), f"docs/scenario-reference.md is missing; run: {REGENERATE}"
    assert REFERENCE.read_text() == generate(), f"the reference is stale; run: {REGENERATE}"


def test_module_entry_point_prints_the_reference():
    out = subprocess.run(
        [sys.executable, "-m", "fedsim.reference"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == generate()


def test_every_leaf_key_appears_in_the_reference():
    text = generate()
    leaves = {
        path for path, _, _, field, _ in _walk(Scenario) if not _sections_of(field.annotation)
    }
    assert len(leaves) > 40  # the walk really went into sections and variants
    missing = sorted(p for p in leaves if f"| `{p}` |" not in text)
    assert not missing, f"keys missing from the reference: {missing}"


def test_every_variant_has_its_own_subsection():
    text = generate()
    for path, owner, name, _field, is_tag in _walk(Scenario):
        if is_tag:
            section = path.rsplit(".", 1)[0]
            tag = owner.model_fields[name].default
            assert f"# {section} ({name}: {tag})\n" in text, f"no subsection for {section} {tag}"


def test_every_field_has_a_docstring():
    missing = _undocumented(Scenario)
    assert not missing, f"fields without a docstring (the reference is built from them): {missing}"


def test_the_docstring_check_catches_a_missing_docstring():
    class Leaf(Section):
        """A section."""

        documented: int = 1
        """Has one."""
        bare: int = 2

    class VariantA(Section):
        kind: Literal["a"] = "a"

    class VariantB(Section):
        """B."""

        kind: Literal["b"] = "b"

    class Root(Section):
        """Root."""

        leaf: Leaf = Field(default_factory=Leaf)
        """A leaf."""
        choice: VariantA | VariantB = Field(default_factory=VariantA, discriminator="kind")
        """A choice."""

    assert _undocumented(Root) == ["leaf.bare", "choice.kind (class VariantA has no docstring)"]


@pytest.mark.parametrize(
    ("path", "unit", "allowed"),
    [
        ("clients.compute.mean_s", "s", "≥ 1e-06"),
        ("clients.network.bandwidth_mbps", "Mbit/s", "> 0"),
        ("data.test_fraction", "", "> 0, < 1"),
        ("algorithm.weighting", "", "`data_size`, `uniform`"),
        ("algorithm.dispatch_policy", "", "`on_arrival` (= `immediate`)"),
        ("model.hidden", "", "each > 0"),
    ],
)
def test_rows_carry_unit_and_constraints(path, unit, allowed):
    rows = [line for line in generate().splitlines() if line.startswith(f"| `{path}` |")]
    assert rows, path
    cells = [c.strip() for c in rows[0].strip("|").split(" | ")]
    assert cells[3] == unit
    assert allowed in cells[4]
