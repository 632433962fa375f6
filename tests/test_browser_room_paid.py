"""A paid room of real processes with a headless-Chromium page node (issue 16, "Done when" 2).

Everything a user runs: an `ailo coordinator` process (SQLite ledger, operator token, rooms API,
node sockets, `--room-checkpoints`, spot checks on every span: `--room-verify 1`); the operator
creates two rooms with `ailo room create` — `solo` (one span) and `mix` (two spans, weights from
the checkpoint folder for browser nodes); the contributor page `/` registers its in-page wallet
and clicks Serve in room `mix`; three `ailo node` processes: one serves `solo` whole, two serve
`mix` (one span 1, one a replica of the page's span 0). A registered requester wallet (funded
by a training mint written to the chain before the coordinator starts, as in
tests/test_inference_economics.py) asks with `ailo ask`, which pays a signed PAY_INFERENCE.

Asserted: the room of the page + processes generates the same greedy tokens as the single
`ailo node` process (and as `transformers`); every request burns spans × 0.05 ALC + the 0.01 fee
from the requester and mints 0.05 ALC to each node that served it — the page's wallet included —
read back from the coordinator's chain and balances; the page passes its spot checks; closing the
page mid-generation fails over to the replica with the same tokens, and the page is not paid for
that request; `ailo chain verify` says OK.
"""
from __future__ import annotations

import signal

import httpx
import pytest

from ailo.inference.requester import RoomRequester
from ailo.inference.rewards import INFERENCE_REWARD_UNITS, reward_ref
from ailo.ledger.params import FEE
from tests.paid_room import (BUYER_SEED, FUND, LIAR_JS, LIAR_SEED, LONG, PAGE_USER, PROMPT, RESTORE_JS, SHORT,  # noqa: F401
                             ask, chain_txs, greedy, net, room_view, run_cli, wait_rooms)
from tests.pages import open_page, register
from tests.procs import ailo, stop, wait_healthy

pytestmark = pytest.mark.slow


