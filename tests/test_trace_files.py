"""Trace files survive kills: atomic parts, a bounded-memory merge equal to a global stable sort."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fedsim
from fedsim.recorder import EVAL_SCHEMA, EVENT_SCHEMA, TraceWriter, merge_parts, read_table

SCHEMA = pa.schema([("sim_time", pa.float64()), ("order", pa.int64())])


def _parts(tmp_path, rng: np.random.Generator, n_parts: int, rows: int) -> list:
    """Time-sorted parts with many ties (times drawn from a few values) and a global row order."""
    paths, order = [], 0
    for i in range(n_parts):
        n = int(rng.integers(0, rows))
        times = np.sort(rng.integers(0, 12, size=n).astype(float), kind="stable")
        table = pa.table({"sim_time": times, "order": np.arange(order, order + n)}, schema=SCHEMA)
        order += n
        path = tmp_path / f"part-{i:05d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block_rows", [1, 7, 1000])
def test_merge_equals_stable_sort_of_all_parts(tmp_path, seed, block_rows):
    rng = np.random.default_rng(seed)
    parts = _parts(tmp_path, rng, n_parts=int(rng.integers(1, 9)), rows=3000)
    out = tmp_path / "merged.parquet"
    total = merge_parts(parts, out, SCHEMA, block_rows=block_rows)
    expected = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    expected = expected.sort_values("sim_time", kind="stable", ignore_index=True)
    merged = pd.read_parquet(out)
    assert total == len(expected)
    pd.testing.assert_frame_equal(merged, expected, check_exact=True)


def test_merged_bytes_do_not_depend_on_part_boundaries(tmp_path):
    """Parts cut at other places (row count or wall-clock timer) give the same file, byte for byte."""
    rng = np.random.default_rng(1)
    n = 150_000  # over two fixed-size row groups
    table = pa.table(
        {"sim_time": np.sort(rng.random(n) * 100), "order": np.arange(n)}, schema=SCHEMA
    )
    files = []
    for cuts in ([n], [5, 70_000, 120_001, n], [*range(9_999, n, 10_000), n]):
        folder = tmp_path / f"cut{len(cuts)}"
        folder.mkdir()
        start, parts = 0, []
        for i, stop in enumerate(cuts):
            parts.append(folder / f"part-{i:05d}.parquet")
            pq.write_table(table.slice(start, stop - start), parts[-1])
            start = stop
        merge_parts(parts, folder / "merged.parquet", SCHEMA, block_rows=4096)
        files.append((folder / "merged.parquet").read_bytes())
    assert files[0] == files[1] == files[2]


def test_a_writer_on_disk_keeps_no_chunk_in_memory(tmp_path):
    writer = TraceWriter(tmp_path / "evals.parquet", EVAL_SCHEMA, chunk_rows=2)
    for i in range(9):
        writer.append((float(9 - i), 0.0, 0, i, i, 0.5, 1.0, 0, float("nan")))
    assert writer._tables == [] and len(writer.rows) == 1
    assert sorted(p.name for p in writer.parts_dir.iterdir()) == [
        f"part-{i:05d}.parquet" for i in range(4)
    ]
    assert writer.close() is None
    assert pd.read_parquet(tmp_path / "evals.parquet")["sim_time"].tolist() == list(
        map(float, range(1, 10))
    )
    assert not writer.parts_dir.exists()


def test_an_unreadable_part_is_skipped_and_the_others_read(tmp_path):
    writer = TraceWriter(tmp_path / "events.parquet", EVENT_SCHEMA, chunk_rows=3)
    row = (0.5, 1, 0, 7, 0.0, 0, 2, 2, 0.4, 0.1, "applied", 10, 10, False, "", "", 0, -1)
    for _ in range(9):
        writer.append(row)
    (writer.parts_dir / "part-00001.parquet").write_bytes(b"PAR1")  # as a kill mid-write left it
    with pytest.warns(UserWarning, match="skipping unreadable trace part .*part-00001"):
        table = read_table(tmp_path / "events.parquet")
    assert len(table) == 6


def test_no_trace_at_all_reads_as_an_empty_table_with_the_columns(tmp_path):
    with pytest.warns(UserWarning, match="no trace recorded"):
        table = read_table(tmp_path / "evals.parquet", EVAL_SCHEMA)
    assert list(table.columns) == EVAL_SCHEMA.names and table.empty
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "evals.parquet")


def test_a_run_gives_the_same_files_whatever_the_flush_size(tmp_path, small_learning):
    """flush_rows changes where the parts are cut, never the finished files."""
    small = fedsim.run(small_learning, out=tmp_path / "small", **{"output__flush_rows": 5})
    large = fedsim.run(small_learning, out=tmp_path / "large")
    assert small.summary["updates"] > 20
    assert (tmp_path / "small" / "events.parquet").read_bytes() == (
        tmp_path / "large" / "events.parquet"
    ).read_bytes()
    pd.testing.assert_frame_equal(
        small.evals.drop(columns="real_time_s"), large.evals.drop(columns="real_time_s")
    )
    # The summary is computed from the file, read a column at a time: it matches the table.
    counts = small.events["status"].value_counts().to_dict()
    assert small.summary["status_counts"] == {k: counts[k] for k in sorted(counts)}
