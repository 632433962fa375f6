"""Ledger state and the transaction rules: the single implementation used by the
coordinator before accepting anything and by every verifier (`ailo chain verify`).

Rules are applied in three steps per block: `begin_block`, `apply_tx` for each transaction
(all checks first, then mutations, so a refused transaction changes nothing), `end_block`
(settles transfers whose dispute window has passed). Money only moves between
`spendable` and `pending_in`; the identity

    sum(spendable) + sum(pending_in) == minted - burned

holds after every transaction (see `check_invariants`).
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from .codec import ZERO_HASH
from .errors import (AmountError, ConflictError, DisputeError, InsufficientFundsError,
                     LedgerError, NonceError, NotRegisteredError, SelfTransferError,
                     SupplyError, TimestampError)
from .params import REVERSAL_PERCENT, ChainParams, fee_split
from .tx import (MINT_INFERENCE, MINT_TRAINING, MINT_TYPES, PAY_INFERENCE, REGISTER, REPORT, REVERSAL,
                 TRANSFER, Transaction)

REPORTED, DISPUTED, REVERSED = "REPORTED", "DISPUTED", "REVERSED"
INFERENCE_REF_RE = re.compile(r"^request:([0-9a-f]{32}):(ailo1[0-9a-f]{72})\Z")
REFUND_REF_RE = re.compile(r"^refund:([0-9a-f]{32})\Z")  # a failed request's unspent payment, back to its payer


@dataclass(frozen=True, slots=True)
class PendingTransfer:
    """A received transfer inside its dispute window: reportable, reversible, not yet
    spendable by the recipient. `settle_at` is set when its block is sealed."""

    txid: str
    sender: str
    recipient: str
    amount: int
    height: int
    settle_at: int | None = None


@dataclass(frozen=True, slots=True)
class RequestBudget:
    """A paid inference request: who paid, how much MINT_INFERENCE it may still fund, and whether
    it is settled (its refund was minted: nothing more is paid for it, docs/REWARDS.md)."""

    payer: str
    remaining: int
    settled: bool = False


@dataclass(frozen=True, slots=True)
class MintRecord:
    txid: str
    type: str
    to: str
    amount: int
    height: int


@dataclass
class LedgerState:
    """Everything a verifier needs to judge the next transaction. Values stored in the
    dicts are immutable, so `copy()` (shallow per dict) gives an independent state."""

    params: ChainParams
    height: int = -1
    tip_hash: str = ZERO_HASH
    tip_ts: int = 0
    spendable: dict[str, int] = field(default_factory=dict)
    pending_in: dict[str, int] = field(default_factory=dict)
    nonces: dict[str, int] = field(default_factory=dict)
    usernames: dict[str, str] = field(default_factory=dict)     # username -> address
    names: dict[str, str] = field(default_factory=dict)         # address -> username
    refs: dict[str, MintRecord] = field(default_factory=dict)   # mint ref -> record
    last_work: dict[str, int] = field(default_factory=dict)     # address -> last mint ts
    pending: dict[str, PendingTransfer] = field(default_factory=dict)
    settle_queue: deque[str] = field(default_factory=deque)     # pending txids, by settle_at
    reporters: dict[str, frozenset[str]] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)        # txid -> REPORTED/...
    kinds: dict[str, str] = field(default_factory=dict)         # txid -> type, every tx
    requests: dict[str, RequestBudget] = field(default_factory=dict)  # paid inference requests
    minted: int = 0
    burned: int = 0
    tx_count: int = 0
    open_height: int | None = None
    new_pending: list[str] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)              # addresses changed this block

    def copy(self) -> "LedgerState":
        c = LedgerState(self.params, self.height, self.tip_hash, self.tip_ts)
        for name in ("spendable", "pending_in", "nonces", "usernames", "names", "refs",
                     "last_work", "pending", "reporters", "status", "kinds", "requests"):
            setattr(c, name, dict(getattr(self, name)))
        c.settle_queue = deque(self.settle_queue)
        c.minted, c.burned, c.tx_count = self.minted, self.burned, self.tx_count
        c.open_height, c.new_pending = self.open_height, list(self.new_pending)
        c.touched = set(self.touched)
        return c

    # ---- queries ---------------------------------------------------------------------
    @property
    def supply(self) -> int:
        return self.minted - self.burned

    def balance(self, address: str) -> int:
        return self.spendable.get(address, 0)

    def active_nodes(self) -> set[str]:
        """ACTIVE = registered and received a mint (verified work) with a timestamp no older
        than `active_window_ms` before the previous block. Fresh wallets that never did
        verified work are not active, so Sybil identities cannot vote."""
        cutoff = self.tip_ts - self.params.active_window_ms
        return {a for a, ts in self.last_work.items() if ts >= cutoff and a in self.names}

    def reversal_due(self, txid: str) -> bool:
        """True when `txid` is DISPUTED and reports come from >= 51 % of ACTIVE nodes."""
        try:
            _check_reversible(self, txid)
        except LedgerError:
            return False
        return True

    def check_invariants(self) -> None:
        if any(v < 0 for v in self.spendable.values()) or \
                any(v < 0 for v in self.pending_in.values()):
            raise SupplyError("a balance is negative", "negative_balance")
        total = sum(self.spendable.values()) + sum(self.pending_in.values())
        if total != self.supply:
            raise SupplyError(f"sum of balances {total} != minted - burned {self.supply}")


def _credit(d: dict[str, int], address: str, amount: int) -> None:
    d[address] = d.get(address, 0) + amount


# ---- block frame ----------------------------------------------------------------------
def begin_block(state: LedgerState, height: int) -> None:
    state.open_height = height
    state.new_pending = []
    state.touched = set()


def end_block(state: LedgerState, block_hash: str, timestamp: int) -> None:
    """Close the open block: date its new pending transfers, then settle every pending
    transfer with settle_at <= this block's timestamp (recipient may now spend it)."""
    window = state.params.dispute_window_ms
    for txid in state.new_pending:
        p = state.pending.get(txid)
        if p is None:                       # reversed inside its own block
            continue
        state.pending[txid] = PendingTransfer(p.txid, p.sender, p.recipient, p.amount,
                                              p.height, timestamp + window)
    state.settle_queue.extend(state.new_pending)
    queue = state.settle_queue
    while queue:
        p = state.pending.get(queue[0])
        if p is None:                       # reversed meanwhile
            queue.popleft()
            continue
        if p.settle_at is None or p.settle_at > timestamp:
            break
        queue.popleft()
        del state.pending[p.txid]
        state.pending_in[p.recipient] -= p.amount
        _credit(state.spendable, p.recipient, p.amount)
        state.touched.add(p.recipient)
    state.height = state.open_height if state.open_height is not None else state.height + 1
    state.tip_hash, state.tip_ts = block_hash, timestamp
    state.open_height, state.new_pending = None, []


