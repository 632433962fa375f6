"""The page's own code on WebGPU: the Node runner (ailo/web/node/runner.mjs, the same modules the
page bundles) on Dawn. In CI Dawn's adapter is Mesa's lavapipe (software Vulkan, installed by
`make setup`); a missing adapter FAILS these tests — only AILO_SKIP_WEBGPU=1 skips them.

On the same `ailo-tiny` weights and batch: loss and every gradient, and two AdamW steps of the
page's `trainLocal` (losses and Δ), equal PyTorch's within 1e-3 relative; a room span's forward
(`BrowserSpan`: prefill + cached decode, Llama with GQA and tied embeddings, and ailo GPT)
equals `SpanModel`'s; the page's slice trainer (frozen blocks streamed from chunks) gives the
full model's gradient of the slice's tensors; two federated rounds end to end against a real coordinator with compact
downloads and the int8 codec: the second round's model arrives as the int8 patch alone,
rebuilt bit for bit (every chunk's sha256), and both signed updates are accepted.
"""
from __future__ import annotations

import json
import os

import httpx
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save_file

from ailo.chunks import split_state_dict, write_chunks
from ailo.federation.core.slices import make_slice
from ailo.inference.units import RequestCache
from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.inference.loader import load_span, save_ailo_checkpoint
from ailo.inference.families import read_spec
from ailo.model import GPT, GPTConfig, build_model
from ailo.paths import corpus_dir
from ailo.tokenizer import encode
from ailo.training import TrainConfig, train_local
from ailo.testing import noderunner
from tests.pages import coordinator_process

pytestmark = pytest.mark.slow

B, T = 2, 32
TOL = 1e-3


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def webgpu():
    if os.environ.get(noderunner.SKIP_ENV) == "1":
        pytest.skip(f"{noderunner.SKIP_ENV}=1: WebGPU tests skipped on this machine")
    return noderunner.webgpu_info()  # raises (the test errors) when Dawn finds no adapter


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("webgpu-ref")
    torch.manual_seed(0)
    model = build_model("ailo-tiny", seed=0)
    g = torch.Generator().manual_seed(7)
    data = torch.randint(0, 50257, (2, B, T + 1), generator=g)
    batches = [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "weights.safetensors")
    (tmp / "batches.json").write_text(json.dumps([[x.tolist(), y.tolist()] for x, y in batches]))
    loss = model(*batches[0])
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return {"dir": tmp, "batches": batches, "loss": float(loss.detach()), "grads": grads}


def test_runner_uses_webgpu_with_an_adapter(webgpu):
    assert webgpu["backend"] == "webgpu"
    adapter = webgpu["adapter"]
    assert adapter and (adapter["vendor"] or adapter["description"]), webgpu
    print("WebGPU adapter:", adapter, "software" if webgpu["software"] else "hardware")


def test_loss_and_gradients_match_pytorch(webgpu, reference):
    d = reference["dir"]
    out = noderunner.run("grads", {"backend": "webgpu", "preset": "ailo-tiny", "weights": str(d / "weights.safetensors"),
                                   "batches": str(d / "batches.json"), "out": str(d / "grads.safetensors")})
    assert out["backend"] == "webgpu"
    grads = st_load((d / "grads.safetensors").read_bytes())
    ref = reference["grads"]
    assert set(grads) == set(ref)
    loss_err = abs(out["loss"] - reference["loss"]) / abs(reference["loss"])
    errs = {n: rel_err(grads[n], ref[n]) for n in ref}
    worst = max(errs, key=errs.get)
    print(f"webgpu: loss {out['loss']:.6f} vs torch {reference['loss']:.6f} (rel {loss_err:.2e}); "
          f"worst grad {worst} rel {errs[worst]:.2e}; fwd+bwd {out['ms']:.0f} ms")
    assert loss_err <= TOL
    assert errs[worst] <= TOL, errs
    assert "validation" not in out["stderr"], out["stderr"][-2000:]  # no WebGPU validation error


