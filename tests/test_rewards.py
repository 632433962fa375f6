from fractions import Fraction

from ailo.federation.core.rewards import RewardConfig, loss_bonus, speed_bonus, training_reward
from ailo.federation.core.validate import TokenBucket, ValidationConfig, check_direction, check_loss, check_norm
from ailo.federation.core.update_format import UpdateRejected

import pytest
import torch


def test_worked_example_of_docs_rewards_md():
    assert training_reward(160, 160, 0.20, 0.30, 7.0) == 10_000_000
    assert training_reward(160, 160, 0.30, 0.30, 3.0) == 12_000_000
    assert training_reward(160, 160, 0.45, 0.30, 12.0) == 12_500_000
    assert training_reward(200, 160, 0.45, 0.30, None) == 12_500_000  # n_k capped
    assert training_reward(80, 160, 0.30, 0.30, 1.0) == 9_000_000


def test_bonus_caps_and_bounds():
    cfg = RewardConfig()
    assert loss_bonus(10.0, 0.1, cfg) == Fraction(1, 2)
    assert loss_bonus(0.05, 0.1, cfg) == 0
    assert speed_bonus(0.0, cfg) == 5_000_000 and speed_bonus(5.0, cfg) == 0 and speed_bonus(-1, cfg) == 0
    assert training_reward(160, 160, 1e9, 1e-9, 0.0) == 15_000_000 + 5_000_000  # ≤ 0.2 ALC ever


def test_norm_check_adamw_bound_and_robust_z():
    cfg = ValidationConfig()
    task = {"optimizer": "adamw", "lr": 1e-3, "steps": 10}
    ok = {"w": torch.full((100,), 1e-3)}
    assert check_norm(ok, [], task, cfg) == pytest.approx(0.01 / (1e-3 * 10))  # ‖Δ‖ per lr·step
    with pytest.raises(UpdateRejected, match="impossible for AdamW"):
        check_norm({"w": torch.full((100,), 0.1)}, [], task, cfg)
    history = [1.0, 1.1, 0.95, 1.02]  # scaled norms of accepted updates
    with pytest.raises(UpdateRejected, match="robust deviations"):
        check_norm({"w": torch.full((100,), 1e-5)}, history, task, cfg)
    # A round with a 10× smaller learning rate and 10× smaller update is just as plausible.
    assert check_norm({"w": torch.full((100,), 1e-4)}, history, {**task, "lr": 1e-4}, cfg) == pytest.approx(1.0)
    with pytest.raises(UpdateRejected, match="all zeros"):
        check_norm({"w": torch.zeros(3)}, history, task, cfg)


def test_direction_and_loss_checks():
    cfg = ValidationConfig()
    g = {"w": torch.tensor([1.0, 0.0])}
    assert check_direction({"w": torch.tensor([1.0, 1.0])}, g, cfg) > 0.7
    with pytest.raises(UpdateRejected) as exc:
        check_direction({"w": torch.tensor([-1.0, 1.0])}, g, cfg)
    assert exc.value.reason == "wrong_direction"
    assert check_loss(5.0, 4.0, [], cfg) == 1.0
    with pytest.raises(UpdateRejected, match="not lower the holdout loss enough"):
        check_loss(5.0, 4.99, [1.0, 2.0], cfg)  # 0.01 < 5 % of the peers' median 1.5
    with pytest.raises(UpdateRejected, match="not finite"):
        check_loss(5.0, float("nan"), [], cfg)


def test_token_bucket_refills():
    bucket = TokenBucket(rate=1.0, burst=2)
    assert bucket.take("a", 0.0) and bucket.take("a", 0.0) and not bucket.take("a", 0.0)
    assert bucket.take("b", 0.0)
    assert bucket.take("a", 1.0) and not bucket.take("a", 1.0)
