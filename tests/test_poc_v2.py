"""Unit tests of Proof-of-Contribution v2's pure parts: sketches, round-level similarity,
the noise-aware loss check, clipping, cool-down, robust aggregators, the private holdout."""
import math

import numpy as np
import pytest
import torch

from ailo.data import carve_private, text_files
from ailo.federation.core import sketch as sk
from ailo.federation.core.aggregate import FedAvg, WeightedDelta
from ailo.federation.core.registry import AGGREGATORS, make_aggregator, round_strategy
from ailo.federation.coordinator.holdout import PrivateHoldout, check_private, load_secret
from ailo.federation.core.robust import (CoordinateMedian, FedAvgM, MultiKrum, TrimmedMean, coordinate_median,
                                    krum_select, pairwise_sq_dists, trimmed_mean)
from ailo.federation.core.update_format import UpdateRejected
from ailo.federation.core.validate import (TokenBucket, ValidationConfig, check_descent, check_loss_harm,
                                      check_loss_paired, check_round_similarity, clip_scale, cooldown_seconds)

SECRET = b"s" * 32


def _delta(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(300, 40, generator=g) * scale, "b": torch.randn(77, generator=g) * scale}


def _cos(a, b):
    fa = torch.cat([a[k].flatten() for k in sorted(a)]).double()
    fb = torch.cat([b[k].flatten() for k in sorted(b)]).double()
    return float(fa @ fb / (fa.norm() * fb.norm()))


def test_sketch_is_linear_and_estimates_cosine():
    a, b = _delta(1), _delta(2)
    mix = {k: 0.8 * a[k] + 0.6 * b[k] for k in a}  # cos(a, mix) ≈ 0.8
    sa, sb, sm = (sk.sketch(d, SECRET) for d in (a, b, mix))
    assert np.allclose(sk.sketch({k: a[k] - b[k] for k in a}, SECRET), sa - sb, atol=1e-6)
    assert abs(sk.cosine(sa, sm) - _cos(a, mix)) < 0.1
    assert abs(sk.cosine(sa, sb)) < 0.15                    # independent updates look unrelated
    assert sk.cosine(sa, sk.sketch({k: 3 * v for k, v in a.items()}, SECRET)) > 0.999  # scale-free
    # A different secret is a different projection: the same pair, other coordinates.
    assert not np.allclose(sk.sketch(a, b"t" * 32), sa)
    assert np.allclose(sk.decode(sk.encode(sa)), sa, rtol=1e-6)


def test_overlap_sees_a_copy_diluted_with_noise():
    a = _delta(1)
    noise = _delta(9, scale=1.0)
    diluted = {k: a[k] + noise[k] for k in a}  # cos ≈ 0.71: a cosine limit of 0.9 misses it
    sa, sd = sk.sketch(a, SECRET), sk.sketch(diluted, SECRET)
    assert sk.cosine(sa, sd) < 0.8 and sk.overlap(sa, sd) > 0.85


def test_round_similarity_refuses_duplicates_and_copied_global():
    cfg = ValidationConfig()
    check_round_similarity([0.9, 0.97], 0.95, cfg)  # honest updates of a round agree a lot: passes
    with pytest.raises(UpdateRejected) as e:
        check_round_similarity([0.3, 0.9995], None, cfg)
    assert e.value.reason == "duplicate_work"
    with pytest.raises(UpdateRejected) as e:
        check_round_similarity([0.2], 0.999, cfg)
    assert e.value.reason == "copied_global"


def test_paired_loss_check_uses_the_standard_error():
    cfg = ValidationConfig(loss_z=2.0, min_paired_drop=1e-4)
    g = torch.Generator().manual_seed(0)
    before = 5 + torch.rand(64, generator=g)                      # sequences differ a lot in difficulty...
    honest = before - 0.01 - 0.002 * torch.randn(64, generator=g)  # ...but the paired drop is clear
    drop, se = check_loss_paired(before, honest, [], cfg)
    assert drop == pytest.approx(0.01, abs=2e-3) and se < 1e-3
    noisy = before - 0.002 * torch.randn(64, generator=g)         # mean drop ≈ 0 within its noise
    with pytest.raises(UpdateRejected, match="SE"):
        check_loss_paired(before, noisy, [], cfg)
    with pytest.raises(UpdateRejected, match="not finite"):
        check_loss_paired(before, before * float("nan"), [], cfg)


