"""Ledger store on SQLite and on PostgreSQL (same tests, real servers): atomic block writes,
restart with idempotent mints, refusing a tampered database; SQLite runs in WAL mode."""
from __future__ import annotations

import json

import pytest

from ailo.ledger import UNIT, verify_chain
from ailo.storage.ledger_store import BlockRecord, LedgerStore, SQLiteLedgerStore, StoreError

from ledger_helpers import FakeClock, join, send, service, wallet
from storage_backends import backend  # noqa: F401  (fixture: sqlite | postgresql)


class InjectedFault(Exception):
    """Stands in for a disk or connection error in the middle of a block write."""


def snapshot(backend) -> dict:
    return {t: backend.sql(f"SELECT * FROM {t} ORDER BY 1") for t in ("blocks", "txs", "accounts")}


def test_sqlite_store_implements_protocol_with_wal(tmp_path) -> None:
    store = SQLiteLedgerStore(tmp_path / "ledger.db")
    assert isinstance(store, LedgerStore)
    assert store.journal_mode() == "wal"
    assert store.tip_height() == -1


def test_store_implements_protocol(backend) -> None:
    store = backend.ledger()
    assert isinstance(store, LedgerStore)
    assert store.tip_height() == -1 and store.blocks() == [] and store.account("nobody") is None


class FailingMixin:
    """Fails after the block row and tx rows were written, before the balances."""
    fail = False

    def _upsert_accounts(self, record) -> None:
        if self.fail:
            raise InjectedFault("disk I/O error (injected)")
        super()._upsert_accounts(record)


def test_failed_block_write_leaves_store_and_service_unchanged(backend) -> None:
    store = backend.ledger(type("FailingStore", (FailingMixin, backend.ledger_cls), {}))
    clock = FakeClock()
    svc = service(store, clock)
    alice, bob = wallet("alice"), wallet("bob")
    join(svc, alice)
    before_db, before_bal = snapshot(backend), svc.balance(alice.address)
    store.fail = True
    with pytest.raises(InjectedFault):
        svc.submit_transfer(send(svc, alice, bob, 1000))
    with pytest.raises(InjectedFault):
        svc.mint_training(alice.address, 10, "update:lost")
    assert snapshot(backend) == before_db                      # nothing partial in the database
    assert svc.balance(alice.address) == before_bal            # nor in memory
    store.fail = False
    svc.submit_transfer(send(svc, alice, bob, 1000))           # nonce 1 still free
    assert svc.mint_training(alice.address, 10, "update:lost").created
    assert verify_chain(svc.chain(), now=clock()).ok


def test_gap_in_heights_is_refused(backend) -> None:
    store = backend.ledger()
    svc = service(store)
    block = dict(svc.chain()[0], height=5)
    with pytest.raises(StoreError):
        store.append_block(BlockRecord(5, "ab" * 32, 0, block))
    assert store.tip_height() == 0


def test_restart_keeps_state_and_mint_idempotency(backend) -> None:
    clock = FakeClock()
    svc = service(backend.ledger(), clock)
    alice, bob = wallet("alice"), wallet("bob")
    join(svc, alice)
    first = svc.mint_training(alice.address, UNIT // 10, "update:42")
    svc.submit_transfer(send(svc, alice, bob, 1000))
    svc.store.close()

    again = service(backend.ledger(), clock)                   # coordinator restarts
    replay = again.mint_training(alice.address, UNIT // 10, "update:42")
    assert not replay.created and replay.txid == first.txid
    assert again.balance(alice.address) == svc.balance(alice.address)
    assert again.balance(alice.address).nonce == 1
    row = again.store.account(alice.address)
    assert (row.spendable, row.pending, row.nonce, row.username) == \
        (again.balance(alice.address).spendable, 0, 1, "alice")
    assert again.store.account(bob.address).pending == 1000
    assert again.store.tx_location(first.txid) == (first.height, 0)
    assert [b["height"] for b in again.store.blocks(1, limit=2)] == [1, 2]


def test_tampered_database_is_refused_at_start(backend) -> None:
    svc = service(backend.ledger())
    join(svc, wallet("alice"))
    svc.store.close()
    raw = json.loads(backend.sql("SELECT json FROM blocks WHERE height = 2")[0][0])
    raw["txs"][0]["amount"] *= 10
    backend.sql("UPDATE blocks SET json = ? WHERE height = 2", (json.dumps(raw),))
    with pytest.raises(StoreError, match="block 2.*bad_signature"):
        service(backend.ledger())


def test_other_coordinator_key_is_refused(backend) -> None:
    service(backend.ledger()).store.close()
    from ailo.ledger.service import LedgerService
    from ailo.wallet import Wallet
    with pytest.raises(StoreError, match="another coordinator"):
        LedgerService(backend.ledger(), Wallet.from_label("impostor"))
