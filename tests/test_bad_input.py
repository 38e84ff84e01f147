"""Bad input never hangs, crashes or slips through (issue 17).

Every case goes through the command line (exit status 2 and exactly one line on stderr) and through
the Python API (``fedsim.load_scenario`` raising ``fedsim.ScenarioError``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import fedsim
from fedsim.cli import main


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(args: list[str], capsys) -> str:
    """Run the CLI; assert exit status 2 and one ``error:`` line; return that line."""
    code, _out, err = _cli(args, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0].removeprefix("error: ")


def _refused(path: Path, capsys, *overrides: str) -> tuple[str, str]:
    """The CLI's one line for ``validate path`` and the API's ScenarioError text."""
    args = ["validate", str(path)]
    for o in overrides:
        args += ["--set", o]
    line = _one_line_error(args, capsys)
    with pytest.raises(fedsim.ScenarioError) as info:
        fedsim.load_scenario(path, list(overrides))
    return line, str(info.value)


def _alias_bomb(levels: int = 9) -> str:
    text = 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return text


# ---------------------------------------------------------------------------------------------------
# YAML files: encoding, duplicate keys, resource limits, value types


def test_random_bytes_scenario_names_the_file(tmp_path, capsys):
    path = tmp_path / "noise.yaml"
    path.write_bytes(b"name: x\n\xff\xfe\x80\x81 garbage\n")
    line, api = _refused(path, capsys)
    assert line == api
    assert line == (
        f"{path}:2: scenario file is not UTF-8 text (byte 0xff at offset 8); save it as UTF-8"
    )


def test_utf16_scenario_names_the_file(tmp_path, capsys):
    path = tmp_path / "wide.yaml"
    path.write_bytes("name: x\n".encode("utf-16"))
    line, api = _refused(path, capsys)
    assert line == api == f"{path}: scenario file is UTF-16 text; save it as UTF-8"


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("name: bom\n".encode("utf-8-sig"))
    assert fedsim.load_scenario(path).name == "bom"


def test_duplicate_keys_name_both_lines(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("seed: 1\nname: x\nseed: 2\n")
    line, api = _refused(path, capsys)
    assert line == api == f"{path}:3: duplicate key 'seed' (line 1 and line 3)"
    path.write_text("clients:\n  count: 5\nname: x\nclients:\n  count: 6\n")
    line, _ = _refused(path, capsys)
    assert line == f"{path}:4: duplicate key 'clients' (line 1 and line 4)"
    path.write_text("clients:\n  count: 5\n  count: 6\n")
    line, _ = _refused(path, capsys)
    assert line == f"{path}:3: duplicate key 'count' (line 2 and line 3)"


def test_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(
        "name: m\nclients:\n  compute: &c {dist: constant, mean_s: 2.0}\n"
        "  network: {<<: *c, latency_s: 0.5}\n"
    )
    with pytest.raises(fedsim.ScenarioError, match=r"clients\.network\.dist: unknown key"):
        fedsim.load_scenario(path)
    path.write_text("name: m\nbase: &c {count: 4}\nclients: {<<: *c, count: 5}\n")
    with pytest.raises(fedsim.ScenarioError, match="base: unknown key"):
        fedsim.load_scenario(path)
    path.write_text("name: m\nclients: {<<: {count: 4}, count: 5}\n")
    assert fedsim.load_scenario(path).clients.count == 5


@pytest.mark.parametrize("with_override", [False, True])
def test_alias_bomb_is_refused_quickly(tmp_path, capsys, with_override):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    overrides = ["clients.count=5"] if with_override else []
    started = time.perf_counter()
    line, api = _refused(path, capsys, *overrides)
    assert time.perf_counter() - started < 2.0
    assert (
        line
        == api
        == (f"{path}: more than 100,000 values once its aliases are expanded (an alias bomb?)")
    )


def test_small_aliases_still_work_and_overrides_do_not_leak(tmp_path):
    path = tmp_path / "alias.yaml"
    path.write_text(
        "name: shared\nmodel: {kind: mlp, hidden: &h [8]}\n"
        "clients: {compute: &c {dist: constant, mean_s: 2.0}, network: {latency_s: 0.5}}\n"
    )
    scenario = fedsim.load_scenario(path, ["clients.compute.mean_s=4"])
    assert scenario.clients.compute.mean_s == 4.0
    assert fedsim.load_scenario(path).clients.compute.mean_s == 2.0


def test_recursive_alias_and_deep_nesting_are_refused(tmp_path, capsys):
    path = tmp_path / "rec.yaml"
    path.write_text("name: x\nclients: &a {count: [*a]}\n")
    line, api = _refused(path, capsys)
    assert line == api == f"{path}:2: a recursive alias (a value that contains itself)"
    path.write_text("name: " + "[" * 200_000 + "]" * 200_000 + "\n")
    line, _ = _refused(path, capsys)
    assert line == f"{path}:1: nested deeper than 64 levels"


def test_file_size_is_capped(tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    with path.open("w") as f:
        f.write("name: x\n")
        f.write("# padding\n" * 500_000)
    line, api = _refused(path, capsys)
    assert line == api
    assert line == (
        f"{path}: scenario file of 5,000,008 bytes is larger than the 4,194,304 bytes allowed"
    )


def test_too_many_values_are_refused(tmp_path, capsys):
    path = tmp_path / "wide.yaml"
    path.write_text("model: {hidden: [" + ", ".join(["1"] * 100_001) + "]}\n")
    line, _ = _refused(path, capsys)
    assert line == f"{path}:1: more than 100,000 values"


@pytest.mark.parametrize("tag", ["binary", "set"])
@pytest.mark.parametrize("with_override", [False, True])
def test_binary_and_set_values_are_refused(tmp_path, capsys, tag, with_override):
    path = tmp_path / "bin.yaml"
    value = "aGVsbG8=" if tag == "binary" else "{a, b}"
    path.write_text(f"name: !!{tag} {value}\n")
    overrides = ["clients.count=5"] if with_override else []
    line, api = _refused(path, capsys, *overrides)
    assert line == api == f"{path}:1: !!{tag} values are not allowed in fedsim files"


def test_python_tags_are_refused(tmp_path, capsys):
    path = tmp_path / "py.yaml"
    path.write_text("name: !!python/object/apply:os.system [echo hi]\n")
    line, _ = _refused(path, capsys)
    assert line.startswith(f"{path}:1: could not determine a constructor for the tag")


def test_dates_are_read_as_strings(tmp_path):
    path = tmp_path / "date.yaml"
    path.write_text("name: 2024-01-31\n")
    assert fedsim.load_scenario(path).name == "2024-01-31"


def test_control_characters_are_one_line(tmp_path, capsys):
    path = tmp_path / "nul.yaml"
    path.write_text("name: a\x00b\n")
    line, api = _refused(path, capsys)
    assert line == api == f"{path}: YAML syntax error: character #x0000 at offset 7 is not allowed"


def test_override_values_use_the_same_reader(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text("name: x\n")
    line, _ = _refused(path, capsys, "name=!!binary aGVsbG8=")
    assert line == "--set name:1: !!binary values are not allowed in fedsim files"
    # Text that is not YAML stays a string (and fails validation where a string is wrong).
    line, _ = _refused(path, capsys, "clients.count=[1")
    assert line == '--set clients.count: must be an integer, got "[1"'


@pytest.mark.parametrize("where", ["sweep", "base"])
@pytest.mark.parametrize("encoding", ["random", "utf-16"])
def test_sweep_file_and_its_base_are_read_the_same_way(tmp_path, capsys, where, encoding):
    bad = b"\x00\xff\xfe\xfd" if encoding == "random" else "name: x\n".encode("utf-16")
    base = tmp_path / "base.yaml"
    base.write_text("name: b\nstop: {time_s: 5}\ntraining: none\n")
    sweep = tmp_path / "sw.yaml"
    sweep.write_text("base: base.yaml\ngrid: {clients.count: [2, 3]}\n")
    target = sweep if where == "sweep" else base
    target.write_bytes(bad)
    what = "sweep file" if where == "sweep" else "scenario file"
    line = _one_line_error(["sweep", str(sweep), "--out", str(tmp_path / "out")], capsys)
    if encoding == "utf-16":
        expected = f"{target}: {what} is UTF-16 text; save it as UTF-8"
    else:
        expected = f"{target}:1: {what} is not UTF-8 text (byte 0xff at offset 1); save it as UTF-8"
    assert line.endswith(expected)
    from fedsim.sweep import load_sweep

    with pytest.raises(fedsim.ScenarioError, match="UTF"):
        load_sweep(sweep)


def test_sweep_file_duplicate_keys_and_bombs(tmp_path, capsys):
    from fedsim.sweep import load_sweep

    sweep = tmp_path / "sw.yaml"
    sweep.write_text("base: b.yaml\ngrid: {}\nbase: c.yaml\n")
    with pytest.raises(fedsim.ScenarioError) as info:
        load_sweep(sweep)
    assert str(info.value) == f"{sweep}:3: duplicate key 'base' (line 1 and line 3)"
    sweep.write_text(_alias_bomb())
    line = _one_line_error(["sweep", str(sweep), "--out", str(tmp_path / "o")], capsys)
    assert line.endswith("once its aliases are expanded (an alias bomb?)")


@pytest.mark.parametrize("encoding", ["random", "utf-16"])
def test_topology_text_file_not_utf8(tmp_path, capsys, encoding):
    table = tmp_path / "graph.txt"
    table.write_bytes(b"0 1\n1 \xff\n" if encoding == "random" else "0 1\n1 0\n".encode("utf-16"))
    path = tmp_path / "topo.yaml"
    path.write_text(
        "training: none\n"
        f"topology: {{servers: 2, clients_per_server: 2, graph: {{kind: from_file, path: {table}}}}}\n"
    )
    problem = (
        "table is not UTF-8 text (byte 0xff at offset 6); save it as UTF-8"
        if encoding == "random"
        else "table is UTF-16 text; save it as UTF-8"
    )
    where = f"{table}:2" if encoding == "random" else f"{table}"
    expected = f"{path}:2: topology.graph.path: {where}: {problem}"
    line = _one_line_error(["run", str(path), "-q", "--out", str(tmp_path / "r")], capsys)
    assert line == expected


def test_training_none_then_training_key_is_refused(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\n")
    line, api = _refused(path, capsys, "training=none", "training.lr=0.2")
    assert (
        line
        == api
        == "--set training: one override sets it to none, another sets training.lr; drop one of them"
    )
    line, _ = _refused(path, capsys, "byzantine=null", "byzantine.fraction=0.2")
    assert line == (
        "--set byzantine: one override sets it to null, another sets byzantine.fraction; "
        "drop one of them"
    )


# ---------------------------------------------------------------------------------------------------
# Scenarios that validate but would never finish, and silent coercions

NEVER_FINISH_AND_COERCIONS = [
    ("inf horizon", "stop: {time_s: .inf}", "stop.time_s: must be a finite number, got inf"),
    ("1e400 horizon", "stop: {time_s: 1e400}", 'stop.time_s: must be a finite number, got "1e400"'),
    ("nan lr", "training: {lr: .nan}", "training.lr: must be a finite number, got nan"),
    (
        "accuracy never measured",
        "training: none\nstop: {time_s: null, target_accuracy: 0.9}",
        "stop.target_accuracy: the only stop condition, but training is none (a timing-only run "
        "measures no accuracy, so it would never stop); set stop.time_s or stop.max_updates",
    ),
    (
        "tiny eval period",
        "eval: {every_s: 1e-300}",
        "eval.every_s: must be >= 1e-06 s (shorter times stall the simulated clock), got 1e-300",
    ),
    (
        "too many evaluations",
        "stop: {time_s: 1.0e+6}\neval: {every_s: 0.01}",
        "eval.every_s: 1e+06 s / 0.01 s makes 1e+08 evaluations (at most 10,000,000); "
        "evaluate less often",
    ),
    (
        "tiny constant compute",
        "clients: {compute: {dist: constant, mean_s: 1e-300}}",
        "clients.compute.mean_s: must be >= 1e-06 s (shorter times stall the simulated clock), "
        "got 1e-300",
    ),
    (
        "tiny fedfix period",
        "algorithm: {name: fedfix, period_s: 1e-300}",
        "algorithm.period_s: must be >= 1e-06 s (shorter times stall the simulated clock), "
        "got 1e-300",
    ),
    (
        "infinite compute",
        "clients: {compute: {mean_s: .inf}}",
        "clients.compute.mean_s: must be a finite number, got inf",
    ),
    ("bool count", "clients: {count: true}", "clients.count: must be an integer, got true"),
    ("bool lr", "training: {lr: true}", "training.lr: must be a number, got true"),
    (
        "bool in a list",
        "model: {hidden: [8, false]}",
        "model.hidden.1: must be an integer, got false",
    ),
    (
        "cohort above count",
        "clients: {count: 10}\nalgorithm: {name: fedavg, cohort_size: 50}",
        "algorithm.cohort_size: cohort_size (50) > clients.count (10): a round could never gather "
        "its cohort",
    ),
    (
        "name climbs out of runs",
        "name: ../../x",
        "name: must be a non-empty name without '/', '\\' or '..' (it names the run directory), "
        'got "../../x"',
    ),
    (
        "name with a backslash",
        "name: 'a\\b'",
        "name: must be a non-empty name without '/', '\\' or '..' (it names the run directory), "
        'got "a\\\\b"',
    ),
    ("empty output dir", "output: {dir: ''}", 'output.dir: must not be empty, got ""'),
    (
        "all clients byzantine",
        "clients: {count: 10}\nbyzantine: {fraction: 0.99, attack: {name: alie}}",
        "byzantine.fraction: 0.99 of 10 clients makes all 10 Byzantine (round(fraction·count)); "
        "at most 9 may be, so keep fraction below 0.95",
    ),
    (
        "all clients listed byzantine",
        "clients: {count: 2}\nbyzantine: {clients: [0, 1], attack: {name: ipm}}",
        "byzantine.clients: all 2 clients are listed: at least one must stay honest",
    ),
    (
        "byzantine index out of range",
        "clients: {count: 2}\nbyzantine: {clients: [7]}",
        "byzantine.clients: client index 7 out of range (clients.count 2)",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [c[1:] for c in NEVER_FINISH_AND_COERCIONS],
    ids=[c[0] for c in NEVER_FINISH_AND_COERCIONS],
)
def test_refused_at_validation(tmp_path, capsys, text, expected):
    path = tmp_path / "s.yaml"
    path.write_text(text + "\n")
    line, api = _refused(path, capsys)
    # Each case gives one section per line: the line is the one of the offending key's section.
    section = expected.split(":")[0].split(".")[0]
    number = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith(f"{section}:"))
    assert line == api == f"{path}:{number}: {expected}"


def test_finite_and_strict_numbers_through_overrides(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\n")
    line, _ = _refused(path, capsys, "stop.time_s=.inf")
    assert line == "--set stop.time_s: must be a finite number, got inf"
    line, _ = _refused(path, capsys, "clients.count=true")
    assert line == "--set clients.count: must be an integer, got true"


def test_legitimate_values_still_pass():
    ok = fedsim.load_scenario(
        {
            "clients": {"count": 10, "compute": {"dist": "constant", "mean_s": 1e-6}},
            "byzantine": {"fraction": 0.9, "attack": {"name": "scaling", "factor": float("inf")}},
            "algorithm": {"name": "fedavg", "cohort_size": 10},
            "eval": {"every_s": 1e-4},
            "stop": {"time_s": 100},
        }
    )
    assert ok.byzantine.attack.factor == float("inf")
    assert fedsim.load_scenario({"training": "none", "stop": {"target_accuracy": 0.5}})
    assert fedsim.load_scenario({"name": "a.b-c_1"}).name == "a.b-c_1"


# ---------------------------------------------------------------------------------------------------
# Data files and sizes: `fedsim validate` and the run (Simulation) refuse them alike


def _idx(path: Path, array, gz: bool = False, dtype: int = 0x08) -> None:
    import gzip
    import struct

    import numpy as np

    array = np.asarray(array)
    header = bytes([0, 0, dtype, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _mnist(folder: Path, n_train=20, n_labels=None, shape=(28, 28), labels_max=10, gz=False):
    import numpy as np

    from fedsim.learning.data import IDX_FILES

    rng = np.random.default_rng(0)
    n_labels = n_train if n_labels is None else n_labels
    arrays = (
        rng.integers(0, 256, (n_train, *shape)),
        rng.integers(0, labels_max, n_labels),
        rng.integers(0, 256, (6, 28, 28)),
        rng.integers(0, 10, 6),
    )
    for name, array in zip(IDX_FILES, arrays, strict=True):
        _idx(folder / name, array, gz)


def _refused_by_validate_and_run(tmp_path, capsys, text: str, *, at: int) -> str:
    """validate exits 2 with one line; Simulation raises the same ScenarioError. The line starts
    with ``FILE:LINE:`` of the key (line ``at`` of the file); return what follows."""
    path = tmp_path / "data.yaml"
    path.write_text(text)
    line = _one_line_error(["validate", str(path)], capsys)
    scenario = fedsim.load_scenario(path)
    with pytest.raises(fedsim.ScenarioError) as info:
        fedsim.Simulation(scenario, device="cpu")
    assert str(info.value) == line
    assert line.startswith(f"{path}:{at}: "), line
    return line.removeprefix(f"{path}:{at}: ")


MNIST = (
    "data: {{dataset: mnist_idx, path: {path}, partition: {{kind: iid}}}}\nclients: {{count: 4}}\n"
)


def test_idx_image_and_label_counts_must_match(tmp_path, capsys):
    _mnist(tmp_path, n_train=20, n_labels=15)
    line = _refused_by_validate_and_run(tmp_path, capsys, MNIST.format(path=tmp_path), at=1)
    images, labels = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    assert line == f"data.path: {images} holds 20 images but {labels} holds 15 labels"


def test_idx_labels_out_of_range(tmp_path, capsys):
    _mnist(tmp_path, labels_max=200)
    line = _refused_by_validate_and_run(tmp_path, capsys, MNIST.format(path=tmp_path), at=1)
    assert line.startswith(f"data.path: {tmp_path / 'train-labels-idx1-ubyte'}: label ")
    assert line.endswith("is outside 0..9")


def test_idx_wrong_image_shape(tmp_path, capsys):
    _mnist(tmp_path, shape=(32, 32))
    line = _refused_by_validate_and_run(tmp_path, capsys, MNIST.format(path=tmp_path), at=1)
    assert line == (
        f"data.path: {tmp_path / 'train-images-idx3-ubyte'} holds images of shape (32, 32), "
        "expected 28×28"
    )


def test_idx_truncated_file(tmp_path, capsys):
    _mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    line = _refused_by_validate_and_run(tmp_path, capsys, MNIST.format(path=tmp_path), at=1)
    assert line == f"data.path: {images} holds 15691 bytes, its header says 15696"


def test_gz_that_is_not_gzip(tmp_path, capsys):
    _mnist(tmp_path, gz=True)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(b"this is not gzip at all")
    line = _refused_by_validate_and_run(tmp_path, capsys, MNIST.format(path=tmp_path), at=1)
    assert line.startswith(f"data.path: {labels} is not a valid gzip file (")


def test_cifar_pickles_of_random_bytes(tmp_path, capsys):
    import numpy as np

    from fedsim.learning.data import CIFAR10_FILES

    for name in CIFAR10_FILES:
        (tmp_path / name).write_bytes(np.random.default_rng(1).bytes(4000))
    text = f"data: {{dataset: cifar10, path: {tmp_path}}}\nclients: {{count: 2}}\n"
    line = _refused_by_validate_and_run(tmp_path, capsys, text, at=1)
    assert (
        line
        == f"data.path: {tmp_path / 'data_batch_1'} is not a CIFAR-10 batch (not a python pickle)"
    )


def test_cifar_pickle_damaged_inside(tmp_path, capsys):
    import pickle

    from fedsim.learning.data import CIFAR10_FILES

    for name in CIFAR10_FILES:
        payload = pickle.dumps({b"data": b"x" * 3072 * 4, b"labels": [1, 2, 3, 4]})
        (tmp_path / name).write_bytes(payload[: len(payload) // 2])
    scenario = fedsim.load_scenario(
        {"data": {"dataset": "cifar10", "path": str(tmp_path)}, "clients": {"count": 2}}
    )
    with pytest.raises(fedsim.ScenarioError) as info:
        fedsim.Simulation(scenario, device="cpu")
    assert str(info.value).startswith(
        f"data.path: {tmp_path / 'data_batch_1'} is not a CIFAR-10 batch (cannot unpickle it: "
    )


def test_cache_dir_that_is_a_file(tmp_path, capsys):
    pytest.importorskip("mnist1d")
    cache = tmp_path / "cache"
    cache.write_text("a file")
    text = f"data: {{dataset: mnist1d, cache_dir: {cache}}}\nclients: {{count: 2}}\n"
    line = _refused_by_validate_and_run(tmp_path, capsys, text, at=1)
    assert line == (
        f"data.cache_dir: {cache} is a file, not a folder: cannot cache datasets under {cache}"
    )


def test_more_clients_than_samples_is_caught_by_validate(tmp_path, capsys):
    line = _refused_by_validate_and_run(tmp_path, capsys, "clients: {count: 5000}\n", at=1)
    assert line == (
        "clients.count: 5000 clients for the 1438 training samples of digits: every client "
        "needs at least one"
    )


def test_missing_data_path_is_caught_by_validate(tmp_path, capsys):
    text = f"data: {{dataset: mnist_idx, path: {tmp_path / 'nowhere'}}}\n"
    line = _refused_by_validate_and_run(tmp_path, capsys, text, at=1)
    assert line.startswith("data.path: missing local dataset file(s): ")


def test_sizes_that_cannot_fit_name_the_memory(tmp_path, capsys):
    from fedsim.checks import check_memory

    line = _refused_by_validate_and_run(
        tmp_path, capsys, "training: none\nclients: {count: 1000000000000}\n", at=2
    )
    assert line.startswith("clients.count: 1,000,000,000,000 clients need about 256 TB of memory")
    line = _refused_by_validate_and_run(tmp_path, capsys, "model: {hidden: [100000000000]}\n", at=1)
    assert line.startswith("model: the model has 7,500,000,000,010 parameters: 30 TB each copy")
    # The bound is the machine's memory: a small model fits, a 10 kB machine refuses it.
    small = fedsim.load_scenario({"model": {"hidden": [8]}})
    check_memory(small, 4 * 600)
    with pytest.raises(fedsim.ScenarioError, match="more than this machine's 10 kB"):
        check_memory(small, 4 * 600, available=10_000)


# ---------------------------------------------------------------------------------------------------
# validate = run: algorithm and topology rules


TOPOLOGY_CASES = [
    (
        "dfl without topology",
        "training: none\nalgorithm: {name: dfl}\n",
        None,  # the file has no topology key: the line names the file alone
        "topology: algorithm dfl needs a topology: section (servers, graph, mixing)",
    ),
    (
        "dsgd two clients per server",
        "training: none\nalgorithm: {name: dsgd}\ntopology: {servers: 4, clients_per_server: 2}\n",
        3,
        "topology.clients_per_server: dsgd peers train on their own data: every server needs "
        "exactly one client (clients_per_server: 1)",
    ),
    (
        "drpga with dropout",
        "algorithm: {name: drpga}\nclients: {dropout: {prob: 0.1}}\n",
        2,
        "clients.dropout.prob: drpga averages every client every round; set clients.dropout.prob "
        "to 0",
    ),
    (
        "drpga with a topology",
        "algorithm: {name: drpga}\ntopology: {servers: 2, clients_per_server: 5}\n",
        2,
        "topology: drpga runs with one server; remove the topology section",
    ),
    (
        "modest two clients per server",
        "training: none\nalgorithm: {name: modest}\ntopology: {servers: 4, clients_per_server: 2}\n",
        3,
        "topology.clients_per_server: modest peers train on their own data: every server needs "
        "exactly one client (clients_per_server: 1)",
    ),
    (
        "modest with a client network",
        "training: none\nalgorithm: {name: modest}\ntopology: {servers: 4, clients_per_server: 1}\n"
        "clients: {network: {latency_s: 0.1}}\n",
        4,
        "clients.network: modest peers talk over topology.link; leave clients.network at its "
        "default",
    ),
    (
        "fedast concurrency beyond the clients",
        "algorithm: {name: fedast, concurrency: 500, tasks: [{name: a}]}\n",
        1,
        "algorithm.concurrency: 500 requests in flight need that many clients, but clients.count "
        "is 100",
    ),
    (
        "sync_st cohort beyond the clients",
        "algorithm: {name: sync_st, clients_per_round: 500, tasks: [{name: a}]}\n",
        1,
        "algorithm.clients_per_round: 500 clients per round, but clients.count is 100",
    ),
]


@pytest.mark.parametrize(
    ("text", "number", "expected"),
    [c[1:] for c in TOPOLOGY_CASES],
    ids=[c[0] for c in TOPOLOGY_CASES],
)
def test_algorithm_rules_are_validation_errors(tmp_path, capsys, text, number, expected):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    line, api = _refused(path, capsys)
    where = f"{path}:{number}" if number is not None else f"{path}"
    assert line == api == f"{where}: {expected}"


def test_disconnected_graph_and_bad_mixing_files_are_caught_by_validate(tmp_path, capsys):
    edges = tmp_path / "edges.txt"
    edges.write_text("0 1\n2 3\n")
    text = (
        "training: none\nalgorithm: {name: dfl}\n"
        f"topology: {{servers: 4, clients_per_server: 1, graph: {{kind: from_file, path: {edges}}}}}\n"
    )
    line = _refused_by_validate_and_run(tmp_path, capsys, text, at=3)
    assert line.startswith("topology.graph: ")
    assert "connected" in line
    mixing = tmp_path / "w.txt"
    mixing.write_text("0.5 0.5\n0.5 0.4\n")
    text = (
        "training: none\nalgorithm: {name: dfl}\n"
        "topology: {servers: 2, clients_per_server: 1, graph: complete, "
        f"mixing: {{kind: from_file, path: {mixing}}}}}\n"
    )
    line = _refused_by_validate_and_run(tmp_path, capsys, text, at=3)
    assert line.startswith("topology.mixing")
    assert "row 1 sums to 0.9" in line


# ---------------------------------------------------------------------------------------------------
# plot and collect on damaged directories


@pytest.fixture(scope="module")
def run_without_updates(tmp_path_factory) -> Path:
    """A timing-only run that stops before any job returns (no accepted update)."""
    out = tmp_path_factory.mktemp("runs") / "none"
    fedsim.run(
        {
            "name": "none",
            "training": "none",
            "stop": {"time_s": 1},
            "clients": {"count": 3, "compute": {"dist": "constant", "mean_s": 100}},
        },
        out=out,
        device="cpu",
    )
    return out


@pytest.mark.parametrize("kind", ["staleness", "staleness_time"])
def test_plot_of_a_run_without_updates(run_without_updates, tmp_path, capsys, kind):
    line = _one_line_error(
        ["plot", str(run_without_updates), "--kind", kind, "--out", str(tmp_path / "x.png")],
        capsys,
    )
    assert line.startswith(f"{run_without_updates}: cannot plot {kind}: no accepted")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]"])
def test_plot_of_a_corrupt_summary(run_without_updates, tmp_path, capsys, content):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(run_without_updates, run)
    (run / "summary.json").write_bytes(content)
    line = _one_line_error(
        ["plot", str(run), "--kind", "timeline", "--out", str(tmp_path / "x.png")], capsys
    )
    assert line.startswith(f"{run / 'summary.json'}: not a readable summary (")


@pytest.mark.parametrize(
    "manifest", ['{"cells": 3}', '{"cells": [{"dir": 1}]}', "[]", '{"no_cells": []}']
)
def test_collect_of_a_malformed_manifest(tmp_path, capsys, manifest):
    (tmp_path / "sweep.json").write_text(manifest)
    line = _one_line_error(["collect", str(tmp_path)], capsys)
    assert line == (
        f"{tmp_path / 'sweep.json'}: malformed sweep manifest (expected cells: a list of "
        "{dir, hash} entries)"
    )
    (tmp_path / "sweep.json").write_bytes(b"\xff\x00 not json")
    line = _one_line_error(["collect", str(tmp_path)], capsys)
    assert line == f"not a fedsim sweep directory (no readable sweep.json): {tmp_path}"


# ---------------------------------------------------------------------------------------------------
# Keys that mean something at infinity opt out of the finite rule


def test_centered_clipping_tau_inf_is_the_mean(tmp_path, capsys):
    import torch

    from fedsim.robust.aggregators import aggregate

    path = tmp_path / "cc.yaml"
    path.write_text("aggregator: {name: centered_clipping, tau: .inf, iters: 1, center: zero}\n")
    cfg = fedsim.load_scenario(path).aggregator
    assert cfg.tau == float("inf")
    u = torch.tensor([[0.0, 0.0], [2.0, 0.0], [100.0, 4.0]], dtype=torch.float64)
    assert torch.allclose(aggregate(cfg, u, torch.ones(3, dtype=torch.float64)), u.mean(0))
    # NaN still is no radius.
    path.write_text("aggregator: {name: centered_clipping, tau: .nan}\n")
    line, api = _refused(path, capsys)
    assert line == api == f"{path}:1: aggregator.tau: must be >= 0.0, got nan"


# ---------------------------------------------------------------------------------------------------
# Every error at once, each with the line of its key


MANY_ERRORS = """\
name: many
seed: -1
clients:
  count: 0
  compute:
    mean_s: -2
