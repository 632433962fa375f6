"""Update codecs (ailo/federation/core/codecs.py): round trips, error feedback, size, and refusal of
every malformed encoding with a reason code."""
import json
import math
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from ailo.federation.core.codecs import (INT8_BLOCK, CodecError, CodecSpec, compress, decode, encode, max_body_bytes,
                                    sparse_k)
from ailo.model import build_model

INT8, SPARSE = CodecSpec("int8"), CodecSpec("sparse", 0.01)


def _delta(seed=0, shapes=None):
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or {"w": (70, 300), "b": (300,), "one": (1,), "e": (1000, 80)}
    return {k: torch.randn(s, generator=g) * 1e-3 for k, s in shapes.items()}


def _shapes(d):
    return {k: tuple(v.shape) for k, v in d.items()}


def test_spec_task_roundtrip_and_validation():
    for spec in (CodecSpec(), INT8, CodecSpec("sparse", 0.02, 0.9)):
        assert CodecSpec.from_task({"codec": spec.to_task()}) == spec
    assert CodecSpec.from_task({}) == CodecSpec()  # rounds stored before codecs existed
    assert CodecSpec.parse("sparse:0.005") == CodecSpec("sparse", 0.005)
    for bad in (lambda: CodecSpec("zip"), lambda: CodecSpec("sparse", 0.0), lambda: CodecSpec("sparse", 1.5),
                lambda: CodecSpec("int8", ef_decay=2.0)):
        with pytest.raises(ValueError):
            bad()


