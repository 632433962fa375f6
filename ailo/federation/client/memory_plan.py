"""How a worker trains a task inside a memory budget (issue 26, part A). Pure: no torch, no I/O.

The task fixes the maths (batch, sequence, steps, optimizer, lr); the worker chooses how to
hold it in memory. `plan()` estimates the peak bytes of each way from an analytic model (weights,
gradients, optimizer states, activations per token and block, the logits of the tied head) and
picks the fastest one that fits, in this order of cost:

1. the pre-training snapshot of the weights (for Δ = M_start − M_end) on host memory (CUDA only);
2. micro-batches with gradient accumulation (same maths: the mean loss over the task's batch);
3. activation checkpointing of as few blocks as fit (each one costs a re-run of its forward);
4. 8-bit, then 4-bit AdamW states (torchao; the only choice that changes the numbers, measured
   in bench/RESULTS.md), then AdamW states, master weights and gradients in host memory (CUDA
   only, exact but slow: client/host_offload.py). That last one takes ailo-1b (batch 2 × 2,048)
   down to 8 GB: fp32 weights, one gradient in flight, the tied matrix's two gradients and the
   activations of checkpointed blocks (least ≈ 5 GB).

Weights, gradients and Δ stay float32 (Δ must be exact, and bf16 weights would round away small
updates); activations are bf16 under autocast on CUDA. A task that fits no way is refused.
The activation constants are calibrated by measurement (bench/memory.py prints the measured peak
next to the estimate): see `ACT_BYTES`.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """'10GiB' → 10·2³⁰, '12GB' → 12·10⁹, '512MiB', '3.5GiB', '4096' (bytes)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text or "")
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"not a memory size: {text!r} (use e.g. 10GiB, 12GB, 512MiB)")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"memory size must be positive: {text!r}")
    return size


def format_size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# Activation bytes kept for backward per token, per block, as a multiple of n_embd (attention,
# norms, residuals) and of n_ffn (the MLP's hidden); "head" is per token and vocabulary entry
# (bf16 logits, their float32 copy for the cross-entropy, its log-softmax and gradients). CUDA
# (bf16 autocast) is calibrated on ailo-1b's measured 26.2 GB peak for batch 2 x 2,048 with
# full AdamW states (issue 26): 59.4 KB per token and block beside the tied gradient below; CPU
# (float32) doubles the blocks'.
# bench/memory.py prints every plan's estimate next to its measured peak.
ACT_BYTES = {"cuda": {"embd": 15.5, "ffn": 5.4, "head": 16.0},
             "cpu": {"embd": 31.0, "ffn": 10.8, "head": 16.0}}
OPTIMIZER_STATE_BYTES = {"adamw": 8.0, "adamw8bit": 2.0, "adamw4bit": 1.0, "adamw-offload": 0.0, "sgd": 0.0}
COMPILE_BYTES = 500 * 10**6  # torchao's 8/4-bit step is torch.compile'd: inductor's own memory on CPU (measured ~0.4 GB)
# On CUDA the 8/4-bit step's own temporaries (dequantised moments and the update of the tensor
# being stepped, the compiled kernels' workspace): measured on the H100, ailo-1b, AdamW8bit, the
# peak was 1.39-1.44 GB above the estimate without them (bench/RESULTS.md), i.e. 1.75 B/parameter.
QUANTISED_STEP_BYTES_PER_PARAM = 1.8
# Unmodelled memory as a share of the budget: CUDA's caching allocator (small buffers, fragmentation);
# on CPU the process's RSS also holds glibc's per-thread arenas (bench/memory.py on ailo-small: peak
# RSS up to 1.35x the estimate at micro-batch 1 with 2 threads).
HEADROOM = {"cuda": 0.06, "cpu": 0.25}
CHECKPOINT_COST = 0.33  # a checkpointed block re-runs its forward: ~1/3 of its training FLOPs


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a preset (ailo.model.GPTConfig has these fields)."""
    n_layer: int
    n_embd: int
    n_ffn: int
    vocab_size: int
    n_ctx: int

    @property
    def params(self) -> int:
        d, f = self.n_embd, self.n_ffn
        block = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d  # attention, MLP, two LayerNorms
        return self.n_layer * block + self.vocab_size * d + self.n_ctx * d + 2 * d


@dataclass(frozen=True)
class TaskShape:
    batch_size: int
    seq_len: int
    optimizer: str = "adamw"


@dataclass(frozen=True)
class MemoryPlan:
    micro_batch: int           # sequences per forward/backward; batch_size / micro_batch are accumulated
    accum_steps: int
    checkpoint_blocks: int     # the first N blocks re-run their forward in backward
    head_chunk: int            # tokens per chunk of the tied head + loss (recomputed in backward); 0 = whole
    optimizer: str             # "adamw" | "adamw8bit" | "adamw4bit" | "adamw-offload" | "sgd"
    snapshot_on_host: bool     # M_start kept in host memory (CUDA) rather than beside the weights
    autocast_bf16: bool
    estimate: int              # bytes at peak on the training device
    budget: int
    breakdown: dict

    @property
    def lean(self) -> bool:
        """Anything other than today's path (one batch, no recomputation, full optimizer states)."""
        return self.accum_steps > 1 or self.checkpoint_blocks > 0 or self.head_chunk > 0 or \
            self.snapshot_on_host or self.optimizer not in ("adamw", "sgd")

    def describe(self) -> str:
        return (f"micro-batch {self.micro_batch} x {self.accum_steps} accumulated, checkpointing "
                f"{self.checkpoint_blocks} blocks, head in {'chunks of %d tokens' % self.head_chunk if self.head_chunk else 'one piece'}, "
                f"optimizer {self.optimizer}, weights snapshot on {'host' if self.snapshot_on_host else 'device'}, "
                f"{'bf16 activations' if self.autocast_bf16 else 'fp32 activations'}: estimated peak "
                f"{format_size(self.estimate)} of a {format_size(self.budget)} budget")

    def to_dict(self) -> dict:
        return asdict(self)


