import numpy as np
import pytest
import torch

from ailo.federation.aggregate import FedAvg, WeightedDelta, weights


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