# ---- transaction rules ----------------------------------------------------------------
def apply_tx(state: LedgerState, tx: Transaction, *, max_ts: int,
             check_signature: bool = True) -> None:
    """Check `tx` against `state` and apply it, or raise a LedgerError and change nothing.

    `max_ts` is the latest acceptable tx timestamp: the block's timestamp when verifying,
    the coordinator's clock + max_future_ms when accepting a new transaction."""
    if state.open_height is None:
        raise LedgerError("no open block", "no_open_block")
    if check_signature:
        tx.check_signature(state.params.coordinator)
    ts = tx.timestamp
    if ts > max_ts:
        raise TimestampError(f"timestamp {ts} is in the future (limit {max_ts})")
    if ts + state.params.max_tx_age_ms < state.tip_ts:
        raise TimestampError(f"timestamp {ts} is older than the previous block "
                             f"({state.tip_ts}) by more than max_tx_age_ms",
                             "stale_timestamp")
    _RULES[tx.type](state, tx)
    state.kinds[tx.txid] = tx.type
    state.tx_count += 1


def _register(state: LedgerState, tx: Transaction) -> None:
    address, username = tx["address"], tx["username"]
    if address in state.names:
        raise ConflictError(f"{address} is already registered as {state.names[address]!r}",
                            "already_registered")
    if username in state.usernames:
        raise ConflictError(f"username {username!r} is taken", "username_taken")
    state.names[address] = username
    state.usernames[username] = address


def _mint(state: LedgerState, tx: Transaction) -> None:
    to, amount, ref = tx["to"], tx["amount"], tx["ref"]
    if amount > state.params.max_mint:
        raise AmountError(f"mint of {amount} exceeds max_mint {state.params.max_mint}")
    if to not in state.names:
        raise NotRegisteredError(f"mint recipient {to} is not registered")
    if to == state.params.coordinator:
        raise SelfTransferError("the coordinator cannot mint to itself", "self_mint")
    if ref in state.refs:
        raise ConflictError(f"ref {ref!r} was already minted", "duplicate_ref")
    if tx.type == MINT_INFERENCE:
        m, refund = INFERENCE_REF_RE.match(ref), REFUND_REF_RE.match(ref)
        if refund is None and (m is None or m.group(2) != to):
            raise LedgerError("MINT_INFERENCE ref must be request:<32-hex request id>:<recipient address> "
                              "or refund:<32-hex request id>", "bad_ref")
        request = (refund or m).group(1)
        budget = state.requests.get(request)
        if budget is None:
            raise LedgerError(f"request {request} was never paid (no PAY_INFERENCE)", "unpaid_request")
        if refund is not None and to != budget.payer:
            raise LedgerError(f"a refund of request {request} goes to its payer {budget.payer}", "bad_ref")
        if refund is None and to == budget.payer:
            raise LedgerError("the requester cannot be paid for its own request", "self_dealing")
        if budget.settled:
            raise LedgerError(f"request {request} is settled: its refund was minted, nothing more is paid", "settled")
        if amount > budget.remaining:
            raise LedgerError(f"mint of {amount} exceeds the {budget.remaining} units left of request "
                              f"{request}'s payment", "over_budget")
        state.requests[request] = RequestBudget(budget.payer, budget.remaining - amount, refund is not None)
    _credit(state.spendable, to, amount)
    state.minted += amount
    state.refs[ref] = MintRecord(tx.txid, tx.type, to, amount, state.open_height or 0)
    if tx.type == MINT_TRAINING:  # only verified training makes an address ACTIVE (R12)
        state.last_work[to] = max(state.last_work.get(to, 0), tx.timestamp)
    state.touched.add(to)


