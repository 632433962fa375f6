"""SQLite ledger store: WAL, atomic block writes, restart with idempotent mints,
refusing a tampered database."""
from __future__ import annotations

import json
import sqlite3

import pytest

from ailo.ledger import UNIT, verify_chain
from ailo.storage.ledger_store import LedgerStore, SQLiteLedgerStore, StoreError

from ledger_helpers import FakeClock, join, send, service, wallet


def snapshot(path) -> dict:
    db = sqlite3.connect(path)
    try:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in ("blocks", "txs", "accounts")}
    finally:
        db.close()


def test_sqlite_store_implements_protocol_with_wal(tmp_path) -> None:
    store = SQLiteLedgerStore(tmp_path / "ledger.db")
    assert isinstance(store, LedgerStore)
    assert store.journal_mode() == "wal"
    assert store.tip_height() == -1


class FailingStore(SQLiteLedgerStore):
    """Fails after the block row and tx rows were written, before the balances."""
    fail = False

    def _upsert_accounts(self, record) -> None:
        if self.fail:
            raise sqlite3.OperationalError("disk I/O error (injected)")
        super()._upsert_accounts(record)


def test_failed_block_write_leaves_store_and_service_unchanged(tmp_path) -> None:
    path = tmp_path / "ledger.db"
    store = FailingStore(path)
    clock = FakeClock()
    svc = service(store, clock)
    alice, bob = wallet("alice"), wallet("bob")
    join(svc, alice)
    before_db, before_bal = snapshot(path), svc.balance(alice.address)
    store.fail = True
    with pytest.raises(sqlite3.OperationalError):
        svc.submit_transfer(send(svc, alice, bob, 1000))
    with pytest.raises(sqlite3.OperationalError):
        svc.mint_training(alice.address, 10, "update:lost")
    assert snapshot(path) == before_db                         # nothing partial on disk
    assert svc.balance(alice.address) == before_bal            # nor in memory
    store.fail = False
    svc.submit_transfer(send(svc, alice, bob, 1000))           # nonce 1 still free
    assert svc.mint_training(alice.address, 10, "update:lost").created
    assert verify_chain(svc.chain(), now=clock()).ok


def test_gap_in_heights_is_refused(tmp_path) -> None:
    store = SQLiteLedgerStore(tmp_path / "l.db")
    svc = service(store)
    block = dict(svc.chain()[0], height=5)
    from ailo.storage.ledger_store import BlockRecord
    with pytest.raises(StoreError):
        store.append_block(BlockRecord(5, "ab" * 32, 0, block))
    assert store.tip_height() == 0


def test_restart_keeps_state_and_mint_idempotency(tmp_path) -> None:
    path = tmp_path / "ledger.db"
    clock = FakeClock()
    svc = service(SQLiteLedgerStore(path), clock)
    alice, bob = wallet("alice"), wallet("bob")
    join(svc, alice)
    first = svc.mint_training(alice.address, UNIT // 10, "update:42")
    svc.submit_transfer(send(svc, alice, bob, 1000))
    svc.store.close()

    again = service(SQLiteLedgerStore(path), clock)            # coordinator restarts
    replay = again.mint_training(alice.address, UNIT // 10, "update:42")
    assert not replay.created and replay.txid == first.txid
    assert again.balance(alice.address) == svc.balance(alice.address)
    assert again.balance(alice.address).nonce == 1
    row = again.store.account(alice.address)
    assert (row.spendable, row.pending, row.nonce, row.username) == \
        (again.balance(alice.address).spendable, 0, 1, "alice")
    assert again.store.account(bob.address).pending == 1000
    assert again.store.tx_location(first.txid) == (first.height, 0)


def test_tampered_database_is_refused_at_start(tmp_path) -> None:
    path = tmp_path / "ledger.db"
    svc = service(SQLiteLedgerStore(path))
    join(svc, wallet("alice"))
    svc.store.close()
    db = sqlite3.connect(path)
    raw = json.loads(db.execute("SELECT json FROM blocks WHERE height = 2").fetchone()[0])
    raw["txs"][0]["amount"] *= 10
    db.execute("UPDATE blocks SET json = ? WHERE height = 2", (json.dumps(raw),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="block 2.*bad_signature"):
        service(SQLiteLedgerStore(path))


def test_other_coordinator_key_is_refused(tmp_path) -> None:
    path = tmp_path / "ledger.db"
    service(SQLiteLedgerStore(path)).store.close()
    from ailo.ledger.service import LedgerService
    from ailo.wallet import Wallet
    with pytest.raises(StoreError, match="another coordinator"):
        LedgerService(SQLiteLedgerStore(path), Wallet.from_label("impostor"))
