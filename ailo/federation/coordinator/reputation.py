"""Per-wallet reputation: how much of a wallet's signed work was accepted or refused (SPEC R6,
R10). Kept in the round store's counters (`rep:<address>:<field>`), so it survives restarts
and needs no schema change. Only refusals of updates whose signature verified and whose nonce
was fresh count, so nobody can spoil another wallet's record by sending junk in its name.

Repeated refusals slow a wallet down: after k refusals in a row it must wait
min(cap, base·2^(k−1)) seconds before its next update is even looked at
(`validate.cooldown_seconds`); one accepted update resets the streak.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ailo.storage.rounds_store import SQLiteRoundStore

PREFIX = "rep:"


@dataclass
class WalletRecord:
    address: str
    accepted: int = 0
    refused: int = 0
    streak: int = 0                  # refusals since the last accepted update
    last_refused_ms: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


class Reputation:
    def __init__(self, store: "SQLiteRoundStore"):
        self.store = store

    def _key(self, address: str, name: str) -> str:
        return f"{PREFIX}{address}:{name}"

    def record(self, address: str) -> WalletRecord:
        return self.all(self.store.counters()).get(address, WalletRecord(address))

    def all(self, counters: dict[str, int] | None = None) -> dict[str, WalletRecord]:
        out: dict[str, WalletRecord] = {}
        for key, value in (counters if counters is not None else self.store.counters()).items():
            if not key.startswith(PREFIX):
                continue
            address, _, name = key[len(PREFIX):].partition(":")
            rec = out.setdefault(address, WalletRecord(address))
            if name.startswith("reason."):
                rec.reasons[name[len("reason."):]] = value
            elif name in ("accepted", "refused", "streak", "last_refused_ms"):
                setattr(rec, name, value)
        return out

    def accepted(self, address: str) -> None:
        self.store.bump_counter(self._key(address, "accepted"), 1)
        self.store.set_counter(self._key(address, "streak"), 0)

    def refused(self, address: str, reason: str, now: float | None = None) -> None:
        self.store.bump_counter(self._key(address, "refused"), 1)
        self.store.bump_counter(self._key(address, "streak"), 1)
        self.store.bump_counter(self._key(address, f"reason.{reason}"), 1)
        self.store.set_counter(self._key(address, "last_refused_ms"), int(1000 * (time.time() if now is None else now)))
