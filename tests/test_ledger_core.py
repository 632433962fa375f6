"""Ledger rules through the service (the same code the verifier runs): fees and burn,
nonces, pending settlement, idempotent mints, disputes and reversals."""
from __future__ import annotations

import pytest

from ailo.ledger import LedgerError, UNIT, FEE, apply_block, fee_split, verify_chain
from ailo.ledger.params import format_alc, parse_alc
from ailo.ledger.tx import Transaction, pay_inference_tx

from ledger_helpers import COORD, POOL, FakeClock, join, report, send, service, wallet


def code_of(fn, *args) -> str:
    with pytest.raises(LedgerError) as err:
        fn(*args)
    return err.value.code


@pytest.fixture
def net():
    clock = FakeClock()
    svc = service(clock=clock)
    alice, bob, carol = wallet("alice"), wallet("bob"), wallet("carol")
    for w in (alice, bob, carol):
        join(svc, w)
    return svc, clock, alice, bob, carol


def test_constants_and_amount_parsing() -> None:
    assert UNIT == 10**8 and FEE == UNIT // 100
    assert fee_split() == (FEE // 2, FEE - FEE // 2)
    assert parse_alc("1.5") == 150_000_000 and parse_alc("0.00000001") == 1
    with pytest.raises(ValueError):
        parse_alc("0.000000001")
    assert format_alc(150_000_000) == "1.50000000 ALC"


def test_transfer_pays_fee_burns_half_and_settles_after_window(net) -> None:
    svc, clock, alice, bob, _ = net
    svc.submit_transfer(send(svc, alice, bob, UNIT // 10))
    burned, pooled = fee_split()
    assert svc.balance(alice.address).spendable == UNIT // 2 - UNIT // 10 - FEE
    assert svc.balance(bob.address).pending == UNIT // 10
    assert svc.balance(POOL.address).spendable == pooled
    assert svc.state().burned == burned
    # bob cannot spend the pending funds inside the dispute window ...
    too_much = UNIT // 2 + UNIT // 20
    assert code_of(svc.submit_transfer, send(svc, bob, alice, too_much)) == "insufficient_funds"
    clock.advance(60_001)
    # ... and can afterwards (an empty settlement block is sealed first)
    svc.submit_transfer(send(svc, bob, alice, too_much))
    assert svc.balance(bob.address).spendable == UNIT // 2 + UNIT // 10 - too_much - FEE
    s = svc.state()
    assert sum(s.spendable.values()) + sum(s.pending_in.values()) == s.minted - s.burned


def test_nonce_replay_self_transfer_and_amounts(net) -> None:
    svc, _, alice, bob, _ = net
    tx = send(svc, alice, bob, 1000)
    svc.submit_transfer(tx)
    assert code_of(svc.submit_transfer, tx) == "bad_nonce"                     # replay
    assert code_of(svc.submit_transfer, send(svc, alice, bob, 1000, nonce=5)) == "bad_nonce"
    assert code_of(svc.submit_transfer, send(svc, alice, alice, 1000)) == "self_transfer"
    for amount in (0, -1, 10**15):
        body = {**tx, "amount": amount, "nonce": 2}
        assert code_of(svc.submit_transfer, body) == "bad_amount"
    assert code_of(svc.submit_transfer, {**tx, "amount": 1.5}) == "malformed"
    assert code_of(svc.submit_transfer, {**tx, "amount": True}) == "malformed"
    assert svc.balance(alice.address).nonce == 1


def test_mints_are_idempotent_by_ref_and_capped(net) -> None:
    svc, clock, alice, bob, carol = net
    rid = "7" * 32
    svc.pay_inference(pay_inference_tx(carol, rid, UNIT // 10, clock()).to_json())
    ref = f"request:{rid}:{alice.address}"
    r1 = svc.mint_inference(alice.address, UNIT // 20, ref)
    r2 = svc.mint_inference(alice.address, UNIT // 20, ref)
    assert r1.created and not r2.created and r1.txid == r2.txid and r1.height == r2.height
    assert svc.balance(alice.address).spendable == UNIT // 2 + UNIT // 20
    assert code_of(svc.mint_inference, bob.address, UNIT // 20, ref) == "ref_conflict"
    assert code_of(svc.mint_training, alice.address, UNIT + 1, "update:big") == "bad_amount"
    assert code_of(svc.mint_training, wallet("stranger").address, 10, "u:s") == "unregistered"
    assert code_of(svc.mint_training, COORD.address, 10, "u:c") == "unregistered"
    assert code_of(svc.mint_training, alice.address[:-1] + "x", 10, "u:x") == "bad_address"
    assert code_of(svc.mint_training, alice.address, 10, "bad ref!") == "malformed"


def test_registration_is_unique(net) -> None:
    svc, _, alice, _, _ = net
    assert svc.address_of("alice") == alice.address
    other = wallet("other")
    from ailo.ledger.tx import register_tx
    assert code_of(svc.register, register_tx(other, "alice", svc.clock()).to_json()) \
        == "username_taken"
    assert code_of(svc.register, register_tx(alice, "alice2", svc.clock()).to_json()) \
        == "already_registered"
    forged = {**register_tx(other, "other", svc.clock()).to_json(), "address": alice.address}
    assert code_of(svc.register, forged) == "bad_signature"


def test_dispute_states_and_reversal(net) -> None:
    svc, _, alice, bob, carol = net
    dave = wallet("dave")
    pay = svc.submit_transfer(send(svc, alice, dave, UNIT // 10))
    r1 = svc.submit_report(report(svc, bob, pay.txid))
    assert r1.status == "REPORTED" and r1.reversal_txid is None
    assert code_of(svc.submit_report, report(svc, bob, pay.txid)) == "duplicate_report"
    r2 = svc.submit_report(report(svc, carol, pay.txid))       # 2 of 3 active = 66 % >= 51 %
    assert r2.status == "REVERSED" and r2.reversal_txid
    assert svc.balance(dave.address).pending == 0
    assert svc.balance(alice.address).spendable == UNIT // 2 - FEE    # fee is not refunded
    assert code_of(svc.submit_report, report(svc, alice, pay.txid)) == "already_reversed"
    assert verify_chain(svc.chain(), now=svc.clock()).ok


def test_sybil_reporters_do_not_count(net) -> None:
    svc, _, alice, bob, _ = net
    pay = svc.submit_transfer(send(svc, alice, bob, UNIT // 10))
    sybils = [wallet(f"sybil{i}") for i in range(5)]
    for s in sybils:                    # registered, but never did verified work
        join(svc, s, mint=0)
        last = svc.submit_report(report(svc, s, pay.txid))
    assert last.status == "DISPUTED"                          # disputed, but not reversed
    assert svc.balance(bob.address).pending == UNIT // 10
    assert code_of(svc.submit_report, report(svc, wallet("ghost"), pay.txid)) == "unregistered"


def test_only_pending_transfers_are_reportable(net) -> None:
    svc, clock, alice, bob, carol = net
    mint_txid = svc.mint_training(alice.address, 10, "update:m").txid
    assert code_of(svc.submit_report, report(svc, bob, mint_txid)) == "not_reversible"
    assert code_of(svc.submit_report, report(svc, bob, "ab" * 32)) == "unknown_tx"
    pay = svc.submit_transfer(send(svc, alice, bob, 1000))
    clock.advance(60_001)
    svc.seal_block()                                          # settles
    assert code_of(svc.submit_report, report(svc, carol, pay.txid)) == "dispute_closed"


def test_inactive_nodes_expire_from_the_active_set(net) -> None:
    svc, clock, alice, bob, carol = net
    assert svc.info()["active_nodes"] == 3
    clock.advance(3_600_001)
    svc.mint_training(alice.address, 10, "update:late")
    svc.mint_training(alice.address, 10, "update:late2")      # tip now after the window
    assert {a for a in (alice, bob, carol) if svc.balance(a.address).active} == {alice}


def test_future_and_stale_timestamps(net) -> None:
    svc, clock, alice, bob, _ = net
    from ailo.ledger.tx import transfer_tx
    future = transfer_tx(alice, bob.address, 10, 1, clock() + 61_000).to_json()
    assert code_of(svc.submit_transfer, future) == "future_timestamp"
    stale = transfer_tx(alice, bob.address, 10, 1, clock() - 600_001).to_json()
    assert code_of(svc.submit_transfer, stale) == "stale_timestamp"
    skewed = transfer_tx(alice, bob.address, 10, 1, clock() + 30_000).to_json()
    svc.submit_transfer(skewed)                               # small skew is tolerated
    assert verify_chain(svc.chain(), now=clock()).ok


def test_batched_blocks_and_pure_apply_block() -> None:
    clock = FakeClock()
    svc = service(clock=clock, auto_seal=False)
    alice, bob = wallet("alice"), wallet("bob")
    join(svc, alice)
    join(svc, bob)
    svc.submit_transfer(send(svc, alice, bob, 1000))
    assert svc.chain()[-1]["height"] == 0                     # nothing sealed yet
    block = svc.seal_block()
    assert block is not None and block["tx_count"] == 5 and svc.seal_block() is None
    chain = svc.chain()
    before = verify_chain(chain[:1], now=clock()).state
    after = apply_block(before, chain[1], now=clock())
    assert before.height == 0 and before.tx_count == 0        # untouched
    assert after.height == 1 and after.balance(alice.address) == UNIT // 2 - 1000 - FEE
    tx = Transaction.from_json(chain[1]["txs"][4])
    assert tx.type == "TRANSFER" and tx.signature_valid(COORD.address)


def test_concurrent_double_spend_accepts_exactly_one(net) -> None:
    import threading
    svc, _, alice, bob, carol = net
    everything = UNIT // 2 - FEE
    txs = [send(svc, alice, to, everything, nonce=1) for to in (bob, carol) * 4]
    results: list[str] = []

    def submit(tx) -> None:
        try:
            svc.submit_transfer(tx)
            results.append("ok")
        except LedgerError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=submit, args=(tx,)) for tx in txs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1 and set(results) <= {"ok", "bad_nonce"}
    assert svc.balance(alice.address).spendable == 0
    assert verify_chain(svc.chain(), now=svc.clock()).ok


def test_inference_is_paid_by_the_requester_and_never_mints_more_than_it_paid(net) -> None:
    """PAY_INFERENCE burns the price; MINT_INFERENCE needs a paid request, never pays the
    payer, never exceeds the payment; inference mints do not make an address ACTIVE."""
    svc, clock, alice, bob, carol = net
    rid, price = "a" * 32, 2 * (UNIT // 20)
    before = svc.state()
    svc.pay_inference(pay_inference_tx(alice, rid, price, clock()).to_json())
    burned, pooled = fee_split()
    assert svc.balance(alice.address).spendable == UNIT // 2 - price - FEE
    assert svc.state().burned == before.burned + price + burned
    assert code_of(svc.pay_inference, pay_inference_tx(alice, rid, price, clock()).to_json()) \
        == "duplicate_request"
    assert code_of(svc.pay_inference, pay_inference_tx(bob, "b" * 32, UNIT, clock()).to_json()) \
        == "insufficient_funds"
    forged = {**pay_inference_tx(bob, "c" * 32, 1, clock()).to_json(), "from": alice.address}
    assert code_of(svc.pay_inference, forged) == "bad_signature"
    assert code_of(svc.mint_inference, alice.address, UNIT // 20, f"request:{rid}:{alice.address}") \
        == "self_dealing"
    assert code_of(svc.mint_inference, bob.address, UNIT // 20, f"request:{'d' * 32}:{bob.address}") \
        == "unpaid_request"
    assert code_of(svc.mint_inference, bob.address, UNIT // 20, f"request:{rid}:{carol.address}") \
        == "bad_ref"
    svc.mint_inference(bob.address, UNIT // 20, f"request:{rid}:{bob.address}")
    svc.mint_inference(carol.address, UNIT // 20, f"request:{rid}:{carol.address}")
    dave = wallet("dave")
    join(svc, dave, mint=0)
    assert code_of(svc.mint_inference, dave.address, 1, f"request:{rid}:{dave.address}") == "over_budget"
    after = svc.state()
    assert after.supply < before.supply  # the whole loop destroyed money: price paid >= minted, plus a fee
    assert after.requests[rid].remaining == 0
    # inference mints leave ACTIVE untouched:
    assert after.last_work.get(bob.address) == before.last_work.get(bob.address)


def test_a_failed_requests_unspent_payment_is_refunded_once_to_its_payer(net) -> None:
    svc, clock, alice, bob, carol = net
    rid, price = "e" * 32, 2 * (UNIT // 20)
    assert svc.refund_inference(rid) is None                      # never paid: nothing to give back
    svc.pay_inference(pay_inference_tx(alice, rid, price, clock()).to_json())
    svc.mint_inference(bob.address, UNIT // 20, f"request:{rid}:{bob.address}")  # one span was served
    assert code_of(svc.mint_inference, bob.address, UNIT // 20, f"refund:{rid}") == "bad_ref"  # not the payer
    receipt = svc.refund_inference(rid)
    assert receipt.created and receipt.address == alice.address and receipt.amount == UNIT // 20
    assert svc.refund_inference(rid).created is False             # idempotent: one refund per request
    assert svc.balance(alice.address).spendable == UNIT // 2 - UNIT // 20 - FEE  # the fee is kept
    assert svc.state().requests[rid].remaining == 0
    assert code_of(svc.mint_inference, carol.address, UNIT // 20, f"request:{rid}:{carol.address}") \
        == "settled"                                              # the refund settled the request
    full = "f" * 32
    svc.pay_inference(pay_inference_tx(alice, full, price, clock()).to_json())
    assert svc.refund_inference(full).amount == price            # nobody served: all of it back
    part = "d" * 32                                               # a partial refund (what nobody processed)
    svc.pay_inference(pay_inference_tx(alice, part, price, clock()).to_json())
    assert svc.refund_inference(part, price // 3).amount == price // 3
    assert svc.state().requests[part].remaining == price - price // 3 and svc.state().requests[part].settled
    assert code_of(svc.mint_inference, bob.address, 1, f"request:{part}:{bob.address}") == "settled"
