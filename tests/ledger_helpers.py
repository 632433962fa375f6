"""Shared helpers for the ledger tests (fake clock, funded wallets)."""
from __future__ import annotations

from ailo.ledger.params import UNIT, ChainParams
from ailo.ledger.service import LedgerService
from ailo.ledger.tx import register_tx, report_tx, transfer_tx
from ailo.storage.ledger_store import LedgerStore, SQLiteLedgerStore
from ailo.wallet import Wallet

T0 = 1_700_000_000_000
COORD = Wallet.from_label("test/coordinator")
POOL = Wallet.from_label("test/pool")


class FakeClock:
    def __init__(self, t: int = T0) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t

    def advance(self, ms: int) -> None:
        self.t += ms


def params(**kw) -> ChainParams:
    base = dict(dispute_window_ms=60_000, active_window_ms=3_600_000, dispute_quorum=2)
    base.update(kw)
    return ChainParams(COORD.address, POOL.address, **base)


def service(store: LedgerStore | None = None, clock: FakeClock | None = None,
            auto_seal: bool = True, **kw) -> LedgerService:
    return LedgerService(store or SQLiteLedgerStore(), COORD, params(**kw),
                         clock=clock or FakeClock(), auto_seal=auto_seal)


def wallet(name: str) -> Wallet:
    return Wallet.from_label(f"test/{name}", name)


def join(svc: LedgerService, w: Wallet, mint: int = UNIT // 2, ref: str | None = None) -> None:
    """Register `w` and (if mint) pay it a training reward so it is ACTIVE."""
    svc.register(register_tx(w, w.username or "user", svc.clock()).to_json())
    if mint:
        svc.mint_training(w.address, mint, ref or f"update:{w.username}")


def send(svc: LedgerService, w: Wallet, to: Wallet | str, amount: int,
         nonce: int | None = None) -> dict:
    nonce = svc.balance(w.address).nonce + 1 if nonce is None else nonce
    to_addr = to if isinstance(to, str) else to.address
    return transfer_tx(w, to_addr, amount, nonce, svc.clock()).to_json()


def report(svc: LedgerService, w: Wallet, txid: str) -> dict:
    return report_tx(w, txid, "suspicious", svc.clock()).to_json()
