"""The API contract (issue 14): no 5xx on bad input, limits before work, one error shape,
rate limits junk cannot use up. Every request goes through the real coordinator app."""
from __future__ import annotations

import asyncio
import hashlib

import pytest
from fastapi.testclient import TestClient

from ailo.federation.coordinator.coordinator import CoordinatorConfig
from ailo.federation.core.signing import sign_update
from ailo.federation.core.update_format import UpdateMeta, encode_update
from ailo.federation.core.validate import ValidationConfig
from ailo.inference.auth import load_operator_token, sign_request
from ailo.inference.plan import PRESETS
from ailo.ledger.client import LedgerClient, LedgerHTTPError
from ailo.ledger.tx import register_tx, transfer_tx
from ailo.ledger.verify import now_ms
from ailo.server.limits import LEDGER_TX_BYTES, MAX_JSON_DEPTH, SMALL_JSON_BYTES, JsonDepthScanner, JsonTooDeep
from ailo.server.services import ServiceConfig, build_app
from ailo.wallet import Wallet
from tests.room_helpers import signed

BIG = 2**63          # one past int64
READ_BUFFER = 64 * 1024   # what uvicorn (h11) hands the app per read


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    app = build_app(CoordinatorConfig(min_updates=2, val_batches=1), tmp_path_factory.mktemp("coord"),
                    ServiceConfig(validation=ValidationConfig(registrations_per_hour=1000)))
    return app, TestClient(app, raise_server_exceptions=False)


