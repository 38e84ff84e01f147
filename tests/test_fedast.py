"""FedAST and Sync-ST (ALGORITHMS.md §3.4; limiting cases L4, L5 of §4).

The limiting cases run real training through the simulator and compare parameter sequences with
the single-task algorithm the case must equal. Realloc's arithmetic is tested as pure functions
(conservation, non-negativity, direction) and the dispersion statistic against a per-tensor loop
written here the way the authors' code computes it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.algorithms.realloc import dispersion, reallocate, split_proportional
from fedsim.cli import main
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation

SEED = 7
EVAL_EVERY_S = math.sqrt(2.0)  # never on a whole second, so evaluations never tie with rounds
DIGITS = {"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}}
MLP = {"kind": "mlp", "hidden": [16]}
TRAINING = {"local_steps": 3, "batch_size": 16, "lr": 0.1, "backend": "sequential"}


def scenario(algorithm: dict, *, time_s: float, top_level: bool = True, **sections) -> dict:
    """A small digits scenario; ``top_level=False`` leaves data/model for the tasks to name."""
    base = {
        "name": "fedast-test",
        "seed": SEED,
        "stop": {"time_s": time_s},
        "training": TRAINING,
        "clients": {"count": 12, "compute": {"dist": "constant", "mean_s": 1.0}},
        "algorithm": algorithm,
        "eval": {"every_s": EVAL_EVERY_S},
    }
    if top_level:
        base.update(data=DIGITS, model=MLP)
    base.update(sections)
    return base


def one_task(**extra) -> list[dict]:
    """The same digits task as the top level, named explicitly (so it is built, not reused)."""
    return [{"data": DIGITS, "model": MLP, "target_accuracy": 1.0, **extra}]


class Run:
    """A simulation and every model it published (the scenario's server, or each task's)."""

    def __init__(self, data: dict) -> None:
        self.sim = Simulation(load_scenario(data))
        algo = self.sim.algorithm
        servers = [t.server for t in algo.tasks] if hasattr(algo, "tasks") else self.sim.servers
        self.published: list[list[torch.Tensor]] = [[] for _ in servers]
        for log, server in zip(self.published, servers, strict=True):
            publish = server.publish

            def logged(params, log=log, publish=publish):
                log.append(params.clone())
                publish(params)

            server.publish = logged  # instance attribute: observes, changes nothing
        self.result = self.sim.run()
        self.events = self.result.events
        self.evals = self.result.evals.drop(columns=["real_time_s"])


def rows(events, status):
    """Rows of one status, without it and without the byte counts: the timing model sizes every
    transfer by the scenario's top-level model, not the task's (a documented limitation)."""
    drop = ["status", "bytes_up", "bytes_down"]
    return events[events["status"] == status].drop(columns=drop).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------
# L4: one task, b = 1, C = 1  ≡  FedBuff(K = 1, C = 1, s ≡ 1, η_g)  ≡  FedAsync(α = η_g, constant)


def test_l4_single_task_b1_c1_equals_fedbuff_k1_and_fedasync():
    lr, clients = 0.6, {"count": 10, "compute": {"dist": "exponential", "mean_s": 1.0}}
    fedast = Run(
        scenario(
            {
                "name": "fedast",
                "tasks": one_task(),
                "concurrency": 1,
                "buffer_ratio": None,
                "buffer_size": 1,
                "server_lr": lr,
            },
            time_s=20.0,
            clients=clients,
            top_level=False,
        )
    )
    assert fedast.sim.algorithm.tasks[0].trainer is not fedast.sim.trainer  # built, not reused
    fedbuff = Run(
        scenario(
            {
                "name": "fedbuff",
                "concurrency": 1,
                "buffer_size": 1,
                "server_lr": lr,
                "staleness": {"kind": "constant"},
                "dispatch_policy": "after_aggregation",
            },
            time_s=20.0,
            clients=clients,
        )
    )
    fedasync = Run(
        scenario(
            {"name": "fedasync", "concurrency": 1, "alpha": lr, "staleness": {"kind": "constant"}},
            time_s=20.0,
            clients=clients,
        )
    )
    ours, theirs, lerp = fedast.published[0], fedbuff.published[0], fedasync.published[0]
    assert len(ours) == len(theirs) == len(lerp) >= 10
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.equal(a, b), f"version {i + 1} differs from FedBuff"
    for a, c in zip(ours, lerp, strict=True):
        torch.testing.assert_close(a, c, atol=1e-6, rtol=0)  # lerp vs w + η·Δ: re-association
    # Same jobs (clients, times, versions); FedAST rows also say which task.
    mine = rows(fedast.events, "buffered")
    assert (mine["task"] == 0).all() and (mine["staleness"] == 0).all()
    assert mine.equals(rows(fedbuff.events, "buffered"))
    cols = ["sim_time", "version", "accuracy", "loss", "task"]
    assert fedast.evals[cols].equals(fedbuff.evals[cols])


# ---------------------------------------------------------------------------------------------------
# L5: one task, R = b = K, equal times, after-aggregation dispatch  ≡  FedAvg(K, uniform, η_g)


@pytest.mark.parametrize("reuse", [False, True], ids=["task-data", "top-level-data"])
def test_l5_single_task_r_equals_b_equals_fedavg_with_server_lr(reuse):
    k, lr, horizon = 4, 0.5, 8.5
    fedavg = Run(
        scenario(
            {"name": "fedavg", "cohort_size": k, "weighting": "uniform", "server_lr": lr},
            time_s=horizon,
        )
    )
    algo = {
        "name": "fedast",
        "tasks": [{"target_accuracy": 1.0}] if reuse else one_task(),
        "concurrency": k,
        "buffer_ratio": None,
        "buffer_size": k,
        "server_lr": lr,
        "dispatch_policy": "after_aggregation",
    }
    fedast = Run(scenario(algo, time_s=horizon, top_level=reuse))
    assert (fedast.sim.algorithm.tasks[0].trainer is fedast.sim.trainer) == reuse
    assert len(fedavg.published[0]) == len(fedast.published[0]) == 8
    for r, (a, b) in enumerate(zip(fedavg.published[0], fedast.published[0], strict=True)):
        assert torch.equal(a, b), f"round {r + 1} differs"
    assert (
        rows(fedavg.events, "applied")
        .drop(columns=["task"])
        .equals(rows(fedast.events, "buffered").drop(columns=["task"]))
    )
    cols = ["sim_time", "version", "accuracy", "loss"]
    assert fedavg.evals[cols].equals(fedast.evals[cols])
    assert fedavg.evals["loss"].iloc[-1] < fedavg.evals["loss"].iloc[0] - 0.05  # it learns

    # Negative control: the paper's immediate dispatch hands the first freed slots the
    # pre-aggregation model, so the models part from the second server step on.
    immediate = Run(
        scenario({**algo, "dispatch_policy": "immediate"}, time_s=horizon, top_level=reuse)
    )
    assert torch.equal(immediate.published[0][0], fedavg.published[0][0])
    assert not torch.allclose(immediate.published[0][1], fedavg.published[0][1], atol=1e-4)


def test_sync_st_single_task_equals_fedavg():
    """Sync-ST with one task and no first-k is FedAvg with uniform weights, bit for bit."""
    k, lr = 4, 0.7
    fedavg = Run(
        scenario(
            {"name": "fedavg", "cohort_size": k, "weighting": "uniform", "server_lr": lr},
            time_s=6.5,
            clients={"count": 12, "compute": {"dist": "exponential", "mean_s": 1.0}},
        )
    )
    sync = Run(
        scenario(
            {"name": "sync_st", "tasks": one_task(), "clients_per_round": k, "server_lr": lr},
            time_s=6.5,
            clients={"count": 12, "compute": {"dist": "exponential", "mean_s": 1.0}},
        )
    )
    assert len(fedavg.published[0]) == len(sync.published[0]) >= 3
    for a, b in zip(fedavg.published[0], sync.published[0], strict=True):
        assert torch.equal(a, b)
    assert rows(fedavg.events, "applied").equals(rows(sync.events, "applied"))


# ---------------------------------------------------------------------------------------------------
# Two tasks: the task column, completion, reallocation, Sync-ST's barrier

TWO_TASKS = [
    {"name": "digits", "data": DIGITS, "model": MLP, "target_accuracy": 0.5},
    {
        "name": "synth",
        "data": {
            "dataset": "synthetic_classification",
            "synthetic_classification": {"n_samples": 1500, "n_features": 8, "n_classes": 4},
            "partition": {"kind": "dirichlet", "alpha": 0.3},
        },
        "model": {"kind": "logreg"},
        "target_accuracy": 0.55,
    },
]
EXP_CLIENTS = {"count": 30, "compute": {"dist": "exponential", "mean_s": 1.0}}


@pytest.fixture(scope="module")
def two_task_run():
    algo = {"name": "fedast", "tasks": TWO_TASKS, "concurrency": 8, "buffer_ratio": 2}
    run = Run(scenario(algo, time_s=60.0, top_level=False, clients=EXP_CLIENTS))
    return run


def test_task_column_and_completion(two_task_run):
    run = two_task_run
    algo, events, evals = run.sim.algorithm, run.events, run.evals
    assert set(events["task"]) == {0, 1}
    # Every accepted row's staleness is measured against its own task's versions.
    used = events[events["status"] == "buffered"]
    for m, task in enumerate(algo.tasks):
        mine = used[used["task"] == m]
        assert len(mine) > 0
        assert (mine["base_version"] <= task.server.version).all()
        assert (mine["staleness"] >= 0).all()
        assert mine["arrival_version"].max() <= task.server.version
    # Evaluations: one row per task per tick, each with its own version counter.
    assert evals.groupby("sim_time")["task"].apply(lambda t: sorted(t) == [0, 1]).all()
    last = evals.groupby("task").tail(1).set_index("task")
    for m, task in enumerate(algo.tasks):
        assert last.loc[m, "version"] == task.server.version
    # Both tasks reached their targets; the run stopped at the later one.
    times = [t.finished_at for t in algo.tasks]
    assert all(t is not None for t in times)
    assert run.result.summary["stop_reason"] == "target_accuracy"
    assert run.result.summary["time_to_target_s"] == max(times) == run.sim.env.now
    extra = algo.summary_extra()
    assert extra["time_to_all_targets_s"] == max(times)
    assert [t["time_to_target_s"] for t in extra["tasks"]] == times
    # The first task to finish: its jobs were cancelled then, none dispatched after; its budget
    # went to the other task.
    first = int(np.argmin(times))
    mine = events[events["task"] == first]
    assert (mine["dispatched_at"] <= times[first]).all()
    assert set(mine.loc[mine["sim_time"] > times[first], "status"]) <= {"cancelled"}
    assert algo.allocations[-1][1][first] == 0
    assert sum(algo.allocations[-1][1]) == algo.config.concurrency
    # Never more than the budget of jobs in flight (at each dispatch).
    starts = np.sort(events["dispatched_at"].to_numpy())
    ends = np.sort(events["sim_time"].to_numpy())
    in_flight = np.arange(1, len(starts) + 1) - np.searchsorted(ends, starts, side="right")
    assert in_flight.max() <= algo.config.concurrency


def test_allocations_are_conserved_and_sync_st_rounds_share_one_barrier():
    tasks = [{**t, "target_accuracy": 1.0} for t in TWO_TASKS]  # neither finishes
    algo = {"name": "sync_st", "tasks": tasks, "clients_per_round": 8, "first_k": 3}
    run = Run(scenario(algo, time_s=12.0, top_level=False, clients=EXP_CLIENTS))
    events = run.events
    applied = events[events["status"] == "applied"]
    # One barrier per round across tasks: both tasks are dispatched at the same instants.
    starts = [set(events.loc[events["task"] == m, "dispatched_at"]) for m in (0, 1)]
    assert starts[0] == starts[1] and len(starts[0]) >= 3
    # Each task keeps its first k = 3 reports of a round and cancels the other one.
    per_round = applied.groupby(["task", "dispatched_at"]).size()
    assert (per_round == 3).all()
    cancelled = events[events["status"] == "cancelled"]
    assert (cancelled.groupby(["task", "dispatched_at"]).size() == 1).all()
    for (task, start), group in applied.groupby(["task", "dispatched_at"]):
        later = cancelled[(cancelled["dispatched_at"] == start) & (cancelled["task"] == task)]
        assert (later["sim_time"] >= group["sim_time"].max()).all()
    # Rounds start when the slower task's k-th report is in.
    ordered = sorted(starts[0])
    for start, nxt in itertools.pairwise(ordered):
        done = applied[applied["dispatched_at"] == start]["sim_time"].max()
        assert nxt == pytest.approx(done)


def _iid_and_one_class_tasks(data: dict, names: tuple[str, str], *, target: float) -> dict:
    """FedAST over two tasks on ``data``: IID clients, and one class per client (larger dispersion);
    12 requests, reallocated every 4 arrivals from a window of 4."""
    partitions = ({"kind": "iid"}, {"kind": "shards", "classes_per_client": 1})
    tasks = [
        {"name": name, "data": {**data, "partition": part}, "model": MLP, "target_accuracy": target}
        for name, part in zip(names, partitions, strict=True)
    ]
    return {
        "name": "fedast",
        "tasks": tasks,
        "concurrency": 12,
        "buffer_ratio": 2,
        "realloc_every": 4,
        "window": 4,
    }


def test_realloc_moves_requests_to_the_more_dispersed_task_in_a_run():
    """One task with IID data, one with extreme label skew: Realloc favours the skewed one."""
    algo = _iid_and_one_class_tasks(DIGITS, ("iid", "skewed"), target=1.0)
    run = Run(scenario(algo, time_s=25.0, top_level=False, clients=EXP_CLIENTS))
    fedast = run.sim.algorithm
    assert len(fedast.mean_dispersion) >= 3
    assert all(skewed > iid for _, (iid, skewed) in fedast.mean_dispersion)
    for _, alloc in fedast.allocations[1:]:
        assert sum(alloc) == 12 and alloc[1] > alloc[0] >= 2
    launched = run.events.groupby("task").size()
    assert launched[1] > launched[0]


def test_realloc_gives_the_harder_task_more_clients_until_the_easy_one_finishes():
    """An easy task (IID) and a hard one (one class per client), both with targets they reach.

    Realloc's history: the hard task's dispersion is larger at every reallocation, its share rises
    above the initial 6 of 12 and stays above the easy task's, and once the easy task is finished
    the hard one holds the whole budget. The events trace (dispatch times, independent of the
    allocation bookkeeping) shows the shift: from the first reallocation until the easy task is
    finished, the hard task gets most of the dispatched jobs, where a fixed allocation with the
    same seed gives it about half.
    """
    syn = {"dataset": "synthetic_classification", "synthetic_classification": {"n_samples": 1500}}
    syn["synthetic_classification"]["class_sep"] = 1.0
    algo = _iid_and_one_class_tasks(syn, ("easy", "hard"), target=0.8)
    runs = {
        realloc: Run(
            scenario(
                {**algo, "realloc": realloc}, time_s=60.0, top_level=False, clients=EXP_CLIENTS
            )
        )
        for realloc in (True, False)
    }
    fedast = runs[True].sim.algorithm
    easy_done, hard_done = (t.finished_at for t in fedast.tasks)
    assert easy_done is not None and hard_done is not None and easy_done < hard_done
    shared = [(t, d) for t, d in fedast.mean_dispersion if t < easy_done]
    assert len(shared) >= 2 and all(hard > 2 * easy for _, (easy, hard) in shared)
    before = [alloc for _, alloc in fedast.allocations[1:] if alloc[0] > 0]
    assert before and all(hard > 6 and hard > easy for easy, hard in before)
    handover = next(t for t, alloc in fedast.allocations if alloc == (0, 12))
    assert handover == easy_done and fedast.allocations[-1][1] == (0, 12)

    def hard_fraction(run: Run, start: float, end: float) -> float:
        at = run.events["dispatched_at"]
        return float((run.events[(at >= start) & (at < end)]["task"] == 1).mean())

    fixed_easy_done = runs[False].sim.algorithm.tasks[0].finished_at
    first_realloc = fedast.allocations[1][0]
    assert hard_fraction(runs[False], 0.0, fixed_easy_done) == pytest.approx(0.5, abs=0.1)
    assert hard_fraction(runs[True], first_realloc, easy_done) > 0.65


# ---------------------------------------------------------------------------------------------------
# Realloc arithmetic (pure functions)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=6),
    st.integers(1, 8),
    st.integers(0, 60),
    st.data(),
)
def test_reallocate_conserves_the_budget(dispersions, unit, extra, data):
    active = data.draw(
        st.lists(st.booleans(), min_size=len(dispersions), max_size=len(dispersions))
    )
    total = unit * sum(active) + extra
    alloc = reallocate(dispersions, total, unit, active)
    if sum(active) and sum(d for d, a in zip(dispersions, active, strict=True) if a) == 0:
        assert alloc is None  # no information: keep the current allocation
        return
    assert alloc is not None
    assert sum(alloc) == (total if any(active) else 0)
    assert all(r >= 0 for r in alloc)
    for r, a in zip(alloc, active, strict=True):
        assert (r >= unit) if a else (r == 0)


def test_reallocate_follows_dispersion():
    assert reallocate([1.0, 1.0], 16, 4, [True, True]) == [8, 8]
    assert reallocate([1.0, 2.0], 24, 4, [True, True]) == [8, 16]
    assert reallocate([1.0, 3.0], 16, 4, [True, True]) == [4, 12]
    # Doubling one task's dispersion moves requests to it; the others keep at least a unit.
    before = reallocate([1.0, 1.0, 1.0], 48, 4, [True] * 3)
    after = reallocate([1.0, 2.0, 1.0], 48, 4, [True] * 3)
    assert after[1] > before[1] and after[0] <= before[0] and after[2] <= before[2]
    # A task with zero dispersion ends with the minimum unit; a finished task gets nothing.
    assert reallocate([0.0, 5.0, 1.0], 30, 3, [True, True, False]) == [3, 27, 0]
    # A budget that is not a multiple of the unit is still met exactly.
    assert reallocate([1.0, 1.0], 10, 4, [True, True]) == [6, 4]
    assert reallocate([0.0, 0.0], 16, 4, [True, True]) is None
    with pytest.raises(ValueError):
        reallocate([1.0, 1.0], 7, 4, [True, True])


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 500),
    st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=6),
    st.integers(0, 3),
)
def test_split_proportional_sums_and_respects_minimum(total, weights, minimum):
    live = sum(w > 0 for w in weights)
    if minimum * live > total:
        with pytest.raises(ValueError):
            split_proportional(total, weights, minimum)
        return
    out = split_proportional(total, weights, minimum)
    assert sum(out) == (total if live else 0)
    for o, w in zip(out, weights, strict=True):
        assert o == 0 if w == 0 else o >= minimum
        if w > 0:  # within one of the exact proportional share of what is left after minimums
            rest = total - minimum * live
            exact = rest * w / sum(x for x in weights if x > 0)
            assert abs(o - minimum - exact) < 1 + 1e-9


def test_dispersion_matches_the_per_tensor_loop_and_is_scale_free():
    gen = torch.Generator().manual_seed(0)
    shapes = [("0.weight", (4, 3)), ("0.bias", (4,)), ("2.weight", (2, 4)), ("2.bias", (2,))]
    deltas = torch.randn(6, sum(math.prod(s) for _, s in shapes), generator=gen) + 0.3
    mask = torch.zeros(deltas.shape[1], dtype=torch.bool)
    num = den = 0.0
    off = 0
    for name, shape in shapes:  # the authors' loop: per non-bias tensor
        size = math.prod(shape)
        if "bias" not in name:
            mask[off : off + size] = True
            layer = deltas[:, off : off + size].double()
            mean = layer.mean(0)
            num += float(sum(((row - mean) ** 2).sum() for row in layer))
            den += float(mean.norm() ** 2)
        off += size
    eta_l, eta_g, tau = 0.05, 0.5, 10
    expected = eta_l * eta_g * num / (den * 6) / (eta_l * tau) ** 2
    got = dispersion(deltas, mask, local_lr=eta_l, server_lr=eta_g, local_steps=tau)
    assert got == pytest.approx(expected, rel=1e-12)
    assert dispersion(
        3.0 * deltas, mask, local_lr=eta_l, server_lr=eta_g, local_steps=tau
    ) == pytest.approx(got, rel=1e-6)  # 3·Δ rounds in float32
    same = deltas[:1].repeat(5, 1)
    assert dispersion(same, mask, local_lr=eta_l, server_lr=eta_g, local_steps=tau) == 0.0
    spread = deltas.clone()
    spread[0] += 5.0 * (deltas[0] - deltas.mean(0))
    assert dispersion(spread, None, local_lr=1, server_lr=1, local_steps=1) > dispersion(
        deltas, None, local_lr=1, server_lr=1, local_steps=1
    )


# ---------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2

BAD = [
    ("empty tasks", "algorithm: {name: fedast, tasks: []}", "give at least one task"),
    ("no sync tasks", "algorithm: {name: sync_st}", "algorithm.tasks: give at least one task"),
    ("target zero", "algorithm: {name: fedast, tasks: [{target_accuracy: 0}]}", "target_accuracy"),
    (
        "target above one",
        "algorithm: {name: sync_st, tasks: [{target_accuracy: 1.5}]}",
        "algorithm.tasks.0.target_accuracy",
    ),
    (
        "no target",
        "algorithm: {name: fedast, tasks: [{target_accuracy: null}]}",
        "set target_accuracy or target_loss",
    ),
    (
        "both buffers",
        "algorithm: {name: fedast, buffer_ratio: 4, buffer_size: 2}",
        "exactly one of buffer_ratio and buffer_size",
    ),
    (
        "budget too small",
        "algorithm: {name: fedast, concurrency: 3, buffer_ratio: 2, tasks: [{}, {}]}",
        "concurrency (3)",
    ),
    ("unknown task key", "algorithm: {name: fedast, tasks: [{targte_accuracy: 0.5}]}", "targte"),
    (
        "regression with accuracy",
        "algorithm: {name: fedast, tasks: [{data: {dataset: synthetic_regression}}]}",
        "algorithm.tasks.0.target_accuracy",
    ),
    (
        "more requests than clients",
        "clients: {count: 10}\nalgorithm: {name: fedast, concurrency: 16, tasks: [{}]}",
        "algorithm.concurrency",
    ),
    (
        "timing-only",
        "training: none\nalgorithm: {name: sync_st, tasks: [{}]}",
        "training",
    ),
]


@pytest.mark.parametrize(("yaml_text", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, yaml_text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text + "\nstop: {time_s: 1}\n")
    try:
        main(["run", str(path), "--quiet", "--out", str(tmp_path / "run")])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------------
# Figures of multi-task runs


def test_task_figures_read_the_task_columns(two_task_run):
    from fedsim.plots_tasks import clients_in_flight, clients_per_task, task_accuracy, task_names

    result, algo = two_task_run.result, two_task_run.sim.algorithm
    assert task_names(result) == ["digits", "synth"]
    grid = np.linspace(0.0, float(result.events["sim_time"].max()), 200)
    counts = clients_in_flight(result, grid)
    assert list(counts.columns) == [0, 1]
    assert (counts >= 0).all().all()
    assert counts.sum(axis=1).max() <= algo.config.concurrency
    # Before the first task finishes, the initial split R = (4, 4) is in flight (immediate refill).
    early = counts[counts.index < min(t.finished_at for t in algo.tasks) / 2]
    assert (early.sum(axis=1).iloc[1:] >= algo.config.concurrency - 2).all()
    fig = task_accuracy({"FedAST": result})
    assert len(fig.axes) == 2 and [a.get_title() for a in fig.axes] == ["digits", "synth"]
    fig = clients_per_task(result)
    assert fig.legends and [t.get_text() for t in fig.legends[0].get_texts()] == ["digits", "synth"]
