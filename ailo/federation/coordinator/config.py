"""What a coordinator is configured with, and what its checks and hooks are handed.

`CoordinatorConfig` is the whole run's configuration (the CLI builds it from its flags);
`Submission` is everything a validation check may look at (the hook types that receive it are
in `coordinator.py`).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ailo.federation.core.local_phase import phase_fields
from ailo.federation.core.round_rules import RoundRules
from ailo.federation.core.update_format import UpdateMeta
from ailo.storage.rounds_store import RoundRecord


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but PyTorch sees no CUDA device")
    return device


@dataclass(frozen=True)
class CoordinatorConfig:
    preset: str = "ailo-tiny"
    seed: int = 0
    num_chunks: int = 8
    min_updates: int = 3
    max_updates: int | None = None       # close early when reached (default: min_updates)
    round_seconds: float = 300.0         # deadline; at the deadline a round with ≥ min_updates closes
    quorum_updates: int = 1              # liveness: a round 2×round_seconds old closes with this many
    max_rounds: int | None = None        # after this many rounds tasks answer "done"
    local_steps: int = 20
    local_seconds: float = 0.0           # > 0: time-sized rounds (local_phase.py); 0: local_steps per round
    max_local_steps: int = 400           # time-sized rounds: cap on one phase's steps
    batch_size: int = 8
    seq_len: int | None = None
    lr: float = 3e-3
    lr_decay: float = 1.0                # client learning rate of round r: lr · lr_decay^(r−1)
    warmup_steps: int = 0                # client lr ramps linearly over a round's first N local steps
    optimizer: str = "adamw"
    server_lr: float = 1.0
    aggregator: str = "fedavg"
    outer: str = "sgd"                   # outer optimizer on the averaged Δ: sgd (FedAvg) | nesterov | fedadam
    outer_momentum: float = 0.9          # nesterov: momentum μ (server_lr is the outer learning rate)
    init: str | None = None              # genesis from this safetensors state dict instead of the seeded init
    compact_downloads: bool = False      # also serve the bf16 model + int8 patches from v−1 (downloads.py)
    codec: str = "fp32"                  # update codec named in each task: fp32 | int8 | sparse
    codec_density: float = 0.01          # sparse: share of each tensor's entries a client sends
    ef_decay: float = 1.0                # lossy codecs: client error feedback e ← ef_decay·e + Δ
    val_batches: int = 4
    data_dir: str | None = None
    mirrors: tuple[str, ...] = ()        # chunk mirror base URLs listed in the served manifest
    device: str = "cpu"                  # cpu | cuda | auto: validation, aggregation, evaluation
    max_pending: int = 256               # admitted, not yet judged updates; beyond: 429 busy
    max_staleness: int = 1               # updates trained this many versions back are still taken (delayed rule)

    @property
    def rules(self) -> RoundRules:
        """When a round closes (early when full, or at its deadline)."""
        return RoundRules(self.min_updates, self.max_updates, self.quorum_updates, self.round_seconds)

    def task_spec(self, round_id: int, seq_len: int, codec_task: dict) -> dict:
        """What round `round_id` asks of clients; stored with the round, so it survives restarts."""
        return {"steps": self.local_steps, "batch_size": self.batch_size, "seq_len": seq_len,
                "lr": self.lr * self.lr_decay ** (round_id - 1), "optimizer": self.optimizer, "codec": codec_task,
                **({"download": "bf16"} if self.compact_downloads else {}),
                **({"warmup_steps": self.warmup_steps} if self.warmup_steps else {}),
                **phase_fields(self.local_seconds, self.max_local_steps)}


@dataclass
class Submission:
    """Everything a validation check may look at (parsed tensors only after structural checks)."""
    meta: UpdateMeta
    body: bytes
    sha256: str
    round: RoundRecord
    received: float
    peer: str = ""
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @contextmanager
    def timed(self, phase: str):
        """Adds the block's wall milliseconds to extra["phase_ms"][phase]: where validation time
        goes, per update and summed per round in the status history. Waits for queued CUDA work
        so each phase is charged its own kernels."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
            ms = self.extra.setdefault("phase_ms", {})
            ms[phase] = round(ms.get(phase, 0.0) + 1000 * (time.perf_counter() - t0), 1)
