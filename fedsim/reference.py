"""The scenario reference (``docs/scenario-reference.md``), generated from the pydantic models.

Every key path gets its type, default, unit (from the name's suffix), allowed values (Literals and
aliases named in the docstring), bounds (``gt``/``ge``/``lt``/``le``) and its attribute docstring.
A tagged union (``dist``, ``kind``, ``name``) gets one subsection per variant, headed by its tag.

Regenerate with ``python -m fedsim.reference > docs/scenario-reference.md``; a test checks that the
committed file equals the generated one.
"""

from __future__ import annotations

import json
import re
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types as at
from pydantic.fields import FieldInfo

from fedsim.config_base import MIN_PERIOD_S, DefaultTag, Section, _resolvable
from fedsim.scenario import Scenario

UNITS = {"_s": "s", "_ms": "ms", "_mbps": "Mbit/s", "_bytes": "bytes"}
"""Name suffix → unit shown in the reference."""

_ALIAS_CLAUSE = re.compile(r"\(Alias(?:es)?:\s*(.+?)\.?\)", re.IGNORECASE | re.DOTALL)
_ALIAS_PAIR = re.compile(r"`*([\w.-]+)`*\s*=\s*`*([\w.-]+)`*")

# ---------------------------------------------------------------------------------------------------
# Looking inside annotations


def _strip_annotated(tp: Any) -> tuple[Any, list[Any]]:
    """``Annotated[X, m1, m2]`` → ``(X, [m1, m2])`` (nested Annotated flattened)."""
    metadata: list[Any] = []
    while typing.get_origin(tp) is typing.Annotated:
        metadata.extend(tp.__metadata__)
        tp = typing.get_args(tp)[0]
    return tp, metadata


def _union_members(tp: Any) -> list[Any]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return list(typing.get_args(tp))
    return [tp]


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Section)


@dataclass
class FieldShape:
    """What a field holds: a value, a section, or one of several tagged sections."""

    sections: list[type[Section]]
    """Section classes the field may hold (empty for a plain value)."""
    optional: bool
    """Whether ``null`` (or ``none``) is accepted."""
    metadata: list[Any]
    """Constraint metadata of the value itself (not of list items)."""


def field_shape(field: FieldInfo) -> FieldShape:
    tp, metadata = _strip_annotated(field.annotation)
    metadata = list(field.metadata) + metadata
    sections: list[type[Section]] = []
    optional = False
    for member in _union_members(tp):
        member, inner = _strip_annotated(member)
        if member is type(None):
            optional = True
        elif _is_section(member):
            sections.append(member)
        else:
            metadata.extend(inner)
    return FieldShape(sections, optional, metadata)


def tag_key(field: FieldInfo) -> str | None:
    """The discriminator key of a tagged-union field, or None."""
    if isinstance(field.discriminator, str):
        return field.discriminator
    return next((m.key for m in _all_metadata(field) if isinstance(m, DefaultTag)), None)


def _all_metadata(field: FieldInfo) -> list[Any]:
    _, metadata = _strip_annotated(field.annotation)
    return list(field.metadata) + metadata


def default_tag(field: FieldInfo) -> str | None:
    """The variant an untagged section means (``DefaultTag``), or None."""
    found = next((m for m in _all_metadata(field) if isinstance(m, DefaultTag)), None)
    return found.default if found is not None else None


def key_name(name: str, field: FieldInfo) -> str:
    """The key as written in YAML (the alias where there is one)."""
    return field.alias or name


def type_name(tp: Any) -> str:
    """A reader's name for a type: integer, number, string, list of integer, ... or null."""
    tp, _ = _strip_annotated(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(m) for m in typing.get_args(tp)]
        names = [n for n in names if n != "null"] + (["null"] if "null" in names else [])
        return " or ".join(dict.fromkeys(names))
    if origin is Literal:
        kinds = {type(v) for v in typing.get_args(tp)}
        return "string" if kinds == {str} else " or ".join(sorted(k.__name__ for k in kinds))
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(tp)
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def literal_values(tp: Any) -> list[Any]:
    """Values of every Literal in ``tp`` (through Annotated and unions)."""
    tp, _ = _strip_annotated(tp)
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    values: list[Any] = []
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for member in typing.get_args(tp):
            values.extend(literal_values(member))
    return values


