"""A headless-Chromium page as a room node beside `ailo node` processes (issue 16, part 3); the
same room on the real paid path (`ailo coordinator`, its ledger, `ailo ask`): test_browser_room_paid.py.

Rooms coordinator in this process (the rooms, span-weights and node-socket routers, as in
`ailo coordinator`), a random Llama (GQA) checkpoint; the page joins first over its WebSocket
(signed by its wallet) and gets span 0, an `ailo node` process gets span 1: the room generates
transformers' greedy tokens and pays both. A second `ailo node` becomes span 0's replica;
closing the page mid-generation fails the request over to it and the tokens stay the same.
Every hop is spot-checked (p = 1) against the operator's reference span: the page passes.
The dashboard's room table lists the browser node with its span and requests served.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from ailo.server import devserver
from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.inference.rewards import INFERENCE_REWARD_UNITS
from ailo.inference.rooms import RoomRegistry
from ailo.wallet import Wallet
from ailo.testing.harness import chromium, ensure_built
from tests.fakes import FakeLedger
from tests.procs import free_port
from tests.room_helpers import operator, signed_stream

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
PROMPT = [7, 100, 42, 9, 250, 3, 77]
LONG = 120
ENV = dict(os.environ, PYTHONPATH=str(ROOT), AILO_WALLET="/nonexistent/ailo-wallet.json", OMP_NUM_THREADS="1")
PAGE_SEED = "11" * 32

JOIN_JS = """async ([seed, room]) => {
  await ailo.useBackend('wasm');
  const wallet = await ailo.Wallet.fromSeed(ailo.fromHex(seed));
  window.node = new ailo.BrowserNode({ room, wallet, memory: 1e9 });
  await window.node.start();
  return window.node.info();
}"""


def greedy(model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        return model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)[0, len(prompt):].tolist()


def start_node(base: Path, i: int, d: Path, url: str) -> tuple[subprocess.Popen, Wallet]:
    wallet = Wallet.from_label(f"browser-room-native-{i}")
    key = wallet.save(base / f"native-{i}.json")
    log = open(base / f"node{i}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "ailo.cli.main", "node", "--room", "mix", "--model-dir", str(d),
                             "--coordinator", url, "--port", str(free_port()), "--memory", "1GB", "--wallet", str(key)],
                            cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    return proc, wallet


def wait_ready(http: httpx.Client, n: int, procs, base: Path, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        view = http.get("/v1/rooms/mix").json()
        if view["state"] == "ready" and sum(x["ready"] for x in view["nodes"]) == n:
            return view
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            logs = "\n".join(p.read_text() for p in base.glob("node*.log"))
            pytest.fail(f"room not ready with {n} nodes: {view}\n{logs}")
        time.sleep(0.2)


def generate(http: httpx.Client, asker: Wallet, n: int, on_event=None) -> list[dict]:
    events = []
    with signed_stream(http, "/v1/rooms/mix/generate", asker, {"input_ids": PROMPT, "max_new_tokens": n}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line:
                events.append(json.loads(line))
                if on_event:
                    on_event(events)
    return events


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    ensure_built()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("browser-room")
    d = base / "ckpt" / "llama"
    model = make_hf_checkpoint(d, "llama", layers=4, heads=4, kv_heads=2, tie=True, rope_theta=5e5, init_std=0.3)
    ledger = FakeLedger()
    server = devserver.serve(RoomRegistry(heartbeat_interval=0.5, heartbeat_timeout=3.0), ledger,
                             checkpoints=base / "ckpt", web=True, verify_p=1.0)  # audit every span of every request
    http = httpx.Client(base_url=server.url, timeout=60)
    body = {"id": "mix", "slots": 2, "model": json.loads((d / "config.json").read_text()), "checkpoint": "llama"}
    assert http.post("/v1/rooms", json=body, headers=operator(server)).status_code == 201
    procs: list[subprocess.Popen] = []
    try:
        with chromium() as ctx:
            yield {"base": base, "dir": d, "model": model, "ledger": ledger, "server": server, "http": http,
                   "ctx": ctx, "procs": procs, "asker": Wallet.from_label("browser-room-asker")}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        http.close()
        server.stop()


def test_page_node_serves_a_span_is_paid_and_fails_over(env):
    http, base, ledger = env["http"], env["base"], env["ledger"]
    page = env["ctx"].new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(env["server"].url + "/harness")
    page.wait_for_function("window.ailoReady === true", timeout=60_000)
    joined = page.evaluate(JOIN_JS, [PAGE_SEED, "mix"])
    page_node, page_addr = joined["nodeId"], joined["address"]
    assert page_addr == Wallet.from_seed(bytes.fromhex(PAGE_SEED)).address  # the signer is the reward address
    proc_a, wallet_a = start_node(base, 0, env["dir"], env["server"].url)
    env["procs"].append(proc_a)
    ref = greedy(env["model"], PROMPT, LONG)  # while the node starts
    view = wait_ready(http, 2, env["procs"], base)
    spans = {n["node_id"]: n["span"] for n in view["nodes"]}
    assert spans[page_node] == 0 and sorted(spans.values()) == [0, 1]
    info = page.evaluate("window.node.info()")
    assert info["loaded"] == [view["plan"]["spans"][0]["start"], view["plan"]["spans"][0]["end"]]
    assert info["weights"]["tensors"] > 0 and info["weights"]["downloadedBytes"] > 0

    # 1. page (span 0) + ailo node (span 1) = transformers' greedy tokens; both are paid.
    events = generate(http, env["asker"], 40)
    assert events[0]["route"][0]["node_id"] == page_node
    done = events[-1]
    assert done["type"] == "done", events[-3:]
    assert done["tokens"] == ref[:40]
    assert set(done["payees"]) == {page_addr, wallet_a.address}
    paid = {(a, amount) for a, amount, _ in ledger.for_request(done["request_id"])}
    assert paid == {(page_addr, INFERENCE_REWARD_UNITS), (wallet_a.address, INFERENCE_REWARD_UNITS)}
    info = page.evaluate("window.node.info()")
    assert info["requests"] == 1 and info["frames"] == 40
    # every hop was spot-checked against the operator's reference span: the page's answers pass
    view = http.get("/v1/rooms/mix").json()
    page_view = next(n for n in view["nodes"] if n["node_id"] == page_node)
    assert page_view["checks"] >= 1 and page_view["strikes"] == 0
    page_audit = [c for c in done["checks"] if c["node_id"] == page_node]
    assert page_audit and page_audit[0]["hops"] == 40 and page_audit[0]["status"] == "ok"  # all 40 hops compared
    assert set(view["verification"]["checks"]) == {"ok"}, view["verification"]

    # The dashboard's room table shows the browser node, its span and requests served.
    rows = page.evaluate("async () => ailo.roomNodes(await (await fetch('/v1/rooms')).json())")
    mine = [r for r in rows if r["node"] == page_node]
    assert mine and mine[0]["kind"] == "browser" and mine[0]["span"] == view["plan"]["spans"][0]["label"]
    assert mine[0]["served"] == 1 and mine[0]["ready"]
    html = page.evaluate("async () => ailo.roomsTable(await (await fetch('/v1/rooms')).json())")
    assert "<td>browser</td>" in html and "requests served" in html

    # A dropped socket (network, coordinator restart): the page joins again by itself, keeps its
    # span and weights, and serves the next request.
    page.evaluate("window.node.ws.close()")
    page.wait_for_function("window.node.info().reconnects === 1 && window.node.info().status === 'serving'", timeout=30_000)
    rejoined = page.evaluate("window.node.info()")
    assert rejoined["nodeId"] != page_node and rejoined["weights"] == info["weights"]
    page_node = rejoined["nodeId"]
    view = wait_ready(http, 2, env["procs"], base)
    assert {n["node_id"]: n["span"] for n in view["nodes"]}[page_node] == 0
    events = generate(http, env["asker"], 20)
    assert events[-1]["type"] == "done" and events[-1]["tokens"] == ref[:20]
    assert events[0]["route"][0]["node_id"] == page_node and page_addr in events[-1]["payees"]

    # 2. a replica of span 0 joins; the page is closed mid-generation → failover, same tokens.
    proc_b, wallet_b = start_node(base, 1, env["dir"], env["server"].url)
    env["procs"].append(proc_b)
    view = wait_ready(http, 3, env["procs"], base)
    replica = next(n["node_id"] for n in view["nodes"] if n["node_id"] != page_node and n["span"] == 0)
    closed = {}

    def kill_page(evs: list[dict]) -> None:
        tokens = [e for e in evs if e["type"] == "token"]
        if len(tokens) == 5 and not closed and evs[0]["route"][0]["node_id"] == page_node:
            closed["at"] = len(tokens)
            page.close()

    for _ in range(4):  # the router rotates between the page and the replica: retry until the page is routed
        events = generate(http, env["asker"], LONG, kill_page)
        if closed:
            break
    assert closed, "the page was never routed span 0"
    done = events[-1]
    assert done["type"] == "done", events[-3:]
    assert done["tokens"] == ref
    failovers = [e for e in events if e["type"] == "failover"]
    assert [(f["from"], f["to"]) for f in failovers] == [(page_node, replica)], failovers
    assert "disconnected" in failovers[0]["reason"] or "closed" in failovers[0]["reason"]
    assert page_addr not in done["payees"] and set(done["payees"]) == {wallet_a.address, wallet_b.address}
    # the page left the room when its socket closed
    deadline = time.monotonic() + 10
    while page_node in {n["node_id"] for n in http.get("/v1/rooms/mix").json()["nodes"]}:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert not errors, errors
