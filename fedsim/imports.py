"""Resolve a user's ``target`` string to the Python object it names.

A target is ``module.path:attr`` (a module importable from ``sys.path``) or ``path/to/file.py:attr``
(a Python file, relative to ``base_dir`` when given, else to the working directory). ``attr`` may be
dotted (``nets:Builders.small``). Every failure is a one-line :class:`ScenarioError` naming the
scenario key that holds the target, so a model, dataset, algorithm or aggregator target reads the
same way when it is wrong.

>>> resolve_target("math:sqrt", key="data.target")(4.0)
2.0
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from fedsim.errors import ScenarioError

__all__ = ["describe_error", "resolve_target", "split_target", "target_file"]


def split_target(target: str, *, key: str) -> tuple[str, str]:
    """``"pkg.mod:attr"`` → ``("pkg.mod", "attr")``; refuse a target without exactly one colon
    separating two non-empty parts (a Windows drive letter ``C:`` before a ``.py`` file is kept)."""
    text = str(target).strip()
    head, sep, attr = text.rpartition(":")
    if not sep or not head or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise ScenarioError(
            f"{text!r} is not a target: write module.path:name or path/to/file.py:name",
            path=key,
            value=text,
        )
    return head, attr


def target_file(target: str, *, key: str, base_dir: str | Path | None = None) -> Path | None:
    """The Python file a ``file.py:attr`` target names (resolved against ``base_dir``), or None
    for a ``module:attr`` target."""
    head, _attr = split_target(target, key=key)
    if not head.endswith(".py"):
        return None
    file = Path(head).expanduser()
    if not file.is_absolute() and base_dir is not None:
        file = Path(base_dir) / file
    return file


def _import_file(file: Path, *, key: str, target: str) -> ModuleType:
    if not file.is_file():
        raise ScenarioError(f"{target!r}: no such file {file}", path=key, value=target)
    resolved = file.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    name = f"fedsim_user_{resolved.stem}_{digest}"
    mtime = resolved.stat().st_mtime_ns
    cached = sys.modules.get(name)
    if cached is not None and getattr(cached, "__fedsim_mtime__", None) == mtime:
        return cached
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
        raise ScenarioError(f"{target!r}: cannot import {file}", path=key, value=target)
    module = importlib.util.module_from_spec(spec)
    module.__fedsim_mtime__ = mtime  # type: ignore[attr-defined]
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ScenarioError(
            f"{target!r}: importing {file} raised {describe_error(exc)}", path=key, value=target
        ) from None
    return module


def _import_module(name: str, *, key: str, target: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(f"{exc.name}.")):
            raise ScenarioError(
                f"{target!r}: no module named {exc.name!r} (is it installed, or on sys.path?)",
                path=key,
                value=target,
            ) from None
        raise ScenarioError(
            f"{target!r}: importing {name} raised {describe_error(exc)}", path=key, value=target
        ) from None
    except Exception as exc:
        raise ScenarioError(
            f"{target!r}: importing {name} raised {describe_error(exc)}", path=key, value=target
        ) from None


def resolve_target(target: str, *, key: str, base_dir: str | Path | None = None) -> Any:
    """The object ``target`` names; a one-line ScenarioError at ``key`` when it cannot be found."""
    head, attr = split_target(target, key=key)
    file = target_file(target, key=key, base_dir=base_dir)
    if file is not None:
        module = _import_file(file, key=key, target=target)
    else:
        module = _import_module(head, key=key, target=target)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ScenarioError(
                f"{target!r}: {head} has no attribute {attr!r}", path=key, value=target
            ) from None
        except Exception as exc:  # a property or module __getattr__ that raises
            raise ScenarioError(
                f"{target!r}: reading {attr} raised {describe_error(exc)}", path=key, value=target
            ) from None
    return obj


def describe_error(exc: BaseException) -> str:
    """``ValueError: the message`` on one line."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
