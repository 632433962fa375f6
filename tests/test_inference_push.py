"""Node-to-node activations (issue 28): in-process nodes with links, over real HTTP, against a
real rooms coordinator. Pushed tokens equal relayed and local greedy tokens (with and without
drafts); frames from anyone but the route's predecessor are refused; spot checks catch a lying
node on the push path; a node killed mid-request fails over to its replica."""
from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from ailo.inference.units import RequestCache
from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.inference import forwarding
from ailo.inference.links import H_LINK, NodeLink, frame_message, refusal_entry, sign_frame
from ailo.inference.loader import load_span
from ailo.inference.node import NodeService, RoomAgent
from ailo.server.node_app import build_node_app
from ailo.inference.rooms import RoomRegistry
from ailo.inference.serving import ThreadedServer
from ailo.inference.families import read_spec
from ailo.inference.verify import ReferenceSpans
from ailo.inference.wire import BATCH_TYPE, CONTENT_TYPE, Frame, encode_batch
from ailo.server import devserver
from ailo.wallet import Wallet
from tests.fakes import FakeLedger
from tests.room_helpers import signed, signed_stream

PROMPT = [3, 14, 15, 92, 65, 35, 3, 14]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("push")
    make_hf_checkpoint(d, "llama", layers=3, init_std=0.02)
    return d


def greedy(ckpt, n: int) -> list[int]:
    model = load_span(ckpt, 0, read_spec(ckpt).n_units).model
    cache, out, x, pos = RequestCache(), [], torch.tensor([PROMPT]), 0
    for _ in range(n):
        logits = model(x, pos, cache)
        pos += x.shape[1]
        out.append(int(torch.argmax(logits[0])))
        x = torch.tensor([[out[-1]]])
    return out


class Room:
    """A coordinator and nodes named by letter; the first three get spans 0, 1, 2, later ones replicas."""

    def __init__(self, ckpt, names: str, attacks: dict[str, str] | None = None, verify_p: float = 0.0):
        self.reg = RoomRegistry(clock=lambda: 0.0)
        self.reg.create_room("r", read_spec(ckpt), 3)
        self.ledger = FakeLedger()
        self.server = devserver.serve(self.reg, self.ledger, verify_p=verify_p,
                                      references=lambda room: ReferenceSpans(ckpt))
        self.nodes = {}
        for name in names:
            wallet = Wallet.from_label(f"push-{name}")
            svc = NodeService(ckpt, attack=(attacks or {}).get(name))
            svc.link = NodeLink(wallet, self.server.url, "r")
            srv = ThreadedServer(build_node_app(svc)).start()
            rec = self.reg.join("r", url=srv.url, memory=10 ** 9, fingerprint=svc.spec.fingerprint(),
                                address=wallet.address, link_token=svc.link.token)
            self.nodes[name] = (svc, srv, rec, wallet)
        for svc, _, rec, _ in self.nodes.values():
            span = self.reg.get("r").span_of(rec)
            svc.load(span.start, span.end)
            self.reg.heartbeat("r", rec.node_id, (span.start, span.end))
        self.http = httpx.Client(base_url=self.server.url, timeout=60)

    def ask(self, **kw) -> dict:
        r = signed(self.http, "/v1/rooms/r/generate", Wallet.from_label("push-asker"),
                   {"input_ids": PROMPT, "max_new_tokens": 12, "stop_at_eos": False, "stream": False, **kw})
        assert r.status_code == 200, r.text
        return r.json()

    def close(self) -> None:
        for _, srv, _, _ in self.nodes.values():
            srv.stop()
        self.http.close()
        self.server.stop()


def test_pushed_tokens_equal_relayed_and_local_greedy_with_and_without_drafts(ckpt):
    room = Room(ckpt, "abc")
    try:
        want = greedy(ckpt, 12)
        pushed, drafted = room.ask(draft_tokens=0), room.ask(draft_tokens=4)
        relayed = room.ask(transport="relay")
        assert pushed["tokens"] == drafted["tokens"] == relayed["tokens"] == want
        assert pushed["stats"]["transport"] == drafted["stats"]["transport"] == "push"
        assert relayed["stats"]["transport"] == "relay"
        nodes = room.http.get("/v1/rooms/r").json()["nodes"]  # the room view shows each node's hop time
        assert all(n["push"] and n["hop_ms"] > 0 and n["coordinator_ms"] > 0 for n in nodes)
        assert pushed["stats"]["passes"] == 12 and pushed["stats"]["drafted"] == 0
        s = drafted["stats"]
        assert s["passes"] + s["accepted"] == 12 and 0 <= s["accepted"] <= s["drafted"]
        assert sorted(pushed["payees"]) == sorted(n[3].address for n in room.nodes.values())  # paid as before
        sampled = room.ask(temperature=0.8, seed=7)  # sampling: full logits travel back, no drafts
        assert len(sampled["tokens"]) == 12 and sampled["stats"]["drafted"] == 0
    finally:
        room.close()