stop:
  time_s: .nan
bogus: 1
"""


def test_every_error_is_reported_with_its_line(tmp_path, capsys):
    path = tmp_path / "many.yaml"
    path.write_text(MANY_ERRORS)
    code, _out, err = _cli(["validate", str(path)], capsys)
    assert code == 2
    expected = [
        f"{path}:2: seed: must be >= 0, got -1",
        f"{path}:4: clients.count: must be > 0, got 0",
        f"{path}:6: clients.compute.mean_s: must be > 0.0, got -2",
        f"{path}:8: stop.time_s: must be a finite number, got nan",
        f"{path}:9: bogus: unknown key (known: name, seed, stop, data, model, training, clients, "
        "algorithm, aggregator, server_optimizer, screening, byzantine, topology, eval, output)",
    ]
    assert err.splitlines() == [f"error: {line}" for line in expected]
    with pytest.raises(fedsim.ScenarioError) as info:
        fedsim.load_scenario(path)
    exc = info.value
    assert str(exc) == "\n".join(expected)
    assert exc.lines == expected
    assert (exc.path, exc.message, exc.value) == ("seed", "must be >= 0, got -1", -1)
    assert [(p.path, p.line) for p in exc.problems] == [
        ("seed", 2),
        ("clients.count", 4),
        ("clients.compute.mean_s", 6),
        ("stop.time_s", 8),
        ("bogus", 9),
    ]


def test_errors_from_overrides_name_the_override(tmp_path, capsys):
    path = tmp_path / "many.yaml"
    path.write_text(MANY_ERRORS)
    code, _out, err = _cli(
        ["validate", str(path), "--set", "clients.count=-3", "--set", "seed=1"], capsys
    )
    assert code == 2
    assert err.splitlines() == [
        f"error: {path}:6: clients.compute.mean_s: must be > 0.0, got -2",
        f"error: {path}:8: stop.time_s: must be a finite number, got nan",
        f"error: {path}:9: bogus: unknown key (known: name, seed, stop, data, model, training, "
        "clients, algorithm, aggregator, server_optimizer, screening, byzantine, topology, eval, output)",
        "error: --set clients.count: must be > 0, got -3",
    ]
    # A section replaced by an override: the keys under it came from the override.
    with pytest.raises(fedsim.ScenarioError) as info:
        fedsim.load_scenario(path, {"clients": {"compute": {"mean_s": 0}}, "seed": 0})
    assert "--set clients.compute.mean_s: must be > 0.0, got 0" in info.value.lines


def test_override_paths_that_do_not_exist_name_the_override(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\n")
    line, api = _refused(path, capsys, "clients.cunt=5")
    assert line == api
    assert line.startswith("--set clients.cunt: unknown key; did you mean 'count'? (known: ")
    line, _ = _refused(path, capsys, "name.first=5")
    assert line == "--set name.first: name is not a section, so name.first does not exist"


def test_errors_without_a_file_have_no_location():
    with pytest.raises(fedsim.ScenarioError) as info:
        fedsim.load_scenario({"seed": -1, "clients": {"count": True}})
    assert str(info.value) == (
        "seed: must be >= 0, got -1\nclients.count: must be an integer, got true"
    )
    assert info.value.path == "seed"


def test_a_key_missing_from_the_file_names_its_section_or_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    # eval.every_s is not in the file: its section's line is given, else the file alone.
    path.write_text("name: x\nstop: {time_s: 1.0e+6, max_updates: 5}\n")
    with pytest.raises(fedsim.ScenarioError) as info:
        fedsim.load_scenario(path, ["eval.every_s=0.01"])
    assert str(info.value).startswith("--set eval.every_s: 1e+06 s / 0.01 s")
    path.write_text("name: x\nstop: {time_s: 1.0e+6}\nalgorithm: {name: dfl}\n")
    with pytest.raises(fedsim.ScenarioError) as info:
        fedsim.load_scenario(path)
    assert str(info.value).startswith(f"{path}: topology: algorithm dfl needs a topology")
    path.write_text("name: x\nstop: {time_s: 1.0e+9}\neval: {}\n")
    with pytest.raises(fedsim.ScenarioError, match=rf"^{path}:3: eval\.every_s: 1e\+09 s"):
        fedsim.load_scenario(path)
    path.write_text("name: x\nstop: {time_s: 1.0e+6}\neval:\n  every_s: 0.01\n")
    with pytest.raises(fedsim.ScenarioError, match=rf"^{path}:4: eval\.every_s: 1e\+06 s"):
        fedsim.load_scenario(path)


def test_lines_follow_aliases_merges_and_lists(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: x\n"
        "shared: &c\n"
        "  dist: constant\n"
        "  mean_s: -1\n"
        "clients:\n"
        "  compute: *c\n"
        "  network:\n"
        "    <<: {latency_s: -5}\n"
        "model:\n"
        "  hidden:\n"
        "    - 8\n"
        "    - 0\n"
    )
    with pytest.raises(fedsim.ScenarioError) as info:
        fedsim.load_scenario(path)
    assert info.value.lines == [
        f"{path}:2: shared: unknown key; did you mean 'seed'? (known: name, seed, stop, data, model, training, clients, "
        "algorithm, aggregator, server_optimizer, screening, byzantine, topology, eval, output)",
        f"{path}:4: clients.compute.mean_s: must be > 0.0, got -1",
        f"{path}:8: clients.network.latency_s: must be >= 0.0, got -5",
        f"{path}:12: model.hidden.1: must be > 0, got 0",
    ]


# ---------------------------------------------------------------------------------------------------
# Server-side attacks with no honest row to imitate


def _attacked_run(small_learning, algorithm: dict, attack: str = "alie") -> dict:
    scenario = {
        **small_learning,
        "stop": {"time_s": 20},
        "algorithm": algorithm,
        "byzantine": {"fraction": 0.5, "attack": {"name": attack}},
    }
    return fedsim.run(scenario, save=False, device="cpu").summary


@pytest.mark.parametrize("attack", ["alie", "ipm"])
def test_all_byzantine_sets_are_not_counted_as_attacked(small_learning, attack):
    # One row per buffer: a Byzantine row is alone in its set, with nothing to imitate.
    alone = _attacked_run(
        small_learning, {"name": "fedbuff", "concurrency": 4, "buffer_size": 1}, attack
    )
    assert alone["byzantine_applied"] > 0
    assert alone["byzantine_unattacked_sets"] == alone["byzantine_applied"]
    assert alone["byzantine_unattacked_updates"] == alone["byzantine_applied"]
    # FedAvg rounds of one client: the same.
    rounds = _attacked_run(small_learning, {"name": "fedavg", "cohort_size": 1}, attack)
    assert rounds["byzantine_applied"] > 0
    assert rounds["byzantine_unattacked_sets"] == rounds["byzantine_applied"]


def test_mixed_sets_are_attacked(small_learning):
    mixed = _attacked_run(
        small_learning, {"name": "fedbuff", "concurrency": 10, "buffer_size": 10}, "ipm"
    )
    assert mixed["byzantine_applied"] > 0
    # Half the clients Byzantine: a buffer of 10 is all Byzantine about once in 1000 sets.
    assert mixed["byzantine_unattacked_updates"] < mixed["byzantine_applied"]
    assert mixed["byzantine_unattacked_updates"] % 10 == 0


def test_fedasync_attacks_each_arrival_and_refuses_one_with_nothing_to_imitate(small_learning):
    summary = _attacked_run(small_learning, {"name": "fedasync", "concurrency": 5})
    # Every accepted Byzantine arrival was attacked (from the honest window): none unattacked.
    assert summary["byzantine_unattacked_sets"] == 0
    assert summary["byzantine_applied"] > 0


def test_no_unattacked_counters_without_a_server_side_attack(small_learning):
    summary = _attacked_run(small_learning, {"name": "fedavg", "cohort_size": 2}, "sign_flip")
    assert "byzantine_unattacked_sets" not in summary


# ---------------------------------------------------------------------------------------------------
# Partitions that cannot be drawn: `fedsim validate` draws the run's partition from the labels


def _validate_and_run_refuse(path: Path, tmp_path: Path, capsys) -> str:
    """``fedsim validate`` and ``fedsim run`` both exit 2 with the same one line; return it."""
    line = _one_line_error(["validate", str(path)], capsys)
    out = tmp_path / "run"
    assert _one_line_error(["run", str(path), "--out", str(out), "-q"], capsys) == line
    with pytest.raises(fedsim.ScenarioError) as info:
        fedsim.Simulation(fedsim.load_scenario(path), device="cpu")
    assert str(info.value) == line
    return line


@pytest.mark.parametrize(
    ("partition", "clients", "expected"),
    [
        (
            "{kind: dirichlet, alpha: 0.05, min_samples: 60}",
            20,
            "data.partition.alpha: could not give every one of 20 clients 60 samples in 1000 "
            "draws; raise alpha, lower clients.count or min_samples",
        ),
        (
            "{kind: quantity_skew, min_samples: 80}",
            20,
            "data.partition.min_samples: 20 clients × 80 samples need more than the 1438 "
            "training samples",
        ),
    ],
)
def test_partition_that_cannot_be_drawn_is_refused_by_validate(
    tmp_path, capsys, partition, clients, expected
):
    path = tmp_path / "p.yaml"
    path.write_text(f"clients: {{count: {clients}}}\ndata: {{partition: {partition}}}\n")
    assert _validate_and_run_refuse(path, tmp_path, capsys) == f"{path}:2: {expected}"


def test_shards_validate_agrees_with_the_run_at_the_boundary(tmp_path, capsys):
    """With one class per client, 10·m clients give every class m holders, where m is the
    smallest class in the run's training split (read from an IID run): that fits; 10·m + 10 give
    every class m + 1 holders, one more than the smallest class has samples."""
    import numpy as np

    iid = fedsim.Simulation(
        fedsim.load_scenario({"data": {"partition": {"kind": "iid"}}}), device="cpu"
    )
    counts = np.bincount(iid.data.y_train.numpy(), minlength=10)
    m, smallest = int(counts.min()), int(counts.argmin())
    text = "clients: {{count: {n}}}\ndata: {{partition: {{kind: shards, classes_per_client: 1}}}}\n"
    fits = tmp_path / "fits.yaml"
    fits.write_text(text.format(n=10 * m))
    code, out, err = _cli(["validate", str(fits)], capsys)
    assert code == 0 and out.startswith("ok: "), err
    sim = fedsim.Simulation(fedsim.load_scenario(fits), device="cpu")
    assert min(len(ix) for ix in sim.data.client_indices) >= 1
    short = tmp_path / "short.yaml"
    short.write_text(text.format(n=10 * m + 10))
    line = _validate_and_run_refuse(short, tmp_path, capsys)
    assert line.startswith(f"{short}:2: data.partition.classes_per_client: class ")
    assert f"has {m} training samples for {m + 1} clients" in line
    assert line.startswith(f"{short}:2: data.partition.classes_per_client: class {smallest} ")


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 batches: exact counts and labels read by validate, nothing but arrays unpickled


def _cifar(folder: Path, sizes=(4, 4, 4, 4, 4, 3), *, protocol: int = 2, seed: int = 0):
    """Fake CIFAR-10 python batches (the real format: a dict of a uint8 ``[n, 3072]`` array and a
    list of labels); return the training images and labels written."""
    import pickle

    import numpy as np

    from fedsim.learning.data import CIFAR10_FILES

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for name, n in zip(CIFAR10_FILES, sizes, strict=True):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        xs.append(data)
        ys.append(labels)
    return np.concatenate(xs[:-1]), np.concatenate(ys[:-1])


CIFAR = (
    "data: {{dataset: cifar10, path: {path}, partition: {{kind: iid}}}}\nclients: {{count: {n}}}\n"
)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_exact_sample_count_and_arrays(tmp_path, capsys, protocol):
    """validate counts the training images exactly (3 + 5 + 1 + 7 + 2 = 18): 18 clients pass,
    19 are refused; the run reads the same images and labels that were written."""
    import numpy as np

    from fedsim.learning.data import CIFAR10_MEAN, CIFAR10_STD

    x, y = _cifar(tmp_path, (3, 5, 1, 7, 2, 4), protocol=protocol)
    ok = tmp_path / "ok.yaml"
    ok.write_text(CIFAR.format(path=tmp_path, n=18))
    code, out, err = _cli(["validate", str(ok)], capsys)
    assert code == 0 and out.startswith("ok: "), err
    sim = fedsim.Simulation(fedsim.load_scenario(ok), device="cpu")
    assert np.array_equal(sim.data.y_train.numpy(), y)
    pixels = sim.data.x_train.numpy() * CIFAR10_STD[:, None, None] + CIFAR10_MEAN[:, None, None]
    np.testing.assert_allclose(pixels.reshape(18, 3072) * 255, x, atol=1e-3)
    assert len(sim.data.y_test) == 4
    too_many = tmp_path / "many.yaml"
    too_many.write_text(CIFAR.format(path=tmp_path, n=19))
    line = _validate_and_run_refuse(too_many, tmp_path, capsys)
    assert line == (
        f"{too_many}:2: clients.count: 19 clients for the 18 training samples of cifar10: "
        "every client needs at least one"
    )


def test_cifar_random_bytes_that_start_like_a_pickle(tmp_path, capsys):
    import numpy as np

    _cifar(tmp_path)
    batch = tmp_path / "data_batch_3"
    batch.write_bytes(b"\x80\x02" + np.random.default_rng(2).bytes(3000))
    path = tmp_path / "c.yaml"
    path.write_text(CIFAR.format(path=tmp_path, n=2))
    line = _validate_and_run_refuse(path, tmp_path, capsys)
    assert line.startswith(
        f"{path}:1: data.path: {batch} is not a CIFAR-10 batch (cannot unpickle it: "
    )


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("labels", " holds 4 images but 3 labels"),
        ("range", ": label 10 at index 0 is outside 0..9"),
        ("shape", ": data is not a list of 3×32×32 images with integer labels"),
    ],
)
def test_cifar_batch_contents_checked_by_validate(tmp_path, capsys, damage, expected):
    import pickle

    import numpy as np

    _cifar(tmp_path)
    batch = tmp_path / "test_batch"
    data = np.zeros((4, 3072 if damage != "shape" else 3000), dtype=np.uint8)
    labels = {"labels": [1, 2, 3], "range": [10, 1, 2, 3]}.get(damage, [1, 2, 3, 4])
    batch.write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    path = tmp_path / "c.yaml"
    path.write_text(CIFAR.format(path=tmp_path, n=2))
    line = _validate_and_run_refuse(path, tmp_path, capsys)
    assert line == f"{path}:1: data.path: {batch}{expected}"


class _Planted:
    """Unpickling this calls ``shutil.copyfile``: a batch must never be allowed to run code."""

    def __init__(self, source: Path, target: Path) -> None:
        self.source, self.target = source, target

    def __reduce__(self):
        import shutil

        return (shutil.copyfile, (str(self.source), str(self.target)))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    import pickle

    _cifar(tmp_path)
    planted = tmp_path / "planted"
    batch = tmp_path / "data_batch_1"
    payload = {b"data": _Planted(tmp_path / "test_batch", planted), b"labels": []}
    batch.write_bytes(pickle.dumps(payload, protocol=2))
    path = tmp_path / "c.yaml"
    path.write_text(CIFAR.format(path=tmp_path, n=2))
    line = _validate_and_run_refuse(path, tmp_path, capsys)
    assert line == (
        f"{path}:1: data.path: {batch} is not a CIFAR-10 batch (cannot unpickle it: refers to "
        "shutil.copyfile, which a batch never does)"
    )
    assert not planted.exists()


def test_out_under_a_file_is_one_line(tmp_path, capsys):
    """``--out`` (or ``fedsim.run(out=...)``) below a file: exit 2 naming both, nothing written."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    path = tmp_path / "s.yaml"
    path.write_text("stop: {time_s: 5}\nclients: {count: 4}\n")
    out = blocker / "run"
    expected = f"{out} cannot be created: {blocker} is a file (choose another --out)"
    assert _one_line_error(["run", str(path), "--out", str(out), "-q"], capsys) == expected
    with pytest.raises(fedsim.ScenarioError) as info:
        fedsim.run(path, out=out)
    assert str(info.value) == expected
    assert blocker.read_text() == "not a folder"


