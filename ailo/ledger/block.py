"""Blocks: header, hash, Merkle commitment and the coordinator's signature.

Wire form (one JSON object per block):

    {"height", "prev", "timestamp", "merkle_root", "tx_count", ["params" at height 0],
     "txs": [tx, ...], "hash", "signature"}

header = every field except txs/hash/signature; hash = sha256(canonical_json(header));
signature = Ed25519 by the coordinator over block_signing_bytes(hash).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from nacl.exceptions import BadSignatureError

from ailo.wallet import Wallet

from .codec import (MAX_SAFE_INT, ZERO_HASH, block_signing_bytes, canonical_json,
                    merkle_root, sha256_hex)
from .errors import ChainError, MalformedError
from .params import ChainParams
from .tx import Transaction, _verify_key

_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_SIG = re.compile(r"^[0-9a-f]{128}\Z")
HEADER_FIELDS = ("height", "prev", "timestamp", "merkle_root", "tx_count")


@dataclass(frozen=True)
class Block:
    """A sealed block. `txs` are parsed lazily by the verifier (so a bad transaction is
    reported with its index); the service builds blocks from parsed transactions."""

    header: Mapping[str, Any]
    txs: tuple[Any, ...]          # raw tx JSON objects, in order
    hash: str
    signature: str

    @property
    def height(self) -> int:
        return self.header["height"]

    @property
    def prev(self) -> str:
        return self.header["prev"]

    @property
    def timestamp(self) -> int:
        return self.header["timestamp"]

    @property
    def params(self) -> Mapping[str, Any] | None:
        return self.header.get("params")

    def to_json(self) -> dict[str, Any]:
        return {**self.header, "txs": list(self.txs), "hash": self.hash,
                "signature": self.signature}

    def computed_hash(self) -> str:
        return sha256_hex(canonical_json(dict(self.header)))

    def signature_valid(self, coordinator: str) -> bool:
        try:
            _verify_key(coordinator).verify(block_signing_bytes(self.hash),
                                            bytes.fromhex(self.signature))
        except (BadSignatureError, ValueError):
            return False
        return True

    @classmethod
    def from_json(cls, data: Any) -> "Block":
        """Shape check only (types and field set); links and signatures are verified by
        `verify.py` in the documented order."""
        if not isinstance(data, dict):
            raise MalformedError("a block must be a JSON object")
        expected = set(HEADER_FIELDS) | {"txs", "hash", "signature"}
        if data.get("height") == 0:
            expected.add("params")
        if data.keys() != expected:
            raise MalformedError(f"block fields must be {sorted(expected)}, got "
                                 f"{sorted(data.keys())}")
        for name in ("height", "timestamp", "tx_count"):
            value = data[name]
            if type(value) is not int or not 0 <= value <= MAX_SAFE_INT:
                raise MalformedError(f"block {name} must be a non-negative integer")
        for name in ("prev", "merkle_root", "hash"):
            if not isinstance(data[name], str) or not _HEX64.match(data[name]):
                raise MalformedError(f"block {name} must be 64 lowercase hex digits")
        if not isinstance(data["signature"], str) or not _SIG.match(data["signature"]):
            raise MalformedError("block signature must be 128 lowercase hex digits")
        if not isinstance(data["txs"], list):
            raise MalformedError("block txs must be a list")
        header = {k: v for k, v in data.items() if k not in ("txs", "hash", "signature")}
        return cls(header, tuple(data["txs"]), data["hash"], data["signature"])


def seal_block(height: int, prev: str, timestamp: int, txs: Sequence[Transaction],
               coordinator: Wallet, params: ChainParams | None = None) -> Block:
    """Build and sign a block. Does NOT check ledger rules: callers apply the
    transactions to a `LedgerState` first (the vector generator uses this directly to
    forge coordinator-signed *invalid* blocks)."""
    header: dict[str, Any] = {
        "height": height, "prev": prev, "timestamp": timestamp,
        "merkle_root": merkle_root(tx.leaf() for tx in txs), "tx_count": len(txs)}
    if height == 0:
        if params is None:
            raise ChainError("the genesis block needs params", "bad_params")
        header["params"] = params.to_json()
    block_hash = sha256_hex(canonical_json(header))
    signature = coordinator.sign(block_signing_bytes(block_hash))
    return Block(header, tuple(tx.to_json() for tx in txs), block_hash, signature)


def genesis_block(coordinator: Wallet, params: ChainParams, timestamp: int) -> Block:
    if params.coordinator != coordinator.address:
        raise ChainError("params.coordinator must be the signing wallet", "bad_params")
    return seal_block(0, ZERO_HASH, timestamp, [], coordinator, params)
