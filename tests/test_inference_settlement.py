"""Settlement of failed paid requests by delivered work (issue 25, point 1), with real processes:
`ailo coordinator` (ledger + rooms), two `ailo node` processes and a requester over HTTP.

The attack: a requester that also runs the only node of one span of a two-span room pays, asks
for many tokens and kills its own node once tokens stream. On the old code the coordinator
refunded the whole payment (free tokens, repeatable) and the honest node of the other span, which
processed every token, got nothing. Now the honest node is paid for the steps it processed, the
requester's own node nothing, and since the requester's own node caused the failure, no refund."""
from __future__ import annotations

import json
import secrets
import signal
import time

import httpx
import pytest

from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.inference.rewards import INFERENCE_REWARD_UNITS, request_price
from ailo.ledger.params import FEE, UNIT
from ailo.ledger.service import LedgerService
from ailo.ledger.tx import pay_inference_tx, register_tx
from ailo.server.services import coordinator_wallet
from ailo.storage.ledger_store import SQLiteLedgerStore
from ailo.wallet import Wallet
from tests.procs import ailo, free_port, stop, wait_healthy
from tests.room_helpers import signed_stream

pytestmark = pytest.mark.slow
BUDGET = 1500  # tokens asked for: far more than stream before the kill lands


@pytest.fixture()
def room(tmp_path):
    state, model = tmp_path / "state", tmp_path / "model"
    make_hf_checkpoint(model, "llama", layers=2, hidden=32, heads=2, kv_heads=1, intermediate=64, vocab=300)
    coord_key = coordinator_wallet(state.mkdir() or state)
    honest, asker = Wallet.from_label("settle-honest"), Wallet.from_label("settle-asker")
    ledger = LedgerService(SQLiteLedgerStore(state / "ledger.db"), coord_key)
    for i, w in enumerate((honest, asker)):
        ledger.register(register_tx(w, f"settle{i}", ledger.clock()).to_json())
    ledger.mint_training(asker.address, UNIT, "update:fund")
    ledger.store.close()
    keys = {"honest": honest.save(tmp_path / "honest.json"), "asker": asker.save(tmp_path / "asker.json")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs = [ailo("coordinator", "--state", str(state), "--port", str(port), "--room-verify", "0",
                  log=tmp_path / "coordinator.log")]
    try:
        wait_healthy(url, procs[0], 120)
        token = (state / "operator-token").read_text().strip()
        http = httpx.Client(base_url=url, timeout=60)
        body = {"id": "two", "slots": 2, "model": json.loads((model / "config.json").read_text())}
        assert http.post("/v1/rooms", json=body, headers={"authorization": f"Bearer {token}"}).status_code == 201
        nodes = {}
        for name in ("honest", "asker"):
            nodes[name] = ailo("node", "--room", "two", "--model-dir", str(model), "--coordinator", url,
                               "--memory", "1GB", "--wallet", str(keys[name]), log=tmp_path / f"node-{name}.log")
            procs.append(nodes[name])
            time.sleep(0.5)  # one node per span, in order
        deadline = time.monotonic() + 90
        while http.get("/v1/rooms/two").json()["state"] != "ready":
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                "\n".join(p.read_text() for p in tmp_path.glob("*.log"))
            time.sleep(0.2)
        yield {"http": http, "honest": honest, "asker": asker, "nodes": nodes}
        http.close()
    finally:
        for p in reversed(procs):
            stop(p)


def alc(http, address: str) -> int:
    b = http.get(f"/v1/balance/{address}").json()
    return b["spendable"] + b["pending"]


def test_killing_your_own_node_mid_stream_buys_no_refund_and_the_honest_node_is_paid(room):
    http, honest, asker = room["http"], room["honest"], room["asker"]
    view = http.get("/v1/rooms/two").json()
    assert len(view["nodes"]) == 2 and view["price"] == request_price(2)
    price = view["price"]
    before = {w.address: alc(http, w.address) for w in (honest, asker)}
    payment = pay_inference_tx(asker, secrets.token_hex(16), price, int(time.time() * 1000)).to_json()
    payload = {"input_ids": [5, 6, 7], "max_new_tokens": BUDGET, "stop_at_eos": False, "payment": payment}
    events = []
    with signed_stream(http, "/v1/rooms/two/generate", asker, payload) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            events.append(json.loads(line))
            if sum(e["type"] == "token" for e in events) == 40:
                stop(room["nodes"]["asker"], signal.SIGKILL)  # the requester kills its own node
    final = events[-1]
    tokens = sum(e["type"] == "token" for e in events)
    assert final["type"] == "error", final
    assert final["refunded"] == 0, json.dumps({k: v for k, v in final.items() if k != "error"})  # old code: full refund
    assert 40 <= tokens < BUDGET and final["delivered_tokens"] == tokens and final["own_fault"] is True
    assert final["payees"] == [honest.address]
    time.sleep(1.5)  # the block with the mints is sealed
    earned = alc(http, honest.address) - before[honest.address]
    assert earned == INFERENCE_REWARD_UNITS * tokens // BUDGET > 0   # paid for every step it processed
    assert alc(http, asker.address) == before[asker.address] - price - FEE  # no refund; its node earned 0


def test_failed_settlement_rule():
    """The rule itself: a third party's node failing refunds what nobody processed; payouts and
    refund never exceed the price; the requester's nodes are never paid."""
    from ailo.inference.rewards import failed_settlement
    R = INFERENCE_REWARD_UNITS
    pay, refund = failed_settlement([("h", 30), ("x", 30)], 30, 2, 60, "req", fault="x")
    assert pay == {"h": R // 2, "x": R // 2} and refund == R  # half of each span's share is unprocessed
    pay, refund = failed_settlement([("h", 30), ("req", 30)], 30, 2, 60, "req", fault="req")
    assert pay == {"h": R // 2} and refund == 0
    pay, refund = failed_settlement([("h", 7), ("h", 7)], 7, 2, 3000, "req", fault=None)
    assert sum(pay.values()) + refund <= request_price(2) and refund == request_price(2) - 2 * R * 7 // 3000
    pay, refund = failed_settlement([("h", 0), ("x", 0)], 0, 2, 60, "req", fault="x")
    assert pay == {} and refund == request_price(2)  # nobody processed anything: all of it back
