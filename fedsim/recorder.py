"""Trace recording: rows buffered in memory, flushed to Parquet in chunks while the run goes on.

Rows are appended as tuples (one list append on the hot path) and turned into columns only at flush.
During a run each chunk is its own Parquet file under ``events.parquet.parts/``, written under a
temporary name and renamed into place, so a run killed at any moment leaves only complete parts.
:meth:`TraceWriter.close` merges the parts on disk into one ``events.parquet`` (again renamed into
place), holding no more than a few chunks in memory whatever the length of the run.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import warnings
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fedsim.rundir import writing

EVENT_SCHEMA = pa.schema(
    [
        ("sim_time", pa.float64()),
        ("client", pa.int32()),
        ("server", pa.int32()),
        ("job", pa.int64()),
        ("dispatched_at", pa.float64()),
        ("base_version", pa.int64()),
        ("arrival_version", pa.int64()),
        ("staleness", pa.int64()),
        ("compute_s", pa.float64()),
        ("comm_s", pa.float64()),
        ("status", pa.string()),
        ("bytes_up", pa.int64()),
        ("bytes_down", pa.int64()),
        ("byzantine", pa.bool_()),
        ("attack", pa.string()),
        ("reason", pa.string()),
        ("task", pa.int32()),
        ("receiver", pa.int32()),
    ]
)
"""Columns of ``events.parquet``: one row per job outcome, and one per message between servers
(status ``message``: ``server`` sent ``bytes_up`` bytes to ``receiver`` at ``dispatched_at``; it
arrived at ``sim_time``). ``reason`` says why a job was rejected or late (``non_finite``,
``norm_bound``, ``staleness``, ``score``, ...); ``task`` is the task of multi-task algorithms (0
otherwise); ``receiver`` is −1 on job rows."""

OPTIONAL_EVENT_COLUMNS = {"alpha": pa.float64()}
"""Columns only the algorithms that declare them (``Algorithm.event_columns``) add after
``EVENT_SCHEMA``, so every other trace keeps its bytes: ``alpha`` is the mixing weight of a
BRAIN/FRAIN merge (null on every other row)."""


def event_schema(extra: tuple[str, ...] = ()) -> pa.Schema:
    """``EVENT_SCHEMA`` followed by the optional columns ``extra`` (names of
    ``OPTIONAL_EVENT_COLUMNS``)."""
    if not extra:
        return EVENT_SCHEMA
    return pa.schema([*EVENT_SCHEMA, *(pa.field(n, OPTIONAL_EVENT_COLUMNS[n]) for n in extra)])


EVAL_SCHEMA = pa.schema(
    [
        ("sim_time", pa.float64()),
        ("real_time_s", pa.float64()),
        ("server", pa.int32()),
        ("version", pa.int64()),
        ("updates", pa.int64()),
        ("accuracy", pa.float64()),
        ("loss", pa.float64()),
        ("task", pa.int32()),
        ("consensus_error", pa.float64()),
    ]
)
"""Columns of ``evals.parquet``: one row per evaluation of a server's (or a task's) model.
``consensus_error`` is ``‖w_server − mean of the servers' models‖₂`` in multi-server runs (NaN with
one server)."""

STATUSES = (
    "applied",
    "buffered",
    "dropped",
    "rejected",
    "late",
    "cancelled",
    "abandoned",
    "in_flight",
    "message",
)
"""Job outcomes: applied (in the model now), buffered (received, waiting for a server step or the
close of its round), dropped (client lost), rejected (non-finite, over the norm bound, or scored
too low: see ``reason``), late (past a deadline, a closed round or max_staleness), cancelled
(over-selection: not needed), abandoned (its round had too few reports and was discarded),
in_flight (still out when the run stopped), message (a model sent between servers, not a job)."""


MERGED_ROW_GROUP = 65_536
"""Rows per row group of a merged file: fixed, so the file's bytes do not depend on when the parts
were flushed (by row count or by the wall-clock timer)."""


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` through a temporary file and a rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing(path, tmp):
        pq.write_table(table, tmp)
    os.replace(tmp, path)


def sort_by_time(table: pa.Table) -> pa.Table:
    """Stable sort by ``sim_time`` (rows of one instant keep the order they were recorded in)."""
    if table.num_rows < 2:
        return table
    return table.take(pc.sort_indices(table, sort_keys=[("sim_time", "ascending")]))


class TraceWriter:
    """Buffers rows of one table and writes them to Parquet in chunks.

    Nothing touches the disk before the first flush, so a writer can be built before its run
    directory is prepared. Without a path (``save=False``) the chunks stay in memory.
    """

    def __init__(self, path: Path | None, schema: pa.Schema, *, chunk_rows: int = 200_000) -> None:
        self.path = path
        self.schema = schema
        self.chunk_rows = chunk_rows
        self.rows: list[tuple] = []
        self._tables: list[pa.Table] = []
        self._parts = 0
        self.total = 0
        self.companion: TraceWriter | None = None
        """Flushed whenever this writer flushes (evals go to disk at least as often as events)."""
        self.parts_dir = path.with_name(path.name + ".parts") if path is not None else None
        # Checkpoints: the first ``_spilled`` buffered rows are also in the spill file of part
        # ``_spill_part`` (its first ``_spill_bytes`` bytes), so a checkpoint need not hold them.
        self._spilled = 0
        self._spill_part = -1
        self._spill_bytes = 0
        self._stale_spills: list[int] = []
        """Parts written since the last checkpoint whose spill files it may still need."""

    def append(self, row: tuple) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.chunk_rows:
            self.flush()

    def _to_table(self, rows: list[tuple]) -> pa.Table:
        # One itemgetter pass per column: zip(*rows) with ~1e5 arguments is several times slower.
        width = min([len(self.schema), *map(len, rows)])  # the columns every row has (none: all)
        columns = [list(map(itemgetter(i), rows)) for i in range(width)]
        # Optional trailing columns: a row without its value (not a merge, say) holds a null there.
        columns += [
            [r[i] if len(r) > i else None for r in rows]
            for i in range(len(columns), len(self.schema))
        ]
        return pa.table(
            [pa.array(col, type=f.type) for col, f in zip(columns, self.schema, strict=True)],
            schema=self.schema,
        )

    def flush(self) -> None:
        """Write the buffered rows as one part (sorted by time within it)."""
        if self.rows:
            table = sort_by_time(self._to_table(self.rows))
            self.total += len(self.rows)
            self.rows = []
            if self.parts_dir is None:
                self._tables.append(table)
            else:
                self.parts_dir.mkdir(parents=True, exist_ok=True)
                write_atomic(table, self.parts_dir / f"part-{self._parts:05d}.parquet")
                self._parts += 1
        if self.companion is not None:
            self.companion.flush()

    def _spill_path(self, part: int) -> Path:
        return self.parts_dir / f"rows-{part:05d}.pkl"

    def spill(self) -> None:
        """Append the rows buffered since the last spill to the spill file of the next part (a
        checkpoint records how far it goes instead of holding every buffered row, so each row is
        pickled once, not at every checkpoint until its part is written)."""
        if self.parts_dir is None:
            return
        if self._spill_part != self._parts:  # a part was written: its rows start a new file
            if self._spill_part >= 0:
                self._stale_spills.append(self._spill_part)
            self._spill_part, self._spilled, self._spill_bytes = self._parts, 0, 0
        new = self.rows[self._spilled :]
        if not new and self._spill_bytes:
            return
        data = pickle.dumps(new, protocol=pickle.HIGHEST_PROTOCOL)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        path = self._spill_path(self._parts)
        # A failed append leaves bytes past what the last checkpoint knows of: a resume cuts them.
        with writing(path), path.open("r+b" if self._spill_bytes else "wb") as file:
            file.seek(self._spill_bytes)
            file.write(data)
            file.truncate()
        self._spill_bytes += len(data)
        self._spilled = len(self.rows)

    def drop_old_spills(self) -> None:
        """Remove the spill files of parts already written (the last checkpoint no longer needs
        them)."""
        for part in self._stale_spills:
            self._spill_path(part).unlink(missing_ok=True)
        self._stale_spills = []

    def unspilled_state(self) -> dict:
        """This writer's attributes for a checkpoint: the rows of the spill file left out (see
        :meth:`spill`; :meth:`restore_rows` reads them back)."""
        state = dict(vars(self))
        if self._spill_part != self._parts:  # nothing of this part spilled
            state["_spilled"], state["_spill_part"], state["_spill_bytes"] = 0, self._parts, 0
        state["rows"] = self.rows[state["_spilled"] :]
        state["_stale_spills"] = []  # removed once this checkpoint is in place
        return state

    def restore_rows(self) -> None:
        """After a resume: the spilled rows read back in front of the saved ones; the spill file
        cut to what the checkpoint knew of, and the other spill files removed."""
        if self.parts_dir is None:
            return
        self._spill_part = self._parts
        path = self._spill_path(self._parts)
        rows: list[tuple] = []
        if not self._spill_bytes:
            path.unlink(missing_ok=True)
        else:
            rows = self._read_spill(path)
        if len(rows) != self._spilled:
            raise ValueError(f"{path}: {len(rows)} rows, the checkpoint expects {self._spilled}")
        self.rows = rows + self.rows
        for old in self.parts_dir.glob("rows-*.pkl"):  # of parts the resume dropped
            if old != path:
                old.unlink()

    def _read_spill(self, path: Path) -> list[tuple]:
        rows: list[tuple] = []
        with path.open("r+b") as file:
            file.truncate(self._spill_bytes)
            while file.tell() < self._spill_bytes:
                rows.extend(pickle.load(file))
        return rows

    @property
    def part_count(self) -> int:
        """Parts written so far (their numbers are 0 … part_count − 1)."""
        return self._parts

    def truncate_parts(self, count: int) -> None:
        """Go back to the first ``count`` parts (a resume from a checkpoint taken then): the
        parts written after it are removed, the next part is number ``count``."""
        if self.parts_dir is not None and self.parts_dir.is_dir():
            for part in self.parts_dir.glob("part-*.parquet"):
                if int(part.stem.split("-")[1]) >= count:
                    part.unlink()
        self._parts = count

    def close(self, *, keep_parts: bool = False) -> pd.DataFrame | None:
        """Finish the table: rows in time order, stably sorted by ``sim_time``.

        Rows are recorded when an outcome is known, which is not always in time order (a FedAvg
        round writes its reports when it closes). In memory the table is returned; on disk the
        parts are merged into the final file, the parts removed, and None is returned (read the
        file back with :func:`read_table` when it is needed).
        """
        companion, self.companion = self.companion, None
        self.flush()
        self.companion = companion
        if self.path is None:
            table = pa.concat_tables(self._tables) if self._tables else self._to_table([])
            return sort_by_time(table).to_pandas()
        parts = sorted(self.parts_dir.glob("part-*.parquet")) if self.parts_dir.is_dir() else []
        merge_parts(parts, self.path, self.schema, block_rows=self.chunk_rows)
        if not keep_parts:
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        return None


class _PartCursor:
    """Reads one time-sorted part a block at a time for :func:`merge_parts`."""

    def __init__(self, index: int, path: Path, block_rows: int) -> None:
        self.index = index
        self.path = path
        self.block_rows = block_rows
        with pq.ParquetFile(path) as file:  # opened again when read: few files open at once
            self.first_time = _first_time(file)
        self._file: pq.ParquetFile | None = None
        self._batches: Iterator[pa.RecordBatch] | None = None
        self.buffer: pa.Table | None = None
        self.done = False

    def load(self) -> None:
        """Append the next block to the buffer (or mark the part fully read)."""
        if self._batches is None:
            self._file = pq.ParquetFile(self.path)
            self._batches = self._file.iter_batches(batch_size=self.block_rows)
        batch = next(self._batches, None)
        if batch is None:
            self.done = True
            self._file.close()
            return
        block = pa.Table.from_batches([batch])
        self.buffer = block if self.buffer is None else pa.concat_tables([self.buffer, block])

    @property
    def empty(self) -> bool:
        return self.buffer is None or self.buffer.num_rows == 0

    def last_time(self) -> float:
        return self.buffer.column("sim_time")[-1].as_py()

    def take_before(self, bound: float) -> pa.Table:
        """Remove and return the buffered rows with ``sim_time < bound``."""
        times = self.buffer.column("sim_time").to_numpy()
        n = int(np.searchsorted(times, bound, side="left"))
        head, self.buffer = self.buffer.slice(0, n), self.buffer.slice(n)
        return head


def _first_time(file: pq.ParquetFile) -> float:
    """The earliest ``sim_time`` of a sorted part (its statistics, else its first row)."""
    if file.metadata.num_rows == 0:
        return math.inf
    column = file.schema_arrow.get_field_index("sim_time")
    stats = file.metadata.row_group(0).column(column).statistics
    if stats is not None and stats.has_min_max:
        return float(stats.min)
    return float(file.read_row_group(0, columns=["sim_time"]).column(0)[0].as_py())


def merge_parts(parts: list[Path], out: Path, schema: pa.Schema, *, block_rows: int) -> int:
    """Merge time-sorted parts into one file sorted by time, with bounded memory; return the rows.

    A k-way merge by blocks. Parts are opened in the order of their first time; among the open
    ones, only rows earlier than both the smallest last time of the blocks still being read and
    the first time of the next unopened part can be written. The result is exactly the stable
    sort of the concatenated parts (ties keep part order, then row order). Parts recorded in time
    order (the usual case) are copied one after the other, one or two open at a time.
    """
    step = max(1024, block_rows // 4)
    waiting = sorted(
        (_PartCursor(i, p, step) for i, p in enumerate(parts)),
        key=lambda c: (c.first_time, c.index),
        reverse=True,  # pop() takes the earliest
    )
    live: list[_PartCursor] = []  # open parts, by part index
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    pending: list[pa.Table] = []
    pending_rows = 0
    total = 0
    with writing(out, tmp), pq.ParquetWriter(tmp, schema) as writer:
        while True:
            for cursor in live:
                if cursor.empty and not cursor.done:
                    cursor.load()
            live = [c for c in live if not c.empty]
            next_first = waiting[-1].first_time if waiting else math.inf
            if not live and not waiting:
                break
            open_ends = [c.last_time() for c in live if not c.done]
            bound = min([next_first, *open_ends])
            taken = [c.take_before(bound) for c in live]
            rows = sum(t.num_rows for t in taken)
            if rows == 0:
                if waiting and next_first <= bound:  # the next part starts here: open it
                    opened = waiting.pop()
                    live.append(opened)
                    live.sort(key=lambda c: c.index)
                else:  # every open block ends at `bound`: read further into the limiting part
                    next(c for c in live if not c.done and c.last_time() == bound).load()
                continue
            pending.append(sort_by_time(pa.concat_tables(taken)))
            pending_rows += rows
            total += rows
            if pending_rows >= MERGED_ROW_GROUP:
                pending, pending_rows = _write_row_groups(writer, pending, final=False)
        _write_row_groups(writer, pending, final=True)
    os.replace(tmp, out)
    return total


def _write_row_groups(
    writer: pq.ParquetWriter, pending: list[pa.Table], *, final: bool
) -> tuple[list[pa.Table], int]:
    """Write whole row groups of MERGED_ROW_GROUP rows (and the rest when final); keep the rest."""
    table = pa.concat_tables(pending) if pending else None
    if table is None or table.num_rows == 0:
        return [], 0
    whole = table.num_rows if final else table.num_rows - table.num_rows % MERGED_ROW_GROUP
    for start in range(0, whole, MERGED_ROW_GROUP):
        # One chunk per column: pages then do not depend on how the blocks were cut.
        writer.write_table(
            table.slice(start, min(MERGED_ROW_GROUP, whole - start)).combine_chunks()
        )
    rest = table.slice(whole)
    return ([rest] if rest.num_rows else []), rest.num_rows


def readable_parts(parts_dir: Path) -> Iterator[pa.Table]:
    """The parts of a killed run that can be read; an unreadable one is skipped with a warning."""
    for part in sorted(parts_dir.glob("part-*.parquet")):
        try:
            yield pq.read_table(part)
        except (OSError, pa.ArrowException) as exc:
            warnings.warn(f"skipping unreadable trace part {part}: {exc}", stacklevel=3)


def read_table(path: Path, schema: pa.Schema | None = None) -> pd.DataFrame:
    """Read a finished table, or else the parts a killed run left behind (sorted by time).

    With neither on disk, an empty table of ``schema`` is returned (with a warning) when a schema
    is given, else FileNotFoundError is raised.
    """
    if path.exists():
        return pd.read_parquet(path)
    parts_dir = path.with_name(path.name + ".parts")
    tables = list(readable_parts(parts_dir)) if parts_dir.is_dir() else []
    if tables:
        return sort_by_time(pa.concat_tables(tables, promote_options="default")).to_pandas()
    if schema is None:
        raise FileNotFoundError(path)
    warnings.warn(
        f"no trace recorded in {path} (the run stopped before any was written)", stacklevel=2
    )
    return schema.empty_table().to_pandas()


def event_totals(path: Path | None, table: pd.DataFrame | None) -> dict[str, object]:
    """Figures of the events table for the summary, read column-wise a row group at a time."""
    counts: dict[str, int] = {}
    staleness_sum = 0
    staleness_n = 0
    up = down = messages = 0
    for frame in _event_batches(path, table):
        status = frame["status"]
        for key, n in status.value_counts().items():
            counts[key] = counts.get(key, 0) + int(n)
        used = status.isin(("applied", "buffered"))
        staleness_sum += int(frame["staleness"][used].sum())
        staleness_n += int(used.sum())
        is_message = status == "message"
        up += int(frame["bytes_up"][~is_message].sum())
        down += int(frame["bytes_down"][~is_message].sum())
        messages += int(frame["bytes_up"][is_message].sum())
    return {
        "status_counts": {k: counts[k] for k in sorted(counts)},
        "mean_staleness": staleness_sum / staleness_n if staleness_n else math.nan,
        "bytes": {"client_up": up, "client_down": down, "server_to_server": messages},
    }


def _event_batches(path: Path | None, table: pd.DataFrame | None) -> Iterator[pd.DataFrame]:
    if table is not None:
        yield table
        return
    columns = ["status", "staleness", "bytes_up", "bytes_down"]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=MERGED_ROW_GROUP, columns=columns):
        yield batch.to_pandas()
