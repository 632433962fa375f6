"""Proof-of-Contribution checks (SPEC R6). Each check is a small pure function that returns
None or raises `UpdateRejected` with its own reason code; the coordinator composes them.

- `check_signature` — Ed25519 over the canonical update digest (see `signing.py`).
- `check_norm` — the update's magnitude per unit of requested work (‖Δ‖ / (lr·steps)) against
  robust statistics (median, MAD) of recently accepted updates, in log space; before enough history exists, a hard per-coordinate bound
  that AdamW cannot exceed (|Δ| ≤ c·lr·steps).
- `check_direction` — Δ must have a positive component along the holdout-loss gradient.
- `check_loss` — the update applied alone must lower the loss on the coordinator's private
  holdout batch by more than the tolerance.
- `TokenBucket` — per-key rate limiting (wallet, network address, registrations).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Mapping

import torch

from ailo.federation.update_format import UpdateRejected


@dataclass(frozen=True)
class ValidationConfig:
    min_loss_reduction: float = 1e-3  # nats: an update must lower the holdout loss by at least this...
    relative_loss_reduction: float = 0.05  # ...and by this share of the median of the round's accepted ones
    min_cosine: float = 0.0           # cos(Δ, ∇L_holdout) must exceed this: Δ must point downhill
    norm_history: int = 50            # accepted updates kept for the robust statistics
    norm_min_history: int = 3         # below this, only the hard AdamW bound applies
    norm_max_z: float = 6.0           # robust z-score limit on log ‖Δ‖
    norm_log_floor: float = 0.1       # floor on the log-space MAD (≈ ±10 % natural spread)
    adamw_bound_factor: float = 3.0   # |Δ_i| ≤ factor · lr · steps for AdamW tasks
    max_clock_skew: float = 60.0      # seconds a signed timestamp may be ahead of the coordinator
    max_signature_age: float = 900.0  # seconds after which a signed update is too old
    updates_per_minute: float = 30.0  # token bucket per wallet and per network address
    update_burst: int = 10
    registrations_per_hour: float = 10.0  # per network address (Sybil farming); also the burst


def update_norm(delta: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in delta.values()))


def max_abs(delta: Mapping[str, torch.Tensor]) -> float:
    return max(float(t.abs().max()) for t in delta.values())


def check_norm(delta: Mapping[str, torch.Tensor], history: list[float], task: Mapping, cfg: ValidationConfig) -> float:
    """Returns ‖Δ‖ / (lr·steps) — the update's size per unit of requested work, comparable across
    rounds whose learning rate decays — or raises `implausible_norm`. `history` holds that
    scaled norm for recently accepted updates."""
    norm = update_norm(delta)
    if norm == 0.0:
        raise UpdateRejected("implausible_norm", "update is all zeros: no training happened")
    work = task["lr"] * task["steps"]
    if task.get("optimizer") == "adamw":
        bound = cfg.adamw_bound_factor * work
        biggest = max_abs(delta)
        if biggest > bound:
            raise UpdateRejected("implausible_norm", f"largest coordinate |Δ| = {biggest:.4g} exceeds "
                                 f"{cfg.adamw_bound_factor}·lr·steps = {bound:.4g}, impossible for AdamW")
    scaled = norm / work
    recent = history[-cfg.norm_history:]
    if len(recent) >= cfg.norm_min_history:
        logs = [math.log(h) for h in recent]
        med = statistics.median(logs)
        mad = statistics.median(abs(x - med) for x in logs)
        z = abs(math.log(scaled) - med) / max(1.4826 * mad, cfg.norm_log_floor)
        if z > cfg.norm_max_z:
            raise UpdateRejected("implausible_norm", f"update norm {norm:.4g} (per lr·step {scaled:.4g}) is {z:.1f} "
                                 f"robust deviations from the median {math.exp(med):.4g} of {len(recent)} recent "
                                 "accepted updates")
    return scaled


def check_direction(delta: Mapping[str, torch.Tensor], grad: Mapping[str, torch.Tensor],
                    cfg: ValidationConfig) -> float:
    """Returns cos(Δ, g) with g the holdout-loss gradient at M_t, or raises `wrong_direction`.

    Since M_{t+1} = M_t − ηΔ, an honest Δ has a positive first-order descent term ⟨Δ, g⟩.
    This catches a sign-flipped update even where, by second-order effects of tied
    embeddings near initialisation, applying it alone still happens to lower the loss.
    """
    dot = sum(float((delta[k].double() * g.double()).sum()) for k, g in grad.items())
    gnorm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grad.values()))
    cos = dot / max(update_norm(delta) * gnorm, 1e-30)
    if cos <= cfg.min_cosine:
        raise UpdateRejected("wrong_direction", f"update points uphill: cos(Δ, ∇L_holdout) = {cos:.4f} "
                             f"(must exceed {cfg.min_cosine})")
    return cos


def check_loss(loss_before: float, loss_after: float, peer_reductions: list[float], cfg: ValidationConfig) -> float:
    """Returns the reduction (before − after) or raises `no_loss_reduction`.

    The bar is max(min_loss_reduction, relative_loss_reduction × median of `peer_reductions`)
    (reductions of updates already accepted on the same model version; earlier versions are not
    comparable, the reductions shrink by 10× within a few rounds): a near-zero
    random perturbation lowers the loss by luck half the time and must not earn a reward.
    """
    if not math.isfinite(loss_after):
        raise UpdateRejected("no_loss_reduction", "validation loss after the update is not finite")
    reduction = loss_before - loss_after
    bar = cfg.min_loss_reduction
    if peer_reductions:
        bar = max(bar, cfg.relative_loss_reduction * statistics.median(peer_reductions))
    if reduction < bar:
        raise UpdateRejected("no_loss_reduction", f"update does not lower the holdout loss enough: {loss_before:.4f} → "
                             f"{loss_after:.4f} (reduction {reduction:.4g}, needs ≥ {bar:.4g})")
    return reduction


def check_timestamp(ts: float, now: float, cfg: ValidationConfig) -> None:
    if ts > now + cfg.max_clock_skew:
        raise UpdateRejected("bad_timestamp", f"signed timestamp is {ts - now:.0f} s in the future", 400)
    if ts < now - cfg.max_signature_age:
        raise UpdateRejected("bad_timestamp", f"signed timestamp is {now - ts:.0f} s old (limit "
                             f"{cfg.max_signature_age:.0f} s)", 400)


@dataclass
class TokenBucket:
    """Classic token bucket per key: `rate` tokens per second, at most `burst` stored."""
    rate: float
    burst: int
    _state: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._state.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._state[key] = (tokens, now)
            return False
        self._state[key] = (tokens - 1.0, now)
        return True
