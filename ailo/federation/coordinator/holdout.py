"""The coordinator's private, rotating Proof-of-Contribution holdout (SPEC R6).

A client that can reconstruct the holdout can train on it and collect the largest loss
bonus every round, so:
- the text comes from a private folder that is never served (`ailo coordinator
  --holdout-dir`); without one the coordinator falls back to the `holdout` split of the public
  corpus and says so (fine for experiments, gameable in production);
- the sequences scored for model version v are drawn from the whole pool with a seed derived
  from a secret kept in the state directory (`poc-secret`, 0600) and v, so they change with
  every version and cannot be predicted even by someone who has the text;
- the loss is kept per sequence, so the loss check can use a paired difference with its
  standard error instead of a single noisy number.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ailo.data import TokenDataset
from ailo.paths import corpus_dir


def load_secret(state_dir: Path) -> bytes:
    """32 random bytes created once per coordinator state dir; seeds holdout draws and sketches."""
    path = Path(state_dir) / "poc-secret"
    if path.exists():
        data = path.read_bytes()
        if len(data) < 32:
            raise ValueError(f"{path} is shorter than 32 bytes; delete it to create a new secret")
        return data
    data = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return data


def derive(secret: bytes, label: str) -> bytes:
    return hmac.new(secret, label.encode(), hashlib.sha256).digest()


def check_private(holdout_dir: Path, public_dir: Path | None) -> None:
    """Refuse a holdout folder that the public sample routes would serve (inside the corpus)."""
    h, p = Path(holdout_dir).resolve(), Path(public_dir or corpus_dir()).resolve()
    if h == p or p in h.parents or h in p.parents:
        raise ValueError(f"holdout folder {h} overlaps the public data folder {p}: clients could read it")


@dataclass
class PrivateHoldout:
    """A pool of held-out tokens and the secret that picks which windows score each version."""
    tokens: np.ndarray
    secret: bytes
    sequences: int = 64
    private: bool = True          # False: fallback pool derived from public text
    _cache: dict = field(default_factory=dict)

    @classmethod
    def open(cls, holdout_dir: Path | str | None, data_dir: Path | str | None, secret: bytes,
             sequences: int = 64) -> "PrivateHoldout":
        if holdout_dir:
            check_private(Path(holdout_dir), Path(data_dir) if data_dir else None)
            return cls(TokenDataset.from_dir(holdout_dir, "all").tokens, secret, sequences, True)
        return cls(TokenDataset.from_dir(data_dir, "holdout").tokens, secret, sequences, False)

    def pool_windows(self, seq_len: int) -> int:
        return max(0, len(self.tokens) - seq_len - 1)

    def windows(self, version: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of shape [sequences, seq_len] for `version`: fixed for the version,
        unpredictable without the secret, fresh for the next version."""
        key = (version, seq_len)
        if key not in self._cache:
            n = self.pool_windows(seq_len)
            if n < self.sequences:
                raise ValueError(f"holdout pool of {len(self.tokens)} tokens is too small for {self.sequences} "
                                 f"windows of {seq_len + 1}")
            seed = int.from_bytes(derive(self.secret, f"holdout:{version}")[:8], "little")
            starts = np.random.default_rng(seed).choice(n, size=self.sequences, replace=False)
            idx = torch.from_numpy(starts.astype(np.int64))[:, None] + torch.arange(seq_len + 1)[None, :]
            window = torch.from_numpy(self.tokens.astype(np.int64))[idx]
            self._cache = {key: (window[:, :-1], window[:, 1:])}
        return self._cache[key]


HOLDOUT_TOKENS = 4096  # tokens per holdout forward at most: bounds the logits (ailo-1b: 0.8 GB fp32)
RECOMPUTE_ABOVE = 4 * 2**30  # activations of one holdout forward beyond which the reference recomputes them


def holdout_batch(seq_len: int) -> int:
    """Sequences per holdout forward: 8 (as always) up to 512 tokens, 2 of ailo-1b's 2,048."""
    return max(1, min(8, HOLDOUT_TOKENS // max(1, seq_len)))


def holdout_recompute(cfg, seq_len: int) -> bool:
    """Whether the reference gradient recomputes blocks and head in backward (same values, less
    memory): when one forward's fp32 activations would pass RECOMPUTE_ABOVE (ailo-1b: ~13 GB
    at 2 × 2,048 tokens; ailo-small: 1.5 GB, kept). Constants as the worker's planner's."""
    tokens = holdout_batch(seq_len) * seq_len
    return tokens * (cfg.n_layer * (28 * cfg.n_embd + 10 * cfg.n_ffn) + 12 * cfg.vocab_size) > RECOMPUTE_ABOVE


def sequence_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 8,
                    params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean token cross-entropy of each sequence ([N]); with `params`, of the model's
    architecture with those weights swapped in. Differentiable when grad is enabled."""
    out = []
    for i in range(0, x.shape[0], batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        logits = functional_call(model, params, (xb,)) if params is not None else model(xb)
        tok = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), yb.reshape(-1), reduction="none")
        out.append(tok.view(xb.shape[0], -1).mean(1))
    return torch.cat(out)
