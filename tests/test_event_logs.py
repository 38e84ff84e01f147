"""Exact event logs (STYLE.md "unit: tiny hand-computed inputs, exact event logs"; issue 16).

Three clients, timing only, constant compute times and no network: every job of client ``i`` takes
exactly ``T_i`` simulated seconds. With ``clients.heterogeneity: linear`` (client ``i`` is slowed by
``1 − i·spread/(n−1)``), ``mean_s = 2`` and ``spread = 0.5``:

    T_0 = 2 × 1.00 = 2.0 s      T_1 = 2 × 0.75 = 1.5 s      T_2 = 2 × 0.50 = 1.0 s

(all exact in binary floating point, so are their sums). Each expected trace below is derived by hand
from the algorithm's rules (shared/ALGORITHMS.md §3.1–3.3 and the algorithm's module) and the
simulator's conventions, not copied from a run:

- a row's ``sim_time`` is when the job's outcome happened (its arrival; for ``cancelled`` and
  ``in_flight`` rows, the moment it was cancelled or the run stopped);
- the trace is stably sorted by ``sim_time``: rows of one instant keep the order they were recorded in;
- events of one instant run in the order they were scheduled (SimPy's event id), so of two jobs
  arriving together the one dispatched earlier is handled first;
- jobs still out at the stop are recorded as ``in_flight`` at the stop time, in the order they were
  dispatched, with ``staleness = version at the stop − version at dispatch``;
- a job dispatched at version ``v`` and handled when the server is at version ``u`` has staleness
  ``u − v``.

Stop times fall between arrivals, so no arrival ties with the stop. Which client the sampler picks
first only matters among jobs dispatched at one instant that also finish at one instant, which never
happens here (the three clients have different speeds).
"""

from __future__ import annotations

import pandas as pd

import fedsim


def scenario(algorithm: dict, stop_s: float) -> dict:
    return {
        "name": "event_log",
        "seed": 0,
        "stop": {"time_s": stop_s},
        "training": "none",
        "clients": {
            "count": 3,
            "compute": {"dist": "constant", "mean_s": 2.0},
            "heterogeneity": {"dist": "linear", "spread": 0.5},
        },
        "algorithm": algorithm,
        "eval": {"every_s": 100.0},
    }


def trace(result: fedsim.Result, *columns: str) -> list[tuple]:
    """The run's events as written to ``events.parquet``: (sim_time, client, status, *columns)."""
    events = pd.read_parquet(result.run_dir / "events.parquet")
    pd.testing.assert_frame_equal(events, result.events, check_exact=True)
    return [
        tuple(row)
        for row in events[["sim_time", "client", "status", *columns]].itertuples(index=False)
    ]


def test_fedavg_deadline_late_reports_and_partial_cohorts(tmp_path):
    """FedAvg, cohort 2, over-selection 0.5 (dispatch ⌈2·1.5⌉ = 3), deadline 1.25 s, stop at 4.4 s.

    Round 1, t=0: idle {0,1,2} → all three dispatched; arrivals 2@1.0, 1@1.5, 0@2.0; deadline 1.25.
      t=1.0  client 2 reports (1 of 2: not enough, 1 of 3 finished).
      t=1.25 deadline: the round closes with 1 report (< cohort: nothing is cancelled; min_fraction
             0: not abandoned) → (1.0, 2, applied) is recorded (at its arrival time).
    Round 2, t=1.25: idle {2} only → client 2 alone (arrives 2.25); deadline 2.5.
      t=1.5  client 1's round-1 job arrives after its round closed → (1.5, 1, late).
      t=2.0  client 0's round-1 job → (2.0, 0, late).
      t=2.25 client 2 reports: every dispatched job finished → close → (2.25, 2, applied).
    Round 3, t=2.25: idle {1,0,2} → all three: 2@3.25, 1@3.75, 0@4.25; deadline 3.5.
      t=3.25 client 2 reports (1 of 2).
      t=3.5  deadline: close with 1 report → (3.25, 2, applied).
    Round 4, t=3.5: idle {2} → client 2 alone (arrives 4.5); deadline 4.75.
      t=3.75 (3.75, 1, late);  t=4.25 (4.25, 0, late).
    Stop, t=4.4: client 2's round-4 job is out → (4.4, 2, in_flight); the open round holds no
    report, so nothing is ``buffered``.
    """
    algorithm = {
        "name": "fedavg",
        "cohort_size": 2,
        "over_selection": 0.5,
        "deadline_s": 1.25,
    }
    result = fedsim.run(scenario(algorithm, 4.4), out=tmp_path / "run")
    assert trace(result) == [
        (1.0, 2, "applied"),
        (1.5, 1, "late"),
        (2.0, 0, "late"),
        (2.25, 2, "applied"),
        (3.25, 2, "applied"),
        (3.75, 1, "late"),
        (4.25, 0, "late"),
        (4.4, 2, "in_flight"),
    ]
    assert result.summary["updates"] == 3 and result.summary["versions"] == 3


