"""The paid room of tests/test_browser_room_paid.py: an `ailo coordinator` process with its ledger
(funded requesters written to the chain before it starts), operator-made rooms, Chromium, and
the helpers the tests share (`ailo ask`, room views, the chain)."""
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

from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.ledger.params import UNIT
from ailo.ledger.service import LedgerService
from ailo.ledger.tx import register_tx
from ailo.server.services import coordinator_wallet
from ailo.storage.ledger_store import SQLiteLedgerStore
from ailo.wallet import Wallet
from ailo.testing.harness import chromium, ensure_built
from tests.procs import ROOT, ailo, free_port, stop, wait_healthy

PROMPT = [7, 100, 42, 9, 250, 3, 77]
SHORT, LONG = 24, 96
FUND = UNIT  # 1 ALC per requester: enough for every request below (at most 0.11 ALC each)
ENV = dict(os.environ, PYTHONPATH=str(ROOT), AILO_WALLET="/nonexistent/ailo-wallet.json", OMP_NUM_THREADS="1")
PAGE_USER = "pia_page_node"
LIAR_SEED = "5a" * 32  # a registered wallet whose page answers zeros
BUYER_SEED = "b7" * 32  # a funded wallet restored into the contributor page, which asks and pays

# A page that joins room `room` with a registered wallet and answers every frame with zeros of
# the right shape (finite: it passes the hop's shape check, only a spot check can tell).
LIAR_JS = """async ([seed, room]) => {
  const ailo = await import('/static/ailo.js');
  await ailo.useBackend('wasm');
  const wallet = await ailo.Wallet.fromSeed(ailo.fromHex(seed));
  const node = new ailo.BrowserNode({ room, wallet, memory: 1e9, dbName: 'ailo-liar-chunks' });
  const honest = node._forward.bind(node);
  node._forward = async (f) => { const out = await honest(f); return { shape: out.shape, data: new Float32Array(out.data.length) }; };
  window.liar = node;
  await node.start();
  return node.info();
}"""


def greedy(model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        return model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)[0, len(prompt):].tolist()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ailo.cli.main", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def room_view(http: httpx.Client, room: str) -> dict:
    return http.get(f"/v1/rooms/{room}").json()


def wait_rooms(http: httpx.Client, want: dict[str, int], procs: list, base: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        views = {r: room_view(http, r) for r in want}
        if all(v["state"] == "ready" and sum(n["ready"] for n in v["nodes"]) == want[r] for r, v in views.items()):
            return
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in base.glob("*.log"))
            pytest.fail(f"rooms not ready ({want}): {views}\n{logs}")
        time.sleep(0.2)


def ask(url: str, room: str, key: Path, n: int) -> tuple[list[int], dict]:
    """`ailo ask --ids` (no tokenizer: one id per token on stdout); -v puts the request's id and
    payees on stderr."""
    out = run_cli("ask", "--room", room, "--coordinator", url, "--wallet", str(key), "-v",
                  "--ids", ",".join(map(str, PROMPT)), "--max-tokens", str(n))
    assert out.returncode == 0, out.stderr
    return [int(t) for t in out.stdout.split()], json.loads(out.stderr.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    ensure_built()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("paid-room")
    state, ckpts = base / "state", base / "ckpts"
    model = make_hf_checkpoint(ckpts / "llama", "llama", layers=4, heads=4, kv_heads=2, tie=True, rope_theta=5e5,
                               init_std=0.3)
    wallets = {name: Wallet.from_label(f"paid-room-{name}") for name in ("asker", "asker2", "solo", "n1", "n2")}
    wallets["liar"] = Wallet.from_seed(bytes.fromhex(LIAR_SEED))
    wallets["buyer"] = Wallet.from_seed(bytes.fromhex(BUYER_SEED))
    keys = {name: w.save(base / f"{name}.json") for name, w in wallets.items()}
    # The chain the coordinator will replay: registered wallets, the requester funded by a training mint.
    state.mkdir()
    ledger = LedgerService(SQLiteLedgerStore(state / "ledger.db"), coordinator_wallet(state))
    for name, w in wallets.items():
        ledger.register(register_tx(w, f"paid_{name}", ledger.clock()).to_json())
    for name in ("asker", "asker2", "buyer"):
        ledger.mint_training(wallets[name].address, FUND, f"update:paid-room-fund-{name}")
    ledger.store.close()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    coordinator_args = ("coordinator", "--state", str(state), "--port", str(port), "--room-checkpoints", str(ckpts),
                        "--room-verify", "1", "--chunks", "4")
    procs = [ailo(*coordinator_args, log=base / "coordinator.log")]
    http = httpx.Client(base_url=url, timeout=60)
    try:
        wait_healthy(url, procs[0], 120)
        # The operator creates the rooms with its token file (`ailo room create`).
        creates = [subprocess.Popen([sys.executable, "-m", "ailo.cli.main", "room", "create", "--room", room,
                                     "--slots", str(slots), "--model-dir", str(ckpts / "llama"), "--checkpoint", "llama",
                                     "--coordinator", url, "--operator-token-file", str(state / "operator-token")],
                                    cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for room, slots in (("solo", 1), ("mix", 2), ("liar", 1), ("again", 1))]
        for c in creates:
            out, err = c.communicate(timeout=60)
            assert c.returncode == 0, err
        procs.append(ailo("node", "--room", "solo", "--model-dir", str(ckpts / "llama"), "--coordinator", url,
                          "--memory", "1GB", "--wallet", str(keys["solo"]), log=base / "node-solo.log"))
        with chromium() as ctx:
            yield {"url": url, "http": http, "base": base, "ckpts": ckpts, "model": model, "wallets": wallets,
                   "keys": keys, "procs": procs, "ctx": ctx, "coordinator_args": coordinator_args}
    finally:
        http.close()
        for p in reversed(procs):
            stop(p)


def chain_txs(http: httpx.Client) -> list[dict]:
    return [tx for b in http.get("/v1/chain").json()["blocks"] for tx in b["txs"]]


# The buyer's key restored into the page's wallet store (the page has no import button; a
# visitor's own key lands there the same way once it registered).
RESTORE_JS = """async ([seed, username]) => {
  const ailo = await import('/static/ailo.js');
  const w = await ailo.Wallet.fromSeed(ailo.fromHex(seed));
  w.username = username; w.registered = true;
  await w.save();
  return w.address;
}"""
