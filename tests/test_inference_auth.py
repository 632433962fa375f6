"""Who may do what in rooms (issue 10 part 1): each attack against a real coordinator over HTTP.

Anonymous room create/delete, foreign heartbeat/leave, URL eviction, SSRF node URLs,
unsigned/forged/replayed/unregistered generate, and the per-wallet / per-address rate limits."""
from __future__ import annotations

import re

import httpx
import pytest

from ailo.server import devserver
from ailo.inference.auth import RequestVerifier, check_node_url, AuthError
from ailo.inference.plan import get_preset
from ailo.inference.rooms import RoomRegistry
from ailo.wallet import Wallet
from tests.room_helpers import operator, signed

ALICE, BOB, MALLORY = (Wallet.from_label(f"auth-{n}") for n in ("alice", "bob", "mallory"))
FP = get_preset("qwen-1.8b").model.fingerprint()


@pytest.fixture
def coord():
    registered = {ALICE.address, BOB.address, MALLORY.address}
    policy = devserver.dev_policy(None, is_registered=registered.__contains__, generate_wallet_burst=3,
                                  generate_per_wallet_per_min=6, generate_ip_burst=9,
                                  generate_per_ip_per_min=6)
    server = devserver.serve(RoomRegistry(), policy=policy)
    http = httpx.Client(base_url=server.url, timeout=10)
    assert http.post("/v1/rooms", json={"id": "q", "preset": "qwen-1.8b"}, headers=operator(server)).status_code == 201
    yield server, http
    http.close()
    server.stop()


def join(http, wallet, url="http://10.0.0.7:9000", **kw):
    return signed(http, "/v1/rooms/q/join", wallet, {"url": url, "memory": 10 ** 10, "fingerprint": FP, **kw})


def test_only_the_operator_creates_and_deletes_rooms(coord):
    server, http = coord
    body = {"id": "mine", "preset": "qwen-1.8b"}
    r = http.post("/v1/rooms", json=body)
    assert r.status_code == 401 and r.json()["reason"] == "operator_only"
    r = http.post("/v1/rooms", json=body, headers={"authorization": "Bearer guess"})
    assert r.status_code == 403 and r.json()["reason"] == "bad_operator_token"
    assert [x["id"] for x in http.get("/v1/rooms").json()] == ["q"]  # nothing was created
    r = http.delete("/v1/rooms/q")
    assert r.status_code == 401 and http.get("/v1/rooms/q").status_code == 200
    r = http.delete("/v1/rooms/q", headers={"authorization": "Bearer " + server.operator_token[:-1] + "x"})
    assert r.status_code == 403 and http.get("/v1/rooms/q").status_code == 200
    assert http.delete("/v1/rooms/q", headers=operator(server)).status_code == 200
    assert http.get("/v1/rooms/q").status_code == 404


def test_join_is_signed_and_the_reward_address_is_the_signer(coord):
    _, http = coord
    r = http.post("/v1/rooms/q/join", json={"url": "http://10.0.0.7:9000", "memory": 10 ** 10, "fingerprint": FP})
    assert r.status_code == 401 and r.json()["reason"] == "unsigned"
    r = join(http, ALICE, address=MALLORY.address)  # ask for rewards to go elsewhere
    assert r.status_code == 400 and r.json()["reason"] == "address_not_signer"
    r = join(http, ALICE)
    assert r.status_code == 200 and r.json()["address"] == ALICE.address
    assert re.fullmatch(r"[0-9a-f]{32}", r.json()["node_id"])  # 128 random bits
    node = http.get("/v1/rooms/q").json()["nodes"][0]
    assert node["address"] == ALICE.address
    stranger = Wallet.from_label("auth-unregistered")
    r = join(http, stranger, url="http://10.0.0.8:9000")
    assert r.status_code == 403 and r.json()["reason"] == "unregistered"


def test_foreign_heartbeat_and_leave_are_refused(coord):
    _, http = coord
    node_id = join(http, ALICE).json()["node_id"]
    for action in ("heartbeat", "leave"):
        r = signed(http, f"/v1/rooms/q/{action}", MALLORY, {"node_id": node_id})
        assert r.status_code == 403 and r.json()["reason"] == "not_owner"
        r = http.post(f"/v1/rooms/q/{action}", json={"node_id": node_id})
        assert r.status_code == 401
    assert [n["node_id"] for n in http.get("/v1/rooms/q").json()["nodes"]] == [node_id]
    assert signed(http, "/v1/rooms/q/heartbeat", ALICE, {"node_id": node_id}).status_code == 200
    assert signed(http, "/v1/rooms/q/leave", ALICE, {"node_id": node_id}).status_code == 200
    assert http.get("/v1/rooms/q").json()["nodes"] == []


def test_joining_with_a_live_nodes_url_does_not_evict_it(coord):
    _, http = coord
    alice = join(http, ALICE, url="http://10.0.0.7:9000").json()["node_id"]
    r = join(http, MALLORY, url="http://10.0.0.7:9000/")
    assert r.status_code == 409 and r.json()["reason"] == "url_in_use"
    assert [n["node_id"] for n in http.get("/v1/rooms/q").json()["nodes"]] == [alice]
    again = join(http, ALICE, url="http://10.0.0.7:9000").json()["node_id"]  # the owner restarting: replaced
    assert [n["node_id"] for n in http.get("/v1/rooms/q").json()["nodes"]] == [again]