def test_training_steps_match_train_local(webgpu, reference):
    """Two AdamW steps with clipping: the losses and Δ = M_start − M_end equal train_local's."""
    d = reference["dir"]
    cfg = {"steps": 2, "batch_size": B, "lr": 1e-3, "optimizer": "adamw", "grad_clip": 1.0}
    out = noderunner.run("train", {"backend": "webgpu", "preset": "ailo-tiny", "weights": str(d / "weights.safetensors"),
                                   "batches": str(d / "batches.json"), "config": cfg, "out": str(d / "delta.safetensors")})
    model = build_model("ailo-tiny", seed=0)
    upd = train_local(model, reference["batches"], TrainConfig(steps=2, batch_size=B, lr=1e-3, optimizer="adamw"))
    delta = st_load((d / "delta.safetensors").read_bytes())
    assert out["backend"] == "webgpu" and out["steps"] == upd.steps == 2 and out["tokens"] == upd.tokens
    for a, b in zip(out["losses"], upd.losses):
        assert abs(a - b) / abs(b) <= TOL
    errs = {n: rel_err(delta[n], upd.delta[n]) for n in upd.delta if upd.delta[n].norm() > 0}
    worst = max(errs, key=errs.get)
    print(f"adamw: losses {out['losses']} vs {upd.losses}; worst Δ {worst} rel {errs[worst]:.2e}")
    assert errs[worst] <= TOL, errs
    assert set(delta) == set(upd.delta) and delta["wte.weight"].abs().sum() > 0
    assert "validation" not in out["stderr"], out["stderr"][-2000:]


PROMPT = [7, 100, 42, 9, 250, 3, 77]
DECODE = [11, 300]


def span_reference(root, start, end, inputs):
    span = load_span(root, start, end, dtype="float32").model
    cache, pos, out = RequestCache(), 0, []
    for x in inputs:
        out.append(span(x, pos, cache).float())
        pos += x.shape[1]
    return out


@pytest.mark.parametrize("units", [(0, 1), (1, 2), (2, 3)])
def test_slice_gradients_match_pytorch(webgpu, reference, tmp_path, units):
    """The page's slice trainer (slice.js: frozen blocks read from chunks one at a time, the
    backward re-runs each block on its kept input, micro-batches of 1) gives the full model's
    loss and the full model's gradient of exactly the slice's tensors (embed; blocks.0; the last
    block with ln_f)."""
    model = build_model("ailo-tiny", seed=0)
    manifest, blobs = split_state_dict(model.state_dict(), 12, preset="ailo-tiny", config=model.cfg.to_dict())
    write_chunks(tmp_path / "chunks", manifest, blobs)
    d = reference["dir"]
    out = noderunner.run("slicegrads", {"backend": "webgpu", "chunks": str(tmp_path / "chunks"), "units": list(units),
                                        "batches": str(d / "batches.json"), "micro": 1, "keep": 1,
                                        "out": str(tmp_path / "g.safetensors")})
    block_bytes = sum(c.size for c in manifest.chunks if any(p.chunk == c.index for n, t in manifest.tensors.items()
                                                             if n.startswith("blocks.1.") for p in t.parts))
    assert out["bytesRead"] >= 2 * block_bytes  # frozen blocks were read from the chunks (forward + backward)
    grads = st_load((tmp_path / "g.safetensors").read_bytes())
    shapes = {n: t.shape for n, t in manifest.tensors.items()}
    assert sorted(grads) == sorted(make_slice(shapes, model.cfg.n_layer, *units).names)
    errs = {n: rel_err(grads[n], reference["grads"][n]) for n in grads}
    worst = max(errs, key=errs.get)
    print(f"slice {units}: loss {out['loss']:.6f} vs {reference['loss']:.6f}; worst grad {worst} rel {errs[worst]:.2e}")
    assert abs(out["loss"] - reference["loss"]) / reference["loss"] <= TOL
    assert errs[worst] <= TOL, errs
    assert out["leaked"] <= 1  # the causal mask, cached for the page's lifetime


