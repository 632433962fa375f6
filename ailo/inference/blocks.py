"""A span of a room's model in plain PyTorch: half-layer units [start, end) of any registered
family (`ailo.inference.families`), with the embedding on the first span and the final norm +
output matrix on the last, run with a per-request KV cache (`ailo.inference.units`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ailo.inference.families import family
from ailo.inference.spec import ModelSpec
from ailo.inference.units import RequestCache, Rotary, Step


class Embedding(nn.Module):
    """Token ids → hidden states (plus learned positions for `ailo` GPT). First span only."""

    def __init__(self, s: ModelSpec):
        super().__init__()
        self.embed_tokens = nn.Embedding(s.vocab, s.hidden)
        self.wpe = nn.Embedding(s.max_positions, s.hidden) if family(s).position_table else None

    def forward(self, ids: torch.Tensor, step: Step) -> torch.Tensor:
        x = self.embed_tokens(ids)
        if self.wpe is not None:
            if step.start + step.length > self.wpe.num_embeddings:
                raise ValueError(f"position {step.start + step.length - 1} exceeds context {self.wpe.num_embeddings}")
            x = x + self.wpe(torch.arange(step.start, step.start + step.length, device=ids.device))
        return x


class Head(nn.Module):
    """Final norm + output projection → float32 logits of the last position. Last span only."""

    def __init__(self, s: ModelSpec):
        super().__init__()
        self.norm = family(s).final_norm(s)
        self.lm_head = nn.Linear(s.hidden, s.vocab, bias=False)

    def forward(self, x: torch.Tensor, every: bool = False) -> torch.Tensor:
        """(1, vocab) for the last position, or (T, vocab) for all T positions of batch row 0 when
        `every` (the room verifies drafted tokens in one pass)."""
        return self.lm_head(self.norm(x[0] if every else x[:, -1, :])).float()


def make_unit(s: ModelSpec, unit: int) -> nn.Module:
    f = family(s)
    return (f.attention if unit % 2 == 0 else f.mlp)(s, unit // 2)


class SpanModel(nn.Module):
    """Units [start, end) of a model: ids or hidden states in, hidden states or logits out."""

    def __init__(self, s: ModelSpec, start: int, end: int):
        super().__init__()
        if not 0 <= start < end <= s.n_units:
            raise ValueError(f"bad span [{start}, {end}) for {s.n_units} units")
        self.spec, self.start, self.end = s, start, end
        self.embed = Embedding(s) if start == 0 else None
        self.units = nn.ModuleList(make_unit(s, u) for u in range(start, end))
        self.head = Head(s) if end == s.n_units else None
        self.rotary: Rotary | None = None

    @property
    def first(self) -> bool:
        return self.embed is not None

    @property
    def last(self) -> bool:
        return self.head is not None

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, start_pos: int, cache: RequestCache, all_logits: bool = False) -> torch.Tensor:
        """Process positions [start_pos, start_pos + T); the cache must hold exactly start_pos."""
        return self.forward_batch([x], [start_pos], [cache], [all_logits])[0]

    @torch.inference_mode()
    def forward_batch(self, xs: list[torch.Tensor], starts: list[int], caches: list[RequestCache],
                      every: list[bool]) -> list[torch.Tensor]:
        """Several requests' steps as ONE forward (a node batches the frames waiting at it): the
        rows of all requests go through each dense layer together, each request attends over its
        own cache. Same outputs as one `forward` per request (up to float rounding)."""
        steps = []
        for x, start, cache in zip(xs, starts, caches):
            if cache.length != start:
                raise ValueError(f"cache holds {cache.length} positions, input starts at {start}")
            if start + x.shape[1] > self.spec.max_positions:
                raise ValueError(f"sequence of {start + x.shape[1]} tokens exceeds the model's {self.spec.max_positions}")
            steps.append(Step(start, x.shape[1]))
        if self.embed is not None:
            rows = [self.embed(x.to(torch.long), st) for x, st in zip(xs, steps)]
        else:
            rows = [x.to(self._dtype()) for x in xs]
        h = rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)
        if not family(self.spec).position_table and any(u % 2 == 0 for u in range(self.start, self.end)):
            if self.rotary is None:
                self.rotary = Rotary(self.spec.head_dim, self.spec.rope_theta, h.device)
            for st in steps:
                st.cos, st.sin = self.rotary.tables(st.start, st.length, h.dtype)
        step = steps[0] if len(steps) == 1 else Step(0, h.shape[1], parts=steps)
        unit_cache = caches[0] if len(steps) == 1 else caches
        for unit in self.units:
            h = unit(h, step, unit_cache)
        for st, cache in zip(steps, caches):
            cache.length = st.start + st.length
        bounds = [0]
        for st in steps:
            bounds.append(bounds[-1] + st.length)
        if self.head is None:
            return [h[:, a:b] for a, b in zip(bounds, bounds[1:])]
        picks = [h[0, a:b] if e else h[0, b - 1:b] for a, b, e in zip(bounds, bounds[1:], every)]
        logits = self.head.lm_head(self.head.norm(picks[0] if len(picks) == 1 else torch.cat(picks))).float()
        return list(torch.split(logits, [p.shape[0] for p in picks]))

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype
