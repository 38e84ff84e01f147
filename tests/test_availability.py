"""Client availability (``clients.availability``, issue 15): the models against their analytic
online fractions, the pool's semantics (offline clients never dispatched, a job lost at the
instant its client goes offline, asynchronous algorithms waiting and resuming) in exact event
logs, and the trace file's errors.

Until ``fedsim/simulation.py`` builds the pool with the scenario's availability, :func:`wire`
does it for a test (a pool built with an availability given is left as it is).
"""

from __future__ import annotations

import bisect
import math
import pickle
from pathlib import Path

import pandas as pd
import pytest
import simpy

import fedsim
import fedsim.simulation
from fedsim.availability import (
    Diurnal,
    Markov,
    Trace,
    build_availability,
    read_trace_csv,
)
from fedsim.cli import main
from fedsim.clients import ClientPool
from fedsim.rng import SeedStreams
from fedsim.scenario import ClientsConfig
from fedsim.timing import (
    ClientTiming,
    ConstantDelay,
    DropoutConfig,
    NetworkConfig,
    NoHeterogeneity,
    StragglerConfig,
)


def wire(monkeypatch, clients: dict) -> list[ClientPool]:
    """Make runs build their pool with ``clients``' availability; returns the pools built."""
    config = ClientsConfig(**clients).availability
    pools: list[ClientPool] = []

    def pool(env, n, timing, trainer, streams, availability=None):
        if availability is None:
            availability = build_availability(config, n, streams)
        built = ClientPool(env, n, timing, trainer, streams, availability=availability)
        pools.append(built)
        return built

    monkeypatch.setattr(fedsim.simulation, "ClientPool", pool)
    return pools


def scenario(algorithm: dict, stop_s: float, clients: dict, seed: int = 0) -> dict:
    return {
        "name": "availability",
        "seed": seed,
        "stop": {"time_s": stop_s},
        "training": "none",
        "clients": clients,
        "algorithm": algorithm,
        "eval": {"every_s": 1000.0},
    }


def events(result: fedsim.Result) -> pd.DataFrame:
    return pd.read_parquet(result.run_dir / "events.parquet")


# ---------------------------------------------------------------------------------------------------
# always: nothing changes


def test_always_is_the_default_and_byte_identical(tmp_path, monkeypatch):
    clients = {"count": 5, "compute": {"dist": "exponential", "mean_s": 1.0}}
    assert build_availability(ClientsConfig(**clients).availability, 5, SeedStreams(0)) is None
    algorithm = {"name": "fedbuff", "concurrency": 3, "buffer_size": 2}
    plain = fedsim.run(scenario(algorithm, 30.0, clients), out=tmp_path / "plain")
    explicit = {**clients, "availability": {"kind": "always"}}
    pools = wire(monkeypatch, explicit)
    wired = fedsim.run(scenario(algorithm, 30.0, clients), out=tmp_path / "wired")
    named = fedsim.run(scenario(algorithm, 30.0, explicit), out=tmp_path / "named")
    assert pools[0].availability is None and pools[0].online is None
    name = "events.parquet"
    assert (plain.run_dir / name).read_bytes() == (wired.run_dir / name).read_bytes()
    # naming the default changes the scenario's text (its hash), not the rows
    pd.testing.assert_frame_equal(events(plain), events(named), check_exact=True)
    evals = [
        pd.read_parquet(r.run_dir / "evals.parquet").drop(columns=["real_time_s"])
        for r in (plain, wired, named)
    ]
    pd.testing.assert_frame_equal(evals[0], evals[1], check_exact=True)
    pd.testing.assert_frame_equal(evals[0], evals[2], check_exact=True)


# ---------------------------------------------------------------------------------------------------
# The online fraction of each model, measured through the pool


def _timing(n: int, streams: SeedStreams) -> ClientTiming:
    return ClientTiming(
        compute=ConstantDelay(mean_s=1.0),
        heterogeneity=NoHeterogeneity(),
        stragglers=StragglerConfig(),
        dropout=DropoutConfig(),
        network=NetworkConfig(),
        n_clients=n,
        bytes_down=0,
        bytes_up=0,
        streams=streams,
    )


