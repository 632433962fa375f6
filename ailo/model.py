"""GPT-2-style decoder-only Transformer built from the Ailo presets (SPEC R1, `ailo/presets.py`).

Pre-LayerNorm blocks, learned absolute positions, GELU MLP, tied input/output embeddings,
causal attention through `scaled_dot_product_attention` (flash/memory-efficient kernels on
CUDA). Parameter names are the contract shared with the browser client and the chunk
manifest, so they are kept short and stable.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

# The configs are plain data in ailo/presets.py (torch-free: the CLI's parsers read them).
from ailo.presets import GPT2_VOCAB, PRESETS, GPTConfig, get_preset  # noqa: F401  (re-exported)


class KVCache(Protocol):
    """Attention over cached keys (serving, `ailo.inference`): appends this step's k, v and
    attends the new queries over every cached position."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


class Attention(nn.Module):
    """Causal self-attention: one implementation for training (whole sequence) and for serving
    a room (`kv`: the request's KV cache, `ailo/inference/families/gpt.py`)."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        if n_embd % n_head:
            raise ValueError("n_embd must be divisible by n_head")
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor, kv: KVCache | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        shape = (b, t, self.n_head, c // self.n_head)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True) if kv is None else kv.attend(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, n_embd: int, n_ffn: int):
        super().__init__()
        self.fc = nn.Linear(n_embd, n_ffn)
        self.proj = nn.Linear(n_ffn, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg.n_embd, cfg.n_head)
        self.ln2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.n_embd, cfg.n_ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        if seed is not None:
            self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """GPT-2 init (N(0, 0.02), residual projections scaled by 1/sqrt(2L)), from a seed."""
        if any(p.is_meta for p in self.parameters()):
            return
        gen = torch.Generator(device="cpu").manual_seed(seed)
        resid_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif ".ln" in name or name.startswith("ln_"):
                p.fill_(1.0)
            else:
                std = resid_std if name.endswith("proj.weight") else 0.02
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * std)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.cfg.n_ctx:
            raise ValueError(f"sequence of {t} tokens exceeds context {self.cfg.n_ctx}")
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Returns logits, or the mean cross-entropy when targets are given."""
        logits = F.linear(self.hidden(idx), self.wte.weight)  # tied embeddings
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def build_model(preset: str | GPTConfig, seed: int = 0, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> GPT:
    """Build a preset; on the `meta` device nothing is allocated (shape planning)."""
    cfg = get_preset(preset) if isinstance(preset, str) else preset
    with torch.device(device):
        model = GPT(cfg, seed=None)
    model = model.to(dtype=dtype)
    if str(device) != "meta":
        model.reset_parameters(seed)
    return model


def empty_model(preset: str | GPTConfig, device: str | torch.device = "cpu") -> GPT:
    """A model about to receive downloaded weights: allocated on `device`, not initialised (a
    random ailo-1b init costs seconds of CPU per worker start for values overwritten at once)."""
    return build_model(preset, device="meta").to_empty(device=device)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (the tied output matrix counts once)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_token(cfg: GPTConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6 x matmul parameters (incl. the tied LM head) plus attention
    scores (12·L·d·T), the accounting used for MFU in the PaLM paper."""
    matmul_params = cfg.n_layer * (4 * cfg.n_embd ** 2 + 2 * cfg.n_embd * cfg.n_ffn)
    matmul_params += cfg.vocab_size * cfg.n_embd
    return 6 * matmul_params + 12 * cfg.n_layer * cfg.n_embd * (seq_len or cfg.n_ctx)