def test_paid_room_with_a_page_node_matches_one_process_pays_each_node_and_fails_over(net):
    http, url, base, procs = net["http"], net["url"], net["base"], net["procs"]
    wallets, keys = net["wallets"], net["keys"]

    # The contributor page: register the in-page wallet, pick room `mix`, click Serve.
    page, errors = open_page(net["ctx"], url)
    page_addr = register(page, PAGE_USER)
    page.select_option("#serve-room", "mix")
    page.click("#serve")
    page.wait_for_function("window.ailoPage.node && window.ailoPage.node.nodeId", timeout=60_000)
    page_node = page.evaluate("window.ailoPage.node.nodeId")
    for name in ("n1", "n2"):  # the first to join serves span 1, the other becomes span 0's replica
        procs.append(ailo("node", "--room", "mix", "--model-dir", str(net["ckpts"] / "llama"), "--coordinator", url,
                          "--memory", "1GB", "--wallet", str(keys[name]), log=base / f"node-{name}.log"))
    ref = greedy(net["model"], PROMPT, LONG)  # transformers, while the nodes start
    wait_rooms(http, {"solo": 1, "mix": 3}, procs, base)
    page.wait_for_function("window.ailoPage.node.status === 'serving'", timeout=60_000)
    view = room_view(http, "mix")
    addr_of = {n["node_id"]: n["address"] for n in view["nodes"]}
    spans = {n["node_id"]: n["span"] for n in view["nodes"]}
    assert spans[page_node] == 0 and addr_of[page_node] == page_addr and sorted(spans.values()) == [0, 0, 1]
    assert view["nodes"][[n["node_id"] for n in view["nodes"]].index(page_node)]["url"].startswith("browser://")
    replica = next(a for n, a in addr_of.items() if n != page_node and spans[n] == 0)
    second = next(a for n, a in addr_of.items() if spans[n] == 1)
    assert {replica, second} == {wallets["n1"].address, wallets["n2"].address}
    price = {"solo": room_view(http, "solo")["price"], "mix": view["price"]}
    assert price == {"solo": INFERENCE_REWARD_UNITS, "mix": 2 * INFERENCE_REWARD_UNITS}

    # (a) One `ailo node` process serving every layer, then the room of page + processes: same tokens.
    solo, solo_info = ask(url, "solo", keys["asker"], LONG)
    assert solo == ref
    assert solo_info["payees"] == [wallets["solo"].address]
    requests = [("solo", solo_info["request_id"], solo_info["payees"])]
    # The router rotates span 0 between the page and its replica: two requests cover both.
    for _ in range(2):
        tokens, info = ask(url, "mix", keys["asker"], SHORT)
        assert tokens == solo[:SHORT]
        assert len(info["payees"]) == 2 and info["payees"][1] == second and info["failovers"] == 0
        requests.append(("mix", info["request_id"], info["payees"]))
    assert {r[2][0] for r in requests[1:]} == {page_addr, replica}  # the page served one of them

    # The page passed its spot checks (p = 1: every span of every request is re-run on the
    # operator's checkpoint by the coordinator).
    view = room_view(http, "mix")
    mine = next(n for n in view["nodes"] if n["node_id"] == page_node)
    assert mine["checks"] >= 1 and mine["strikes"] == 0 and mine["served"] >= 1
    assert set(view["verification"]["checks"]) == {"ok"}, view["verification"]

    # (c) Close the page mid-generation: the span fails over to the replica, same tokens.
    closed: dict = {}
    asker = RoomRequester(url, wallets["asker"], httpx.Client(timeout=httpx.Timeout(10.0, read=120)))
    for _ in range(3):
        events: list[dict] = []
        with asker.open("mix", {"input_ids": PROMPT, "max_new_tokens": LONG}) as answer:
            for event in answer.events():
                events.append(event)
                tokens = [e for e in events if e["type"] == "token"]
                if len(tokens) == 5 and not closed and events[0]["route"][0]["node_id"] == page_node:
                    closed["at"] = len(tokens)
                    page.close()
        done = events[-1]
        assert done["type"] == "done", events[-3:]
        assert done["tokens"] == solo
        requests.append(("mix", done["request_id"], done["payees"]))
        if closed:
            break
    assert closed, "the page was never routed span 0"
    failovers = [e for e in events if e["type"] == "failover"]
    assert len(failovers) == 1 and failovers[0]["from"] == page_node and addr_of[failovers[0]["to"]] == replica
    assert sorted(done["payees"]) == sorted([replica, second])  # the page did not finish its span: not paid
    assert {c["node_id"]: c["status"] for c in done["checks"]} == {failovers[0]["to"]: "ok", next(n for n, s in spans.items() if s == 1): "ok"}

    # (b) The coordinator's chain: each request paid by the requester (price + fee, burned), and
    # each node minted 0.05 ALC per request it served — nobody else, nothing more.
    txs = chain_txs(http)
    pays = {t["request"]: t for t in txs if t["type"] == "PAY_INFERENCE"}
    mints = [t for t in txs if t["type"] == "MINT_INFERENCE"]
    assert set(pays) == {rid for _, rid, _ in requests}
    for room, rid, payees in requests:
        assert pays[rid]["from"] == wallets["asker"].address
        assert pays[rid]["amount"] == price[room] and pays[rid]["fee"] == FEE
        got = sorted((t["to"], t["amount"], t["ref"]) for t in mints if t["ref"].startswith(f"request:{rid}:"))
        assert got == sorted((a, INFERENCE_REWARD_UNITS, reward_ref(rid, a)) for a in payees)
    assert len(mints) == sum(len(p) for _, _, p in requests)
    spent = sum(price[room] + FEE for room, _, _ in requests)
    earned = {a: INFERENCE_REWARD_UNITS * sum(a in p for _, _, p in requests)
              for a in (page_addr, replica, second, wallets["solo"].address)}
    n_mix = sum(room == "mix" for room, _, _ in requests)
    assert earned[page_addr] == INFERENCE_REWARD_UNITS  # the one request it served whole (not the one it dropped)
    assert earned[page_addr] + earned[replica] == earned[second] == n_mix * INFERENCE_REWARD_UNITS
    assert earned[wallets["solo"].address] == INFERENCE_REWARD_UNITS

    def spendable(a: str) -> int:
        return http.get(f"/v1/balance/{a}").json()["spendable"]
    assert spendable(wallets["asker"].address) == FUND - spent
    for a, units in earned.items():
        assert spendable(a) == units, a

    verify = run_cli("chain", "verify", "--coordinator", url)
    assert verify.returncode == 0 and verify.stdout.startswith("OK:"), verify.stdout + verify.stderr
    # The dashboard verifies the same chain in the browser (the JS rules for PAY_INFERENCE /
    # MINT_INFERENCE) and credits the page's wallet with what it earned serving.
    dash = net["ctx"].new_page()
    dash.on("pageerror", lambda e: errors.append(str(e)))
    dash.goto(f"{url}/dashboard")
    dash.wait_for_function("window.ailoDashboard && window.ailoDashboard.ready", timeout=60_000)
    d = dash.evaluate("window.ailoDashboard")
    assert d["chain"]["ok"] and not d["errors"], (d["chain"], d["errors"])
    who = {c["address"]: c for c in d["contributors"]}
    assert who[page_addr]["username"] == PAGE_USER and who[page_addr]["rewards"] == earned[page_addr]
    assert who[replica]["rewards"] == earned[replica] and who[second]["rewards"] == earned[second]
    assert not errors, errors


