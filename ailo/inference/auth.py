"""Who may do what in rooms: signed wallet requests, the operator token, rate limits, node URLs.

Signed request (nodes: join / heartbeat / leave; requesters: generate). The wallet signs ONE
ASCII line, easy to rebuild byte-for-byte in a browser (same style as `federation/core/signing.py`):

    ailo-room/v1|<METHOD>|<path>|<address>|<nonce>|<timestamp_ms>|<sha256 hex of the raw body>

and sends it beside the unchanged JSON body as four headers:

    X-Ailo-Address: ailo1…            the signer (the reward address of a node, the payer of a request)
    X-Ailo-Nonce: 8–64 chars [A-Za-z0-9_-]   unique per address within the time window
    X-Ailo-Timestamp: integer ms since the epoch, within 120 s behind / 60 s ahead of the coordinator
    X-Ailo-Signature: 128 hex chars, Ed25519 over the line above

`path` is the URL path only (e.g. `/v1/rooms/r/join`), the body hash covers the exact bytes
sent. A (address, nonce) pair seen within the window is a replay (refused); older timestamps
are refused outright, so the seen-set only has to remember one window.

Operator (room create / delete): `Authorization: Bearer <token>`, the token being the contents
of `<state dir>/operator-token`, created 0600 with 32 random bytes the first time the
coordinator starts. Compared in constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ailo.errors import Refused
from ailo.wallet import Wallet, is_valid_address, verify_signature

PREFIX = "ailo-room/v1"
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}\Z")
MAX_PAST_MS = 120_000
MAX_FUTURE_MS = 60_000
H_ADDRESS, H_NONCE, H_TIMESTAMP, H_SIGNATURE = "x-ailo-address", "x-ailo-nonce", "x-ailo-timestamp", "x-ailo-signature"


class AuthError(Refused):
    """Refused before anything happens; `status`, machine-readable `reason`, optional headers."""


def request_message(method: str, path: str, address: str, nonce: str, timestamp_ms: int, body_sha256: str) -> bytes:
    return f"{PREFIX}|{method.upper()}|{path}|{address}|{nonce}|{timestamp_ms}|{body_sha256}".encode("ascii")


def sign_request(wallet: Wallet, method: str, path: str, body: bytes, *, nonce: str | None = None,
                 timestamp_ms: int | None = None) -> dict[str, str]:
    """Headers that authenticate `body` sent as `METHOD path` by `wallet`."""
    nonce = secrets.token_hex(16) if nonce is None else nonce
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    sig = wallet.sign(request_message(method, path, wallet.address, nonce, ts, hashlib.sha256(body).hexdigest()))
    return {H_ADDRESS: wallet.address, H_NONCE: nonce, H_TIMESTAMP: str(ts), H_SIGNATURE: sig}


@dataclass
class RequestVerifier:
    """Checks signed requests; remembers nonces for one time window (replays are refused)."""

    max_past_ms: int = MAX_PAST_MS
    max_future_ms: int = MAX_FUTURE_MS
    clock_ms: object = field(default=lambda: int(time.time() * 1000))
    _seen: dict[tuple[str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def verify(self, method: str, path: str, headers, body: bytes) -> str:
        """Returns the signer's address or raises AuthError (401)."""
        address, nonce = headers.get(H_ADDRESS), headers.get(H_NONCE)
        ts_text, sig = headers.get(H_TIMESTAMP), headers.get(H_SIGNATURE)
        if not (address and nonce and ts_text and sig):
            raise AuthError(401, "unsigned", "this request must be signed by a wallet: send X-Ailo-Address, "
                            "X-Ailo-Nonce, X-Ailo-Timestamp and X-Ailo-Signature (see docs/ARCHITECTURE.md)")
        if not is_valid_address(address):
            raise AuthError(401, "bad_address", f"X-Ailo-Address {address!r} is not a wallet address")
        if not NONCE_RE.match(nonce) or not ts_text.isdigit():
            raise AuthError(401, "malformed_auth", "nonce must be 8-64 chars of A-Z a-z 0-9 _ -, timestamp integer ms")
        ts, now = int(ts_text), self.clock_ms()
        if ts > now + self.max_future_ms or ts < now - self.max_past_ms:
            raise AuthError(401, "stale_timestamp", f"timestamp {ts} is outside [now - {self.max_past_ms}, "
                            f"now + {self.max_future_ms}] ms (now {now})")
        if not path.isascii():   # the signed line is ASCII; such a path names no room anyway
            raise AuthError(404, "not_found", f"no route {method} {path!r}: paths are ASCII")
        message = request_message(method, path, address, nonce, ts, hashlib.sha256(body).hexdigest())
        if not verify_signature(address, message, sig):
            raise AuthError(401, "bad_signature", f"signature does not match {address} for this request")
        with self._lock:
            if len(self._seen) > 4096:
                cutoff = now - self.max_past_ms
                self._seen = {k: t for k, t in self._seen.items() if t >= cutoff}
            if (address, nonce) in self._seen:
                raise AuthError(401, "replayed", f"nonce {nonce} of {address} was already used")
            self._seen[(address, nonce)] = ts
        return address


def load_operator_token(state_dir: Path) -> str:
    """`<state_dir>/operator-token`, created 0600 (O_EXCL) with a random token if missing."""
    path = Path(state_dir) / "operator-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def check_operator(authorization: str | None, token: str | None) -> None:
    if token is None:
        raise AuthError(403, "no_operator", "this coordinator has no operator token; rooms are fixed")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise AuthError(401, "operator_only", "only the operator may create or delete rooms: send "
                        "'Authorization: Bearer <contents of the coordinator's operator-token file>'")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise AuthError(403, "bad_operator_token", "operator token does not match")


@dataclass
class RateLimiter:
    """Token bucket per key: `per_minute` sustained, `burst` at once; refusals carry Retry-After."""

    per_minute: float
    burst: int
    what: str
    _state: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        rate = self.per_minute / 60.0
        with self._lock:
            tokens, last = self._state.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._state[key] = (tokens, now)
                wait = max(1, int((1.0 - tokens) / rate + 0.999))
                raise AuthError(429, "rate_limited", f"{self.what} {key} exceeds {self.per_minute:g} requests "
                                f"per minute (burst {self.burst}); retry in {wait} s", {"Retry-After": str(wait)})
            self._state[key] = (tokens - 1.0, now)


def _blocked(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved
            or ip.is_unspecified or not ip.is_global)


def check_node_url(url: str, allow_private: bool) -> str:
    """A node URL the coordinator may POST to: http(s), a host, no credentials; unless
    `allow_private`, every address the host resolves to must be public (no loopback, private,
    link-local such as 169.254.169.254, multicast or reserved targets). Returns it without
    a trailing slash."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AuthError(400, "bad_node_url", f"node URL {url!r} cannot be parsed: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AuthError(400, "bad_node_url", f"node URL {url!r} must be http:// or https:// with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise AuthError(400, "bad_node_url", f"node URL {url!r} must not carry credentials, a query or a fragment")
    if not allow_private:
        try:
            infos = socket.getaddrinfo(parts.hostname, port or (443 if parts.scheme == "https" else 80),
                                       proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            raise AuthError(400, "bad_node_url", f"node URL host {parts.hostname!r} does not resolve: {exc}") from None
        for info in infos:
            ip = ipaddress.ip_address(info[4][0].split("%")[0])
            if _blocked(ip):
                raise AuthError(400, "private_node_url", f"node URL {url!r} points at {ip}, a loopback/private/"
                                "link-local address; this coordinator only calls public addresses "
                                "(operators allow private ones with --allow-private-node-urls)")
    return url.rstrip("/")
