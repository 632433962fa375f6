"""Generate the ledger's JSON test vectors (tests/vectors/ledger/*.json).

Deterministic: keys come from fixed labels (seed = sha256(label)), the clock is fake and
Ed25519 signatures are deterministic, so re-running produces identical files. Any
implementation of docs/LEDGER.md (e.g. the browser port) must reproduce every `expect`.

    .venv/bin/python scripts/make_ledger_vectors.py [--out tests/vectors/ledger]
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ailo.ledger.block import seal_block  # noqa: E402
from ailo.ledger.codec import (block_signing_bytes, canonical_json, merkle_root,  # noqa: E402
                               sha256_hex, tx_signing_bytes)
from ailo.ledger.params import FEE, UNIT, ChainParams  # noqa: E402
from ailo.ledger.service import LedgerService  # noqa: E402
from ailo.ledger.tx import (Transaction, pay_inference_tx, register_tx, report_tx,  # noqa: E402
                            transfer_tx)
from ailo.ledger.verify import verify_chain  # noqa: E402
from ailo.storage.ledger_store import SQLiteLedgerStore  # noqa: E402
from ailo.wallet import Wallet  # noqa: E402

T0 = 1_700_000_000_000          # 2023-11-14T22:13:20Z
NOW = T0 + 10 * 86_400_000      # the verifier clock every vector is checked with
OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "ledger"

COORD = Wallet.from_label("ailo-vectors/coordinator")
POOL = Wallet.from_label("ailo-vectors/pool")
ALICE, BOB, CAROL, DAVE = (Wallet.from_label(f"ailo-vectors/{n}", n)
                           for n in ("alice", "bob", "carol", "dave"))
MALLORY = Wallet.from_label("ailo-vectors/mallory")
RID = hashlib.sha256(b"ailo-vectors/request-1").hexdigest()[:32]    # a paid inference request
RID2 = hashlib.sha256(b"ailo-vectors/request-2").hexdigest()[:32]
PRICE = UNIT // 20                                                  # one span's reward
PARAMS = ChainParams(COORD.address, POOL.address, dispute_window_ms=60_000,
                     active_window_ms=3_600_000, dispute_quorum=2)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> int:
        return self.t


def raw_tx(body: dict[str, Any], signer: Wallet) -> Transaction:
    """Sign a body WITHOUT schema checks (to forge invalid-but-signed transactions)."""
    raw = canonical_json(body)
    return Transaction(body, signer.sign(tx_signing_bytes(raw)), raw, sha256_hex(raw))


def base_chain() -> tuple[list[dict], Clock]:
    """A valid chain exercising every transaction kind, a settlement and a reversal."""
    clock = Clock()
    svc = LedgerService(SQLiteLedgerStore(), COORD, PARAMS, clock=clock, auto_seal=False)
    for w in (ALICE, BOB, CAROL, DAVE):
        svc.register(register_tx(w, w.username or "", clock()).to_json())
    svc.seal_block()                                                   # block 1
    clock.t += 1_000
    svc.mint_training(ALICE.address, UNIT // 10, "update:1")
    svc.mint_training(BOB.address, UNIT // 10 + UNIT // 20, "update:2")
    svc.mint_training(CAROL.address, UNIT // 10, "update:3")
    svc.pay_inference(pay_inference_tx(BOB, RID, PRICE, clock()).to_json())   # bob asks ...
    svc.mint_inference(DAVE.address, PRICE, f"request:{RID}:{DAVE.address}")  # ... dave serves
    svc.seal_block()                                                   # block 2
    clock.t += 1_000
    svc.submit_transfer(transfer_tx(ALICE, BOB.address, 3 * UNIT // 100, 1, clock()).to_json())
    svc.seal_block()                                                   # block 3
    clock.t += 30_000
    svc.submit_transfer(transfer_tx(ALICE, DAVE.address, 2 * UNIT // 100, 2,
                                    clock()).to_json())
    svc.seal_block()                                                   # block 4
    clock.t += 1_000
    target = Transaction.from_json(svc.chain(4)[0]["txs"][0]).txid
    svc.submit_report(report_tx(BOB, target, "stolen key", clock()).to_json())
    svc.submit_report(report_tx(CAROL, target, "stolen key", clock()).to_json())  # REVERSAL
    svc.seal_block()                                                   # block 5
    clock.t += 30_000                # alice -> bob (block 3) is now past its window
    svc.seal_block()                                                   # block 6: settles
    clock.t += 1_000
    svc.submit_transfer(transfer_tx(BOB, CAROL.address, 4 * UNIT // 100, 1, clock()).to_json())
    svc.seal_block()                                                   # block 7
    return svc.chain(), clock


def extend(chain: list[dict], txs: list[Transaction], dt: int = 1_000,
           ts: int | None = None) -> list[dict]:
    """Append one coordinator-signed block holding `txs` (rules NOT checked)."""
    tip = chain[-1]
    ts = tip["timestamp"] + dt if ts is None else ts
    block = seal_block(tip["height"] + 1, tip["hash"], ts, txs, COORD)
    return chain + [block.to_json()]


def resign(block: dict, signer: Wallet = COORD) -> dict:
    """Recompute Merkle root, hash and signature after editing a block's txs/header."""
    txs = [Transaction.from_json(t) for t in block["txs"]]
    block["merkle_root"] = merkle_root(t.leaf() for t in txs)
    block["tx_count"] = len(txs)
    header = {k: v for k, v in block.items() if k not in ("txs", "hash", "signature")}
    block["hash"] = sha256_hex(canonical_json(header))
    block["signature"] = signer.sign(block_signing_bytes(block["hash"]))
    return block