def test_lying_page_node_is_caught_not_paid_evicted_and_cannot_rejoin(net):
    """A page serving zeros (a browser node is anyone's code) in a room of the real coordinator:
    every request is spot-checked against the operator's checkpoint, the page is paid nothing,
    three strikes evict it and bar its wallet, and its automatic re-join is refused."""
    http, url, wallets = net["http"], net["url"], net["wallets"]
    liar = wallets["liar"].address
    page = net["ctx"].new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/dashboard")
    page.wait_for_function("window.ailoDashboard && window.ailoDashboard.ready", timeout=60_000)
    joined = page.evaluate(LIAR_JS, [LIAR_SEED, "liar"])
    assert joined["address"] == liar
    wait_rooms(http, {"liar": 1}, net["procs"], net["base"])
    page.wait_for_function("window.liar.info().status === 'serving'", timeout=60_000)
    before = len([t for t in chain_txs(http) if t["type"] == "PAY_INFERENCE"])
    rids = []
    for _ in range(3):
        tokens, info = ask(url, "liar", net["keys"]["asker2"], 4)
        assert tokens == [0] * 4  # zero logits: the garbage reaches the requester ...
        assert info["payees"] == []  # ... but is never paid
        rids.append(info["request_id"])
    view = room_view(http, "liar")
    assert view["nodes"] == [] and view["verification"]["banned"] == [liar]
    statuses = [e["status"] for e in view["verification"]["events"]]
    assert statuses == ["mismatch"] * 3 + ["evicted"], view["verification"]
    # The page notices (its next heartbeat is refused), re-joins by itself, and is refused: banned.
    page.wait_for_function("window.liar.info().status === 'closed'", timeout=30_000)
    assert "banned" in page.evaluate("window.liar.info().error")
    assert room_view(http, "liar")["nodes"] == []
    txs = chain_txs(http)
    assert not [t for t in txs if t["type"] == "MINT_INFERENCE" and t["to"] == liar]
    assert http.get(f"/v1/balance/{liar}").json()["spendable"] == 0
    pays = [t for t in txs if t["type"] == "PAY_INFERENCE"]
    assert len(pays) == before + 3 and {t["request"] for t in pays[-3:]} == set(rids)
    assert http.get(f"/v1/balance/{wallets['asker2'].address}").json()["spendable"] == \
        FUND - 3 * (INFERENCE_REWARD_UNITS + FEE)  # the requester's payments are burned, as for any request
    assert not errors, errors


