"""What every family's half-layer units share: the per-request KV cache, the positions of one
forward step, RMSNorm, the rotary tables and causal attention over cached keys.

The math follows the reference implementations (RMSNorm in float32, rotate-half rotary embedding
with the checkpoint's rope_theta, grouped-query attention) so that greedy decoding matches
`transformers` token for token.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class RequestCache:
    """Keys/values of every attention unit of one span for one request; `length` = positions held."""

    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    length: int = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer in self.kv:
            pk, pv = self.kv[layer]
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        self.kv[layer] = (k, v)
        return k, v

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on: drafted tokens the room rejected (speculative decoding)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.kv = {i: (k[:, :, :length], v[:, :, :length]) for i, (k, v) in self.kv.items()}
        self.length = length

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.kv.values())


@dataclass
class Step:
    """What every unit of a forward pass shares: absolute positions and their rotary tables.

    A batched step (`parts`) runs several requests' positions as one sequence of rows: the
    dense layers see all rows at once, attention runs each part over its own request's cache
    (the unit is then given a list of caches, one per part)."""

    start: int
    length: int
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    parts: list["Step"] | None = None


def segments(step: Step, cache) -> list[tuple[int, Step, "RequestCache"]]:
    """(row offset, step, cache) of each request in a plain or batched step."""
    if step.parts is None:
        return [(0, step, cache)]
    out, off = [], 0
    for part, c in zip(step.parts, cache):
        out.append((off, part, c))
        off += part.length
    return out


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Rotary:
    """Rotate-half rotary embedding; the tables are computed in float32 like the reference."""

    def __init__(self, head_dim: int, theta: float, device: torch.device | str = "cpu"):
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))

    def tables(self, start: int, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(start, start + length, device=self.inv_freq.device, dtype=torch.float)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: Step, scale: float) -> torch.Tensor:
    """Causal attention of `step.length` new queries over all cached keys (GQA via enable_gqa)."""
    gqa = q.shape[1] != k.shape[1]
    if step.length == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    if step.start == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    qpos = torch.arange(step.start, step.start + step.length, device=q.device)
    kpos = torch.arange(k.shape[2], device=q.device)
    mask = kpos[None, :] <= qpos[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
