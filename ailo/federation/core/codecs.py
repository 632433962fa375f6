"""Update codecs: how a pseudo-gradient Δ travels from a client to the coordinator (pure, no I/O).

The coordinator names the codec in every task (`CodecSpec.to_task()`); the client encodes Δ with
it, signs the sha256 of the encoded body, and the coordinator decodes the body back to float32
tensors before any check or aggregation. Every body is a safetensors file; lossy codecs pack all
tensors of the model into a few flat arrays (tensors in sorted-name order), so the header stays a
few hundred bytes whatever the model:

- `fp32`   — one F32 tensor per parameter (the original format; no metadata).
- `int8`   — `q` I8[N] (per 256-value block of each tensor: round-half-up(x / s), s = absmax/127
             as float32) and `scale` F32[blocks].  ≈ 3.9× smaller.
- `sparse` — per tensor the top-k entries by |x| (k = ceil(density·n), ties to the lower index),
             `idx` U16[K] (global flat index mod 65536, ascending), `count` I32[⌈N/65536⌉]
             (kept entries per 65536-slot of the global index space), `code` U8[⌈K/4⌉] (2 bits
             per entry, 4 per byte, first entry in the low bits: bit 1 = negative, bit 0 = high
             level) and `scale` F32[T, 2] (per tensor: low, high level = the 25th and 75th
             percentile of the kept magnitudes; entries at or above the median use the high one).

Lossy codecs are used with error feedback (`compress`): the client adds what earlier rounds
failed to send (e ← β·e + Δ, encode, e ← e − decode), so nothing is lost, only delayed. All
arithmetic is float32 element-wise or float64 on exact float32 inputs, and ties are broken by
index, so the browser's encoder (ailo/web/src/codecs.js) produces the very same bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from ailo.errors import Rejected
from ailo.federation.core import int8
from ailo.federation.core.int8 import INT8_BLOCK
from ailo.federation.core.safetensors_header import HeaderError, read_header

CODECS = ("fp32", "int8", "sparse")
SLOT = 1 << 16  # sparse: indices are stored modulo this, with a count per slot


class CodecError(Rejected):
    """A body that does not decode under the round's codec. `reason` is a stable code."""


@dataclass(frozen=True)
class CodecSpec:
    """The codec of a round, as named in the task (`{"name": ..., "density": ..., "ef_decay": ...}`)."""
    name: str = "fp32"
    density: float = 0.01     # sparse: share of each tensor's entries sent
    ef_decay: float = 1.0     # lossy codecs: e ← ef_decay·e + Δ before encoding (1 = plain error feedback)

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise ValueError(f"unknown codec {self.name!r}; known: {', '.join(CODECS)}")
        if not (0.0 < self.density <= 1.0) or not math.isfinite(self.density):
            raise ValueError(f"codec density must be in (0, 1], got {self.density}")
        if not (0.0 <= self.ef_decay <= 1.0):
            raise ValueError(f"error-feedback decay must be in [0, 1], got {self.ef_decay}")

    @property
    def lossy(self) -> bool:
        return self.name != "fp32"

    def to_task(self) -> dict:
        if self.name == "fp32":
            return {"name": "fp32"}
        out: dict = {"name": self.name, "ef_decay": self.ef_decay}
        if self.name == "sparse":
            out["density"] = self.density
        return out

    @classmethod
    def from_task(cls, task: Mapping | None) -> "CodecSpec":
        """The codec of a stored round (rounds from before codecs existed are fp32)."""
        c = (task or {}).get("codec") or {"name": "fp32"}
        return cls(c["name"], float(c.get("density", 0.01)), float(c.get("ef_decay", 1.0)))

    @classmethod
    def parse(cls, text: str) -> "CodecSpec":
        """CLI form: `fp32`, `int8`, `sparse` or `sparse:0.01` (density)."""
        name, _, density = text.partition(":")
        return cls(name, float(density) if density else 0.01)


def backlog_lr(lrs_newest_first: list[float], ef_decay: float) -> float:
    """Learning rate equivalent of an error-feedback body: Σ_j β^j · lr_{r−j} over the rounds so far.

    With e ← β·e + Δ, a lossy body may carry this round's work plus the backlog of earlier rounds,
    so each coordinate is bounded by that sum (not by this round's lr alone); PoC's per-coordinate
    AdamW bound uses it for lossy codecs."""
    return sum(lr * ef_decay ** j for j, lr in enumerate(lrs_newest_first))


