"""Signed updates: the canonical digest a contributor's wallet signs (SPEC R6).

The message is one ASCII line, easy to rebuild byte-for-byte in the browser:

    ailo-update/v2|<round>|<base_version>|<sha256 of body, hex>|<n_samples>|<nonce>|<timestamp_ms>|<client id>

The client id (X-Ailo-Client, UTF-8, last so a `|` inside it cannot shift the other fields) is
bound to the wallet by the signature: a relay cannot re-label a signed update, and a round's
holders are keyed by the signing address anyway (`Coordinator.identity`), so nobody can make
someone else's update `duplicate` or their task `wait` by naming their client id.

The nonce must grow strictly per address (replay protection); the worker uses the current
time in microseconds, so it also grows across restarts.
"""
from __future__ import annotations

import dataclasses
import time

from ailo.federation.core.update_format import UpdateMeta
from ailo.wallet import Wallet

PREFIX = "ailo-update/v2"


def update_message(round_id: int, base_version: int, body_sha256: str, n_samples: int, nonce: int,
                   timestamp_ms: int, client_id: str) -> bytes:
    return f"{PREFIX}|{round_id}|{base_version}|{body_sha256}|{n_samples}|{nonce}|{timestamp_ms}|{client_id}".encode()


def sign_update(wallet: Wallet, meta: UpdateMeta, body_sha256: str, nonce: int | None = None,
                timestamp_ms: int | None = None) -> UpdateMeta:
    nonce = time.time_ns() // 1000 if nonce is None else nonce
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    sig = wallet.sign(update_message(meta.round_id, meta.base_version, body_sha256, meta.n_samples, nonce, ts,
                                     meta.client_id))
    return dataclasses.replace(meta, address=wallet.address, signature=sig, nonce=nonce, timestamp=ts)

