"""Sparse patches (pure, no I/O): a new served version as the bf16 values that changed.

With sparse updates (top-k codec) and FedAvg the master M_v changes only where some accepted
update had an entry, so W_v = bf16(M_v) differs from W_{v−1} in a few per cent of the weights.
The patch lists exactly those entries, so its size follows what changed, and W_v is rebuilt
bit-exactly (no quantization):

    `idx`   U16[K]  global flat index mod 65536 (tensors in sorted-name order), ascending
    `count` I32[⌈N/65536⌉] entries per 65536-slot of the global index (as the sparse codec)
    `value` U16[K]  the new bf16 bit patterns
    metadata {"format": "sparse-bf16", "n": N}

4 bytes per changed weight plus 4 bytes per 65536 weights. `served.next_served` publishes it
when it is smaller than the int8 patch (≈ 1 byte per weight), i.e. below ~25 % changed.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from ailo.federation.core.codecs import SLOT, CodecError

FORMAT = "sparse-bf16"


def _flat_bits(state: Mapping[str, torch.Tensor], device: torch.device | None = None) -> torch.Tensor:
    """All tensors (sorted names) as one flat int16 tensor of bf16 bit patterns."""
    parts = [state[k].detach().to(device).to(torch.bfloat16).reshape(-1).view(torch.int16) for k in sorted(state)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int16, device=device)


def patch_bytes(changed: int, n: int) -> int:
    """Payload size of a sparse patch with `changed` entries over `n` weights (header excluded)."""
    return 4 * changed + 4 * math.ceil(n / SLOT)


def make(previous: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> bytes:
    """The patch turning `previous` (bf16) into bf16(`target`), exactly."""
    device = next(iter(target.values())).device
    old, new = _flat_bits(previous, device), _flat_bits(target, device)
    pos = torch.nonzero(old != new).reshape(-1)
    n = new.numel()
    counts = torch.bincount(pos >> 16, minlength=math.ceil(n / SLOT)).to(torch.int32)
    arrays = {"idx": (pos & 0xFFFF).to(torch.int32).cpu().numpy().astype(np.uint16),
              "count": counts.cpu().numpy(),
              "value": new[pos].cpu().numpy().view(np.uint16)}
    return np_save(arrays, metadata={"format": FORMAT, "n": str(n)})


def is_sparse(patch: bytes) -> bool:
    from ailo.federation.core.codecs import body_metadata
    try:
        return body_metadata(patch).get("format") == FORMAT
    except CodecError:
        return False


def apply(previous: Mapping[str, torch.Tensor], patch: bytes) -> dict[str, torch.Tensor]:
    """W_v from W_{v−1} (bf16, on its device) and a sparse patch; raises CodecError if malformed."""
    try:
        arrays = np_load(patch)
        idx, count, value = arrays["idx"], arrays["count"], arrays["value"]
    except Exception as exc:  # safetensors raises several types for a damaged body
        raise CodecError("malformed", f"sparse patch does not parse: {exc}") from None
    device = next(iter(previous.values())).device
    flat = _flat_bits(previous, device).clone()
    n = flat.numel()
    if idx.dtype != np.uint16 or value.dtype != np.uint16 or count.dtype != np.int32 or \
            count.shape != (math.ceil(n / SLOT),) or idx.shape != value.shape or int(count.sum()) != idx.size or \
            (count < 0).any():
        raise CodecError("malformed", "sparse patch arrays do not fit this model")
    slots = torch.repeat_interleave(torch.arange(count.size, dtype=torch.int64), torch.from_numpy(count.astype(np.int64)))
    pos = (slots * SLOT + torch.from_numpy(idx.astype(np.int64))).to(device)
    if pos.numel() and (int(pos[-1]) >= n or bool((pos[1:] <= pos[:-1]).any())):
        raise CodecError("malformed", "sparse patch indices are not ascending within the model")
    flat[pos] = torch.from_numpy(value.view(np.int16).copy()).to(device)
    out, at = {}, 0
    for k in sorted(previous):
        t = previous[k]
        out[k] = flat[at:at + t.numel()].view(torch.bfloat16).reshape(t.shape)
        at += t.numel()
    return out
