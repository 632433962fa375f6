"""Proof-of-Contribution checks (SPEC R6). Each check is a small pure function that returns
None or raises `UpdateRejected` with its own reason code; the coordinator composes them.

- `check_signature` — Ed25519 over the canonical update digest (see `signing.py`).
- `check_norm` — the update's magnitude per unit of requested work (‖Δ‖ / (lr·steps)) against
  robust statistics (median, MAD) of recently accepted updates, in log space; before enough history exists, a hard per-coordinate bound
  that AdamW cannot exceed (|Δ| ≤ c·lr·steps).
- `check_direction` — Δ must have a positive component along the holdout-loss gradient.
- `check_descent` — which direction decides: the last global change, else the holdout gradient.
- `check_loss` — the update applied alone must lower the loss on the coordinator's private
  holdout batch by more than the tolerance.
- `check_loss_paired` — the same on per-sequence losses: the mean paired drop must clear a bar
  that grows with its own standard error (noise-aware, see docs/REWARDS.md).
- `check_round_similarity` — on secret sketches (`sketch.py`): a near-copy of an update already
  accepted this round (`duplicate_work`) or of the last global change (`copied_global`).
- `fresh_cosines` — per update of a round, how much of what it adds to the last global change
  agrees with the round's other updates (a copy of that change diluted with noise: ≈ 0).
- `clip_scale` — the factor that bounds an update's influence to a multiple of the typical norm.
- `TokenBucket` — per-key rate limiting (wallet, network address, registrations).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ailo.federation.core.update_format import UpdateRejected


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
    # Round-level checks on sketches (thresholds measured, docs/REWARDS.md "Round-level checks").
    duplicate_cosine: float = 0.99    # cos with an accepted update of the same round ≥ this → duplicate_work
    copied_cosine: float = 0.99       # cos with the last global change ≥ this → copied_global
    # Noise-aware loss check on per-sequence holdout losses (docs/REWARDS.md "Honest noise").
    loss_step_share: float = 1 / 3    # the update is scored at this share of its step (its weight in
                                      # a 3-update round); the full step overshoots on non-IID shards
    loss_z: float = 1.0               # mean paired drop must exceed loss_z standard errors...
    min_paired_drop: float = 2e-4     # ...and this many nats...
    min_relative_drop: float = 0.0    # ...and this share of the round's accepted median (version 0)
    harm_z: float = 2.0               # from version 1 on: refused only when the loss rises by > harm_z SE
    min_global_cosine: float = 0.3    # from version 1 on: cos(Δ, last global change) must exceed this...
    reverse_global_cosine: float = -0.8  # ...and at or below this the update undoes it: refused outright
    # Fresh work (paid at round close): the residual of an update after removing the last global
    # change's direction must agree with the other accepted updates' (docs/REWARDS.md "Fresh work").
    min_fresh_cosine: float = 0.12    # noise-diluted copy ≈ 0 ± 0.031; honest ≥ 0.344 at 30 steps (1 of 27 under it at 10)
    fresh_min_peers: int = 2          # fewer other accepted updates in the round: not judged, paid
    # Bounded influence: an update counts at most clip_factor × the median recent norm.
    clip_factor: float = 1.5
    # Reputation: after k refusals in a row a wallet waits min(cap, base·2^(k−1)) s.
    cooldown_base: float = 2.0
    cooldown_cap: float = 600.0
    refusal_cost: float = 4.0         # extra wallet-bucket tokens a refused update costs


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


def same_work(history: list[tuple[float, int | None, int]], steps: int, round_id: int,
              factor: float = 2.0) -> list[float]:
    """The norms per unit of work (rows: norm, claimed steps, round) that a time-sized round's
    update is z-scored against: this round's updates that claimed about as many local steps
    (within `factor`). Updates claim 1 to `max_steps` steps, and AdamW's ‖Δ‖ grows slower than
    linearly in steps (its first step moves every coordinate by lr, later ones partly cancel);
    across rounds its per-step norm falls as training goes on, and a lossy codec's norm is also
    divided by the growing error-feedback backlog (ailo-tiny, int8, 25 steps: 730 per lr·step in
    round 2, 276 in round 3 — an honest update 10 deviations off). Rows without a step count
    (written before it was recorded) count as comparable."""
    return [h for h, s, r in history if r == round_id and (s is None or max(s, steps) <= factor * min(s, steps))]


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

    def charge(self, key: str, amount: float, now: float | None = None) -> None:
        """Remove `amount` tokens (may go below zero: the key then waits longer to refill)."""
        now = time.monotonic() if now is None else now
        tokens, last = self._state.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        self._state[key] = (tokens - amount, now)

    def take(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._state.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._state[key] = (tokens, now)
            return False
        self._state[key] = (tokens - 1.0, now)
        return True


def check_loss_paired(before: torch.Tensor, after: torch.Tensor, peer_reductions: list[float],
                      cfg: ValidationConfig) -> tuple[float, float]:
    """Returns (mean drop, its standard error) of per-sequence holdout losses, or raises
    `no_loss_reduction`.

    Both losses are measured on the same sequences, so the difference d_i = before_i − after_i
    cancels each sequence's own difficulty; what remains is the update's effect plus noise
    whose size the data itself gives (SE = sd(d)/√N). An update must lower the mean by more
    than `loss_z` standard errors, `min_paired_drop` nats and `min_relative_drop` × the
    median of the round's accepted drops.
    """
    d = (before.double() - after.double())
    if not bool(torch.isfinite(d).all()):
        raise UpdateRejected("no_loss_reduction", "validation loss after the update is not finite")
    n = d.numel()
    mean = float(d.mean())
    se = float(d.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("inf")
    bar = max(cfg.min_paired_drop, cfg.loss_z * se)
    if peer_reductions and cfg.min_relative_drop > 0:
        bar = max(bar, cfg.min_relative_drop * statistics.median(peer_reductions))
    if mean <= bar:
        raise UpdateRejected("no_loss_reduction", f"update does not lower the holdout loss enough: mean drop "
                             f"{mean:.4g} ± {se:.2g} (SE, {n} sequences), needs > {bar:.4g}")
    return mean, se


def check_loss_harm(before: torch.Tensor, after: torch.Tensor, cfg: ValidationConfig) -> tuple[float, float]:
    """Once a global direction exists (version ≥ 1): returns (mean drop, SE), refusing
    `no_loss_reduction` only when the update *significantly raises* the holdout loss (mean drop
    below −harm_z·SE). Late in training an honest update's effect on text unlike its shard is
    within the noise (measured t from −1.2 to +15); the drop is then scored, not gated."""
    d = (before.double() - after.double())
    if not bool(torch.isfinite(d).all()):
        raise UpdateRejected("no_loss_reduction", "validation loss after the update is not finite")
    mean = float(d.mean())
    se = float(d.std(unbiased=True)) / math.sqrt(d.numel()) if d.numel() > 1 else float("inf")
    if mean < -cfg.harm_z * se:
        raise UpdateRejected("no_loss_reduction", f"update raises the holdout loss: mean drop {mean:.4g} ± {se:.2g} "
                             f"(SE, {d.numel()} sequences) is below −{cfg.harm_z}·SE")
    return mean, se


def check_descent(cos_global: float | None, holdout_direction: Callable[[], float],
                  cfg: ValidationConfig) -> float | None:
    """The direction rule: at version 0 (`cos_global` None) or under a lossy codec (the caller
    passes None) the holdout gradient decides; from version 1 on an update above the
    global-change bar passes, and one under it is judged by the holdout gradient — the last
    global change can be a poor guide to the next (ailo-1b's first round was the move out of
    initialisation: every honest round-2 update measured under 0.3). On ailo-tiny honest updates
    measured cos 0.78 … 0.93 with the global change, sign-flipped ones −0.90 … −0.82. Returns the
    holdout cosine when it was computed; `holdout_direction` raises `wrong_direction` for an
    update that points uphill there too. An update that undoes the last global change
    (cos ≤ `reverse_global_cosine`, where sign-flipped copies of honest work land) is refused
    without the fallback: late in training the holdout gradient's cosine with honest work is
    ~0.001, too weak to tell a flipped update from an honest one."""
    if cos_global is not None and cos_global > cfg.min_global_cosine:
        return None
    if cos_global is not None and cos_global <= cfg.reverse_global_cosine:
        raise UpdateRejected("wrong_direction", f"update undoes the last global change: sketch cosine "
                             f"{cos_global:.3f} ≤ {cfg.reverse_global_cosine}")
    return holdout_direction()


def check_round_similarity(cos_peers: list[float], cos_global: float | None, cfg: ValidationConfig) -> None:
    """Refuses a near-copy of an update already accepted this round from another wallet
    (`duplicate_work`: the first one earns, copies do not) or of the last published global
    change (`copied_global`: zero compute). Inputs are sketch cosines. Honest updates of one
    round share a large common direction (cos up to ≈ 0.97 measured), so the limits sit just
    below 1: they catch copies, not updates that merely agree."""
    for c in cos_peers:
        if c >= cfg.duplicate_cosine:
            raise UpdateRejected("duplicate_work", f"update is a near-copy of an update already accepted this round "
                                 f"(sketch cosine {c:.4f} ≥ {cfg.duplicate_cosine})")
    if cos_global is not None and cos_global >= cfg.copied_cosine:
        raise UpdateRejected("copied_global", f"update is a copy of the last global change (sketch cosine "
                             f"{cos_global:.3f} ≥ {cfg.copied_cosine})")


def clip_scale(norm: float, reference: float | None, factor: float) -> float:
    """min(1, factor·reference/norm): the update then moves the model at most factor × the
    reference norm (bounded influence); 1 when there is no reference yet."""
    if reference is None or reference <= 0 or norm <= 0:
        return 1.0
    return min(1.0, factor * reference / norm)


def cooldown_seconds(streak: int, cfg: ValidationConfig) -> float:
    """How long a wallet with `streak` refusals in a row waits before its next submission."""
    return 0.0 if streak <= 0 else min(cfg.cooldown_cap, cfg.cooldown_base * 2 ** (streak - 1))


def fresh_cosines(sketches: list[np.ndarray], global_change: np.ndarray, threshold: float = 0.12,
                  min_pool: int = 3, also: Sequence[np.ndarray] = ()) -> list[float]:
    """For each update k of a round (sketches, `sketch.py`): cos(u_k, Σ_{j∈P, j≠k} u_j), where u is
    a sketch with its component along the last global change G removed, scaled to unit length,
    and P the round's updates that agree with each other.

    Honest updates trained on M_t share, besides G's direction, what is new at M_t (measured
    ≥ 0.344 at 30 local steps; at 10 steps one honest update nearly equal to G scored ≈ 0);
    an update made of G plus noise, with no training of its own, has a residual of pure noise:
    ≈ 0 ± 1/√k for a k-float sketch. A zero-compute copy diluted to slip under the 0.99 cosine
    limits is told apart however much noise it carries. P starts as every update
    and the lowest-scoring one is dropped while it scores below `threshold` (P keeps at least
    `min_pool`), so a farm of such copies in one round cannot drown the honest updates'
    agreement: with unit residuals each update is one vote, and the noise votes are removed.

    `also`: more zero-compute transforms of G removed with it (`sketch.sharpened`: sign(G)·|G|^½
    and sign(G)). sign(G) re-sharpens the averaged G the way AdamW sharpens each honest update,
    so its residual after G alone agreed with theirs (0.78 measured); after the span of the
    three it is noise, while honest residuals keep what is new at M_t (docs/REWARDS.md)."""
    g = np.asarray(global_change, dtype=np.float64)
    if float(np.linalg.norm(g)) == 0.0 or not sketches:
        return [1.0] * len(sketches)
    basis: list[np.ndarray] = []   # orthonormal span of G and `also` (Gram–Schmidt)
    for v in (g, *also):
        v = np.asarray(v, dtype=np.float64)
        n0 = float(np.linalg.norm(v))
        for b in basis:
            v = v - float(np.dot(v, b)) * b
        if (n := float(np.linalg.norm(v))) > 1e-9 * n0:
            basis.append(v / n)
    units = []
    for s in sketches:
        r = np.asarray(s, dtype=np.float64)
        for b in basis:
            r = r - float(np.dot(r, b)) * b
        n = float(np.linalg.norm(r))
        units.append(r / n if n > 0 else r)
    pool = set(range(len(units)))
    while True:
        total = np.sum([units[j] for j in pool], axis=0)
        scores = []
        for k, u in enumerate(units):
            others = total - u if k in pool else total
            n = float(np.linalg.norm(others))
            scores.append(float(np.dot(u, others) / n) if n > 0 else 0.0)
        worst = min(pool, key=lambda k: scores[k])
        if scores[worst] >= threshold or len(pool) <= min_pool:
            return scores
        pool.discard(worst)
