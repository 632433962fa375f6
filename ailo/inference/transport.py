"""How the coordinator reaches nodes: `wire.Frame` bytes in the body of a keep-alive HTTP POST.

Failures map to two outcomes: `NodeUnavailable` (route around the node: refused or reset
connection, timeout, 5xx, wrong span) or `CacheMiss` (HTTP 409: the node is fine but lost the
request's cache; rebuild it there). A WebSocket variant (one connection per node per request)
was measured against this on the benchmark room and gave no gain: per-hop cost is dominated
by process wake-ups, not HTTP parsing.
"""
from __future__ import annotations

import socket
from typing import Protocol

import httpx

from ailo.inference.wire import CONTENT_TYPE

_NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]  # headers and body leave at once


class NodeUnavailable(Exception):
    """The node did not produce a usable answer; route around it."""


class CacheMiss(Exception):
    """The node is alive but does not hold the positions we expected (HTTP 409)."""


class NodeClient(Protocol):
    def forward(self, url: str, body: bytes, timeout: float) -> bytes: ...
    def release(self, url: str, request_id: str) -> None: ...
    def close(self) -> None: ...


def _raise_for(status: int, detail: str) -> None:
    if status == 409:
        raise CacheMiss(detail)
    raise NodeUnavailable(f"HTTP {status}: {detail}")


class HttpNodeClient:
    """Keep-alive HTTP to nodes: one client per request, so no pool is shared across threads."""

    def __init__(self) -> None:
        self._http = httpx.Client(transport=httpx.HTTPTransport(socket_options=_NODELAY),
                                  limits=httpx.Limits(max_keepalive_connections=256))
        self.node_compute_ms = 0.0  # what the nodes report spending in their spans (x-ailo-compute-ms)

    def forward(self, url: str, body: bytes, timeout: float) -> bytes:
        try:
            r = self._http.post(f"{url}/v1/node/forward", content=body,
                                headers={"content-type": CONTENT_TYPE}, timeout=timeout)
        except httpx.TimeoutException:
            raise NodeUnavailable(f"no answer within {timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise NodeUnavailable(f"{type(exc).__name__}: {exc or 'connection lost'}") from None
        if r.status_code == 200:
            self.node_compute_ms += float(r.headers.get("x-ailo-compute-ms") or 0.0)
            return r.content
        try:
            detail = str(r.json().get("detail", r.text))
        except ValueError:
            detail = r.text
        _raise_for(r.status_code, detail)
        raise AssertionError("unreachable")

    def release(self, url: str, request_id: str) -> None:
        try:
            self._http.delete(f"{url}/v1/node/requests/{request_id}", timeout=1.0)
        except httpx.HTTPError:
            pass

    def close(self) -> None:
        self._http.close()
