"""FedScale's device trace files, read without running code.

FedScale (Lai et al., 2022) ships two pickles: the client behaviour trace (``client_behave_trace``:
client id -> ``{'active': [...], 'inactive': [...], 'finish_time': ..., 'duration': ...,
'model': ...}``, times in seconds) and the client device capacity (``client_device_capacity``:
client id -> ``{'computation': ms per sample, 'communication': kbit/s}``).

Trust: a pickle is a program; ``pickle.load`` on a crafted file runs whatever it says. These files
are read with an unpickler that resolves no global except plain containers and numbers
(:data:`ALLOWED`), so a file that tries to call anything else fails with a one-line error naming
what it asked for, before any of it runs. A file still costs the memory it describes: read only
files you trust.
"""

from __future__ import annotations

import builtins
import io
import math
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fedsim.errors import ScenarioError

ALLOWED = frozenset({"dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bool"})
"""The only globals a FedScale pickle may name (all in ``builtins``)."""
PICKLE_MAGIC = 0x80
"""First byte of a pickle of protocol 2 or later (what FedScale's files are)."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in ALLOWED:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(
            f"it refers to {module}.{name}; only plain dicts, lists and numbers are read "
            "(a pickle can run code)"
        )


def read_bytes(path: str | Path, key: str) -> tuple[Path, bytes]:
    """The file at ``path`` and its bytes; a missing or unreadable file is a one-line error."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ScenarioError(f"file not found: {file}", path=key, value=str(path))
    try:
        return file, file.read_bytes()
    except OSError as exc:
        problem = " ".join(str(exc).split())
        raise ScenarioError(f"cannot read {file}: {problem}", path=key, value=str(path)) from None


