"""Run a GPT larger than the memory budget by streaming its blocks from a ChunkStore (R2).

Only one block's weights (plus embeddings) are materialised at a time; the ChunkStore's LRU
budget bounds how many chunks stay resident. Slower than a resident model, but it lets a
small machine evaluate a big one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ailo.chunks import ChunkStore
from ailo.model import Block, GPTConfig


def _load_block(store: ChunkStore, cfg: GPTConfig, i: int) -> Block:
    block = Block(cfg)
    prefix = f"blocks.{i}."
    block.load_state_dict({k[len(prefix):]: store.tensor(k) for k in store.manifest.tensors if k.startswith(prefix)})
    return block.eval()


@torch.no_grad()
def streamed_logits(store: ChunkStore, cfg: GPTConfig, idx: torch.Tensor) -> torch.Tensor:
    """Logits of `idx` computed block by block; equal to GPT(cfg)(idx) with the same weights."""
    pos = torch.arange(idx.shape[1])
    x = F.embedding(idx, store.tensor("wte.weight")) + F.embedding(pos, store.tensor("wpe.weight"))
    for i in range(cfg.n_layer):
        x = _load_block(store, cfg, i)(x)
    x = F.layer_norm(x, (cfg.n_embd,), store.tensor("ln_f.weight"), store.tensor("ln_f.bias"), cfg.layer_norm_eps)
    return F.linear(x, store.tensor("wte.weight"))
