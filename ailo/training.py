"""Local training on a contributor's own shard (SPEC R3 native side, R4 step 2).

`train_local` runs S steps (or E epochs) of AdamW/SGD with gradient clipping, bf16 autocast
on CUDA when available, and returns the pseudo-gradient Δ = M_start − M_end with n_k (samples
seen) and the mean train loss: exactly what the coordinator's FedAvg consumes.
"""
from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from tqdm import tqdm

from ailo.model import GPT


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20
    batch_size: int = 8
    lr: float = 3e-3
    optimizer: str = "adamw"      # "adamw" | "sgd"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    amp: bool = True              # bf16 autocast, only on CUDA
    compile: bool = False         # torch.compile the forward (52 % vs 37 % MFU on an H200)
    progress: bool = False


@dataclass
class LocalUpdate:
    """What a client reports: Δ_k = M_start − M_end, n_k, and its train loss."""
    delta: dict[str, torch.Tensor]
    n_samples: int
    tokens: int
    train_loss: float
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def device_label(device: torch.device) -> str:
    """What trains, for people (the X-Ailo-Device header the dashboard shows): "torch cuda NVIDIA
    H100 80GB HBM3", "torch cpu x86_64". Printable ASCII, at most 128 characters."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    return "".join(c if " " <= c <= "~" else "?" for c in f"torch {device.type} {name}".strip())[:128]


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        fused = all(p.is_cuda for p in params)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                                 fused=fused or None)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use adamw or sgd")


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        if isinstance(g["lr"], torch.Tensor):  # torchao keeps lr as a tensor (no recompile per value)
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


def warm_up(opt: torch.optim.Optimizer, cfg: TrainConfig, step: int) -> None:
    """Linear lr warm-up over the first `cfg.warmup_steps` steps (no-op without warm-up)."""
    if cfg.warmup_steps:
        set_lr(opt, cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps))


def micro_batched_backward(x: torch.Tensor, y: torch.Tensor, micro: int | None, loss_of) -> torch.Tensor:
    """Backward the batch's mean loss in micro-batches of `micro` sequences (the same gradient as
    one pass over the batch, less activation memory); returns the detached batch loss."""
    total = None
    for xs, ys in zip(x.split(micro or x.shape[0]), y.split(micro or x.shape[0])):
        loss = loss_of(xs, ys) * (xs.shape[0] / x.shape[0])
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    assert total is not None, "empty batch"
    return total


def train_step(model: torch.nn.Module, forward, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               cfg: TrainConfig, step: int, use_amp: bool) -> torch.Tensor:
    """One optimizer step (lr warm-up over the first `cfg.warmup_steps`, clipping); returns the
    detached loss. Shared by `train_local` and the overlapped worker (`ailo.federation.overlap`)."""
    warm_up(opt, cfg, step)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
        loss = forward(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return loss.detach()


@dataclass
class StepRun:
    """What a local training loop did: per-step losses, samples, tokens, seconds."""
    losses: list[float] = field(default_factory=list)
    n_samples: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def update(self, delta: dict[str, torch.Tensor]) -> LocalUpdate:
        return LocalUpdate(delta, self.n_samples, self.tokens, sum(self.losses) / max(1, len(self.losses)),
                           len(self.losses), self.seconds, self.losses)


def run_steps(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int, step, device: torch.device,
              on_step=None) -> StepRun:
    """The loop every local trainer shares (full model, planned, slice): `step(i, x, y)` runs one
    optimizer step on a batch and returns its loss (a tensor: read once at the end, so the device
    is never waited on per step); stops after `steps` batches or when `batches` runs out."""
    run, losses = StepRun(), []
    t0 = time.perf_counter()
    it: Iterator = iter(batches)
    for i in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            break
        loss = step(i, x, y)
        losses.append(loss)
        run.n_samples += x.shape[0]
        run.tokens += x.numel()
        if on_step is not None:
            on_step(i, loss)
    if device.type == "cuda":
        torch.cuda.synchronize()
    run.seconds = time.perf_counter() - t0
    run.losses = [float(v) for v in losses]
    return run


def train_local(model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], cfg: TrainConfig,
                device: torch.device | None = None) -> LocalUpdate:
    """Train in place for at most `cfg.steps` batches; returns the pseudo-gradient."""
    device = device or next(model.parameters()).device
    model.to(device).train()
    start = snapshot(model)
    opt = make_optimizer(model, cfg)
    use_amp = cfg.amp and device.type == "cuda"
    forward = torch.compile(model) if cfg.compile else model  # parameters (and names) stay model's
    bar = tqdm(total=cfg.steps, desc="train", unit="step", disable=not cfg.progress, leave=False)

    def step(i: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return train_step(model, forward, opt, x, y, cfg, i, use_amp)

    def progress(i: int, loss: torch.Tensor) -> None:
        bar.update(1)
        if cfg.progress and i % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")

    run = run_steps(batches, cfg.steps, step, device, progress)
    bar.close()
    end = model.state_dict()
    # Δ stays on the training device: the codec quantizes it there (an ailo-1b Δ is 3.3 GB)
    return run.update({k: (start[k] - end[k].detach()).to(torch.float32) for k in start})


@torch.no_grad()
def evaluate(model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device | None = None) -> float:
    """Mean cross-entropy (nats/token) over fixed batches."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        total += float(model(x.to(device), y.to(device))) * x.numel()
        count += x.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate() needs at least one batch")
    return total / count


def apply_delta(model: torch.nn.Module, delta: dict[str, torch.Tensor], scale: float = 1.0) -> None:
    """M ← M − scale·Δ, in place (Δ is a pseudo-gradient: M_start − M_end)."""
    state = model.state_dict()
    with torch.no_grad():
        for k, d in delta.items():
            state[k].sub_(d.to(state[k].device, state[k].dtype), alpha=scale)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
