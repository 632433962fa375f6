"""No profitable self-dealing (issue 10 part 2), with real processes: `ailo coordinator`
(ledger + rooms), two `ailo node` processes and a requester, all controlled by ONE party.

The party runs the room's nodes with two wallets and asks from a third for 100 requests.
Every request is paid with a signed PAY_INFERENCE (burned) of at least what it can mint, so
the party's total ALC — requester + nodes + (to be conservative) the coordinator/pool
address — goes down, never up."""
from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time

import httpx
import pytest

from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.ledger.params import FEE, UNIT, fee_split
from ailo.ledger.service import LedgerService
from ailo.ledger.tx import pay_inference_tx, register_tx
from ailo.server.services import coordinator_wallet
from ailo.storage.ledger_store import SQLiteLedgerStore
from ailo.wallet import Wallet
from tests.procs import ROOT, ailo, free_port, stop, wait_healthy
from tests.room_helpers import signed

pytestmark = pytest.mark.slow
N_REQUESTS = 100
FUND = 12  # ALC minted to the requester beforehand (12 training mints of 1 ALC)


@pytest.fixture(scope="module")
def party(tmp_path_factory):
    base = tmp_path_factory.mktemp("selfdeal")
    state, model = base / "state", base / "model"
    make_hf_checkpoint(model, "llama", layers=2, hidden=32, heads=2, kv_heads=1, intermediate=64, vocab=300)
    coord_key = coordinator_wallet(state.mkdir() or state)
    node_w = [Wallet.from_label(f"selfdeal-node-{i}") for i in range(2)]
    asker = Wallet.from_label("selfdeal-asker")
    honest = Wallet.from_label("selfdeal-honest")
    ledger = LedgerService(SQLiteLedgerStore(state / "ledger.db"), coord_key)  # the chain the coordinator will replay
    for i, w in enumerate([*node_w, asker, honest]):
        ledger.register(register_tx(w, f"party{i}", ledger.clock()).to_json())
    for k in range(FUND):
        ledger.mint_training(asker.address, UNIT, f"update:fund-{k}")
    ledger.mint_training(honest.address, UNIT, "update:honest")
    ledger.store.close()
    keys = {}
    for name, w in (("node0", node_w[0]), ("node1", node_w[1]), ("asker", asker), ("honest", honest)):
        keys[name] = w.save(base / f"{name}.json")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    coord = ailo("coordinator", "--state", str(state), "--port", str(port), "--room-requests-per-minute", "6000",
                 log=base / "coordinator.log")
    procs = [coord]
    try:
        wait_healthy(url, coord, 120)
        token = (state / "operator-token").read_text().strip()
        http = httpx.Client(base_url=url, timeout=60)
        body = {"id": "mine", "slots": 2, "model": json.loads((model / "config.json").read_text())}
        assert http.post("/v1/rooms", json=body, headers={"authorization": f"Bearer {token}"}).status_code == 201
        for i in range(2):
            procs.append(ailo("node", "--room", "mine", "--model-dir", str(model), "--coordinator", url,
                              "--memory", "1GB", "--wallet", str(keys[f"node{i}"]), log=base / f"node{i}.log"))
        deadline = time.monotonic() + 90
        while http.get("/v1/rooms/mine").json()["state"] != "ready":
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                "\n".join(p.read_text() for p in base.glob("*.log"))
            time.sleep(0.2)
        yield {"http": http, "url": url, "nodes": node_w, "asker": asker, "honest": honest, "keys": keys,
               "coordinator": coord_key, "base": base}
        http.close()
    finally:
        for p in reversed(procs):
            stop(p)


def alc(http, address: str) -> int:
    b = http.get(f"/v1/balance/{address}").json()
    return b["spendable"] + b["pending"]


def ask(http, wallet: Wallet, payment: dict | None, **body) -> httpx.Response:
    return signed(http, "/v1/rooms/mine/generate", wallet,
                  {"input_ids": [5, 6, 7], "max_new_tokens": 1, "stream": False, "payment": payment, **body})


def pay(wallet: Wallet, amount: int, rid: str | None = None) -> dict:
    return pay_inference_tx(wallet, rid or secrets.token_hex(16), amount, int(time.time() * 1000)).to_json()


def test_one_party_sending_100_requests_to_its_own_room_loses_alc(party):
    http, asker = party["http"], party["asker"]
    price = http.get("/v1/rooms/mine").json()["price"]
    assert price == 2 * 5_000_000  # 2 spans x 0.05 ALC: the most one request can mint
    wallets = [asker.address, *(w.address for w in party["nodes"]), party["coordinator"].address]
    before = sum(alc(http, a) for a in wallets)
    paid = 0
    for _ in range(N_REQUESTS):
        r = ask(http, asker, pay(asker, price))
        assert r.status_code == 200, r.text
        paid += len(r.json()["payees"])
    after = sum(alc(http, a) for a in wallets)
    assert paid == 2 * N_REQUESTS  # honest nodes are still paid 0.05 ALC per processed request (R9)
    assert after < before
    # exactly: each request burns its price and half its fee; the nodes get the price back
    assert before - after == N_REQUESTS * fee_split()[0]
    info = http.get("/v1/ledger/info").json()
    assert info["burned"] >= N_REQUESTS * (price + fee_split()[0])