def test_later_rounds_refuse_harm_and_wrong_direction_only():
    cfg = ValidationConfig()
    g = torch.Generator().manual_seed(1)
    before = 5 + torch.rand(64, generator=g)
    weak = before - 0.001 * torch.randn(64, generator=g)           # an honest update within the noise: scored
    drop, se = check_loss_harm(before, weak, cfg)
    assert abs(drop) < 3 * se
    with pytest.raises(UpdateRejected, match="raises the holdout loss"):
        check_loss_harm(before, before + 0.01 + 0.001 * torch.randn(64, generator=g), cfg)


def test_descent_rule_falls_back_to_the_holdout_gradient_under_the_global_bar():
    cfg = ValidationConfig()
    asked = []

    def holdout(cos):
        def direction():
            asked.append(cos)
            if cos <= cfg.min_cosine:
                raise UpdateRejected("wrong_direction", f"uphill: {cos}")
            return cos
        return direction
    assert check_descent(0.8, holdout(0.1), cfg) is None and asked == []    # above the bar: gradient not needed
    assert check_descent(0.2, holdout(0.05), cfg) == 0.05                  # ailo-1b round 2: under the bar, downhill
    assert check_descent(None, holdout(0.07), cfg) == 0.07                 # version 0 / lossy codec
    assert check_descent(-0.5, holdout(0.02), cfg) == 0.02                 # under the bar, not a reversal
    asked.clear()
    for cos_global, cos_grad in ((-0.85, 0.004), (-0.5, -0.04), (0.2, 0.0), (None, -0.3)):  # undoes / uphill: refused
        with pytest.raises(UpdateRejected) as e:
            check_descent(cos_global, holdout(cos_grad), cfg)
        assert e.value.reason == "wrong_direction"
    assert 0.004 not in asked   # the reversal (−0.85) never reached the weak holdout test


def test_clip_scale_and_cooldown():
    assert clip_scale(2.0, 1.0, 1.5) == pytest.approx(0.75)
    assert clip_scale(1.0, 1.0, 1.5) == 1.0 and clip_scale(5.0, None, 1.5) == 1.0
    cfg = ValidationConfig(cooldown_base=2, cooldown_cap=60)
    assert [cooldown_seconds(k, cfg) for k in range(8)] == [0, 2, 4, 8, 16, 32, 60, 60]
    bucket = TokenBucket(rate=1.0, burst=10)
    bucket.charge("w", 12, now=0.0)
    assert not bucket.take("w", now=2.0) and bucket.take("w", now=3.5)  # a refusal costs refills


def test_fedavg_applies_the_clip_scale():
    base, d = _delta(0), _delta(1)
    out = FedAvg().aggregate(base, [WeightedDelta(d, 10, 0.5)], 1.0)
    assert torch.allclose(out["b"], base["b"] - 0.5 * d["b"], atol=1e-6)


def test_trimmed_mean_and_median_ignore_an_outlier():
    honest = [torch.full((5,), v) for v in (1.0, 1.1, 0.9, 1.05)]
    stack = torch.stack(honest + [torch.full((5,), 1000.0)])
    assert torch.allclose(trimmed_mean(stack, 0.2), torch.full((5,), (1.0 + 1.1 + 1.05) / 3))
    assert torch.allclose(coordinate_median(stack), torch.full((5,), 1.05))
    assert torch.allclose(coordinate_median(torch.stack(honest)), torch.full((5,), 1.025))
    base = {"w": torch.zeros(5)}
    ups = [WeightedDelta({"w": t}, 1) for t in stack]
    assert float(TrimmedMean().aggregate(base, ups)["w"].max()) < 2
    assert float(CoordinateMedian().aggregate(base, ups)["w"].max()) < 2
    assert float(FedAvg().aggregate(base, ups)["w"].max()) < -100  # plain mean is dragged away