def refused(r, status: int | None = None, reason: str | None = None, mentions: str = "") -> dict:
    """A 4xx in the contract's error shape."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    if status is not None:
        assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"] and isinstance(body["reason"], str), body
    if reason is not None:
        assert body["reason"] == reason, body
    assert mentions in body["detail"], body
    return body


def state(app) -> tuple:
    """What a refused request must never change: ledger tip and balances, round and model version."""
    s = app.state.ledger.state()
    coord = app.state.coordinator
    return (s.height, s.tip_hash, dict(s.spendable), dict(s.pending_in), dict(s.nonces), dict(s.names),
            coord.current_round().id, coord.version, len(coord.store.updates(status="accepted")))


# -- the six inputs that were HTTP 500 -------------------------------------------------------

def test_huge_samples_on_unsigned_update(tmp_path) -> None:
    app = build_app(CoordinatorConfig(min_updates=2, val_batches=1), tmp_path, ServiceConfig(proof_of_contribution=False))
    client = TestClient(app, raise_server_exceptions=False)
    before = state(app)
    meta = UpdateMeta("alice", 1, 0, BIG, 5.0)
    r = client.post("/v1/updates", content=b"x" * 100, headers=meta.to_headers())
    refused(r, 400, "bad_field", "X-Ailo-Samples")
    assert state(app) == before


def test_huge_nonce_on_signed_update(coordinator) -> None:
    app, client = coordinator
    w = Wallet.from_label("contract/nonce")
    assert client.post("/v1/register", json=register_tx(w, "noncey", now_ms()).to_json()).status_code == 200
    body = encode_update({k: v * 0 for k, v in app.state.coordinator.model.state_dict().items()})
    before = state(app)
    meta = sign_update(w, UpdateMeta("noncey", 1, 0, 8, 5.0), hashlib.sha256(body).hexdigest(), nonce=BIG)
    refused(client.post("/v1/updates", content=body, headers=meta.to_headers()), 400, "bad_field", "X-Ailo-Nonce")
    assert state(app) == before


def test_chain_from_past_int64(coordinator) -> None:
    _, client = coordinator
    body = refused(client.get("/v1/chain", params={"from": BIG}), 422, "bad_field", "from")
    assert body["fields"] == ["from (query)"]
    assert client.get("/v1/chain", params={"from": BIG - 1}).json()["blocks"] == []
    refused(client.get(f"/v1/updates/{BIG}"), 422, "bad_field", "update_id")   # same edge on the verdict route
    refused(client.get(f"/v1/updates/{BIG - 1}"), 404)


@pytest.mark.parametrize("path", ["/v1/register", "/v1/transfers", "/v1/reports", "/v1/tasks", "/v1/rooms"])
def test_deeply_nested_json(coordinator, path) -> None:
    app, client = coordinator
    before = state(app)
    deep = b"[" * 7000 + b"]" * 7000
    op = {"authorization": f"Bearer {load_operator_token(app.state.coordinator.store.dir)}"}  # rooms: auth first
    refused(client.post(path, content=deep, headers={"content-type": "application/json", **op}), 400, "malformed",
            f"deeper than {MAX_JSON_DEPTH}")
    untyped = client.post(path, content=deep, headers=op)   # the ledger parses any body; others want JSON typed
    refused(untyped, 400 if path in ("/v1/register", "/v1/transfers", "/v1/reports") else 422, mentions="")
    assert state(app) == before


def test_generate_in_a_room_with_a_garbage_tokenizer(coordinator) -> None:
    app, client = coordinator
    preset = next(iter(PRESETS.values()))
    op = {"authorization": f"Bearer {load_operator_token(app.state.coordinator.store.dir)}"}
    refused(client.post("/v1/rooms", json={"id": "garbage", "preset": preset.name, "tokenizer": "{not json"},
                        headers=op), 400, "bad_tokenizer")
    # a room that got a bad tokenizer some other way still answers 4xx, not 500
    app.state.rooms.create_room("garbage2", preset.model, preset.nodes, tokenizer="{not json")
    asker = Wallet.from_label("contract/asker")
    assert client.post("/v1/register", json=register_tx(asker, "asker", now_ms()).to_json()).status_code == 200
    r = signed(client, "/v1/rooms/garbage2/generate", asker, {"prompt": "hello", "stream": False})
    refused(r, 400, "bad_tokenizer", "tokenizer")


def test_signed_rooms_request_to_a_non_ascii_path(coordinator) -> None:
    """Found by the fuzzer: the signed line is ASCII, so a room path with other characters was a 500."""
    _, client = coordinator
    asker = Wallet.from_label("contract/asker2")
    assert client.post("/v1/register", json=register_tx(asker, "asker2", now_ms()).to_json()).status_code == 200
    headers = {"content-type": "application/json", **sign_request(asker, "POST", "/v1/rooms/%C3%BF/join", b"{}")}
    refused(client.post("/v1/rooms/\u00ff/join", content=b"{}", headers=headers), 404, "not_found")


# -- limits before work --------------------------------------------------------------------

def asgi_post(app, path: str, total: int, content_length: bool, extra: dict | None = None) -> tuple[int, int, bytes]:
    """POST `total` bytes in READ_BUFFER pieces straight into the ASGI app; returns (status,
    bytes the app pulled, response body). The body is generated lazily, never held in memory."""
    pulled, out = 0, []
    pieces = iter(range(0, total, READ_BUFFER))

    async def receive():
        nonlocal pulled
        start = next(pieces, None)
        if start is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        piece = b"7" * min(READ_BUFFER, total - start)
        pulled += len(piece)
        return {"type": "http.request", "body": piece, "more_body": start + READ_BUFFER < total}

    async def send(message):
        out.append(message)

    headers = [(b"content-type", b"application/json")] + [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    if content_length:
        headers.append((b"content-length", str(total).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("10.9.8.7", 5000), "server": ("coordinator", 80)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in out if m["type"] == "http.response.start")
    return start["status"], pulled, b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")


@pytest.mark.parametrize("path,limit", [("/v1/register", LEDGER_TX_BYTES), ("/v1/transfers", LEDGER_TX_BYTES),
                                        ("/v1/tasks", SMALL_JSON_BYTES), ("/v1/updates", None)])
def test_200_mb_body_is_refused_after_the_limit_plus_one_read(coordinator, path, limit) -> None:
    app, _ = coordinator
    if limit is None:
        from ailo.federation.core.update_format import max_update_bytes
        limit = max_update_bytes(app.state.coordinator.manifest)
    before = state(app)
    headers = UpdateMeta("alice", 1, 0, 8, 5.0).to_headers()
    status, pulled, body = asgi_post(app, path, 200 * 1024 * 1024, False, headers)   # chunked: must count
    assert status == 413 and b'"reason":"too_large"' in body, body
    assert limit < pulled <= limit + READ_BUFFER, (pulled, limit)
    status, pulled, body = asgi_post(app, path, 200 * 1024 * 1024, True, headers)    # declared: no read at all
    assert status == 413 and pulled == 0 and b"too_large" in body, body
    assert state(app) == before


def test_routes_without_their_own_limit_get_the_default(coordinator) -> None:
    from ailo.server.limits import DEFAULT_BODY_BYTES
    app, _ = coordinator
    status, pulled, body = asgi_post(app, "/v1/status", 4 * DEFAULT_BODY_BYTES, False)   # a GET route: never read
    assert (status, pulled) == (405, 0) and b'"reason":"method_not_allowed"' in body, body
    status, pulled, body = asgi_post(app, "/v1/nowhere", 4 * DEFAULT_BODY_BYTES, True)   # declared: refused unread
    assert (status, pulled) == (413, 0) and b'"reason":"too_large"' in body and b"1048576" in body, body


def test_json_depth_scanner_counts_structure_not_strings() -> None:
    scanner = JsonDepthScanner(3)
    for piece in (b'{"a": "[[[[[{{{{\\"", "b": [[', b'1]], "c": "\\\\"', b', "d": {"e": "]]]][[[["}}'):
        scanner.feed(piece)   # strings with brackets and escaped quotes/backslashes, split across pieces
    assert scanner.depth == 0 and not scanner.in_string
    with pytest.raises(JsonTooDeep):
        JsonDepthScanner(3).feed(b'{"a": [[{"b": 1}]]}')


def test_integer_headers_are_range_checked_and_named(coordinator) -> None:
    _, client = coordinator
    good = UpdateMeta("alice", 1, 0, 8, 5.0).to_headers()
    for header, value in [("X-Ailo-Round", str(BIG)), ("X-Ailo-Base-Version", "-1"), ("X-Ailo-Timestamp", str(2**70)),
                          ("X-Ailo-Round", "1e3")]:
        refused(client.post("/v1/updates", content=b"x", headers={**good, header: value}), 400, "bad_field", header)
    refused(client.post("/v1/tasks", json={"client_id": ""}), 422, "bad_field", "client_id")


def test_device_header_is_bounded_printable_ascii(coordinator) -> None:
    """X-Ailo-Device (what trained the update, shown on the dashboard) is free text a client picks:
    at most 128 printable ASCII characters, else 400 before the body is read."""
    _, client = coordinator
    good = UpdateMeta("alice", 1, 0, 8, 5.0).to_headers()
    for value in ["x" * 129, "webgpu\tnvidia", "<script>\x7f"]:
        refused(client.post("/v1/updates", content=b"x", headers={**good, "X-Ailo-Device": value}), 400, "bad_field",
                "X-Ailo-Device")
    assert UpdateMeta.from_headers({**good, "X-Ailo-Device": "webgpu - nvidia hopper"}).device == "webgpu - nvidia hopper"


# -- one error shape everywhere ----------------------------------------------------------

def test_every_router_answers_in_the_error_shape(coordinator) -> None:
    _, client = coordinator
    refused(client.get("/v1/nowhere"), 404, "not_found")
    refused(client.delete("/v1/chain"), 405, "method_not_allowed")
    refused(client.get("/v1/chunks/nothex"), 400)
    refused(client.get("/v1/rooms/none"), 404)
    refused(client.post("/v1/tasks", content=b"{", headers={"content-type": "application/json"}), 422, "malformed")
    stranger = Wallet.from_label("contract/stranger")
    b = refused(client.post("/v1/transfers", json=transfer_tx(stranger, stranger.address, 5, 1, now_ms()).to_json()),
                reason="self_transfer")
    assert b["detail"].startswith("self_transfer: ")          # the ledger's historical form is kept
    with pytest.raises(LedgerHTTPError) as err:                # and its client still reads the code
        LedgerClient("http://coordinator", client).register([])
    assert err.value.code == "malformed"


# -- junk cannot use up an address's allowance ---------------------------------------------

def test_malformed_registrations_do_not_use_up_the_allowance(tmp_path) -> None:
    svc = ServiceConfig(validation=ValidationConfig(registrations_per_hour=3), ip_junk_burst=5, ip_junk_per_minute=1)
    app = build_app(CoordinatorConfig(min_updates=2, val_batches=1), tmp_path, svc)
    client = TestClient(app, raise_server_exceptions=False)
    junk = [b"{not json", b"[" * 100 + b"]" * 100, b"x" * 20_000, b'{"type": 5}', b"[]"]
    answers = [client.post("/v1/register", content=junk[i % len(junk)],
                           headers={"content-type": "application/json"}).status_code for i in range(12)]
    assert answers[:5] == [400, 400, 413, 400, 400] and set(answers[5:]) == {429}, answers
    for name in ("first", "second", "third"):            # the whole allowance is still there
        w = Wallet.from_label(f"contract/{name}")
        r = client.post("/v1/register", json=register_tx(w, name, now_ms()).to_json())
        assert r.status_code == 200, r.text
    w = Wallet.from_label("contract/fourth")
    refused(client.post("/v1/register", json=register_tx(w, "fourth", now_ms()).to_json()), 429, "rate_limited")
