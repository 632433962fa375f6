"""Outer optimizers on the averaged pseudo-gradient, and their state across coordinator restarts."""
import shutil

import pytest
import torch

from ailo.federation.core.aggregate import FedAvg, WeightedDelta, average_delta
from ailo.federation.coordinator.coordinator import Coordinator, CoordinatorConfig
from ailo.federation.core.outer import FedAdam, OuterSGD
from ailo.federation.core.registry import round_strategy
from ailo.federation.core.update_format import UpdateMeta, encode_update


def _rand(seed, shapes={"a": (4, 3), "b": (5,)}):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def test_average_delta_is_the_weighted_mean():
    base = _rand(0)
    d1, d2 = _rand(1), _rand(2)
    avg = average_delta(FedAvg(), base, [WeightedDelta(d1, 1), WeightedDelta(d2, 3)])
    for k in base:
        assert torch.allclose(avg[k], 0.25 * d1[k] + 0.75 * d2[k], atol=1e-7)


def test_nesterov_matches_torch_sgd_on_pseudo_gradients():
    base, grads = _rand(0), [_rand(s) for s in (1, 2, 3)]
    params = {k: torch.nn.Parameter(v.clone()) for k, v in base.items()}
    ref = torch.optim.SGD(params.values(), lr=0.7, momentum=0.9, nesterov=True)
    outer, weights = OuterSGD(0.7, 0.9, nesterov=True), base
    for g in grads:
        for k, p in params.items():
            p.grad = g[k].clone()
        ref.step()
        weights = outer.step(weights, g)
    for k in base:
        assert torch.allclose(weights[k], params[k].detach(), atol=1e-6)


def test_fedadam_step_follows_the_formula():
    base, g = _rand(0), _rand(1)
    out = FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3).step(base, g)
    for k in base:
        m, v = 0.1 * g[k], 0.01 * g[k] ** 2
        assert torch.allclose(out[k], base[k] - 0.1 * m / (v.sqrt() + 1e-3), atol=1e-6)


def _submit(coord, seed, client="c"):
    delta = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(seed)) * 1e-3
             for k, v in coord.model.state_dict().items()}
    rnd = coord.current_round()
    receipt = coord.submit(UpdateMeta(f"{client}{seed}", rnd.id, rnd.base_version, 8, 5.0), encode_update(delta))
    coord.drain(tick=False)  # the validation pipeline's work, in this thread
    return coord.verdict(receipt["update_id"])


@pytest.mark.parametrize("strategy", [dict(outer="nesterov"), dict(aggregator="fedavgm")])
def test_restart_keeps_outer_optimizer_state(tmp_path, strategy):
    """Nesterov's buffers and FedAvgM's velocity (outer.py's momentum SGD) survive a restart."""
    cfg = CoordinatorConfig(min_updates=1, val_batches=1, server_lr=0.7, **strategy)
    steady = Coordinator(cfg, tmp_path / "steady")
    for seed in (1, 2, 3):
        assert _submit(steady, seed)["aggregated"]

    restarted = Coordinator(cfg, tmp_path / "restarted")
    assert _submit(restarted, 1)["aggregated"] and _submit(restarted, 2)["aggregated"]
    restarted.store.close()
    shutil.copytree(tmp_path / "restarted", tmp_path / "amnesiac")
    resumed = Coordinator(cfg, tmp_path / "restarted")  # a new process on the same state dir
    assert resumed.outer.steps == 2 and resumed.outer.buffers
    for k, b in restarted.outer.buffers.items():
        assert torch.equal(resumed.outer.buffers[k], b)
    assert _submit(resumed, 3)["aggregated"]

    for k, v in steady.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k

    # without the saved state the momentum restarts from zero and the weights differ
    shutil.rmtree(tmp_path / "amnesiac" / "outer")
    amnesiac = Coordinator(cfg, tmp_path / "amnesiac")
    assert amnesiac.outer.steps == 0
    _submit(amnesiac, 3)
    assert not all(torch.equal(amnesiac.model.state_dict()[k], v) for k, v in steady.model.state_dict().items())


def test_fedavgm_is_fedavg_streamed_into_momentum_and_takes_no_other_outer():
    agg, outer = round_strategy("fedavgm", "sgd", 0.5)
    assert isinstance(agg, FedAvg) and isinstance(outer, OuterSGD) and outer.momentum == 0.9 and outer.lr == 0.5
    with pytest.raises(ValueError, match="takes --outer sgd"):
        round_strategy("fedavgm", "nesterov", 0.5)
