"""Aggregation strategies (pure functions, no I/O) — SPEC R4 steps 4–5.

FedAvg: M_{t+1} = M_t − η · Σ_k (n_k / n) · Δ_k with Δ_k = M_t − M_k (a pseudo-gradient) and
n = Σ_k n_k. With η = 1 this is plain FedAvg (the sample-weighted mean of client models).
New strategies (server momentum, trimmed mean, compression) implement `Aggregator`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol

import torch

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WeightedDelta:
    delta: Mapping[str, torch.Tensor]
    n_samples: int


class Aggregator(Protocol):
    name: str

    def aggregate(self, base: Mapping[str, torch.Tensor], updates: Iterable[WeightedDelta],
                  server_lr: float) -> StateDict: ...


def weights(sample_counts: list[int]) -> list[float]:
    """n_k / n; refuses empty rounds and non-positive counts (they would skew or divide by 0)."""
    if not sample_counts:
        raise ValueError("cannot aggregate zero updates")
    if any(n <= 0 for n in sample_counts):
        raise ValueError("every update needs a positive sample count")
    total = sum(sample_counts)
    return [n / total for n in sample_counts]


@dataclass(frozen=True)
class FedAvg:
    """Sample-weighted mean of pseudo-gradients, applied with a server learning rate."""

    name: str = "fedavg"

    def aggregate(self, base: Mapping[str, torch.Tensor], updates: Iterable[WeightedDelta],
                  server_lr: float = 1.0) -> StateDict:
        updates = list(updates)
        w = weights([u.n_samples for u in updates])
        names = list(base)
        # Multi-tensor (foreach) kernels: one pass per update over all tensors, no zero-fill,
        # and the final step fused into a single sub(alpha=η) per tensor.
        acc = torch._foreach_mul([updates[0].delta[n].to(torch.float32) for n in names], w[0])
        for wk, u in zip(w[1:], updates[1:]):
            torch._foreach_add_(acc, [u.delta[n].to(torch.float32) for n in names], alpha=wk)
        return {n: torch.sub(base[n].to(torch.float32), a, alpha=server_lr).to(base[n].dtype)
                for n, a in zip(names, acc)}


AGGREGATORS: dict[str, Aggregator] = {"fedavg": FedAvg()}


def average_delta(aggregator: Aggregator, base: Mapping[str, torch.Tensor],
                  updates: Iterable[WeightedDelta]) -> StateDict:
    """The round's averaged pseudo-gradient ḡ under any averaging rule, for an outer optimizer
    (`outer.py`): the rule applied with η = 1 to a zero model gives −ḡ (exact for FedAvg)."""
    zeros = {n: torch.zeros(t.shape, dtype=torch.float32) for n, t in base.items()}
    return {n: t.neg_() for n, t in aggregator.aggregate(zeros, updates, 1.0).items()}
