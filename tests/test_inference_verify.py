"""Spot checks (issue 10 part 3): honest nodes on other dtypes are never flagged; nodes that
answer zeros, noise or skip a half-layer are caught, unpaid, struck and evicted; the events
show in the room view. In-process nodes over real HTTP, plus `ailo node --attack` processes."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from ailo.server import devserver
from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.inference.generate import GenerateParams, Generation
from ailo.inference.node import NodeService
from ailo.server.node_app import build_node_app
from ailo.inference.rooms import RoomError, RoomRegistry
from ailo.inference.serving import ThreadedServer
from ailo.inference.families import read_spec
from ailo.inference.verify import ReferenceSpans, SpotChecker, requests_for_detection
from ailo.inference.durable_rooms import DurableRoomRegistry
from ailo.wallet import Wallet
from tests.fakes import FakeLedger
from tests.procs import ROOT, free_port
from tests.room_helpers import operator, signed

PROMPT = [3, 14, 15, 92, 65, 35]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    make_hf_checkpoint(d, "llama", layers=3, init_std=0.02)  # a small-init model: skipped units are subtle
    return d


def room_of(ckpt, dtypes: dict[str, str], attacks: dict[str, str] | None = None, slots: int = 3):
    """Nodes joined in the order of `dtypes` (the first `slots` get spans 0..slots-1)."""
    reg = RoomRegistry(clock=lambda: 0.0)
    reg.create_room("r", read_spec(ckpt), slots)
    nodes = {}
    for name, dtype in dtypes.items():
        svc = NodeService(ckpt, dtype=dtype, attack=(attacks or {}).get(name))
        server = ThreadedServer(build_node_app(svc)).start()
        rec = reg.join("r", url=server.url, memory=10 ** 9, fingerprint=svc.spec.fingerprint(),
                       address=Wallet.from_label(f"verify-{name}").address)
        nodes[name] = (svc, server, rec)
    room = reg.get("r")
    for svc, _, rec in nodes.values():
        span = room.span_of(rec)
        svc.load(span.start, span.end)
        reg.heartbeat("r", rec.node_id, (span.start, span.end))
    return reg, nodes


def ask(reg, checker, ledger, n=8):
    gen = Generation(reg, "r", PROMPT, GenerateParams(max_new_tokens=n, stop_at_eos=False), rewards=ledger,
                     checker=checker, requester=Wallet.from_label("verify-asker").address)
    return list(gen.events())[-1]


def stop(nodes):
    for _, server, _ in nodes.values():
        server.stop()


def test_honest_nodes_in_float16_and_bfloat16_are_never_flagged(ckpt):
    reg, nodes = room_of(ckpt, {"a": "float16", "b": "bfloat16", "c": "float32"})
    checker = SpotChecker(reg, p=1.0, references=lambda room: ReferenceSpans(ckpt))
    ledger = FakeLedger()
    try:
        for _ in range(3):
            done = ask(reg, checker, ledger)
            assert done["type"] == "done" and len(done["payees"]) == 3
            assert len(done["checks"]) == 3 and {c["status"] for c in done["checks"]} == {"ok"}  # every span
            assert [c["hops"] for c in done["checks"]] == [8, 8, 8]  # each audit compared all 8 hops
            worst = max(c["distance"] for c in done["checks"])
            assert worst < 0.02, worst  # bfloat16's tolerance is 0.05
        view = reg.view(reg.get("r"))
        assert view["verification"]["checks"] == {"ok": 9} and view["verification"]["events"] == []
        assert all(n["strikes"] == 0 and n["checks"] == 3 for n in view["nodes"])
    finally:
        stop(nodes)


@pytest.mark.parametrize("attack", ["zeros", "noise", "skip"])
def test_a_cheating_node_is_caught_unpaid_struck_and_evicted(ckpt, attack):
    reg, nodes = room_of(ckpt, {"a": "float32", "b": "bfloat16", "c": "float32"}, {"b": attack})
    checker = SpotChecker(reg, p=1.0, references=lambda room: ReferenceSpans(ckpt), strikes_to_evict=3)
    ledger = FakeLedger()
    cheat = nodes["b"][2]
    try:
        for _ in range(3):  # every request audits every span (p = 1): one strike per request
            done = ask(reg, checker, ledger, n=3)
            assert done["type"] == "done" and cheat.address not in done["payees"] and len(done["payees"]) == 2
            bad = [c for c in done["checks"] if c["node_id"] == cheat.node_id]
            assert len(bad) == 1 and bad[0]["status"] == "mismatch" and bad[0]["by"] == "reference"
            assert bad[0]["distance"] == "inf" or bad[0]["distance"] > bad[0]["tolerance"]
            assert all(c["status"] == "ok" for c in done["checks"] if c["node_id"] != cheat.node_id)
        view = reg.view(reg.get("r"))
        assert cheat.address in view["verification"]["banned"]  # 3 strikes...
        assert cheat.node_id not in {n["node_id"] for n in view["nodes"]}  # ...lost its slot
        kinds = [e["status"] for e in view["verification"]["events"]]
        assert kinds == ["mismatch", "mismatch", "mismatch", "evicted"]
        with pytest.raises(RoomError, match="lost its place"):
            reg.join("r", url="http://127.0.0.1:9", memory=10 ** 9, fingerprint=read_spec(ckpt).fingerprint(),
                     address=cheat.address)
        assert all(a != cheat.address for a, _, _ in ledger.calls)
    finally:
        stop(nodes)


def test_leaving_and_rejoining_keeps_a_cheaters_strikes_and_eviction_takes_all_its_nodes(ckpt):
    """The attack: a node answering zeros leaves after two strikes and joins again as a fresh
    node record (and the same wallet runs a second, honest-looking node). Strikes count per
    wallet, so the third conviction still evicts — both nodes — and bars the wallet."""
    reg, nodes = room_of(ckpt, {"a": "float32", "b": "float32", "c": "float32"}, {"b": "zeros"})
    checker = SpotChecker(reg, p=1.0, references=lambda room: ReferenceSpans(ckpt), strikes_to_evict=3)
    ledger = FakeLedger()
    svc, server, cheat = nodes["b"]
    second_svc = NodeService(ckpt, dtype="float32")
    second = ThreadedServer(build_node_app(second_svc)).start()
    try:
        for _ in range(2):
            ask(reg, checker, ledger, n=3)
        assert cheat.strikes == 2
        reg.leave("r", cheat.node_id, owner=cheat.address)
        fingerprint = svc.spec.fingerprint()
        again = reg.join("r", url=server.url, memory=10 ** 9, fingerprint=fingerprint, address=cheat.address)
        other = reg.join("r", url=second.url, memory=10 ** 9, fingerprint=fingerprint, address=cheat.address)
        assert again.node_id != cheat.node_id and again.strikes == 2 and other.strikes == 2
        room = reg.get("r")
        for rec, node_svc in ((again, svc), (other, second_svc)):
            span = room.span_of(rec)
            node_svc.load(span.start, span.end)
            reg.heartbeat("r", rec.node_id, (span.start, span.end))
        assert room.span_of(again).index == 1  # the cheater's old span: no other node serves it
        done = ask(reg, checker, ledger, n=3)
        assert [c["status"] for c in done["checks"] if c["node_id"] == again.node_id] == ["mismatch"]
        view = reg.view(room)
        assert cheat.address in view["verification"]["banned"]
        assert not any(n["address"] == cheat.address for n in view["nodes"])  # both of its nodes are out
        evicted = [e for e in view["verification"]["events"] if e["status"] == "evicted"]
        assert len(evicted) == 1 and evicted[0]["strikes"] == 3 and len(evicted[0]["nodes"]) == 2
    finally:
        second.stop()
        stop(nodes)


def test_strikes_and_bans_survive_a_coordinator_restart(ckpt, tmp_path):
    path, spec = tmp_path / "rooms.json", read_spec(ckpt)
    reg = DurableRoomRegistry(path, clock=lambda: 0.0)
    reg.create_room("r", spec, 2)
    struck, barred = Wallet.from_label("durable-struck").address, Wallet.from_label("durable-barred").address
    n1 = reg.join("r", url="http://127.0.0.1:9001", memory=10 ** 9, fingerprint=spec.fingerprint(), address=struck)
    n2 = reg.join("r", url="http://127.0.0.1:9002", memory=10 ** 9, fingerprint=spec.fingerprint(), address=barred)
    assert reg.record_check("r", {"status": "mismatch", "node_id": n1.node_id}, n1.node_id, 3)
    for _ in range(3):
        reg.record_check("r", {"status": "mismatch", "node_id": n2.node_id}, n2.node_id, 3)
    assert not reg.record_check("r", {"status": "ok", "node_id": n1.node_id}, None, 3)  # no strike: no write
    restarted = DurableRoomRegistry(path, clock=lambda: 0.0)
    with pytest.raises(RoomError, match="lost its place"):
        restarted.join("r", url="http://127.0.0.1:9002", memory=10 ** 9, fingerprint=spec.fingerprint(),
                       address=barred)
    again = restarted.join("r", url="http://127.0.0.1:9001", memory=10 ** 9, fingerprint=spec.fingerprint(),
                           address=struck)
    assert again.strikes == 1 and restarted.view(restarted.get("r"))["verification"]["banned"] == [barred]


def test_replica_referees_dispute_without_a_second_opinion_and_convict_with_one(ckpt):
    # one span, served by cheater a; honest replicas d (and later e) of other wallets; no reference
    reg, nodes = room_of(ckpt, {"a": "float32", "d": "float32"}, {"a": "noise"}, slots=1)
    checker = SpotChecker(reg, p=1.0, references=None)
    ledger = FakeLedger()
    cheat = nodes["a"][2]
    try:
        nodes["d"][2].active += 10  # route through the cheater
        done = ask(reg, checker, ledger, n=2)
        on_a = [c for c in done["checks"] if c["node_id"] == cheat.node_id]
        assert len(on_a) == 1 and {c["status"] for c in on_a} == {"disputed"}  # one replica: who lied?
        assert done["payees"] == [] and cheat.strikes == 0  # unpaid, but nobody is struck
        extra = room_of_extra(reg, ckpt, "e")
        done = ask(reg, checker, ledger, n=1)
        on_a = [c for c in done["checks"] if c["node_id"] == cheat.node_id]
        assert on_a and {c["status"] for c in on_a} == {"mismatch"} and cheat.strikes == 1  # two agree
        assert done["payees"] == [] and nodes["d"][2].strikes == 0
        extra.stop()
    finally:
        stop(nodes)


def room_of_extra(reg, ckpt, name):
    svc = NodeService(ckpt)
    server = ThreadedServer(build_node_app(svc)).start()
    rec = reg.join("r", url=server.url, memory=10 ** 9, fingerprint=svc.spec.fingerprint(),
                   address=Wallet.from_label(f"verify-{name}").address)
    span = reg.get("r").span_of(rec)
    svc.load(span.start, span.end)
    reg.heartbeat("r", rec.node_id, (span.start, span.end))
    rec.active += 10  # keep routing span 0 through the cheater
    return server


def test_sampling_rate_and_the_detection_bound():
    assert requests_for_detection(0.1) == 44 and 0.9 ** 44 < 0.01 < 0.9 ** 43
    checker = SpotChecker(RoomRegistry(), p=0.1, seed=1)
    hits = sum(checker.sample() for _ in range(20_000))
    assert 1800 < hits < 2200
    assert not any(SpotChecker(RoomRegistry(), p=0.0).sample() for _ in range(1000))


@pytest.mark.slow
def test_garbage_node_process_is_unpaid_and_evicted_in_a_room_of_processes(ckpt, tmp_path):
    """`ailo node --attack noise` among honest `ailo node` processes, p = 1, reference = the checkpoint."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "m").symlink_to(ckpt, target_is_directory=True)
    ledger = FakeLedger()
    reg = RoomRegistry(heartbeat_interval=0.5, heartbeat_timeout=3.0)
    server = devserver.serve(reg, ledger, checkpoints=lib, verify_p=1.0)
    procs, http = [], httpx.Client(base_url=server.url, timeout=60)
    try:
        cfg = json.loads((ckpt / "config.json").read_text())
        assert http.post("/v1/rooms", json={"id": "r", "slots": 3, "model": cfg},
                         headers=operator(server)).status_code == 201
        for i, attack in enumerate([None, "noise", None]):
            key = Wallet.from_label(f"verify-proc-{i}").save(tmp_path / f"n{i}.json")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "ailo.cli.main", "node", "--room", "r", "--model-dir", str(ckpt),
                 "--coordinator", server.url, "--port", str(free_port()), "--memory", "1GB", "--wallet", str(key),
                 *(["--attack", attack] if attack else [])],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.3)  # join in order: the cheater gets span 1
        deadline = time.monotonic() + 90
        while http.get("/v1/rooms/r").json()["state"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        cheat = Wallet.from_label("verify-proc-1").address
        asker = Wallet.from_label("verify-asker")
        for _ in range(3):  # one audit (a strike) per request; the third evicts
            r = signed(http, "/v1/rooms/r/generate", asker, {"input_ids": PROMPT, "max_new_tokens": 2, "stream": False})
            done = r.json()
            assert r.status_code == 200 and cheat not in done["payees"] and len(done["payees"]) == 2
            assert {c["status"] for c in done["checks"] if c["address"] == cheat} == {"mismatch"}
        view = http.get("/v1/rooms/r").json()
        assert cheat in view["verification"]["banned"] and view["verification"]["p"] == 1.0
        assert "evicted" in [e["status"] for e in view["verification"]["events"]]
        assert all(n["address"] != cheat for n in view["nodes"])
        assert not any(a == cheat for a, _, _ in ledger.calls)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        http.close()
        server.stop()
