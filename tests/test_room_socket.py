"""Browser-node sockets (`/v1/rooms/{id}/node-socket`): signed join, heartbeats, frames, refusals."""
from __future__ import annotations

import hashlib
import json
import struct
import threading

import pytest
from fastapi.testclient import TestClient

from ailo.server import devserver
from ailo.inference.auth import request_message
from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.inference.rooms import RoomRegistry
from ailo.inference.families import read_spec
from ailo.inference.transport import CacheMiss, NodeUnavailable
from ailo.wallet import Wallet
from tests.room_helpers import operator

PATH = "/v1/rooms/r/node-socket"


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck") / "m"
    make_hf_checkpoint(d, "llama", layers=2)
    return json.loads((d / "config.json").read_text()), read_spec(d).fingerprint()


@pytest.fixture()
def app(config):
    rooms = RoomRegistry()
    policy = devserver.dev_policy(None, is_registered=lambda a: a != Wallet.from_label("stranger").address)
    app = devserver.build_app(rooms, None, policy)
    with TestClient(app) as c:
        r = c.post("/v1/rooms", json={"id": "r", "slots": 1, "model": config[0]},
                   headers={"authorization": f"Bearer {policy.operator_token}"})
        assert r.status_code == 201
        c.rooms, c.hub = rooms, app.state.socket_hub
        yield c


def join_msg(wallet: Wallet, body: dict, nonce: str = "n" * 16, ts: int | None = None, path: str = PATH) -> str:
    import time
    raw = json.dumps(body)
    ts = ts or int(time.time() * 1000)
    sig = wallet.sign(request_message("JOIN", path, wallet.address, nonce, ts, hashlib.sha256(raw.encode()).hexdigest()))
    return json.dumps({"type": "join", "body": raw, "address": wallet.address, "nonce": nonce, "timestamp": ts,
                       "signature": sig})


def refused(app, text: str) -> dict:
    with app.websocket_connect(PATH) as ws:
        ws.send_text(text)
        return ws.receive_json()


def test_join_refusals(app, config):
    fp = config[1]
    w = Wallet.from_label("page")
    good = {"memory": 10 ** 9, "fingerprint": fp}
    assert refused(app, "hello")["reason"] == "bad_message"
    forged = json.loads(join_msg(w, good))
    forged["address"] = Wallet.from_label("other").address
    assert refused(app, json.dumps(forged))["reason"] == "bad_signature"
    assert refused(app, join_msg(w, good, path="/v1/rooms/r/join"))["reason"] == "bad_signature"  # another route's line
    assert refused(app, join_msg(w, good, ts=1))["reason"] == "stale_timestamp"
    assert refused(app, join_msg(Wallet.from_label("stranger"), good))["reason"] == "unregistered"
    m = refused(app, join_msg(w, dict(good, fingerprint="0" * 16), nonce="a" * 16))
    assert m["type"] == "refused" and m["status"] == 409 and "does not match" in m["detail"]
    assert refused(app, join_msg(w, {"memory": -1, "fingerprint": fp}, nonce="b" * 16))["reason"] == "invalid_body"
    with app.websocket_connect(PATH) as ws:
        ws.send_text(join_msg(w, good, nonce="c" * 16))
        assert ws.receive_json()["type"] == "joined"
    assert refused(app, join_msg(w, good, nonce="c" * 16))["reason"] == "replayed"
    assert app.rooms.get("r").nodes == {}  # every refused or closed socket left nothing behind


def test_frames_flow_and_close_fails_over(app, config):
    w = Wallet.from_label("page")
    with app.websocket_connect(PATH) as ws:
        ws.send_text(join_msg(w, {"memory": 10 ** 9, "fingerprint": config[1]}))
        joined = ws.receive_json()
        assert joined["type"] == "joined" and joined["address"] == w.address and joined["span"]["start"] == 0
        node = app.rooms.get("r").nodes[joined["node_id"]]
        assert node.url.startswith("browser://") and node.address == w.address
        ws.send_text(json.dumps({"type": "heartbeat", "loaded": [0, 4]}))
        assert ws.receive_json() == {"type": "span", "span": joined["span"], "state": "ready"}
        sid = node.url[len("browser://"):]

        results: dict = {}

        def call(key: str, body: bytes) -> None:
            try:
                results[key] = app.hub.forward(sid, body, 5.0)
            except Exception as exc:  # noqa: BLE001 - the test inspects the type
                results[key] = exc

        t = threading.Thread(target=call, args=("ok", b"FRAME-1"))
        t.start()
        msg = ws.receive_bytes()
        seq = struct.unpack_from("<I", msg)[0]
        assert msg[4:] == b"FRAME-1"
        ws.send_bytes(struct.pack("<I", seq) + b"ANSWER")
        t.join()
        assert results["ok"] == b"ANSWER"

        t = threading.Thread(target=call, args=("miss", b"FRAME-2"))
        t.start()
        seq = struct.unpack_from("<I", ws.receive_bytes())[0]
        ws.send_text(json.dumps({"type": "error", "seq": seq, "status": 409, "detail": "lost"}))
        t.join()
        assert isinstance(results["miss"], CacheMiss)

        app.hub.release(sid, "req-1")
        assert ws.receive_json() == {"type": "release", "request_id": "req-1"}

        t = threading.Thread(target=call, args=("closed", b"FRAME-3"))
        t.start()
        ws.receive_bytes()
    t.join()  # the socket closed with the frame in flight
    assert isinstance(results["closed"], NodeUnavailable) and "disconnected" in str(results["closed"])
    assert app.rooms.get("r").nodes == {}
    with pytest.raises(NodeUnavailable):
        app.hub.forward(sid, b"x", 1.0)
