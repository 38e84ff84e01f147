"""The torch thread policy (fedsim.threads): explicit requests, the environment, the workload rule."""

from __future__ import annotations

import pytest
import torch

from fedsim.errors import ScenarioError
from fedsim.learning.batched import PARALLEL_MIN_FLOATS
from fedsim.scenario import load_scenario
from fedsim.threads import (
    ENV_VAR,
    ThreadChoice,
    available_cores,
    busy_cores,
    choose_threads,
    using_threads,
)

QUIET = {"available": 8, "busy": 0.0, "device": "cpu"}
"""A machine with 8 free cores, so that only the workload decides."""

BIG_CNN = {
    "model": {"kind": "cnn"},
    "clients": {"count": 200},
    "algorithm": {"name": "fedavg", "cohort_size": 100},
    "training": {"backend": "batched"},
}
"""100 digits-CNN jobs per flush: ~84k activation floats per job step, ~8.4M per flush."""


def _unexpected_busy() -> float:
    raise AssertionError("busy cores measured for a workload that cannot use more threads")


def test_requested_beats_env_and_auto():
    s = load_scenario({"training": "none"})
    choice = choose_threads(s, 3, env={ENV_VAR: "2"}, **QUIET)
    assert choice == ThreadChoice(3, "--threads", "asked for with --threads 3")


def test_env_beats_auto():
    s = load_scenario({"training": "none"})
    choice = choose_threads(s, None, env={ENV_VAR: " 4 "}, **QUIET)
    assert (choice.threads, choice.source) == (4, ENV_VAR)


@pytest.mark.parametrize("raw", ["", "  ", "auto", "AUTO"])
def test_env_empty_or_auto_means_auto(raw):
    choice = choose_threads(load_scenario({"training": "none"}), None, env={ENV_VAR: raw}, **QUIET)
    assert (choice.threads, choice.source) == (1, "auto")


@pytest.mark.parametrize("bad", [0, -2, True, 1.5, "x"])
def test_bad_requested_is_one_line_scenario_error(bad):
    with pytest.raises(ScenarioError) as info:
        choose_threads(load_scenario({}), bad, env={}, **QUIET)
    message = str(info.value)
    assert "--threads" in message and "\n" not in message


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5", "2 threads"])
def test_bad_env_is_one_line_scenario_error(bad):
    with pytest.raises(ScenarioError) as info:
        choose_threads(load_scenario({}), None, env={ENV_VAR: bad}, **QUIET)
    message = str(info.value)
    assert ENV_VAR in message and repr(bad) in message and "\n" not in message


def test_bad_requested_wins_over_a_good_env():
    with pytest.raises(ScenarioError, match="--threads"):
        choose_threads(load_scenario({}), 0, env={ENV_VAR: "2"}, **QUIET)


def test_timing_only_gets_one_thread():
    s = load_scenario("scenarios/timing_only_1m.yaml")
    choice = choose_threads(s, None, env={}, available=64, busy=_unexpected_busy, device="cpu")
    assert (choice.threads, choice.source) == (1, "auto")
    assert "timing-only" in choice.reason


@pytest.mark.parametrize("backend", ["sequential", "batched", "auto"])
def test_small_mlp_gets_one_thread_whatever_the_backend(backend):
    s = load_scenario("scenarios/quickstart.yaml", {"training.backend": backend})
    choice = choose_threads(s, None, env={}, available=64, busy=_unexpected_busy, device="cpu")
    assert choice.threads == 1


def test_sequential_backend_gets_one_thread_even_for_a_big_cnn():
    s = load_scenario({**BIG_CNN, "training": {"backend": "sequential"}})
    assert choose_threads(s, None, env={}, **QUIET).threads == 1


@pytest.mark.parametrize("cores", [2, 4, 8])
def test_big_stacked_cnn_gets_more_threads_when_cores_allow(cores):
    s = load_scenario(BIG_CNN)
    choice = choose_threads(s, None, env={}, available=cores, busy=0.0, device="cpu")
    assert choice.source == "auto"
    assert choice.threads == cores > 1
    assert "side by side" in choice.reason


def test_threads_never_exceed_the_stacks_the_flush_can_fill():
    s = load_scenario(BIG_CNN)
    choice = choose_threads(s, None, env={}, available=1024, busy=0.0, device="cpu")
    # ~8.4M floats per step: at most 8.4M / PARALLEL_MIN_FLOATS stacks of enough work each.
    assert 2 <= choice.threads <= 8_500_000 // PARALLEL_MIN_FLOATS


def test_big_cnn_on_one_core_or_a_busy_machine_gets_one_thread():
    s = load_scenario(BIG_CNN)
    assert choose_threads(s, None, env={}, available=1, busy=0.0, device="cpu").threads == 1
    busy = choose_threads(s, None, env={}, available=2, busy=1.0, device="cpu")
    assert busy.threads == 1 and "other processes" in busy.reason
    assert choose_threads(s, None, env={}, available=4, busy=lambda: 1.0, device="cpu").threads == 3


def test_cuda_device_gets_one_thread():
    s = load_scenario(BIG_CNN)
    choice = choose_threads(s, None, env={}, available=8, busy=0.0, device="cuda:0")
    assert choice.threads == 1 and "CUDA" in choice.reason


def test_multitask_takes_its_largest_task():
    s = load_scenario("scenarios/fedast_multitask.yaml")
    assert choose_threads(s, None, env={}, **QUIET).threads == 1
    tasks = [dict(t) for t in s.to_dict()["algorithm"]["tasks"]]
    tasks[0]["model"] = {"kind": "cnn"}
    big = load_scenario(s.to_dict(), {"algorithm.tasks": tasks, "algorithm.concurrency": 120})
    assert choose_threads(big, None, env={}, **QUIET).threads > 1


def test_every_shipped_scenario_gets_one_thread():
    # What docs/performance.md measured: none of them has enough stacked work for a second thread.
    from pathlib import Path

    for path in sorted(Path("scenarios").glob("*.yaml")):
        choice = choose_threads(load_scenario(path), None, env={}, **QUIET)
        assert choice.threads == 1, (path, choice)


def test_summary_entry():
    choice = ThreadChoice(2, "FEDSIM_THREADS", "asked for with FEDSIM_THREADS=2")
    assert choice.to_summary() == {
        "n": 2,
        "source": "FEDSIM_THREADS",
        "reason": "asked for with FEDSIM_THREADS=2",
    }


def test_using_threads_sets_and_restores():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with using_threads(ThreadChoice(target, "--threads", "test")) as n:
        assert n == target == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_using_threads_restores_after_an_error():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with pytest.raises(RuntimeError, match="boom"), using_threads(target):
        assert torch.get_num_threads() == target
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_machine_probes_are_sane():
    assert available_cores() >= 1
    assert busy_cores() >= 0.0
