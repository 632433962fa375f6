"""Chain verification (R11): walk every block from genesis and report the FIRST violation.

The order of checks for block i (documented in docs/LEDGER.md so other implementations
report the same first violation):

 1. shape of the block object                         -> malformed
 2. height == i                                       -> bad_height
 3. prev == hash of block i-1 (zeros for genesis)     -> bad_prev_hash
 4. timestamp >= previous block's, <= now + skew      -> timestamp_order / future_timestamp
 5. for each tx j: shape, then its signature          -> (i, j, malformed/bad_signature/...)
 6. tx_count and Merkle root                          -> bad_merkle_root
 7. hash == sha256(canonical header)                  -> bad_block_hash
 8. coordinator signature over the hash               -> bad_block_signature
 9. for each tx j: the ledger rules of state.py       -> (i, j, code)
10. end of block: settle due pending transfers
After the last block: sum(balances) == minted - burned and nothing negative.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from .block import Block
from .codec import ZERO_HASH, merkle_root
from .errors import ChainError, LedgerError, MalformedError
from .params import ChainParams
from .state import LedgerState, apply_tx, begin_block, end_block
from .tx import Transaction


class ChainViolation(LedgerError):
    """A LedgerError located in the chain: block index and (if any) transaction index."""

    def __init__(self, block: int, tx: int | None, error: LedgerError) -> None:
        super().__init__(error.message, error.code)
        self.block, self.tx, self.error = block, tx, error


@dataclass
class Violation:
    block: int
    tx: int | None
    code: str
    message: str

    def __str__(self) -> str:
        where = f"block {self.block}" + (f", tx {self.tx}" if self.tx is not None else "")
        return f"{where}: {self.code}: {self.message}"


@dataclass
class VerifyReport:
    ok: bool
    height: int = -1
    blocks: int = 0
    tx_count: int = 0
    minted: int = 0
    burned: int = 0
    violation: Violation | None = None
    state: LedgerState | None = field(default=None, repr=False)

    @property
    def supply(self) -> int:
        return self.minted - self.burned

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "height": self.height, "blocks": self.blocks,
                               "tx_count": self.tx_count, "minted": self.minted,
                               "burned": self.burned, "supply": self.supply}
        if self.violation is not None:
            v = self.violation
            out["violation"] = {"block": v.block, "tx": v.tx, "code": v.code,
                                "message": v.message}
        return out


def now_ms() -> int:
    return int(time.time() * 1000)


def check_block(state: LedgerState | None, raw: Any, index: int, now: int,
                coordinator: str | None = None) -> LedgerState:
    """Verify block `index` on top of `state` (None for genesis), mutating and returning
    the state. Raises ChainViolation at the first failed check. `coordinator` pins the
    expected coordinator address (checked against the genesis params)."""
    def fail(error: LedgerError, tx: int | None = None) -> ChainViolation:
        return ChainViolation(index, tx, error)

    try:
        block = Block.from_json(raw)
    except LedgerError as exc:
        raise fail(exc) from None
    if block.height != index:
        raise fail(ChainError(f"height {block.height} at position {index}", "bad_height"))
    if state is None:
        try:
            params = ChainParams.from_json(block.params)
        except LedgerError as exc:
            raise fail(exc) from None
        if coordinator is not None and params.coordinator != coordinator:
            raise fail(ChainError(f"genesis coordinator {params.coordinator} is not the "
                                  f"expected {coordinator}", "unexpected_coordinator"))
        state = LedgerState(params)
    tip_hash = state.tip_hash if index else ZERO_HASH
    if block.prev != tip_hash:
        raise fail(ChainError(f"prev {block.prev[:16]}... does not link to block "
                              f"{index - 1}", "bad_prev_hash"))
    if index and block.timestamp < state.tip_ts:
        raise fail(ChainError(f"timestamp {block.timestamp} is before the previous "
                              f"block's {state.tip_ts}", "timestamp_order"))
    if block.timestamp > now + state.params.max_future_ms:
        raise fail(ChainError(f"block timestamp {block.timestamp} is in the future "
                              f"(now {now})", "future_timestamp"))
    coord = state.params.coordinator
    txs: list[Transaction] = []
    for j, raw_tx in enumerate(block.txs):
        try:
            tx = Transaction.from_json(raw_tx)
            tx.check_signature(coord)
        except LedgerError as exc:
            raise fail(exc, j) from None
        txs.append(tx)
    if index == 0 and txs:
        raise fail(MalformedError("the genesis block carries no transactions"), 0)
    if block.header["tx_count"] != len(txs) or \
            block.header["merkle_root"] != merkle_root(tx.leaf() for tx in txs):
        raise fail(ChainError("Merkle root/tx_count do not match the transactions",
                              "bad_merkle_root"))
    if block.computed_hash() != block.hash:
        raise fail(ChainError("hash does not match the header", "bad_block_hash"))
    if not block.signature_valid(coord):
        raise fail(ChainError("block signature is not the coordinator's",
                              "bad_block_signature"))
    begin_block(state, index)
    for j, tx in enumerate(txs):
        try:
            apply_tx(state, tx, max_ts=block.timestamp, check_signature=False)
        except LedgerError as exc:
            raise fail(exc, j) from None
    end_block(state, block.hash, block.timestamp)
    return state


def apply_block(state: LedgerState | None, raw: Any, now: int | None = None) -> LedgerState:
    """Pure form: returns a NEW state with the block applied; `state` is left untouched."""
    index = 0 if state is None else state.height + 1
    return check_block(None if state is None else state.copy(), raw, index,
                       now_ms() if now is None else now)


def verify_chain(blocks: Iterable[Any], now: int | None = None,
                 coordinator: str | None = None) -> VerifyReport:
    """Verify a whole chain (list of block JSON objects, genesis first)."""
    now = now_ms() if now is None else now
    state: LedgerState | None = None
    good = VerifyReport(ok=False)       # totals after the last fully verified block
    try:
        for index, raw in enumerate(blocks):
            state = check_block(state, raw, index, now, coordinator)
            good = _report(state, index + 1, ok=False)
        if state is None:
            raise ChainViolation(0, None, MalformedError("the chain is empty", "empty_chain"))
        try:
            state.check_invariants()
        except LedgerError as exc:
            raise ChainViolation(state.height, None, exc) from None
    except ChainViolation as v:
        good.violation = Violation(v.block, v.tx, v.code, v.message)
        return good
    good.ok = True
    return good


def _report(state: LedgerState | None, count: int, ok: bool) -> VerifyReport:
    if state is None:
        return VerifyReport(ok=ok)
    return VerifyReport(ok=ok, height=state.height, blocks=count, tx_count=state.tx_count,
                        minted=state.minted, burned=state.burned, state=state)
