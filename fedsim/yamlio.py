"""The one YAML (and text) reader of every input file: scenarios, sweep files and their base,
topology tables.

Input files come from users and from other programs, so reading one must never hang, exhaust memory
or end in a Python exception: a file that is not UTF-8, too large, holds duplicate keys, an alias
bomb or a value type a scenario cannot hold is a one-line :class:`~fedsim.errors.ScenarioError`
naming the file (and the line, where there is one). The C parser is used when PyYAML has it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedsim.errors import ScenarioError

MAX_YAML_BYTES = 4 * 2**20
"""Largest YAML file read (scenarios and sweep files are a few kB)."""
MAX_TEXT_BYTES = 512 * 2**20
"""Largest text table read (a mixing matrix of a few thousand servers)."""
MAX_YAML_NODES = 100_000
"""Most values a YAML document may hold once its aliases are expanded (an alias bomb holds 10^9)."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of sections and lists (a scenario needs about 5)."""

_BASE_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_text(path: str | Path, what: str = "file", limit: int = MAX_TEXT_BYTES) -> str:
    """The text of ``path``: it must exist, hold at most ``limit`` bytes and be UTF-8."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limit:
            raise ScenarioError(
                f"{path}: {what} of {size:,} bytes is larger than the {limit:,} bytes allowed"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    return decode(raw, path, what)


def decode(raw: bytes, path: str | Path, what: str = "file") -> str:
    """UTF-8 text (a leading byte-order mark is dropped), or a one-line error naming ``path``."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ScenarioError(f"{path}: {what} is UTF-16 text; save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ScenarioError(
            f"{path}:{line}: {what} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None


class StrictLoader(yaml.composer.Composer, _BASE_LOADER):  # type: ignore[misc, valid-type]
    """SafeLoader that refuses duplicate keys and binary/set values and reads dates as strings.

    Nodes are composed in Python from the (C) parser's events, so that nesting is capped before it
    can overflow the C composer's stack.
    """

    def __init__(self, stream: str) -> None:
        _BASE_LOADER.__init__(self, stream)
        yaml.composer.Composer.__init__(self)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark
                )
            self._nodes += 1
            if self._nodes > MAX_YAML_NODES:
                mark = self.peek_event().start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"more than {MAX_YAML_NODES:,} values", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(key, seen[key], line, key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def _refuse(self, node: yaml.Node) -> Any:
        kind = node.tag.rsplit(":", 1)[-1]
        raise yaml.constructor.ConstructorError(
            None, None, f"!!{kind} values are not allowed in fedsim files", node.start_mark
        )

    def _as_string(self, node: yaml.ScalarNode) -> str:
        return str(node.value)


StrictLoader.add_constructor("tag:yaml.org,2002:binary", StrictLoader._refuse)
StrictLoader.add_constructor("tag:yaml.org,2002:set", StrictLoader._refuse)
StrictLoader.add_constructor("tag:yaml.org,2002:omap", StrictLoader._refuse)
StrictLoader.add_constructor("tag:yaml.org,2002:pairs", StrictLoader._refuse)
StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", StrictLoader._as_string)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    def __init__(self, key: Any, first: int, again: int, mark: Any) -> None:
        super().__init__(None, None, f"duplicate key {key!r} (line {first} and line {again})", mark)


def _check_size(root: yaml.Node, path: str | Path) -> None:
    """Refuse a document over :data:`MAX_YAML_NODES` values with its aliases expanded, or nested
    deeper than :data:`MAX_YAML_DEPTH`, or containing itself.

    Shared (aliased) nodes are sized once and then reused, so an alias bomb costs only its own
    size to measure, never its expansion.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    limit = MAX_YAML_NODES

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        line = node.start_mark.line + 1
        if key in active:
            raise ScenarioError(f"{path}:{line}: a recursive alias (a value that contains itself)")
        if depth > MAX_YAML_DEPTH:
            raise ScenarioError(f"{path}:{line}: nested deeper than {MAX_YAML_DEPTH} levels")
        active.add(key)
        total = 1
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        for child in children:
            total += size(child, depth + 1)
            if total > limit:
                raise ScenarioError(
                    f"{path}: more than {limit:,} values once its aliases are expanded "
                    "(an alias bomb?)"
                )
        active.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


KeyLines = dict[tuple[str, ...], int]
"""The line (from 1) of every mapping key of a document, by its key path: ``("clients", "count")``;
list items are numbered from ``"0"``."""


def key_lines(root: yaml.Node | None) -> KeyLines:
    """The line of every key under ``root``, merge keys (``<<``) included: a merged key is at the
    line of the ``<<`` that brought it, unless the mapping gives the key itself."""
    lines: KeyLines = {}
    if root is None:
        return lines

    def walk(node: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            merged: list[tuple[yaml.Node, int]] = []
            for key_node, value in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == "tag:yaml.org,2002:merge":
                    sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
                    merged += [(s, line) for s in sources if isinstance(s, yaml.MappingNode)]
                    continue
                if isinstance(key_node, yaml.ScalarNode):
                    lines[(*prefix, str(key_node.value))] = line
                    walk(value, (*prefix, str(key_node.value)))
            for source, line in merged:
                for key_node, value in source.value:
                    if not isinstance(key_node, yaml.ScalarNode):
                        continue
                    key = (*prefix, str(key_node.value))
                    if key not in lines:
                        lines[key] = line
                        walk(value, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*prefix, str(i))] = item.start_mark.line + 1
                walk(item, (*prefix, str(i)))

    walk(root, ())
    return lines


def load_yaml(text: str, path: str | Path) -> Any:
    """Parse one YAML document of ``path`` (already read) with every limit applied."""
    return load_yaml_lines(text, path)[0]


def load_yaml_lines(text: str, path: str | Path) -> tuple[Any, KeyLines]:
    """The document of ``path`` (already read) and the line of each of its keys (:func:`key_lines`),
    so that an error about a value can name the line of its key."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _check_size(node, path)  # before walking it: the walk expands aliases
        return loader.construct_document(node), key_lines(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f":{mark.line + 1}" if mark is not None else ""
        column = f", column {mark.column + 1}" if mark is not None else ""
        if isinstance(exc, DuplicateKeyError):
            raise ScenarioError(f"{path}{where}: {exc.problem}") from None
        if isinstance(exc, yaml.constructor.ConstructorError):
            raise ScenarioError(f"{path}{where}: {exc.problem}") from None
        at = f" at line {mark.line + 1}{column}" if mark is not None else ""
        problem = " ".join(str(exc.problem).split())
        raise ScenarioError(f"{path}: YAML syntax error{at}: {problem}") from None
    except yaml.reader.ReaderError as exc:
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise ScenarioError(
            f"{path}: YAML syntax error: character {char} at offset {exc.position} is not allowed"
        ) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: YAML error: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ScenarioError(f"{path}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path, what: str = "scenario file") -> Any:
    """The YAML document in ``path``: size-capped, UTF-8, duplicate keys and alias bombs refused."""
    return load_yaml(read_text(path, what, MAX_YAML_BYTES), path)


def read_yaml_file_lines(path: str | Path, what: str = "scenario file") -> tuple[Any, KeyLines]:
    """:func:`read_yaml_file` and the line of each key of the document (:func:`key_lines`)."""
    return load_yaml_lines(read_text(path, what, MAX_YAML_BYTES), path)
