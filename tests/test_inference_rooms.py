"""Requests through a room of in-process nodes (real HTTP on loopback, one process): routing,
failover to a replica, clear failure without one, cache rebuilds, and R9 rewards."""
from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import pytest
import torch

from ailo.server import devserver
from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.inference.generate import GenerateParams, Generation
from ailo.inference.node import NodeService
from ailo.server.node_app import build_node_app
from ailo.inference.rewards import INFERENCE_REWARD_UNITS, UNITS_PER_ALC
from ailo.inference.rooms import NodeRecord, RoomError, RoomRegistry
from ailo.inference.serving import ThreadedServer
from ailo.inference.families import read_spec
from ailo.wallet import Wallet
from tests.fakes import FakeLedger
from tests.room_helpers import operator, signed, signed_stream

PROMPT = [3, 14, 15, 92, 65, 35]
N_NEW = 24
WALLETS = {k: Wallet.from_label(f"room-node-{k}") for k in "abcd"}
ADDR = {k: w.address for k, w in WALLETS.items()}
ASKER = Wallet.from_label("room-asker")


@dataclass
class LocalNode:
    service: NodeService
    server: ThreadedServer
    record: NodeRecord


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen")
    ref = make_hf_checkpoint(d, "qwen2", layers=3, init_std=0.3, rope_theta=1e6)
    want = ref.generate(torch.tensor([PROMPT]), max_new_tokens=N_NEW, do_sample=False)[0, len(PROMPT):].tolist()
    return d, want


@pytest.fixture
def room(checkpoint):
    """Spans 0..2 on nodes a, b, c (join order) and a replica d of span 0; nobody heartbeats,
    so the registry's clock stands still."""
    d, _ = checkpoint
    reg = RoomRegistry(clock=lambda: 0.0)
    reg.create_room("r", read_spec(d), 3)
    nodes = start_nodes(reg, "r", d, "abcd")
    assert [nodes[k].record.span for k in "abcd"] == [0, 1, 2, 0]
    yield reg, nodes
    for n in nodes.values():
        n.server.stop()


def start_nodes(reg: RoomRegistry, room_id: str, model_dir, names: str) -> dict[str, LocalNode]:
    """In-process nodes on loopback, joined in order, span loaded, reported ready."""
    nodes: dict[str, LocalNode] = {}
    for name in names:
        service = NodeService(model_dir)
        server = ThreadedServer(build_node_app(service)).start()
        rec = reg.join(room_id, url=server.url, memory=10 ** 9, fingerprint=service.spec.fingerprint(),
                       address=ADDR.get(name))
        nodes[name] = LocalNode(service, server, rec)
    room = reg.get(room_id)
    for n in nodes.values():
        span = room.span_of(n.record)
        n.service.load(span.start, span.end)
        reg.heartbeat(room_id, n.record.node_id, (span.start, span.end))
    return nodes


def by_id(nodes: dict[str, LocalNode], node_id: str) -> str:
    return next(k for k, n in nodes.items() if n.record.node_id == node_id)


def run(reg, ledger=None, requester=None, kill_after: int | None = None, kill=lambda: None, hop_timeout=30.0):
    gen = Generation(reg, "r", PROMPT, GenerateParams(max_new_tokens=N_NEW, stop_at_eos=False),
                     requester=requester, rewards=ledger, hop_timeout=hop_timeout)
    events = []
    for e in gen.events():  # lazy: nothing runs ahead of the loop, so the kill lands exactly here
        events.append(e)
        if e["type"] == "token" and e["index"] + 1 == kill_after:
            kill()
    return events


