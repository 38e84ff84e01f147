"""The models a run keeps in ``RUN_DIR/models/``: state dicts that the user's module loads.

Each file is ``torch.save`` of a plain state dict (name → tensor, on the CPU), written under a
temporary name and renamed into place, so ``module.load_state_dict(torch.load(file))`` works and a
killed run never leaves half a file. The final model of each server is ``server-S.pt`` (a task's
``task-T-server-S.pt`` for multi-task algorithms); with ``output.save_models: every_eval`` each
evaluation adds ``eval-K-server-S.pt``, listed in ``evals.csv`` (``eval, sim_time, server, task,
version, file``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedsim.learning.params import ParamSpec


def model_file(server: int, task: int = 0, evaluation: int | None = None) -> str:
    """The file name of a server's (or a task's server's) model, final or at evaluation K."""
    stem = f"server-{server}" if task == 0 else f"task-{task}-server-{server}"
    return f"{stem}.pt" if evaluation is None else f"eval-{evaluation:05d}-{stem}.pt"


def state_dict(spec: ParamSpec, params: torch.Tensor) -> dict[str, torch.Tensor]:
    """Named CPU copies of a flat model vector (what ``load_state_dict`` takes; buffers included,
    integer buffers in their own type)."""
    return {name: t.cpu() for name, t in spec.state_dict(params).items()}


class ModelStore:
    """Writes a run's models; does nothing without a directory (``save=False``) or a model."""

    def __init__(self, folder: Path | None, spec: ParamSpec) -> None:
        self.folder = folder
        self.spec = spec
        self._index: list[dict[str, Any]] = []

    def _save(self, target: Any, name: str) -> bool:
        if self.folder is None or target.params is None or not target.params.numel():
            return False
        spec = getattr(target.evaluator, "spec", None) or self.spec  # a task may have its own model
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        tmp = path.with_name(f".{name}.tmp-{os.getpid()}")
        torch.save(state_dict(spec, target.params), tmp)
        os.replace(tmp, path)
        return True

    def save_eval(self, evaluation: int, sim_time: float, targets: Sequence[Any]) -> None:
        """Every evaluated model of this evaluation, and its line in ``evals.csv``."""
        for target in targets:
            name = model_file(target.server, target.task, evaluation)
            if self._save(target, name):
                self._index.append(
                    {
                        "eval": evaluation,
                        "sim_time": sim_time,
                        "server": target.server,
                        "task": target.task,
                        "version": target.version,
                        "file": name,
                    }
                )
        if self._index and self.folder is not None:
            tmp = self.folder / f".evals.csv.tmp-{os.getpid()}"
            with tmp.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(self._index[0]))
                writer.writeheader()
                writer.writerows(self._index)
            os.replace(tmp, self.folder / "evals.csv")

    def save_final(self, targets: Sequence[Any]) -> list[str]:
        """Every server's (and task's) last model; the files written, for ``summary.json``."""
        return [
            f"models/{name}"
            for target in targets
            if self._save(target, name := model_file(target.server, target.task))
        ]