def test_a_task_partition_that_cannot_be_drawn_is_refused_by_validate(tmp_path, capsys):
    """Multi-task algorithms load each task's data with the task's own streams: validate draws
    those partitions too, and names the task's key."""
    path = tmp_path / "tasks.yaml"
    path.write_text(
        "clients: {count: 20}\n"
        "algorithm:\n"
        "  name: fedast\n"
        "  concurrency: 16\n"
        "  tasks:\n"
        "    - {name: a, data: {dataset: digits, partition: {kind: iid}}}\n"
        "    - name: b\n"
        "      data: {dataset: digits, partition: {kind: quantity_skew, min_samples: 100}}\n"
    )
    line = _validate_and_run_refuse(path, tmp_path, capsys)
    assert line == (
        f"{path}:8: algorithm.tasks.1.data.partition.min_samples: 20 clients × 100 samples need "
        "more than the 1438 training samples"
    )


def test_gz_images_shorter_than_their_header_are_caught_by_validate(tmp_path, capsys):
    """A gzipped IDX file's size is known only once decompressed: validate decompresses it (in
    chunks) and refuses it as the run does."""
    import gzip

    _mnist(tmp_path, gz=True)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(images, "rb") as f:
        payload = f.read()
    with gzip.open(images, "wb") as f:
        f.write(payload[:-100])
    path = tmp_path / "gz.yaml"
    path.write_text(MNIST.format(path=tmp_path))
    line = _validate_and_run_refuse(path, tmp_path, capsys)
    assert line == f"{path}:1: data.path: {images} holds 15596 bytes, its header says 15696"