def _pool(availability_config: dict, n: int, seed: int) -> tuple[simpy.Environment, ClientPool]:
    """A bare pool of ``n`` clients (constant 1 s jobs) with the given availability."""
    streams = SeedStreams(seed)
    env = simpy.Environment()
    config = ClientsConfig(availability=availability_config).availability
    availability = build_availability(config, n, streams)
    return env, ClientPool(env, n, _timing(n, streams), None, streams, availability=availability)


def measured_fraction(availability_config: dict, n: int, horizon: float, seed: int = 3) -> float:
    """Share of client-time online over [0, horizon], integrated over the pool's switch events
    (and checked against the pool's idle list at every event)."""
    env, pool = _pool(availability_config, n, seed)
    area = 0.0
    while env.peek() < horizon:
        t0, online = env.now, pool.n_online
        env.step()
        area += online * (env.now - t0)
        assert pool.n_online == sum(pool.online) == len(pool.idle)  # no jobs: online = idle
    area += pool.n_online * (horizon - env.now)
    return area / (n * horizon)


@pytest.mark.parametrize("f", [0.25, 0.5, 0.9])
def test_diurnal_online_fraction(f):
    """Spread phases: each client is online f·P of every period; over H = kP + r the partial
    period adds, per client, a share of r with mean f·r and sd ≤ r/2 (uniform phase), so the
    population's fraction is within 4·r/(2H√n) of f."""
    period, n = 100.0, 200
    horizon = 37 * period + 41.0
    got = measured_fraction(
        {"kind": "diurnal", "period_s": period, "on_fraction": f, "phase": "spread"}, n, horizon
    )
    r = horizon % period
    assert abs(got - f) <= 4 * r / (2 * horizon * math.sqrt(n)) + 1e-9


def test_diurnal_same_phase_is_exact():
    """phase: same, offset 0: everyone online on [kP, kP + fP): over 3.5 periods with f = 0.4 the
    online share is (3·0.4 + 0.4)/3.5 exactly."""
    got = measured_fraction(
        {"kind": "diurnal", "period_s": 10.0, "on_fraction": 0.4}, n=7, horizon=35.0
    )
    assert got == pytest.approx(1.6 / 3.5, abs=1e-12)


@pytest.mark.parametrize(("mean_on", "mean_off"), [(30.0, 10.0), (5.0, 15.0)])
def test_markov_online_fraction(mean_on, mean_off):
    """Exponential spells, stationary start: the time average of one client has variance
    ≈ 2·p(1−p)·τ/H with τ = a·b/(a+b) (autocovariance p(1−p)e^(−t/τ)); n independent clients
    divide it by n. Tolerance: 4 standard deviations around p = a/(a+b)."""
    n = 200
    horizon = 100 * (mean_on + mean_off)
    got = measured_fraction(
        {"kind": "markov", "online": {"mean_s": mean_on}, "offline": {"mean_s": mean_off}},
        n,
        horizon,
    )
    p = mean_on / (mean_on + mean_off)
    tau = mean_on * mean_off / (mean_on + mean_off)
    sd = math.sqrt(2 * p * (1 - p) * tau / (horizon * n))
    assert abs(got - p) <= 4 * sd


def test_markov_initial_state_is_stationary():
    """The share of clients online at time 0 is Binomial(n, p)/n."""
    n, a, b = 4000, 30.0, 10.0
    config = ClientsConfig(
        availability={"kind": "markov", "online": {"mean_s": a}, "offline": {"mean_s": b}}
    ).availability
    model = build_availability(config, n, SeedStreams(1))
    assert isinstance(model, Markov)
    p = a / (a + b)
    share = sum(model.initial(c)[0] for c in range(n)) / n
    assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / n)


def test_models_pickle():
    """Checkpoints pickle the pool with its model (no generator, no lambda)."""
    streams = SeedStreams(0)
    for config in (
        {"kind": "diurnal", "phase": "spread"},
        {"kind": "markov", "online": {"dist": "lognormal", "mean_s": 3.0}},
    ):
        model = build_availability(ClientsConfig(availability=config).availability, 4, streams)
        model.initial(1)
        copy = pickle.loads(pickle.dumps(model))
        assert [copy.next_switch(c, 5.0, True) for c in range(4)] == [
            model.next_switch(c, 5.0, True) for c in range(4)
        ]


