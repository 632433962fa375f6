"""Canonical serialization, hashing and the exact bytes that get signed.

Canonical JSON = JSON with keys sorted by code point, no insignificant whitespace, only
ASCII strings and integers in [0, 2**53 - 1] (enforced by the schemas in `tx.py`), so
Python's `json.dumps(sort_keys=True, separators=(",", ":"))` and a JavaScript
`JSON.stringify` over sorted keys produce the same bytes (an RFC 8785 subset).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

TX_DOMAIN = b"AILO-TX-V1\n"
BLOCK_DOMAIN = b"AILO-BLOCK-V1\n"
ZERO_HASH = "0" * 64
MAX_SAFE_INT = 2**53 - 1


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                            allow_nan=False)


def canonical_json(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tx_signing_bytes(body_json: bytes) -> bytes:
    """What a transaction's signer signs: domain tag + canonical JSON of the body
    (every field except `signature`)."""
    return TX_DOMAIN + body_json


def block_signing_bytes(block_hash: str) -> bytes:
    """What the coordinator signs for a block: domain tag + the block hash in hex (ASCII)."""
    return BLOCK_DOMAIN + block_hash.encode()


def merkle_leaf(txid: str, signature: str) -> bytes:
    """Leaf = sha256(0x00 || txid || signature): commits to the body and the signature."""
    return hashlib.sha256(b"\x00" + bytes.fromhex(txid) + bytes.fromhex(signature)).digest()


def merkle_root(leaves: Iterable[bytes]) -> str:
    """Binary Merkle tree with node = sha256(0x01 || left || right); an unpaired last node
    is carried up unchanged (never duplicated, so no CVE-2012-2459-style collisions).
    The root of zero leaves is sha256 of the empty string."""
    level = list(leaves)
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        nxt = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
               for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()