def test_gz_damaged_inside_is_caught_by_validate(tmp_path, capsys):
    """A gzip stream whose end is cut (the header and first bytes intact) is one line too."""
    _mnist(tmp_path, gz=True)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-12])
    path = tmp_path / "gz.yaml"
    path.write_text(MNIST.format(path=tmp_path))
    line = _validate_and_run_refuse(path, tmp_path, capsys)
    assert line.startswith(f"{path}:1: data.path: {images} is not a valid gzip file (")


def _npz_with(path: Path, **arrays) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    base = {
        "x_train": rng.random((40, 3), dtype=np.float32),
        "y_train": np.arange(40) % 2,
        "x_test": rng.random((10, 3)),
        "y_test": np.arange(10) % 2,
    }
    np.savez(path, **{**base, **arrays})


def test_npz_samples_that_are_not_finite_are_caught_by_validate(tmp_path, capsys):
    """validate scans the samples of an .npz file (in chunks) for what the run refuses: NaN, and
    a float64 too large for float32 (the run's type)."""
    import numpy as np

    x = np.random.default_rng(1).random((40, 3))
    x[5, 1] = 1e300
    data = tmp_path / "d.npz"
    _npz_with(data, x_train=x)
    path = tmp_path / "npz.yaml"
    path.write_text(
        f"data: {{dataset: npz, path: {data}, partition: {{kind: iid}}}}\nclients: {{count: 4}}\n"
    )
    line = _validate_and_run_refuse(path, tmp_path, capsys)
    assert (
        line
        == f"{path}:1: data.path: {data}: x_train holds inf (not a finite number) at flat index 16"
    )