def test_frames_from_anyone_but_the_routed_predecessor_are_refused(ckpt):
    room = Room(ckpt, "abc")
    try:
        a, b, c = (room.nodes[k] for k in "abc")
        span_b = (b[0].span[0], b[0].span[1])
        x = torch.zeros(1, 1, read_spec(ckpt).hidden)
        body = Frame("rid-1", 0, span_b, x, True).encode()
        push = lambda srv, body, headers: httpx.post(f"{srv.url}/v1/node/push", content=body,  # noqa: E731
                                                     headers={"content-type": CONTENT_TYPE, **headers})
        # not routed for this request at all (a's wallet, a real member of the room)
        r = push(b[1], body, sign_frame(a[3], body))
        assert r.status_code == 403 and r.json()["reason"] == "not_routed"
        # routes come only from the coordinator (the link token)
        route = {"request_id": "rid-1", "prev": a[3].address, "next_url": c[1].url, "next_span": list(c[0].span)}
        assert httpx.post(f"{b[1].url}/v1/node/route", json=route).json()["reason"] == "not_coordinator"
        assert httpx.post(f"{b[1].url}/v1/node/route", json=route, headers={H_LINK: b[0].link.token}).status_code == 200
        # routed, but signed by another wallet (c), or by nobody, or a's signature over other bytes
        r = push(b[1], body, sign_frame(c[3], body))
        assert r.status_code == 403 and r.json()["reason"] == "wrong_sender"
        r = push(b[1], body, {})
        assert r.status_code == 401 and r.json()["reason"] == "bad_signature"
        r = push(b[1], body, sign_frame(a[3], body + b"x"))
        assert r.status_code == 401 and r.json()["reason"] == "bad_signature"
        assert len(b[0].caches) == 0 and b[0].link.pushed == 0  # nothing ran, nothing went on
        # the coordinator takes outputs only for a waiting request, from its route's last node
        out = Frame("rid-1", 0, span_b, torch.zeros(1, 4), False).encode()
        r = httpx.post(f"{room.server.url}/v1/rooms/r/frames", content=out, headers=sign_frame(c[3], out))
        assert r.status_code == 403 and r.json()["reason"] == "not_routed"
        report = json.dumps({"request_id": "rid-1", "failed": "next", "status": 502, "detail": "x"}).encode()
        r = httpx.post(f"{room.server.url}/v1/rooms/r/hop-errors", content=report,
                       headers=sign_frame(Wallet.from_label("push-stranger"), report))
        assert r.status_code == 403
        assert room.ask()["tokens"] == greedy(ckpt, 12)  # the room still works
    finally:
        room.close()


@pytest.mark.parametrize("liar", ["b", "c"])  # a middle span (hidden states) and the last span (greedy ids)
def test_spot_checks_catch_a_lying_node_on_the_push_path(ckpt, liar):
    room = Room(ckpt, "abc", attacks={liar: "noise"}, verify_p=1.0)
    try:
        cheat = room.nodes[liar][3].address
        done = room.ask()
        assert done["stats"]["transport"] == "push" and len(done["checks"]) == 3
        bad = [c for c in done["checks"] if c["address"] == cheat]
        assert len(bad) == 1 and bad[0]["status"] == "mismatch" and bad[0]["by"] == "reference"
        assert all(c["status"] == "ok" for c in done["checks"] if c["address"] != cheat)
        assert cheat not in done["payees"] and len(done["payees"]) == 2
        assert cheat not in {a for a, _, _ in room.ledger.calls}
        honest = Room(ckpt, "abc", verify_p=1.0)
        try:
            done = honest.ask(draft_tokens=4)  # drafts: rolled-back positions are cut from the audit
            assert {c["status"] for c in done["checks"]} == {"ok"} and len(done["checks"]) == 3
        finally:
            honest.close()
    finally:
        room.close()


