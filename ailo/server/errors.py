"""One error shape for every route: HTTP 4xx with JSON `{"detail": "<message>", "reason": "<code>"}`.

`detail` is for people, `reason` a stable machine code. Ledger refusals keep their historical
`detail` form "<code>: <message>" (ailo/ledger/client.py and the wallet CLI split it) and now
also carry `reason` = that code. FastAPI's own refusals (unknown path, wrong method, a body or
query that fails its declared schema) are rewritten into the same shape here, so a client can
rely on it whichever router answered. Domain code raises `ailo.errors.DomainError` (rooms, nodes,
updates, the ledger) and never an HTTP exception; this module is the one place that maps it.
"""
from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

from ailo.errors import DomainError

log = logging.getLogger("ailo.server")

# Fallback codes by status, for refusals raised without an explicit reason.
STATUS_REASONS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                  405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 411: "length_required",
                  413: "too_large", 415: "unsupported_media_type", 422: "bad_field", 429: "rate_limited",
                  500: "internal", 502: "upstream_failed", 503: "unavailable"}
_CODE_PREFIX = re.compile(r"^([a-z][a-z0-9_]{1,40}): ")


class ApiError(HTTPException):
    """An HTTP refusal with a machine code: `raise ApiError(409, "username taken", "username_taken")`."""

    def __init__(self, status: int, detail: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail, headers)
        self.reason = reason


def error_body(detail: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, "reason": reason, **extra}


def reason_of(exc: StarletteHTTPException) -> str:
    explicit = getattr(exc, "reason", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    if isinstance(exc.detail, str) and (m := _CODE_PREFIX.match(exc.detail)):
        return m.group(1)
    return STATUS_REASONS.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")


def _detail_of(request: Request, exc: StarletteHTTPException) -> str:
    if exc.status_code == 413 and exc.detail == "Content Too Large":  # a route's own max_body_size=
        limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
        return f"body exceeds the limit of {limit} bytes for {request.method} {request.url.path}"
    if exc.status_code == 404 and exc.detail == "Not Found":
        return f"no route {request.method} {request.url.path}"
    return exc.detail if isinstance(exc.detail, str) else str(exc.detail)


def _field(loc: tuple | list) -> str:
    """('body', 'memory') -> 'memory'; ('query', 'from') -> 'from' (query); ('header', 'x-ailo-round')."""
    where, *path = list(loc) or ["body"]
    name = ".".join(str(p) for p in path) or where
    return name if where == "body" else f"{name} ({where})"


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(error_body(_detail_of(request, exc), reason_of(exc)), exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = exc.errors()
    reason = "missing_field" if problems and all(p.get("type") == "missing" for p in problems) else "bad_field"
    if any(p.get("type") == "json_invalid" for p in problems):
        reason = "malformed"
    detail = "; ".join(f"{_field(p.get('loc', ()))}: {p.get('msg', 'invalid')}" for p in problems[:10])
    fields = [_field(p.get("loc", ())) for p in problems[:10]]
    return JSONResponse(error_body(detail or "invalid request", reason, fields=fields), 422)


async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
    """What domain code refused (rooms, nodes, updates, the ledger): its status, reason, headers."""
    return JSONResponse(error_body(str(exc), exc.reason), exc.status, headers=exc.headers or None)


async def _body_error(_: Request, exc: ValidationError) -> JSONResponse:
    """A route's own `Model.model_validate_json` (signed bodies are parsed after their signature)."""
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
    return JSONResponse(error_body(f"invalid body: {problems}", "invalid_body"), 422)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Last resort (a bug): still the error shape, never a traceback to the client."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body(f"internal error ({type(exc).__name__})", "internal"), 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(ValidationError, _body_error)
    app.add_exception_handler(Exception, _unexpected)
