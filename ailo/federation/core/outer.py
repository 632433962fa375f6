"""Outer optimizers (pure, no I/O): how the coordinator turns the round's *averaged*
pseudo-gradient ḡ = avg_k Δ_k into new weights (DiLoCo / FedOpt).

Any averaging rule (FedAvg, a robust mean, a streaming running sum) produces ḡ; the outer
optimizer only sees ḡ, so the two compose freely:

- `sgd`      — M ← M − lr·ḡ (plain FedAvg with server learning rate lr; no state).
- `nesterov` — DiLoCo's outer step (OpenDiLoCo: lr 0.7, momentum 0.9): b ← μ·b + ḡ;
               M ← M − lr·(ḡ + μ·b). torch.optim.SGD(nesterov=True) semantics.
- `fedadam`  — Reddi et al., "Adaptive Federated Optimization": m ← β1·m + (1−β1)·ḡ,
               v ← β2·v + (1−β2)·ḡ², M ← M − lr·m / (√v + τ).

State (momentum / moment buffers, step count) is a flat dict of tensors so the coordinator can
persist it next to each model version and resume it after a restart.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol

import torch

from ailo.federation.core.strategy_names import OUTER_OPTIMIZERS

StateDict = dict[str, torch.Tensor]


class OuterOptimizer(Protocol):
    name: str

    def step(self, base: Mapping[str, torch.Tensor], avg_delta: Mapping[str, torch.Tensor]) -> StateDict: ...

    def state_dict(self) -> StateDict: ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None: ...


def _pack(steps: int, **groups: StateDict) -> StateDict:
    """The state the store persists: `steps` and each group's tensors as `<group>.<name>`."""
    out: StateDict = {"steps": torch.tensor([steps], dtype=torch.int64)}
    for group, tensors in groups.items():
        out.update({f"{group}.{n}": t.contiguous() for n, t in tensors.items()})
    return out


def _unpack(state, group: str) -> StateDict:
    prefix = group + "."
    return {k[len(prefix):]: t.clone().to(torch.float32) for k, t in state.items() if k.startswith(prefix)}


def _new_weights(base: Mapping[str, torch.Tensor], direction: Mapping[str, torch.Tensor], lr: float) -> StateDict:
    return {n: torch.sub(base[n].to(torch.float32), direction[n].to(torch.float32), alpha=lr).to(base[n].dtype)
            for n in base}


@dataclass
class OuterSGD:
    """SGD on pseudo-gradients, optionally with (Nesterov) momentum."""
    lr: float = 1.0
    momentum: float = 0.0
    nesterov: bool = False
    buffers: StateDict = field(default_factory=dict)
    steps: int = 0

    @property
    def name(self) -> str:
        return "nesterov" if self.nesterov else ("momentum" if self.momentum else "sgd")

    def step(self, base, avg_delta) -> StateDict:
        self.steps += 1
        if not self.momentum:
            return _new_weights(base, avg_delta, self.lr)
        direction = {}
        for n in base:
            g = avg_delta[n].to(torch.float32)
            b = self.buffers.get(n)
            b = g.clone() if b is None else b.mul(self.momentum).add_(g)  # new tensor: a failed publish keeps the old
            self.buffers[n] = b
            direction[n] = g.add(b, alpha=self.momentum) if self.nesterov else b
        return _new_weights(base, direction, self.lr)

    def state_dict(self) -> StateDict:
        return _pack(self.steps, buf=self.buffers)

    def load_state_dict(self, state) -> None:
        self.steps, self.buffers = int(state["steps"][0]), _unpack(state, "buf")


@dataclass
class FedAdam:
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    m: StateDict = field(default_factory=dict)
    v: StateDict = field(default_factory=dict)
    steps: int = 0
    name: str = "fedadam"

    def step(self, base, avg_delta) -> StateDict:
        self.steps += 1
        direction = {}
        for n in base:
            g = avg_delta[n].to(torch.float32)
            m = self.m.get(n, torch.zeros_like(g)).mul(self.beta1).add_(g, alpha=1 - self.beta1)
            v = self.v.get(n, torch.zeros_like(g)).mul(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            self.m[n], self.v[n] = m, v
            direction[n] = m / (v.sqrt() + self.tau)
        return _new_weights(base, direction, self.lr)

    def state_dict(self) -> StateDict:
        return _pack(self.steps, m=self.m, v=self.v)

    def load_state_dict(self, state) -> None:
        self.steps, self.m, self.v = int(state["steps"][0]), _unpack(state, "m"), _unpack(state, "v")


def make_outer(name: str, lr: float, momentum: float = 0.9) -> OuterOptimizer:
    """`sgd` (= FedAvg with server lr), `nesterov` (DiLoCo), `fedadam`."""
    if name == "sgd":
        return OuterSGD(lr)
    if name == "nesterov":
        return OuterSGD(lr, momentum, nesterov=True)
    if name == "fedadam":
        return FedAdam(lr)
    raise ValueError(f"unknown outer optimizer {name!r}; known: {', '.join(OUTER_OPTIMIZERS)}")