# ---------------------------------------------------------------------------------------------------
# Semantics in full runs


def _online(model: Diurnal, client: int, t: float, eps: float = 1e-6) -> tuple[bool, bool]:
    """(online at t+, online at t−) under the diurnal schedule, with a tolerance at the edges."""
    x = (t - model.phase[client]) % model.period
    after = x < model.on_s - eps or x > model.period - eps
    before = eps < x <= model.on_s + eps
    return after, before


@pytest.mark.parametrize(
    "algorithm", [{"name": "fedavg", "cohort_size": 5}, {"name": "fedasync", "concurrency": 8}]
)
def test_diurnal_dispatches_only_online_clients(tmp_path, monkeypatch, algorithm):
    """Every job of the trace was dispatched to an online client and ran while it stayed online;
    a job lost to a switch is ``dropped``/``offline`` exactly at one of its client's off-switches.
    FedAvg's cohorts are thereby drawn from the online clients."""
    clients = {
        "count": 30,
        "compute": {"dist": "exponential", "mean_s": 4.0},
        "availability": {
            "kind": "diurnal",
            "period_s": 50.0,
            "on_fraction": 0.3,
            "phase": "spread",
        },
    }
    wire(monkeypatch, clients)
    result = fedsim.run(scenario(algorithm, 400.0, clients, seed=5), out=tmp_path / "run")
    model = build_availability(ClientsConfig(**clients).availability, 30, SeedStreams(5))
    rows = events(result)
    assert len(rows) > 50
    offline_drops = 0
    for row in rows.itertuples(index=False):
        on_after, _ = _online(model, row.client, row.dispatched_at)
        assert on_after, f"job {row.job_id} dispatched to offline client {row.client}"
        if row.status == "dropped" and row.reason == "offline":
            offline_drops += 1
            x = (row.sim_time - model.phase[row.client]) % model.period
            assert x == pytest.approx(model.on_s, abs=1e-6)
            assert row.sim_time - row.dispatched_at == pytest.approx(row.compute_s, abs=1e-9)
        else:
            _, on_before = _online(model, row.client, row.sim_time)
            span = row.sim_time - row.dispatched_at
            start_x = (row.dispatched_at - model.phase[row.client]) % model.period
            if start_x > model.period - 1e-6:  # at a window's start, up to rounding
                start_x -= model.period
            assert on_before and start_x + span <= model.on_s + 1e-6, row
    assert offline_drops > 0
    if algorithm["name"] == "fedavg":
        assert rows["status"].isin(["applied", "dropped", "in_flight", "buffered"]).all()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_async_waits_when_nobody_is_online_and_resumes(tmp_path, monkeypatch):
    """FedAsync, concurrency 3, three clients with T_0 = 2, T_1 = 1.5, T_2 = 1 s (constant compute,
    linear heterogeneity as in test_event_logs), online intervals from a trace:

        client 0: [0, 3), [5.5, 20)    client 1: [0, 1), [6.25, 20)    client 2: [0, 0.5), [4, 20)

    t=0     all online: dispatch 0, 1, 2 (arrivals would be 2.0, 1.5, 1.0).
    t=0.5   client 2 goes offline: its job is dropped (reason offline, compute_s 0.5); on_dropped
            refills from the idle clients: none (0 and 1 are busy).
    t=1.0   client 1 goes offline: dropped (compute_s 1.0); nothing idle.
    t=2.0   client 0's job arrives: applied; client 0 is dispatched again (arrives 4.0).
    t=3.0   client 0 goes offline: dropped (compute_s 1.0). Nobody online: nothing in flight.
    t=4.0   client 2 comes online: on_client_online refills → client 2 (arrives 5.0).
    t=5.0   applied; client 2 again (6.0).   t=5.5  client 0 online → dispatched (7.5).
    t=6.0   applied; client 2 again (7.0).   t=6.25 client 1 online → dispatched (7.75).
    t=7.0   applied; client 2 again (8.0).   t=7.5  applied; client 0 again (9.5).
    t=7.75  applied; client 1 again (9.25).
    stop at 7.9: in flight in dispatch order: 2 (7.0), 0 (7.5), 1 (7.75).
    The system was idle (no job in flight) from 3.0 to 4.0: idle_s = 1.0.
    """
    trace = _write(
        tmp_path / "trace.csv",
        "client,online_s,offline_s\n0,0,3\n0,5.5,20\n1,0,1\n1,6.25,20\n2,0,0.5\n2,4,20\n",
    )
    clients = {
        "count": 3,
        "compute": {"dist": "constant", "mean_s": 2.0},
        "heterogeneity": {"dist": "linear", "spread": 0.5},
        "availability": {"kind": "trace", "path": str(trace)},
    }
    pools = wire(monkeypatch, clients)
    algorithm = {"name": "fedasync", "concurrency": 3}
    result = fedsim.run(scenario(algorithm, 7.9, clients), out=tmp_path / "run")
    rows = events(result)
    got = [
        tuple(r)
        for r in rows[["sim_time", "client", "status", "reason", "dispatched_at"]].itertuples(
            index=False
        )
    ]
    assert got == [
        (0.5, 2, "dropped", "offline", 0.0),
        (1.0, 1, "dropped", "offline", 0.0),
        (2.0, 0, "applied", "", 0.0),
        (3.0, 0, "dropped", "offline", 2.0),
        (5.0, 2, "applied", "", 4.0),
        (6.0, 2, "applied", "", 5.0),
        (7.0, 2, "applied", "", 6.0),
        (7.5, 0, "applied", "", 5.5),
        (7.75, 1, "applied", "", 6.25),
        (7.9, 2, "in_flight", "", 7.0),
        (7.9, 0, "in_flight", "", 7.5),
        (7.9, 1, "in_flight", "", 7.75),
    ]
    dropped = rows[rows["status"] == "dropped"]
    assert dropped["compute_s"].tolist() == [0.5, 1.0, 1.0]
    assert dropped["bytes_up"].tolist() == [0, 0, 0]
    assert pools[0].idle_s() == 1.0


