"""HTTP router: happy paths and every kind of bad input (4xx, nothing written)."""
from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ailo.ledger import FEE, UNIT, verify_chain
from ailo.ledger.client import LedgerClient
from ailo.ledger.tx import register_tx, transfer_tx
from ailo.wallet import Wallet

from ledger_helpers import FakeClock, join, report, send, service, wallet


@pytest.fixture
def api():
    clock = FakeClock()
    svc = service(clock=clock)
    app = FastAPI()
    from ailo.server.errors import install_error_handlers
    from ailo.server.ledger_api import make_ledger_router
    install_error_handlers(app)  # ledger refusals are answered by the app's one error mapping
    app.include_router(make_ledger_router(svc))
    alice, bob, carol = wallet("alice"), wallet("bob"), wallet("carol")
    for w in (alice, bob, carol):
        join(svc, w)
    return TestClient(app), svc, alice, bob, carol


def fingerprint(svc) -> tuple:
    s = svc.state()
    return (s.height, s.tip_hash, dict(s.spendable), dict(s.pending_in), dict(s.nonces),
            dict(s.names), len(svc.chain()))


def test_register_transfer_balance_chain(api) -> None:
    client, svc, alice, bob, _ = api
    dana = Wallet.from_label("dana")
    r = client.post("/v1/register", json=register_tx(dana, "dana", svc.clock()).to_json())
    assert r.status_code == 200 and r.json()["type"] == "REGISTER"
    dup = client.post("/v1/register",
                      json=register_tx(Wallet.from_label("x"), "dana", svc.clock()).to_json())
    assert dup.status_code == 409 and dup.json()["detail"].startswith("username_taken")
    r = client.post("/v1/transfers", json=send(svc, alice, bob, UNIT // 10))
    assert r.status_code == 200
    bal = client.get(f"/v1/balance/{alice.address}").json()
    assert bal["spendable"] == UNIT // 2 - UNIT // 10 - FEE and bal["next_nonce"] == 2
    assert client.get(f"/v1/balance/{bob.address}").json()["pending"] == UNIT // 10
    page = client.get("/v1/chain", params={"from": 2, "limit": 3}).json()
    assert [b["height"] for b in page["blocks"]] == [2, 3, 4]
    assert page["height"] == svc.info()["height"]
    chain = LedgerClient("http://test", client).fetch_chain(page=4)
    assert len(chain) == page["height"] + 1 and verify_chain(chain, now=svc.clock()).ok
    assert client.get("/v1/ledger/info").json()["supply"] == svc.state().supply


def test_report_reaching_quorum_reverses(api) -> None:
    client, svc, alice, bob, carol = api
    pay = client.post("/v1/transfers", json=send(svc, alice, wallet("eve"), 1000)).json()
    first = client.post("/v1/reports", json=report(svc, bob, pay["txid"])).json()
    assert first["status"] == "REPORTED"
    second = client.post("/v1/reports", json=report(svc, carol, pay["txid"])).json()
    assert second["status"] == "REVERSED" and second["reversal_txid"]
    mint = svc.chain()[2]["txs"][0]
    from ailo.ledger.tx import Transaction
    r = client.post("/v1/reports", json=report(svc, bob, Transaction.from_json(mint).txid))
    assert r.status_code == 409 and r.json()["detail"].startswith("not_reversible")


def bad_inputs(svc, alice, bob):
    ok = send(svc, alice, bob, 1000)
    other = Wallet.from_label("mallory")
    typo = bob.address[:-1] + ("0" if bob.address[-1] != "0" else "1")
    forged = {**ok, "signature": other.sign(b"whatever")}
    no_sig = {k: v for k, v in ok.items() if k != "signature"}
    yield "forged signature", forged, 401, "bad_signature"
    yield "missing signature", no_sig, 401, "bad_signature"
    yield "wrong checksum", {**ok, "to": typo}, 400, "bad_address"
    yield "zero amount", {**ok, "amount": 0}, 400, "bad_amount"
    yield "negative amount", {**ok, "amount": -1000}, 400, "bad_amount"
    yield "oversized amount", {**ok, "amount": 10**15}, 400, "bad_amount"
    yield "float amount", {**ok, "amount": 0.5}, 400, "malformed"
    yield "huge int", {**ok, "nonce": 2**64}, 400, "malformed"
    yield "extra field", {**ok, "memo": "hi"}, 400, "malformed"
    yield "wrong fee", {**ok, "fee": 1}, 400, "bad_amount"
    yield "wrong type", {**ok, "type": "MINT_TRAINING"}, 400, "bad_type"
    yield "not an object", [ok], 400, "malformed"
    yield "insufficient", send(svc, alice, bob, 10 * UNIT), 400, "insufficient_funds"
    yield "self transfer", send(svc, alice, alice, 1000), 400, "self_transfer"
    yield "future timestamp", transfer_tx(alice, bob.address, 1000, 1,
                                          svc.clock() + 3_600_000).to_json(), 400, \
        "future_timestamp"
    yield "nonce gap", send(svc, alice, bob, 1000, nonce=3), 409, "bad_nonce"


def test_bad_transfers_are_refused_and_write_nothing(api) -> None:
    client, svc, alice, bob, _ = api
    before = fingerprint(svc)
    for name, body, status, code in bad_inputs(svc, alice, bob):
        r = client.post("/v1/transfers", json=body)
        assert r.status_code == status, (name, r.text)
        assert r.json()["detail"].startswith(code + ":"), (name, r.text)
        assert fingerprint(svc) == before, name
    # replayed nonce: the first submission is accepted, the replay refused
    tx = send(svc, alice, bob, 1000)
    assert client.post("/v1/transfers", json=tx).status_code == 200
    after = fingerprint(svc)
    r = client.post("/v1/transfers", json=tx)
    assert r.status_code == 409 and "replayed" in r.json()["detail"]
    assert fingerprint(svc) == after


@pytest.mark.parametrize("path", ["/v1/transfers", "/v1/reports", "/v1/register"])
@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b"x" * 20000])
def test_malformed_bodies(api, path, body) -> None:
    client, svc, *_ = api
    before = fingerprint(svc)
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code in (400, 413)
    assert r.json()["detail"].split(":")[0] in ("malformed", "too_large")
    assert fingerprint(svc) == before