def _bounds_text(metadata: list[Any]) -> list[str]:
    parts: list[str] = []
    for m in metadata:
        if isinstance(m, at.Interval):
            parts.extend(_bounds_text([at.Gt(m.gt), at.Ge(m.ge), at.Lt(m.lt), at.Le(m.le)]))
        elif isinstance(m, at.Gt) and m.gt is not None:
            parts.append(f"> {_num(m.gt)}")
        elif isinstance(m, at.Ge) and m.ge is not None:
            parts.append(f"≥ {_num(m.ge)}")
        elif isinstance(m, at.Lt) and m.lt is not None:
            parts.append(f"< {_num(m.lt)}")
        elif isinstance(m, at.Le) and m.le is not None:
            parts.append(f"≤ {_num(m.le)}")
        elif isinstance(m, at.MinLen):
            parts.append(f"length ≥ {m.min_length}")
        elif isinstance(m, at.MaxLen):
            parts.append(f"length ≤ {m.max_length}")
        elif isinstance(m, at.MultipleOf):
            parts.append(f"multiple of {_num(m.multiple_of)}")
        elif getattr(m, "func", None) is _resolvable:  # config_base.Period
            parts = [p for p in parts if not p.startswith(">")] + [f"≥ {MIN_PERIOD_S:g}"]
    return parts


def _num(value: Any) -> str:
    return str(value)


def bounds(field: FieldInfo) -> str:
    """``"> 0"``, ``"≥ 0, < 1"``, ``"each > 0"`` (for list items), or ``""``."""
    parts = _bounds_text(field_shape(field).metadata)
    tp, _ = _strip_annotated(field.annotation)
    for member in _union_members(tp):
        member, _ = _strip_annotated(member)
        if typing.get_origin(member) in (list, tuple, set, frozenset):
            args = typing.get_args(member)
            if args:
                _, inner = _strip_annotated(args[0])
                parts.extend(f"each {p}" for p in _bounds_text(inner))
    return ", ".join(parts)


def aliases(description: str) -> list[tuple[str, str]]:
    """``(alias, value)`` pairs named in a docstring as ``(Alias: on_arrival = immediate.)``."""
    pairs: list[tuple[str, str]] = []
    for clause in _ALIAS_CLAUSE.findall(description):
        pairs.extend(_ALIAS_PAIR.findall(clause))
    return pairs


def unit(name: str) -> str:
    return next((u for suffix, u in UNITS.items() if name.endswith(suffix)), "")


def describe(text: str | None) -> str:
    """One line of Markdown from a docstring (RST ``literals`` become Markdown `code`)."""
    text = " ".join((text or "").split())
    return re.sub(r"``(.+?)``", r"`\1`", text)


def class_doc(cls: type) -> str:
    return describe(cls.__dict__.get("__doc__"))


def show(value: Any) -> str:
    """A default as it would be written in YAML, in backticks."""
    if isinstance(value, Section):
        value = value.model_dump(mode="json", by_alias=True)
    if isinstance(value, str):
        text = value if value else '""'
    else:
        text = json.dumps(value, ensure_ascii=False)
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------------------------------
# Walking the scenario


@dataclass
class Row:
    """One line of a table: a key path and what the reference says about it."""

    path: str
    type: str
    default: str
    unit: str
    allowed: str
    description: str

    def markdown(self) -> str:
        cells = [
            f"`{self.path}`",
            self.type,
            self.default,
            self.unit,
            self.allowed,
            self.description,
        ]
        return "| " + " | ".join(_cell(c) for c in cells) + " |"


TABLE_HEAD = (
    "| Key | Type | Default | Unit | Allowed | Description |\n"
    "|-----|------|---------|------|---------|-------------|"
)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def variant_tag(cls: type[Section], key: str) -> str:
    return cls.model_fields[key].default


def _instance_for(cls: type[Section], given: Any) -> Section:
    """The effective defaults of a section: the parent's default value if it is this variant."""
    return given if isinstance(given, cls) else cls()


