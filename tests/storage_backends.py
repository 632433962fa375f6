"""Storage backends for parametrised tests: SQLite files, or a fresh PostgreSQL database on
the session's real server (tests/servers.py). Each gives raw SQL access for inspection and
tampering, and re-opens the same database (a coordinator restart)."""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

BACKENDS = ["sqlite", "postgresql"]


@dataclass
class Backend:
    name: str
    state_dir: Path                     # blobs (and SQLite's state.db / ledger.db)
    url: str | None                     # the PostgreSQL database, None for SQLite
    ledger_cls: type
    rounds_cls: type

    def ledger(self, cls: type | None = None):
        """A ledger store on this backend's database (`cls`: a subclass, e.g. with faults)."""
        cls = cls or self.ledger_cls
        return cls(self.url) if self.url else cls(self.state_dir / "ledger.db")

    def rounds(self, cls: type | None = None):
        cls = cls or self.rounds_cls
        return cls(self.state_dir, self.url) if self.url else cls(self.state_dir)

    def sql(self, query: str, params: tuple = (), db: str = "ledger") -> list:
        """Raw SQL outside the stores (committed); `db` picks the SQLite file."""
        if self.url:
            import psycopg
            with psycopg.connect(self.url, autocommit=True) as conn:
                cur = conn.execute(query.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        conn = sqlite3.connect(self.state_dir / ("ledger.db" if db == "ledger" else "state.db"))
        try:
            rows = conn.execute(query, params).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()


def make_backend(name: str, tmp_path: Path, request) -> Backend:
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    if name == "sqlite":
        from ailo.storage.ledger_store import SQLiteLedgerStore
        from ailo.storage.rounds_store import SQLiteRoundStore
        return Backend(name, state, None, SQLiteLedgerStore, SQLiteRoundStore)
    from ailo.storage.postgres import PostgresLedgerStore, PostgresRoundStore
    return Backend(name, state, request.getfixturevalue("pg_url"), PostgresLedgerStore, PostgresRoundStore)


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Backend:
    return make_backend(request.param, tmp_path, request)
