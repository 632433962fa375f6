"""Chain verification speed: transactions/s checked by `verify_chain` (the code behind
`ailo chain verify`: parsing, every signature, Merkle roots, block signatures, all ledger
rules) against the raw PyNaCl Ed25519 verify rate over the same transactions, in the same
process. The verifier does one Ed25519 verify per transaction plus one per block, so the
ratio shows how much the rest of the rules cost. Prints one JSON line (target ratio >= 0.5).

    .venv/bin/python bench/ledger.py [--txs 10000] [--block-size 250] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from nacl.signing import VerifyKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ailo.ledger import UNIT, verify_chain  # noqa: E402
from ailo.ledger.codec import tx_signing_bytes  # noqa: E402
from ailo.ledger.params import ChainParams  # noqa: E402
from ailo.ledger.service import LedgerService  # noqa: E402
from ailo.ledger.tx import (Transaction, _address_problem, _verify_key,  # noqa: E402
                            register_tx, transfer_tx)
from ailo.storage.ledger_store import SQLiteLedgerStore  # noqa: E402
from ailo.wallet import Wallet, public_key_from_address  # noqa: E402

T0 = 1_700_000_000_000


def build_chain(n_txs: int, block_size: int, n_wallets: int = 64) -> list[dict]:
    """A realistic chain: registrations, two mints per wallet, then round-robin transfers."""
    clock = [T0]
    coord = Wallet.from_label("bench/coordinator")
    svc = LedgerService(SQLiteLedgerStore(), coord, ChainParams(coord.address, coord.address),
                        clock=lambda: clock[0], auto_seal=False, max_block_txs=block_size)
    wallets = [Wallet.from_label(f"bench/{i}") for i in range(n_wallets)]
    for i, w in enumerate(wallets):
        svc.register(register_tx(w, f"user{i:03d}", clock[0]).to_json())
        for r in range(2):
            svc.mint_training(w.address, UNIT, f"update:{i}:{r}")
    nonces = [0] * n_wallets
    for k in range(n_txs - 3 * n_wallets):
        i = k % n_wallets
        nonces[i] += 1
        clock[0] += 1
        to = wallets[(i + 1 + k // n_wallets) % n_wallets]
        to = to if to is not wallets[i] else wallets[(i + 1) % n_wallets]
        svc.submit_transfer(transfer_tx(wallets[i], to.address, 1000, nonces[i],
                                        clock[0]).to_json())
    svc.seal_block()
    return svc.chain()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--txs", type=int, default=10_000)
    ap.add_argument("--block-size", type=int, default=250)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    chain = build_chain(args.txs, args.block_size)
    now = T0 + 86_400_000
    txs = [Transaction.from_json(t) for b in chain for t in b["txs"]]
    coordinator = chain[0]["params"]["coordinator"]
    raw = [(VerifyKey(public_key_from_address(t.signer(coordinator))),
            tx_signing_bytes(t.body_bytes), bytes.fromhex(t.signature)) for t in txs]

    best_chain = best_raw = float("inf")
    for _ in range(args.repeat):            # alternate so machine noise hits both
        _verify_key.cache_clear()           # the verifier starts with no cached keys
        _address_problem.cache_clear()
        t0 = time.perf_counter()
        report = verify_chain(chain, now=now)
        best_chain = min(best_chain, time.perf_counter() - t0)
        assert report.ok and report.tx_count == len(txs), report.violation
        t0 = time.perf_counter()
        for key, msg, sig in raw:
            key.verify(msg, sig)
        best_raw = min(best_raw, time.perf_counter() - t0)

    chain_tps, raw_tps = len(txs) / best_chain, len(txs) / best_raw
    print(json.dumps({
        "bench": "ledger_verify", "txs": len(txs), "blocks": len(chain),
        "block_size": args.block_size, "chain_verify_tx_per_s": round(chain_tps),
        "raw_ed25519_verify_per_s": round(raw_tps), "ratio": round(chain_tps / raw_tps, 3),
        "target_ratio": 0.5, "python": platform.python_version(),
        "machine": platform.machine()}))


if __name__ == "__main__":
    main()