def test_a_node_killed_mid_request_fails_over_to_its_replica_on_the_push_path(ckpt):
    room = Room(ckpt, "abcd")  # d: a replica (the least-served span)
    try:
        d_span = room.nodes["d"][2].span
        by_id = {rec.node_id: k for k, (_, _, rec, _) in room.nodes.items()}
        with signed_stream(room.http, "/v1/rooms/r/generate", Wallet.from_label("push-asker"),
                           {"input_ids": PROMPT, "max_new_tokens": 48, "stop_at_eos": False,
                            "draft_tokens": 0}) as r:  # long enough not to end before the kill lands
            events = []
            for line in r.iter_lines():
                events.append(json.loads(line))
                if len(events) == 1:  # the start event names the route: kill the node serving d's span
                    victim = by_id[events[0]["route"][d_span]["node_id"]]
                    replica = next(k for k in by_id.values() if k != victim and room.nodes[k][2].span == d_span)
                if [e["type"] for e in events].count("token") == 4 and room.nodes[victim][1].server.started:
                    room.nodes[victim][1].stop()
                    room.nodes[victim][1].server.started = False
        fo = [e for e in events if e["type"] == "failover"]
        assert len(fo) == 1 and fo[0]["from"] == room.nodes[victim][2].node_id
        assert fo[0]["to"] == room.nodes[replica][2].node_id
        assert events[-1]["type"] == "done" and events[-1]["tokens"] == greedy(ckpt, 48)
        assert events[-1]["stats"]["transport"] == "push"
    finally:
        room.close()


def test_a_node_runs_the_frames_waiting_at_it_as_one_batch_with_the_same_outputs(ckpt):
    """forward_many = one forward per request (each on its own KV cache); refused frames keep
    their place and do not stop the others."""
    svc = NodeService(ckpt)
    svc.load(0, read_spec(ckpt).n_units)
    alone = NodeService(ckpt)
    alone.load(0, read_spec(ckpt).n_units)
    prompts = [PROMPT, PROMPT[:5], PROMPT[2:]]
    frames = [Frame(f"r{i}", 0, svc.span, torch.tensor([p]), True, False, True) for i, p in enumerate(prompts)]
    for step in range(4):
        batched = svc.forward_many(frames + [Frame("r9", 3, svc.span, torch.tensor([[1]]))])  # r9: no cache
        assert isinstance(batched[-1], Exception) and batched[-1].status == 409
        single = [alone.forward(f) for f in frames]
        assert [int(b.tensor[0]) for b in batched[:3]] == [int(s.tensor[0]) for s in single]
        frames = [Frame(f.request_id, f.start + f.tensor.shape[1], f.span, b.tensor.view(1, 1), False, False, True)
                  for f, b in zip(frames, batched)]
    assert [svc.caches.get(f"r{i}").length for i in range(3)] == [f.start for f in frames]
    # two frames of one request in one batch run in order: the second continues the first
    a, b = Frame("r0", frames[0].start, svc.span, torch.tensor([[5]])), Frame("r0", frames[0].start + 1, svc.span, torch.tensor([[6]]))
    assert all(isinstance(o, Frame) for o in svc.forward_many([a, b]))
    assert svc.caches.get("r0").length == frames[0].start + 2


