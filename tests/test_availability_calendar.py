"""The pool's batched switch calendar (diurnal: a window of switches sorted in numpy, their next
switches drawn in bulk) against its heap calendar (one switch at a time), the independent second
implementation: the same events, switches and client facts, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

import fedsim
from fedsim.availability import Availability, Diurnal


def scenario(availability: dict, compute: dict, algorithm: dict, updates: int) -> dict:
    return {
        "name": "calendar",
        "seed": 5,
        "stop": {"time_s": None, "max_updates": updates},
        "training": "none",
        "clients": {"count": 300, "compute": compute, "availability": availability},
        "algorithm": algorithm,
        "eval": {"every_s": 50.0},
    }


CASES = {
    "spread": scenario(
        {"kind": "diurnal", "period_s": 60.0, "phase": "spread", "on_fraction": 0.3},
        {"dist": "exponential", "mean_s": 5.0},
        {"name": "fedasync", "concurrency": 20},
        2000,
    ),
    # every client switches at once, at times that jobs of constant length also end at (ties)
    "same phase, ties": scenario(
        {"kind": "diurnal", "period_s": 40.0, "phase": "same", "on_fraction": 0.75},
        {"dist": "constant", "mean_s": 5.0},
        {"name": "fedasync", "concurrency": 20},
        1500,
    ),
    "fedavg": scenario(
        {"kind": "diurnal", "period_s": 30.0, "phase": "spread", "offset_s": 7.0},
        {"dist": "exponential", "mean_s": 2.0},
        {"name": "fedavg", "cohort_size": 10},
        60,
    ),
}
FILES = ("events.parquet", "availability.parquet", "clients.parquet")


def tables(config: dict, out: Path) -> dict[str, object]:
    fedsim.run(config, out=out)
    return {name: pq.read_table(out / name) for name in FILES}


@pytest.mark.parametrize("case", CASES)
def test_batched_calendar_equals_the_heap_calendar(case, tmp_path, monkeypatch):
    batched = tables(CASES[case], tmp_path / "batched")
    assert batched["availability.parquet"].num_rows > 100  # switches really happened
    # the heap calendar: a model with no shortest spell, the generic path
    monkeypatch.setattr(Diurnal, "shortest_spell_s", Availability.shortest_spell_s)
    heap = tables(CASES[case], tmp_path / "heap")
    for name in FILES:
        assert batched[name].equals(heap[name]), name
    switches = batched["availability.parquet"].column("sim_time").to_numpy()
    assert switches.max() <= batched["events.parquet"].column("sim_time").to_numpy().max()