def transfer_body(sender: Wallet, to: str, amount: int, nonce: int, ts: int,
                  fee: int = FEE) -> dict[str, Any]:
    return {"type": "TRANSFER", "from": sender.address, "to": to, "amount": amount,
            "fee": fee, "nonce": nonce, "timestamp": ts}


def invalid_cases(base: list[dict]) -> dict[str, tuple[str, list[dict]]]:
    """name -> (description, chain). Each chain's expected result is computed by the
    reference verifier and then asserted against the hand-written expectation below."""
    short = base[:3]                         # genesis, registrations, mints
    t = short[-1]["timestamp"] + 1_000
    cases: dict[str, tuple[str, list[dict]]] = {}

    def tampered(name: str, desc: str, edit: Callable[[list[dict]], None]) -> None:
        chain = copy.deepcopy(base)
        edit(chain)
        cases[name] = (desc, chain)

    def amount(c: list[dict]) -> None:
        c[3]["txs"][0]["amount"] += 1
    tampered("tampered_amount", "a transfer's amount was edited after signing", amount)
    tampered("tampered_removed_tx", "a transaction was deleted from a sealed block",
             lambda c: c[2]["txs"].pop(1))
    tampered("tampered_reordered_blocks", "blocks 2 and 3 were swapped",
             lambda c: c.__setitem__(slice(2, 4), [c[3], c[2]]))

    def forged(c: list[dict]) -> None:
        tx = c[7]["txs"][0]
        body = {k: v for k, v in tx.items() if k != "signature"}
        tx["signature"] = MALLORY.sign(tx_signing_bytes(canonical_json(body)))
    tampered("tampered_forged_signature", "a transfer signed by a key that is not the "
             "sender's", forged)

    def block_sig(c: list[dict]) -> None:
        resign(c[2], MALLORY)
    tampered("tampered_block_signature", "block re-signed by a non-coordinator key",
             block_sig)

    def header_ts(c: list[dict]) -> None:
        c[4]["timestamp"] += 1
    tampered("tampered_block_header", "a block timestamp edited, hash kept", header_ts)

    def bad(name: str, desc: str, txs: list[Transaction], **kw: Any) -> None:
        cases[name] = (desc, extend(short, txs, **kw))

    bad("invalid_overspend", "alice spends more than her balance (coordinator-signed)",
        [raw_tx(transfer_body(ALICE, BOB.address, UNIT, 1, t), ALICE)])
    bad("invalid_self_transfer", "sender == recipient",
        [raw_tx(transfer_body(ALICE, ALICE.address, 1000, 1, t), ALICE)])
    bad("invalid_replayed_nonce", "the same signed transfer included twice",
        [raw_tx(transfer_body(ALICE, BOB.address, 1000, 1, t), ALICE)] * 2)
    bad("invalid_nonce_gap", "first transfer uses nonce 2",
        [raw_tx(transfer_body(ALICE, BOB.address, 1000, 2, t), ALICE)])
    bad("invalid_zero_amount", "transfer of 0 units",
        [raw_tx(transfer_body(ALICE, BOB.address, 0, 1, t), ALICE)])
    bad("invalid_negative_amount", "transfer of -5 units",
        [raw_tx(transfer_body(ALICE, BOB.address, -5, 1, t), ALICE)])
    bad("invalid_wrong_fee", "transfer paying no fee",
        [raw_tx(transfer_body(ALICE, BOB.address, 1000, 1, t, fee=0), ALICE)])
    typo = BOB.address[:-1] + ("0" if BOB.address[-1] != "0" else "1")
    bad("invalid_address_checksum", "recipient address with one mistyped digit",
        [raw_tx(transfer_body(ALICE, typo, 1000, 1, t), ALICE)])
    bad("invalid_future_block", "block dated a year after the verifier clock", [],
        ts=NOW + 365 * 86_400_000)
    bad("invalid_block_before_previous", "block dated before its predecessor", [],
        ts=short[-1]["timestamp"] - 1)
    bad("invalid_tx_after_block", "transaction dated after its block",
        [raw_tx(transfer_body(ALICE, BOB.address, 1000, 1, t + 5_000), ALICE)])
    bad("invalid_mint_unregistered", "mint to an address that never registered",
        [raw_tx({"type": "MINT_TRAINING", "to": MALLORY.address, "amount": 1000,
                 "ref": "update:99", "timestamp": t}, COORD)])
    bad("invalid_mint_duplicate_ref", "a second mint with an already used ref",
        [raw_tx({"type": "MINT_TRAINING", "to": ALICE.address, "amount": 1000,
                 "ref": "update:1", "timestamp": t}, COORD)])
    bad("invalid_mint_over_max", "mint above max_mint",
        [raw_tx({"type": "MINT_TRAINING", "to": ALICE.address, "amount": UNIT + 1,
                 "ref": "update:big", "timestamp": t}, COORD)])
    def pay(w: Wallet, rid: str, amount: int) -> Transaction:
        return raw_tx({"type": "PAY_INFERENCE", "from": w.address, "request": rid, "amount": amount,
                       "fee": FEE, "timestamp": t}, w)

    def mint_inf(to: Wallet, rid: str, amount: int = PRICE, ref: str | None = None) -> Transaction:
        return raw_tx({"type": "MINT_INFERENCE", "to": to.address, "amount": amount,
                       "ref": ref or f"request:{rid}:{to.address}", "timestamp": t}, COORD)

    bad("invalid_inference_unpaid", "MINT_INFERENCE for a request nobody paid for",
        [mint_inf(CAROL, RID2)])
    bad("invalid_inference_to_payer", "the requester minted a reward for its own request",
        [pay(CAROL, RID2, PRICE), mint_inf(CAROL, RID2)])
    bad("invalid_inference_over_budget", "a request's mints exceed what its requester paid",
        [pay(CAROL, RID2, PRICE), mint_inf(ALICE, RID2), mint_inf(DAVE, RID2)])
    bad("invalid_inference_bad_ref", "MINT_INFERENCE whose ref does not name request and recipient",
        [pay(CAROL, RID2, PRICE), mint_inf(ALICE, RID2, ref=f"request:{RID2}:{DAVE.address}")])
    def refund(to: Wallet, rid: str, amount: int = PRICE) -> Transaction:
        return mint_inf(to, rid, amount, ref=f"refund:{rid}")

    bad("invalid_refund_unpaid", "a refund for a request nobody paid for", [refund(CAROL, RID2)])
    bad("invalid_refund_to_other", "a failed request's payment refunded to someone else",
        [pay(CAROL, RID2, PRICE), refund(ALICE, RID2)])
    bad("invalid_refund_after_payout", "a refund on top of the node payouts the payment funded",
        [pay(CAROL, RID2, PRICE), mint_inf(DAVE, RID2), refund(CAROL, RID2, 1)])
    bad("invalid_refund_twice", "the same refund minted twice",
        [pay(CAROL, RID2, PRICE), refund(CAROL, RID2, PRICE // 2), refund(CAROL, RID2, PRICE // 2)])
    bad("invalid_payout_after_refund", "a node paid for a request after its refund settled it",
        [pay(CAROL, RID2, PRICE), refund(CAROL, RID2, PRICE // 2), mint_inf(DAVE, RID2, PRICE // 4)])
    bad("invalid_pay_inference_twice", "a second payment for an already paid request id",
        [pay(CAROL, RID, PRICE)])
    bad("invalid_pay_inference_overspend", "a payment larger than the payer's balance",
        [pay(CAROL, RID2, UNIT)])
    bad("invalid_mint_not_coordinator", "mint signed by a user key",
        [raw_tx({"type": "MINT_INFERENCE", "to": ALICE.address, "amount": 1000,
                 "ref": "request:x", "timestamp": t}, ALICE)])
    bad("invalid_username_taken", "second registration of the username 'alice'",
        [raw_tx({"type": "REGISTER", "address": MALLORY.address, "username": "alice",
                 "timestamp": t}, MALLORY)])
    mint_txid = Transaction.from_json(short[2]["txs"][0]).txid
    bad("invalid_reversal_of_mint", "a REVERSAL of a system mint",
        [raw_tx({"type": "REVERSAL", "target": mint_txid, "from": ALICE.address,
                 "to": COORD.address, "amount": UNIT // 10, "timestamp": t}, COORD)])
    pay = raw_tx(transfer_body(ALICE, BOB.address, 1000, 1, t), ALICE)
    rep = raw_tx({"type": "REPORT", "reporter": DAVE.address, "target": pay.txid,
                  "reason": "", "timestamp": t}, DAVE)
    rep2 = raw_tx({"type": "REPORT", "reporter": ALICE.address, "target": pay.txid,
                   "reason": "", "timestamp": t}, ALICE)
    rev = raw_tx({"type": "REVERSAL", "target": pay.txid, "from": BOB.address,
                  "to": ALICE.address, "amount": 1000, "timestamp": t}, COORD)
    bad("invalid_reversal_without_quorum", "reported by inactive dave and alice: 1 of 3 "
        "active nodes, below 51%", [pay, rep, rep2, rev])
    bob_spendable = UNIT // 10 + UNIT // 20 - PRICE - FEE           # training reward - one paid request
    spend = raw_tx(transfer_body(BOB, CAROL.address, bob_spendable + 1000 - FEE, 1, t), BOB)
    bad("invalid_spend_pending", "bob spends a received transfer inside its dispute window",
        [pay, spend])
    cases["invalid_malformed_tx"] = ("a transaction with an unknown field", extend(
        short, [raw_tx({**transfer_body(ALICE, BOB.address, 1000, 1, t), "memo": "x"},
                       ALICE)]))
    return cases


EXPECT = {   # name -> (block, tx, code): the hand-checked first violation
    "tampered_amount": (3, 0, "bad_signature"),
    "tampered_removed_tx": (2, None, "bad_merkle_root"),
    "tampered_reordered_blocks": (2, None, "bad_height"),
    "tampered_forged_signature": (7, 0, "bad_signature"),
    "tampered_block_signature": (2, None, "bad_block_signature"),
    "tampered_block_header": (4, None, "bad_block_hash"),
    "invalid_overspend": (3, 0, "insufficient_funds"),
    "invalid_self_transfer": (3, 0, "self_transfer"),
    "invalid_replayed_nonce": (3, 1, "bad_nonce"),
    "invalid_nonce_gap": (3, 0, "bad_nonce"),
    "invalid_zero_amount": (3, 0, "bad_amount"),
    "invalid_negative_amount": (3, 0, "bad_amount"),
    "invalid_wrong_fee": (3, 0, "bad_amount"),
    "invalid_address_checksum": (3, 0, "bad_address"),
    "invalid_future_block": (3, None, "future_timestamp"),
    "invalid_block_before_previous": (3, None, "timestamp_order"),
    "invalid_tx_after_block": (3, 0, "future_timestamp"),
    "invalid_mint_unregistered": (3, 0, "unregistered"),
    "invalid_mint_duplicate_ref": (3, 0, "duplicate_ref"),
    "invalid_mint_over_max": (3, 0, "bad_amount"),
    "invalid_mint_not_coordinator": (3, 0, "bad_signature"),
    "invalid_inference_unpaid": (3, 0, "unpaid_request"),
    "invalid_inference_to_payer": (3, 1, "self_dealing"),
    "invalid_inference_over_budget": (3, 2, "over_budget"),
    "invalid_inference_bad_ref": (3, 1, "bad_ref"),
    "invalid_refund_unpaid": (3, 0, "unpaid_request"),
    "invalid_refund_to_other": (3, 1, "bad_ref"),
    "invalid_refund_after_payout": (3, 2, "over_budget"),
    "invalid_refund_twice": (3, 2, "duplicate_ref"),
    "invalid_payout_after_refund": (3, 2, "settled"),
    "invalid_pay_inference_twice": (3, 0, "duplicate_request"),
    "invalid_pay_inference_overspend": (3, 0, "insufficient_funds"),
    "invalid_username_taken": (3, 0, "username_taken"),
    "invalid_reversal_of_mint": (3, 0, "not_reversible"),
    "invalid_reversal_without_quorum": (3, 3, "no_quorum"),
    "invalid_spend_pending": (3, 1, "insufficient_funds"),
    "invalid_malformed_tx": (3, 0, "malformed"),
}


def primitives() -> dict[str, Any]:
    """Low-level vectors: address derivation, canonical bytes, txid, signature, Merkle."""
    tx = transfer_tx(ALICE, BOB.address, 12_345, 1, T0)
    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(5)]
    return {
        "wallets": [{"label": f"ailo-vectors/{n}",
                     "seed": hashlib.sha256(f"ailo-vectors/{n}".encode()).hexdigest(),
                     "public_key": w.public_key.hex(), "address": w.address}
                    for n, w in (("alice", ALICE), ("bob", BOB), ("coordinator", COORD))],
        "bad_addresses": [BOB.address[:-1] + ("0" if BOB.address[-1] != "0" else "1"),
                          BOB.address.upper(), BOB.address[:-2], "ailo2" + BOB.address[5:]],
        "transfer": {"tx": tx.to_json(), "canonical_body": tx.body_bytes.decode(),
                     "signing_bytes_hex": tx_signing_bytes(tx.body_bytes).hex(),
                     "txid": tx.txid, "merkle_leaf": tx.leaf().hex()},
        "merkle": [{"leaves": [x.hex() for x in leaves[:n]],
                    "root": merkle_root(leaves[:n])} for n in range(6)],
    }


def refund_chain(base: list[dict]) -> list[dict]:
    """carol pays for 60 steps of a 2-span request served by dave's two nodes; it fails after 40:
    dave is paid for the 40 steps his nodes processed, then the 20 nobody processed are refunded."""
    t = base[2]["timestamp"] + 1_000
    pay = raw_tx({"type": "PAY_INFERENCE", "from": CAROL.address, "request": RID2, "amount": PRICE,
                  "fee": FEE, "timestamp": t}, CAROL)
    delivered = PRICE * 40 // 60
    mints = [raw_tx({"type": "MINT_INFERENCE", "to": to.address, "amount": amount, "ref": ref, "timestamp": t}, COORD)
             for to, amount, ref in ((DAVE, delivered, f"request:{RID2}:{DAVE.address}"),
                                     (CAROL, PRICE - delivered, f"refund:{RID2}"))]
    return extend(base[:3], [pay, *mints])


def valid(description: str, chain: list[dict]) -> dict[str, Any]:
    report = verify_chain(chain, now=NOW)
    assert report.ok, report.violation
    st = report.state
    assert st is not None
    return {"description": description, "now_ms": NOW, "chain": chain,
            "expect": {**{k: v for k, v in report.to_json().items() if k != "violation"},
                       "balances": {a: {"spendable": st.spendable.get(a, 0), "pending": st.pending_in.get(a, 0)}
                                    for a in sorted(set(st.spendable) | set(st.pending_in))}}}


def build() -> dict[str, dict[str, Any]]:
    base, _ = base_chain()
    vectors: dict[str, dict[str, Any]] = {}
    vectors["valid_basic"] = valid(
        "registrations, training mints, a paid inference request (PAY_INFERENCE "
        "burns the price, MINT_INFERENCE to the serving node, which does not become "
        "ACTIVE), transfers with fee and burn, a settlement, a dispute reaching 51% "
        "of the ACTIVE nodes and its REVERSAL", base)
    vectors["valid_inference_refund"] = valid(
        "a paid request for 60 steps of 2 spans fails after 40: the nodes' wallet is paid for the 40 "
        "steps they processed, then what nobody processed goes back to the payer (MINT_INFERENCE ref "
        "refund:<request id>, which settles the request); the fee is kept",
        refund_chain(base))
    for name, (desc, chain) in invalid_cases(base).items():
        got = verify_chain(chain, now=NOW)
        v = got.violation
        assert v is not None and (v.block, v.tx, v.code) == EXPECT[name], (name, v)
        vectors[name] = {"description": desc, "now_ms": NOW, "chain": chain,
                         "expect": {"ok": False, "block": v.block, "tx": v.tx,
                                    "code": v.code}}
    vectors["primitives"] = primitives()
    return vectors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, vector in build().items():
        text = json.dumps(vector, separators=(",", ":"))
        (args.out / f"{name}.json").write_text(text + "\n")
    print(f"wrote {len(list(args.out.glob('*.json')))} vectors to {args.out}")


if __name__ == "__main__":
    main()
