"""Aggregation strategies (pure functions, no I/O) — SPEC R4 steps 4–5.

FedAvg: M_{t+1} = M_t − η · Σ_k (n_k / n) · Δ_k with Δ_k = M_t − M_k (a pseudo-gradient) and
n = Σ_k n_k. With η = 1 this is plain FedAvg (the sample-weighted mean of client models).
New strategies (server momentum, trimmed mean, compression) implement `Aggregator`.

Streaming (O(model) memory, SPEC R4 at scale): an aggregator that also implements
`StreamingAggregator` is fed one update at a time (`start` → `fold` per accepted update →
`finish`), so the coordinator never holds more than one decoded update beside one fp32
accumulator. Aggregators that need all updates at once (coordinate-wise robust ones) keep only
`aggregate`; the coordinator then calls them slice by slice of each tensor, reading the stored
updates from disk (`ailo/federation/coordinator/accumulator.py`), so peak memory is K × one slice.
The robust ones (trimmed mean, coordinate median, multi-Krum, FedAvgM) live in `robust.py`;
`registry.py` names them all.
`WeightedDelta.scale` is the Proof-of-Contribution clip factor (≤ 1, bounded influence): every
aggregator uses scale·Δ, never the raw Δ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, runtime_checkable

import torch

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WeightedDelta:
    delta: Mapping[str, torch.Tensor]
    n_samples: float  # n_k; a slice update: n_k × its share (core/slices.influence)
    scale: float = 1.0  # clip factor: the update counts as scale·Δ


class Aggregator(Protocol):
    name: str

    def aggregate(self, base: Mapping[str, torch.Tensor], updates: Iterable[WeightedDelta],
                  server_lr: float) -> StateDict: ...


@runtime_checkable
class StreamingAggregator(Protocol):
    """An aggregator whose state is O(model): `fold` each update as it is accepted."""
    name: str

    def start(self, base: Mapping[str, torch.Tensor]) -> dict: ...

    def fold(self, state: dict, update: WeightedDelta) -> None: ...

    def finish(self, state: dict, base: Mapping[str, torch.Tensor], server_lr: float) -> StateDict: ...


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
        if any(set(u.delta) != set(base) for u in updates):  # slice updates: per-tensor weights
            state = self.start(base)
            for u in updates:
                self.fold(state, u)
            return self.finish(state, base, server_lr)
        w = [wk * u.scale for wk, u in zip(weights([u.n_samples for u in updates]), updates)]
        names = list(base)
        # Multi-tensor (foreach) kernels: one pass per update over all tensors, no zero-fill,
        # and the final step fused into a single sub(alpha=η) per tensor.
        acc = torch._foreach_mul([updates[0].delta[n].to(torch.float32) for n in names], w[0])
        for wk, u in zip(w[1:], updates[1:]):
            torch._foreach_add_(acc, [u.delta[n].to(torch.float32) for n in names], alpha=wk)
        return {n: torch.sub(base[n].to(torch.float32), a, alpha=server_lr).to(base[n].dtype)
                for n, a in zip(names, acc)}

    # -- streaming form: Σ n_k Δ_k in fp32 and Σ n_k per tensor; same result within fp32 rounding --
    # A slice update (issue 26) carries some tensors only: each tensor is averaged over the
    # updates that trained it (its own Σ n_k), and a tensor nobody trained stays as it is. The
    # sums are allocated on first use, so a round of slices holds only the sliced tensors.
    def start(self, base: Mapping[str, torch.Tensor]) -> dict:
        return {"sum": {}, "n_by": {}, "n": 0, "k": 0,
                "like": {n: (tuple(t.shape), t.device) for n, t in base.items()}}

    def fold(self, state: dict, update: WeightedDelta) -> None:
        if update.n_samples <= 0:
            raise ValueError("every update needs a positive sample count")
        unknown = set(update.delta) - set(state["like"])
        if unknown:
            raise ValueError(f"update carries tensors the model does not have: {sorted(unknown)[:5]}")
        names = [n for n in state["like"] if n in update.delta]
        for n in names:
            if n not in state["sum"]:
                shape, device = state["like"][n]
                state["sum"][n] = torch.zeros(shape, dtype=torch.float32, device=device)
            state["n_by"][n] = state["n_by"].get(n, 0) + update.n_samples
        acc = [state["sum"][n] for n in names]
        torch._foreach_add_(acc, [update.delta[n].to(acc[i].device, torch.float32) for i, n in enumerate(names)],
                            alpha=float(update.n_samples) * update.scale)
        state["n"] += update.n_samples
        state["k"] += 1

    def finish(self, state: dict, base: Mapping[str, torch.Tensor], server_lr: float = 1.0) -> StateDict:
        """M − η·(Σ n_k Δ_k)/n_t per tensor t (n_t: samples of the updates that trained t),
        computed in the accumulator's own memory (the state is consumed); untrained tensors
        are returned as `base`'s own tensors (no copy)."""
        if state["k"] == 0:
            raise ValueError("cannot aggregate zero updates")
        out = {}
        for n in base:
            a = state["sum"].get(n)
            if a is None:
                out[n] = base[n]
                continue
            a.mul_(-server_lr / state["n_by"][n]).add_(base[n].to(a.device, torch.float32))
            out[n] = a if base[n].dtype == torch.float32 else a.to(base[n].dtype)
        state["sum"] = {}
        return out


def average_delta(aggregator: Aggregator, base: Mapping[str, torch.Tensor],
                  updates: Iterable[WeightedDelta]) -> StateDict:
    """The round's averaged pseudo-gradient ḡ under any averaging rule, for an outer optimizer
    (`outer.py`): the rule applied with η = 1 to a zero model gives −ḡ (exact for FedAvg)."""
    zeros = {n: torch.zeros(t.shape, dtype=torch.float32) for n, t in base.items()}
    return {n: t.neg_() for n, t in aggregator.aggregate(zeros, updates, 1.0).items()}