def sparse_k(n: int, density: float) -> int:
    """Entries kept of an n-entry tensor: ceil(density·n) in float64, as the browser computes it."""
    return min(n, math.ceil(density * n)) if n else 0


# -- shapes of the model ----------------------------------------------------------------------
def _layout(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...], int, int]]:
    """(name, shape, flat offset, numel) in sorted-name order: the order of every packed array."""
    out, off = [], 0
    for name in sorted(shapes):
        n = math.prod(shapes[name])
        out.append((name, tuple(shapes[name]), off, n))
        off += n
    return out


def max_body_bytes(shapes: Mapping[str, tuple[int, ...]], spec: CodecSpec) -> int:
    """Largest honest body for these shapes under `spec` (header allowance included)."""
    lay = _layout(shapes)
    total = sum(n for *_, n in lay)
    allowance = 4096 + 256 * (len(lay) if spec.name == "fp32" else 4)
    if spec.name == "fp32":
        return 4 * total + allowance
    if spec.name == "int8":
        return total + 4 * sum(-(-n // INT8_BLOCK) for *_, n in lay) + allowance
    k = sum(sparse_k(n, spec.density) for *_, n in lay)
    return 2 * k + -(-k // 4) + 4 * -(-total // SLOT) + 8 * len(lay) + allowance


# -- encoding ---------------------------------------------------------------------------------
def _flat(delta: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    """Flat float32 values of one tensor, on its own device."""
    a = delta[name].detach().to(torch.float32).reshape(-1)
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"tensor {name!r} contains NaN or Inf")
    return a


def _sparse_select(x: np.ndarray, k_max: int) -> np.ndarray:
    """Indices of the k largest |x| (nonzero only), ties to the lower index, ascending."""
    a = np.abs(x)
    k = min(k_max, int(np.count_nonzero(a)))
    if k == 0:
        return np.zeros(0, np.int64)
    t = np.partition(a, a.size - k)[a.size - k]
    above = np.flatnonzero(a > t)
    ties = np.flatnonzero(a == t)[: k - above.size]
    return np.sort(np.concatenate([above, ties]))


def _sparse_levels(x_kept: np.ndarray) -> tuple[np.float32, np.float32, np.ndarray, np.ndarray]:
    """(low, high, codes, decoded) of the kept values of one tensor."""
    k = x_kept.size
    if k == 0:
        return np.float32(0), np.float32(0), np.zeros(0, np.uint8), np.zeros(0, np.float32)
    mags = np.abs(x_kept)
    m = np.sort(mags)
    lo, mid, hi = m[k // 4], m[k // 2], m[(3 * k) // 4]
    high = mags >= mid
    neg = x_kept < 0
    codes = (neg.astype(np.uint8) << 1) | high.astype(np.uint8)
    decoded = np.where(high, hi, lo).astype(np.float32)
    decoded = np.where(neg, -decoded, decoded).astype(np.float32)
    return lo, hi, codes, decoded


def _pack2(codes: np.ndarray) -> np.ndarray:
    padded = np.zeros(-(-codes.size // 4) * 4, np.uint8)
    padded[:codes.size] = codes
    q = padded.reshape(-1, 4)
    return (q[:, 0] | (q[:, 1] << 2) | (q[:, 2] << 4) | (q[:, 3] << 6)).astype(np.uint8)


def _unpack2(packed: np.ndarray, k: int) -> np.ndarray:
    out = np.stack([(packed >> s) & 3 for s in (0, 2, 4, 6)], axis=1).reshape(-1)
    return out[:k].astype(np.uint8)


def _encode_int8(values: Mapping[str, torch.Tensor]) -> tuple[bytes, dict[str, torch.Tensor]]:
    """Body and the decoded values (what the coordinator will see), computed on the values' device."""
    names = sorted(values)
    q_all = np.empty(sum(values[n].numel() for n in names), np.int8)  # filled straight from the device
    s_all = np.empty(sum(int8.blocks_of(values[n].numel()) for n in names), np.float32)
    decoded, off, b = {}, 0, 0
    for name in names:
        q, s, decoded[name] = int8.quantize(values[name])
        torch.from_numpy(q_all[off:off + q.numel()]).copy_(q)
        torch.from_numpy(s_all[b:b + s.numel()]).copy_(s)
        off, b = off + q.numel(), b + s.numel()
    return np_save({"q": q_all, "scale": s_all}, metadata={"codec": "int8"}), decoded


def _encode_sparse(values: Mapping[str, np.ndarray], spec: CodecSpec) -> tuple[bytes, dict[str, np.ndarray]]:
    """Body and the decoded values, both for `values` (numpy, host)."""
    names = sorted(values)
    decoded: dict[str, np.ndarray] = {}
    total = sum(values[n].size for n in names)
    idx, codes, scale, off = [], [], np.zeros((len(names), 2), np.float32), 0
    for i, name in enumerate(names):
        x = values[name]
        sel = _sparse_select(x, sparse_k(x.size, spec.density))
        lo, hi, c, d = _sparse_levels(x[sel])
        scale[i] = (lo, hi)
        full = np.zeros(x.size, np.float32)
        full[sel] = d
        decoded[name] = full
        idx.append(sel + off)
        codes.append(c)
        off += x.size
    g = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    count = np.bincount(g // SLOT, minlength=-(-total // SLOT)).astype(np.int32)
    arrays = {"idx": (g % SLOT).astype(np.uint16), "count": count,
              "code": _pack2(np.concatenate(codes) if codes else np.zeros(0, np.uint8)), "scale": scale}
    return np_save(arrays, metadata={"codec": "sparse"}), decoded


def encode(delta: Mapping[str, torch.Tensor], spec: CodecSpec) -> bytes:
    """Encode Δ without error feedback (fp32 is exact; lossy codecs drop the residual)."""
    if spec.name == "fp32":
        from safetensors.torch import save as st_save
        return st_save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in delta.items()})
    if spec.name == "int8":
        return _encode_int8({n: _flat(delta, n) for n in delta})[0]
    return _encode_sparse({n: _flat(delta, n).cpu().numpy() for n in delta}, spec)[0]


def compress(delta: Mapping[str, torch.Tensor], error: Mapping[str, torch.Tensor] | None,
             spec: CodecSpec) -> tuple[bytes, dict[str, torch.Tensor]]:
    """Encode Δ with error feedback: returns (body, new error) with new error = x − decode(body),
    x = ef_decay·error + Δ (float32, on Δ's device). fp32 returns an empty error ({})."""
    if spec.name == "fp32":
        return encode(delta, spec), {}
    beta = float(np.float32(spec.ef_decay))
    x: dict[str, torch.Tensor] = {}
    for name in delta:
        d = _flat(delta, name)
        e = error.get(name) if error else None
        if e is not None and tuple(e.shape) == tuple(delta[name].shape):
            ev = e.detach().to(d.device, torch.float32).reshape(-1)
            d = ev * beta + d if beta != 1 else ev + d
        x[name] = d
    if spec.name == "int8":
        body, decoded = _encode_int8(x)
        return body, {n: (x[n] - decoded[n]).reshape(delta[n].shape) for n in x}
    xs = {n: v.cpu().numpy() for n, v in x.items()}
    body, dec = _encode_sparse(xs, spec)
    return body, {n: torch.from_numpy((xs[n] - dec[n]).astype(np.float32)).reshape(delta[n].shape) for n in xs}


# -- decoding ---------------------------------------------------------------------------------
def body_metadata(body: bytes) -> dict:
    """The `__metadata__` of a safetensors body ({} if none) from its validated header
    (`safetensors_header.read_header`); raises CodecError if unreadable."""
    try:
        return read_header(body).metadata
    except HeaderError as exc:
        raise CodecError(exc.reason, str(exc), exc.status) from None


def _arrays(body: bytes, expect: dict[str, tuple[np.dtype, tuple[int, ...] | None]], codec: str) -> dict[str, np.ndarray]:
    try:
        arrays = np_load(body)
    except Exception as exc:  # safetensors raises its own error types
        raise CodecError("malformed", f"invalid safetensors body: {exc}") from None
    if set(arrays) != set(expect):
        raise CodecError("malformed", f"a {codec} body holds exactly the arrays {sorted(expect)}, got {sorted(arrays)[:8]}")
    for key, (dtype, shape) in expect.items():
        a = arrays[key]
        if a.dtype != dtype:
            raise CodecError("dtype", f"{codec} array {key!r} has dtype {a.dtype}, expected {np.dtype(dtype)}")
        if shape is not None and tuple(a.shape) != shape:
            raise CodecError("shape", f"{codec} array {key!r} has shape {tuple(a.shape)}, expected {shape}")
    return arrays


def decode(body: bytes, shapes: Mapping[str, tuple[int, ...]], spec: CodecSpec,
           device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Float32 tensors (model names and shapes) of a lossy body on `device` (default: host);
    structure checked before use. (fp32 bodies are decoded by `update_format.decode_update`.)"""
    meta = body_metadata(body)
    if meta.get("codec", "fp32") != spec.name:
        raise CodecError("codec_mismatch", f"body is encoded as {meta.get('codec', 'fp32')!r} but this round "
                         f"asks for {spec.name!r}")
    lay = _layout(shapes)
    total = sum(n for *_, n in lay)
    if spec.name == "int8":
        return _decode_int8(body, lay, total, device)
    out: dict[str, np.ndarray] = {}
    slots = -(-total // SLOT)
    a = _arrays(body, {"idx": (np.dtype(np.uint16), None), "count": (np.dtype(np.int32), (slots,)),
                       "code": (np.dtype(np.uint8), None), "scale": (np.dtype(np.float32), (len(lay), 2))},
                "sparse")
    idx, count, code, scale = a["idx"], a["count"], a["code"], a["scale"]
    k = idx.size
    if idx.ndim != 1 or code.ndim != 1:
        raise CodecError("shape", "sparse idx and code must be one-dimensional")
    if (count < 0).any() or int(count.sum(dtype=np.int64)) != k:
        raise CodecError("malformed", f"sparse counts must be non-negative and sum to the {k} indices")
    if code.size != -(-k // 4):
        raise CodecError("shape", f"sparse code has {code.size} bytes, expected {-(-k // 4)} for {k} entries")
    if k % 4 and int(code[-1]) >> (2 * (k % 4)):
        raise CodecError("malformed", "sparse code padding bits must be zero")
    if not np.isfinite(scale).all() or (scale < 0).any() or (scale[:, 0] > scale[:, 1]).any():
        raise CodecError("malformed", "sparse scales must be finite with 0 ≤ low ≤ high")
    g = np.repeat(np.arange(slots, dtype=np.int64) * SLOT, count) + idx.astype(np.int64)
    if k and ((np.diff(g) <= 0).any() or g[-1] >= total):
        raise CodecError("malformed", "sparse indices must be strictly increasing and inside the model")
    codes = _unpack2(code, k)
    mags = np.zeros(k, np.float32)
    bounds = np.array([off for _, _, off, _ in lay] + [total], np.int64)
    tensor_of = np.searchsorted(bounds, g, side="right") - 1
    per_tensor = np.bincount(tensor_of, minlength=len(lay)) if k else np.zeros(len(lay), np.int64)
    for i, (name, shape, off, n) in enumerate(lay):
        if per_tensor[i] > sparse_k(n, spec.density):
            raise CodecError("too_dense", f"tensor {name!r} sends {per_tensor[i]} entries; the round allows "
                             f"{sparse_k(n, spec.density)} (density {spec.density})")
    if k:
        mags = np.where(codes & 1, scale[tensor_of, 1], scale[tensor_of, 0]).astype(np.float32)
    vals = np.where(codes & 2, -mags, mags).astype(np.float32)
    flat = np.zeros(total, np.float32)
    flat[g] = vals
    for name, shape, off, n in lay:
        out[name] = flat[off:off + n]
    result = {}
    for name, shape, off, n in lay:
        v = out[name]
        if not np.isfinite(v).all():
            raise CodecError("non_finite", f"tensor {name!r} decodes to NaN or Inf")
        result[name] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).reshape(shape).to(device or "cpu")
    return result


def _decode_int8(body: bytes, lay: list, total: int, device: torch.device | str | None) -> dict[str, torch.Tensor]:
    a = _arrays(body, {"q": (np.dtype(np.int8), (total,)),
                       "scale": (np.dtype(np.float32), (sum(int8.blocks_of(n) for *_, n in lay),))}, "int8")
    q, scale = (torch.from_numpy(a[k]).to(device or "cpu") for k in ("q", "scale"))
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise CodecError("malformed", "int8 scales must be finite and non-negative")
    if bool((q == -128).any()):
        raise CodecError("malformed", "int8 code -128 is not used (codes are -127..127)")
    out, b = {}, 0
    for name, shape, off, n in lay:
        nb = int8.blocks_of(n)
        v = int8.dequantize(q[off:off + n], scale[b:b + nb])
        if not bool(torch.isfinite(v).all()):
            raise CodecError("non_finite", f"tensor {name!r} decodes to NaN or Inf")
        out[name] = v.reshape(shape)
        b += nb
    return out
