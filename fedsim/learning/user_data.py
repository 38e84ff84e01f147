"""A user's own data: an ``.npz`` file, an imported loader, or arrays passed from Python.

All three give the same four arrays, ``x_train, y_train, x_test, y_test``, and optionally
``owner_train`` (the client each training sample belongs to, read by the ``natural`` partition).
Integer labels make a classification task (``max label + 1`` classes unless ``n_classes`` says
more), float labels a regression task. Every check here raises a one-line
:class:`~fedsim.errors.ScenarioError` naming the key the data came from (``data.path`` for an npz
file, ``data.target`` for an imported loader, ``data`` for arrays passed to ``fedsim.run``).

An npz file is checked from its headers (shapes and types of every array) and its labels and
owners, without reading the samples; it is read in full, with ``allow_pickle=False``, only to run.
An imported loader is called once: its arrays are kept until the run takes them.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.errors import ScenarioError
from fedsim.imports import describe_error, resolve_target, target_file

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
"""The arrays every user dataset has."""
OWNERS = "owner_train"
"""The optional array of the client each training sample belongs to."""

_IMPORT_CACHE: OrderedDict[tuple[Any, ...], Dataset] = OrderedDict()
_IMPORT_CACHE_SIZE = 2


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset held in memory: ``fedsim.run(scenario, data=fedsim.Dataset(...))``.

    Arrays are NumPy arrays or torch tensors (any device): ``x_*`` of shape ``[n, ...]`` (one row
    per sample, numeric), ``y_*`` of shape ``[n]``: integers for classification, floats for
    regression. ``owner_train`` (optional, integers in ``0 .. clients.count - 1``) is the client
    each training sample belongs to, used by ``partition: {kind: natural}``. ``n_classes``
    (optional) sets the number of classes when some never occur in the labels.

    >>> import numpy as np
    >>> ds = Dataset(x_train=np.zeros((4, 2)), y_train=np.array([0, 1, 0, 1]),
    ...              x_test=np.zeros((2, 2)), y_test=np.array([1, 0]))
    >>> ds.info().n_classes, ds.info().task
    (2, 'classification')
    """

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    owner_train: Any = None
    n_classes: int | None = None

    def info(self, key: str = "data"):
        """The :class:`~fedsim.learning.data.DatasetInfo` of these arrays (checked)."""
        return check_dataset(self, key=key)[1]


_IN_MEMORY: ContextVar[Dataset | None] = ContextVar("fedsim_in_memory_data", default=None)


@contextmanager
def using_data(data: Any) -> Iterator[Dataset | None]:
    """Within the block, ``data: {dataset: memory}`` means ``data`` (what ``fedsim.run(data=...)``
    was given: a :class:`Dataset`, or a dict or object with the same arrays). None: no change."""
    if data is None:
        yield None
        return
    dataset = as_dataset(data, key="data", where="fedsim.run(data=...)")
    token = _IN_MEMORY.set(dataset)
    try:
        yield dataset
    finally:
        _IN_MEMORY.reset(token)


def in_memory_data() -> Dataset | None:
    """The arrays of the enclosing :func:`using_data` block, or None."""
    return _IN_MEMORY.get()


# ---------------------------------------------------------------------------------------------------
# Checks shared by the three sources: on shapes and dtypes, then on labels and owners


def _kind(dtype: np.dtype) -> str:
    return dtype.kind if dtype.fields is None and dtype.subdtype is None else "V"