def test_greedy_through_the_room_and_rewards_exclude_the_requester(room, checkpoint):
    reg, nodes = room
    ledger = FakeLedger()
    events = run(reg, ledger, requester=ADDR["b"])  # b serves span 1 and asks
    done = events[-1]
    assert done["type"] == "done" and done["tokens"] == checkpoint[1]
    assert [e["token"] for e in events if e["type"] == "token"] == checkpoint[1]
    used = [by_id(nodes, n["node_id"]) for n in events[0]["route"]]
    assert used[1:] == ["b", "c"] and used[0] in "ad"
    rid = done["request_id"]
    assert ledger.calls == [(ADDR[used[0]], INFERENCE_REWARD_UNITS, f"request:{rid}:{ADDR[used[0]]}"),
                            (ADDR["c"], INFERENCE_REWARD_UNITS, f"request:{rid}:{ADDR['c']}")]
    assert INFERENCE_REWARD_UNITS == UNITS_PER_ALC * 5 // 100  # 0.05 ALC
    # one position per hop per new token: header + hidden (or logits) bytes, not the prompt again
    spec = read_spec(checkpoint[0])
    assert done["stats"]["decode_steps"] == N_NEW - 1
    payload = 8 + 4 * (spec.hidden * 4) + spec.vocab * 4  # 1 id in, hidden 2x out+in, logits out (fp32)
    headers = 6 * (22 + len(rid)) + 4 * (2 + 3 + 3 + 3 + 3 + 2)  # fixed part + id + shape dims, 6 frames
    assert done["stats"]["bytes_per_token"] == payload + headers
    # a second request is paid again, under its own refs
    run(reg, ledger)
    assert len(ledger.calls) == 5 and len({r for _, _, r in ledger.calls}) == 5


def test_node_killed_mid_generation_fails_over_to_its_replica(room, checkpoint):
    reg, nodes = room
    ledger = FakeLedger()
    nodes["d"].record.active += 10  # route span 0 through a: d looks busy
    events = run(reg, ledger, kill_after=5, kill=nodes["a"].server.stop)
    nodes["d"].record.active -= 10
    assert by_id(nodes, events[0]["route"][0]["node_id"]) == "a"
    kinds = [e["type"] for e in events]
    assert kinds.count("failover") == 1 and kinds[-1] == "done"
    fo = next(e for e in events if e["type"] == "failover")
    assert (by_id(nodes, fo["from"]), by_id(nodes, fo["to"])) == ("a", "d") and "span 0" in fo["span"]
    assert events[-1]["tokens"] == checkpoint[1]  # rebuilt cache on d: still exactly transformers' answer
    assert events[-1]["failovers"] == 1 and events[-1]["stats"]["rebuild_bytes"] > 0
    assert sorted(a for a, _, _ in ledger.calls) == sorted(ADDR[k] for k in "bcd")
    assert nodes["a"].record.failed  # and a is no longer routed
    assert all(n.node_id != nodes["a"].record.node_id for n in reg.route("r"))