def test_krum_drops_the_far_update_and_works_chunkwise():
    g = torch.Generator().manual_seed(3)
    ups = [torch.randn(50, generator=g) * 0.1 + 1 for _ in range(5)] + [torch.full((50,), -30.0)]
    stack = torch.stack(ups)
    d2 = pairwise_sq_dists(stack[:, :20]) + pairwise_sq_dists(stack[:, 20:])  # two chunks = whole
    assert torch.allclose(d2, pairwise_sq_dists(stack), rtol=1e-9)
    keep = krum_select(d2, f=1, m=5)
    assert 5 not in keep and len(keep) == 5
    assert krum_select(d2[:3, :3], f=1, m=1) == [0, 1, 2]  # too few to judge: keep all
    out = MultiKrum().aggregate({"w": torch.zeros(50)}, [WeightedDelta({"w": u}, 1) for u in ups])
    assert float(out["w"].mean()) < -0.5  # M − mean of the 5 honest (≈ +1)


def test_fedavgm_accumulates_momentum_and_instances_are_fresh():
    agg = make_aggregator("fedavgm")
    assert agg is not AGGREGATORS["fedavgm"] and isinstance(agg, FedAvgM)
    base = {"w": torch.zeros(3)}
    up = [WeightedDelta({"w": torch.ones(3)}, 1)]
    first = agg.aggregate(base, up, 1.0)
    second = agg.aggregate(first, up, 1.0)
    assert torch.allclose(first["w"], -torch.ones(3)) and torch.allclose(second["w"], -torch.ones(3) * 2.9)
    assert make_aggregator("fedavgm").velocity == {}
    with pytest.raises(ValueError, match="unknown aggregator"):
        make_aggregator("nope")


def test_holdout_is_private_rotating_and_secret(tmp_path, corpus_dir):
    public, private = carve_private(corpus_dir, tmp_path / "pub", tmp_path / "priv", every=10)
    assert public and private and not {p.name for p in public} & {p.name for p in private}
    with pytest.raises(ValueError, match="overlaps"):
        check_private(corpus_dir / "sub", corpus_dir)
    check_private(tmp_path / "priv", tmp_path / "pub")
    secret = load_secret(tmp_path)
    assert len(secret) == 32 and load_secret(tmp_path) == secret
    assert (tmp_path / "poc-secret").stat().st_mode & 0o077 == 0
    pool = PrivateHoldout.open(tmp_path / "priv", tmp_path / "pub", secret, sequences=32)
    assert pool.private and pool.pool_windows(64) > 100 * 32  # large pool: little overlap between versions
    x0, y0 = pool.windows(0, 64)
    assert x0.shape == (32, 64) and torch.equal(x0[:, 1:], y0[:, :-1])
    assert torch.equal(pool.windows(0, 64)[0], x0)                 # fixed within a version
    assert not torch.equal(pool.windows(1, 64)[0], x0)             # rotates with the version
    other = PrivateHoldout(pool.tokens, b"x" * 32, 32)
    assert not torch.equal(other.windows(0, 64)[0], x0)            # unpredictable without the secret
    fallback = PrivateHoldout.open(None, tmp_path / "pub", secret, sequences=8)
    assert not fallback.private


def test_sketch_signs_are_a_fixed_integer_hash_so_cpu_and_gpu_sketches_agree():
    """The signs are pinned to a reference written with Python's unbounded ints: torch's int64
    arithmetic must not overflow or differ by device for a stored sketch to stay comparable."""
    def reference(seed: int, i: int) -> float:
        x = (i * 0x9E3779B1 + seed) & 0xFFFFFFFF
        for _ in range(2):
            x ^= x >> 16
            x = (x * 0x045D9F3B) & 0xFFFFFFFF
        x ^= x >> 16
        return float((x & 1) * 2 - 1)
    seed = 0xFFFFFFFF
    for start in (0, 2**31 - 3, 2**33 + 7):
        got = sk._signs(seed, start, 5, torch.device("cpu")).tolist()
        assert got == [reference(seed, start + j) for j in range(5)]
    signs = sk._signs(1234, 0, 1 << 20, torch.device("cpu"))
    assert abs(float(signs.mean())) < 0.01 and abs(float((signs[1:] * signs[:-1]).mean())) < 0.01
