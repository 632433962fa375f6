"""The Ailo model presets as plain data (SPEC R1): no torch, so `ailo --help` and every
command's parser can offer `--preset` choices without loading PyTorch (`ailo/model.py` builds
the network from these configs and re-exports them)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

GPT2_VOCAB = 50257


@dataclass(frozen=True)
class GPTConfig:
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_ffn: int
    n_ctx: int
    vocab_size: int = GPT2_VOCAB
    layer_norm_eps: float = 1e-5

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, GPTConfig] = {
    # CI / browser size: a training step takes a fraction of a second on 2 CPU cores.
    "ailo-tiny": GPTConfig("ailo-tiny", n_layer=2, n_embd=64, n_head=4, n_ffn=256, n_ctx=64),
    # Laptop-CPU demo size.
    "ailo-small": GPTConfig("ailo-small", n_layer=6, n_embd=256, n_head=8, n_ffn=1024, n_ctx=256),
    # Flagship, exactly SPEC R1.
    "ailo-1b": GPTConfig("ailo-1b", n_layer=24, n_embd=1600, n_head=25, n_ffn=6400, n_ctx=2048),
}


def get_preset(name: str) -> GPTConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
