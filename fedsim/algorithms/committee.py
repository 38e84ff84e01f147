"""BRAIN/FRAIN's scoring committee: each node's validation split and the score of a proposal.

A proposal (a node's local model) is scored by a committee of nodes; an honest member's score is
the proposal's quality on that member's *validation split*, a held-out part of its local data that
it never trains on (the authors' code keeps 10 % of every node's data for this, ALGORITHMS.md
§3.6). A "disruptor" member ignores the model and reports ``U(0, 1)``. The committee's verdict is
the median of its members' scores, robust while fewer than half of the members lie.

Two metrics: ``accuracy`` (the authors' CNN runs; ties at the top logit split evenly, see
:func:`tie_split_correct`) and ``exp_loss`` = ``exp(−scale · mean loss)``
(their LLM variant; also what a regression dataset can use).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fedsim.learning.data import FederatedData
from fedsim.learning.models import loss_for
from fedsim.learning.params import ParamSpec

Metric = Literal["accuracy", "exp_loss"]


def tie_split_correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample: 1/(number of classes tied at the top) if the true class is among them, else 0.

    The expected accuracy of breaking ties at random. Plain ``argmax`` picks the first tied class,
    so a constant model (a nullifier's all-zero model) would score the share of class 0 in a
    member's split, which on a small non-IID split can pass θ; with ties split it scores 1/C.
    """
    top = logits.max(1, keepdim=True).values
    tied = logits == top
    hit = tied.gather(1, y.long().reshape(-1, 1)).squeeze(1)
    return hit.to(torch.float64) / tied.sum(1).to(torch.float64)


def committee_median(scores: Sequence[float]) -> float:
    """The committee's verdict: the median of the members' scores (mean of the middle two if even)."""
    return float(statistics.median(scores))


class CommitteeScorer:
    """Scores a flat model on the validation splits of a set of committee members, in one pass."""

    def __init__(
        self,
        module: nn.Module,
        spec: ParamSpec,
        data: FederatedData,
        validation: Sequence[np.ndarray],
        metric: Metric = "accuracy",
        loss_scale: float = 0.1,
    ) -> None:
        self.module, self.spec = module, spec
        self.metric = metric
        self.loss_scale = loss_scale
        self.loss_fn = loss_for(data.info)
        device = data.x_train.device
        self.rows = [torch.as_tensor(v, device=device, dtype=torch.long) for v in validation]
        self.x, self.y = data.x_train, data.y_train
        self.evaluations = 0

    @torch.no_grad()
    def member_scores(self, flat: torch.Tensor, members: Sequence[int]) -> list[float]:
        """Each member's score of the model ``flat`` (members with no validation rows: NaN)."""
        if not members:
            return []
        rows = [self.rows[m] for m in members]
        sizes = [len(r) for r in rows]
        idx = torch.cat(rows)
        logits = functional_call(self.module, self.spec.views(flat), (self.x[idx],))
        y = self.y[idx]
        if self.metric == "accuracy":
            per_sample = tie_split_correct(logits, y)
        else:
            per_sample = self.loss_fn(logits, y, reduction="none").reshape(len(y), -1).mean(1)
            per_sample = per_sample.to(torch.float64)
        seg = torch.repeat_interleave(
            torch.arange(len(members), device=idx.device),
            torch.as_tensor(sizes, device=idx.device),
        )
        sums = torch.zeros(len(members), dtype=torch.float64, device=idx.device)
        sums.index_add_(0, seg, per_sample)
        self.evaluations += 1
        out = []
        for s, n in zip(sums.tolist(), sizes, strict=True):
            if n == 0:
                out.append(math.nan)
            elif self.metric == "accuracy":
                out.append(s / n)
            else:
                out.append(math.exp(-self.loss_scale * s / n))
        return out