def test_fedavg_waits_for_online_clients(tmp_path, monkeypatch):
    """FedAvg, cohort 2, constant 1 s jobs; client 0 online [0, 10), client 1 online [2.5, 10):

    round 1 at t=0: only client 0 online → a cohort of one, applied at 1.0; round 2 at 1.0: again
    client 0 alone (2.0); round 3 at 2.0: client 0 (3.0); client 1 comes online at 2.5 and is not
    dispatched mid-round; round 4 at 3.0: both (arrive 4.0); round 5 at 4.0: both, in flight at the stop (4.5)."""
    trace = _write(tmp_path / "t.csv", "0,0,10\n1,2.5,10\n")
    clients = {
        "count": 2,
        "compute": {"dist": "constant", "mean_s": 1.0},
        "availability": {"kind": "trace", "path": str(trace)},
    }
    wire(monkeypatch, clients)
    algorithm = {"name": "fedavg", "cohort_size": 2}
    result = fedsim.run(scenario(algorithm, 4.5, clients), out=tmp_path / "run")
    got = [
        tuple(r) for r in events(result)[["sim_time", "client", "status"]].itertuples(index=False)
    ]
    assert got[:3] == [(1.0, 0, "applied"), (2.0, 0, "applied"), (3.0, 0, "applied")]
    assert sorted(got[3:5]) == [(4.0, 0, "applied"), (4.0, 1, "applied")]
    assert sorted(got[5:]) == [(4.5, 0, "in_flight"), (4.5, 1, "in_flight")]  # round 5


# ---------------------------------------------------------------------------------------------------
# The trace file


