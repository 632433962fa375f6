"""LedgerService: the coordinator's ledger (the only ledger code that does I/O, through a
`LedgerStore`). Every rule lives in `state.py`; this class orders, signs and persists.

Stable API for the rest of the system::

    svc = LedgerService(SQLiteLedgerStore(path), coordinator_wallet)
    svc.register(signed_register_tx: dict) -> Accepted            # username <-> address
    svc.mint_training(address: str, amount: int, ref: str) -> MintReceipt
    svc.mint_inference(address: str, amount: int, ref: str) -> MintReceipt
    svc.submit_transfer(signed_tx: dict) -> Accepted
    svc.submit_report(signed_report: dict) -> Accepted            # may trigger a REVERSAL
    svc.pay_inference(signed_pay: dict) -> Accepted               # PAY_INFERENCE (burns the price)
    svc.balance(address: str) -> Balance
    svc.chain(from_height: int = 0, limit: int | None = None) -> list[dict]
    svc.seal_block() -> dict | None
    svc.info() -> dict

Paying a reward: `svc.mint_training(addr, int(0.1 * UNIT), ref=f"update:{update_id}")` or
`svc.mint_inference(addr, UNIT // 20, ref=f"request:{request_id}:{node_id}")`. Mints are
idempotent by `ref`: calling again with the same ref (even after a restart) returns the
original receipt with `created=False` and mints nothing; the same ref with a different
address/amount/kind raises ConflictError("ref_conflict"). The recipient must be
registered. Amounts are integers of units (1 ALC = UNIT = 10**8 units).

With `auto_seal=True` (default) every call seals its own block before returning, so a
returned receipt is durable. With `auto_seal=False` transactions collect in an open block
until `seal_block()` or `max_block_txs`; a failed store write then drops that batch.
Received transfers settle in the first block sealed after their dispute window; the
coordinator should call `seal_block()` every few seconds (it seals an empty block only when
a settlement is due) so `balance()` moves them from pending to spendable without waiting
for other traffic.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ailo.storage.ledger_store import (AccountRow, BlockRecord, LedgerStore, StoreError,
                                       TxRow)
from ailo.wallet import Wallet

from .block import genesis_block, seal_block
from .errors import ConflictError, LedgerError, MalformedError
from .params import ChainParams
from .state import LedgerState, apply_tx, begin_block, end_block
from .tx import (MINT_INFERENCE, MINT_TRAINING, PAY_INFERENCE, REGISTER, REPORT, REVERSAL, TRANSFER,
                 Transaction)
from .verify import check_block, now_ms


@dataclass(frozen=True)
class MintReceipt:
    txid: str
    ref: str
    type: str
    address: str
    amount: int
    height: int
    created: bool          # False when the ref had already been minted (idempotent replay)


@dataclass(frozen=True)
class Accepted:
    txid: str
    type: str
    height: int                    # block the transaction is (or will be) sealed in
    status: str | None = None      # REPORT: REPORTED / DISPUTED / REVERSED
    reversal_txid: str | None = None


@dataclass(frozen=True)
class Balance:
    address: str
    spendable: int                 # can be spent now
    pending: int                   # received transfers still inside their dispute window
    nonce: int                     # last used TRANSFER nonce; the next one is nonce + 1
    username: str | None
    active: bool


class LedgerService:
    def __init__(self, store: LedgerStore, coordinator: Wallet,
                 params: ChainParams | None = None, *,
                 clock: Callable[[], int] = now_ms, auto_seal: bool = True,
                 max_block_txs: int = 1000) -> None:
        self.store, self.coordinator, self.clock = store, coordinator, clock
        self.auto_seal, self.max_block_txs = auto_seal, max_block_txs
        self._lock = threading.RLock()
        self._working: LedgerState | None = None
        self._open_txs: list[Transaction] = []
        if store.tip_height() < 0:
            params = params or ChainParams(coordinator.address, pool=coordinator.address)
            genesis = genesis_block(coordinator, params, clock()).to_json()
            state = check_block(None, genesis, 0, clock())
            store.append_block(BlockRecord(0, genesis["hash"], genesis["timestamp"], genesis))
        else:
            state = self._replay()
        if state.params.coordinator != coordinator.address:
            raise StoreError("this ledger was created by another coordinator key")
        self._state = state

    def _replay(self) -> LedgerState:
        """Rebuild state from the stored chain with the verifier itself, so a tampered
        database is refused at start-up."""
        state: LedgerState | None = None
        now, height, batch = self.clock(), 0, 1000
        while True:
            blocks = self.store.blocks(height, batch)
            for raw in blocks:
                try:
                    state = check_block(state, raw, height, now)
                except LedgerError as exc:
                    raise StoreError(f"stored chain is invalid at block {height}: {exc}")
                height += 1
            if len(blocks) < batch:
                assert state is not None
                return state

    # ---- submissions -----------------------------------------------------------------
    def register(self, signed_tx: Mapping[str, Any]) -> Accepted:
        return self._submit_signed(signed_tx, REGISTER)

    def submit_transfer(self, signed_tx: Mapping[str, Any]) -> Accepted:
        return self._submit_signed(signed_tx, TRANSFER)

    def pay_inference(self, signed_tx: Mapping[str, Any]) -> Accepted:
        """A requester's signed PAY_INFERENCE: the price leaves its balance (burned) and the
        request may then fund MINT_INFERENCE up to that amount, never to the payer."""
        return self._submit_signed(signed_tx, PAY_INFERENCE)

    def submit_report(self, signed_report: Mapping[str, Any]) -> Accepted:
        with self._lock:
            accepted = self._submit_signed(signed_report, REPORT, seal=False)
            state = self._open()
            target = signed_report["target"]
            status, reversal = state.status.get(target), None
            if state.reversal_due(target):
                p = state.pending[target]
                rev = Transaction.create({"type": REVERSAL, "target": target,
                                          "from": p.recipient, "to": p.sender,
                                          "amount": p.amount, "timestamp": self.clock()},
                                         self.coordinator)
                self._apply(rev)
                status, reversal = "REVERSED", rev.txid
            self._after_submit()
            return Accepted(accepted.txid, REPORT, accepted.height, status, reversal)

    def mint_training(self, address: str, amount: int, ref: str) -> MintReceipt:
        return self._mint(MINT_TRAINING, address, amount, ref)

    def mint_inference(self, address: str, amount: int, ref: str) -> MintReceipt:
        return self._mint(MINT_INFERENCE, address, amount, ref)

    def refund_inference(self, request_id: str, amount: int | None = None) -> MintReceipt | None:
        """Give a failed request's unprocessed share back to its payer (`refund:<id>`, once; it
        settles the request: no payout after it). `amount` None: all that is left; otherwise at
        most that. The fee is not refunded. None when never paid or nothing is left."""
        ref = f"refund:{request_id}"
        with self._lock:
            state = self._working or self._state
            done = state.refs.get(ref)
            if done is not None:  # already refunded: `_mint` answers the replay with its receipt
                return self._mint(MINT_INFERENCE, done.to, done.amount, ref)
            budget = state.requests.get(request_id)
            if budget is None or budget.remaining <= 0:
                return None
            give = budget.remaining if amount is None else min(int(amount), budget.remaining)
            return self._mint(MINT_INFERENCE, budget.payer, give, ref) if give > 0 else None

    def _mint(self, kind: str, address: str, amount: int, ref: str) -> MintReceipt:
        with self._lock:
            state = self._working or self._state
            old = state.refs.get(ref) if isinstance(ref, str) else None
            if old is not None:
                if (old.type, old.to, old.amount) != (kind, address, amount):
                    raise ConflictError(f"ref {ref!r} was minted as {old.type} of "
                                        f"{old.amount} to {old.to}", "ref_conflict")
                return MintReceipt(old.txid, ref, old.type, old.to, old.amount,
                                   old.height, created=False)
            tx = Transaction.create({"type": kind, "to": address, "amount": amount,
                                     "ref": ref, "timestamp": self.clock()},
                                    self.coordinator)
            height = self._apply(tx)
            self._after_submit()
            return MintReceipt(tx.txid, ref, kind, address, amount, height, created=True)

    def _submit_signed(self, data: Mapping[str, Any], kind: str,
                       seal: bool = True) -> Accepted:
        if not isinstance(data, dict):
            raise MalformedError("a transaction must be a JSON object")
        if data.get("type") != kind:
            raise MalformedError(f"expected a {kind} transaction, got {data.get('type')!r}",
                                 "bad_type")
        tx = Transaction.from_json(data)
        with self._lock:
            height = self._apply(tx)
            if seal:
                self._after_submit()
            return Accepted(tx.txid, kind, height)

    def _open(self) -> LedgerState:
        """The working state of the open block (opened on demand). If transfers are due to
        settle, an empty block is sealed first so their recipients can spend them."""
        if self._working is None:
            if self._settlement_due():
                self.seal_block()
            self._working = self._state.copy()
            begin_block(self._working, self._state.height + 1)
        return self._working

    def _apply(self, tx: Transaction) -> int:
        state = self._open()
        try:
            # Half the skew budget: a verifier whose clock is up to max_future_ms / 2
            # behind ours still accepts the block this transaction dates.
            apply_tx(state, tx, max_ts=self.clock() + state.params.max_future_ms // 2)
        except LedgerError:
            if not self._open_txs:          # don't keep an empty block open (and stale)
                self._working = None
            raise
        self._open_txs.append(tx)
        return state.open_height or 0

    def _after_submit(self) -> None:
        if self.auto_seal or len(self._open_txs) >= self.max_block_txs:
            self.seal_block()

    def _settlement_due(self) -> bool:
        s = self._state
        for txid in s.settle_queue:            # ordered by settle_at; skip reversed ones
            p = s.pending.get(txid)
            if p is not None:
                return p.settle_at is not None and p.settle_at <= self.clock()
        return False

    # ---- sealing ---------------------------------------------------------------------
    def seal_block(self) -> dict[str, Any] | None:
        """Seal the open block (or an empty one when settlements are due) and persist it
        atomically. Returns the block JSON, or None when there was nothing to seal."""
        with self._lock:
            if self._working is None:
                if not self._settlement_due():
                    return None
                self._working = self._state.copy()
                begin_block(self._working, self._state.height + 1)
            state, txs = self._working, self._open_txs
            ts = max([self.clock(), self._state.tip_ts] + [t.timestamp for t in txs])
            try:
                block = seal_block(state.open_height or 0, self._state.tip_hash, ts, txs,
                                   self.coordinator)
                end_block(state, block.hash, ts)
                self.store.append_block(self._record(state, block.to_json(), txs))
            finally:
                self._working, self._open_txs = None, []
            self._state = state
            return block.to_json()

    @staticmethod
    def _record(state: LedgerState, block: dict[str, Any],
                txs: list[Transaction]) -> BlockRecord:
        rows = [TxRow(t.txid, i, t.type, t.body.get("ref")) for i, t in enumerate(txs)]
        accounts = [AccountRow(a, state.spendable.get(a, 0), state.pending_in.get(a, 0),
                               state.nonces.get(a, 0), state.names.get(a))
                    for a in sorted(state.touched | {t.body.get("address") for t in txs
                                                     if t.type == REGISTER})]
        return BlockRecord(block["height"], block["hash"], block["timestamp"], block,
                           rows, accounts)

    # ---- queries ---------------------------------------------------------------------
    @property
    def params(self) -> ChainParams:
        return self._state.params

    def balance(self, address: str) -> Balance:
        with self._lock:
            s = self._working or self._state
            return Balance(address, s.spendable.get(address, 0), s.pending_in.get(address, 0),
                           s.nonces.get(address, 0), s.names.get(address),
                           address in s.active_nodes())

    def username(self, address: str) -> str | None:
        with self._lock:
            return (self._working or self._state).names.get(address)

    def address_of(self, username: str) -> str | None:
        with self._lock:
            return (self._working or self._state).usernames.get(username)

    def is_registered(self, address: str) -> bool:
        return self.username(address) is not None

    def chain(self, from_height: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        return self.store.blocks(max(0, from_height), limit)

    def state(self) -> LedgerState:
        """A copy of the committed state (sealed blocks only)."""
        with self._lock:
            return self._state.copy()

    def info(self) -> dict[str, Any]:
        with self._lock:
            s = self._state
            return {"height": s.height, "tip": s.tip_hash, "timestamp": s.tip_ts,
                    "tx_count": s.tx_count, "minted": s.minted, "burned": s.burned,
                    "supply": s.supply, "registered": len(s.names),
                    "active_nodes": len(s.active_nodes()),
                    "open_txs": len(self._open_txs), "params": s.params.to_json()}
