"""`ailo` GPT (the presets of `ailo.model`): LayerNorm, learned absolute positions, tanh-GELU
MLP, tied embeddings. The units are built from `ailo.model`'s own `Attention` and `MLP` (one
GPT block for training and serving), so a unit's state dict is a `blocks.<i>` slice of a
training checkpoint."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ailo.inference.families.base import Family, dtype_of, eos_ids
from ailo.inference.spec import ModelSpec
from ailo.inference.units import RequestCache, Step, attend, segments
from ailo.model import MLP, Attention


class _UnitKV:
    """The request's KV cache seen by one attention unit of one step (`ailo.model.KVCache`)."""

    def __init__(self, cache: RequestCache | list[RequestCache], layer: int, step: Step):
        self.cache, self.layer, self.step = cache, layer, step

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ys = []
        for off, part, c in segments(self.step, self.cache):  # each request of a batched step alone
            end = off + part.length
            ks, vs = c.append(self.layer, k[:, :, off:end], v[:, :, off:end])
            ys.append(attend(q[:, :, off:end], ks, vs, part, q.shape[-1] ** -0.5))
        return ys[0] if len(ys) == 1 else torch.cat(ys, dim=2)


class GPTAttention(nn.Module):
    """Unit 2·i of `ailo.model.GPT`: its `ln1` and its very `Attention`, with the KV cache."""

    def __init__(self, s: ModelSpec, layer: int):
        super().__init__()
        self.layer = layer
        self.ln1 = nn.LayerNorm(s.hidden, eps=s.norm_eps)
        self.attn = Attention(s.hidden, s.n_heads)

    def forward(self, x: torch.Tensor, step: Step, cache: RequestCache) -> torch.Tensor:
        return x + self.attn(self.ln1(x), _UnitKV(cache, self.layer, step))


class GPTMLP(nn.Module):
    """Unit 2·i+1 of `ailo.model.GPT`: its `ln2` and its very `MLP`."""

    def __init__(self, s: ModelSpec, layer: int):
        super().__init__()
        self.ln2 = nn.LayerNorm(s.hidden, eps=s.norm_eps)
        self.mlp = MLP(s.hidden, s.intermediate)

    def forward(self, x: torch.Tensor, step: Step, cache: RequestCache) -> torch.Tensor:
        return x + self.mlp(self.ln2(x))


def attn_params(s: ModelSpec) -> int:
    h = s.hidden
    return 2 * h + (3 * h * h + 3 * h) + (h * h + h)


def mlp_params(s: ModelSpec) -> int:
    h, f = s.hidden, s.intermediate
    return 2 * h + (h * f + f) + (f * h + h)


def checkpoint_name(s: ModelSpec, part: str, rest: str, layer: int, has_lm_head: bool) -> str:
    if part == "embed":
        return "wte.weight" if rest == "embed_tokens.weight" else rest
    if part == "units":
        return f"blocks.{layer}.{rest}"
    return "ln_f." + rest.split(".", 1)[1] if rest.startswith("norm.") else "wte.weight"


def spec_from_config(cfg: dict[str, Any]) -> ModelSpec:
    dtype = dtype_of(cfg)
    h, n_head = int(cfg["n_embd"]), int(cfg["n_head"])
    return ModelSpec(family="ailo", n_layers=int(cfg["n_layer"]), hidden=h, n_heads=n_head,
                     n_kv_heads=n_head, head_dim=h // n_head, intermediate=int(cfg["n_ffn"]),
                     vocab=int(cfg["vocab_size"]), norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
                     tie_embeddings=True, qkv_bias=True, o_bias=True, mlp_bias=True,
                     max_positions=int(cfg["n_ctx"]), eos_token_ids=eos_ids(cfg.get("eos_token_id")),
                     dtype=dtype, name=str(cfg.get("name", "ailo")))


GPT = Family(
    name="ailo", spec_from_config=spec_from_config, attn_params=attn_params, mlp_params=mlp_params,
    attention=GPTAttention, mlp=GPTMLP, final_norm=lambda s: nn.LayerNorm(s.hidden, eps=s.norm_eps),
    final_norm_params=lambda s: 2 * s.hidden, position_table=True, checkpoint_name=checkpoint_name,
    default_tokenizer="gpt2")
