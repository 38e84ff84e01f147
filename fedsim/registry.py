"""One place that lists every name a scenario may use, for ``fedsim list`` and error messages."""

from __future__ import annotations

import typing

from fedsim.algorithms.server_opt import ServerOptName
from fedsim.algorithms.staleness import StalenessConfig
from fedsim.learning.data import DATASETS
from fedsim.learning.models import MODELS
from fedsim.learning.partition import Partition
from fedsim.robust.preaggregators import PRE_AGGREGATORS
from fedsim.timing import DELAY_LAWS, Heterogeneity
from fedsim.topology import GraphConfig, MixingConfig


def _tags(annotated: object, key: str) -> list[str]:
    union = typing.get_args(annotated)[0]
    return [cls.model_fields[key].default for cls in typing.get_args(union)]


def _named(sources: dict[str, str]) -> list[str]:
    """Names, a plugin's followed by where it comes from: ``my_agg (entry point my-dist)``."""
    return [
        name if source == "fedsim" else f"{name} ({source})" for name, source in sources.items()
    ]


def catalogue() -> dict[str, list[str]]:
    """Every name a scenario may use, by kind; a plugin's name says where it comes from."""
    from fedsim.plugins import (
        aggregator_sources,
        attack_sources,
        catalogue_sources,
        load_entry_points,
    )

    load_entry_points()
    return {
        "algorithms": _named(catalogue_sources()),
        "datasets": list(DATASETS),
        "models": list(MODELS),
        "partitions": _tags(Partition, "kind"),
        "delay laws": list(DELAY_LAWS),
        "heterogeneity": _tags(Heterogeneity, "dist"),
        "aggregators": _named(aggregator_sources()),
        "pre-aggregators": list(PRE_AGGREGATORS),
        "attacks": _named(attack_sources()),
        "graphs": _tags(GraphConfig, "kind"),
        "mixing rules": _tags(MixingConfig, "kind"),
        "staleness functions": list(
            typing.get_args(StalenessConfig.model_fields["kind"].annotation)
        ),
        "server optimizers": list(typing.get_args(ServerOptName)),
    }