@pytest.mark.parametrize("order", ["C", "F"])
def test_npz_chunked_scan_finds_the_runs_first_bad_index(tmp_path, order):
    import numpy as np

    from fedsim.learning.user_data import _check_finite_npz

    x = np.random.default_rng(2).random((30, 7)).astype(np.float32)
    x[[4, 21, 29], [6, 0, 3]] = [np.nan, -np.inf, np.nan]
    data = tmp_path / "d.npz"
    _npz_with(data, x_test=np.asarray(x, order=order))
    first = int(np.flatnonzero(~np.isfinite(x.reshape(-1)))[0])  # the C-ordered copy's index
    for chunk in (1, 5, 64, 1 << 20):
        with pytest.raises(fedsim.ScenarioError) as info:
            _check_finite_npz(data, ("x_train", "x_test"), chunk=chunk)
        assert str(info.value).endswith(
            f"x_test holds nan (not a finite number) at flat index {first}"
        )


def test_a_test_fraction_that_rounds_to_no_test_sample(tmp_path, capsys):
    """round(0.0001 · 1797) = 0 test samples: the run could not evaluate (it crashed dividing by
    zero); validate and run refuse it with one line."""
    path = tmp_path / "tf.yaml"
    path.write_text("data: {test_fraction: 0.0001}\n")
    assert _validate_and_run_refuse(path, tmp_path, capsys) == (
        f"{path}:1: data.test_fraction: 0.0001 of the 1797 samples of digits rounds to no test "
        "sample (the run evaluates on them); raise test_fraction"
    )
    from fedsim.checks import check_runnable

    check_runnable(fedsim.load_scenario({"data": {"test_fraction": 0.001}}))  # 2 test samples


