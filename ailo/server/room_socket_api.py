"""Browser nodes join rooms over a WebSocket they open (issue 16): `/v1/rooms/{id}/node-socket`.

    hub = SocketHub()
    app.include_router(make_rooms_router(rooms, rewards, policy=policy, client_factory=lambda: RoutingNodeClient(hub)))
    app.include_router(make_room_socket_router(rooms, hub, policy))

The first message must be a signed join (browsers cannot set headers on a WebSocket, so the
four `X-Ailo-*` values ride in the message): the wallet signs the rooms API line
(`ailo.inference.auth`) with method `JOIN`, the socket's path and the sha256 of `body`:

    {"type": "join", "body": "{\\"memory\\": 1000000000, \\"fingerprint\\": \\"…\\"}",
     "address": "ailo1…", "nonce": "…", "timestamp": 1764…, "signature": "…"}

The same rules as `POST /join` apply (registered signer, replay window, per-address join rate);
the node's URL is `browser://<socket id>`, chosen by the coordinator, so no URL check is
needed. Afterwards the socket is the node's: `heartbeat` {loaded} messages keep it alive and
return its span; frames flow as described in `ailo/inference/socket_nodes.py`; closing the
socket leaves the room (and fails the frames in flight, so generations fail over).
"""
from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field, ValidationError

from ailo.inference.auth import AuthError, RateLimiter, RequestVerifier
from ailo.inference.rooms import RoomError, RoomRegistry
from ailo.inference.socket_nodes import SCHEME, SocketHub
from ailo.server.errors import ApiError
from ailo.server.limits import parse_json
from ailo.server.rooms_api import RoomPolicy

JOIN_TIMEOUT_S = 30.0


class SocketJoin(BaseModel):
    memory: int = Field(ge=1, le=2 ** 53)
    fingerprint: str = Field(max_length=128)


def _message(text: str) -> object | None:
    """A page's JSON text message, depth-limited like every JSON body (None: not JSON)."""
    try:
        return parse_json(text.encode("utf-8", "replace"))
    except ApiError:
        return None


def make_room_socket_router(rooms: RoomRegistry, hub: SocketHub, policy: RoomPolicy) -> APIRouter:
    router = APIRouter(prefix="/v1/rooms", tags=["rooms"])
    verifier = RequestVerifier()
    joins_per_ip = RateLimiter(policy.join_per_ip_per_min, policy.join_ip_burst, "network address")

    def authenticate(ws: WebSocket, first: dict) -> tuple[str, SocketJoin]:
        text = first.get("text")
        if text is None:
            raise AuthError(400, "bad_message", "the first message must be a JSON join (text), not binary")
        msg = _message(text)
        if msg is None:
            raise AuthError(400, "bad_message", "the first message must be a JSON join")
        if not isinstance(msg, dict) or msg.get("type") != "join" or not isinstance(msg.get("body"), str):
            raise AuthError(400, "bad_message", "the first message must be {type: 'join', body: '<json>', …}")
        headers = {"x-ailo-address": str(msg.get("address") or ""), "x-ailo-nonce": str(msg.get("nonce") or ""),
                   "x-ailo-timestamp": str(msg.get("timestamp") or ""), "x-ailo-signature": str(msg.get("signature") or "")}
        raw = msg["body"].encode()
        signer = verifier.verify("JOIN", ws.url.path, headers, raw)
        if policy.is_registered is not None and not policy.is_registered(signer):
            raise AuthError(403, "unregistered", f"wallet {signer} is not registered")
        return signer, SocketJoin.model_validate_json(raw)

    @router.websocket("/{room_id}/node-socket")
    async def node_socket(ws: WebSocket, room_id: str) -> None:
        await ws.accept()
        lock = asyncio.Lock()

        async def send_bytes(data: bytes) -> None:
            async with lock:
                await ws.send_bytes(data)

        async def send_text(text: str) -> None:
            async with lock:
                await ws.send_text(text)

        sid = hub.open(asyncio.get_running_loop(), send_bytes, send_text)
        node_id = signer = None
        try:
            try:
                joins_per_ip.take(ws.client.host if ws.client else "unknown")
                first = await asyncio.wait_for(ws.receive(), JOIN_TIMEOUT_S)
                if first["type"] == "websocket.disconnect":
                    return
                signer, body = authenticate(ws, first)
                node = rooms.join(room_id, url=SCHEME + sid, memory=body.memory, fingerprint=body.fingerprint,
                                  address=signer)
            except (AuthError, RoomError, ValidationError, asyncio.TimeoutError) as exc:
                reason = getattr(exc, "reason", "invalid_body" if isinstance(exc, ValidationError) else "join_timeout")
                await send_text(json.dumps({"type": "refused", "reason": reason,
                                            "status": getattr(exc, "status", 400), "detail": str(exc)[:1000]}))
                await ws.close(code=4400)
                return
            node_id = node.node_id
            span = rooms.get(room_id).span_of(node)
            await send_text(json.dumps({"type": "joined", "node_id": node_id, "room": room_id, "address": signer,
                                        "span": span.to_dict() if span else None,
                                        "heartbeat_interval": rooms.heartbeat_interval,
                                        "heartbeat_timeout": rooms.heartbeat_timeout}))
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                if msg.get("bytes") is not None:
                    hub.answer(sid, msg["bytes"])
                    continue
                m = _message(msg.get("text") or "")
                if not isinstance(m, dict):  # junk (not JSON, nested too deep): ignored, the socket stays
                    continue
                if m.get("type") == "heartbeat":
                    loaded = m.get("loaded")
                    ok = isinstance(loaded, list) and len(loaded) == 2 and \
                        all(type(v) is int and 0 <= v < 2 ** 31 for v in loaded)
                    try:
                        node = rooms.heartbeat(room_id, node_id, tuple(loaded) if ok else None, owner=signer)
                    except RoomError as exc:  # forgotten (room deleted): this socket is done
                        await send_text(json.dumps({"type": "refused", "reason": exc.reason, "status": exc.status,
                                                    "detail": str(exc)}))
                        break
                    span = rooms.get(room_id).span_of(node)
                    await send_text(json.dumps({"type": "span", "span": span.to_dict() if span else None,
                                                "state": rooms.state(rooms.get(room_id))}))
                elif m.get("type") == "error" and type(m.get("seq")) is int and type(m.get("status")) is int:
                    hub.refuse(sid, m["seq"], m["status"], str(m.get("detail", ""))[:1000])
        except WebSocketDisconnect:
            pass
        finally:
            hub.close(sid, "socket closed")
            if node_id is not None:
                try:
                    rooms.leave(room_id, node_id, owner=signer)
                except RoomError:
                    pass

    return router
