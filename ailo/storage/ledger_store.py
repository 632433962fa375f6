"""Persistent storage for the ledger: blocks, a transaction index and account balances.

`LedgerStore` is the small interface; the default `SQLiteLedgerStore` uses WAL and writes each block together with its transaction rows and
the balance rows it changed in ONE SQL transaction, so a crash or error mid-write leaves
the previous block as the tip and no partial balances. `PostgresLedgerStore`
(ailo.storage.postgres) runs this same SQL and transaction on PostgreSQL.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


class StoreError(Exception):
    """The store refused a write (e.g. a height gap) or is inconsistent."""


@dataclass(frozen=True)
class AccountRow:
    address: str
    spendable: int
    pending: int
    nonce: int
    username: str | None


@dataclass(frozen=True)
class TxRow:
    txid: str
    index: int
    type: str
    ref: str | None = None


@dataclass(frozen=True)
class BlockRecord:
    """Everything one block changes: written all-or-nothing by `append_block`."""

    height: int
    hash: str
    timestamp: int
    block: dict[str, Any]
    txs: list[TxRow] = field(default_factory=list)
    accounts: list[AccountRow] = field(default_factory=list)


@runtime_checkable
class LedgerStore(Protocol):
    def append_block(self, record: BlockRecord) -> None:
        """Atomically append the block at height tip+1 with its tx rows and account rows."""

    def blocks(self, from_height: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Block JSON objects in height order starting at `from_height`."""

    def tip_height(self) -> int:
        """Height of the last block, -1 when empty."""

    def account(self, address: str) -> AccountRow | None: ...

    def tx_location(self, txid: str) -> tuple[int, int] | None:
        """(height, index) of a transaction, None when unknown."""

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, timestamp INTEGER NOT NULL,
    json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS txs (
    txid TEXT PRIMARY KEY, height INTEGER NOT NULL REFERENCES blocks(height),
    idx INTEGER NOT NULL, type TEXT NOT NULL, ref TEXT UNIQUE);
CREATE TABLE IF NOT EXISTS accounts (
    address TEXT PRIMARY KEY, spendable INTEGER NOT NULL CHECK (spendable >= 0),
    pending INTEGER NOT NULL CHECK (pending >= 0), nonce INTEGER NOT NULL,
    username TEXT UNIQUE);
"""


class SQLiteLedgerStore:
    """SQLite backend (stdlib). Thread-safe through one lock; `path=":memory:"` for tests."""

    def __init__(self, path: str | Path = ":memory:", db=None) -> None:
        """`db`: another connection with sqlite3's surface (ailo.storage.postgres.PgConnection)."""
        self.path = str(path)
        self._lock = threading.RLock()
        self._db = db if db is not None else self._connect()
        self._db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    # ---- writes ----------------------------------------------------------------------
    def append_block(self, record: BlockRecord) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                tip = self._tip()
                if record.height != tip + 1:
                    raise StoreError(f"block {record.height} does not follow tip {tip}")
                self._insert_block(record)
                self._insert_txs(record)
                self._upsert_accounts(record)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _insert_block(self, record: BlockRecord) -> None:
        self._db.execute("INSERT INTO blocks(height, hash, timestamp, json) VALUES (?,?,?,?)",
                         (record.height, record.hash, record.timestamp,
                          json.dumps(record.block, separators=(",", ":"))))

    def _insert_txs(self, record: BlockRecord) -> None:
        self._db.executemany(
            "INSERT INTO txs(txid, height, idx, type, ref) VALUES (?,?,?,?,?)",
            [(t.txid, record.height, t.index, t.type, t.ref) for t in record.txs])

    def _upsert_accounts(self, record: BlockRecord) -> None:
        self._db.executemany(
            "INSERT INTO accounts(address, spendable, pending, nonce, username) "
            "VALUES (?,?,?,?,?) ON CONFLICT(address) DO UPDATE SET "
            "spendable=excluded.spendable, pending=excluded.pending, nonce=excluded.nonce, "
            "username=excluded.username",
            [(a.address, a.spendable, a.pending, a.nonce, a.username)
             for a in record.accounts])

    # ---- reads -----------------------------------------------------------------------
    def _tip(self) -> int:
        row = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()
        return -1 if row[0] is None else int(row[0])

    def tip_height(self) -> int:
        with self._lock:
            return self._tip()

    def blocks(self, from_height: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            q, args = "SELECT json FROM blocks WHERE height >= ? ORDER BY height", [from_height]
            if limit is not None:
                q, args = q + " LIMIT ?", args + [limit]
            rows = self._db.execute(q, args).fetchall()
        return [json.loads(r[0]) for r in rows]

    def account(self, address: str) -> AccountRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT address, spendable, pending, nonce, username FROM accounts "
                "WHERE address = ?", (address,)).fetchone()
        return AccountRow(*row) if row else None

    def tx_location(self, txid: str) -> tuple[int, int] | None:
        with self._lock:
            row = self._db.execute("SELECT height, idx FROM txs WHERE txid = ?",
                                   (txid,)).fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def journal_mode(self) -> str:
        with self._lock:
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
