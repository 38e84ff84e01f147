"""One place that lists every name a scenario may use, for ``fedsim list`` and error messages."""

from __future__ import annotations

import typing

from fedsim.algorithms import ALGORITHMS
from fedsim.learning.data import DATASETS
from fedsim.learning.models import MODELS
from fedsim.learning.partition import Partition
from fedsim.robust.aggregators import AGGREGATORS
from fedsim.robust.attacks import ATTACKS
from fedsim.timing import DELAY_LAWS, Heterogeneity


def _tags(annotated: object, key: str) -> list[str]:
    union = typing.get_args(annotated)[0]
    return [cls.model_fields[key].default for cls in typing.get_args(union)]


def catalogue() -> dict[str, list[str]]:
    return {
        "algorithms": list(ALGORITHMS),
        "datasets": list(DATASETS),
        "models": list(MODELS),
        "partitions": _tags(Partition, "kind"),
        "delay laws": list(DELAY_LAWS),
        "heterogeneity": _tags(Heterogeneity, "dist"),
        "aggregators": list(AGGREGATORS),
        "attacks": list(ATTACKS),
    }
