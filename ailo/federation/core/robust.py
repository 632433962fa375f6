"""Robust aggregators behind the `Aggregator` interface (SPEC R6: bounded influence), selected
with `ailo coordinator --aggregator NAME`.

Each is built from pure functions over one tensor (or one chunk of one tensor) stacked across
the K updates, so a streaming coordinator can call them chunk by chunk:
- `trimmed_mean`  — per coordinate, drop the ⌊βK⌋ largest and smallest values, average the rest;
- `coordinate_median` — per coordinate median (mean of the two middle values for even K);
- `pairwise_sq_dists` + `krum_select` — multi-Krum: keep the m updates whose summed squared
  distance to their K−f−2 nearest neighbours is smallest, then sample-weighted mean of those
  (the distance matrix is a sum over tensors/chunks, so it too is computed chunk-wise);
- `FedAvgM` — FedAvg with server momentum v ← βv + mean, M ← M − ηv: outer.py's momentum SGD on
  the FedAvg mean (a coordinator persists the velocity with each model version).
Every function takes scale·Δ (the clipped contribution), never the raw Δ. The coordinate-wise
rules (trimmed mean, median) ignore sample counts by design: a weight is itself a lever.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

from ailo.federation.core.aggregate import FedAvg, StateDict, WeightedDelta, average_delta, weights
from ailo.federation.core.outer import OuterSGD


def scaled(u: WeightedDelta, name: str) -> torch.Tensor:
    t = u.delta[name].to(torch.float32)
    return t * u.scale if u.scale != 1.0 else t


def trimmed_mean(stack: torch.Tensor, trim: float) -> torch.Tensor:
    """Coordinate-wise β-trimmed mean over dim 0 of [K, ...]; keeps at least one value."""
    k = stack.shape[0]
    t = min(int(trim * k), (k - 1) // 2)
    if t == 0:
        return stack.mean(0)
    return stack.sort(0).values[t:k - t].mean(0)


def coordinate_median(stack: torch.Tensor) -> torch.Tensor:
    k = stack.shape[0]
    s = stack.sort(0).values
    return s[k // 2] if k % 2 else (s[k // 2 - 1] + s[k // 2]) / 2


def pairwise_sq_dists(stack: torch.Tensor) -> torch.Tensor:
    """[K, K] squared Euclidean distances of the flattened rows of one tensor/chunk; sum the
    results over all chunks for the full distance."""
    flat = stack.reshape(stack.shape[0], -1).double()
    sq = (flat * flat).sum(1)
    return (sq[:, None] + sq[None, :] - 2 * flat @ flat.T).clamp_min(0)


def krum_select(d2: torch.Tensor, f: int, m: int) -> list[int]:
    """Indices of the m best-scored updates (Blanchard et al. 2017; m > 1: multi-Krum)."""
    k = d2.shape[0]
    neighbours = k - f - 2
    if neighbours < 1:  # too few updates to tell: Krum is undefined, keep them all
        return list(range(k))
    scores = []
    for i in range(k):
        others = torch.cat([d2[i, :i], d2[i, i + 1:]])
        scores.append(float(others.sort().values[:neighbours].sum()))
    order = sorted(range(k), key=lambda i: scores[i])
    return sorted(order[:max(1, min(m, k))])


def _apply(base: Mapping[str, torch.Tensor], step: Mapping[str, torch.Tensor], server_lr: float) -> StateDict:
    return {n: (base[n].to(torch.float32) - server_lr * step[n]).to(base[n].dtype) for n in base}


@dataclass(frozen=True)
class TrimmedMean:
    trim: float = 0.2
    name: str = "trimmed-mean"

    def aggregate(self, base, updates: Iterable[WeightedDelta], server_lr: float = 1.0) -> StateDict:
        updates = list(updates)
        weights([u.n_samples for u in updates])  # same refusals as FedAvg (empty, n ≤ 0)
        step = {n: trimmed_mean(torch.stack([scaled(u, n) for u in updates]), self.trim) for n in base}
        return _apply(base, step, server_lr)


@dataclass(frozen=True)
class CoordinateMedian:
    name: str = "median"

    def aggregate(self, base, updates: Iterable[WeightedDelta], server_lr: float = 1.0) -> StateDict:
        updates = list(updates)
        weights([u.n_samples for u in updates])
        step = {n: coordinate_median(torch.stack([scaled(u, n) for u in updates])) for n in base}
        return _apply(base, step, server_lr)


@dataclass(frozen=True)
class MultiKrum:
    f: int = 1      # Byzantine updates tolerated
    m: int = 0      # updates kept; 0 = K − f
    name: str = "krum"

    def select(self, base, updates: list[WeightedDelta]) -> list[int]:
        d2 = torch.zeros(len(updates), len(updates), dtype=torch.float64)
        for n in base:
            d2 += pairwise_sq_dists(torch.stack([scaled(u, n) for u in updates]))
        return krum_select(d2, self.f, self.m or len(updates) - self.f)

    def aggregate(self, base, updates: Iterable[WeightedDelta], server_lr: float = 1.0) -> StateDict:
        updates = list(updates)
        weights([u.n_samples for u in updates])
        keep = self.select(base, updates)
        return FedAvg().aggregate(base, [updates[i] for i in keep], server_lr)


@dataclass
class FedAvgM:
    """FedAvg with server momentum: the sample-weighted mean ḡ of scale·Δ goes through outer.py's
    momentum SGD (v ← βv + ḡ, M ← M − ηv). A coordinator folds `averaging` (streaming) and steps
    `outer` itself (`registry.round_strategy`), so the velocity is saved with each version."""
    beta: float = 0.9
    name: str = "fedavgm"
    averaging: FedAvg = field(default_factory=FedAvg)
    outer: OuterSGD = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.outer is None:
            self.outer = OuterSGD(momentum=self.beta)

    @property
    def velocity(self) -> StateDict:
        return self.outer.buffers

    def aggregate(self, base, updates: Iterable[WeightedDelta], server_lr: float = 1.0) -> StateDict:
        self.outer.lr = server_lr
        return self.outer.step(base, average_delta(self.averaging, base, updates))
