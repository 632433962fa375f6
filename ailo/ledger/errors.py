"""Ledger errors. Every refusal carries a stable machine-readable `code` (listed in
docs/LEDGER.md and used by the JSON test vectors) plus a human message."""
from __future__ import annotations

from ailo.errors import DomainError


class LedgerError(DomainError):
    """A transaction or block that breaks a ledger rule. `code` is part of the spec (and the
    `reason` of the HTTP answer)."""

    code = "invalid"
    http_status = 400

    @property
    def status(self) -> int:  # type: ignore[override]
        return self.__dict__.get("_status", self.http_status)

    @status.setter
    def status(self, value: int) -> None:  # a client-side copy keeps the status it was answered with
        self._status = value

    @property
    def reason(self) -> str:  # type: ignore[override]
        return self.code

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code

    def __str__(self) -> str:
        return f"{self.code}: {self.args[0] if self.args else ''}"


class MalformedError(LedgerError):
    """Wrong shape: missing/extra fields, wrong JSON types, unknown transaction type."""
    code = "malformed"


class AddressFormatError(LedgerError):
    code = "bad_address"


class SignatureError(LedgerError):
    code = "bad_signature"
    http_status = 401


class AmountError(LedgerError):
    """Zero, negative or oversized amount, or a fee other than the protocol fee."""
    code = "bad_amount"


class InsufficientFundsError(LedgerError):
    code = "insufficient_funds"


class NonceError(LedgerError):
    """Replayed (nonce already used) or out-of-order nonce."""
    code = "bad_nonce"
    http_status = 409


class TimestampError(LedgerError):
    """Future-dated, stale, or earlier than the previous block."""
    code = "future_timestamp"


class SelfTransferError(LedgerError):
    code = "self_transfer"


class ConflictError(LedgerError):
    """Something unique already exists: username, registration, mint ref, report."""
    code = "conflict"
    http_status = 409


class NotRegisteredError(LedgerError):
    code = "unregistered"
    http_status = 403


class DisputeError(LedgerError):
    """Report/reversal refused: unknown target, mint, settled, no quorum."""
    code = "dispute_refused"
    http_status = 409


class ChainError(LedgerError):
    """Block-level violation: height, hash link, Merkle root, block signature, params."""
    code = "bad_block"


class SupplyError(LedgerError):
    code = "supply_mismatch"