def test_int8_round_trip_error_is_at_most_half_a_step():
    d = _delta()
    out = decode(encode(d, INT8), _shapes(d), INT8)
    for k, v in d.items():
        flat = v.reshape(-1)
        pad = torch.zeros(-(-flat.numel() // INT8_BLOCK) * INT8_BLOCK)
        pad[:flat.numel()] = flat
        step = (pad.reshape(-1, INT8_BLOCK).abs().amax(1) / 127).repeat_interleave(INT8_BLOCK)[:flat.numel()]
        assert out[k].shape == v.shape and out[k].dtype == torch.float32
        assert torch.all((out[k].reshape(-1) - flat).abs() <= step * 0.5 + 1e-12)
        # every block's largest value survives exactly (±127 · scale)
        assert torch.allclose(out[k].abs().max(), v.abs().max(), rtol=1e-6)


def test_sparse_keeps_top_k_per_tensor_with_two_levels_and_signs():
    d = _delta()
    out = decode(encode(d, SPARSE), _shapes(d), SPARSE)
    for k, v in d.items():
        flat, got = v.reshape(-1), out[k].reshape(-1)
        kept = torch.nonzero(got).reshape(-1)
        assert kept.numel() == sparse_k(flat.numel(), 0.01)
        # the kept entries are the largest magnitudes, with their signs
        assert flat.abs()[kept].min() >= flat.abs().max() if kept.numel() == flat.numel() else \
            flat.abs()[kept].min() >= flat.abs().sort().values[-kept.numel() - 1]
        assert torch.equal(torch.sign(got[kept]), torch.sign(flat[kept]))
        assert len(set(got[kept].abs().tolist())) <= 2


def test_sparse_ties_go_to_the_lower_index_and_zeros_are_never_sent():
    d = {"t": torch.tensor([0.0, 1.0, -1.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])}
    spec = CodecSpec("sparse", 0.2)  # k = 2
    out = decode(encode(d, spec), _shapes(d), spec)["t"]
    assert torch.nonzero(out).reshape(-1).tolist() == [1, 2]
    z = {"t": torch.zeros(10)}
    body = encode(z, spec)
    assert np_load(body)["idx"].size == 0 and torch.equal(decode(body, _shapes(z), spec)["t"], z["t"])


@pytest.mark.parametrize("spec", [INT8, SPARSE, CodecSpec("sparse", 0.05, 0.9)], ids=["int8", "sparse", "sparse-decay"])
def test_error_feedback_loses_nothing_only_delays_it(spec):
    """x = β·e + Δ = decode(body) + e' exactly; over rounds Σ decoded + e_T = Σ β-weighted Δ."""
    deltas = [_delta(s) for s in range(6)]
    shapes = _shapes(deltas[0])
    err, sent = None, {k: torch.zeros(s) for k, s in shapes.items()}
    expected = {k: torch.zeros(s) for k, s in shapes.items()}
    for d in deltas:
        prev = err
        body, err = compress(d, err, spec)
        dec = decode(body, shapes, spec)
        for k in d:
            x = (prev[k] * np.float32(spec.ef_decay) if prev else 0) + d[k]
            assert torch.equal(dec[k] + err[k], x) or torch.allclose(dec[k] + err[k], x, atol=1e-9)
            sent[k] += dec[k]
            expected[k] = expected[k] * spec.ef_decay + d[k]
    if spec.ef_decay == 1.0:
        for k in shapes:
            assert torch.allclose(sent[k] + err[k], sum(d[k] for d in deltas), atol=1e-6)


def test_sizes_on_the_tiny_model():
    state = build_model("ailo-tiny", seed=0).state_dict()
    d = {k: torch.randn(v.shape) * 1e-3 for k, v in state.items()}
    fp32 = len(encode(d, CodecSpec()))
    int8, sparse = len(encode(d, INT8)), len(encode(d, SPARSE))
    assert fp32 / int8 > 3.9 and fp32 / sparse > 150
    assert int8 <= max_body_bytes(_shapes(d), INT8) and sparse <= max_body_bytes(_shapes(d), SPARSE)


def _mutate(body, **changes):
    """Re-save a body's arrays with some replaced (keeps the metadata)."""
    arrays = dict(np_load(body))
    n = struct.unpack("<Q", body[:8])[0]
    meta = json.loads(body[8:8 + n]).get("__metadata__")
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    return np_save(arrays, metadata=meta)


def test_malformed_encodings_are_refused_with_reasons():
    d = _delta()
    shapes = _shapes(d)
    s_body, i_body = encode(d, SPARSE), encode(d, INT8)
    sp = np_load(s_body)
    it = np_load(i_body)
    idx, count, code, scale = sp["idx"], sp["count"], sp["code"], sp["scale"]
    bad_idx = idx.copy()
    bad_idx[[3, 4]] = bad_idx[[4, 3]]
    k = idx.size
    cases = {
        "sparse_as_int8": (s_body, INT8, "codec_mismatch"),
        "fp32_as_sparse": (encode(d, CodecSpec()), SPARSE, "codec_mismatch"),
        "truncated": (s_body[: len(s_body) - 10], SPARSE, "truncated"),
        "missing_array": (_mutate(s_body, scale=None), SPARSE, "malformed"),
        "idx_dtype": (_mutate(s_body, idx=idx.astype(np.int32)), SPARSE, "dtype"),
        "count_sum": (_mutate(s_body, count=count + np.int32(1)), SPARSE, "malformed"),
        "unsorted": (_mutate(s_body, idx=bad_idx), SPARSE, "malformed"),
        "duplicate": (_mutate(s_body, idx=np.concatenate([idx[:1], idx[:-1]])), SPARSE, "malformed"),
        "code_len": (_mutate(s_body, code=code[:-1]), SPARSE, "shape"),
        "nan_scale": (_mutate(s_body, scale=np.full_like(scale, np.nan)), SPARSE, "malformed"),
        "low_above_high": (_mutate(s_body, scale=scale[:, ::-1].copy()), SPARSE, "malformed"),
        "huge_scale": (_mutate(i_body, scale=np.full_like(it["scale"], 3e38)), INT8, "non_finite"),
        "int8_min": (_mutate(i_body, q=np.full_like(it["q"], -128)), INT8, "malformed"),
        "int8_shape": (_mutate(i_body, q=it["q"][:-1]), INT8, "shape"),
        "scale_shape": (_mutate(i_body, scale=it["scale"][:-1]), INT8, "shape"),
    }
    if k % 4:
        padded = code.copy()
        padded[-1] |= np.uint8(0xC0)
        cases["padding_bits"] = (_mutate(s_body, code=padded), SPARSE, "malformed")
    # a dense body sent as "sparse" beyond the round's density
    dense = encode(d, CodecSpec("sparse", 0.5))
    cases["too_dense"] = (dense, SPARSE, "too_dense")
    got = {}
    for name, (body, spec, _) in cases.items():
        with pytest.raises(CodecError) as exc:
            decode(body, shapes, spec)
        got[name] = exc.value.reason
        assert 400 <= exc.value.status < 500 and str(exc.value)
    assert got == {n: c[2] for n, c in cases.items()}


def test_out_of_range_index_is_refused():
    d = {"t": torch.arange(1.0, 11.0)}
    spec = CodecSpec("sparse", 0.1)
    body = encode(d, spec)
    with pytest.raises(CodecError) as exc:
        decode(_mutate(body, idx=np.array([10], np.uint16)), {"t": (10,)}, spec)
    assert exc.value.reason == "malformed"


def test_non_finite_delta_cannot_be_encoded():
    with pytest.raises(ValueError):
        encode({"t": torch.tensor([1.0, math.nan])}, SPARSE)


def _int8_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The int8 block code as the browser and the first Python encoder compute it (float64 numpy)."""
    nb = -(-x.size // INT8_BLOCK)
    blocks = np.zeros(nb * INT8_BLOCK, np.float32)
    blocks[:x.size] = x
    blocks = blocks.reshape(nb, INT8_BLOCK)
    scale = (np.abs(blocks).max(axis=1).astype(np.float64) / 127.0).astype(np.float32)
    s64 = scale.astype(np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s64 > 0, np.floor(blocks.astype(np.float64) / s64 + 0.5), 0.0)
    return np.clip(q, -127, 127).astype(np.int8).reshape(-1)[:x.size], scale


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA here; the GPU run checks it (bench/RESULTS.md)"))])
def test_int8_on_any_device_is_bit_identical_to_the_float64_reference(device):
    from ailo.federation.core import int8
    g = torch.Generator().manual_seed(7)
    parts = [torch.randn(1000, generator=g) * 1e-6, torch.zeros(300), torch.full((256,), 3.0),
             torch.tensor([127.0, 0.5, -0.5, 1.5, -1.5, 2.5] + [0.0] * 250),  # halves: round half up
             torch.randn(70_000, generator=g) * 1e3, torch.tensor([1e-45, -1e-45, 3e-38])]  # subnormal scales
    for x in parts:
        q, scale, decoded = int8.quantize(x.to(device))
        q_ref, s_ref = _int8_reference(x.numpy())
        assert np.array_equal(q.cpu().numpy(), q_ref) and np.array_equal(scale.cpu().numpy(), s_ref)
        assert torch.equal(decoded.cpu(), int8.dequantize(q, scale).cpu())
        assert np.array_equal(decoded.cpu().numpy(), np.repeat(s_ref, INT8_BLOCK)[:x.numel()] * q_ref.astype(np.float32))
    delta = {"a": parts[4].reshape(700, 100), "b": parts[0]}
    spec = CodecSpec("int8", ef_decay=0.9)
    error = {"a": torch.randn(700, 100, generator=g), "b": torch.randn(1000, generator=g)}
    body_dev, err_dev = compress({k: v.to(device) for k, v in delta.items()}, error, spec)
    body_cpu, err_cpu = compress(delta, error, spec)
    assert body_dev == body_cpu and all(torch.equal(err_dev[k].cpu(), err_cpu[k]) for k in delta)
    out = decode(body_cpu, {k: tuple(v.shape) for k, v in delta.items()}, spec, device=device)
    assert all(o.device.type == device for o in out.values())
    assert all(torch.equal(out[k].cpu(), decode(body_cpu, {k: tuple(v.shape) for k, v in delta.items()}, spec)[k])
               for k in delta)