def test_pushed_batches_are_checked_frame_by_frame_and_concurrent_requests_keep_their_tokens(ckpt):
    room = Room(ckpt, "abc")
    try:
        a, b, c = (room.nodes[k] for k in "abc")
        x = torch.zeros(1, 1, read_spec(ckpt).hidden)
        route = {"request_id": "rid-ok", "prev": a[3].address, "next_url": c[1].url, "next_span": list(c[0].span)}
        assert httpx.post(f"{b[1].url}/v1/node/route", json=route, headers={H_LINK: b[0].link.token}).status_code == 200
        ok, stray = (Frame(rid, 0, b[0].span, x, True).encode() for rid in ("rid-ok", "rid-stray"))
        key = a[3].signing_key
        body = encode_batch([(ok, key.sign(frame_message(ok)).signature), (stray, key.sign(frame_message(stray)).signature)])
        r = httpx.post(f"{b[1].url}/v1/node/push", content=body,
                       headers={"content-type": BATCH_TYPE, "x-ailo-address": a[3].address})
        assert r.status_code == 207 and [e["request_id"] for e in r.json()["refused"]] == ["rid-stray"]
        evidence = {"body": base64.b64encode(r.content).decode(), "signature": r.headers["x-ailo-signature"]}
        assert refusal_entry(evidence, b[3].address, "rid-stray")["reason"] == "not_routed"  # b's own word
        assert refusal_entry(evidence, a[3].address, "rid-stray") is None  # nobody else's
        forged = encode_batch([(ok, bytes(64))])
        r = httpx.post(f"{b[1].url}/v1/node/push", content=forged,
                       headers={"content-type": BATCH_TYPE, "x-ailo-address": a[3].address})
        assert r.status_code == 401 and r.json()["reason"] == "bad_signature"
        want = greedy(ckpt, 12)
        with ThreadPoolExecutor(8) as pool:  # concurrent requests meet at nodes and travel in batches
            done = list(pool.map(lambda i: room.ask(draft_tokens=4 if i % 2 else 0), range(8)))
        assert all(d["tokens"] == want and d["stats"]["transport"] == "push" for d in done)
        info = [httpx.get(f"{n[1].url}/v1/node/info").json()["push"] for n in (a, b, c)]
        assert sum(i["forwards"] for i in info) < sum(i["pushed"] for i in info) + 3 * 8  # some forwards ran several
    finally:
        room.close()


def test_a_node_cannot_blame_a_live_successor_without_evidence(ckpt, monkeypatch):
    """A node that says its successor failed, while the coordinator reaches that successor, is
    itself failed over (to its replica); the successor stays unblamed."""
    room = Room(ckpt, "abcd")  # d: a replica of one span
    try:
        d_span = room.nodes["d"][2].span
        assert d_span < 2  # the liar needs a successor
        liar = next(k for k in "abc" if room.nodes[k][2].span == d_span)
        honest_send = forwarding._send

        async def lying_send(link, url, items, to_node):
            if link is room.nodes[liar][0].link and to_node:  # drops the frames and blames the next node
                for _, frame in items:
                    await forwarding.report(link, frame.request_id, "next", 502, "ConnectError: (a lie)", frame.span)
                return
            await honest_send(link, url, items, to_node)

        monkeypatch.setattr(forwarding, "_send", lying_send)
        successor = next(k for k in "abc" if room.nodes[k][2].span == d_span + 1)
        for _ in range(2):  # replicas take turns: one of the two requests is routed through the liar
            with signed_stream(room.http, "/v1/rooms/r/generate", Wallet.from_label("push-asker"),
                               {"input_ids": PROMPT, "max_new_tokens": 6, "stop_at_eos": False}) as r:
                events = [json.loads(line) for line in r.iter_lines()]
            assert events[-1]["type"] == "done" and events[-1]["tokens"] == greedy(ckpt, 6)
            for fo in (e for e in events if e["type"] == "failover"):
                assert fo["from"] == room.nodes[liar][2].node_id and fo["to"] == room.nodes["d"][2].node_id
                assert "answers the coordinator" in fo["reason"]
        assert room.nodes[liar][2].failed and not room.nodes[successor][2].failed
    finally:
        room.close()


def test_a_node_times_its_round_trip_to_the_nodes_its_heartbeat_names(ckpt):
    room = Room(ckpt, "abc")
    try:
        svc, srv, rec, wallet = room.nodes["a"]
        agent = RoomAgent(svc, room.server.url, "r", srv.url, 10 ** 9, wallet)
        b = room.nodes["b"]
        agent._time_peers([{"node_id": b[2].node_id, "url": b[1].url}, {"node_id": "gone", "url": "http://127.0.0.1:9"},
                           {"node_id": "evil", "url": "file:///etc/passwd"}])
        assert set(agent._peer_ms) == {b[2].node_id} and 0 < agent._peer_ms[b[2].node_id] < 2000
        agent._peer_ms = {}
        agent._time_peers([{"node_id": b[2].node_id, "url": b[1].url}])  # timed a moment ago: not again
        assert agent._peer_ms == {}
        agent.leave()
    finally:
        room.close()
