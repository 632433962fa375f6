"""Updates trained on an older model version (overlapped rounds, issue 27): the base that
Proof-of-Contribution judges them against.

An overlapped worker uploads Δ computed on W_b while it trains on. When the round that handed
out W_b closes before Δ is admitted, the coordinator still takes Δ into the open round if
b ≥ version − `max_staleness` (the *delayed* rule, docs/ARCHITECTURE.md). Such an update is
judged at its own base, never at the current model:

- holdout losses and gradient of W_b on version b's secret draw of holdout sequences (the
  direction and loss tests), W_b − ηΔ for the loss after;
- its task is the one of the round it was trained for (learning rate, claimed steps), and its
  speed is counted from that round's start (no speed bonus for arriving late);
- copy checks against the change before b (what it started from, as for any update) AND every
  change since b (what it could copy instead of training: W_b − W_v applied to W_b *is* W_v and
  lowers the loss at W_b by exactly the global step).

W_b is rebuilt from version b's stored chunks on first need and kept for that one version (the
memory of one more fp32 model and its gradient, only while stale updates of b arrive).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ailo.chunks import ChunkStore, DirectorySource, Manifest
from ailo.federation.coordinator.holdout import PrivateHoldout, holdout_batch, sequence_losses

if TYPE_CHECKING:
    from ailo.federation.coordinator.coordinator import Coordinator, Submission


def task_round(coord: "Coordinator", sub: "Submission"):
    """The round whose task the update answered: its own (older) round for a stale update."""
    rid = sub.extra.get("task_round")
    return sub.round if rid is None or rid == sub.round.id else coord.store.round(int(rid))


@dataclass
class StaleBase:
    """W_b of one older version b and its holdout reference (losses, gradient)."""
    version: int = -1
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: torch.Tensor | None = None
    grad: dict[str, torch.Tensor] = field(default_factory=dict)

    def load(self, coord: "Coordinator", version: int) -> dict[str, torch.Tensor]:
        if self.version != version:
            self.weights, self.losses, self.grad = {}, None, {}  # the previous one goes first
            rec = next(v for v in coord.store.versions() if v.version == version)
            state = ChunkStore(Manifest.from_json(rec.manifest), DirectorySource(coord.store.chunks_dir)).state_dict()
            self.weights = {k: v.to(coord.device, torch.float32) for k, v in state.items()}
            self.version = version
        return self.weights

    def reference(self, coord: "Coordinator", pool: PrivateHoldout, version: int, names: list[str]
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sequence holdout losses at W_b and the mean loss's gradient for `names`, as
        `ProofOfContribution.reference` computes them at the current model."""
        weights = self.load(coord, version)
        want = [n for n in names if n not in self.grad]
        if self.losses is None or want:
            x, y = pool.windows(version, coord.seq_len)
            x, y = x.to(coord.device), y.to(coord.device)
            leaves = {n: weights[n].detach().clone().requires_grad_(True) for n in want}
            params = {**weights, **leaves}
            step, parts = holdout_batch(x.shape[1]), []
            with torch.set_grad_enabled(bool(want)):
                for i in range(0, x.shape[0], step):
                    part = sequence_losses(coord.model, x[i:i + step], y[i:i + step], step, params)
                    if want:
                        (part.sum() / x.shape[0]).backward()
                    parts.append(part.detach())
            self.grad.update({n: t.grad.detach() for n, t in leaves.items()})
            self.losses = torch.cat(parts)
        return self.losses, {n: self.grad[n] for n in names}

    @torch.no_grad()
    def losses_after(self, coord: "Coordinator", pool: PrivateHoldout, version: int,
                     delta: dict[str, torch.Tensor], eta: float) -> torch.Tensor:
        weights = self.load(coord, version)
        x, y = pool.windows(version, coord.seq_len)
        params = {k: (v - eta * delta[k]) if k in delta else v for k, v in weights.items()}
        return sequence_losses(coord.model, x.to(coord.device), y.to(coord.device),
                               batch=holdout_batch(x.shape[1]), params=params)

    def drop_older(self, oldest: int) -> None:
        """Free W_b once no admissible update can be trained on it any more."""
        if self.version < oldest:
            self.version, self.weights, self.losses, self.grad = -1, {}, None, {}
