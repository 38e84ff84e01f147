"""Trace recording: rows buffered in memory, flushed to Parquet in chunks while the run goes on.

Rows are appended as tuples (one list append on the hot path) and turned into columns only at flush.
During a run each chunk is its own Parquet file under ``events.parquet.parts/``, so a killed run still
leaves readable data; :meth:`TraceWriter.close` merges the parts into one ``events.parquet``.
"""

from __future__ import annotations

import shutil
from operator import itemgetter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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


class TraceWriter:
    """Buffers rows of one table and writes them to Parquet in chunks."""

    def __init__(self, path: Path | None, schema: pa.Schema, *, chunk_rows: int = 200_000) -> None:
        self.path = path
        self.schema = schema
        self.chunk_rows = chunk_rows
        self.rows: list[tuple] = []
        self._tables: list[pa.Table] = []
        self._parts = 0
        self.total = 0
        if path is not None:
            self._parts_dir = path.with_name(path.name + ".parts")
            shutil.rmtree(self._parts_dir, ignore_errors=True)
            path.unlink(missing_ok=True)

    def append(self, row: tuple) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.chunk_rows:
            self.flush()

    def _to_table(self, rows: list[tuple]) -> pa.Table:
        # One itemgetter pass per column: zip(*rows) with ~1e5 arguments is several times slower.
        columns = [list(map(itemgetter(i), rows)) for i in range(len(self.schema))]
        return pa.table(
            [pa.array(col, type=f.type) for col, f in zip(columns, self.schema, strict=True)],
            schema=self.schema,
        )

    def flush(self) -> None:
        if not self.rows:
            return
        table = self._to_table(self.rows)
        self.total += len(self.rows)
        self.rows = []
        self._tables.append(table)
        if self.path is not None:
            self._parts_dir.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, self._parts_dir / f"part-{self._parts:05d}.parquet")
            self._parts += 1

    def close(self) -> pd.DataFrame:
        """Write the single final file (rows in time order), remove the parts, return the table.

        Rows are recorded when an outcome is known, which is not always in time order (a FedAvg
        round writes its reports when it closes); the final file is stably sorted by ``sim_time``.
        """
        self.flush()
        table = pa.concat_tables(self._tables) if self._tables else self._to_table([])
        if table.num_rows:
            order = pc.sort_indices(table, sort_keys=[("sim_time", "ascending")])
            table = table.take(order)
        if self.path is not None:
            pq.write_table(table, self.path)
            shutil.rmtree(self._parts_dir, ignore_errors=True)
        return table.to_pandas()


def read_table(path: Path) -> pd.DataFrame:
    """Read a finished table, or the parts a killed run left behind."""
    if path.exists():
        return pd.read_parquet(path)
    parts = path.with_name(path.name + ".parts")
    if parts.is_dir():
        return pd.read_parquet(parts)
    raise FileNotFoundError(path)
