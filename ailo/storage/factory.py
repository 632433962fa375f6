"""Pick the storage backend from a database URL: SQLite files in the state directory (default)
or one PostgreSQL database (`postgresql://...`) holding both the round and the ledger tables.

Blobs (chunk files, update bodies, the coordinator key, exports) always stay in the state
directory: they are content-addressed files, which is what mirrors and backups want.
"""
from __future__ import annotations

from pathlib import Path

PG_SCHEMES = ("postgresql://", "postgres://")


class StoreConfigError(ValueError):
    """The database URL or state directory cannot be used; the message says why."""


def is_postgres(db_url: str | None) -> bool:
    return bool(db_url) and db_url.startswith(PG_SCHEMES)


def _check_url(db_url: str | None) -> None:
    if db_url and not is_postgres(db_url):
        raise StoreConfigError(f"unsupported --db {db_url!r}: give a postgresql://user@host:port/dbname URL "
                               "(leave it out for SQLite files in the state directory)")


def open_round_store(state_dir: Path, db_url: str | None = None, create: bool = True):
    """The coordinator's round store. `create=False` (a reader such as `ailo export`, possibly
    beside a running coordinator) refuses a state that does not exist yet and skips start-up
    hygiene, which would delete an update blob whose row is about to be written."""
    _check_url(db_url)
    state_dir = Path(state_dir)
    if not create and not (state_dir / "chunks").is_dir():
        raise StoreConfigError(f"{state_dir} is not a coordinator state directory (no chunks/ folder)")
    if is_postgres(db_url):
        from ailo.storage.postgres import PostgresRoundStore
        return PostgresRoundStore(state_dir, db_url, cleanup=create)
    if not create and not (state_dir / "state.db").is_file():
        raise StoreConfigError(f"{state_dir} has no state.db (if the coordinator runs on PostgreSQL, pass --db)")
    from ailo.storage.rounds_store import SQLiteRoundStore
    return SQLiteRoundStore(state_dir, cleanup=create)


def open_ledger_store(state_dir: Path, db_url: str | None = None):
    _check_url(db_url)
    if is_postgres(db_url):
        from ailo.storage.postgres import PostgresLedgerStore
        return PostgresLedgerStore(db_url)
    from ailo.storage.ledger_store import SQLiteLedgerStore
    return SQLiteLedgerStore(Path(state_dir) / "ledger.db")
