import pytest
import torch

from ailo.data import TokenDataset
from ailo.model import build_model
from ailo.training import TrainConfig, apply_delta, evaluate, train_local


@pytest.mark.slow  # > 20 s on the 2-core box (make test runs it; make test-fast skips it)
def test_trainer_lowers_validation_loss_on_shipped_corpus(corpus_dir):
    model = build_model("ailo-tiny", seed=0)
    train = TokenDataset.from_dir(corpus_dir, "train", shard=0, num_shards=3)
    val = TokenDataset.from_dir(corpus_dir, "val").fixed_batches(2, 8, 64)
    before = evaluate(model, val)
    upd = train_local(model, train.random_batches(8, 64, seed=0), TrainConfig(steps=40, lr=3e-3))
    after = evaluate(model, val)
    assert after < before - 2.0, (before, after)
    assert upd.steps == 40 and upd.n_samples == 40 * 8 and upd.tokens == 40 * 8 * 64
    assert upd.losses[-1] < upd.losses[0]


def test_update_is_pseudo_gradient_start_minus_end():
    model = build_model("ailo-tiny", seed=1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))) for _ in range(3)]
    upd = train_local(model, batches, TrainConfig(steps=10, optimizer="sgd", lr=0.5))
    assert upd.steps == 3  # stops when the data runs out
    for k, v in model.state_dict().items():
        assert torch.allclose(start[k] - v, upd.delta[k], atol=1e-6), k
    restored = build_model("ailo-tiny", seed=1)
    apply_delta(restored, upd.delta)
    for k, v in model.state_dict().items():
        assert torch.allclose(restored.state_dict()[k], v, atol=1e-6), k


def test_gradient_clipping_bounds_sgd_step():
    model = build_model("ailo-tiny", seed=2)
    batch = [(torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16)))]
    upd = train_local(model, batch, TrainConfig(steps=1, optimizer="sgd", lr=1.0, grad_clip=0.1))
    norm = torch.sqrt(sum((d.double() ** 2).sum() for d in upd.delta.values()))
    assert float(norm) <= 0.1 + 1e-4


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer"):
        train_local(build_model("ailo-tiny"), [], TrainConfig(optimizer="lion"))


def test_compiled_forward_keeps_parameter_names(monkeypatch):
    calls = []
    original = torch.compile

    def eager_compile(model, **kw):  # the dynamo path without inductor's minute of C++ builds
        calls.append(model)
        return original(model, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", eager_compile)
    model = build_model("ailo-tiny", seed=3)
    batches = [(torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16)))] * 2
    upd = train_local(model, batches, TrainConfig(steps=2, compile=True))
    assert calls == [model]
    assert set(upd.delta) == set(build_model("ailo-tiny").state_dict())
    assert all(float(d.abs().sum()) > 0 for k, d in upd.delta.items() if k.endswith("weight"))


def test_warmup_scales_the_first_adamw_step_by_one_over_n():
    """AdamW's first step moves every weight by ~lr whatever its gradient; a warm-up of N steps
    makes that first step lr/N (what keeps a round from overshooting right after init)."""
    batch = [(torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16)))]
    norms = {}
    for warmup in (0, 4):
        model = build_model("ailo-tiny", seed=3)
        upd = train_local(model, batch, TrainConfig(steps=1, lr=1e-3, grad_clip=0.0, warmup_steps=warmup))
        norms[warmup] = float(torch.sqrt(sum((d.double() ** 2).sum() for d in upd.delta.values())))
    assert norms[4] == pytest.approx(norms[0] / 4, rel=1e-3)