def _check_layout(
    shapes: Mapping[str, tuple[int, ...]],
    dtypes: Mapping[str, np.dtype],
    *,
    key: str,
    where: str,
) -> str:
    """Shapes and types agree; return the task (``classification`` or ``regression``)."""
    missing = [name for name in ARRAYS if name not in shapes]
    if missing:
        present = ", ".join(sorted(shapes)) or "no arrays"
        raise ScenarioError(
            f"{where} has no {', '.join(missing)} (it holds {present}; needed: "
            f"{', '.join(ARRAYS)}, optionally {OWNERS})",
            path=key,
        )
    for name in (*ARRAYS, OWNERS):
        if name not in dtypes:
            continue
        dtype = dtypes[name]
        if dtype.hasobject:
            raise ScenarioError(
                f"{where}: {name} is an array of Python objects; save numbers (object arrays "
                "are refused: they would need pickle)",
                path=key,
            )
        if _kind(dtype) not in "biuf":
            raise ScenarioError(f"{where}: {name} has type {dtype}, expected numbers", path=key)
    for split in ("train", "test"):
        x, y = shapes[f"x_{split}"], shapes[f"y_{split}"]
        if len(x) == 0:
            raise ScenarioError(f"{where}: x_{split} is a scalar, not one row per sample", path=key)
        if len(y) != 1 and not (len(y) == 2 and y[1] == 1):
            raise ScenarioError(
                f"{where}: y_{split} has shape {tuple(y)}, expected one label per sample [n]",
                path=key,
            )
        if x[0] != y[0]:
            raise ScenarioError(
                f"{where}: x_{split} has {x[0]} samples but y_{split} has {y[0]}", path=key
            )
        if x[0] == 0:
            raise ScenarioError(f"{where}: x_{split} holds no samples", path=key)
    if tuple(shapes["x_train"][1:]) != tuple(shapes["x_test"][1:]):
        raise ScenarioError(
            f"{where}: x_train samples have shape {tuple(shapes['x_train'][1:])} but x_test "
            f"samples {tuple(shapes['x_test'][1:])}",
            path=key,
        )
    kinds = {split: _kind(dtypes[f"y_{split}"]) for split in ("train", "test")}
    tasks = {s: "regression" if k == "f" else "classification" for s, k in kinds.items()}
    if kinds["train"] == "b" or kinds["test"] == "b":
        raise ScenarioError(
            f"{where}: labels are booleans; save them as integers 0/1 (classification) or "
            "floats (regression)",
            path=key,
        )
    if tasks["train"] != tasks["test"]:
        raise ScenarioError(
            f"{where}: y_train has type {dtypes['y_train']} but y_test {dtypes['y_test']}: "
            "integer labels for classification, floats for regression, in both",
            path=key,
        )
    if OWNERS in shapes:
        owners = shapes[OWNERS]
        if _kind(dtypes[OWNERS]) not in "iu":
            raise ScenarioError(
                f"{where}: {OWNERS} has type {dtypes[OWNERS]}, expected integer client indices",
                path=key,
            )
        if len(owners) != 1 or owners[0] != shapes["x_train"][0]:
            raise ScenarioError(
                f"{where}: {OWNERS} has shape {tuple(owners)}, expected one client index per "
                f"training sample [{shapes['x_train'][0]}]",
                path=key,
            )
    return tasks["train"]


def _n_classes(
    y_train: np.ndarray, y_test: np.ndarray, n_classes: int | None, *, key: str, where: str
) -> int:
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        if y.size and int(y.min()) < 0:
            i = int(np.argmin(y))
            raise ScenarioError(
                f"{where}: {name} holds label {y[i]} at index {i}; classes are 0, 1, 2, ...",
                path=key,
            )
    top = max(int(y_train.max(initial=0)), int(y_test.max(initial=0)))
    if n_classes is None:
        if top < 1:
            raise ScenarioError(
                f"{where}: every label is 0, so there is one class; classification needs two "
                "(or use float labels for regression)",
                path=key,
            )
        return top + 1
    if top >= n_classes:
        raise ScenarioError(
            f"{where}: label {top} is outside 0..{n_classes - 1} (n_classes is {n_classes})",
            path=key,
        )
    return n_classes


def _check_finite(name: str, a: np.ndarray, *, key: str, where: str) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        i = int(np.flatnonzero(~np.isfinite(a.reshape(-1)))[0])
        _not_finite(name, a.reshape(-1)[i], i, key=key, where=where)


