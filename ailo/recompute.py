"""The GPT loss with activations recomputed in backward instead of kept (issue 26).

Used by the budgeted worker (ailo.federation.client.lean_training) and by the coordinator's
Proof-of-Contribution reference gradient (ailo.federation.coordinator.poc): the values equal
`GPT.forward(x, y)`; only the memory differs. A checkpointed block keeps its input (one
float32 tensor per token) and re-runs its forward in backward; the tied head and the
cross-entropy run in chunks of tokens, each recomputed in backward, so the [tokens × 50,257]
logits never exist for the whole batch at once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ailo.model import GPT


def hidden_states(model: GPT, x: torch.Tensor, checkpoint_blocks: int = 0) -> torch.Tensor:
    """GPT.hidden(x) with the first `checkpoint_blocks` blocks recomputed in backward."""
    pos = torch.arange(x.shape[1], device=x.device)
    h = model.wte(x) + model.wpe(pos)
    for i, block in enumerate(model.blocks):
        h = checkpoint(block, h, use_reentrant=False) if i < checkpoint_blocks and torch.is_grad_enabled() else block(h)
    return model.ln_f(h)


def _token_losses(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = F.linear(h, weight)
    return F.cross_entropy(logits.float(), y, reduction="none")


def head_losses(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """Cross-entropy of every token ([B, T]) under the head `weight`, `chunk` tokens at a time
    (0: all), each chunk's logits recomputed in backward."""
    flat, target = h.reshape(-1, h.shape[-1]), y.reshape(-1)
    if not chunk or chunk >= target.numel():
        return _token_losses(flat, weight, target).view(y.shape)
    grad = torch.is_grad_enabled()
    parts = [checkpoint(_token_losses, flat[i:i + chunk], weight, target[i:i + chunk], use_reentrant=False)
             if grad else _token_losses(flat[i:i + chunk], weight, target[i:i + chunk])
             for i in range(0, target.numel(), chunk)]
    return torch.cat(parts).view(y.shape)


def token_losses(model: GPT, h: torch.Tensor, y: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """Cross-entropy of every token ([B, T]) under the tied head, `chunk` tokens at a time (0: all)."""
    return head_losses(h, model.wte.weight, y, chunk)


def lean_loss(model: GPT, x: torch.Tensor, y: torch.Tensor, checkpoint_blocks: int = 0, head_chunk: int = 0) -> torch.Tensor:
    """Mean token cross-entropy, = GPT.forward(x, y)."""
    return token_losses(model, hidden_states(model, x, checkpoint_blocks), y, head_chunk).mean()


def lean_sequence_losses(model: GPT, x: torch.Tensor, y: torch.Tensor, head_chunk: int = 1024) -> torch.Tensor:
    """Mean cross-entropy of each sequence ([B]) with every block and the head recomputed in backward."""
    return token_losses(model, hidden_states(model, x, len(model.blocks)), y, head_chunk).mean(1)
