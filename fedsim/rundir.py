"""Run directories: which ones fedsim may write into, a lock against two runs at once, clearing.

The rules keep a user's data safe. A directory that is not a fedsim run directory (and not empty) is
never written into. A directory that holds a run is refused unless the caller asks to overwrite it
(after everything was built and validated) or to resume it. While a run writes, a lock file with its
pid keeps a second run out; a lock left by a killed run (its pid gone) is taken over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedsim.errors import ScenarioError, SimulationError

MARKER = ".fedsim-run"
"""Written first into every run directory: fedsim's version and the scenario hash."""
LOCK = ".fedsim-lock"
"""Held while a run writes: the owner's pid."""
TRACE_FILES = ("events.parquet", "evals.parquet")
CHECKPOINT = "checkpoint.pkl"
WORLD_FILES = ("clients.parquet", "availability.parquet", "topology.parquet", "mixing.npy")
"""What the run drew about its clients and servers, written at its end (:mod:`fedsim.result`)."""
RUN_FILES = (*TRACE_FILES, "summary.json", "scenario.yaml", MARKER, CHECKPOINT, *WORLD_FILES)
RUN_DIRS = ("plots", "models", *(f"{name}.parts" for name in TRACE_FILES))
SaveModels = Literal["final", "none", "every_eval"]
"""``output.save_models``: which models a run keeps in ``RUN_DIR/models/``."""


FULL_DISK = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""A write failed for want of room: the disk is full, a quota is used up, or a file-size limit
(``ulimit -f``) is reached; all three stop a run the same way."""


class DiskFullError(SimulationError):
    """The disk filled while a run wrote ``path``: the run stops there, keeping what it had written
    (exit status 1)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


@contextlib.contextmanager
def writing(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """Turn a full disk while writing ``path`` (through the temporary file ``tmp``, removed then)
    into a :class:`DiskFullError` naming it; other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in FULL_DISK:
            raise
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        reason = os.strerror(exc.errno)
        raise DiskFullError(f"disk full: could not write {path} ({reason})", path) from None


def _has_run_files(path: Path) -> bool:
    """A run directory written before the marker existed: scenario.yaml beside a trace or summary."""
    if not (path / "scenario.yaml").is_file():
        return False
    return any((path / name).exists() for name in (*TRACE_FILES, "summary.json", *RUN_DIRS[1:]))


def state(path: Path) -> str:
    """``missing``, ``empty``, ``run`` (a fedsim run directory) or ``foreign`` (anything else)."""
    if not path.exists():
        return "missing"
    if not path.is_dir():
        return "foreign"
    if (path / MARKER).is_file() or _has_run_files(path):
        return "run"
    if any(name != LOCK for name in os.listdir(path)):
        return "foreign"
    return "empty"


def check(path: Path, *, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse (ScenarioError, before anything is built) a directory this run may not write into."""
    found = state(path)
    owner = lock_owner(path) if found in ("run", "empty") else None
    if owner is not None:
        raise ScenarioError(f"{path} is in use by another fedsim run (pid {owner})")
    if found == "foreign":
        what = "a file" if path.exists() and not path.is_dir() else "not a fedsim run directory"
        raise ScenarioError(f"{path} is {what}; fedsim never writes into it (choose another --out)")
    if found == "run" and not (overwrite or resume):
        raise ScenarioError(
            f"{path} already holds a run; pass --overwrite to replace it, --resume to continue "
            "it, or choose another --out"
        )
    if resume and found != "run":
        raise ScenarioError(f"nothing to resume: {path} holds no fedsim run")
    above = next((p for p in path.parents if p.exists()), None)
    if not path.exists() and above is not None and not above.is_dir():
        raise ScenarioError(f"{path} cannot be created: {above} is a file (choose another --out)")


def read_marker(path: Path) -> dict[str, Any]:
    """The marker's fields ({} for a run written before markers, or an unreadable marker)."""
    try:
        data = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def lock_owner(path: Path) -> int | None:
    """The pid of the live run holding ``path``'s lock, or None (no lock, or its owner is gone)."""
    try:
        pid = int((path / LOCK).read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, owned by another user
        return pid
    return pid


@dataclass
class RunDirLock:
    """The claim of one run on its directory; :meth:`release` when the run's files are complete."""

    path: Path

    def release(self) -> None:
        with contextlib.suppress(OSError):
            lock = self.path / LOCK
            if lock.read_text(encoding="utf-8").split()[0] == str(os.getpid()):
                lock.unlink()


def claim(
    path: Path,
    *,
    scenario_hash: str,
    overwrite: bool = False,
    resume: bool = False,
    from_checkpoint: bool = False,
) -> RunDirLock:
    """Lock ``path``, re-check it under the lock, clear a previous run's files, write the marker.

    Call this only after the run was built and validated: an ``--overwrite`` that fails earlier
    leaves the previous run untouched.
    """
    check(path, overwrite=overwrite, resume=resume)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScenarioError(f"cannot create {path}: {exc.strerror or exc}") from None
    _take_lock(path)
    lock = RunDirLock(path)
    try:
        check(path, overwrite=overwrite, resume=resume)  # another run may have finished meanwhile
        if from_checkpoint:  # keep the parts and the checkpoint; the finished files are redone
            for name in (*TRACE_FILES, "summary.json", *WORLD_FILES):
                (path / name).unlink(missing_ok=True)
            shutil.rmtree(path / "plots", ignore_errors=True)
            return lock
        clear(path)
        from fedsim import __version__

        marker = {
            "fedsim": __version__,
            "scenario_hash": scenario_hash,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pid": os.getpid(),
        }
        with writing(path / MARKER):
            (path / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        lock.release()
        raise
    return lock


def _take_lock(path: Path) -> None:
    lock = path / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = lock_owner(path)
            if owner is not None:
                raise ScenarioError(
                    f"{path} is in use by another fedsim run (pid {owner})"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # left by a run that was killed
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
        return
    raise ScenarioError(f"{path} is in use by another fedsim run (its lock file {lock} came back)")


def clear(path: Path) -> None:
    """Remove a previous run's files from ``path`` (only fedsim's own names, nothing else)."""
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(path / name, ignore_errors=True)
    for leftover in path.glob(".*.tmp-*"):  # a temporary file of a killed run's write
        leftover.unlink(missing_ok=True)
