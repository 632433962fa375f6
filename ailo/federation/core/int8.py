"""The int8 block code of `codecs.py` in torch, on whatever device holds the tensor (pure).

An ailo-1b update or patch is 821 M values: quantizing it with numpy on the host took tens of
seconds per publish and per upload; on the GPU it takes a fraction of a second. The results are
bit-identical on every device and to the browser's encoder, because every step is exactly
rounded IEEE arithmetic: block absmax, scale = float32(float64(absmax) / 127), q = clip(floor(
float64(x) / float64(scale) + 0.5), −127, 127) (0 where the scale is 0), decoded = float32(q) ·
scale in float32.
"""
from __future__ import annotations

import torch

INT8_BLOCK = 256


def blocks_of(n: int) -> int:
    return -(-n // INT8_BLOCK)


def _padded(x: torch.Tensor) -> torch.Tensor:
    n = x.numel()
    pad = blocks_of(n) * INT8_BLOCK - n
    return (torch.nn.functional.pad(x, (0, pad)) if pad else x).view(-1, INT8_BLOCK)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q int8[n], scale float32[blocks], decoded float32[n]) of flat float32 values, on x's device."""
    n = x.numel()
    if n == 0:
        z = x.new_zeros(0)
        return z.to(torch.int8), z, z
    blocks = _padded(x.reshape(-1).to(torch.float32))
    scale = (blocks.abs().amax(dim=1).double() / 127.0).float()
    s64 = scale.double().unsqueeze(1)
    q = torch.floor(blocks.double() / s64 + 0.5)
    q = torch.where(s64 > 0, q, torch.zeros((), dtype=q.dtype, device=q.device)).clamp_(-127, 127).to(torch.int8)
    decoded = (q.float() * scale.unsqueeze(1)).reshape(-1)[:n]
    return q.reshape(-1)[:n], scale, decoded


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 values of one tensor's codes and its block scales (len(scale) = blocks_of(len(q)))."""
    n = q.numel()
    if n == 0:
        return scale.new_zeros(0)
    return (_padded(q).float() * scale.unsqueeze(1)).reshape(-1)[:n]
