"""Half-layer units of Llama-2, Qwen2 and `ailo` GPT in plain PyTorch, with a per-request KV cache.

Module attribute names mirror the checkpoint's tensor names (`self_attn.q_proj.weight`,
`mlp.gate_proj.weight`, `attn.qkv.weight`, ...), so a unit's state dict is the checkpoint's
tensors with the layer prefix stripped and the loader needs no renaming table. The math
follows the reference implementations (RMSNorm in float32, rotate-half rotary embedding with
the checkpoint's rope_theta, grouped-query attention, SwiGLU) so that greedy decoding matches
`transformers` token for token.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ailo.inference.spec import ModelSpec


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
    """What every unit of a forward pass shares: absolute positions and their rotary tables."""

    start: int
    length: int
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None


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


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: Step, scale: float) -> torch.Tensor:
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


class _LlamaSelfAttn(nn.Module):
    def __init__(self, s: ModelSpec):
        super().__init__()
        q, kv = s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim
        self.q_proj = nn.Linear(s.hidden, q, bias=s.qkv_bias)
        self.k_proj = nn.Linear(s.hidden, kv, bias=s.qkv_bias)
        self.v_proj = nn.Linear(s.hidden, kv, bias=s.qkv_bias)
        self.o_proj = nn.Linear(q, s.hidden, bias=s.o_bias)


class LlamaAttention(nn.Module):
    """Unit 2·i of Llama/Qwen2: x + o_proj(attn(rope(q), rope(k), v)) over RMSNorm(x)."""

    def __init__(self, s: ModelSpec, layer: int):
        super().__init__()
        self.layer, self.n_heads, self.n_kv, self.head_dim = layer, s.n_heads, s.n_kv_heads, s.head_dim
        self.input_layernorm = RMSNorm(s.hidden, s.norm_eps)
        self.self_attn = _LlamaSelfAttn(s)

    def forward(self, x: torch.Tensor, step: Step, cache: RequestCache) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.input_layernorm(x)
        a = self.self_attn
        q = a.q_proj(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = a.k_proj(h).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = a.v_proj(h).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = step.cos[None, None], step.sin[None, None]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k, v = cache.append(self.layer, k, v)
        y = _attend(q, k, v, step, self.head_dim ** -0.5)
        return x + a.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class _SwiGLU(nn.Module):
    def __init__(self, s: ModelSpec):
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden, s.intermediate, bias=s.mlp_bias)
        self.up_proj = nn.Linear(s.hidden, s.intermediate, bias=s.mlp_bias)
        self.down_proj = nn.Linear(s.intermediate, s.hidden, bias=s.mlp_bias)


class LlamaMLP(nn.Module):
    """Unit 2·i+1 of Llama/Qwen2: x + down(silu(gate(n)) * up(n)), n = RMSNorm(x)."""

    def __init__(self, s: ModelSpec, layer: int):
        super().__init__()
        self.post_attention_layernorm = RMSNorm(s.hidden, s.norm_eps)
        self.mlp = _SwiGLU(s)

    def forward(self, x: torch.Tensor, step: Step, cache: RequestCache) -> torch.Tensor:
        h = self.post_attention_layernorm(x)
        m = self.mlp
        return x + m.down_proj(F.silu(m.gate_proj(h)) * m.up_proj(h))


class _GPTSelfAttn(nn.Module):
    def __init__(self, s: ModelSpec):
        super().__init__()
        self.qkv = nn.Linear(s.hidden, 3 * s.hidden)
        self.proj = nn.Linear(s.hidden, s.hidden)


class GPTAttention(nn.Module):
    """Unit 2·i of `ailo.model.GPT` (ln1 + attn), same parameter names, with a KV cache."""

    def __init__(self, s: ModelSpec, layer: int):
        super().__init__()
        self.layer, self.n_heads, self.head_dim = layer, s.n_heads, s.head_dim
        self.ln1 = nn.LayerNorm(s.hidden, eps=s.norm_eps)
        self.attn = _GPTSelfAttn(s)

    def forward(self, x: torch.Tensor, step: Step, cache: RequestCache) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.attn.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        k, v = cache.append(self.layer, k, v)
        y = _attend(q, k, v, step, self.head_dim ** -0.5)
        return x + self.attn.proj(y.transpose(1, 2).reshape(b, t, c))


class _GPTMLP(nn.Module):
    def __init__(self, s: ModelSpec):
        super().__init__()
        self.fc = nn.Linear(s.hidden, s.intermediate)
        self.proj = nn.Linear(s.intermediate, s.hidden)


class GPTMLP(nn.Module):
    """Unit 2·i+1 of `ailo.model.GPT` (ln2 + GELU MLP)."""

    def __init__(self, s: ModelSpec, layer: int):
        super().__init__()
        self.ln2 = nn.LayerNorm(s.hidden, eps=s.norm_eps)
        self.mlp = _GPTMLP(s)

    def forward(self, x: torch.Tensor, step: Step, cache: RequestCache) -> torch.Tensor:
        return x + self.mlp.proj(F.gelu(self.mlp.fc(self.ln2(x)), approximate="tanh"))


class Embedding(nn.Module):
    """Token ids → hidden states (plus learned positions for `ailo` GPT). First span only."""

    def __init__(self, s: ModelSpec):
        super().__init__()
        self.embed_tokens = nn.Embedding(s.vocab, s.hidden)
        self.wpe = nn.Embedding(s.max_positions, s.hidden) if s.family == "ailo" else None

    def forward(self, ids: torch.Tensor, step: Step) -> torch.Tensor:
        x = self.embed_tokens(ids)
        if self.wpe is not None:
            if step.start + step.length > self.wpe.num_embeddings:
                raise ValueError(f"position {step.start + step.length - 1} exceeds context {self.wpe.num_embeddings}")
            x = x + self.wpe(torch.arange(step.start, step.start + step.length, device=ids.device))
        return x


class Head(nn.Module):
    """Final norm + output projection → float32 logits of the last position. Last span only."""

    def __init__(self, s: ModelSpec):
        super().__init__()
        self.norm = nn.LayerNorm(s.hidden, eps=s.norm_eps) if s.family == "ailo" else RMSNorm(s.hidden, s.norm_eps)
        self.lm_head = nn.Linear(s.hidden, s.vocab, bias=False)

    def forward(self, x: torch.Tensor, every: bool = False) -> torch.Tensor:
        """(1, vocab) for the last position, or (T, vocab) for all T positions of batch row 0 when
        `every` (the room verifies drafted tokens in one pass)."""
        return self.lm_head(self.norm(x[0] if every else x[:, -1, :])).float()


def make_unit(s: ModelSpec, unit: int) -> nn.Module:
    layer = unit // 2
    if s.family == "ailo":
        return GPTAttention(s, layer) if unit % 2 == 0 else GPTMLP(s, layer)
    return LlamaAttention(s, layer) if unit % 2 == 0 else LlamaMLP(s, layer)


class SpanModel(nn.Module):
    """Units [start, end) of a model: ids or hidden states in, hidden states or logits out."""

    def __init__(self, s: ModelSpec, start: int, end: int):
        super().__init__()
        if not 0 <= start < end <= s.n_units:
            raise ValueError(f"bad span [{start}, {end}) for {s.n_units} units")
        self.spec, self.start, self.end = s, start, end
        self.embed = Embedding(s) if start == 0 else None
        self.units = nn.ModuleList(make_unit(s, u) for u in range(start, end))
        self.head = Head(s) if end == s.n_units else None
        self.rotary: Rotary | None = None

    @property
    def first(self) -> bool:
        return self.embed is not None

    @property
    def last(self) -> bool:
        return self.head is not None

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, start_pos: int, cache: RequestCache, all_logits: bool = False) -> torch.Tensor:
        """Process positions [start_pos, start_pos + T); the cache must hold exactly start_pos."""
        if cache.length != start_pos:
            raise ValueError(f"cache holds {cache.length} positions, input starts at {start_pos}")
        t = x.shape[1]
        if start_pos + t > self.spec.max_positions:
            raise ValueError(f"sequence of {start_pos + t} tokens exceeds the model's {self.spec.max_positions}")
        step = Step(start_pos, t)
        if self.embed is not None:
            x = self.embed(x.to(torch.long), step)
        else:
            x = x.to(self._dtype())
        if self.spec.family != "ailo" and any(u % 2 == 0 for u in range(self.start, self.end)):
            if self.rotary is None:
                self.rotary = Rotary(self.spec.head_dim, self.spec.rope_theta, x.device)
            step.cos, step.sin = self.rotary.tables(start_pos, t, x.dtype)
        for unit in self.units:
            x = unit(x, step, cache)
        cache.length = start_pos + t
        return self.head(x, all_logits) if self.head is not None else x

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype
