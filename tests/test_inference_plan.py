"""Planner presets with the models' real dimensions, memory balancing, clear failures (R8),
and the room registry's membership rules."""
from __future__ import annotations

import pytest

from ailo.inference.plan import GiB, PRESETS, PlanError, plan_room, unit_costs
from ailo.inference.rooms import RoomError, RoomRegistry
from ailo.inference.families import param_count
from ailo.inference.spec import ModelSpec


def check_plan(plan, spec, memory):
    """Contiguous, non-empty, covering, each span within its node's memory."""
    assert plan.spans[0].start == 0 and plan.spans[-1].end == spec.n_units
    for a, b in zip(plan.spans, plan.spans[1:]):
        assert a.end == b.start
    assert all(s.end > s.start for s in plan.spans)
    costs = unit_costs(spec, spec.dtype_bytes, 2048)
    for s, need, mem in zip(plan.spans, plan.need_bytes, memory):
        assert need == sum(costs[s.start:s.end]) <= mem


@pytest.mark.parametrize("name, layers, hidden, heads, kv, ffn, vocab, params, nodes", [
    ("qwen-1.8b", 24, 2048, 16, 16, 5504, 151936, 1.837e9, 4),
    ("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 6.738e9, 12),
    ("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 68.98e9, 120),
])
def test_presets_have_real_dimensions_and_fit(name, layers, hidden, heads, kv, ffn, vocab, params, nodes):
    p = PRESETS[name]
    m = p.model
    assert (m.n_layers, m.hidden, m.n_heads, m.n_kv_heads, m.intermediate, m.vocab) == (layers, hidden, heads, kv, ffn, vocab)
    assert param_count(m) == pytest.approx(params, rel=2e-3)
    assert p.nodes == nodes
    plan = p.plan()
    assert len(plan.spans) == nodes
    check_plan(plan, m, [p.node_memory] * nodes)
    assert sum(plan.need_bytes) > param_count(m) * 2  # fp16 weights + embeddings + KV cache


def test_70b_over_120_nodes_splits_layers_into_halves():
    plan = PRESETS["llama-2-70b"].plan()
    assert plan.half_layers  # 80 layers cannot be spread over 120 nodes whole
    assert not PRESETS["llama-2-7b"].plan().half_layers
    assert any(s.start % 2 for s in plan.spans)
    labels = [s.label for s in plan.spans]
    assert labels[:2] == ["span 0 (layer 0.attn)", "span 1 (layer 0.mlp)"]


def test_presets_fail_clearly_when_the_room_is_too_small():
    with pytest.raises(PlanError, match=r"needs 138\.\d+ GB .* 120 nodes offer 128\.\d+ GB"):
        PRESETS["llama-2-70b"].plan([1 * GiB] * 120)
    with pytest.raises(PlanError, match="3 nodes offer"):
        PRESETS["llama-2-7b"].plan([2 * GiB] * 3)
    with pytest.raises(PlanError, match="only 64 half-layer units"):
        PRESETS["llama-2-7b"].plan([2 * GiB] * 65)
    with pytest.raises(PlanError, match="layer 79's MLP with the output head alone needs 1.93 GB"):
        PRESETS["llama-2-70b"].plan([int(1.3 * GiB)] * 120)
    with pytest.raises(PlanError, match="no contiguous split over 160 nodes"):
        PRESETS["llama-2-70b"].plan([1 * GiB] * 159 + [200 * GiB])  # 1 GiB nodes cannot take an MLP half


def test_layers_follow_memory():
    spec = PRESETS["llama-2-7b"].model
    memory = [4 * GiB, 2 * GiB, 2 * GiB, 4 * GiB, 3 * GiB]
    plan = plan_room(spec, memory)
    check_plan(plan, spec, memory)
    layers = [(s.end - s.start) // 2 for s in plan.spans]
    assert layers[0] > layers[1] and layers[3] > layers[2] and layers[4] > layers[1]
    ratios = [n / m for n, m in zip(plan.need_bytes, memory)]
    assert max(ratios) - min(ratios) < 0.25
    assert plan_room(spec, memory) == plan  # pure: same input, same plan


def tiny(layers: int = 4) -> ModelSpec:
    return ModelSpec(family="llama", n_layers=layers, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16,
                     intermediate=128, vocab=512)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_registry_plans_when_full_then_adds_replicas_to_the_thinnest_span():
    clock = Clock()
    reg = RoomRegistry(heartbeat_interval=1, heartbeat_timeout=5, clock=clock)
    spec = tiny()
    reg.create_room("r", spec, 3)
    fp = spec.fingerprint()
    a = reg.join("r", url="http://a", memory=10 ** 9, fingerprint=fp)
    b = reg.join("r", url="http://b", memory=10 ** 9, fingerprint=fp)
    assert reg.get("r").plan is None and a.span is None
    with pytest.raises(RoomError, match="still forming"):
        reg.route("r")
    c = reg.join("r", url="http://c", memory=10 ** 9, fingerprint=fp)
    room = reg.get("r")
    assert [n.span for n in (a, b, c)] == [0, 1, 2]
    with pytest.raises(RoomError, match="no live node for span 0"):
        reg.route("r")  # assigned, not loaded
    for n in (a, b, c):
        s = room.span_of(n)
        reg.heartbeat("r", n.node_id, (s.start, s.end))
    assert [n.node_id for n in reg.route("r")] == [a.node_id, b.node_id, c.node_id]
    assert reg.state(room) == "ready"
    d = reg.join("r", url="http://d", memory=10 ** 9, fingerprint=fp)
    assert d.span == 0
    # b stops heartbeating: its span is orphaned, the room degraded, the next joiner takes it
    clock.t = 4
    for n in (a, c, d):
        s = room.span_of(n)
        reg.heartbeat("r", n.node_id, (s.start, s.end))
    clock.t = 6
    assert reg.state(room) == "degraded"
    with pytest.raises(RoomError, match=r"no live node for span 1 \(layers? "):
        reg.route("r")
    e = reg.join("r", url="http://e", memory=10 ** 9, fingerprint=fp)
    assert e.span == 1


def test_registry_refuses_wrong_checkpoint_and_too_little_memory():
    reg = RoomRegistry()
    spec = tiny()
    reg.create_room("r", spec, 2)
    with pytest.raises(RoomError, match="checkpoint does not match"):
        reg.join("r", url="http://x", memory=10 ** 9, fingerprint=tiny(6).fingerprint())
    reg.join("r", url="http://a", memory=10 ** 9, fingerprint=spec.fingerprint())
    with pytest.raises(RoomError, match="room cannot fit"):
        reg.join("r", url="http://b", memory=1000, fingerprint=spec.fingerprint())  # completes the plan: too small
    reg.join("r", url="http://b", memory=10 ** 9, fingerprint=spec.fingerprint())
    with pytest.raises(RoomError, match="too small for any span"):
        reg.join("r", url="http://c", memory=1000, fingerprint=spec.fingerprint())
    with pytest.raises(RoomError, match="already exists"):
        reg.create_room("r", spec, 2)
    with pytest.raises(RoomError, match="slots must be between"):
        reg.create_room("big", spec, 9)


def test_fewest_spans_uses_the_largest_nodes_and_fewer_hops():
    from ailo.inference.plan import LLAMA_2_70B, LLAMA_2_7B, fewest_spans
    plan, chosen = fewest_spans(LLAMA_2_7B, [2 * GiB] * 12)
    assert len(plan.spans) == len(chosen) < 12 and plan.spans[-1].end == LLAMA_2_7B.n_units
    with pytest.raises(PlanError):
        plan_room(LLAMA_2_7B, [2 * GiB] * (len(chosen) - 1))  # no fewer nodes would do
    plan, chosen = fewest_spans(LLAMA_2_7B, [1 * GiB, 8 * GiB, 1 * GiB, 8 * GiB, 1 * GiB])
    assert chosen == [1, 3] and len(plan.spans) == 2  # the two large nodes, in join order
    plan, _ = fewest_spans(LLAMA_2_70B, [2 * GiB] * 120)
    assert len(plan.spans) < 120


def test_a_fewest_room_plans_one_span_and_makes_the_rest_replicas():
    from ailo.inference.rooms import RoomRegistry
    reg = RoomRegistry(clock=lambda: 0.0)
    spec = PRESETS["qwen-1.8b"].model
    reg.create_room("r", spec, 3, placement="fewest")
    nodes = [reg.join("r", url=f"http://n{i}", memory=m, fingerprint=spec.fingerprint())
             for i, m in enumerate([2 * GiB, 64 * GiB, 64 * GiB])]
    room = reg.get("r")
    assert len(room.plan.spans) == 1 and [n.span for n in nodes] == [None, 0, 0]
    assert reg.view(room)["placement"] == "fewest"
