"""Pure planner: contiguous spans of a model over a room's node slots (SPEC R8).

Each node advertises its memory; the planner splits the model's units into one contiguous,
non-empty span per node (in the nodes' order) so that every span's weights plus its KV cache
for the room's context fit the node, minimising the largest `need / memory` ratio — a node
with twice the memory gets about twice the layers. Whole layers are preferred; when the room
has more nodes than layers, or a whole layer fits no node, layers are split into their
attention and MLP halves (Llama-2 70B over 120 nodes). No I/O, no clocks: same input, same plan.
"""
from __future__ import annotations

from dataclasses import dataclass

from ailo.inference.families import embed_params, head_params, unit_params
from ailo.inference.spec import ModelSpec

GB = 10 ** 9
GiB = 1 << 30


class PlanError(ValueError):
    """The room cannot hold the model; the message says what is missing."""


@dataclass(frozen=True)
class Span:
    """Units [start, end) of the model (unit 2·i = layer i attention, 2·i+1 = its MLP)."""

    index: int
    start: int
    end: int
    n_units: int

    @property
    def first(self) -> bool:
        return self.start == 0

    @property
    def last(self) -> bool:
        return self.end == self.n_units

    @property
    def label(self) -> str:
        if self.start % 2 == 0 and self.end % 2 == 0:
            a, b = self.start // 2, self.end // 2 - 1
        else:  # half-layer boundaries: name each end's half
            def at(u: int) -> str:
                return f"{u // 2}.{'mlp' if u % 2 else 'attn'}"
            a, b = at(self.start), at(self.end - 1)
        return f"span {self.index} (layer {a})" if a == b else f"span {self.index} (layers {a}-{b})"

    def to_dict(self) -> dict:
        return {"index": self.index, "start": self.start, "end": self.end, "first": self.first,
                "last": self.last, "label": self.label}


@dataclass(frozen=True)
class Plan:
    spans: tuple[Span, ...]
    need_bytes: tuple[int, ...]
    memory_bytes: tuple[int, ...]
    half_layers: bool

    @property
    def max_ratio(self) -> float:
        return max(n / m for n, m in zip(self.need_bytes, self.memory_bytes))

    def to_dict(self) -> dict:
        return {"half_layers": self.half_layers, "max_ratio": round(self.max_ratio, 4),
                "spans": [dict(s.to_dict(), need_bytes=n, memory_bytes=m)
                          for s, n, m in zip(self.spans, self.need_bytes, self.memory_bytes)]}


def unit_costs(spec: ModelSpec, dtype_bytes: int, context: int) -> list[int]:
    """Bytes per unit: weights, KV cache for `context` positions, and the embedding / head
    folded into the first / last unit (they always travel with those units)."""
    costs = [unit_params(spec, u) * dtype_bytes for u in range(spec.n_units)]
    for u in range(0, spec.n_units, 2):
        costs[u] += spec.kv_bytes_per_token(dtype_bytes) * context
    costs[0] += embed_params(spec) * dtype_bytes
    costs[-1] += head_params(spec) * dtype_bytes
    return costs


def span_need(spec: ModelSpec, start: int, end: int, dtype_bytes: int, context: int) -> int:
    return sum(unit_costs(spec, dtype_bytes, context)[start:end])


def _greedy(costs: list[int], caps: list[float]) -> list[int] | None:
    """Boundaries when each node in turn takes as many units as fit `caps`, leaving at
    least one unit for every later node; None when some unit is left over or a node gets none."""
    bounds, i, n = [0], 0, len(costs)
    for j, cap in enumerate(caps):
        reserve = len(caps) - j - 1
        load, took = 0, 0
        while i < n - reserve and load + costs[i] <= cap:
            load += costs[i]
            i += 1
            took += 1
        if not took:
            return None
        bounds.append(i)
    return bounds if i == n else None


def _proportional(costs: list[int], memory: list[int]) -> list[int] | None:
    """Boundaries nearest to each node's memory share of the total cost (even spread)."""
    total, mem_total = sum(costs), sum(memory)
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    bounds, acc = [0], 0
    for j, m in enumerate(memory[:-1]):
        acc += m
        target = total * acc / mem_total
        lo, hi = bounds[-1] + 1, len(costs) - (len(memory) - j - 1)
        if lo > hi:
            return None
        bounds.append(min(range(lo, hi + 1), key=lambda b: abs(prefix[b] - target)))
    bounds.append(len(costs))
    return bounds


def _ratios(costs: list[int], memory: list[int], bounds: list[int]) -> list[float]:
    return [sum(costs[a:b]) / m for a, b, m in zip(bounds, bounds[1:], memory)]


def _partition(costs: list[int], memory: list[int]) -> list[int] | None:
    """Contiguous split minimising max(load/memory), or None if even ratio 1 does not fit.

    Bisection on the ratio gives the optimum of the largest ratio, but its greedy fill can
    starve the last nodes; a proportional split is kept instead when it is as good."""
    if len(costs) < len(memory) or _greedy(costs, [float(m) for m in memory]) is None:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if _greedy(costs, [mid * m for m in memory]) is None:
            lo = mid
        else:
            hi = mid
    best = _greedy(costs, [hi * m for m in memory])
    even = _proportional(costs, memory)
    if even is not None and max(_ratios(costs, memory, even)) <= max(_ratios(costs, memory, best)) * 1.0001:
        return even
    return best


