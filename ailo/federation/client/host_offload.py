"""AdamW whose moments, fp32 master weights and gradients live in host memory (issue 26: the
smallest full-model budgets, e.g. ailo-1b in 8 or 9 GB of GPU memory).

The device keeps only the weights the forward/backward needs. Each parameter's gradient is
added to its host copy the moment backward has accumulated it (a post-accumulate-grad hook)
and freed on the device, so gradients never exist for the whole model on the device — and,
unlike torchao's CPUOffloadOptimizer (whose `offload_gradients` copies rather than adds), micro-
batches accumulate correctly on the host. `step()` clips the host gradients (the same global
norm as `clip_grad_norm_` over the model), runs torch's AdamW on the host and copies the new
weights back. Tensors below `minimal_size` values (biases, norms) stay on the device with their
own AdamW. Same maths as `torch.optim.AdamW` on the device: tests/test_memory_plan.py compares
the two on the CPU, where host and device are one memory but every copy and hook still runs.
"""
from __future__ import annotations

from typing import Iterable

import torch


class HostOffloadAdamW:
    """Not a torch.optim.Optimizer subclass: what the trainers use of one (`param_groups` for the
    lr, `zero_grad`, `step`); `clips_itself` tells them the gradient clipping happens in `step`."""

    clips_itself = True

    def __init__(self, params: Iterable[torch.nn.Parameter], *, lr: float, betas: tuple[float, float],
                 weight_decay: float, max_grad_norm: float = 0.0, minimal_size: int = 4096):
        params = [p for p in params if p.requires_grad]
        self.small = [p for p in params if p.numel() < minimal_size]
        pin = torch.cuda.is_available() and any(p.is_cuda for p in params)
        self.host: dict[torch.nn.Parameter, torch.Tensor] = {}
        self._hooks = []
        for p in params:
            if p.numel() < minimal_size:
                continue
            h = torch.empty(p.shape, dtype=torch.float32, pin_memory=pin)
            h.copy_(p.detach())
            h.grad = torch.zeros_like(h)
            self.host[p] = h
            self._hooks.append(p.register_post_accumulate_grad_hook(self._offload))
        kw = dict(lr=lr, betas=betas, weight_decay=weight_decay)
        self.host_opt = torch.optim.AdamW(list(self.host.values()), fused=True, **kw)  # torch's fused CPU kernel
        self.device_opt = torch.optim.AdamW(self.small, **kw) if self.small else None
        self.max_grad_norm = max_grad_norm

    @property
    def param_groups(self) -> list[dict]:
        return self.host_opt.param_groups + (self.device_opt.param_groups if self.device_opt else [])

    @torch.no_grad()
    def _offload(self, p: torch.Tensor) -> None:
        self.host[p].grad.add_(p.grad.to("cpu", torch.float32))
        p.grad = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for h in self.host.values():
            h.grad.zero_()
        if self.device_opt is not None:
            self.device_opt.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(list(self.host.values()) + self.small, self.max_grad_norm)
        self.host_opt.step()
        if self.device_opt is not None:
            self.device_opt.step()
        for p, h in self.host.items():
            p.copy_(h, non_blocking=True)
        if any(p.is_cuda for p in self.host):
            torch.cuda.synchronize()

    def close(self) -> None:
        """Remove the gradient hooks (the model may be trained by another optimizer next)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