@pytest.mark.parametrize("family", ["llama", "gpt"])
def test_span_forward_matches_pytorch_span(webgpu, tmp_path, family):
    root = tmp_path / family
    if family == "llama":  # grouped-query attention, tied embeddings, rope_theta 5e5
        make_hf_checkpoint(root, "llama", layers=4, heads=4, kv_heads=2, tie=True, rope_theta=5e5, init_std=0.3)
        spans = [(0, 3), (3, 8)]
    else:
        torch.manual_seed(0)
        save_ailo_checkpoint(GPT(GPTConfig(name="gpt-test", n_layer=2, n_embd=32, n_head=4, n_ffn=64, n_ctx=32,
                                           vocab_size=512)), root)
        spans = [(0, 1), (1, 4)]
    spec = read_spec(root)
    steps = [torch.tensor([PROMPT])] + [torch.tensor([[t]]) for t in DECODE]
    jobs, refs = [], []
    for start, end in spans:  # each span gets what the previous one gives, as in a pipeline
        ref = span_reference(root, start, end, steps)
        jobs.append({"start": start, "end": end, "steps": [x.flatten().tolist() for x in steps]})
        refs.append(ref)
        steps = ref
    out = noderunner.run("span", {"backend": "webgpu", "spec": spec.to_dict(), "spans": jobs,
                                  "files": [str(p) for p in sorted(root.glob("*.safetensors"))]})
    assert out["backend"] == "webgpu"
    for (start, end), got, ref in zip(spans, out["spans"], refs):
        assert sorted(got["names"]) == sorted(load_span(root, start, end).tensor_names)
        errs = []
        for g, r in zip(got["outs"], ref):
            assert g["shape"] == list(r.shape)
            errs.append(rel_err(torch.tensor(g["data"]).reshape(r.shape), r))
        print(f"{family} [{start},{end}) webgpu: rel errors {['%.1e' % e for e in errs]}")
        assert max(errs) <= TOL, errs


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    with coordinator_process(tmp_path_factory.mktemp("coord"), "--compact-downloads", "--codec", "int8",
                             "--min-updates", "1", "--local-steps", "2", "--batch-size", "2", "--seq-len", "32",
                             "--chunks", "4", "--round-seconds", "600") as url:
        yield url


def test_two_rounds_end_to_end_through_the_runner(webgpu, coordinator, tmp_path):
    """The page's contributeRound on WebGPU: register, bf16 model, train, int8 update, signed, accepted;
    then version 1 arrives as the int8 patch alone and round 2 is accepted too."""
    text = sorted(corpus_dir().glob("*.txt"))[0].read_text(errors="ignore")[:20_000]
    (tmp_path / "tokens.json").write_text(json.dumps(encode(text)))
    out = noderunner.run("round", {"backend": "webgpu", "coordinator": coordinator, "username": "gpu_runner",
                                   "tokens": str(tmp_path / "tokens.json"), "rounds": 2})
    r1, r2 = out["rounds"]
    for r in (r1, r2):
        assert r["status"] == "submitted" and r["backend"] == "webgpu" and r["codec"] == "int8", r
        assert r["reply"]["status"] == "accepted", r
    assert (r1["version"], r1["model"]["format"], r1["model"]["via"]) == (0, "bf16", "chunks"), r1
    assert (r2["version"], r2["model"]["format"], r2["model"]["via"]) == (1, "bf16", "patch"), r2
    assert r2["model"]["patchBytes"] == len(httpx.get(f"{coordinator}/v1/patches/1").content)
    # The dashboard's updates list says what trained each one: the runner's WebGPU adapter.
    ups = [u for u in httpx.get(f"{coordinator}/v1/dashboard/updates").json()["updates"] if u["address"] == out["address"]]
    assert len(ups) == 2 and all(u["device"].startswith("webgpu - ") for u in ups), ups
    assert ups[0]["device"] == r1["device"] and (" (software)" in r1["device"]) == webgpu["software"], (ups, r1)
    st = httpx.get(f"{coordinator}/v1/status").json()
    assert st["version"] >= 2, st
    bal = httpx.get(f"{coordinator}/v1/balance/{out['address']}").json()
    print("rounds:", [(r["version"], r["model"]["via"], r["losses"]) for r in (r1, r2)], "balance:", bal)
