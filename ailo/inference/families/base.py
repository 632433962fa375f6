"""What a model family tells the rest of `ailo.inference` (one `Family` per module beside this)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

from ailo.inference.spec import DTYPE_BYTES, ModelSpec, SpecError


@dataclass(frozen=True)
class Family:
    name: str
    spec_from_config: Callable[[dict[str, Any]], ModelSpec]   # its config.json → ModelSpec
    attn_params: Callable[[ModelSpec], int]                   # parameters of one attention unit
    mlp_params: Callable[[ModelSpec], int]                    # parameters of one MLP unit
    attention: Callable[[ModelSpec, int], nn.Module]          # unit 2·i (spec, layer i)
    mlp: Callable[[ModelSpec, int], nn.Module]                # unit 2·i + 1
    final_norm: Callable[[ModelSpec], nn.Module]
    final_norm_params: Callable[[ModelSpec], int]
    position_table: bool                                      # learned positions (else rotary)
    # (spec, module part: embed | units | head, key within it, layer, checkpoint has lm_head) → tensor name
    checkpoint_name: Callable[[ModelSpec, str, str, int, bool], str]
    default_tokenizer: str | None = None                      # a room's tokenizer when none is named


def dtype_of(cfg: dict[str, Any]) -> str:
    dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
    if dtype not in DTYPE_BYTES:
        raise SpecError(f"checkpoint dtype {dtype!r} is not supported")
    return dtype


def eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, list) else (int(value),)
