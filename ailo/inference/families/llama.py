"""Llama-2 (and the Hugging Face layout Qwen2 shares): RMSNorm, rotary positions, grouped-query
attention, SwiGLU. Module attribute names mirror the checkpoint's tensor names
(`self_attn.q_proj.weight`, `mlp.gate_proj.weight`), so a unit's state dict is the checkpoint's
tensors with the layer prefix stripped."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ailo.inference.families.base import Family, dtype_of, eos_ids
from ailo.inference.spec import ModelSpec, SpecError
from ailo.inference.units import RequestCache, RMSNorm, Step, attend, rotate_half, segments


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

    def forward(self, x: torch.Tensor, step: Step, cache: RequestCache | list[RequestCache]) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.input_layernorm(x)
        a = self.self_attn
        q = a.q_proj(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = a.k_proj(h).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = a.v_proj(h).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        ys = []
        for off, part, c in segments(step, cache):  # one request's rows (a batched step has several)
            qs, ks, vs = q[:, :, off:off + part.length], k[:, :, off:off + part.length], v[:, :, off:off + part.length]
            cos, sin = part.cos[None, None], part.sin[None, None]
            qs = qs * cos + rotate_half(qs) * sin
            ks = ks * cos + rotate_half(ks) * sin
            ks, vs = c.append(self.layer, ks, vs)
            ys.append(attend(qs, ks, vs, part, self.head_dim ** -0.5))
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=2)
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


def attn_params(s: ModelSpec) -> int:
    h, q, kv = s.hidden, s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim
    return h + h * q + 2 * h * kv + q * h + ((q + 2 * kv) if s.qkv_bias else 0) + (h if s.o_bias else 0)


def mlp_params(s: ModelSpec) -> int:
    h, f = s.hidden, s.intermediate
    return h + 3 * h * f + ((2 * f + h) if s.mlp_bias else 0)


def checkpoint_name(s: ModelSpec, part: str, rest: str, layer: int, has_lm_head: bool) -> str:
    if part == "embed":
        return "model." + rest
    if part == "units":
        return f"model.layers.{layer}.{rest}"
    if rest.startswith("norm."):
        return "model." + rest
    return "lm_head.weight" if has_lm_head or not s.tie_embeddings else "model.embed_tokens.weight"


def _rope_theta(cfg: dict[str, Any]) -> float:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling")
    rope_type = params.get("rope_type") or (scaling or {}).get("rope_type") or (scaling or {}).get("type")
    if rope_type not in (None, "default"):
        raise SpecError(f"rope type {rope_type!r} is not supported (only the default rotary embedding)")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def spec_from_hf_config(cfg: dict[str, Any], family: str = "llama", **overrides: Any) -> ModelSpec:
    """A Hugging Face `config.json` of the Llama layout → ModelSpec (`overrides`: what a
    family fixes regardless of the config, e.g. Qwen2's q/k/v bias)."""
    dtype = dtype_of(cfg)
    if cfg.get("hidden_act", "silu") != "silu":
        raise SpecError(f"activation {cfg.get('hidden_act')!r} is not supported (SwiGLU with SiLU only)")
    if int(cfg.get("pretraining_tp", 1)) != 1:
        raise SpecError("pretraining_tp > 1 is not supported")
    h, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    bias = bool(cfg.get("attention_bias", False))
    fields = dict(
        family=family, n_layers=int(cfg["num_hidden_layers"]), hidden=h, n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=int(cfg.get("head_dim") or h // n_heads), intermediate=int(cfg["intermediate_size"]),
        vocab=int(cfg["vocab_size"]), rope_theta=_rope_theta(cfg), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), qkv_bias=bias, o_bias=bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)), max_positions=int(cfg.get("max_position_embeddings", 2048)),
        eos_token_ids=eos_ids(cfg.get("eos_token_id")), dtype=dtype, name=str(cfg.get("_name_or_path") or family))
    return ModelSpec(**{**fields, **overrides})


LLAMA = Family(
    name="llama", spec_from_config=spec_from_hf_config, attn_params=attn_params, mlp_params=mlp_params,
    attention=LlamaAttention, mlp=LlamaMLP, final_norm=lambda s: RMSNorm(s.hidden, s.norm_eps),
    final_norm_params=lambda s: s.hidden, position_table=False, checkpoint_name=checkpoint_name)