def value_row(path: str, name: str, field: FieldInfo, default: Any) -> Row:
    description = describe(field.description)
    allowed = [f"`{v}`" for v in literal_values(field.annotation)]
    for alias, target in aliases(description):
        allowed.append(f"`{alias}` (= `{target}`)")
    limits = bounds(field)
    return Row(
        path=path,
        type=type_name(field.annotation),
        default=show(default),
        unit=unit(name),
        allowed=", ".join([*allowed, *([limits] if limits else [])]),
        description=description,
    )


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, rows: list[Row]) -> None:
        if rows:
            self.add(TABLE_HEAD, *(r.markdown() for r in rows), "")


def tag_row(path: str, field: FieldInfo, value: Any) -> Row:
    """The row of a tagged union's tag key: its variants, default, and what omitting it means."""
    tag = tag_key(field)
    assert tag is not None, f"{path}: a union of sections needs a tag key"
    tags = [variant_tag(c, tag) for c in field_shape(field).sections]
    current = getattr(value, tag, None)
    omitted = default_tag(field)
    note = f" If `{tag}` is left out it means `{omitted}`." if omitted else ""
    return Row(
        path=f"{path}.{tag}",
        type="string",
        default=show(current) if current is not None else "`null`",
        unit="",
        allowed=", ".join(f"`{t}`" for t in tags),
        description=f"{describe(field.description)}{note} Keys of each variant: "
        f"see {path} ({tag}: …) below.",
    )


def _rows_and_unions(
    cls: type[Section], instance: Section, prefix: str, *, skip: str | None = None
) -> tuple[list[Row], list[tuple[str, FieldInfo, Any]]]:
    """Table rows of a section (plain nested sections flattened in), and its union fields."""
    rows: list[Row] = []
    unions: list[tuple[str, FieldInfo, Any]] = []
    for name, field in cls.model_fields.items():
        if name == skip:
            continue
        key = key_name(name, field)
        path = _join(prefix, key)
        value = getattr(instance, name)
        shape = field_shape(field)
        if len(shape.sections) > 1:
            rows.append(tag_row(path, field, value))
            unions.append((path, field, value))
        elif shape.sections:
            sub = shape.sections[0]
            none = " or `none`" if shape.optional else ""
            rows.append(
                Row(
                    path=path,
                    type=f"section{none}",
                    default="" if value is not None else "`none`",
                    unit="",
                    allowed="",
                    description=_join_text(describe(field.description), class_doc(sub)),
                )
            )
            sub_rows, sub_unions = _rows_and_unions(sub, _instance_for(sub, value), path)
            rows.extend(sub_rows)
            unions.extend(sub_unions)
        else:
            rows.append(value_row(path, name, field, value))
            item = _list_item_section(field)
            if item is not None:  # a list of sections (FedAST's tasks): document an item's keys
                item_rows, _ = _rows_and_unions(item, item.model_construct(), f"{path}[]")
                rows.extend(item_rows)
    return rows, unions


def _list_item_section(field: FieldInfo) -> type[Section] | None:
    """``X`` when the field is ``list[X]`` of a Section (its items' keys get rows ``path[].key``)."""
    tp, _ = _strip_annotated(field.annotation)
    if typing.get_origin(tp) is list:
        (arg,) = typing.get_args(tp) or (None,)
        arg, _ = _strip_annotated(arg)
        if _is_section(arg):
            return arg
    return None


def _join_text(*parts: str) -> str:
    out = ""
    for part in parts:
        if not part:
            continue
        if out and not out.endswith((".", ":", "!", "?")):
            out += "."
        out = f"{out} {part}" if out else part
    return out


