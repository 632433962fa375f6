"""Per-network-address rate limits that junk cannot use up.

Each limited path has two token buckets per address: the allowance (e.g. 10 registrations per
hour) and a separate bucket for malformed requests. A request takes a token from the allowance
before it runs; if the answer says the request was malformed (400, 411, 413, 415, 422) the
token is given back and one is taken from the junk bucket instead, and when that one is empty
the answer becomes 429. So ten garbage POST /v1/register from an address (a bot, or a broken
client behind the same NAT) never lock a real user at that address out of registering.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MALFORMED = frozenset({400, 411, 413, 415, 422})


@dataclass
class Buckets:
    """Token buckets keyed by address: `rate` tokens per second, at most `burst` stored. Used from
    the event loop only (no lock needed)."""
    rate: float
    burst: int
    _state: dict[str, tuple[float, float]] = field(default_factory=dict)

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._state.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - last) * self.rate)

    def take(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens = self._level(key, now)
        ok = tokens >= 1.0
        self._state[key] = (tokens - 1.0 if ok else tokens, now)
        if len(self._state) > 100_000:            # bound memory under an address-spraying flood
            self._state.pop(next(iter(self._state)))
        return ok

    def refund(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._state[key] = (min(float(self.burst), self._level(key, now) + 1.0), now)


@dataclass
class Limit:
    allowance: Buckets
    junk: Buckets
    what: str                                     # "10 registrations per hour"


class RateLimitMiddleware:
    """Pure ASGI. `limits` maps a POST path to its `Limit`."""

    def __init__(self, app: ASGIApp, limits: dict[str, Limit]) -> None:
        self.app, self.limits = app, limits

    @staticmethod
    async def _refuse(send: Send, host: str, what: str) -> None:
        body = json.dumps({"detail": f"rate_limited: network address {host} exceeds {what}",
                           "reason": "rate_limited"}, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", b"60")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope.get("path", "")) if scope["type"] == "http" and scope.get("method") == "POST" else None
        if limit is None:
            return await self.app(scope, receive, send)
        host = scope["client"][0] if scope.get("client") else "unknown"
        if not limit.allowance.take(host):
            return await self._refuse(send, host, limit.what)
        swallowed = False

        async def judged(message: Message) -> None:
            nonlocal swallowed
            if swallowed:
                return
            if message["type"] == "http.response.start" and message["status"] in MALFORMED:
                limit.allowance.refund(host)
                if not limit.junk.take(host):
                    swallowed = True
                    return await self._refuse(send, host, f"{limit.junk.burst} malformed requests in a row")
            await send(message)

        await self.app(scope, receive, judged)