def decode_text(data: bytes, file: Path, key: str) -> str:
    """``data`` as UTF-8 text (a CSV), or a one-line error naming the file."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = " ".join(str(exc).split())
        raise ScenarioError(f"cannot read {file}: {problem}", path=key) from None


RowError = Callable[[str], ScenarioError]


def client_csv_rows(
    text: str, file: Path, key: str, value: str, columns: tuple[str, str]
) -> Iterator[tuple[RowError, int, float, float]]:
    """Each data row of a CSV ``client,<columns[0]>,<columns[1]>`` (an optional header line,
    ``#`` comments and blank lines skipped): a maker of one-line errors naming the file and the
    line, the client id (an integer >= 0) and the two numbers (finite)."""
    first = True
    for lineno, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        fields = [f.strip() for f in content.split(",")]
        if first and fields[0].lower() == "client":
            first = False
            continue  # the header
        first = False

        def bad(why: str, lineno: int = lineno) -> ScenarioError:
            return ScenarioError(f"{file} line {lineno}: {why}", path=key, value=value)

        if len(fields) != 3:
            raise bad(f"expected 3 fields client,{','.join(columns)}, got {len(fields)}")
        try:
            client = int(fields[0])
        except ValueError:
            raise bad(f"client must be an integer, got {fields[0]!r}") from None
        if client < 0:
            raise bad(f"client must be >= 0, got {client}")
        try:
            a, b = float(fields[1]), float(fields[2])
        except ValueError:
            raise bad(f"not a number in {content!r}") from None
        if not (math.isfinite(a) and math.isfinite(b)):
            raise bad(f"numbers must be finite, got {content!r}")
        yield bad, client, a, b


def is_pickle(data: bytes) -> bool:
    """Whether ``data`` starts like a pickle (FedScale's files) rather than text (CSV)."""
    return bool(data) and data[0] == PICKLE_MAGIC


def load_plain_pickle(data: bytes, file: Path, key: str) -> Any:
    """The object of a pickle made only of builtins containers and numbers (one-line errors)."""
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # any malformed pickle: one line naming the file
        problem = " ".join(str(exc).split()) or type(exc).__name__
        raise ScenarioError(f"cannot read the pickle {file}: {problem}", path=key) from None


def _number(value: Any, what: str, bad: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(f"{what} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise bad(f"{what} must be finite, got {value!r}")
    return x


def _client_id(raw: Any, bad: Any) -> int:
    try:
        client = int(raw)
    except (TypeError, ValueError):
        raise bad(f"client id {raw!r} is not an integer") from None
    if isinstance(raw, bool | float) or client < 0:
        raise bad(f"client id {raw!r} is not an integer >= 0")
    return client


def behaviour_trace(
    obj: Any, file: Path, key: str
) -> dict[int, tuple[list[float], list[float], float]]:
    """``{client: (starts, ends, period)}`` from a FedScale behaviour trace: client ``c`` is online
    on ``[active[k], inactive[k])`` modulo ``finish_time`` (FedScale repeats each client's trace
    with that period). Intervals are clipped to ``[0, finish_time]``, sorted, and overlapping or
    touching ones merged; empty ones are dropped."""

    def bad(why: str) -> ScenarioError:
        return ScenarioError(f"{file}: {why}", path=key)

    if not isinstance(obj, dict) or not obj:
        raise bad(
            "expected a non-empty dict client_id -> {'active': [...], 'inactive': [...], "
            f"'finish_time': ...}} (FedScale's client behaviour trace), got {type(obj).__name__}"
        )
    table: dict[int, tuple[list[float], list[float], float]] = {}
    for raw, entry in obj.items():
        client = _client_id(raw, bad)
        if client in table:
            raise bad(f"client {client} appears twice")
        where = f"client {raw!r}"
        if not isinstance(entry, dict) or not {"active", "inactive", "finish_time"} <= set(entry):
            raise bad(f"{where}: expected a dict with keys active, inactive and finish_time")
        active, inactive = entry["active"], entry["inactive"]
        if not isinstance(active, list | tuple) or not isinstance(inactive, list | tuple):
            raise bad(f"{where}: active and inactive must be lists of times")
        if len(active) != len(inactive):
            raise bad(f"{where}: {len(active)} active times but {len(inactive)} inactive times")
        period = _number(entry["finish_time"], f"{where}: finish_time", bad)
        if period <= 0:
            raise bad(f"{where}: finish_time must be > 0, got {period:g}")
        spans = []
        for on_raw, off_raw in zip(active, inactive, strict=True):
            on = _number(on_raw, f"{where}: an active time", bad)
            off = _number(off_raw, f"{where}: an inactive time", bad)
            if off < on:
                raise bad(f"{where}: inactive time {off:g} before its active time {on:g}")
            on, off = max(on, 0.0), min(off, period)
            if off > on:
                spans.append((on, off))
        table[client] = (*merge_intervals(spans), period)
    return table


def device_capacity(obj: Any, file: Path, key: str) -> dict[int, tuple[float, float]]:
    """``{client: (compute ms per sample, bandwidth kbit/s)}`` from FedScale's client device
    capacity (``{'computation': ..., 'communication': ...}`` per client)."""

    def bad(why: str) -> ScenarioError:
        return ScenarioError(f"{file}: {why}", path=key)

    if not isinstance(obj, dict) or not obj:
        raise bad(
            "expected a non-empty dict client_id -> {'computation': ms per sample, "
            "'communication': kbit/s} (FedScale's client device capacity), "
            f"got {type(obj).__name__}"
        )
    table: dict[int, tuple[float, float]] = {}
    for raw, entry in obj.items():
        client = _client_id(raw, bad)
        if client in table:
            raise bad(f"client {client} appears twice")
        where = f"client {raw!r}"
        if not isinstance(entry, dict) or not {"computation", "communication"} <= set(entry):
            raise bad(f"{where}: expected a dict with keys computation and communication")
        compute = _number(entry["computation"], f"{where}: computation", bad)
        bandwidth = _number(entry["communication"], f"{where}: communication", bad)
        if compute <= 0:
            raise bad(f"{where}: computation must be > 0 ms per sample, got {compute:g}")
        if bandwidth <= 0:
            raise bad(f"{where}: communication must be > 0 kbit/s, got {bandwidth:g}")
        table[client] = (compute, bandwidth)
    return table


def merge_intervals(spans: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Sorted starts and ends of ``spans`` with overlapping or touching intervals merged."""
    starts: list[float] = []
    ends: list[float] = []
    for on, off in sorted(spans):
        if ends and on <= ends[-1]:
            ends[-1] = max(ends[-1], off)
        else:
            starts.append(on)
            ends.append(off)
    return starts, ends


__all__ = [
    "ALLOWED",
    "behaviour_trace",
    "client_csv_rows",
    "decode_text",
    "device_capacity",
    "is_pickle",
    "load_plain_pickle",
    "merge_intervals",
    "read_bytes",
]
