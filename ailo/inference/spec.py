"""Architecture of a servable model, independent of where its weights live.

A `ModelSpec` is what a room agrees on: the coordinator plans spans from it (memory per
layer), every node checks its checkpoint against the room's fingerprint before joining, and
the blocks are built from it. Three families: Llama-2, Qwen2 (Qwen1.5 is the same
architecture: Llama plus a bias on q/k/v) and the `ailo` GPT presets of `ailo.model`.

Layers are served in half-layer *units*: unit `2·i` is layer i's attention (norm, q/k/v/o),
unit `2·i + 1` its MLP (norm, SwiGLU or GELU MLP). Whole-layer spans are the common case;
half-layer boundaries let a room have more nodes than layers (Llama-2 70B over 120 nodes).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FAMILIES = ("llama", "qwen2", "ailo")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


class SpecError(ValueError):
    """A checkpoint configuration this package cannot serve (said plainly, never guessed)."""


@dataclass(frozen=True)
class ModelSpec:
    family: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    max_positions: int = 2048
    eos_token_ids: tuple[int, ...] = ()
    dtype: str = "float32"
    name: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise SpecError(f"unknown model family {self.family!r}; known: {', '.join(FAMILIES)}")
        if self.n_heads % self.n_kv_heads:
            raise SpecError("attention heads must be a multiple of key/value heads")

    # ----- units -------------------------------------------------------------------------
    @property
    def n_units(self) -> int:
        return 2 * self.n_layers

    def attn_params(self) -> int:
        h, q, kv = self.hidden, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        if self.family == "ailo":
            return 2 * h + (3 * h * h + 3 * h) + (h * h + h)
        n = h + h * q + 2 * h * kv + q * h
        if self.qkv_bias:
            n += q + 2 * kv
        if self.o_bias:
            n += h
        return n

    def mlp_params(self) -> int:
        h, f = self.hidden, self.intermediate
        if self.family == "ailo":
            return 2 * h + (h * f + f) + (f * h + h)
        return h + 3 * h * f + ((2 * f + h) if self.mlp_bias else 0)

    def unit_params(self, unit: int) -> int:
        return self.attn_params() if unit % 2 == 0 else self.mlp_params()

    def embed_params(self) -> int:
        n = self.vocab * self.hidden
        return n + (self.max_positions * self.hidden if self.family == "ailo" else 0)

    def head_params(self) -> int:
        """Final norm + output matrix; a tied head still has to hold the embedding matrix."""
        norm = 2 * self.hidden if self.family == "ailo" else self.hidden
        return norm + self.vocab * self.hidden

    def param_count(self) -> int:
        body = self.n_layers * (self.attn_params() + self.mlp_params())
        head = self.head_params() - (self.vocab * self.hidden if self.tie_embeddings else 0)
        return self.embed_params() + body + head

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Key + value cache of one attention unit for one position."""
        return 2 * self.n_kv_heads * self.head_dim * dtype_bytes

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    # ----- identity -----------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hash of everything that changes the math; a node whose checkpoint differs cannot join."""
        keys = ("family", "n_layers", "hidden", "n_heads", "n_kv_heads", "head_dim", "intermediate",
                "vocab", "rope_theta", "norm_eps", "tie_embeddings", "qkv_bias", "o_bias", "mlp_bias")
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        d = dict(d)
        d["eos_token_ids"] = tuple(d.get("eos_token_ids") or ())
        return cls(**d)


def _eos(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, list) else (int(value),)


def _rope_theta(cfg: dict[str, Any]) -> float:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling")
    rope_type = params.get("rope_type") or (scaling or {}).get("rope_type") or (scaling or {}).get("type")
    if rope_type not in (None, "default"):
        raise SpecError(f"rope type {rope_type!r} is not supported (only the default rotary embedding)")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def spec_from_config(cfg: dict[str, Any]) -> ModelSpec:
    """A Hugging Face `config.json` (llama / qwen2) or an `ailo` GPT config → ModelSpec."""
    model_type = cfg.get("model_type")
    dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
    if dtype not in DTYPE_BYTES:
        raise SpecError(f"checkpoint dtype {dtype!r} is not supported")
    if model_type == "ailo":
        h, n_head = int(cfg["n_embd"]), int(cfg["n_head"])
        return ModelSpec(family="ailo", n_layers=int(cfg["n_layer"]), hidden=h, n_heads=n_head,
                         n_kv_heads=n_head, head_dim=h // n_head, intermediate=int(cfg["n_ffn"]),
                         vocab=int(cfg["vocab_size"]), norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
                         tie_embeddings=True, qkv_bias=True, o_bias=True, mlp_bias=True,
                         max_positions=int(cfg["n_ctx"]), eos_token_ids=_eos(cfg.get("eos_token_id")),
                         dtype=dtype, name=str(cfg.get("name", "ailo")))
    if model_type not in ("llama", "qwen2"):
        raise SpecError(f"model_type {model_type!r} is not supported; serve llama, qwen2 or ailo checkpoints")
    if cfg.get("hidden_act", "silu") != "silu":
        raise SpecError(f"activation {cfg.get('hidden_act')!r} is not supported (SwiGLU with SiLU only)")
    if model_type == "qwen2" and (cfg.get("use_sliding_window") or
                                  "sliding_attention" in (cfg.get("layer_types") or [])):
        raise SpecError("Qwen2 sliding-window attention is not supported")
    if int(cfg.get("pretraining_tp", 1)) != 1:
        raise SpecError("pretraining_tp > 1 is not supported")
    h, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    bias = bool(cfg.get("attention_bias", False))
    return ModelSpec(
        family=model_type, n_layers=int(cfg["num_hidden_layers"]), hidden=h, n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=int(cfg.get("head_dim") or h // n_heads), intermediate=int(cfg["intermediate_size"]),
        vocab=int(cfg["vocab_size"]), rope_theta=_rope_theta(cfg), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=True if model_type == "qwen2" else bias, o_bias=False if model_type == "qwen2" else bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)), max_positions=int(cfg.get("max_position_embeddings", 2048)),
        eos_token_ids=_eos(cfg.get("eos_token_id")), dtype=dtype, name=str(cfg.get("_name_or_path") or model_type))


def read_spec(model_dir: str | Path) -> ModelSpec:
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise SpecError(f"{path} not found: a model folder needs config.json and *.safetensors")
    return spec_from_config(json.loads(path.read_text()))