def test_fedavg_over_selection_cancels_the_slowest(tmp_path):
    """FedAvg, cohort 2 of 3 dispatched (over-selection 0.5), no deadline, stop at 4.2 s.

    Every round starts with all three idle and dispatches all three; clients 2 and 1 report after
    1.0 and 1.5 s, which fills the cohort, so the round closes 1.5 s after it started. Closing records
    client 0's job as ``cancelled`` first (at the closing time; it frees client 0), then the two
    reports as ``applied`` at their arrival times: rows of one instant keep that order.
      Round 1, t=0:   (1.0, 2, applied), (1.5, 0, cancelled), (1.5, 1, applied)
      Round 2, t=1.5: (2.5, 2, applied), (3.0, 0, cancelled), (3.0, 1, applied)
      Round 3, t=3.0: client 2 reports at 4.0; stop at 4.2: (4.0, 2) is a report of the open round,
      recorded ``buffered`` at the stop (FedAvg.finish); clients 1 and 0 are out → ``in_flight`` at
      4.2. They were dispatched at one instant, in the sampler's order: compared as a set.
    """
    algorithm = {"name": "fedavg", "cohort_size": 2, "over_selection": 0.5}
    result = fedsim.run(scenario(algorithm, 4.2), out=tmp_path / "run")
    rows = trace(result)
    assert rows[:7] == [
        (1.0, 2, "applied"),
        (1.5, 0, "cancelled"),
        (1.5, 1, "applied"),
        (2.5, 2, "applied"),
        (3.0, 0, "cancelled"),
        (3.0, 1, "applied"),
        (4.0, 2, "buffered"),
    ]
    assert sorted(rows[7:]) == [(4.2, 0, "in_flight"), (4.2, 1, "in_flight")]


