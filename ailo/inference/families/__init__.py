"""The model-family registry (one module per family, as Petals does): Llama-2, Qwen2 and `ailo`
GPT. Everything that differs between families — how a config.json reads, parameter counts, the
unit modules, the final norm, checkpoint tensor names, the default tokenizer — is looked up
here by `spec.family`; no other module tests a family's name. A new family is one module beside
these plus one entry in `FAMILIES` (and `ailo/web/src/families.js` for browser nodes).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ailo.inference.families.base import Family
from ailo.inference.families.gpt import GPT
from ailo.inference.families.llama import LLAMA
from ailo.inference.families.qwen2 import QWEN2
from ailo.inference.spec import ModelSpec, SpecError

FAMILIES: dict[str, Family] = {f.name: f for f in (LLAMA, QWEN2, GPT)}


def family(spec: ModelSpec | str) -> Family:
    name = spec if isinstance(spec, str) else spec.family
    try:
        return FAMILIES[name]
    except KeyError:
        raise SpecError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def spec_from_config(cfg: dict[str, Any]) -> ModelSpec:
    """A Hugging Face `config.json` (llama / qwen2) or an `ailo` GPT config → ModelSpec."""
    model_type = cfg.get("model_type")
    if model_type not in FAMILIES:
        raise SpecError(f"model_type {model_type!r} is not supported; serve {', '.join(FAMILIES)} checkpoints")
    return FAMILIES[model_type].spec_from_config(cfg)


def read_spec(model_dir: str | Path) -> ModelSpec:
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise SpecError(f"{path} not found: a model folder needs config.json and *.safetensors")
    return spec_from_config(json.loads(path.read_text()))


# ----- sizes (plan.py's memory per unit) --------------------------------------------------------
def unit_params(s: ModelSpec, unit: int) -> int:
    f = family(s)
    return f.attn_params(s) if unit % 2 == 0 else f.mlp_params(s)


def embed_params(s: ModelSpec) -> int:
    return s.vocab * s.hidden + (s.max_positions * s.hidden if family(s).position_table else 0)


def head_params(s: ModelSpec) -> int:
    """Final norm + output matrix; a tied head still has to hold the embedding matrix."""
    return family(s).final_norm_params(s) + s.vocab * s.hidden


def param_count(s: ModelSpec) -> int:
    body = sum(unit_params(s, u) for u in range(s.n_units))
    head = head_params(s) - (s.vocab * s.hidden if s.tie_embeddings else 0)
    return embed_params(s) + body + head
