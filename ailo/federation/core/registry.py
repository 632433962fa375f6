"""The named strategies a coordinator is configured with (`--aggregator`, `--outer`).

A new aggregation strategy is a class with `aggregate` (and, for O(model) memory, the
streaming `start`/`fold`/`finish`) in `aggregate.py` or `robust.py`, plus one entry here.
Stateful strategies are copied per coordinator (`make_aggregator`), never shared.
"""
from __future__ import annotations

import copy

from ailo.federation.core.aggregate import Aggregator, FedAvg
from ailo.federation.core.outer import OuterOptimizer, make_outer
from ailo.federation.core.robust import CoordinateMedian, FedAvgM, MultiKrum, TrimmedMean

AGGREGATORS: dict[str, Aggregator] = {
    "fedavg": FedAvg(), "trimmed-mean": TrimmedMean(), "median": CoordinateMedian(),
    "krum": MultiKrum(m=1, name="krum"), "multi-krum": MultiKrum(name="multi-krum"), "fedavgm": FedAvgM(),
}


def make_aggregator(name: str) -> Aggregator:
    """A fresh instance (stateful ones such as FedAvgM must not be shared between coordinators)."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; known: {', '.join(sorted(AGGREGATORS))}")
    return copy.deepcopy(AGGREGATORS[name])


def round_strategy(aggregator: str, outer: str, server_lr: float,
                   outer_momentum: float = 0.9) -> tuple[Aggregator, OuterOptimizer]:
    """What a coordinator folds updates with and how it steps the model on their average.

    `fedavgm` is FedAvg whose average goes through its momentum outer optimizer (`outer.py`), so
    the coordinator streams the plain mean and persists the velocity with every model version."""
    agg = make_aggregator(aggregator)
    if isinstance(agg, FedAvgM):
        if outer != "sgd":
            raise ValueError(f"--aggregator fedavgm already is FedAvg with server momentum; it takes --outer sgd, "
                             f"not {outer!r} (or use --aggregator fedavg --outer {outer})")
        agg.outer.lr = server_lr
        return agg.averaging, agg.outer
    return agg, make_outer(outer, server_lr, outer_momentum)
