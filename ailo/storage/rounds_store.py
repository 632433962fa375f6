"""Persistence of rounds, updates and model versions (SQLite, WAL).

Blobs (chunks, update bodies) live as content-addressed files; rows reference them by
sha256. An update row is inserted `pending` (its blob already durable) when the request path
admits it, and moves exactly once to `accepted` or `refused` (`decide_update`) when the
validation pipeline has judged it; rows still `pending` at start-up are judged then. A model version becomes visible only when its row commits, which happens after all
its chunk files are on disk, in the same transaction that closes its round and opens the
next: a crash at any point leaves either the old version or the new one, never half of one.
The same SQL runs on PostgreSQL through `ailo.storage.postgres.PostgresRoundStore`.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ailo.faults import crash_point
from ailo.storage.atomic import atomic_write

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY, manifest TEXT NOT NULL, val_loss REAL,
    round_id INTEGER, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY, base_version INTEGER NOT NULL, status TEXT NOT NULL,
    min_updates INTEGER NOT NULL, deadline REAL NOT NULL, task TEXT NOT NULL,
    created REAL NOT NULL, closed REAL);
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT, round_id INTEGER NOT NULL, client_id TEXT NOT NULL,
    address TEXT, n_samples INTEGER, train_loss REAL, sha256 TEXT, size INTEGER,
    status TEXT NOT NULL, reason TEXT, detail TEXT, received REAL NOT NULL, extra TEXT, idem TEXT);
DROP INDEX IF EXISTS one_accepted_per_client;
CREATE UNIQUE INDEX IF NOT EXISTS one_accepted_per_wallet
    ON updates(round_id, address) WHERE status = 'accepted' AND address IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS one_accepted_per_unsigned_client
    ON updates(round_id, client_id) WHERE status = 'accepted' AND address IS NULL;
CREATE INDEX IF NOT EXISTS updates_by_address ON updates(address, id);
CREATE INDEX IF NOT EXISTS updates_by_status ON updates(status, round_id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RoundRecord:
    id: int
    base_version: int
    status: str
    min_updates: int
    deadline: float
    task: dict
    created: float


@dataclass(frozen=True)
class UpdateRecord:
    id: int
    round_id: int
    client_id: str
    address: str | None
    n_samples: int
    train_loss: float
    sha256: str | None
    size: int
    status: str
    reason: str | None
    detail: str | None
    received: float
    extra: dict


UPDATE_COLUMNS = ("id, round_id, client_id, address, n_samples, train_loss, sha256, size, status, reason, "
                  "detail, received, extra")


def identity_key(client_id: str, address: str | None) -> str:
    """Who an update belongs to: its signing wallet; an unsigned update (open mode) its client id.
    A client id names nothing by itself: anyone can send any X-Ailo-Client."""
    return f"a:{address}" if address else f"c:{client_id}"


def _update_record(r) -> UpdateRecord:
    return UpdateRecord(*r[:12], json.loads(r[12] or "{}"))


@dataclass(frozen=True)
class VersionRecord:
    version: int
    manifest: str
    val_loss: float | None
    round_id: int | None
    created: float


class SQLiteRoundStore:
    """One coordinator's state directory: `state.db`, `chunks/`, `updates/`."""

    def __init__(self, directory: Path, db=None, cleanup: bool = True):
        """`db`: another connection with sqlite3's surface (ailo.storage.postgres.PgConnection);
        `cleanup=False` for readers beside a running coordinator (`ailo export`): no hygiene."""
        self.dir = Path(directory)
        self.chunks_dir = self.dir / "chunks"
        self.updates_dir = self.dir / "updates"
        for d in (self.dir, self.chunks_dir, self.updates_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = db if db is not None else self._connect()
        self._db.executescript(SCHEMA)
        if isinstance(self._db, sqlite3.Connection):  # SQLite state from before the validation pipeline
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(updates)")}
            if "idem" not in columns:
                self._db.execute("ALTER TABLE updates ADD COLUMN idem TEXT")
        self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS updates_by_idem ON updates(idem) WHERE idem IS NOT NULL")
        self.removed_at_start = self.remove_leftovers() if cleanup else {"tmp": 0, "updates": 0}

    def remove_leftovers(self) -> dict[str, int]:
        """Start-up hygiene: delete what an interrupted write left behind — `.*.tmp` blob files
        (killed mid-write) and update blobs no row references (killed between the file and its
        row). Chunk files are content-addressed and may be shared, so only their temporary
        files go. Call only while nothing else writes to this directory."""
        removed = {"tmp": 0, "updates": 0}
        for d in (self.chunks_dir, self.updates_dir):
            for tmp in d.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                removed["tmp"] += 1
        known = {r[0] for r in self._db.execute("SELECT DISTINCT sha256 FROM updates WHERE sha256 IS NOT NULL")}
        for f in self.updates_dir.iterdir():
            if _SHA256.fullmatch(f.name) and f.name not in known:
                f.unlink(missing_ok=True)
                removed["updates"] += 1
        return removed

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.dir / "state.db", check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    # -- blobs -------------------------------------------------------------------------
    @staticmethod
    def _write_blob(path: Path, data: bytes, point: str) -> None:
        if path.exists():
            return
        # fault injection (tests): die with half the file written
        atomic_write(path, data, halfway=lambda: crash_point(point))

    def put_chunk(self, sha256: str, data: bytes) -> None:
        self._write_blob(self.chunks_dir / sha256, data, "chunk_write")

    def put_chunks(self, blobs: Mapping[str, bytes]) -> None:
        """Write a version's chunks side by side (file writes release the GIL)."""
        with ThreadPoolExecutor(max(1, min(8, len(blobs)))) as pool:
            list(pool.map(lambda kv: self.put_chunk(*kv), blobs.items()))

    def chunk_path(self, sha256: str) -> Path:
        return self.chunks_dir / sha256

    def put_update_blob(self, sha256: str, data: bytes) -> None:
        self._write_blob(self.updates_dir / sha256, data, "update_write")

    def update_blob(self, sha256: str) -> bytes:
        return (self.updates_dir / sha256).read_bytes()

    def update_blob_path(self, sha256: str) -> Path:
        return self.updates_dir / sha256

    def incoming_path(self) -> Path:
        """A fresh temp file for a body being received (renamed into place once admitted)."""
        return self.updates_dir / f".incoming.{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}.tmp"

    def adopt_update_blob(self, sha256: str, tmp: Path) -> None:
        """Move a received (already fsynced) body into the content-addressed store."""
        target = self.updates_dir / sha256
        if target.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, target)

    # -- rows --------------------------------------------------------------------------
    def latest_version(self) -> VersionRecord | None:
        row = self._one("SELECT version, manifest, val_loss, round_id, created FROM versions "
                        "ORDER BY version DESC LIMIT 1")
        return VersionRecord(*row) if row else None

    def versions(self) -> list[VersionRecord]:
        rows = self._all("SELECT version, manifest, val_loss, round_id, created FROM versions ORDER BY version")
        return [VersionRecord(*r) for r in rows]

    def open_round(self) -> RoundRecord | None:
        row = self._one("SELECT id, base_version, status, min_updates, deadline, task, created FROM rounds "
                        "WHERE status = 'open' ORDER BY id DESC LIMIT 1")
        return RoundRecord(*row[:5], json.loads(row[5]), row[6]) if row else None

    def updates(self, round_id: int | None = None, status: str | None = None, limit: int = 1000,
                newest: bool = False) -> list[UpdateRecord]:
        """Matching rows in id order: the first `limit`, or with `newest` the last `limit`."""
        q, args = f"SELECT {UPDATE_COLUMNS} FROM updates WHERE 1=1", []
        if round_id is not None:
            q, args = q + " AND round_id = ?", args + [round_id]
        if status is not None:
            q, args = q + " AND status = ?", args + [status]
        order = "DESC" if newest else "ASC"
        with self._lock:
            rows = self._db.execute(q + f" ORDER BY id {order} LIMIT ?", args + [limit]).fetchall()
        if newest:
            rows.reverse()
        return [_update_record(r) for r in rows]

    def update(self, update_id: int) -> UpdateRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {UPDATE_COLUMNS} FROM updates WHERE id = ?", (update_id,)).fetchone()
        return _update_record(row) if row else None

    def update_by_idem(self, idem: str) -> UpdateRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {UPDATE_COLUMNS} FROM updates WHERE idem = ?", (idem,)).fetchone()
        return _update_record(row) if row else None

    def count_updates(self, round_id: int | None = None, status: str | None = None) -> int:
        q, args = "SELECT COUNT(*) FROM updates WHERE 1=1", []
        if round_id is not None:
            q, args = q + " AND round_id = ?", args + [round_id]
        if status is not None:
            q, args = q + " AND status = ?", args + [status]
        with self._lock:
            return int(self._db.execute(q, args).fetchone()[0])

    def holders(self, round_id: int) -> set[str]:
        """Identities (`identity_key`) with a pending or accepted update in the round."""
        with self._lock:
            rows = self._db.execute("SELECT client_id, address FROM updates WHERE round_id = ? AND status IN "
                                    "('pending', 'accepted')", (round_id,)).fetchall()
        return {identity_key(r[0], r[1]) for r in rows}

    def latest_update_of(self, client_id: str, address: str | None = None) -> UpdateRecord | None:
        """The newest update of a wallet (`address`), else of an unsigned client id (open mode)."""
        where, arg = ("address = ?", address) if address else ("client_id = ? AND address IS NULL", client_id)
        with self._lock:
            row = self._db.execute(f"SELECT {UPDATE_COLUMNS} FROM updates WHERE {where} ORDER BY id DESC LIMIT 1",
                                   (arg,)).fetchone()
        return _update_record(row) if row else None

    def decide_update(self, update_id: int, status: str, reason: str | None = None, detail: str | None = None,
                      extra: dict | None = None) -> bool:
        """pending → accepted/refused, once: False when the row was already decided."""
        assert status in ("accepted", "refused")
        with self._lock:
            cur = self._db.execute("UPDATE updates SET status=?, reason=?, detail=?, extra=? WHERE id=? AND status='pending'",
                                   (status, reason, detail, json.dumps(extra or {}), update_id))
            return cur.rowcount == 1

    def move_pending(self, update_id: int, round_id: int, extra: dict) -> bool:
        """A pending update admitted to a round that closed before it was judged joins the open
        round (the delayed rule, coordinator.judge); False when it is no longer pending."""
        with self._lock:
            cur = self._db.execute("UPDATE updates SET round_id=?, extra=? WHERE id=? AND status='pending'",
                                   (round_id, json.dumps(extra), update_id))
            return cur.rowcount == 1

    def accepted_update(self, round_id: int, client_id: str, address: str | None, sha256: str,
                        statuses: tuple[str, ...] = ("accepted",)) -> UpdateRecord | None:
        """The row of this exact body from this identity (wallet, else unsigned client id) in this
        round, in one of `statuses`."""
        marks = ",".join("?" * len(statuses))
        who, arg = ("address = ?", address) if address else ("client_id = ? AND address IS NULL", client_id)
        row = self._one(f"SELECT {UPDATE_COLUMNS} FROM updates WHERE round_id = ? AND {who} AND sha256 = ? "
                        f"AND status IN ({marks}) ORDER BY id LIMIT 1", (round_id, arg, sha256, *statuses))
        return _update_record(row) if row else None

    def clients(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT client_id FROM updates ORDER BY client_id")]

    def record_update(self, round_id: int, client_id: str, address: str | None, n_samples: int,
                      train_loss: float, sha256: str | None, size: int, status: str,
                      reason: str | None = None, detail: str | None = None, extra: dict | None = None,
                      idem: str | None = None) -> int:
        """Insert one update row; a pending or accepted row's blob must already be on disk.
        `idem` (unique) identifies a signed submission, so a retried body maps to this row."""
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO updates (round_id, client_id, address, n_samples, train_loss, sha256, size, status, "
                "reason, detail, received, extra, idem) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (round_id, client_id, address, n_samples, train_loss, sha256, size, status, reason, detail,
                 time.time(), json.dumps(extra or {}), idem))
            return int(cur.lastrowid)

    def start(self, manifest_json: str, val_loss: float | None, round_task: dict, min_updates: int,
              deadline: float) -> None:
        """Genesis: version 0 and round 1, in one transaction."""
        with self._lock, self._tx():
            self._db.execute("INSERT INTO versions VALUES (0, ?, ?, NULL, ?)", (manifest_json, val_loss, time.time()))
            self._insert_round(1, 0, min_updates, deadline, round_task)

    def publish(self, closing_round: int, version: int, manifest_json: str, val_loss: float | None,
                next_task: dict, min_updates: int, deadline: float) -> None:
        """Commit a new model version, close its round and open the next — atomically."""
        with self._lock, self._tx():
            self._db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?)",
                             (version, manifest_json, val_loss, closing_round, time.time()))
            self._db.execute("UPDATE rounds SET status='closed', closed=? WHERE id=? AND status='open'",
                             (time.time(), closing_round))
            self._insert_round(closing_round + 1, version, min_updates, deadline, next_task)

    def extend_deadline(self, round_id: int, deadline: float) -> None:
        with self._lock:
            self._db.execute("UPDATE rounds SET deadline=? WHERE id=?", (deadline, round_id))

    def bump_counter(self, name: str, amount: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = counters.value + ?",
                             (name, amount, amount))

    def set_counter(self, name: str, value: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = ?",
                             (name, value, value))

    def round(self, round_id: int) -> RoundRecord:
        row = self._one("SELECT id, base_version, status, min_updates, deadline, task, created FROM rounds "
                        "WHERE id = ?", (round_id,))
        if row is None:
            raise KeyError(f"no round {round_id}")
        return RoundRecord(*row[:5], json.loads(row[5]), row[6])

    def rounds(self) -> list[RoundRecord]:
        rows = self._all("SELECT id, base_version, status, min_updates, deadline, task, created FROM rounds "
                         "ORDER BY id")
        return [RoundRecord(*r[:5], json.loads(r[5]), r[6]) for r in rows]

    def counters(self) -> dict[str, int]:
        return dict(self._all("SELECT name, value FROM counters"))

    def _insert_round(self, round_id: int, base_version: int, min_updates: int, deadline: float, task: dict) -> None:
        self._db.execute("INSERT INTO rounds (id, base_version, status, min_updates, deadline, task, created) "
                         "VALUES (?, ?, 'open', ?, ?, ?, ?)",
                         (round_id, base_version, min_updates, deadline, json.dumps(task), time.time()))

    def _one(self, sql: str, args: tuple = ()):
        with self._lock:  # one connection shared by request threads and the pipeline
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple = ()) -> list:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _tx(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, exc, tb):
                db.execute("ROLLBACK" if exc_type else "COMMIT")
                return False
        return _Tx()

    def close(self) -> None:
        self._db.close()