def test_bad_reports_and_registrations(api) -> None:
    client, svc, alice, bob, _ = api
    before = fingerprint(svc)
    ghost = Wallet.from_label("ghost")
    pay = send(svc, alice, bob, 1000)
    cases = [
        ("/v1/reports", report(svc, ghost, "ab" * 32), 403, "unregistered"),
        ("/v1/reports", report(svc, bob, "ab" * 32), 409, "unknown_tx"),
        ("/v1/reports", {**report(svc, bob, "ab" * 32), "target": "xyz"}, 400, "malformed"),
        ("/v1/reports", pay, 400, "bad_type"),
        ("/v1/register", {**register_tx(ghost, "ghost", svc.clock()).to_json(),
                          "username": "No Caps"}, 400, "malformed"),
        ("/v1/register", {**register_tx(ghost, "ghost", svc.clock()).to_json(),
                          "username": "ghost2"}, 401, "bad_signature"),
        ("/v1/register", register_tx(alice, "alice-again", svc.clock()).to_json(), 409,
         "already_registered"),
    ]
    for path, body, status, code in cases:
        r = client.post(path, json=body)
        assert (r.status_code, r.json()["detail"].split(":")[0]) == (status, code), r.text
        assert fingerprint(svc) == before


def test_balance_of_bad_address(api) -> None:
    client, _, alice, _, _ = api
    r = client.get(f"/v1/balance/{alice.address[:-1]}x")
    assert r.status_code == 400 and r.json()["detail"].startswith("bad_address")
    assert client.get("/v1/chain", params={"from": -1}).status_code == 422


def test_cli_chain_verify_against_a_coordinator(api, monkeypatch, tmp_path, capsys) -> None:
    from ailo.cli import chain as chain_cli
    from ailo.cli.main import main
    client, svc, alice, bob, _ = api
    client.post("/v1/transfers", json=send(svc, alice, bob, 1000))
    monkeypatch.setattr(chain_cli, "client_for", lambda url: LedgerClient(url, client))
    saved = tmp_path / "chain.json"
    assert main(["chain", "verify", "--coordinator", "http://coord", "--save", str(saved),
                 "--now", str(svc.clock())]) == 0
    height = svc.info()["height"]
    assert capsys.readouterr().out.startswith(f"OK: height {height}, {height + 1} blocks, 7 ")
    assert main(["chain", "verify", "--file", str(saved), "--now", str(svc.clock())]) == 0
    monkeypatch.setattr(chain_cli, "client_for",
                        lambda url: LedgerClient("http://127.0.0.1:9", timeout=0.5))
    assert main(["chain", "verify", "--coordinator", "http://127.0.0.1:9"]) == 2
    assert "cannot reach" in capsys.readouterr().err
