import numpy as np
import pytest
import torch

from ailo.federation.core.aggregate import FedAvg, WeightedDelta, weights


def _rand_state(seed):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(4, 3, generator=g), "b": torch.randn(5, generator=g)}


def test_fedavg_is_sample_weighted_mean_of_deltas():
    base = _rand_state(0)
    deltas = [_rand_state(i) for i in (1, 2, 3)]
    counts = [10, 30, 60]
    out = FedAvg().aggregate(base, [WeightedDelta(d, n) for d, n in zip(deltas, counts)], server_lr=1.0)
    for k in base:
        expected = base[k].numpy() - sum(n / 100 * d[k].numpy() for d, n in zip(deltas, counts))
        np.testing.assert_allclose(out[k].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_fedavg_with_eta_one_equals_weighted_mean_of_client_models():
    base = _rand_state(0)
    clients = [_rand_state(i) for i in (5, 6)]
    deltas = [{k: base[k] - c[k] for k in base} for c in clients]
    out = FedAvg().aggregate(base, [WeightedDelta(deltas[0], 1), WeightedDelta(deltas[1], 3)])
    for k in base:
        assert torch.allclose(out[k], 0.25 * clients[0][k] + 0.75 * clients[1][k], atol=1e-6)


def test_server_learning_rate_scales_the_step():
    base = _rand_state(0)
    d = _rand_state(1)
    out = FedAvg().aggregate(base, [WeightedDelta(d, 5)], server_lr=0.5)
    assert torch.allclose(out["a"], base["a"] - 0.5 * d["a"])
    assert base["a"].data_ptr() != out["a"].data_ptr()  # base untouched


def test_weights_refuse_empty_and_nonpositive():
    assert weights([1, 3]) == [0.25, 0.75]
    with pytest.raises(ValueError):
        weights([])
    with pytest.raises(ValueError):
        weights([2, 0])


def test_streaming_fedavg_equals_fedavg_within_fp32_tolerance():
    base = _rand_state(0)
    deltas = [_rand_state(i) for i in range(1, 8)]
    counts = [3, 1, 4, 1, 5, 9, 2]
    agg = FedAvg()
    expected = agg.aggregate(base, [WeightedDelta(d, n) for d, n in zip(deltas, counts)], server_lr=0.7)
    state = agg.start(base)
    for d, n in zip(deltas, counts):
        agg.fold(state, WeightedDelta(d, n))
    out = agg.finish(state, base, server_lr=0.7)
    for k in base:
        torch.testing.assert_close(out[k], expected[k], rtol=1e-6, atol=1e-6)


def test_sliced_aggregation_from_disk_for_aggregators_that_need_all_updates(tmp_path):
    """A non-streaming aggregator is run slice by slice over the stored update files."""
    from safetensors.torch import save_file

    from ailo.federation.coordinator.accumulator import RoundAccumulator

    class WholeFedAvg:  # only `aggregate`: like a robust aggregator, it needs every update
        name = "whole"

        def __init__(self):
            self.largest_slice = 0

        def aggregate(self, base, updates, server_lr=1.0):
            updates = list(updates)
            self.largest_slice = max(self.largest_slice, max(t.numel() for t in base.values()))
            return FedAvg().aggregate(base, updates, server_lr)

    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(64, 32, generator=g), "b": torch.randn(32, generator=g), "s": torch.tensor(1.5)}
    deltas = [{k: torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(4)]
    files = []
    for i, d in enumerate(deltas):
        save_file(d, str(tmp_path / f"u{i}"))
        files.append((i + 1, tmp_path / f"u{i}", i + 2))
    agg = WholeFedAvg()
    acc = RoundAccumulator(agg, slice_elems=256)
    acc.reset(1)
    for uid, _, n in files:
        acc.fold(uid, base, {}, n)
    out = acc.result(base, files, server_lr=1.0)
    expected = FedAvg().aggregate(base, [WeightedDelta(d, n) for d, (_, _, n) in zip(deltas, files)])
    for k in base:
        torch.testing.assert_close(out[k], expected[k], rtol=1e-6, atol=1e-6)
    assert agg.largest_slice <= 256  # never a whole 64×32 tensor from K files at once


def test_streaming_result_takes_the_updates_folded_in_any_order():
    """Concurrent uploads reach the pipeline out of id order: ids folded 2, 1 are the round's {1, 2}."""
    from ailo.federation.coordinator.accumulator import RoundAccumulator

    g = torch.Generator().manual_seed(3)
    base = {"w": torch.randn(8, 4, generator=g)}
    deltas = {uid: {"w": torch.randn(8, 4, generator=g)} for uid in (1, 2)}
    acc = RoundAccumulator(FedAvg())
    acc.reset(1)
    for uid in (2, 1):
        acc.fold(uid, base, deltas[uid], 10 * uid)
    out = acc.result(base, [(1, None, 10), (2, None, 20)], server_lr=1.0)
    expected = FedAvg().aggregate(base, [WeightedDelta(deltas[1], 10), WeightedDelta(deltas[2], 20)])
    torch.testing.assert_close(out["w"], expected["w"], rtol=1e-6, atol=1e-6)
    acc.fold(2, base, deltas[2], 20)   # idempotent
    with pytest.raises(RuntimeError, match="accumulator holds"):
        acc.result(base, [(1, None, 10), (2, None, 20), (3, None, 5)], server_lr=1.0)