def _not_finite(name: str, value: Any, index: int, *, key: str, where: str) -> None:
    raise ScenarioError(
        f"{where}: {name} holds {value} (not a finite number) at flat index {index}", path=key
    )


def check_owners(owners: np.ndarray, n_clients: int, *, key: str, where: str) -> None:
    """Every owner is a client (``0 .. n_clients - 1``) and every client owns a sample."""
    if owners.size and (int(owners.min()) < 0 or int(owners.max()) >= n_clients):
        bad = int(owners.min()) if int(owners.min()) < 0 else int(owners.max())
        raise ScenarioError(
            f"{where}: {OWNERS} names client {bad}, but clients are 0..{n_clients - 1} "
            f"(clients.count is {n_clients})",
            path=key,
        )
    held = np.unique(owners)
    if len(held) < n_clients:
        missing = int(np.setdiff1d(np.arange(n_clients), held)[0])
        raise ScenarioError(
            f"{where}: {OWNERS} has {len(held)} distinct owners for {n_clients} clients (client "
            f"{missing} owns no sample); the natural partition needs one owner per client",
            path=key,
        )


def _info(
    name: str,
    x_shape: tuple[int, ...],
    task: str,
    n_classes: int,
    has_owners: bool,
):
    from fedsim.learning.data import DatasetInfo

    input_shape = tuple(int(d) for d in x_shape[1:]) or (1,)
    return DatasetInfo(
        name,
        int(np.prod(input_shape)),
        n_classes if task == "classification" else 1,
        input_shape,
        task=task,  # type: ignore[arg-type]
        has_owners=has_owners,
    )


# ---------------------------------------------------------------------------------------------------
# In-memory datasets (the form every source is turned into)


def _to_numpy(value: Any, name: str, *, key: str, where: str) -> np.ndarray:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu()
            if tensor.dtype == torch.bfloat16:
                tensor = tensor.float()
            return tensor.numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if isinstance(value, np.ndarray):
        return value
    if value is None:
        raise ScenarioError(f"{where}: {name} is None", path=key)
    try:
        return np.asarray(value)
    except Exception as exc:
        raise ScenarioError(
            f"{where}: {name} is a {type(value).__name__}, not an array ({describe_error(exc)})",
            path=key,
        ) from None


def check_dataset(
    dataset: Dataset,
    *,
    key: str = "data",
    where: str = "the dataset",
    n_classes: int | None = None,
    name: str = "memory",
) -> tuple[Dataset, Any]:
    """The dataset as checked NumPy arrays (x float32, labels int64 or float32, owners int64)
    and its info; a one-line ScenarioError at ``key`` for anything wrong."""
    arrays = {n: _to_numpy(getattr(dataset, n), n, key=key, where=where) for n in ARRAYS}
    if dataset.owner_train is not None:
        arrays[OWNERS] = _to_numpy(dataset.owner_train, OWNERS, key=key, where=where)
    arrays = {
        n: a.reshape(len(a), 1) if a.ndim == 1 and n.startswith("x_") else a
        for n, a in arrays.items()
    }
    task = _check_layout(
        {n: a.shape for n, a in arrays.items()},
        {n: a.dtype for n, a in arrays.items()},
        key=key,
        where=where,
    )
    y_train, y_test = arrays["y_train"].reshape(-1), arrays["y_test"].reshape(-1)
    n_classes = dataset.n_classes if dataset.n_classes is not None else n_classes
    if task == "classification":
        classes = _n_classes(y_train, y_test, n_classes, key=key, where=where)
        y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    else:
        classes = 1
        y_train, y_test = y_train.astype(np.float32), y_test.astype(np.float32)
        _check_finite("y_train", y_train, key=key, where=where)
        _check_finite("y_test", y_test, key=key, where=where)
    x_train = np.ascontiguousarray(arrays["x_train"], dtype=np.float32)
    x_test = np.ascontiguousarray(arrays["x_test"], dtype=np.float32)
    _check_finite("x_train", x_train, key=key, where=where)
    _check_finite("x_test", x_test, key=key, where=where)
    owners = arrays[OWNERS].astype(np.int64) if OWNERS in arrays else None
    checked = Dataset(
        x_train, y_train, x_test, y_test, owners, classes if task == "classification" else None
    )
    return checked, _info(name, x_train.shape, task, classes, owners is not None)