def _write_union(
    out: _Writer, path: str, field: FieldInfo, value: Any, level: int, *, with_tag_row: bool = False
) -> None:
    tag = tag_key(field)
    assert tag is not None
    shape = field_shape(field)
    current = getattr(value, tag, None)
    omitted = default_tag(field)
    out.add(f"{'#' * level} {path}", "")
    text = describe(field.description)
    tags = ", ".join(f"`{variant_tag(c, tag)}`" for c in shape.sections)
    out.add(f"{text} Chosen by `{path}.{tag}`: {tags}.")
    extra = []
    if current is not None:
        extra.append(f"Default: `{current}`.")
    if omitted is not None:
        extra.append(f"Without `{tag}`, the section means `{omitted}`.")
    if shape.optional:
        extra.append("May be `null`.")
    out.add(" ".join(extra), "") if extra else out.add("")
    if with_tag_row:
        out.table([tag_row(path, field, value)])
    for cls in shape.sections:
        name = variant_tag(cls, tag)
        out.add(f"{'#' * (level + 1)} {path} ({tag}: {name})", "")
        doc = class_doc(cls)
        if doc:
            out.add(doc, "")
        rows, unions = _rows_and_unions(cls, _instance_for(cls, value), path, skip=tag)
        if rows:
            out.table(rows)
        elif not unions:
            out.add("No other keys.", "")
        for sub_path, sub_field, sub_value in unions:
            _write_union(out, sub_path, sub_field, sub_value, level + 2)


INTRO = """\
A scenario is a YAML file of the keys below. Every key has a default, so a file names only what it
changes; an unknown key is an error. Keys are written here as dotted paths: `clients.compute.mean_s`
is `mean_s` inside `compute` inside `clients`, and the same path overrides it from the command line
(`fedsim run FILE --set clients.compute.mean_s=3`). `null` means "not set" where a key allows it.
Units are in the key names: `_s` seconds (simulated time), `_mbps` megabits per second.
A section whose keys depend on a tag (`dist`, `kind` or `name`) has one subsection per variant;
changing the tag with `--set` drops the keys the old variant had and the new one lacks.
`fedsim validate FILE` checks a file; `fedsim schema` prints the same information as JSON Schema."""


def generate() -> str:
    """The whole reference, as Markdown."""
    out = _Writer()
    out.add(
        "# Scenario reference",
        "",
        "<!-- Generated by `python -m fedsim.reference > docs/scenario-reference.md` from the",
        "     docstrings in the scenario models; do not edit by hand. -->",
        "",
        INTRO,
        "",
    )
    root = Scenario()
    top_rows: list[Row] = []
    sections: list[tuple[str, FieldInfo, Any]] = []
    for name, field in Scenario.model_fields.items():
        if field_shape(field).sections:
            sections.append((key_name(name, field), field, getattr(root, name)))
        else:
            top_rows.append(value_row(key_name(name, field), name, field, getattr(root, name)))
    out.add("## Top level", "", class_doc(Scenario), "")
    out.table(top_rows)
    out.add("Sections: " + ", ".join(f"`{key}`" for key, _, _ in sections) + ".", "")
    for key, field, value in sections:
        shape = field_shape(field)
        if len(shape.sections) > 1:
            _write_union(out, key, field, value, 2, with_tag_row=True)
            continue
        cls = shape.sections[0]
        out.add(f"## {key}", "")
        out.add(_join_text(describe(field.description), class_doc(cls)), "")
        if shape.optional:
            out.add(
                f"`{key}: none` turns the section off"
                + (" (the default)." if value is None else "; by default it is on."),
                "",
            )
        rows, unions = _rows_and_unions(cls, _instance_for(cls, value), key)
        out.table(rows)
        for sub_path, sub_field, sub_value in unions:
            _write_union(out, sub_path, sub_field, sub_value, 3)
    while out.lines and not out.lines[-1]:
        out.lines.pop()
    return "\n".join(out.lines) + "\n"


def iter_fields(
    cls: type[Section] = Scenario, prefix: str = ""
) -> Iterator[tuple[str, type[Section], str, FieldInfo]]:
    """Every ``(key path, section class, field name, field)`` of the scenario, variants included."""
    for name, field in cls.model_fields.items():
        path = _join(prefix, key_name(name, field))
        yield path, cls, name, field
        for sub in field_shape(field).sections:
            yield from iter_fields(sub, path)


def main() -> None:
    sys.stdout.write(generate())


if __name__ == "__main__":
    main()