def test_trace_csv_read_merged_and_round_robin(tmp_path):
    path = _write(
        tmp_path / "t.csv",
        "# a comment\nclient,online_s,offline_s\n\n7,10,20\n7,0,5\n7,5,8  # touches: merged\n"
        "3,1.5,2.5\n",
    )
    table = read_trace_csv(path)
    assert table == {7: ([0.0, 10.0], [8.0, 20.0]), 3: ([1.5], [2.5])}
    config = ClientsConfig(availability={"kind": "trace", "path": str(path)}).availability
    model = build_availability(config, 5, SeedStreams(0))
    assert isinstance(model, Trace)
    # ids in increasing order: 3, 7; client i follows id (3, 7)[i mod 2]
    assert [model.initial(c) for c in range(5)] == [
        (False, 1.5),
        (True, 8.0),
        (False, 1.5),
        (True, 8.0),
        (False, 1.5),
    ]
    assert model.next_switch(1, 8.0, False) == 10.0
    assert model.next_switch(1, 10.0, True) == 20.0
    assert model.next_switch(1, 20.0, False) == math.inf
    assert model.online_fraction() == pytest.approx((3 * 1.0 + 2 * 18.0) / (5 * 20.0))


def test_trace_path_is_relative_to_the_scenario_file(tmp_path):
    (tmp_path / "traces").mkdir()
    _write(tmp_path / "traces" / "a.csv", "0,0,10\n")
    _write(
        tmp_path / "s.yaml",
        "name: t\ntraining: none\nstop: {time_s: 5}\n"
        "clients: {count: 2, availability: {kind: trace, path: traces/a.csv}}\n",
    )
    loaded = fedsim.load_scenario(tmp_path / "s.yaml")
    assert loaded.clients.availability.path == str(tmp_path / "traces" / "a.csv")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("client,online_s,offline_s\n0,0,10\n1,5,abc\n", 3, "not a number"),
        ("0,0,10\n0,3\n", 2, "expected 3 fields"),
        ("x,0,10\n", 1, "client must be an integer"),
        ("0,0,10\n-1,0,10\n", 2, "client must be >= 0"),
        ("0,5,5\n", 1, "offline_s must be > online_s"),
        ("0,-1,5\n", 1, "online_s must be >= 0"),
        ("0,0,inf\n", 1, "finite"),
    ],
)
def test_bad_trace_files_are_one_line_errors(tmp_path, capsys, text, line, message):
    bad = _write(tmp_path / "bad.csv", text)
    scenario_file = _write(
        tmp_path / "s.yaml",
        "name: t\ntraining: none\nstop: {time_s: 5}\n"
        "clients: {count: 2, availability: {kind: trace, path: bad.csv}}\n",
    )
    try:
        main(["validate", str(scenario_file)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert f"{bad} line {line}: " in err and message in err


@pytest.mark.parametrize(
    ("text", "message"), [("", "holds no intervals"), (None, "file not found")]
)
def test_empty_or_missing_trace_file(tmp_path, capsys, text, message):
    if text is not None:
        _write(tmp_path / "bad.csv", text)
    scenario_file = _write(
        tmp_path / "s.yaml",
        "name: t\ntraining: none\nstop: {time_s: 5}\n"
        "clients: {count: 2, availability: {kind: trace, path: bad.csv}}\n",
    )
    with pytest.raises(SystemExit) as info:
        main(["validate", str(scenario_file)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "bad.csv" in err


def test_a_run_takes_its_availability_from_the_scenario_and_resumes_from_a_checkpoint(
    tmp_path, small_learning
):
    """Through fedsim.run (no pool swapped in): offline drops, idle time in the summary, and a
    run stopped after a checkpoint resumes to the files of a run never stopped."""
    data = {
        **small_learning,
        "stop": {"time_s": 150.0},
        "clients": {
            **small_learning["clients"],
            "availability": {
                "kind": "markov",
                "online": {"dist": "exponential", "mean_s": 20.0},
                "offline": {"dist": "exponential", "mean_s": 10.0},
            },
        },
        "output": {"checkpoint_every_s": 30.0, "checkpoint_max_overhead": None},
    }
    whole = fedsim.run(data, out=tmp_path / "whole")
    rows = whole.events
    assert (rows["reason"] == "offline").sum() > 0
    assert "idle_s" in whole.summary

    class Stop:
        def on_eval(self, *, sim_time):
            if sim_time >= 70:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fedsim.run(data, out=tmp_path / "stopped", callbacks=[Stop()])
    resumed = fedsim.run(resume=tmp_path / "stopped")
    assert resumed.summary["resumed_from_s"] == 60.0
    assert (tmp_path / "stopped" / "events.parquet").read_bytes() == (
        tmp_path / "whole" / "events.parquet"
    ).read_bytes()


# ---------------------------------------------------------------------------------------------------
# FedScale's client behaviour trace (a pickle)


def _fedscale_trace() -> dict:
    """A small trace in FedScale's format (client id -> active/inactive/finish_time/...)."""
    return {
        11: {"active": [0, 60], "inactive": [20, 100], "finish_time": 100, "duration": 100},
        4: {"active": [30.5], "inactive": [50.0], "finish_time": 80, "model": "SM-G930F"},
        9: {"active": [10, 15, 70], "inactive": [18, 40, 120], "finish_time": 90},
    }


def _online_fedscale(entry: dict, t: float) -> bool:
    """FedScale's own reading, written independently: online when t mod finish_time falls in
    one of the [active, inactive) intervals (clipped to the period)."""
    x = t % entry["finish_time"]
    return any(
        a <= x < min(b, entry["finish_time"])
        for a, b in zip(entry["active"], entry["inactive"], strict=True)
    )


def _switches(model: Trace, client: int, horizon: float) -> tuple[bool, list[float]]:
    """The client's state at 0 and its switch times up to ``horizon``, asked in time order as
    the pool does."""
    online, at = model.initial(client)
    state, times = online, []
    while at <= horizon:
        times.append(at)
        state = not state
        at = model.next_switch(client, at, state)
    return online, times


def test_fedscale_trace_round_trip_periodic_and_round_robin(tmp_path):
    trace = _fedscale_trace()
    path = tmp_path / "client_behave_trace"  # FedScale's name: no extension, told by its bytes
    path.write_bytes(pickle.dumps(trace))
    config = ClientsConfig(availability={"kind": "trace", "path": str(path)}).availability
    model = build_availability(config, 7, SeedStreams(0))
    assert isinstance(model, Trace)
    ids = sorted(trace)  # 4, 9, 11: client i follows ids[i mod 3]
    # client 1 (id 9): [10,18), [15,40) merged to [10,40); [70,120) clipped to [70,90) and
    # running on into the next cycle's... nothing at 0: offline at 90.
    assert model.initial(1) == (False, 10.0)
    # client 2 (id 11): [0,20) and [60,100): [60,100) touches the period, joins [100,120)
    assert _switches(model, 2, 250.0) == (True, [20.0, 60.0, 120.0, 160.0, 220.0])
    horizon = 400.0
    probes = [i * 0.37 + 0.001 for i in range(int(horizon / 0.37))]
    for client in range(7):
        entry = trace[ids[client % 3]]
        online, times = _switches(model, client, horizon)
        assert times == sorted(times) and len(set(times)) == len(times)
        for t in probes:
            state = online ^ (bisect.bisect_right(times, t) % 2 == 1)
            assert state == _online_fedscale(entry, t), (client, t)
    share = [(50 - 30.5) / 80, (30 + 20) / 90, (20 + 40) / 100]
    assert model.online_fraction() == pytest.approx(sum(share[c % 3] for c in range(7)) / 7)


def test_fedscale_trace_drives_a_run(tmp_path):
    """Through fedsim.run: every job goes to a client online by FedScale's reading, and the ones
    cut by a switch are dropped (reason offline) at an interval's end."""
    trace = _fedscale_trace()
    path = tmp_path / "trace.pkl"
    path.write_bytes(pickle.dumps(trace, protocol=4))
    clients = {
        "count": 9,
        "compute": {"dist": "exponential", "mean_s": 6.0},
        "availability": {"kind": "trace", "path": str(path)},
    }
    algorithm = {"name": "fedasync", "concurrency": 3}
    result = fedsim.run(scenario(algorithm, 300.0, clients, seed=2), out=tmp_path / "run")
    rows = events(result)
    ids = sorted(trace)
    assert len(rows) > 20
    offline = rows[rows["reason"] == "offline"]
    assert len(offline) > 0
    for row in rows.itertuples(index=False):
        entry = trace[ids[row.client % 3]]
        assert _online_fedscale(entry, row.dispatched_at + 1e-9), row
    for row in offline.itertuples(index=False):
        entry = trace[ids[row.client % 3]]
        assert _online_fedscale(entry, row.sim_time - 1e-9)
        assert not _online_fedscale(entry, row.sim_time + 1e-9), row


class _RunsCode:
    """What a malicious pickle looks like: unpickling it calls a function of the file's choice."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _validate_error(tmp_path: Path, capsys, file: str) -> str:
    """``fedsim validate`` of a scenario with ``file`` as its trace: exit 2 and a one-line error."""
    scenario_file = _write(
        tmp_path / "s.yaml",
        "name: t\ntraining: none\nstop: {time_s: 5}\n"
        f"clients: {{count: 2, availability: {{kind: trace, path: {file}}}}}\n",
    )
    with pytest.raises(SystemExit) as info:
        main(["validate", str(scenario_file)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and file in err, err
    return err


def test_a_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    payload = {0: {"active": [0], "inactive": [1], "finish_time": _RunsCode(tmp_path / "pwned")}}
    (tmp_path / "trace.pkl").write_bytes(pickle.dumps(payload))
    # the plain pickle module runs it: that is what the restricted reader prevents
    pickle.loads(pickle.dumps(_RunsCode(tmp_path / "plain")))
    assert (tmp_path / "plain").exists()
    err = _validate_error(tmp_path, capsys, "trace.pkl")
    assert "pathlib.Path.touch" in err and "only plain dicts, lists and numbers" in err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2], "expected a non-empty dict client_id"),
        ({}, "expected a non-empty dict client_id"),
        ({0: {"active": [0]}}, "client 0: expected a dict with keys active, inactive"),
        ({0: {"active": [0, 5], "inactive": [1], "finish_time": 9}}, "2 active times but 1"),
        ({0: {"active": [5], "inactive": [1], "finish_time": 9}}, "inactive time 1 before"),
        ({0: {"active": [0], "inactive": [1], "finish_time": 0}}, "finish_time must be > 0"),
        ({0: {"active": ["a"], "inactive": [1], "finish_time": 9}}, "must be a number"),
        ({"x": {"active": [0], "inactive": [1], "finish_time": 9}}, "is not an integer"),
        (b"truncated", "cannot read the pickle"),
    ],
)
def test_malformed_fedscale_traces_are_one_line_errors(tmp_path, capsys, content, message):
    data = pickle.dumps(content)
    if isinstance(content, bytes):
        data = data[: len(data) // 2]
    (tmp_path / "trace.pkl").write_bytes(data)
    assert message in _validate_error(tmp_path, capsys, "trace.pkl")


def test_the_idle_positions_follow_every_switch_and_take(tmp_path):
    """The pool's client -> idle-position index (what makes take() and a switch O(1)) agrees with
    the idle list after every event of a run with jobs, switches, takes and offline drops; an
    offline client cannot be taken."""
    n = 40
    markov = {"kind": "markov", "online": {"mean_s": 3.0}, "offline": {"mean_s": 2.0}}
    env, pool = _pool(markov, n, seed=4)
    lost = []

    def redispatch(job):
        if pool.idle:
            client = pool.idle[len(pool.idle) // 2]
            pool.take(client)  # a given client, as cohort algorithms take them
            pool.dispatch(client, 0, 0, None, redispatch, lost.append)

    for _ in range(10):
        pool.dispatch(pool.take_idle(), 0, 0, None, redispatch, lost.append)
    while env.peek() < 60.0:
        env.step()
        slot = pool._slot
        assert [slot[c] for c in pool.idle] == list(range(len(pool.idle)))
        assert sum(1 for s in slot if s >= 0) == len(pool.idle)
        assert all(pool.online[c] for c in pool.idle)
        assert set(pool._running) == {job.client for job in pool.open_jobs.values()}
        offline = [c for c in range(n) if not pool.online[c]]
        if offline:
            with pytest.raises(RuntimeError, match="not idle"):
                pool.take(offline[0])
    assert lost and all(job.drop_reason == "offline" for job in lost)
