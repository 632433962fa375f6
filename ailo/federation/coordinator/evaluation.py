"""The coordinator's validation loss: the global model, or a candidate state swapped into it
(`functional_call`, no model copy), on the fixed validation batches. bf16 autocast on CUDA for
evaluation only (see docs/ARCHITECTURE.md: what stays fp32)."""
from __future__ import annotations

import contextlib
from typing import Iterable, Mapping

import torch
from torch.func import functional_call


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def validation_loss(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    device: torch.device, params: Mapping[str, torch.Tensor] | None = None) -> float:
    total, count = 0.0, 0
    with autocast(device):
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            loss = model(x, y) if params is None else functional_call(model, params, (x, y))
            total += float(loss) * x.numel()
            count += x.numel()
    return total / count