def plan_room(spec: ModelSpec, memory: list[int], *, dtype_bytes: int | None = None,
              context: int = 2048) -> Plan:
    """One span per node (in order) that fits that node's memory, or PlanError saying why not."""
    if not memory:
        raise PlanError("a room needs at least one node")
    if any(m <= 0 for m in memory):
        raise PlanError("every node must advertise a positive memory size")
    dtype_bytes = dtype_bytes or spec.dtype_bytes
    half = unit_costs(spec, dtype_bytes, context)
    whole = [half[i] + half[i + 1] for i in range(0, len(half), 2)]
    for costs, halves in ((whole, False), (half, True)):
        bounds = _partition(costs, memory)
        if bounds is None:
            continue
        scale = 1 if halves else 2
        spans = tuple(Span(k, a * scale, b * scale, spec.n_units) for k, (a, b) in enumerate(zip(bounds, bounds[1:])))
        needs = tuple(sum(half[s.start:s.end]) for s in spans)
        return Plan(spans, needs, tuple(memory), halves)
    total, offered = sum(half), sum(memory)
    if len(memory) > len(half):
        raise PlanError(f"room has {len(memory)} node slots but {spec.name or spec.family} has only "
                        f"{len(half)} half-layer units; use at most {len(half)} nodes")
    if total > offered:
        raise PlanError(f"room cannot fit {spec.name or spec.family}: it needs {total / GB:.2f} GB "
                        f"(weights + KV cache for {context} tokens) but its {len(memory)} nodes offer "
                        f"{offered / GB:.2f} GB")
    u = max(range(len(half)), key=half.__getitem__)
    if half[u] > max(memory):
        extra = " with the embeddings" if u == 0 else " with the output head" if u == len(half) - 1 else ""
        raise PlanError(f"layer {u // 2}'s {'MLP' if u % 2 else 'attention'}{extra} alone needs "
                        f"{half[u] / GB:.2f} GB but the largest node of the room offers {max(memory) / GB:.2f} GB")
    raise PlanError(f"room cannot fit {spec.name or spec.family}: no contiguous split over "
                    f"{len(memory)} nodes fits every node's memory (needs {total / GB:.2f} GB of "
                    f"{offered / GB:.2f} GB offered)")


def fewest_spans(spec: ModelSpec, memory: list[int], *, dtype_bytes: int | None = None,
                 context: int = 2048) -> tuple[Plan, list[int]]:
    """The plan over the fewest nodes that hold the model (largest memory first) and which
    nodes (indices, in join order) serve its spans; the others become replicas. On wide-area
    links every span costs a one-way trip per pass while compute stays the same, so fewer,
    larger spans are faster; the replicas add throughput and failover (issue 28)."""
    if not memory:
        raise PlanError("a room needs at least one node")
    order = sorted(range(len(memory)), key=lambda i: -memory[i])
    dtype_bytes = dtype_bytes or spec.dtype_bytes
    need = sum(unit_costs(spec, dtype_bytes, context))
    m, held = 0, 0
    while m < len(order) and held < need:  # no fewer nodes can hold it
        held += memory[order[m]]
        m += 1
    error: PlanError | None = None
    for k in range(max(m, 1), len(memory) + 1):
        chosen = sorted(order[:k])
        try:
            return plan_room(spec, [memory[i] for i in chosen], dtype_bytes=dtype_bytes, context=context), chosen
        except PlanError as exc:
            error = exc
    assert error is not None
    raise error


# ----- presets: the whitepaper's rooms, with the models' real dimensions -----------------------

@dataclass(frozen=True)
class RoomPreset:
    name: str
    model: ModelSpec
    nodes: int
    node_memory: int
    context: int

    def plan(self, memory: list[int] | None = None) -> Plan:
        return plan_room(self.model, memory or [self.node_memory] * self.nodes, context=self.context)


QWEN_1_8B = ModelSpec(family="qwen2", name="Qwen1.5-1.8B", n_layers=24, hidden=2048, n_heads=16,
                      n_kv_heads=16, head_dim=128, intermediate=5504, vocab=151936, rope_theta=1e6,
                      qkv_bias=True, max_positions=32768, eos_token_ids=(151643,), dtype="bfloat16")
LLAMA_2_7B = ModelSpec(family="llama", name="Llama-2-7b", n_layers=32, hidden=4096, n_heads=32,
                       n_kv_heads=32, head_dim=128, intermediate=11008, vocab=32000, norm_eps=1e-5,
                       max_positions=4096, eos_token_ids=(2,), dtype="float16")
LLAMA_2_70B = ModelSpec(family="llama", name="Llama-2-70b", n_layers=80, hidden=8192, n_heads=64,
                        n_kv_heads=8, head_dim=128, intermediate=28672, vocab=32000, norm_eps=1e-5,
                        max_positions=4096, eos_token_ids=(2,), dtype="float16")

# 2 GiB per node: what a browser tab (WebGPU) or a small laptop can give a room.
PRESETS: dict[str, RoomPreset] = {
    "qwen-1.8b": RoomPreset("qwen-1.8b", QWEN_1_8B, nodes=4, node_memory=2 * GiB, context=2048),
    "llama-2-7b": RoomPreset("llama-2-7b", LLAMA_2_7B, nodes=12, node_memory=2 * GiB, context=2048),
    "llama-2-70b": RoomPreset("llama-2-70b", LLAMA_2_70B, nodes=120, node_memory=2 * GiB, context=2048),
}


def get_preset(name: str) -> RoomPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise PlanError(f"unknown room preset {name!r}; known: {', '.join(PRESETS)}") from None