def test_label_flip_on_a_regression_dataset_is_refused_by_validate(tmp_path, capsys):
    path = tmp_path / "flip.yaml"
    path.write_text(
        "data: {dataset: synthetic_regression}\nmodel: {kind: linear}\n"
        "byzantine: {fraction: 0.2, attack: {name: label_flip}}\n"
    )
    assert _validate_and_run_refuse(path, tmp_path, capsys) == (
        f"{path}:3: byzantine.attack: label_flip needs a classification dataset"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "training: none\nalgorithm: {name: fedast, concurrency: 16, tasks: [{name: a}]}\n",
            "1: training: multi-task algorithms train real models: set training (or every "
            "task's training)",
        ),
        (
            "algorithm:\n  name: sync_st\n  tasks:\n"
            "    - {name: a, data: {dataset: synthetic_regression}, model: {kind: linear}, "
            "target_accuracy: 0.5}\n",
            "4: algorithm.tasks.0.target_accuracy: synthetic_regression is a regression "
            "dataset: accuracy is undefined; set target_accuracy: null and a target_loss",
        ),
    ],
)
def test_task_setups_the_run_refuses_are_refused_by_validate(tmp_path, capsys, text, expected):
    path = tmp_path / "tasks.yaml"
    path.write_text(text)
    assert _validate_and_run_refuse(path, tmp_path, capsys) == f"{path}:{expected}"


def test_data_describe_names_the_line_of_a_partition_it_cannot_draw(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(
        "clients: {count: 20}\ndata: {partition: {kind: quantity_skew, min_samples: 80}}\n"
    )
    assert _one_line_error(["data", "describe", str(path)], capsys) == (
        f"{path}:2: data.partition.min_samples: 20 clients × 80 samples need more than the 1438 "
        "training samples"
    )
