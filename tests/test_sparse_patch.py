"""Sparse patches (issue 27): a new served version as the bf16 values that changed, exact."""
import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load as np_load

from ailo.federation.core import sparse_patch
from ailo.federation.core.codecs import CodecError
from ailo.federation.core.served import apply_patch, next_served, to_served

ROOT = Path(__file__).resolve().parents[1]


def _master(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"b.weight": torch.randn(300, 257, generator=g), "a.bias": torch.randn(70001, generator=g),
            "c": torch.randn(5, generator=g)}


def test_sparse_change_is_published_as_a_sparse_patch_that_rebuilds_bf16_of_the_master_exactly():
    m0 = _master()
    w0 = to_served(m0)
    m1 = {k: v.clone() for k, v in m0.items()}
    m1["b.weight"][3, :40] += 0.5      # a few per cent of the weights move (sum of sparse updates)
    m1["a.bias"][65530:65545] -= 1.0   # across a 65536-slot boundary
    patch, w1 = next_served(w0, m1)
    assert sparse_patch.is_sparse(patch)
    n = sum(t.numel() for t in m0.values())
    assert len(patch) < 4 * 55 + 4 * (n // 65536 + 1) + 400       # 4 bytes per changed weight + header
    for k in m1:
        assert torch.equal(w1[k].view(torch.int16), m1[k].to(torch.bfloat16).view(torch.int16))
        assert torch.equal(apply_patch(w0, patch)[k].view(torch.int16), w1[k].view(torch.int16))


def test_dense_change_keeps_the_int8_patch_and_bad_sparse_patches_are_refused():
    m0 = _master()
    w0 = to_served(m0)
    dense = {k: v + 0.01 * torch.randn_like(v) for k, v in m0.items()}
    patch, _ = next_served(w0, dense)
    assert not sparse_patch.is_sparse(patch) and len(patch) < sum(t.numel() for t in m0.values()) * 1.1
    good = sparse_patch.make(w0, {k: v.clone() for k, v in m0.items()} | {"c": m0["c"] + 1})
    arrays = np_load(good)
    from safetensors.numpy import save
    for bad in ({**arrays, "count": arrays["count"] + 1},                                  # counts ≠ indices
                {**arrays, "idx": arrays["idx"][::-1].copy()}):                            # not ascending
        with pytest.raises(CodecError):
            sparse_patch.apply(w0, save(bad, metadata={"format": "sparse-bf16"}))


def test_the_page_applies_a_sparse_patch_to_the_same_bits(tmp_path):
    m0 = _master(1)
    w0 = to_served(m0)
    m1 = {k: v.clone() for k, v in m0.items()}
    m1["a.bias"][::97] += 0.25
    patch, w1 = next_served(w0, m1)
    assert sparse_patch.is_sparse(patch)
    (tmp_path / "patch.bin").write_bytes(patch)
    held = {k: {"shape": list(v.shape), "data": v.to(torch.float32).reshape(-1).tolist()} for k, v in w0.items()}
    (tmp_path / "held.json").write_text(json.dumps(held))
    script = f"""
import {{ applyPatch }} from '{ROOT}/ailo/web/src/patching.js';
import fs from 'fs';
const held = new Map(Object.entries(JSON.parse(fs.readFileSync('{tmp_path}/held.json'))).map(([k, t]) => [k, {{shape: t.shape, data: Float32Array.from(t.data)}}]));
const out = applyPatch(held, new Uint8Array(fs.readFileSync('{tmp_path}/patch.bin')));
const res = {{}};
for (const [k, t] of out) res[k] = Array.from(t.bits);
fs.writeFileSync('{tmp_path}/out.json', JSON.stringify(res));
"""
    (tmp_path / "run.mjs").write_text(script)
    subprocess.run(["node", str(tmp_path / "run.mjs")], check=True, cwd=ROOT, timeout=120)
    got = json.loads((tmp_path / "out.json").read_text())
    for k, v in w1.items():
        assert got[k] == v.reshape(-1).view(torch.int16).to(torch.int32).bitwise_and(0xFFFF).tolist()
