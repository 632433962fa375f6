"""The compact served model (pure, no I/O): what clients download and train from, next to the
coordinator's fp32 master weights.

The coordinator keeps fp32 master weights M_v (aggregation and the outer optimizer work on
them; they are persisted as the fp32 chunk set). Clients are served W_v, bfloat16 tensors that
track the master:

    W_0 = bf16(M_0)
    P_v = int8-codec body of (M_v − W_{v−1})             (the "patch", ≈ 1 byte per weight)
    W_v = bf16(float32(W_{v−1}) + decode(P_v))          (float32 add, round-to-nearest-even)

A client that holds W_{v−1} downloads only P_v (≈ ¼ of fp32, ½ of bf16), rebuilds W_v exactly
and checks it against the sha256 of every W_v chunk in the bf16 manifest; anyone else downloads
the bf16 chunks (½ of fp32). Because each patch is taken against the served W_{v−1} rather
than against M_{v−1}, quantization errors never accumulate: W_v differs from M_v only by one
int8 step and one bf16 rounding. Clients train from float32(W_v) and send Δ = W_v − W_end;
the coordinator applies the averaged Δ to M_v.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ailo.federation.core.codecs import CodecSpec, decode, encode
from ailo.federation.core import sparse_patch

PATCH_CODEC = CodecSpec("int8")
StateDict = dict[str, torch.Tensor]


def to_served(master: Mapping[str, torch.Tensor]) -> StateDict:
    """W_0: the master rounded to bfloat16 (on the master's device)."""
    return {k: v.detach().to(torch.float32).to(torch.bfloat16) for k, v in master.items()}


def _device_of(state: Mapping[str, torch.Tensor]) -> torch.device | None:
    return next(iter(state.values())).device if state else None


def make_patch(previous: Mapping[str, torch.Tensor], master: Mapping[str, torch.Tensor]) -> bytes:
    """P_v: the int8-codec body of M_v − W_{v−1} (both on one device, where it is computed)."""
    return encode({k: master[k].detach().to(torch.float32) - previous[k].to(torch.float32) for k in master},
                  PATCH_CODEC)


def apply_patch(previous: Mapping[str, torch.Tensor], patch: bytes) -> StateDict:
    """W_v from W_{v−1} and P_v, on W_{v−1}'s device (raises codecs.CodecError for a malformed
    patch). Bit-identical on every device: one float32 add, one round-to-nearest-even to bf16;
    a sparse patch (`sparse_patch.py`) sets the changed bf16 values."""
    if sparse_patch.is_sparse(patch):
        return sparse_patch.apply(previous, patch)
    step = decode(patch, {k: tuple(v.shape) for k, v in previous.items()}, PATCH_CODEC, device=_device_of(previous))
    return {k: (previous[k].to(torch.float32) + step[k]).to(torch.bfloat16) for k in previous}


def next_served(previous: Mapping[str, torch.Tensor], master: Mapping[str, torch.Tensor]) -> tuple[bytes, StateDict]:
    """(P_v, W_v): what the coordinator publishes when version v closes (on the master's device).
    When few served values change (sparse updates), P_v lists them and W_v = bf16(M_v) exactly;
    otherwise P_v is the int8 patch (≈ 1 byte per weight)."""
    device = _device_of(master)
    previous = {k: v.to(device) for k, v in previous.items()}
    changed = sum(int((to_served({k: master[k]})[k].view(torch.int16) != previous[k].to(torch.bfloat16).view(torch.int16))
                      .sum()) for k in master)
    n = sum(t.numel() for t in master.values())
    if sparse_patch.patch_bytes(changed, n) < n:  # the int8 patch costs ≈ n bytes
        patch = sparse_patch.make(previous, master)
        return patch, sparse_patch.apply(previous, patch)
    patch = make_patch(previous, master)
    return patch, apply_patch(previous, patch)