def _pay_inference(state: LedgerState, tx: Transaction) -> None:
    payer, request, amount, fee = tx["from"], tx["request"], tx["amount"], tx["fee"]
    if request in state.requests:
        raise ConflictError(f"request {request} is already paid", "duplicate_request")
    have = state.spendable.get(payer, 0)
    if have < amount + fee:
        raise InsufficientFundsError(f"spendable balance {have} < amount {amount} + fee {fee}")
    burned, to_pool = fee_split(fee)
    state.spendable[payer] = have - amount - fee
    _credit(state.spendable, state.params.pool, to_pool)
    state.burned += amount + burned
    state.requests[request] = RequestBudget(payer, amount)
    state.touched.update((payer, state.params.pool))


def _transfer(state: LedgerState, tx: Transaction) -> None:
    sender, to, amount, fee, nonce = tx["from"], tx["to"], tx["amount"], tx["fee"], tx["nonce"]
    if sender == to:
        raise SelfTransferError("sender and recipient are the same address")
    expected = state.nonces.get(sender, 0) + 1
    if nonce != expected:
        what = "replayed" if nonce < expected else "out of order"
        raise NonceError(f"nonce {nonce} is {what}; expected {expected}")
    have = state.spendable.get(sender, 0)
    if have < amount + fee:
        raise InsufficientFundsError(
            f"spendable balance {have} < amount {amount} + fee {fee}")
    burned, to_pool = fee_split(fee)
    state.spendable[sender] = have - amount - fee
    _credit(state.spendable, state.params.pool, to_pool)
    state.burned += burned
    _credit(state.pending_in, to, amount)
    state.pending[tx.txid] = PendingTransfer(tx.txid, sender, to, amount,
                                             state.open_height or 0)
    state.new_pending.append(tx.txid)
    state.nonces[sender] = nonce
    state.touched.update((sender, to, state.params.pool))


def _dispute_target(state: LedgerState, target: str) -> PendingTransfer:
    p = state.pending.get(target)
    if p is not None:
        return p
    kind = state.kinds.get(target)
    if kind is None:
        raise DisputeError(f"no transaction {target} on this chain", "unknown_tx")
    if kind != TRANSFER:
        raise DisputeError(f"{kind} transactions can never be reversed", "not_reversible")
    if state.status.get(target) == REVERSED:
        raise DisputeError(f"{target} is already reversed", "already_reversed")
    raise DisputeError(f"{target} has settled; its dispute window is closed",
                       "dispute_closed")


def _report(state: LedgerState, tx: Transaction) -> None:
    reporter, target = tx["reporter"], tx["target"]
    if reporter not in state.names:
        raise NotRegisteredError(f"reporter {reporter} is not a registered node")
    _dispute_target(state, target)
    reporters = state.reporters.get(target, frozenset())
    if reporter in reporters:
        raise ConflictError(f"{reporter} already reported {target}", "duplicate_report")
    reporters = reporters | {reporter}
    state.reporters[target] = reporters
    state.status[target] = DISPUTED if len(reporters) >= state.params.dispute_quorum \
        else REPORTED


def _check_reversible(state: LedgerState, target: str) -> PendingTransfer:
    p = _dispute_target(state, target)
    if state.status.get(target) != DISPUTED:
        raise DisputeError(f"{target} is not DISPUTED (needs {state.params.dispute_quorum}"
                           " reports)", "no_quorum")
    active = state.active_nodes()
    votes = len(state.reporters.get(target, frozenset()) & active)
    if not active or votes * 100 < REVERSAL_PERCENT * len(active):
        raise DisputeError(f"{votes} of {len(active)} active nodes reported {target}; "
                           f"{REVERSAL_PERCENT}% needed", "no_quorum")
    return p


def _reversal(state: LedgerState, tx: Transaction) -> None:
    p = _check_reversible(state, tx["target"])
    if (tx["from"], tx["to"], tx["amount"]) != (p.recipient, p.sender, p.amount):
        raise DisputeError("REVERSAL from/to/amount must be the disputed transfer's "
                           "recipient/sender/amount", "reversal_mismatch")
    del state.pending[p.txid]
    state.pending_in[p.recipient] -= p.amount
    _credit(state.spendable, p.sender, p.amount)
    state.status[p.txid] = REVERSED
    state.reporters.pop(p.txid, None)
    state.touched.update((p.sender, p.recipient))


_RULES: dict[str, Callable[[LedgerState, Transaction], None]] = {
    REGISTER: _register, TRANSFER: _transfer, REPORT: _report, REVERSAL: _reversal,
    PAY_INFERENCE: _pay_inference,
    **{kind: _mint for kind in MINT_TYPES},
}