# ---------------------------------------------------------------------------------------------------
# npz files


def resolve_path(path: str | Path, base_dir: str | Path | None = None) -> Path:
    """``path`` itself when absolute, else relative to ``base_dir`` (the scenario file's folder)
    when given, else to the working directory."""
    file = Path(path).expanduser()
    return file if file.is_absolute() or base_dir is None else Path(base_dir) / file


def _open_zip(file: Path) -> zipfile.ZipFile:
    where = str(file)
    if not file.exists():
        raise ScenarioError(f"no such file {file}", path="data.path", value=where)
    if file.is_dir():
        raise ScenarioError(
            f"{file} is a folder; dataset npz reads one .npz file", path="data.path", value=where
        )
    try:
        return zipfile.ZipFile(file)
    except zipfile.BadZipFile:
        raise ScenarioError(
            f"{file} is not an .npz file (not a zip archive; write it with numpy.savez)",
            path="data.path",
            value=where,
        ) from None
    except OSError as exc:
        raise ScenarioError(
            f"cannot read {file}: {exc.strerror or exc}", path="data.path", value=where
        ) from None


def npz_headers(file: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and type of every array in an .npz file, read from the array headers only."""
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with _open_zip(file) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            name = member[: -len(".npy")]
            try:
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
                    else:  # 3.0: only for structured types with non-ASCII field names
                        shape, dtype = (), np.dtype([("field", "O")])
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise ScenarioError(
                    f"{file}: {name} is not a readable NumPy array ({describe_error(exc)})",
                    path="data.path",
                    value=str(file),
                ) from None
            headers[name] = (tuple(int(d) for d in shape), dtype)
    return headers


def _check_finite_npz(file: Path, names: Sequence[str], chunk: int = 1 << 20) -> None:
    """The float arrays ``names`` of an .npz file hold finite numbers once cast to float32, as
    the run casts them (1e300 is inf there): read in chunks of ``chunk`` values, never whole."""
    with _open_zip(file) as archive:
        for name in names:
            if f"{name}.npy" not in archive.namelist():
                continue
            with archive.open(f"{name}.npy") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0
                if version == (2, 0):
                    read = np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                if dtype.kind != "f":
                    continue
                start, first = 0, None  # first: (index in the C-ordered copy, value)
                while first is None or fortran:
                    block = f.read(chunk * dtype.itemsize)
                    if not block:
                        break
                    with np.errstate(over="ignore"):  # overflow to inf is what is looked for
                        values = np.frombuffer(block, dtype, len(block) // dtype.itemsize)
                        values = values.astype(np.float32)
                    bad = np.flatnonzero(~np.isfinite(values))
                    if fortran and bad.size:  # the run reports the first in C order
                        at = np.ravel_multi_index(np.unravel_index(start + bad, shape, "F"), shape)
                        j = int(np.argmin(at))
                        if first is None or at[j] < first[0]:
                            first = (int(at[j]), values[bad[j]])
                    elif bad.size:
                        first = (start + int(bad[0]), values[bad[0]])
                    start += len(values)
                if first is not None:
                    _not_finite(name, first[1], first[0], key="data.path", where=str(file))


def read_npz_arrays(file: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    with _open_zip(file):
        pass  # the same one-line errors as the header check for a missing or broken file
    try:
        with np.load(file, allow_pickle=False) as npz:
            return {n: npz[n] for n in names if n in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ScenarioError(
            f"{file}: cannot read it ({describe_error(exc)})", path="data.path", value=str(file)
        ) from None


def check_npz(
    path: str | Path,
    *,
    n_classes: int | None = None,
    base_dir: str | Path | None = None,
    n_clients: int | None = None,
):
    """Check an .npz dataset from its headers, labels and owners (not its samples); return
    ``(info, n_train)``. ``n_clients`` (given for the natural partition) checks the owners."""
    file = resolve_path(path, base_dir)
    headers = npz_headers(file)
    where = str(file)
    shapes = {n: s for n, (s, _d) in headers.items()}
    for name in ("x_train", "x_test"):
        if name in shapes and len(shapes[name]) == 1:
            shapes[name] = (shapes[name][0], 1)
    task = _check_layout(
        shapes, {n: d for n, (_s, d) in headers.items()}, key="data.path", where=where
    )
    _check_finite_npz(file, ("x_train", "x_test"))
    wanted = ["y_train", "y_test"] + ([OWNERS] if OWNERS in headers else [])
    small = read_npz_arrays(file, wanted)
    y_train, y_test = small["y_train"].reshape(-1), small["y_test"].reshape(-1)
    if task == "classification":
        classes = _n_classes(y_train, y_test, n_classes, key="data.path", where=where)
    else:
        classes = 1
        _check_finite("y_train", y_train, key="data.path", where=where)
        _check_finite("y_test", y_test, key="data.path", where=where)
    if n_clients is not None:
        if OWNERS not in small:
            raise ScenarioError(
                f"{where} has no {OWNERS}: the natural partition needs the client of every "
                "training sample",
                path="data.path",
            )
        check_owners(small[OWNERS], n_clients, key="data.path", where=where)
    info = _info("npz", shapes["x_train"], task, classes, OWNERS in headers)
    return info, shapes["x_train"][0]


def load_npz(
    path: str | Path,
    *,
    n_classes: int | None = None,
    base_dir: str | Path | None = None,
):
    """An .npz dataset read in full (``allow_pickle=False``) and checked: ``(Dataset, info)``."""
    file = resolve_path(path, base_dir)
    check_npz(file, n_classes=n_classes)
    arrays = read_npz_arrays(file, (*ARRAYS, OWNERS))
    dataset = Dataset(**arrays, n_classes=n_classes)
    return check_dataset(dataset, key="data.path", where=str(file), n_classes=n_classes, name="npz")


# ---------------------------------------------------------------------------------------------------
# Imported loaders


def _materialise(ds: Any, split: str, *, key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A map-style torch Dataset of ``(x, y)`` pairs as two arrays."""
    import torch

    tensors = getattr(ds, "tensors", None)
    if isinstance(ds, torch.utils.data.TensorDataset) and tensors and len(tensors) == 2:
        return tensors[0], tensors[1]  # type: ignore[return-value]
    try:
        n = len(ds)
    except TypeError:
        raise ScenarioError(
            f"{where}: the {split} dataset ({type(ds).__name__}) has no len(); return a "
            "map-style torch Dataset",
            path=key,
        ) from None
    xs, ys = [], []
    for i in range(n):
        try:
            item = ds[i]
        except Exception as exc:
            raise ScenarioError(
                f"{where}: the {split} dataset's item {i} raised {describe_error(exc)}", path=key
            ) from None
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ScenarioError(
                f"{where}: the {split} dataset's item {i} is a {type(item).__name__}, expected "
                "an (x, y) pair",
                path=key,
            )
        xs.append(torch.as_tensor(item[0]))
        ys.append(torch.as_tensor(item[1]))
    if not xs:
        raise ScenarioError(f"{where}: the {split} dataset is empty", path=key)
    try:
        return torch.stack(xs), torch.stack(ys).reshape(n)
    except RuntimeError as exc:
        raise ScenarioError(
            f"{where}: the {split} dataset's samples differ in shape ({describe_error(exc)})",
            path=key,
        ) from None


def as_dataset(obj: Any, *, key: str, where: str) -> Dataset:
    """What a loader returned as a :class:`Dataset`: a Dataset, a mapping or an object with
    ``x_train, y_train, x_test, y_test`` (and optionally ``owner_train``), or two map-style torch
    Datasets of ``(x, y)`` pairs, as a ``(train, test)`` pair or a mapping ``{train:, test:}``."""
    import torch

    if isinstance(obj, Dataset):
        return obj
    if isinstance(obj, Mapping) and set(obj) & set(ARRAYS) and not set(obj) >= set(ARRAYS):
        missing = [k for k in ARRAYS if k not in obj]
        raise ScenarioError(
            f"{where} returned a dict that has no {', '.join(missing)} (it holds "
            f"{', '.join(map(str, obj))}; needed: {', '.join(ARRAYS)}, optionally {OWNERS})",
            path=key,
        )
    if isinstance(obj, Mapping) and set(obj) >= set(ARRAYS):
        extra = {k: obj[k] for k in (OWNERS, "n_classes") if k in obj}
        return Dataset(*(obj[k] for k in ARRAYS), **extra)
    if all(hasattr(obj, k) for k in ARRAYS) and not isinstance(obj, Mapping):
        return Dataset(
            *(getattr(obj, k) for k in ARRAYS),
            owner_train=getattr(obj, OWNERS, None),
            n_classes=getattr(obj, "n_classes", None),
        )
    pair = None
    if isinstance(obj, Mapping) and set(obj) == {"train", "test"}:
        pair = (obj["train"], obj["test"])
    elif isinstance(obj, (tuple, list)) and len(obj) == 2:
        pair = tuple(obj)
    if pair is not None and all(isinstance(p, torch.utils.data.Dataset) for p in pair):
        (x_train, y_train), (x_test, y_test) = (
            _materialise(ds, split, key=key, where=where)
            for ds, split in zip(pair, ("train", "test"), strict=True)
        )
        return Dataset(x_train, y_train, x_test, y_test)
    raise ScenarioError(
        f"{where} returned a {type(obj).__name__}; expected a dict or an object with "
        f"{', '.join(ARRAYS)} (optionally {OWNERS}), or (train, test) torch Datasets of (x, y) "
        "pairs",
        path=key,
    )


def _cache_key(target: str, kwargs: Mapping[str, Any], base_dir: str | Path | None) -> tuple:
    file = target_file(target, key="data.target", base_dir=base_dir)
    mtime = file.stat().st_mtime_ns if file is not None and file.is_file() else None
    frozen = json.dumps(dict(kwargs), sort_keys=True, default=repr)
    return (target, frozen, str(Path(base_dir).resolve()) if base_dir else None, mtime)


def import_dataset(
    target: str,
    kwargs: Mapping[str, Any] | None = None,
    *,
    n_classes: int | None = None,
    base_dir: str | Path | None = None,
    take: bool = False,
):
    """Call the loader ``target`` names with ``kwargs`` and check what it returns:
    ``(Dataset, info)``. The checked arrays are kept (for the same target and kwargs) so that
    checking and then loading calls the loader once; ``take=True`` (the run) removes them."""
    kwargs = dict(kwargs or {})
    cache_key = (*_cache_key(target, kwargs, base_dir), n_classes)
    cached = _IMPORT_CACHE.pop(cache_key, None) if take else _IMPORT_CACHE.get(cache_key)
    if cached is None:
        loader = resolve_target(target, key="data.target", base_dir=base_dir)
        where = repr(target)
        if not callable(loader):
            raise ScenarioError(
                f"{where} is a {type(loader).__name__}, not a function", path="data.target"
            )
        try:
            returned = loader(**kwargs)
        except Exception as exc:
            raise ScenarioError(
                f"{where} raised {describe_error(exc)}", path="data.target"
            ) from None
        dataset = as_dataset(returned, key="data.target", where=where)
        cached = check_dataset(
            dataset, key="data.target", where=where, n_classes=n_classes, name="import"
        )[0]
        if not take:
            _IMPORT_CACHE[cache_key] = cached
            while len(_IMPORT_CACHE) > _IMPORT_CACHE_SIZE:
                _IMPORT_CACHE.popitem(last=False)
    return check_dataset(cached, key="data.target", where=repr(target), name="import")
