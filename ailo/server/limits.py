"""Limits before work: every request is bounded before the coordinator spends anything on it.

* Body size, while streaming: `BodyLimitMiddleware` refuses a too-large Content-Length before
  the app runs and otherwise counts the bytes as the route reads them, so a 200 MB body costs
  at most the limit plus one read buffer. `DEFAULT_BODY_BYTES` covers every route;
  `BODY_LIMITS` (by method and path template) sets a route's own limit.
* JSON depth, while streaming: `JsonDepthMiddleware` scans bodies typed as JSON as they pass and refuses
  nesting deeper than `MAX_JSON_DEPTH` before any parser sees them (a 7,000-deep array would
  otherwise reach Python's recursion limit).
* Integers: `le=INT64_MAX` on query/path parameters and the `X-Ailo-*` header
  checks keep every number that reaches SQLite or a signature inside a signed 64-bit integer,
  non-negative where that is meaningful.
"""
from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ailo.server.errors import ApiError

INT64_MAX = 2**63 - 1
KiB, MiB = 1024, 1024 * 1024

DEFAULT_BODY_BYTES = 1 * MiB       # any route without its own entry below
MAX_JSON_DEPTH = 32                # config.json and tokenizer.json nest < 8 deep; a transaction is flat
LEDGER_TX_BYTES = 16 * KiB         # one signed transaction
SMALL_JSON_BYTES = 16 * KiB        # tasks, node membership
ROOM_CREATE_BYTES = 4 * MiB        # a tokenizer.json rides along
GENERATE_BYTES = 2 * MiB           # a prompt or input_ids up to a long context

# (method, path template) -> bytes. The update route's limit depends on the model; create_app sets it.
BODY_LIMITS: dict[tuple[str, str], int] = {
    ("POST", "/v1/register"): LEDGER_TX_BYTES,
    ("POST", "/v1/transfers"): LEDGER_TX_BYTES,
    ("POST", "/v1/reports"): LEDGER_TX_BYTES,
    ("POST", "/v1/tasks"): SMALL_JSON_BYTES,
    ("POST", "/v1/rooms"): ROOM_CREATE_BYTES,
    ("POST", "/v1/rooms/{room_id}/join"): SMALL_JSON_BYTES,
    ("POST", "/v1/rooms/{room_id}/heartbeat"): SMALL_JSON_BYTES,
    ("POST", "/v1/rooms/{room_id}/leave"): SMALL_JSON_BYTES,
    ("POST", "/v1/rooms/{room_id}/generate"): GENERATE_BYTES,
}


class BodyTooLarge(ApiError):
    def __init__(self, limit: int, method: str, path: str, declared: int | None = None) -> None:
        size = f"body of {declared} bytes" if declared is not None else "body"
        super().__init__(413, f"{size} exceeds the limit of {limit} bytes for {method} {path}", "too_large")


class BodyLimitMiddleware:
    """Pure ASGI, outside everything that reads a body. A declared Content-Length over the route's
    limit is refused before the app runs; otherwise the bytes are counted as the app pulls them
    and the read that passes the limit raises `BodyTooLarge` (413, the error shape) instead of
    returning. (Starlette's RequestBodyLimitMiddleware does the same counting but answers plain
    text, which would break the one error shape.)"""

    def __init__(self, app: ASGIApp, limits: dict[tuple[str, str], int] | None = None,
                 default: int = DEFAULT_BODY_BYTES) -> None:
        self.app, self.default = app, default
        self.routes = [(method, re.compile("^" + re.sub(r"\\{[^}/]+\\}", "[^/]+", re.escape(path)) + "$"), limit)
                       for (method, path), limit in {**BODY_LIMITS, **(limits or {})}.items()]

    def limit_for(self, method: str, path: str) -> int:
        return next((limit for m, rx, limit in self.routes if m == method and rx.match(path)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope.get("method", ""), scope.get("path", "")
        limit = self.limit_for(method, path)
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            return await _answer(send, BodyTooLarge(limit, method, path, int(declared)))
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, method, path)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:   # raised where no exception handler turned it into a response
            if started:
                raise
            await _answer(send, exc)


async def _answer(send: Send, exc: ApiError) -> None:
    body = json.dumps({"detail": exc.detail, "reason": exc.reason}, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": exc.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class JsonTooDeep(ApiError):
    def __init__(self, depth: int) -> None:
        super().__init__(400, f"malformed: JSON nests deeper than {depth} levels", "malformed")


class JsonDepthScanner:
    """Incremental scan of a JSON byte stream: the nesting depth outside strings, chunk by chunk.
    Only the six structural bytes are visited (a C regex finds them), so it costs little even
    on a multi-megabyte tokenizer.json."""

    _TOKENS = re.compile(rb'[\\"\[\]{}]')

    def __init__(self, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.max_depth, self.depth, self.offset = max_depth, 0, 0
        self.in_string, self.escaped_at = False, -1

    def feed(self, chunk: bytes) -> None:
        for m in self._TOKENS.finditer(chunk):
            c, pos = chunk[m.start()], self.offset + m.start()
            if self.in_string:
                if pos == self.escaped_at:
                    continue
                if c == 0x5C:              # backslash: the next byte is escaped
                    self.escaped_at = pos + 1
                elif c == 0x22:
                    self.in_string = False
            elif c == 0x22:
                self.in_string = True
            elif c in (0x5B, 0x7B):
                self.depth += 1
                if self.depth > self.max_depth:
                    raise JsonTooDeep(self.max_depth)
            elif c in (0x5D, 0x7D):
                self.depth -= 1
        self.offset += len(chunk)


def parse_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads with the depth limit checked first; refusals are 400 `malformed`/`too_deep`."""
    JsonDepthScanner(max_depth).feed(raw)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, f"malformed: body is not valid JSON ({exc})", "malformed") from None


def _is_json(scope: Scope) -> bool:
    for key, value in scope.get("headers", []):
        if key == b"content-type":
            kind = value.split(b";")[0].strip().lower()
            return kind == b"application/json" or kind.endswith(b"+json")
    return False  # untyped bodies (an update is raw safetensors) are not JSON to FastAPI; the
                  # ledger routes, which parse any body, check depth again in `parse_json`


class JsonDepthMiddleware:
    """Pure ASGI: scans JSON request bodies as the app reads them; never buffers."""

    def __init__(self, app: ASGIApp, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app, self.max_depth = app, max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            return await self.app(scope, receive, send)
        scanner = JsonDepthScanner(self.max_depth)

        async def scanned() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                scanner.feed(message.get("body", b""))
            return message

        await self.app(scope, scanned, send)
