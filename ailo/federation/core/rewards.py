"""Training rewards (SPEC R7), pure integer arithmetic in ledger units (1 ALC = 10^8).

    Reward = BaseRate × BatchSize × (1 + LossBonus) + SpeedBonus

- BaseRate × BatchSize: 0.1 ALC for an update that trained the whole task
  (BatchSize = n_k samples, BaseRate = 0.1 ALC / (task steps × task batch size)); n_k is
  capped at the task's size so inflating the sample count earns nothing.
- LossBonus = min(max_bonus, bonus_slope × max(0, r_k / median(r) − 1)) where r_k is the
  update's holdout-loss reduction and the median is over the round's accepted updates: only
  contributions better than the round's typical one get a bonus.
- SpeedBonus = 0.05 ALC × max(0, 1 − t / 5 s), t measured by the coordinator from task
  hand-out to submission: up to +0.05 ALC for processing under 5 seconds.
Worked example in docs/REWARDS.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

UNIT = 10**8


@dataclass(frozen=True)
class RewardConfig:
    base_reward: int = UNIT // 10        # 0.1 ALC for a full task
    speed_bonus: int = UNIT // 20        # up to 0.05 ALC
    speed_window: float = 5.0            # seconds
    bonus_slope: Fraction = Fraction(1, 2)
    max_bonus: Fraction = Fraction(1, 2)  # LossBonus ≤ 0.5 → at most 0.15 ALC + speed


def loss_bonus(reduction: float, round_median: float, cfg: RewardConfig) -> Fraction:
    if round_median <= 0 or reduction <= 0:
        return Fraction(0)
    ratio = Fraction(reduction).limit_denominator(10**9) / Fraction(round_median).limit_denominator(10**9)
    return min(cfg.max_bonus, cfg.bonus_slope * max(Fraction(0), ratio - 1))


def speed_bonus(seconds: float | None, cfg: RewardConfig) -> int:
    if seconds is None or seconds >= cfg.speed_window or seconds < 0:
        return 0
    share = 1 - Fraction(seconds).limit_denominator(10**6) / Fraction(cfg.speed_window)
    return int(cfg.speed_bonus * share)


def training_reward(n_samples: int, task_samples: int, reduction: float, round_median: float,
                    seconds: float | None, cfg: RewardConfig = RewardConfig()) -> int:
    """Units minted for one accepted update."""
    batch = min(n_samples, task_samples)
    base_rate = Fraction(cfg.base_reward, task_samples)
    amount = base_rate * batch * (1 + loss_bonus(reduction, round_median, cfg))
    return int(amount) + speed_bonus(seconds, cfg)


def slice_reward(full_amount: int, slice_params: int, total_params: int) -> int:
    """A slice update (issue 26) earns the full formula × its share of the model's parameters:
    it trained, stored and sent that share of the weights (its forward pass is the whole
    model's, but a forward is the cheap third of a step), and the round's average moves by
    that share only. So k slices covering the model together earn what one full update does."""
    if slice_params >= total_params:
        return full_amount
    return int(Fraction(full_amount) * Fraction(slice_params, total_params))