def delivered_work(rid: str, addresses, steps: int) -> list[tuple[str, int, str]]:
    """What a failed request pays (docs/REWARDS.md "Failed requests"): each node on its route
    0.05 ALC × the steps it processed / the steps asked (N_NEW), under the request's usual ref."""
    return sorted((a, INFERENCE_REWARD_UNITS * steps // N_NEW, f"request:{rid}:{a}") for a in addresses)


def test_node_killed_without_replica_fails_clearly_and_pays_delivered_work(room):
    reg, nodes = room
    ledger = FakeLedger()
    events = run(reg, ledger, kill_after=4, kill=nodes["c"].server.stop)
    assert events[-1]["type"] == "error"
    msg = events[-1]["error"]
    assert "span 2 (layer 2)" in msg and "no live replica" in msg and nodes["c"].record.node_id in msg
    assert len([e for e in events if e["type"] == "token"]) == 4  # nothing past the failure
    route = [by_id(nodes, n["node_id"]) for n in events[0]["route"]]
    assert sorted(ledger.calls) == delivered_work(events[-1]["request_id"], [ADDR[k] for k in route], 4)
    with pytest.raises(RoomError, match=r"no live node for span 2"):
        Generation(reg, "r", PROMPT, GenerateParams())


def test_replica_dead_too_reports_the_failover_then_the_error(room):
    reg, nodes = room
    ledger = FakeLedger()
    nodes["d"].record.active += 10

    def kill_both():
        nodes["a"].server.stop()
        nodes["d"].server.stop()

    events = run(reg, ledger, kill_after=2, kill=kill_both)
    kinds = [e["type"] for e in events]
    assert kinds[-2:] == ["failover", "error"] and kinds.count("token") == 2
    assert "span 0 (layer 0)" in events[-1]["error"] and nodes["d"].record.node_id in events[-1]["error"]
    # a processed the 2 tokens and died; its replica d died before processing any: d earns nothing
    assert sorted(ledger.calls) == delivered_work(events[-1]["request_id"], [ADDR[k] for k in "abc"], 2)


def test_node_that_stops_answering_times_out_and_fails_over(room, checkpoint):
    reg, nodes = room
    ledger = FakeLedger()
    nodes["d"].record.active += 10
    hung = nodes["a"].service.lock  # a's next forward blocks: alive socket, no answer
    try:
        events = run(reg, ledger, kill_after=3, kill=hung.acquire, hop_timeout=1.0)
    finally:
        hung.release()
    nodes["d"].record.active -= 10
    fo = next(e for e in events if e["type"] == "failover")
    assert "no answer within 1 s" in fo["reason"] and by_id(nodes, fo["to"]) == "d"
    assert events[-1]["tokens"] == checkpoint[1]
    assert ADDR["a"] not in {a for a, _, _ in ledger.calls}


def test_lost_cache_is_rebuilt_in_place(room, checkpoint):
    reg, nodes = room

    def forget():  # e.g. the node restarted on the same URL, or evicted the request
        for n in nodes.values():
            n.service.caches.clear()

    events = run(reg, kill_after=7, kill=forget)
    assert events[-1]["type"] == "done" and events[-1]["tokens"] == checkpoint[1]
    assert events[-1]["failovers"] == 0 and events[-1]["stats"]["rebuild_bytes"] > 0


def test_rooms_router_over_http(room, checkpoint):
    reg, nodes = room
    ledger = FakeLedger()
    server = devserver.serve(reg, ledger)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/v1/rooms/r").json()["state"] == "ready"
            gen = "/v1/rooms/r/generate"
            body = {"input_ids": PROMPT, "max_new_tokens": N_NEW, "stop_at_eos": False,
                    "requester": ADDR["a"]}  # ignored: the requester is always the signer
            with signed_stream(http, gen, WALLETS["c"], body) as r:
                assert r.headers["content-type"].startswith("application/x-ndjson")
                events = [json.loads(line) for line in r.iter_lines() if line]
            assert [e["type"] for e in events][:2] == ["start", "token"]
            assert events[-1]["tokens"] == checkpoint[1]
            assert ADDR["c"] not in {a for a, _, _ in ledger.calls} and len(ledger.calls) == 2
            once = signed(http, gen, ASKER, dict(body, stream=False)).json()
            assert once["tokens"] == checkpoint[1]
            assert signed(http, "/v1/rooms/nope/generate", ASKER, body).status_code == 404
            r = signed(http, gen, ASKER, {"prompt": "hi"})
            assert r.status_code == 400 and "no tokenizer" in r.json()["detail"]
            assert signed(http, gen, ASKER, {"input_ids": [10 ** 6]}).status_code == 400
            created = http.post("/v1/rooms", json={"id": "big", "preset": "llama-2-70b"}, headers=operator(server))
            assert created.status_code == 201 and created.json()["slots"] == 120
            r = signed(http, "/v1/rooms/big/generate", ASKER, {"input_ids": [1]})
            assert r.status_code == 503 and "forming: 0/120" in r.json()["detail"]
            presets = {p["name"]: p for p in http.get("/v1/rooms/presets").json()}
            assert len(presets["llama-2-70b"]["plan"]["spans"]) == 120
    finally:
        server.stop()


def test_ailo_gpt_room_answers_a_text_prompt_like_the_model(tmp_path):
    """An `ailo` preset checkpoint served by a room, GPT-2 BPE on the coordinator."""
    from ailo import tokenizer
    from ailo.inference.loader import save_ailo_checkpoint
    from ailo.model import build_model

    gpt = build_model("ailo-tiny", seed=3).eval()
    save_ailo_checkpoint(gpt, tmp_path)
    prompt = "To be, or not to be"
    ids = tokenizer.encode(prompt)
    with torch.no_grad():
        seq = list(ids)
        for _ in range(12):
            seq.append(int(gpt(torch.tensor([seq]))[0, -1].argmax()))
    want = seq[len(ids):]
    reg = RoomRegistry(clock=lambda: 0.0)
    server = devserver.serve(reg)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            config = json.loads((tmp_path / "config.json").read_text())
            created = http.post("/v1/rooms", json={"id": "g", "slots": 2, "model": config}, headers=operator(server))
            assert created.status_code == 201 and created.json()["has_tokenizer"]  # gpt2 by default
            nodes = start_nodes(reg, "g", tmp_path, "xy")
            done = signed(http, "/v1/rooms/g/generate", ASKER, {"prompt": prompt, "max_new_tokens": 12,
                                                               "stop_at_eos": False, "stream": False}).json()
            assert done["tokens"] == want and done["text"] == tokenizer.decode(want)
            assert [n.service.span for n in nodes.values()] == [(0, 2), (2, 4)]
            for n in nodes.values():
                n.server.stop()
    finally:
        server.stop()


def test_routes_take_the_shortest_measured_hops_among_equally_busy_replicas(checkpoint):
    """Nodes time their round trips to the next span's nodes (the heartbeat reply names them);
    a route then chains each pick to its nearest next replica instead of taking turns blindly."""
    reg = RoomRegistry(clock=lambda: 0.0)
    spec = read_spec(checkpoint[0])
    reg.create_room("lat", spec, 3)
    recs = {k: reg.join("lat", url=f"http://10.0.0.{i}:8000", memory=10 ** 9, fingerprint=spec.fingerprint())
            for i, k in enumerate("abcdef")}  # a, b, c: spans 0, 1, 2; d, e, f: replicas of 0, 1, 2
    for r in recs.values():
        span = reg.get("lat").span_of(r)
        reg.heartbeat("lat", r.node_id, (span.start, span.end))
    assert [recs[k].span for k in "abcdef"] == [0, 1, 2, 0, 1, 2]
    assert {p["node_id"] for p in reg.peers("lat", recs["a"].node_id)} == {recs["b"].node_id, recs["e"].node_id}
    assert reg.peers("lat", recs["c"].node_id) == []  # the last span hands back to the coordinator
    near = {("a", "e"), ("e", "c"), ("d", "b"), ("b", "f")}  # two sites: {a, e, c} and {d, b, f}
    for x, ys in (("a", "be"), ("d", "be"), ("b", "cf"), ("e", "cf")):
        reg.heartbeat("lat", recs[x].node_id, (recs[x].span * 2, recs[x].span * 2 + 2),
                      peer_ms={recs[y].node_id: 4.0 if (x, y) in near else 80.0 for y in ys})
    names = {r.node_id: k for k, r in recs.items()}
    routes = {"".join(names[n.node_id] for n in reg.route("lat")) for _ in range(6)}
    assert routes == {"aec", "dbf"}  # both sites serve (turns at span 0), no hop crosses between them
    reg.observe_coordinator(recs["d"], 3.0)  # we time our round trip to first-span nodes: nearest first,
    assert "".join(names[n.node_id] for n in reg.route("lat")) == "aec"  # ...an unmeasured one tried first
    reg.observe_coordinator(recs["a"], 40.0)
    assert {"".join(names[n.node_id] for n in reg.route("lat")) for _ in range(4)} == {"dbf"}
    assert reg.view(reg.get("lat"))["nodes"][0]["peer_ms"] == {recs["b"].node_id: 80.0, recs["e"].node_id: 4.0}
