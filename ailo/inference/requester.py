"""The requester's side of a paid room request, shared by `ailo ask` and `ailo api`.

Per request: read the room's price, sign a PAY_INFERENCE of that price with the requester's
wallet, sign the generate request itself (ailo.inference.auth) and read the room's NDJSON
events (start, token*, failover*, done | error). The wallet never leaves this process.
Refusals come back as `RoomRefused` (status + machine-readable reason): the coordinator answers
them before charging anything (rooms_api.generate), so a caller may retry those it deems
worth waiting out (`ask` below does, for 429 and 503).
"""
from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from ailo.backoff import Backoff, retry_after
from ailo.inference.auth import sign_request
from ailo.ledger.tx import pay_inference_tx
from ailo.wallet import Wallet

# Answers given before a request is charged that are worth waiting out: the room is forming or
# a span has no live node (503), or the caller is over its rate (429). Anything else is final.
RETRYABLE = (429, 503)


class RoomRefused(Exception):
    """The coordinator refused (nothing was charged); `status`/`reason` as it answered."""

    def __init__(self, status: int, reason: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.status, self.reason, self.detail, self.retry_after = status, reason, detail, retry_after

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE

    @classmethod
    def from_response(cls, r: httpx.Response) -> "RoomRefused":
        try:
            body = r.json()
            detail, reason = str(body.get("detail", r.text)), str(body.get("reason", "refused"))
        except ValueError:
            detail, reason = r.text, "refused"
        return cls(r.status_code, reason, detail, retry_after(r))


class Unreachable(Exception):
    """The coordinator could not be reached; `before_send`: nothing was sent (nothing charged)."""

    def __init__(self, message: str, before_send: bool):
        super().__init__(message)
        self.before_send = before_send


@dataclass
class Answer:
    """An accepted request: its payment (price, request id) and the room's events as dicts."""

    price: int | None
    request_id: str | None
    lines: Iterator[str]

    def events(self) -> Iterator[dict]:
        for line in self.lines:
            if line:
                yield json.loads(line)


@dataclass
class RoomRequester:
    """Signs and pays room requests for `wallet` against one coordinator (one pooled HTTP client)."""

    coordinator: str
    wallet: Wallet
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=httpx.Timeout(10.0, read=None)))

    def __post_init__(self) -> None:
        self.coordinator = self.coordinator.rstrip("/")

    def close(self) -> None:
        self.http.close()

    def rooms(self) -> list[dict]:
        return self._get("/v1/rooms")

    def room(self, room: str) -> dict:
        return self._get(f"/v1/rooms/{room}")

    def _get(self, path: str):
        try:
            r = self.http.get(self.coordinator + path, timeout=10)
        except httpx.HTTPError as exc:
            raise Unreachable(f"coordinator {self.coordinator} unreachable: {exc}", True) from None
        if r.status_code >= 400:
            raise RoomRefused.from_response(r)
        return r.json()

    def payment(self, room: str, view: dict | None = None) -> dict | None:
        """A PAY_INFERENCE for one request at the room's price (None when the room charges nothing)."""
        price = (view if view is not None else self.room(room)).get("price")
        if not price:
            return None
        return pay_inference_tx(self.wallet, secrets.token_hex(16), price, int(time.time() * 1000)).to_json()

    @contextmanager
    def open(self, room: str, body: dict, view: dict | None = None) -> Iterator[Answer]:
        """One try: pay, sign, POST; yields the accepted request's events, else raises
        `RoomRefused` (a status >= 400, nothing charged) or `Unreachable`."""
        payment = self.payment(room, view)
        payload = json.dumps({**body, "payment": payment}).encode()
        path = f"/v1/rooms/{room}/generate"
        headers = {"content-type": "application/json", **sign_request(self.wallet, "POST", path, payload)}
        try:
            with self.http.stream("POST", self.coordinator + path, content=payload, headers=headers) as r:
                if r.status_code >= 400:
                    r.read()
                    raise RoomRefused.from_response(r)
                yield Answer(payment["amount"] if payment else None, payment["request"] if payment else None,
                             r.iter_lines())
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Unreachable(f"coordinator {self.coordinator} unreachable: {exc}", True) from None
        except httpx.HTTPError as exc:
            raise Unreachable(f"coordinator {self.coordinator} unreachable: {exc}", False) from None

    @contextmanager
    def ask(self, room: str, body: dict, wait: float,
            on_retry: Callable[[str, float], None] | None = None) -> Iterator[Answer]:
        """`open`, tried again for up to `wait` seconds while the room answers 429/503 or the
        coordinator cannot be reached; every try carries a fresh payment and signature (a
        refused try charges nothing). Nothing after the stream has started is retried."""
        policy, t0, attempt = Backoff(base=0.5, cap=5.0), time.monotonic(), 0
        while True:
            try:
                with self.open(room, body) as answer:
                    yield answer
                    return
            except RoomRefused as exc:
                if not exc.retryable:
                    raise
                why, hint, last = f"room {room}: {exc.detail}", exc.retry_after, exc
            except Unreachable as exc:
                if not exc.before_send:
                    raise
                why, hint, last = str(exc), None, exc
            left = wait - (time.monotonic() - t0)
            if left <= 0:
                raise last
            delay = min(left, policy.delay(attempt, hint))
            if on_retry is not None:
                on_retry(why, delay)
            time.sleep(delay)
            attempt += 1
