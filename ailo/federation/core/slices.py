"""Slice tasks (pure, no I/O): a named subset of the parameters for a contributor whose memory
budget cannot hold a full training state (issue 26, part B).

The model is cut into *units*: `embed` (wte, wpe: the tied input/output embedding and the
positions) and one unit per block (`blocks.i`; ln_f rides with the last block). A slice is a
contiguous run [start, stop) of units. The contributor runs the whole forward (frozen weights
streamed from its verified chunk cache), trains only the slice and uploads only its tensors.

The coordinator sizes a slice to the budget the worker declares (`memory_budget`, bytes) with
`slice_state_bytes`, and picks it with `SlicePolicy`: least-recently-trained units first, and
units already handed out in the open round last, so every unit is covered over rounds.
The assignment travels in the task id, MAC'ed with the coordinator's secret (`SliceTicket`):
stateless and restart-proof, and a client cannot claim a slice it was not given.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from ailo.model import GPTConfig

# Bytes per trained parameter: fp32 weight + gradient + two AdamW moments + the start snapshot
# that Δ = start − end needs (SGD: no moments).
TRAINED_BYTES = {"adamw": 20, "sgd": 12}
# Like the full-task planner (client/memory_plan.py): the budget is memory for training, and a
# share of it is left for allocator fragmentation and small buffers.
HEADROOM = 0.06
HEAD_CHUNK = 512  # tokens per chunk of a slice worker's tied head + loss (recomputed in backward)


def param_count(shape: Iterable[int]) -> int:
    return math.prod(shape)


def units_of(shapes: Mapping[str, tuple[int, ...]], n_layer: int) -> list[tuple[str, list[str]]]:
    """(unit name, tensor names in manifest order) for every unit; every tensor in exactly one."""
    units: list[tuple[str, list[str]]] = [("embed", [])] + [(f"blocks.{i}", []) for i in range(n_layer)]
    for name in shapes:
        m = re.match(r"blocks\.(\d+)\.", name)
        if m:
            units[1 + int(m.group(1))][1].append(name)
        elif name.startswith("ln_f."):
            units[n_layer][1].append(name)
        else:
            units[0][1].append(name)
    return units


@dataclass(frozen=True)
class Slice:
    """Units [start, stop) of a model; `names` are its tensors in manifest order."""
    start: int
    stop: int
    units: tuple[str, ...]
    names: tuple[str, ...]
    params: int
    total_params: int

    @property
    def share(self) -> float:
        """The slice's share of the model's parameters (what its reward is scaled by)."""
        return self.params / self.total_params

    def to_task(self) -> dict:
        return {"start": self.start, "stop": self.stop, "units": list(self.units), "tensors": list(self.names),
                "params": self.params, "share": round(self.share, 6)}


def make_slice(shapes: Mapping[str, tuple[int, ...]], n_layer: int, start: int, stop: int) -> Slice:
    units = units_of(shapes, n_layer)
    if not 0 <= start < stop <= len(units):
        raise ValueError(f"slice [{start}, {stop}) is outside units [0, {len(units)})")
    names = tuple(n for _, group in units[start:stop] for n in group)
    return Slice(start, stop, tuple(u for u, _ in units[start:stop]), names,
                 sum(param_count(shapes[n]) for n in names), sum(param_count(s) for s in shapes.values()))


def activation_bytes(cfg: GPTConfig, sl: Slice, micro_batch: int, seq: int, device: str = "cpu") -> int:
    """Activations a slice worker keeps for one micro-batch's backward (fp32): ~34 values per
    token and width in each of the slice's blocks, the input of every checkpointed block after
    it, one block re-run at a time, and the logits twice (value and gradient). Blocks before
    the slice run under no_grad and keep nothing. On CPU (and in a browser) attention keeps its
    [heads × seq × seq] probabilities; on CUDA `scaled_dot_product_attention`'s memory-efficient
    kernel keeps only a log-sum-exp per head and token, so that term goes."""
    tokens = micro_batch * seq
    attention = 0 if device == "cuda" else 5 * cfg.n_head * seq
    per_block = tokens * (34 * cfg.n_embd + attention) * 4
    trained = sum(1 for u in sl.units if u.startswith("blocks."))
    # the head: (cpu) the logits twice, the formula the page's slice.js mirrors; (cuda) calibrated
    # on the H100 (ailo-1b embed slice, 2,048 tokens, unchunked head: 4.39-4.95 GB measured, 4.66
    # estimated): logits, their log-softmax and both gradients, HEAD_CHUNK tokens at a time
    head = 4 * min(tokens, HEAD_CHUNK) * cfg.vocab_size * 4 if device == "cuda" else 2 * tokens * cfg.vocab_size * 4
    return (trained + 1) * per_block + cfg.n_layer * tokens * cfg.n_embd * 4 + head


def slice_state_bytes(cfg: GPTConfig, shapes: Mapping[str, tuple[int, ...]], sl: Slice, optimizer: str,
                      micro_batch: int, seq: int, device: str = "cpu") -> int:
    """Peak memory of a slice worker: the slice's training state, the frozen embedding it keeps
    resident (the tied head needs it every step), the largest frozen block streamed in at a
    time (twice: read + parse) and the activations."""
    emb = sum(param_count(shapes[n]) for n in ("wte.weight", "wpe.weight") if n in shapes)
    frozen_emb = 0 if "embed" in sl.units else 4 * emb
    block = max((sum(param_count(shapes[n]) for n in group) for u, group in units_of(shapes, cfg.n_layer)
                 if u != "embed"), default=0)
    # a trained tied matrix has two gradients (embedding and head) before they are summed
    tied = 4 * cfg.vocab_size * cfg.n_embd if "embed" in sl.units and device == "cuda" else 0
    return (TRAINED_BYTES.get(optimizer, 20) * sl.params + frozen_emb + 2 * 4 * block + tied
            + activation_bytes(cfg, sl, micro_batch, seq, device))


@dataclass
class SlicePolicy:
    """Which units to hand to a budget-limited worker. `last_trained[u]` is the last round in
    which an accepted update covered unit u (−1 never); `issued[u]` how many slice tasks of the
    open round already cover it. The slice starts at the unit with the lowest (issued, last
    trained, index) and grows over its neighbours while the budget holds it."""
    cfg: GPTConfig
    shapes: Mapping[str, tuple[int, ...]]

    def choose(self, budget: int, optimizer: str, seq: int, last_trained: Mapping[str, int],
               issued: Mapping[str, int], device: str = "cpu") -> Slice | None:
        """Sized for micro-batch 1 (the worker accumulates gradients over the task's batch) on
        the worker's declared device ("cpu" when it declares none: the larger estimate)."""
        units = [u for u, _ in units_of(self.shapes, self.cfg.n_layer)]
        n = len(units)

        def fits(a: int, b: int) -> bool:
            return slice_state_bytes(self.cfg, self.shapes, make_slice(self.shapes, self.cfg.n_layer, a, b),
                                     optimizer, 1, seq, device) <= budget * (1 - HEADROOM)

        order = sorted(range(n), key=lambda i: (issued.get(units[i], 0), last_trained.get(units[i], -1), i))
        for first in order:
            if not fits(first, first + 1):
                continue  # e.g. the embedding unit is larger than a block: try the next unit
            a, b = first, first + 1
            while True:  # grow towards the staler neighbour while it fits, never to the whole model
                options = [(a - 1, b), (a, b + 1)]
                options = [(x, y) for x, y in options if 0 <= x and y <= n and y - x < n and fits(x, y)]
                if not options:
                    break
                a, b = min(options, key=lambda ab: min((issued.get(units[i], 0), last_trained.get(units[i], -1))
                                                       for i in range(ab[0], ab[1]) if i not in range(a, b)))
            return make_slice(self.shapes, self.cfg.n_layer, a, b)
        return None


def influence(n_samples: int, slice_params: int | None, total_params: int) -> float:
    """An update's weight in the per-tensor average: n_k for a full update, n_k × its share of
    the model's parameters for a slice — the same factor its reward gets (rewards.slice_reward).
    Where full updates trained a tensor too, a slice's Δ (trained with every other tensor frozen
    at M_t, so it learns in its few tensors what the full workers learn across the model) then
    only nudges their average; a tensor that only slices trained is still averaged over them
    alone and moves by their full mean Δ. Measured by bench/slice_quality.py (bench/RESULTS.md)."""
    if slice_params is None or slice_params >= total_params:
        return float(n_samples)
    return n_samples * slice_params / total_params


def micro_batch_for(cfg: GPTConfig, shapes: Mapping[str, tuple[int, ...]], sl: Slice, optimizer: str, batch: int,
                    seq: int, budget: int | None, device: str = "cpu") -> int:
    """The largest divisor of the task's batch whose slice state fits the budget (1 at least)."""
    if budget is None:
        return batch
    for m in range(batch, 0, -1):
        if batch % m == 0 and slice_state_bytes(cfg, shapes, sl, optimizer, m, seq, device) <= budget * (1 - HEADROOM):
            return m
    return 1


@dataclass(frozen=True)
class SliceTicket:
    """A slice assignment carried in the task id: `<hex>.s<start>-<stop>.<mac>`, the MAC over
    (client, round, start, stop, hex) with a key derived from the coordinator's secret."""
    key: bytes

    def _mac(self, client_id: str, round_id: int, start: int, stop: int, nonce: str) -> str:
        msg = f"{client_id}|{round_id}|{start}|{stop}|{nonce}".encode()
        return hmac.new(self.key, msg, hashlib.sha256).hexdigest()[:32]

    def issue(self, nonce: str, client_id: str, round_id: int, sl: Slice) -> str:
        return f"{nonce}.s{sl.start}-{sl.stop}.{self._mac(client_id, round_id, sl.start, sl.stop, nonce)}"

    def read(self, task_id: str, client_id: str, round_id: int) -> tuple[int, int] | None:
        """(start, stop) of a genuine slice task id for this client and round; None for a plain
        (full) task id or one whose MAC does not verify (a forged or borrowed slice claim)."""
        m = re.fullmatch(r"([0-9a-f]{32})\.s(\d{1,4})-(\d{1,4})\.([0-9a-f]{32})", task_id or "")
        if not m:
            return None
        nonce, start, stop, mac = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        good = self._mac(client_id, round_id, start, stop, nonce)
        return (start, stop) if hmac.compare_digest(mac, good) else None

    @staticmethod
    def claims_slice(task_id: str) -> bool:
        return bool(re.fullmatch(r"[0-9a-f]{32}\.s\d{1,4}-\d{1,4}\.[0-9a-f]{32}", task_id or ""))
