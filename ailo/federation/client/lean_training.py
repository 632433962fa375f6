"""Local training that follows a MemoryPlan (ailo.federation.client.memory_plan): the same task maths as
`ailo.training.train_local` (mean loss over the task's batch, clipping, warm-up, the task's lr),
held in less memory by micro-batches with gradient accumulation, activation checkpointing, a
chunked head, 8/4-bit AdamW states (torchao) or AdamW states and gradients on the host
(host_offload.py), and a host snapshot of M_start.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch

from ailo.federation.client.host_offload import HostOffloadAdamW
from ailo.federation.client.memory_plan import MemoryPlan, ModelShape, TaskShape
from ailo.model import GPT, GPTConfig
from ailo.recompute import lean_loss
from ailo.training import LocalUpdate, TrainConfig, make_optimizer, micro_batched_backward, run_steps, warm_up


def model_shape(cfg: GPTConfig) -> ModelShape:
    return ModelShape(cfg.n_layer, cfg.n_embd, cfg.n_ffn, cfg.vocab_size, cfg.n_ctx)


def task_shape(task: dict) -> TaskShape:
    return TaskShape(int(task["batch_size"]), int(task["seq_len"]), str(task.get("optimizer", "adamw")))


def device_peak_bytes(device: torch.device | str) -> int | None:
    """The process's peak allocated accelerator memory (what a budget bounds); None on the CPU,
    where the budget is judged by peak RSS instead."""
    device = torch.device(device)
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def available_memory(device: torch.device | str) -> int:
    """Bytes the device has free now: CUDA free memory, else available host RAM (the smaller of
    MemAvailable and what the process's cgroup still allows)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        pass
    if free is None:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:  # cgroup v2 limit of this container, if any
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return int(free)


def make_lean_optimizer(model: torch.nn.Module, cfg: TrainConfig, kind: str):
    """The task's AdamW (betas 0.9/0.95) with the plan's state: torchao 8-bit or 4-bit blockwise
    quantised moments, or fp32 moments, master weights and gradients on the host
    (`host_offload.HostOffloadAdamW`: clips in its own step)."""
    if kind in ("adamw", "sgd"):
        return make_optimizer(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    kw = dict(lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    if kind == "adamw-offload":
        return HostOffloadAdamW(params, max_grad_norm=cfg.grad_clip, **kw)
    from torchao.optim import AdamW4bit, AdamW8bit
    if kind == "adamw8bit":
        return AdamW8bit(params, **kw)
    if kind == "adamw4bit":
        return AdamW4bit(params, **kw)
    raise ValueError(f"unknown optimizer state {kind!r}")


QUANTISED_STATES = ("adamw8bit", "adamw4bit")
HONEST_STEP_BOUND = 2.0  # |Δ_i| ≤ this · lr · steps: full-state AdamW moves a coordinate ≤ ~1·lr a step


def bound_like_adamw(delta: dict[str, torch.Tensor], lr: float, steps: int) -> int:
    """Clamps Δ to what full-state AdamW could have moved each coordinate; returns how many were cut.
    Quantised second moments can round a rare coordinate's v towards zero, and m/√v then steps it
    far beyond lr (measured on the H100: ailo-1b, torchao AdamW8bit, 10 steps: max |Δ| = 1.5× the
    coordinator's 3·lr·steps bound, so the update was refused `implausible_norm`). The task asked
    for AdamW, so those coordinates are cut to its reach; the coordinator's check is unchanged."""
    bound = HONEST_STEP_BOUND * lr * max(1, steps)
    cut = 0
    for t in delta.values():
        cut += int((t.abs() > bound).sum())
        t.clamp_(-bound, bound)
    return cut


def _clip(model: torch.nn.Module, opt, max_norm: float) -> None:
    if not getattr(opt, "clips_itself", False):  # host offload clips the host gradients in its step
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def planned_step(model: GPT, opt: torch.optim.Optimizer, cfg: TrainConfig, plan: MemoryPlan, device: torch.device):
    """One optimizer step under a plan, as `step(i, x, y) -> loss` (ailo.training.run_steps):
    warm-up, the batch's mean loss backed through micro-batches (blocks and head recomputed as
    the plan says, bf16 autocast on CUDA), clipping, the plan's optimizer. Every full-model
    trainer steps through this: `train_planned` and the overlapped worker (client/overlap.py).
    Under today's plan (one micro-batch, nothing recomputed) it is `ailo.training.train_step`."""
    use_amp = cfg.amp and device.type == "cuda"

    def loss_of(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        xs, ys = xs.to(device, non_blocking=True), ys.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            return lean_loss(model, xs, ys, plan.checkpoint_blocks, plan.head_chunk)

    def step(i: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        warm_up(opt, cfg, i)
        opt.zero_grad(set_to_none=True)
        loss = micro_batched_backward(x, y, plan.micro_batch, loss_of)
        if cfg.grad_clip:
            _clip(model, opt, cfg.grad_clip)
        opt.step()
        return loss

    return step


def train_planned(model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], cfg: TrainConfig,
                  plan: MemoryPlan, device: torch.device) -> LocalUpdate:
    """`train_local` under a plan: returns the same pseudo-gradient Δ = M_start − M_end."""
    model.to(device).train()
    host = plan.snapshot_on_host and device.type == "cuda"
    with torch.no_grad():
        start = {k: v.detach().to("cpu", copy=True) if host else v.detach().clone()
                 for k, v in model.state_dict().items()}
    opt = make_lean_optimizer(model, cfg, plan.optimizer)
    run = run_steps(batches, cfg.steps, planned_step(model, opt, cfg, plan, device), device)
    opt.zero_grad(set_to_none=True)
    if hasattr(opt, "close"):
        opt.close()  # host offload: its gradient hooks leave the model
    del opt  # gradients and optimizer states go before Δ is built beside the weights
    with torch.no_grad():
        delta = {k: start.pop(k).to(device).sub_(v.detach()).to(torch.float32) for k, v in model.state_dict().items()}
        if plan.optimizer in QUANTISED_STATES:
            bound_like_adamw(delta, cfg.lr, len(run.losses))
    return run.update(delta)