def test_requester_of_its_own_node_is_not_paid_and_loses_more(party):
    http, node0 = party["http"], party["nodes"][0]
    price = http.get("/v1/rooms/mine").json()["price"]
    assert alc(http, node0.address) >= price + FEE  # earned in the test above
    wallets = [w.address for w in party["nodes"]]
    before = sum(alc(http, a) for a in wallets)
    r = ask(http, node0, pay(node0, price))
    assert r.status_code == 200 and node0.address not in r.json()["payees"] and len(r.json()["payees"]) == 1
    assert before - sum(alc(http, a) for a in wallets) == price // 2 + FEE


def test_unpaid_underpaid_replayed_and_foreign_payments_are_refused(party):
    http, asker, honest = party["http"], party["asker"], party["honest"]
    price = http.get("/v1/rooms/mine").json()["price"]
    start = alc(http, asker.address)
    r = ask(http, asker, None)
    assert r.status_code == 402 and r.json()["reason"] == "payment_required"
    r = ask(http, asker, pay(asker, price - 1))
    assert r.status_code == 402 and r.json()["reason"] == "underpaid"
    r = ask(http, asker, pay(honest, price))  # someone else's money
    assert r.status_code == 400 and r.json()["reason"] == "bad_payment"
    once = pay(asker, price)
    assert ask(http, asker, once).status_code == 200
    r = ask(http, asker, once)  # the same signed payment again
    assert r.status_code == 409 and r.json()["reason"] == "duplicate_request"
    forged = {**pay(honest, price), "from": asker.address}
    r = ask(http, asker, forged)
    assert r.status_code == 401 and r.json()["reason"] == "bad_signature"
    broke = Wallet.from_label("selfdeal-node-1")
    r = ask(http, broke, pay(broke, 10 * UNIT))
    assert r.status_code == 402 and r.json()["reason"] == "insufficient_funds"
    assert alc(http, asker.address) == start - price - FEE  # only the one good request was charged


def test_ailo_ask_pays_for_its_request(party):
    http, keys = party["http"], party["keys"]
    price = http.get("/v1/rooms/mine").json()["price"]
    before = alc(http, party["honest"].address)
    out = subprocess.run([sys.executable, "-m", "ailo.cli.main", "ask", "--room", "mine", "--coordinator",
                          party["url"], "--ids", "5,6,7", "--max-tokens", "2", "--wallet", str(keys["honest"]), "-v"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert alc(http, party["honest"].address) == before - price - FEE


def test_ailo_ask_waits_for_a_forming_room_and_pays_once(party):
    """503 (room forming) is answered before any charge: `ailo ask` tries again with a fresh
    payment (the price is known once the room is planned) until the room is routable, and only
    the request that runs is paid for."""
    http, keys, base = party["http"], party["keys"], party["base"]
    token = (base / "state" / "operator-token").read_text().strip()
    config = json.loads((base / "model" / "config.json").read_text())
    r = http.post("/v1/rooms", json={"id": "later", "slots": 1, "model": config},
                  headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    before = alc(http, party["honest"].address)
    cmd = [sys.executable, "-m", "ailo.cli.main", "ask", "--room", "later", "--coordinator", party["url"],
           "--ids", "5,6,7", "--max-tokens", "2", "--wallet", str(keys["honest"])]
    once = subprocess.run([*cmd, "--wait", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert once.returncode != 0 and "still forming" in once.stderr and "gave up" in once.stderr, once.stderr
    waiting = subprocess.Popen([*cmd, "--wait", "120"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    node = None
    try:
        time.sleep(3)
        assert waiting.poll() is None                      # still trying: the room has no node yet
        assert alc(http, party["honest"].address) == before  # ...and nothing has been charged
        node = ailo("node", "--room", "later", "--model-dir", str(base / "model"), "--coordinator", party["url"],
                    "--memory", "1GB", "--wallet", str(keys["node0"]), log=base / "node-later.log")
        out, err = waiting.communicate(timeout=150)
        assert waiting.returncode == 0, err
        assert "still forming" in err and "trying again" in err and len(out.split()) == 2, (out, err)
        price = http.get("/v1/rooms/later").json()["price"]  # known once the room is planned (1 span)
        assert price == 5_000_000
        assert alc(http, party["honest"].address) == before - price - FEE  # one charge: the waits were free

        # The node dies without leaving (SIGKILL). If the coordinator has not noticed yet, the next
        # request is charged, its span has no other node, it fails and its payment comes back (the
        # fee not); if it has (the node's push link closed), the request is refused before any charge.
        stop(node, signal.SIGKILL)
        failed = subprocess.run([*cmd, "--wait", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert failed.returncode != 0, failed.stderr
        if "payment refunded" in failed.stderr:
            assert "payment refunded: 0.05000000 ALC" in failed.stderr, failed.stderr
            assert alc(http, party["honest"].address) == before - price - 2 * FEE
        else:
            assert "no live node" in failed.stderr, failed.stderr
            assert alc(http, party["honest"].address) == before - price - FEE  # nothing charged
    finally:
        waiting.kill()
        if node is not None:
            stop(node)
