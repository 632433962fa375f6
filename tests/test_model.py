import torch

from ailo.model import PRESETS, build_model, count_parameters, flops_per_token, get_preset


def test_ailo_1b_matches_spec_r1():
    cfg = get_preset("ailo-1b")
    assert (cfg.n_layer, cfg.n_embd, cfg.n_ffn, cfg.n_head, cfg.vocab_size, cfg.n_ctx) == (24, 1600, 6400, 25, 50257, 2048)
    model = build_model("ailo-1b", device="meta")
    n = count_parameters(model)
    # 24 x (4·1600² + 2·1600·6400 + biases/norms) + 50257·1600 + 2048·1600 + final norm, tied head
    per_layer = 4 * 1600 * 1600 + 4 * 1600 + 2 * 1600 * 6400 + 6400 + 1600 + 4 * 1600
    expected = 24 * per_layer + 50257 * 1600 + 2048 * 1600 + 2 * 1600
    assert n == expected
    print(f"ailo-1b parameters: {n:,}")
    assert 0.8e9 < n < 0.86e9


def test_presets_are_ordered_and_tiny_is_small():
    sizes = [count_parameters(build_model(p, device="meta")) for p in ("ailo-tiny", "ailo-small", "ailo-1b")]
    assert sizes == sorted(sizes)
    assert sizes[0] < 5_000_000


def test_deterministic_init_and_shapes():
    a, b, c = build_model("ailo-tiny", seed=3), build_model("ailo-tiny", seed=3), build_model("ailo-tiny", seed=4)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.wte.weight, c.wte.weight)
    idx = torch.randint(0, 50257, (2, 16))
    assert a(idx).shape == (2, 16, 50257)


def test_attention_is_causal():
    model = build_model("ailo-tiny").eval()
    idx = torch.randint(0, 50257, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 7) % 50257
    with torch.no_grad():
        assert torch.allclose(model(idx)[0, :8], model(changed)[0, :8], atol=1e-5)
        assert not torch.allclose(model(idx)[0, 8:], model(changed)[0, 8:], atol=1e-3)


def test_tied_embeddings_and_loss_at_init():
    model = build_model("ailo-tiny")
    assert "lm_head.weight" not in model.state_dict()
    idx = torch.randint(0, 50257, (2, 32))
    loss = float(model(idx[:, :-1], idx[:, 1:]).detach())
    assert abs(loss - torch.log(torch.tensor(50257.0)).item()) < 0.5


def test_flops_per_token_palm_accounting():
    cfg = PRESETS["ailo-1b"]
    matmul = 24 * (4 * 1600**2 + 2 * 1600 * 6400) + 50257 * 1600
    assert flops_per_token(cfg) == 6 * matmul + 12 * 24 * 1600 * 2048


def test_empty_model_skips_the_init_and_takes_loaded_weights_exactly():
    from ailo.model import empty_model
    ref = build_model("ailo-tiny", seed=3)
    m = empty_model("ailo-tiny")
    assert all(p.device.type == "cpu" for p in m.parameters())
    m.load_state_dict(ref.state_dict())
    x = torch.randint(0, ref.cfg.vocab_size, (2, 16))
    assert torch.equal(m(x), ref(x))
