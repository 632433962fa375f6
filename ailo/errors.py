"""Domain errors: what domain code (federation, inference, ledger) raises to refuse a request.

A `DomainError` carries the HTTP status a server should answer with, a stable machine `reason`
and optional response headers (Retry-After), but no HTTP library: `ailo.server.errors` is the one
place that turns it into the `{"detail", "reason"}` answer, whichever router or app raised it.
"""
from __future__ import annotations


class DomainError(Exception):
    status: int = 400
    reason: str = "bad_request"
    headers: dict[str, str] = {}
