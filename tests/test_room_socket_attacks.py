"""Malformed node-socket messages against a real server over a real WebSocket (issue 25.6).

On the old code a binary first message (`receive_text` → KeyError) or a deeply nested JSON one
(RecursionError) was an unhandled exception: the socket died with 1011 (internal error) instead
of a refusal, and a deeply nested message after the join killed the node's socket. Now each is a
clear `refused` (close 4400) or is ignored, and nothing is written to the room."""
from __future__ import annotations

import json
import struct

import pytest
from websockets.sync.client import connect

from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.inference.rooms import RoomRegistry
from ailo.inference.families import read_spec
from ailo.server import devserver
from ailo.wallet import Wallet
from tests.live import serve
from tests.test_room_socket import PATH, join_msg


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck") / "m"
    make_hf_checkpoint(d, "llama", layers=2)
    config, fp = json.loads((d / "config.json").read_text()), read_spec(d).fingerprint()
    rooms = RoomRegistry()
    policy = devserver.dev_policy(None)
    app = devserver.build_app(rooms, None, policy)
    with serve(app) as url:
        import httpx
        r = httpx.post(f"{url}/v1/rooms", json={"id": "r", "slots": 1, "model": config},
                       headers={"authorization": f"Bearer {policy.operator_token}"})
        assert r.status_code == 201, r.text
        yield url.replace("http://", "ws://") + PATH, rooms, fp


def _refusal(ws) -> tuple[dict, int | None]:
    msg = json.loads(ws.recv(timeout=10))
    try:
        ws.recv(timeout=10)
    except Exception:
        pass
    return msg, ws.close_code


@pytest.mark.parametrize("first", [b"\x00\x01binary", "[" * 100_000, '{"type": "join", "body": ' + "[" * 50_000])
def test_malformed_first_messages_are_refused_and_leave_nothing(server, first):
    url, rooms, _ = server
    with connect(url) as ws:
        ws.send(first)
        msg, code = _refusal(ws)
    assert msg["type"] == "refused" and msg["reason"] == "bad_message" and code == 4400, (msg, code)
    assert rooms.get("r").nodes == {}


def test_junk_after_the_join_is_ignored_and_the_socket_stays_usable(server):
    url, rooms, fp = server
    w = Wallet.from_label("socket-attacker")
    with connect(url) as ws:
        ws.send(join_msg(w, {"memory": 10 ** 9, "fingerprint": fp}, nonce="j" * 16))
        assert json.loads(ws.recv(timeout=10))["type"] == "joined"
        ws.send("[" * 100_000)                                       # nested too deep
        ws.send(json.dumps({"type": "heartbeat", "loaded": [True, 10 ** 40]}))  # wrong types: no span claimed
        ws.send(struct.pack("<I", 12345) + b"an answer to no frame")  # unsolicited / replayed frame
        ws.send(json.dumps({"type": "error", "seq": True, "status": 409}))
        span = json.loads(ws.recv(timeout=10))
        assert span["type"] == "span", span
        ws.send(json.dumps({"type": "heartbeat", "loaded": None}))
        assert json.loads(ws.recv(timeout=10))["type"] == "span"    # still the node's socket
        node = next(iter(rooms.get("r").nodes.values()))
        assert node.loaded is None and node.address == w.address
    import time
    for _ in range(50):
        if not rooms.get("r").nodes:
            break
        time.sleep(0.1)
    assert rooms.get("r").nodes == {}  # closing the socket left the room
