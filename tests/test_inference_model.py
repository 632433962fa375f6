"""Span models vs `transformers` and `ailo.model.GPT`: same logits, same greedy tokens, and a
loader that reads only the span's tensors (R8)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from ailo.inference.units import RequestCache
from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.inference.generate import sample
from ailo.inference.loader import load_span, save_ailo_checkpoint
from ailo.inference.spec import SpecError
from ailo.inference.families import read_spec, spec_from_config
from ailo.inference.wire import Frame, WireError
from ailo.model import build_model

PROMPT = [5, 17, 99, 3, 250, 11, 7]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    # GQA (4 heads / 2 kv), tied embeddings, non-default rope_theta
    return d, make_hf_checkpoint(d, "llama", tie=True, rope_theta=5e5, init_std=0.3)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen")
    # q/k/v bias, untied head, sharded files with model.safetensors.index.json
    return d, make_hf_checkpoint(d, "qwen2", rope_theta=1e6, init_std=0.3, max_shard_size="100KB")


def all_names(d) -> set[str]:
    names = set()
    for f in d.glob("*.safetensors"):
        with safe_open(f, "pt") as h:
            names |= set(h.keys())
    return names


def expected_names(d, start: int, end: int) -> set[str]:
    """Independent statement of what a span must read: its half-layers, embeddings only when
    first, final norm + head (or the tied embedding) only when last."""
    spec = read_spec(d)
    out = set()
    for name in all_names(d):
        if name.startswith("model.layers."):
            layer = int(name.split(".")[2])
            unit = 2 * layer + (0 if ("self_attn" in name or "input_layernorm" in name) else 1)
            if start <= unit < end:
                out.add(name)
        elif name == "model.embed_tokens.weight":
            if start == 0 or (end == spec.n_units and spec.tie_embeddings):
                out.add(name)
        elif end == spec.n_units:
            out.add(name)  # model.norm.weight, lm_head.weight
    return out


def run_pipeline(spans, prompt: list[int], new_tokens: int) -> list[int]:
    caches = [RequestCache() for _ in spans]
    tokens, x, pos = list(prompt), torch.tensor([prompt]), 0
    for _ in range(new_tokens):
        h = x
        for s, c in zip(spans, caches):
            h = s.model(h, pos, c)
        pos += x.shape[1]
        tokens.append(int(h.argmax(-1)))
        x = torch.tensor([[tokens[-1]]])
    return tokens[len(prompt):]


@pytest.mark.parametrize("which", ["llama", "qwen"])
@pytest.mark.parametrize("bounds", [[0, 8], [0, 2, 6, 8], [0, 3, 4, 7, 8]])  # whole, layer and half-layer splits
def test_span_pipeline_matches_transformers_greedy(which, bounds, request):
    d, ref = request.getfixturevalue(which)
    spans = [load_span(d, a, b) for a, b in zip(bounds, bounds[1:])]
    for s, a, b in zip(spans, bounds, bounds[1:]):
        assert set(s.tensor_names) == expected_names(d, a, b)
    if len(spans) > 1:
        assert not any("embed_tokens" in n for n in spans[1].tensor_names)
    got = run_pipeline(spans, PROMPT, 48)
    want = ref.generate(torch.tensor([PROMPT]), max_new_tokens=48, do_sample=False)[0, len(PROMPT):].tolist()
    assert got == want
    assert len(set(got)) > 5  # a real sequence, not one repeated token


def test_logits_match_transformers_with_cache(qwen):
    d, ref = qwen
    spans = [load_span(d, 0, 5), load_span(d, 5, 8)]
    seq = torch.tensor([PROMPT + [1, 2, 3, 4]])
    with torch.no_grad():
        full = ref(seq).logits[0]
    caches = [RequestCache(), RequestCache()]
    for t in range(seq.shape[1]):  # one position at a time through the KV caches
        h = seq[:, t:t + 1]
        for s, c in zip(spans, caches):
            h = s.model(h, t, c)
        torch.testing.assert_close(h[0], full[t], atol=2e-5, rtol=1e-4)


def test_loader_reads_only_its_layers_from_a_sharded_checkpoint(qwen):
    d, _ = qwen
    assert (d / "model.safetensors.index.json").exists()
    middle = load_span(d, 2, 6)
    assert set(middle.tensor_names) == expected_names(d, 2, 6)
    assert all(n.startswith(("model.layers.1.", "model.layers.2.")) for n in middle.tensor_names)
    assert middle.tensor_bytes < sum(f.stat().st_size for f in d.glob("*.safetensors")) / 2


def test_ailo_gpt_preset_spans_match_the_model(tmp_path):
    gpt = build_model("ailo-tiny", seed=1).eval()
    save_ailo_checkpoint(gpt, tmp_path)
    spec = read_spec(tmp_path)
    assert (spec.family, spec.n_layers, spec.tie_embeddings) == ("ailo", 2, True)
    spans = [load_span(tmp_path, 0, 1), load_span(tmp_path, 1, 4)]
    assert set(spans[0].tensor_names) == {"wte.weight", "wpe.weight", "blocks.0.ln1.weight", "blocks.0.ln1.bias",
                                          "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
                                          "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias"}
    assert {"ln_f.weight", "ln_f.bias", "wte.weight"} <= set(spans[1].tensor_names)
    assert "wpe.weight" not in spans[1].tensor_names
    seq = torch.randint(0, spec.vocab, (1, 12))
    with torch.no_grad():
        full = gpt(seq)[0]
    caches = [RequestCache(), RequestCache()]
    h = seq[:, :8]
    for s, c in zip(spans, caches):
        h = s.model(h, 0, c)
    torch.testing.assert_close(h[0], full[7], atol=1e-4, rtol=1e-4)
    for t in range(8, 12):
        h = seq[:, t:t + 1]
        for s, c in zip(spans, caches):
            h = s.model(h, t, c)
        torch.testing.assert_close(h[0], full[t], atol=1e-4, rtol=1e-4)


def test_cache_position_mismatch_is_refused(llama):
    d, _ = llama
    span = load_span(d, 0, 8)
    cache = RequestCache()
    span.model(torch.tensor([PROMPT]), 0, cache)
    with pytest.raises(ValueError, match="cache holds 7 positions"):
        span.model(torch.tensor([[1]]), 3, cache)


def test_unsupported_configs_are_named(llama):
    d, _ = llama
    cfg = json.loads((d / "config.json").read_text())
    with pytest.raises(SpecError, match="rope type 'linear'"):
        spec_from_config(dict(cfg, rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}))
    with pytest.raises(SpecError, match="model_type 'mistral'"):
        spec_from_config(dict(cfg, model_type="mistral"))
    with pytest.raises(SpecError, match="sliding-window"):
        spec_from_config(dict(cfg, model_type="qwen2", use_sliding_window=True))
    assert spec_from_config(cfg).rope_theta == 5e5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
def test_frames_round_trip_raw_bytes(dtype):
    t = (torch.randn(1, 3, 16) * 100).to(dtype)
    f = Frame("req-1", 42, (4, 10), t, reset=True)
    data = f.encode()
    assert len(data) < t.numel() * t.element_size() + 64  # raw payload + a small header
    g = Frame.decode(data)
    assert (g.request_id, g.start, g.span, g.reset) == ("req-1", 42, (4, 10), True)
    assert g.tensor.dtype == dtype and torch.equal(g.tensor, t)
    with pytest.raises(WireError):
        Frame.decode(data[:-2])
    with pytest.raises(WireError):
        Frame.decode(b"JSON" + data[4:])


def test_sampling_greedy_temperature_top_p():
    logits = torch.tensor([1.0, 3.0, 2.9, -5.0])
    assert sample(logits, 0.0, 1.0, None) == 1
    g = torch.Generator().manual_seed(0)
    draws = {sample(logits, 1.0, 0.5, g) for _ in range(200)}
    assert draws == {1, 2}  # top-p 0.5 keeps the two leading tokens only
    assert {sample(logits, 0.7, 0.01, g) for _ in range(50)} == {1}
    ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert [sample(logits, 2.0, 1.0, ga) for _ in range(20)] == [sample(logits, 2.0, 1.0, gb) for _ in range(20)]
    wide = {sample(logits, 5.0, 1.0, g) for _ in range(400)}
    assert 0 in wide and 3 in wide
