"""Qwen2 (Qwen1.5 is the same architecture): Llama's layout with a bias on q/k/v and none on o."""
from __future__ import annotations

import dataclasses
from typing import Any

from ailo.inference.families.llama import LLAMA, spec_from_hf_config
from ailo.inference.spec import ModelSpec, SpecError


def spec_from_config(cfg: dict[str, Any]) -> ModelSpec:
    if cfg.get("use_sliding_window") or "sliding_attention" in (cfg.get("layer_types") or []):
        raise SpecError("Qwen2 sliding-window attention is not supported")
    return spec_from_hf_config(cfg, "qwen2", qkv_bias=True, o_bias=False)


QWEN2 = dataclasses.replace(LLAMA, name="qwen2", spec_from_config=spec_from_config)
