"""Rooms of real node processes (`ailo node`) on loopback (R8, R9): token-for-token equality
with `transformers`, span-only loading, `ailo ask`, rewards, and killing nodes mid-generation."""
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
from safetensors import safe_open

from ailo.server import devserver
from ailo.inference.checkpoints import make_byte_bpe_tokenizer, make_hf_checkpoint
from ailo.inference.rooms import RoomRegistry
from ailo.inference.families import read_spec
from ailo.wallet import Wallet
from tests.fakes import FakeLedger
from tests.procs import free_port
from tests.room_helpers import operator, signed_stream

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
PROMPT = [7, 100, 42, 9, 250, 3, 77]
LONG = 200
ENV = dict(os.environ, PYTHONPATH=str(ROOT), AILO_WALLET="/nonexistent/ailo-wallet.json")
AILO = [sys.executable, "-m", "ailo.cli.main"]


def greedy(model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        return model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Coordinator (rooms router only) in this process; a Llama room of 3 spans + 1 replica and a
    Qwen2 room of 3 spans, 7 `ailo node` processes started together."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("rooms")
    llama_dir, qwen_dir = base / "llama", base / "qwen"
    llama = make_hf_checkpoint(llama_dir, "llama", tie=True, rope_theta=5e5, init_std=0.3)
    qwen = make_hf_checkpoint(qwen_dir, "qwen2", layers=3, rope_theta=1e6, init_std=0.3, max_shard_size="60KB")
    make_byte_bpe_tokenizer(llama_dir, vocab=400)
    ledger = FakeLedger()
    server = devserver.serve(RoomRegistry(heartbeat_interval=0.5, heartbeat_timeout=3.0), ledger)
    http = httpx.Client(base_url=server.url, timeout=60)
    wallets = {}  # address -> (wallet, key file)
    (base / "wallets").mkdir()
    for name, d in (("llama", llama_dir), ("qwen", qwen_dir)):
        body = {"id": name, "slots": 3, "model": json.loads((d / "config.json").read_text())}
        if (d / "tokenizer.json").exists():
            body["tokenizer"] = (d / "tokenizer.json").read_text()
        assert http.post("/v1/rooms", json=body, headers=operator(server)).status_code == 201
    procs: dict[str, subprocess.Popen] = {}  # node URL -> process
    logs = base / "logs"
    logs.mkdir()
    node_env = dict(ENV, OMP_NUM_THREADS="1")
    for i, (room, d) in enumerate([("llama", llama_dir)] * 4 + [("qwen", qwen_dir)] * 3):
        port = free_port()
        log = open(logs / f"node{i}.log", "w")
        wallet = Wallet.from_label(f"{room}-{i}")
        wallets[wallet.address] = (wallet, wallet.save(base / "wallets" / f"{room}-{i}.json"))
        procs[f"http://127.0.0.1:{port}"] = subprocess.Popen(
            [*AILO, "node", "--room", room, "--model-dir", str(d), "--coordinator", server.url,
             "--port", str(port), "--memory", "1GB", "--wallet", str(wallets[wallet.address][1])],
            cwd=ROOT, env=node_env, stdout=log, stderr=subprocess.STDOUT)
    refs = {"llama": greedy(llama, PROMPT, LONG), "qwen": greedy(qwen, PROMPT, LONG)}  # while nodes start
    deadline = time.monotonic() + 120
    while True:
        views = {r: http.get(f"/v1/rooms/{r}").json() for r in ("llama", "qwen")}
        if all(v["state"] == "ready" and sum(n["ready"] for n in v["nodes"]) == want
               for v, want in ((views["llama"], 4), (views["qwen"], 3))):
            break
        dead = [u for u, p in procs.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            text = "\n".join(p.read_text() for p in logs.iterdir())
            pytest.fail(f"room did not become ready (dead nodes {dead}):\n{text}")
        time.sleep(0.2)
    asker = Wallet.from_label("e2e-asker")
    asker.save(base / "wallets" / "asker.json")
    yield {"http": http, "url": server.url, "ledger": ledger, "procs": procs, "refs": refs, "llama": llama,
           "wallets": wallets, "asker": asker, "asker_file": base / "wallets" / "asker.json",
           "dirs": {"llama": llama_dir, "qwen": qwen_dir}, "tokenizer": llama_dir / "tokenizer.json"}
    for p in procs.values():
        p.terminate()
    for p in procs.values():
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    http.close()
    server.stop()


def stream(env, room: str, body: dict, on_token=None, wallet=None) -> list[dict]:
    events = []
    with signed_stream(env["http"], f"/v1/rooms/{room}/generate", wallet or env["asker"], body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line:
                events.append(json.loads(line))
                if on_token and events[-1]["type"] == "token":
                    on_token(events)
    return events


def span_names(d: Path, start: int, end: int) -> set[str]:
    spec, names = read_spec(d), set()
    for f in d.glob("*.safetensors"):
        with safe_open(f, "pt") as h:
            names |= set(h.keys())
    keep = set()
    for n in names:
        if n.startswith("model.layers."):
            unit = 2 * int(n.split(".")[2]) + (0 if ("self_attn" in n or "input_layernorm" in n) else 1)
            keep |= {n} if start <= unit < end else set()
        elif n == "model.embed_tokens.weight":
            keep |= {n} if start == 0 or (end == spec.n_units and spec.tie_embeddings) else set()
        elif end == spec.n_units:
            keep.add(n)
    return keep


@pytest.mark.parametrize("room", ["llama", "qwen"])
def test_room_of_processes_matches_transformers_and_loads_only_spans(env, room):
    events = stream(env, room, {"input_ids": PROMPT, "max_new_tokens": 40})
    assert events[0]["type"] == "start" and len(events[0]["route"]) == 3
    assert events[-1]["type"] == "done"
    assert [e["token"] for e in events if e["type"] == "token"] == env["refs"][room][:40]
    view = env["http"].get(f"/v1/rooms/{room}").json()
    spans = {s["index"]: s for s in view["plan"]["spans"]}
    every = span_names(env["dirs"][room], 0, read_spec(env["dirs"][room]).n_units)
    seen = set()
    for node in view["nodes"]:
        info = httpx.get(f"{node['url']}/v1/node/info").json()
        s = spans[node["span"]]
        assert (info["span"]["start"], info["span"]["end"]) == (s["start"], s["end"])
        assert set(info["tensor_names"]) == span_names(env["dirs"][room], s["start"], s["end"])
        assert set(info["tensor_names"]) < every
        seen |= set(info["tensor_names"])
    assert seen == every


def test_ask_streams_text_to_stdout(env):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(env["tokenizer"]))
    prompt = "the quick brown fox"
    ids = tok.encode(prompt).ids
    want = tok.decode(greedy(env["llama"], ids, 20))
    out = subprocess.run([*AILO, "ask", "--room", "llama", "--coordinator", env["url"], "--max-tokens", "20",
                          "--wallet", str(env["asker_file"]), prompt], cwd=ROOT, capture_output=True, text=True,
                         env=ENV, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == want + "\n"
    bad = subprocess.run([*AILO, "ask", "--room", "nope", "--coordinator", env["url"], "--wallet",
                          str(env["asker_file"]), "hi"], cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=60)
    assert bad.returncode == 2 and "no room 'nope'" in bad.stderr
    no_wallet = subprocess.run([*AILO, "ask", "--room", "llama", "--coordinator", env["url"], "hi"], cwd=ROOT,
                               capture_output=True, text=True, env=ENV, timeout=60)
    assert no_wallet.returncode == 2 and "no wallet at /nonexistent/ailo-wallet.json" in no_wallet.stderr


def test_node_with_another_checkpoint_is_refused(env):
    out = subprocess.run([*AILO, "node", "--room", "llama", "--model-dir", str(env["dirs"]["qwen"]),
                          "--coordinator", env["url"], "--memory", "1GB", "--wallet", str(env["asker_file"])],
                         cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 2
    assert "checkpoint does not match room 'llama'" in out.stderr


def test_rewards_go_to_the_processing_nodes_not_the_requester(env):
    view = env["http"].get("/v1/rooms/llama").json()
    requester = next(n["address"] for n in view["nodes"] if n["span"] == 1)  # serves span 1, and asks
    events = stream(env, "llama", {"input_ids": PROMPT, "max_new_tokens": 8}, wallet=env["wallets"][requester][0])
    done = events[-1]
    addr = {n["node_id"]: n["address"] for n in view["nodes"]}
    route = [addr[r["node_id"]] for r in events[0]["route"]]
    expected = [route[0], route[2]]
    assert done["payees"] == expected
    assert env["ledger"].for_request(done["request_id"]) == [
        (a, 5_000_000, f"request:{done['request_id']}:{a}") for a in expected]


def test_killed_node_fails_over_to_replica_then_no_replica_fails_clearly(env):
    procs, ledger = env["procs"], env["ledger"]
    # Llama: span 0 has a replica. Kill the node serving it after 2 tokens of a long answer.
    view = env["http"].get("/v1/rooms/llama").json()
    assert sorted(n["span"] for n in view["nodes"]) == [0, 0, 1, 2]
    url_of = {n["node_id"]: n["url"] for n in view["nodes"]}
    killed: list[str] = []

    def kill_span(k: int):
        def on_token(events):
            if len(killed) == 0 and events[-1]["index"] == 1:
                url = url_of[events[0]["route"][k]["node_id"]]
                procs[url].kill()
                procs[url].wait()
                killed.append(url)
        return on_token

    events = stream(env, "llama", {"input_ids": PROMPT, "max_new_tokens": LONG}, kill_span(0))
    kinds = [e["type"] for e in events]
    assert killed and kinds[-1] == "done", events[-1]
    assert kinds.count("failover") == 1 and "span 0" in events[kinds.index("failover")]["span"]
    assert events[-1]["tokens"] == env["refs"]["llama"]  # all 150, exactly, after the rebuild
    dead_addr = next(n["address"] for n in view["nodes"] if n["url"] == killed[0])
    assert dead_addr not in events[-1]["payees"] and len(events[-1]["payees"]) == 3

    # Qwen: no replicas. Kill the middle span's node: a clear error; each node is paid only the
    # share of the request it delivered (settlement by delivered work, docs/REWARDS.md).
    view = env["http"].get("/v1/rooms/qwen").json()
    url_of.update({n["node_id"]: n["url"] for n in view["nodes"]})
    killed.clear()
    paid_before = len(ledger.calls)
    events = stream(env, "qwen", {"input_ids": PROMPT, "max_new_tokens": LONG}, kill_span(1))
    assert killed and events[-1]["type"] == "error"
    assert "span 1 (layer 1)" in events[-1]["error"] and "no live replica" in events[-1]["error"]
    tokens = [e["token"] for e in events if e["type"] == "token"]
    assert tokens == env["refs"]["qwen"][:len(tokens)] and len(tokens) < LONG
    new = ledger.calls[paid_before:]
    assert len(new) == 3 and len({a for a, _, _ in new}) == 3  # the three spans' nodes, once each
    assert len({amount for _, amount, _ in new}) == 1 and 0 < new[0][1] < 5_000_000  # same steps, a fraction
    from tests.room_helpers import signed
    r = signed(env["http"], "/v1/rooms/qwen/generate", env["asker"], {"input_ids": PROMPT})
    assert r.status_code == 503 and "no live node for span 1" in r.json()["detail"]