class DoesNotFit(ValueError):
    """No plan holds the task inside the budget; the message says what the least would need."""

    def __init__(self, message: str, least: int):
        super().__init__(message)
        self.least = least


HEAD_CHUNK = 512


def estimate(shape: ModelShape, task: TaskShape, device: str, micro_batch: int, checkpoint_blocks: int,
             optimizer: str, snapshot_on_host: bool, head_chunk: int = 0) -> dict:
    """Peak bytes on the training device, by part."""
    p = shape.params
    act = ACT_BYTES["cuda" if device == "cuda" else "cpu"]
    tokens = micro_batch * task.seq_len
    per_block = tokens * (act["embd"] * shape.n_embd + act["ffn"] * shape.n_ffn)
    boundary = tokens * shape.n_embd * 4  # a checkpointed block keeps only its fp32 input
    kept = (shape.n_layer - checkpoint_blocks) * per_block + checkpoint_blocks * boundary
    recompute = per_block if checkpoint_blocks else 0  # one block's activations while it re-runs
    head_tokens = min(tokens, head_chunk) if head_chunk else tokens
    parts = {
        "weights": 4 * p,
        # host offload adds each gradient to its host copy as soon as backward has accumulated it:
        # on the device only one block's largest gradient is in flight (the tied one: below)
        "gradients": 4 * shape.n_embd * shape.n_ffn if optimizer == "adamw-offload" else 4 * p,
        "optimizer": OPTIMIZER_STATE_BYTES[optimizer] * p + (
            0 if "bit" not in optimizer else COMPILE_BYTES if device != "cuda" else QUANTISED_STEP_BYTES_PER_PARAM * p),
        "snapshot": 0 if snapshot_on_host else 4 * p,
        "activations": kept + recompute,
        "head": head_tokens * shape.vocab_size * act["head"] + (2 * boundary if head_chunk else 0),
        # backward of the tied matrix: its embedding and head gradients exist side by side
        # before they are summed into .grad (measured on ailo-small: 0.1 GB above the rest)
        "tied_gradient": 2 * 4 * shape.vocab_size * shape.n_embd,
    }
    # After training the gradients and optimizer states are freed and Δ (fp32, one per weight)
    # is built beside the weights: never more than the training peak, but counted for small tasks.
    parts["peak"] = max(sum(parts.values()), parts["weights"] * 2 + parts["snapshot"])
    return {k: int(v) for k, v in parts.items()}


def _candidates(shape: ModelShape, task: TaskShape, device: str):
    """Every way to train the task, as (optimizer, snapshot_on_host, micro_batch, checkpointed, head_chunk)."""
    optimizers = [task.optimizer]
    if task.optimizer == "adamw":
        optimizers += ["adamw8bit", "adamw4bit"] + (["adamw-offload"] if device == "cuda" else [])
    micro = [m for m in range(task.batch_size, 0, -1) if task.batch_size % m == 0]
    for opt in optimizers:
        for host in ([False, True] if device == "cuda" else [False]):
            for m in micro:
                for head in (0, HEAD_CHUNK):
                    for ck in range(shape.n_layer + 1):
                        yield opt, host, m, ck, head


def _cost(host: bool, m: int, ck: int, head: int, shape: ModelShape, task: TaskShape) -> float:
    """Relative time per step (1.0 = today's path): recomputation and smaller kernels."""
    small = 0.05 * (task.batch_size // m - 1) / max(1, task.batch_size - 1)
    head_cost = 0.03 if head else 0.0   # the head's forward again: ~10 % of ailo-1b's FLOPs, a third of it
    return 1.0 + CHECKPOINT_COST * ck / shape.n_layer + small + head_cost + (0.005 if host else 0.0)


# Exact first (the task's optimizer), then the lossy states by growing quality cost, then the
# exact but slow host offload (a CPU AdamW step per step).
OPTIMIZER_ORDER = ["adamw", "sgd", "adamw8bit", "adamw4bit", "adamw-offload"]


def plan(shape: ModelShape, task: TaskShape, budget: int, device: str = "cuda") -> MemoryPlan:
    """The fastest way to train `task` whose estimated peak fits `budget` bytes, with the least
    lossy optimizer state that fits. Raises DoesNotFit."""
    if task.optimizer not in OPTIMIZER_STATE_BYTES:
        raise ValueError(f"unknown optimizer {task.optimizer!r}")
    headroom = HEADROOM["cuda" if device == "cuda" else "cpu"]
    usable = budget * (1 - headroom)
    best, least = None, None
    for opt, host, m, ck, head in _candidates(shape, task, device):
        parts = estimate(shape, task, device, m, ck, opt, host, head)
        least = parts["peak"] if least is None else min(least, parts["peak"])
        if parts["peak"] > usable:
            continue
        key = (OPTIMIZER_ORDER.index(opt), _cost(host, m, ck, head, shape, task))
        if best is None or key < best[0]:
            best = (key, MemoryPlan(m, task.batch_size // m, ck, head, opt, host, device == "cuda",
                                    parts["peak"], budget, parts))
    if best is None:
        raise DoesNotFit(f"this task (batch {task.batch_size} x {task.seq_len} tokens, {task.optimizer}, "
                         f"{shape.params / 1e6:.0f}M parameters) needs at least {format_size(least / (1 - headroom))} "
                         f"on {device} (micro-batch 1, every block checkpointed, the leanest optimizer state); "
                         f"the memory budget is {format_size(budget)}", least)
    return best[1]
