"""Architecture of a servable model, independent of where its weights live.

A `ModelSpec` is what a room agrees on: the coordinator plans spans from it (memory per
layer), every node checks its checkpoint against the room's fingerprint before joining, and
the blocks are built from it. What differs between families (Llama-2, Qwen2, `ailo` GPT: sizes,
config.json reading, modules) is in `ailo.inference.families`; this module knows none of them.

Layers are served in half-layer *units*: unit `2·i` is layer i's attention (norm, q/k/v/o),
unit `2·i + 1` its MLP (norm, SwiGLU or GELU MLP). Whole-layer spans are the common case;
half-layer boundaries let a room have more nodes than layers (Llama-2 70B over 120 nodes).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

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
        if self.n_heads % self.n_kv_heads:
            raise SpecError("attention heads must be a multiple of key/value heads")

    # ----- units -------------------------------------------------------------------------
    @property
    def n_units(self) -> int:
        return 2 * self.n_layers

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