def test_node_urls_must_be_public_http_unless_the_operator_allows_private_ones():
    for url in ("file:///etc/passwd", "gopher://example.org/", "http://169.254.169.254/latest/meta-data",
                "http://127.0.0.1:8400", "http://localhost:8400", "http://10.1.2.3:80", "http://[::1]:80",
                "http://192.168.1.1", "http://0.0.0.0:80", "http://user:pw@93.184.216.34/", "no-scheme"):
        with pytest.raises(AuthError) as exc:
            check_node_url(url, allow_private=False)
        assert exc.value.status == 400, url
    assert check_node_url("http://93.184.216.34:8000/", allow_private=False) == "http://93.184.216.34:8000"
    assert check_node_url("http://127.0.0.1:9", allow_private=True) == "http://127.0.0.1:9"
    with pytest.raises(AuthError):
        check_node_url("file:///etc/passwd", allow_private=True)  # never a non-http scheme


def test_ssrf_join_is_refused_by_a_public_coordinator():
    policy = devserver.dev_policy(None, allow_private_urls=False)
    server = devserver.serve(RoomRegistry(), policy=policy)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            http.post("/v1/rooms", json={"id": "q", "preset": "qwen-1.8b"}, headers=operator(server))
            for url in ("http://169.254.169.254/latest", "file:///etc/passwd", "http://127.0.0.1:1"):
                r = join(http, ALICE, url=url)
                assert r.status_code == 400 and r.json()["reason"] in ("private_node_url", "bad_node_url"), url
            assert http.get("/v1/rooms/q").json()["nodes"] == []
            assert join(http, ALICE, url="http://93.184.216.34:8000").status_code == 200
    finally:
        server.stop()


def test_generate_must_be_signed_fresh_and_registered(coord):
    _, http = coord
    path, body = "/v1/rooms/q/generate", {"input_ids": [1, 2, 3]}
    r = http.post(path, json=body)
    assert r.status_code == 401 and r.json()["reason"] == "unsigned"
    good = signed(http, path, ALICE, body, nonce="fixed-nonce-1")
    assert good.status_code == 503  # authenticated; the room is still forming
    replay = signed(http, path, ALICE, body, nonce="fixed-nonce-1")
    assert replay.status_code == 401 and replay.json()["reason"] == "replayed"
    from ailo.inference.auth import sign_request
    import json as _json
    raw = _json.dumps(body).encode()
    forged = sign_request(MALLORY, "POST", path, raw)
    forged["x-ailo-address"] = ALICE.address  # claim to be alice
    r = http.post(path, content=raw, headers={"content-type": "application/json", **forged})
    assert r.status_code == 401 and r.json()["reason"] == "bad_signature"
    tampered = sign_request(ALICE, "POST", path, raw)
    r = http.post(path, content=_json.dumps({"input_ids": [9]}).encode(),
                  headers={"content-type": "application/json", **tampered})
    assert r.status_code == 401 and r.json()["reason"] == "bad_signature"  # body hash covers the body
    old = signed(http, path, ALICE, body, timestamp_ms=1_000)
    assert old.status_code == 401 and old.json()["reason"] == "stale_timestamp"
    r = signed(http, path, Wallet.from_label("auth-unregistered"), body)
    assert r.status_code == 403 and r.json()["reason"] == "unregistered"


def test_generate_is_rate_limited_per_wallet_and_per_address(coord):
    _, http = coord
    path, body = "/v1/rooms/q/generate", {"input_ids": [1]}
    codes = [signed(http, path, BOB, body).status_code for _ in range(4)]
    assert codes[:3] == [503] * 3 and codes[3] == 429  # burst 3 per wallet
    r = signed(http, path, BOB, body)
    assert r.status_code == 429 and r.json()["reason"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
    assert signed(http, path, MALLORY, body).status_code == 503  # another wallet still has its own budget
    r = signed(http, path, ALICE, body)  # ...but this network address has a burst of 9
    codes = [r.status_code] + [signed(http, path, ALICE, body).status_code for _ in range(3)]
    assert 429 in codes and "network address" in signed(http, path, ALICE, body).json()["detail"]


def test_verifier_window_and_nonce_format():
    v = RequestVerifier(clock_ms=lambda: 10_000_000)
    from ailo.inference.auth import sign_request
    h = sign_request(ALICE, "POST", "/p", b"{}", timestamp_ms=10_000_000 + 61_000)
    with pytest.raises(AuthError, match="outside"):
        v.verify("POST", "/p", h, b"{}")
    h = sign_request(ALICE, "POST", "/p", b"{}", nonce="short", timestamp_ms=10_000_000)
    with pytest.raises(AuthError, match="nonce"):
        v.verify("POST", "/p", h, b"{}")
    h = sign_request(ALICE, "POST", "/p", b"{}", timestamp_ms=10_000_000)
    assert v.verify("POST", "/p", h, b"{}") == ALICE.address
    with pytest.raises(AuthError, match="signature"):
        v.verify("POST", "/other", sign_request(ALICE, "POST", "/p", b"{}", timestamp_ms=10_000_000), b"{}")
