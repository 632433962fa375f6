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


class Rejected(DomainError):
    """Input that fails a check (an update, its codec, its safetensors header): a stable
    `reason`, the message, and the status (422 unless the input could not even be read)."""

    def __init__(self, reason: str, message: str, status: int = 422):
        super().__init__(message)
        self.reason, self.status = reason, status


class Refused(DomainError):
    """A request refused with an explicit status first (rooms' nodes, links, request auth);
    `headers` go with the answer (Retry-After)."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.reason, self.headers = status, reason, headers or {}
