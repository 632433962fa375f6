"""Transactions: the seven kinds, their exact JSON schemas, ids and signatures.

A transaction on the wire is one flat JSON object: the *body* (every field except
`signature`) plus `signature`, the hex Ed25519 signature of `tx_signing_bytes(body)` by the
kind's signer. `txid = sha256(canonical_json(body))`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from ailo.wallet import AddressError, Wallet, public_key_from_address, USERNAME_RE

from .codec import MAX_SAFE_INT, canonical_json, merkle_leaf, sha256_hex, tx_signing_bytes
from .errors import AddressFormatError, AmountError, MalformedError, SignatureError
from .params import FEE, MAX_AMOUNT

REGISTER = "REGISTER"
MINT_TRAINING = "MINT_TRAINING"
MINT_INFERENCE = "MINT_INFERENCE"
TRANSFER = "TRANSFER"
REPORT = "REPORT"
REVERSAL = "REVERSAL"
PAY_INFERENCE = "PAY_INFERENCE"                 # a requester pays (burns) the price of one request
MINT_TYPES = frozenset({MINT_TRAINING, MINT_INFERENCE})
SYSTEM_TYPES = MINT_TYPES | {REVERSAL}          # signed by the coordinator

_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
REQUEST_RE = re.compile(r"^[0-9a-f]{32}\Z")    # an inference request id
_SIG = re.compile(r"^[0-9a-f]{128}\Z")
REF_RE = re.compile(r"^[A-Za-z0-9:._/-]{1,128}\Z")
REASON_RE = re.compile(r"^[\x20-\x7e]{0,200}\Z")


def _check_int(name: str, value: Any) -> None:
    if type(value) is not int or not 0 <= value <= MAX_SAFE_INT:
        raise MalformedError(f"{name} must be an integer in [0, 2^53-1]")


@lru_cache(maxsize=65536)
def _address_problem(value: str) -> str | None:
    """Cached: a chain mentions the same few addresses over and over."""
    try:
        public_key_from_address(value)
    except AddressError as exc:
        return str(exc)
    return None


def _check_address(name: str, value: Any) -> None:
    problem = _address_problem(value) if isinstance(value, str) else "must be a string"
    if problem is not None:
        raise AddressFormatError(f"{name}: {problem}")


def _check_amount(name: str, value: Any) -> None:
    if type(value) is not int:
        raise MalformedError(f"{name} must be an integer number of units")
    if not 1 <= value <= MAX_AMOUNT:
        raise AmountError(f"{name} must be between 1 and {MAX_AMOUNT} units, got {value}")


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if not isinstance(value, str) or not regex.match(value):
            raise MalformedError(f"{name} must be {what}")
    return check


_username = _pattern(USERNAME_RE, "3-32 chars of a-z 0-9 _ - (starting with a-z or 0-9)")
_txid = _pattern(_HEX64, "a 64-char lowercase hex transaction id")
_ref = _pattern(REF_RE, "1-128 chars of A-Z a-z 0-9 : . _ / -")
_reason = _pattern(REASON_RE, "at most 200 printable ASCII characters")
_request = _pattern(REQUEST_RE, "a 32-char lowercase hex request id")


def _fee(name: str, value: Any) -> None:
    if type(value) is not int:
        raise MalformedError("fee must be an integer number of units")
    if value != FEE:
        raise AmountError(f"fee must be exactly {FEE} units (0.01 ALC), got {value}")


_MINT = {"to": _check_address, "amount": _check_amount, "ref": _ref,
         "timestamp": _check_int}
SCHEMAS: dict[str, dict[str, Callable[[str, Any], None]]] = {
    REGISTER: {"address": _check_address, "username": _username, "timestamp": _check_int},
    MINT_TRAINING: _MINT,
    MINT_INFERENCE: _MINT,
    TRANSFER: {"from": _check_address, "to": _check_address, "amount": _check_amount,
               "fee": _fee, "nonce": _check_int, "timestamp": _check_int},
    REPORT: {"reporter": _check_address, "target": _txid, "reason": _reason,
             "timestamp": _check_int},
    REVERSAL: {"target": _txid, "from": _check_address, "to": _check_address,
               "amount": _check_amount, "timestamp": _check_int},
    PAY_INFERENCE: {"from": _check_address, "request": _request, "amount": _check_amount,
                    "fee": _fee, "timestamp": _check_int},
}
# Which body field names the signer (None: the chain's coordinator).
SIGNER_FIELD: dict[str, str | None] = {
    REGISTER: "address", TRANSFER: "from", REPORT: "reporter", PAY_INFERENCE: "from",
    MINT_TRAINING: None, MINT_INFERENCE: None, REVERSAL: None,
}


_KEYS = {kind: frozenset(schema) | {"type"} for kind, schema in SCHEMAS.items()}
_KEYS_SIGNED = {kind: keys | {"signature"} for kind, keys in _KEYS.items()}


@lru_cache(maxsize=8192)
def _verify_key(address: str) -> VerifyKey:
    return VerifyKey(public_key_from_address(address))


@dataclass(frozen=True, slots=True)
class Transaction:
    """A parsed, schema-checked transaction. Build one with `from_json` (untrusted input)
    or `create` (sign a body with a wallet)."""

    body: Mapping[str, Any]
    signature: str
    body_bytes: bytes = field(repr=False, compare=False)
    txid: str

    @property
    def type(self) -> str:
        return self.body["type"]

    @property
    def timestamp(self) -> int:
        return self.body["timestamp"]

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def signer(self, coordinator: str) -> str:
        name = SIGNER_FIELD[self.type]
        return coordinator if name is None else self.body[name]

    def signature_valid(self, coordinator: str) -> bool:
        try:
            _verify_key(self.signer(coordinator)).verify(
                tx_signing_bytes(self.body_bytes), bytes.fromhex(self.signature))
        except (BadSignatureError, ValueError):
            return False
        return True

    def check_signature(self, coordinator: str) -> None:
        if not self.signature_valid(coordinator):
            who = "the coordinator" if SIGNER_FIELD[self.type] is None \
                else f"{SIGNER_FIELD[self.type]} {self.signer(coordinator)}"
            raise SignatureError(f"{self.type} signature is not valid for {who}")

    def leaf(self) -> bytes:
        return merkle_leaf(self.txid, self.signature)

    def to_json(self) -> dict[str, Any]:
        return {**self.body, "signature": self.signature}

    @classmethod
    def from_json(cls, data: Any) -> "Transaction":
        body = parse_body(data, with_signature=True)
        signature = data["signature"]
        if not isinstance(signature, str) or not _SIG.match(signature):
            raise SignatureError("signature must be 128 lowercase hex digits (Ed25519)")
        raw = canonical_json(body)
        return cls(body, signature, raw, sha256_hex(raw))

    @classmethod
    def create(cls, body: Mapping[str, Any], signer: Wallet) -> "Transaction":
        """Check `body`'s schema and sign it (the signer must be the kind's signer)."""
        clean = parse_body(dict(body), with_signature=False)
        raw = canonical_json(clean)
        return cls(clean, signer.sign(tx_signing_bytes(raw)), raw, sha256_hex(raw))


def parse_body(data: Any, with_signature: bool) -> dict[str, Any]:
    """Validate the shape of a transaction object; returns its body (no signature)."""
    if not isinstance(data, dict):
        raise MalformedError("a transaction must be a JSON object")
    kind = data.get("type")
    schema = SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise MalformedError(f"unknown transaction type {kind!r}; expected one of "
                             f"{sorted(SCHEMAS)}", "bad_type")
    if with_signature and "signature" not in data:
        raise SignatureError(f"{kind} has no signature")
    expected = _KEYS_SIGNED[kind] if with_signature else _KEYS[kind]
    if data.keys() != expected:
        missing = sorted(expected - data.keys())
        extra = sorted(data.keys() - expected)
        raise MalformedError(f"{kind}: missing fields {missing}, unexpected fields {extra}")
    for name, check in schema.items():
        check(name, data[name])
    return {k: v for k, v in data.items() if k != "signature"}


# ---- client-side builders (what wallets sign) ------------------------------------------
def register_tx(wallet: Wallet, username: str, timestamp: int) -> Transaction:
    return Transaction.create({"type": REGISTER, "address": wallet.address,
                               "username": username, "timestamp": timestamp}, wallet)


def transfer_tx(wallet: Wallet, to: str, amount: int, nonce: int,
                timestamp: int) -> Transaction:
    """`nonce` = the sender's last used nonce + 1 (GET /v1/balance gives `next_nonce`)."""
    return Transaction.create({"type": TRANSFER, "from": wallet.address, "to": to,
                               "amount": amount, "fee": FEE, "nonce": nonce,
                               "timestamp": timestamp}, wallet)


def report_tx(wallet: Wallet, target: str, reason: str, timestamp: int) -> Transaction:
    return Transaction.create({"type": REPORT, "reporter": wallet.address, "target": target,
                               "reason": reason, "timestamp": timestamp}, wallet)


def pay_inference_tx(wallet: Wallet, request: str, amount: int, timestamp: int) -> Transaction:
    """Pay `amount` units (the room's price, at least every MINT_INFERENCE the request can
    trigger) for inference request `request` (32 hex chars, chosen by the requester)."""
    return Transaction.create({"type": PAY_INFERENCE, "from": wallet.address, "request": request,
                               "amount": amount, "fee": FEE, "timestamp": timestamp}, wallet)