def test_fedasync_every_arrival_is_a_version(tmp_path):
    """FedAsync with concurrency 3 = every client, stop at 4.25 s: (time, client, status, staleness).

    An arrival makes its client idle, is applied (version + 1), then the one idle client (itself) is
    dispatched again with the new version. So client i arrives at T_i, 2·T_i, ...:
      client 2 at 1, 2, 3, 4;  client 1 at 1.5, 3;  client 0 at 2, 4.
    At t=2 client 0 (dispatched at 0) goes before client 2 (dispatched at 1); at t=3 client 1
    (dispatched at 1.5) before client 2 (at 2); at t=4 client 0 (at 2) before client 2 (at 3).
    Versions (v = the server's version when handled; base = version at dispatch):
      t=1.0  c2 base 0, v 0 → staleness 0; v=1, c2 out again with base 1
      t=1.5  c1 base 0, v 1 → 1;            v=2, c1 base 2
      t=2.0  c0 base 0, v 2 → 2;            v=3, c0 base 3
      t=2.0  c2 base 1, v 3 → 2;            v=4, c2 base 4
      t=3.0  c1 base 2, v 4 → 2;            v=5, c1 base 5
      t=3.0  c2 base 4, v 5 → 1;            v=6, c2 base 6
      t=4.0  c0 base 3, v 6 → 3;            v=7, c0 base 7
      t=4.0  c2 base 6, v 7 → 1;            v=8, c2 base 8
    Stop at 4.25 with version 8: out are c1 (dispatched at 3, base 5), c0 (at 4, base 7), c2 (at 4,
    base 8), recorded in that order with staleness 3, 1, 0.
    """
    algorithm = {"name": "fedasync", "concurrency": 3, "alpha": 0.6}
    result = fedsim.run(scenario(algorithm, 4.25), out=tmp_path / "run")
    assert trace(result, "staleness") == [
        (1.0, 2, "applied", 0),
        (1.5, 1, "applied", 1),
        (2.0, 0, "applied", 2),
        (2.0, 2, "applied", 2),
        (3.0, 1, "applied", 2),
        (3.0, 2, "applied", 1),
        (4.0, 0, "applied", 3),
        (4.0, 2, "applied", 1),
        (4.25, 1, "in_flight", 3),
        (4.25, 0, "in_flight", 1),
        (4.25, 2, "in_flight", 0),
    ]
    assert result.summary["versions"] == 8


def test_fedbuff_versions_move_every_k_arrivals(tmp_path):
    """FedBuff, concurrency 3, buffer K = 2, dispatch immediate, stop at 5.25 s.

    The arrival times are FedAsync's (an arrival is buffered, then its client, the only idle one, is
    dispatched again at once), but the version moves only when the buffer holds K = 2 updates, and
    the replacement is dispatched BEFORE that server step, so it starts from the pre-step version.
      t=1.0  c2 base 0, v 0 → 0; buffer 1; c2 out (base 0)
      t=1.5  c1 base 0, v 0 → 0; buffer 2; c1 out (base 0); step → v=1
      t=2.0  c0 base 0, v 1 → 1; buffer 1; c0 out (base 1)
      t=2.0  c2 base 0, v 1 → 1; buffer 2; c2 out (base 1); step → v=2
      t=3.0  c1 base 0, v 2 → 2; buffer 1; c1 out (base 2), back at 4.5
      t=3.0  c2 base 1, v 2 → 1; buffer 2; c2 out (base 2); step → v=3
      t=4.0  c0 base 1, v 3 → 2; buffer 1; c0 out (base 3), back at 6.0
      t=4.0  c2 base 2, v 3 → 1; buffer 2; c2 out (base 3); step → v=4
      t=4.5  c1 base 2, v 4 → 2; buffer 1; c1 out (base 4), back at 6.0
      t=5.0  c2 base 3, v 4 → 1; buffer 2; c2 out (base 4); step → v=5
    Stop at 5.25 with version 5: out are c0 (dispatched at 4, base 3), c1 (at 4.5, base 4), c2 (at
    5, base 4): staleness 2, 1, 1. Every accepted update is ``buffered``.
    """
    algorithm = {
        "name": "fedbuff",
        "concurrency": 3,
        "buffer_size": 2,
        "dispatch_policy": "immediate",
    }
    result = fedsim.run(scenario(algorithm, 5.25), out=tmp_path / "run")
    assert trace(result, "staleness") == [
        (1.0, 2, "buffered", 0),
        (1.5, 1, "buffered", 0),
        (2.0, 0, "buffered", 1),
        (2.0, 2, "buffered", 1),
        (3.0, 1, "buffered", 2),
        (3.0, 2, "buffered", 1),
        (4.0, 0, "buffered", 2),
        (4.0, 2, "buffered", 1),
        (4.5, 1, "buffered", 2),
        (5.0, 2, "buffered", 1),
        (5.25, 0, "in_flight", 2),
        (5.25, 1, "in_flight", 1),
        (5.25, 2, "in_flight", 1),
    ]
    assert result.summary["versions"] == 5
