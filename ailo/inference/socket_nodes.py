"""Nodes behind a WebSocket the node opened (browser pages): the coordinator calls out over it.

A browser cannot accept connections, so a page node opens `/v1/rooms/{id}/node-socket` and
joins over it (`ailo/server/room_socket_api.py`); its room URL is `browser://<socket id>`.
`SocketHub` keeps the open sockets; `forward()` — called from a generation's worker thread —
sends one activation frame (`wire.Frame` bytes, unchanged) prefixed by a u32 sequence number
and waits for the answer with the same number, so the hop logic of `generate.py` treats a page
like any node: the same `NodeUnavailable` on timeout or a closed socket (→ failover to a
replica), `CacheMiss` on 409 (→ rebuild in place), the same frame checks and rewards.

Socket envelope (binary messages, both directions): u32 little-endian sequence number, then
the frame. Text messages are JSON: page → coordinator `join` / `heartbeat` / `error`
{seq, status, detail}; coordinator → page `joined` / `span` / `release` {request_id} / `refused`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import secrets
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ailo.inference.transport import CacheMiss, HttpNodeClient, NodeUnavailable

SCHEME = "browser://"
SEQ = struct.Struct("<I")


@dataclass
class _Socket:
    loop: asyncio.AbstractEventLoop
    send_bytes: Callable[[bytes], Awaitable[None]]
    send_text: Callable[[str], Awaitable[None]]
    pending: dict[int, concurrent.futures.Future] = field(default_factory=dict)
    seq: itertools.count = field(default_factory=lambda: itertools.count(1))
    closed: str | None = None
    frames: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


class SocketHub:
    """Open node sockets by id; thread-safe."""

    def __init__(self) -> None:
        self._sockets: dict[str, _Socket] = {}
        self._lock = threading.Lock()

    def open(self, loop: asyncio.AbstractEventLoop, send_bytes, send_text) -> str:
        sid = secrets.token_hex(16)
        with self._lock:
            self._sockets[sid] = _Socket(loop, send_bytes, send_text)
        return sid

    def close(self, sid: str, reason: str) -> None:
        with self._lock:
            sock = self._sockets.pop(sid, None)
        if sock is None:
            return
        sock.closed = reason
        for fut in list(sock.pending.values()):
            if not fut.done():
                fut.set_exception(NodeUnavailable(f"browser node disconnected ({reason})"))

    def stats(self, sid: str) -> dict | None:
        with self._lock:
            s = self._sockets.get(sid)
        return None if s is None else {"frames": s.frames, "bytes_in": s.bytes_in, "bytes_out": s.bytes_out}

    def _get(self, sid: str) -> _Socket:
        with self._lock:
            sock = self._sockets.get(sid)
        if sock is None:
            raise NodeUnavailable("browser node disconnected")
        return sock

    def forward(self, sid: str, body: bytes, timeout: float) -> bytes:
        sock = self._get(sid)
        seq = next(sock.seq) & 0xFFFFFFFF
        fut: concurrent.futures.Future = concurrent.futures.Future()
        sock.pending[seq] = fut
        try:
            sent = asyncio.run_coroutine_threadsafe(sock.send_bytes(SEQ.pack(seq) + body), sock.loop)
            try:
                sent.result(timeout)
            except Exception as exc:  # socket closing under us, loop stopped, timeout
                raise NodeUnavailable(f"cannot send to browser node: {type(exc).__name__}: {exc}") from None
            try:
                out = fut.result(timeout)
            except concurrent.futures.TimeoutError:
                raise NodeUnavailable(f"no answer within {timeout:g} s") from None
        finally:
            sock.pending.pop(seq, None)
        sock.frames += 1
        sock.bytes_out += len(body)
        sock.bytes_in += len(out)
        return out

    def answer(self, sid: str, data: bytes) -> None:
        """A binary message from the page: the answer to frame `seq`."""
        sock = self._sockets.get(sid)
        if sock is None or len(data) < SEQ.size:
            return
        fut = sock.pending.get(SEQ.unpack_from(data)[0])
        if fut is not None and not fut.done():
            fut.set_result(data[SEQ.size:])

    def refuse(self, sid: str, seq: int, status: int, detail: str) -> None:
        """The page could not run frame `seq` (409 = lost the request's cache, else unusable)."""
        sock = self._sockets.get(sid)
        fut = sock.pending.get(seq) if sock else None
        if fut is not None and not fut.done():
            fut.set_exception(CacheMiss(detail) if status == 409 else NodeUnavailable(f"HTTP {status}: {detail}"))

    def release(self, sid: str, request_id: str) -> None:
        with self._lock:
            sock = self._sockets.get(sid)
        if sock is not None:
            msg = json.dumps({"type": "release", "request_id": request_id})
            asyncio.run_coroutine_threadsafe(sock.send_text(msg), sock.loop)


class RoutingNodeClient:
    """`NodeClient` for a room with both kinds of node: `browser://` URLs over the hub, others HTTP."""

    def __init__(self, hub: SocketHub) -> None:
        self.hub = hub
        self.http = HttpNodeClient()

    @property
    def node_compute_ms(self) -> float:
        return self.http.node_compute_ms

    def forward(self, url: str, body: bytes, timeout: float) -> bytes:
        if url.startswith(SCHEME):
            return self.hub.forward(url[len(SCHEME):], body, timeout)
        return self.http.forward(url, body, timeout)

    def release(self, url: str, request_id: str) -> None:
        if url.startswith(SCHEME):
            self.hub.release(url[len(SCHEME):], request_id)
        else:
            self.http.release(url, request_id)

    def close(self) -> None:
        self.http.close()