def test_page_asks_a_room_and_pays_with_its_wallet(net):
    """"Ask a room" on `/`: the page's wallet signs the generate request and a PAY_INFERENCE; the
    answer equals `ailo ask`'s from the same room; the chain shows the payment and the node's mint."""
    http, url, wallets = net["http"], net["url"], net["wallets"]
    buyer = wallets["buyer"].address
    page, errors = open_page(net["ctx"], url)
    assert page.evaluate(RESTORE_JS, [BUYER_SEED, "paid_buyer"]) == buyer
    page.reload()
    page.wait_for_function("window.ailoPage && window.ailoPage.ready && window.ailoPage.balance", timeout=120_000)
    assert page.evaluate("window.ailoPage.wallet.address") == buyer
    assert page.evaluate("window.ailoPage.balance.spendable") == FUND
    wait_rooms(http, {"solo": 1}, net["procs"], net["base"])
    solo_node = wallets["solo"].address
    minted_before = http.get(f"/v1/balance/{solo_node}").json()["spendable"]

    page.select_option("#ask-room", "solo")
    assert "0.05000000 ALC + 0.01000000 ALC fee" in page.inner_text("#ask-price")
    page.fill("#ask-prompt", ", ".join(map(str, PROMPT)))
    page.fill("#ask-max", str(SHORT))
    page.click("#ask")
    page.wait_for_function("window.ailoPage.asks.length === 1", timeout=60_000)
    got = page.evaluate("window.ailoPage.asks[0]")
    assert got["error"] is None, (got, page.evaluate("window.ailoPage.errors"))
    want, _ = ask(url, "solo", net["keys"]["asker2"], SHORT)  # the same room through `ailo ask`
    assert got["tokens"] == want and got["payees"] == [solo_node]
    assert page.inner_text("#ask-output").split() == [str(t) for t in want]
    pays = [t for t in chain_txs(http) if t["type"] == "PAY_INFERENCE" and t["request"] == got["requestId"]]
    assert [(t["from"], t["amount"], t["fee"]) for t in pays] == [(buyer, INFERENCE_REWARD_UNITS, FEE)]
    mints = [t for t in chain_txs(http) if t["type"] == "MINT_INFERENCE" and t["ref"] == reward_ref(got["requestId"], solo_node)]
    assert [t["amount"] for t in mints] == [INFERENCE_REWARD_UNITS]
    assert http.get(f"/v1/balance/{solo_node}").json()["spendable"] == minted_before + 2 * INFERENCE_REWARD_UNITS
    spent = FUND - INFERENCE_REWARD_UNITS - FEE
    assert http.get(f"/v1/balance/{buyer}").json()["spendable"] == spent
    page.wait_for_function(f"window.ailoPage.balance.spendable === {spent}", timeout=30_000)
    assert "1 node wallet paid" in page.inner_text("#ask-status")

    # A registered wallet without funds (the liar's: it earned nothing) asks: 402 insufficient_funds,
    # shown on the page; nothing is written to the chain.
    page.evaluate(RESTORE_JS, [LIAR_SEED, "paid_liar"])
    page.reload()
    page.wait_for_function("window.ailoPage && window.ailoPage.ready", timeout=120_000)
    n = len(chain_txs(http))
    page.select_option("#ask-room", "solo")
    page.fill("#ask-prompt", "7, 100, 42")
    page.click("#ask")
    page.wait_for_function("window.ailoPage.asks.length === 1", timeout=60_000)
    got = page.evaluate("window.ailoPage.asks[0]")
    assert got["reason"] == "insufficient_funds" and got["tokens"] == [], got
    assert "Not enough ALC" in page.inner_text("#ask-status")
    assert len(chain_txs(http)) == n
    assert not errors, errors


def test_page_node_rides_out_a_coordinator_restart(net):
    """The coordinator process is killed (SIGKILL) and restarted on its state directory while a
    page serves a room: the page re-joins by itself with its span and weights (backing off while
    the coordinator is down), the room (restored from rooms.json) answers the same tokens, the
    page is paid again, and the chain verifies across the restart. Runs last: it restarts the
    module's coordinator."""
    http, url, base, procs = net["http"], net["url"], net["base"], net["procs"]
    want = greedy(net["model"], PROMPT, SHORT)
    page = net["ctx"].new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/dashboard")  # a new visitor: forget the wallet earlier tests left in this browser
    page.evaluate("""() => new Promise((ok, bad) => { const r = indexedDB.deleteDatabase('ailo-wallet');
      r.onsuccess = ok; r.onerror = () => bad(r.error); r.onblocked = ok; })""")
    page.goto(f"{url}/?backend=wasm")
    page.wait_for_function("window.ailoPage && window.ailoPage.ready", timeout=120_000)
    address = register(page, "rae_restart")
    page.select_option("#serve-room", "again")
    page.click("#serve")
    page.wait_for_function("window.ailoPage.node && window.ailoPage.node.status === 'serving'", timeout=60_000)
    wait_rooms(http, {"again": 1}, procs, base)
    tokens, info = ask(url, "again", net["keys"]["asker2"], SHORT)
    assert tokens == want and info["payees"] == [address]
    weights = page.evaluate("window.ailoPage.node.weights")

    stop(procs[0], signal.SIGKILL)
    procs[0] = ailo(*net["coordinator_args"], log=base / "coordinator.log")
    wait_healthy(url, procs[0], 120)
    page.wait_for_function("window.ailoPage.node.reconnects >= 1 && window.ailoPage.node.status === 'serving'",
                           timeout=90_000)
    node = page.evaluate("window.ailoPage.node")
    assert node["weights"] == weights  # the span stayed loaded: nothing downloaded again
    wait_rooms(http, {"again": 1}, procs, base)
    tokens, info = ask(url, "again", net["keys"]["asker2"], SHORT)
    assert tokens == want and info["payees"] == [address]
    assert http.get(f"/v1/balance/{address}").json()["spendable"] == 2 * INFERENCE_REWARD_UNITS
    verify = run_cli("chain", "verify", "--coordinator", url)
    assert verify.returncode == 0 and verify.stdout.startswith("OK:"), verify.stdout + verify.stderr
    assert not errors, errors
