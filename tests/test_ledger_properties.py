"""Property tests: random sequences of valid and invalid operations keep every ledger
invariant, and the chain the coordinator produced always re-verifies to the same state."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ailo.ledger import FEE, UNIT, LedgerError, fee_split, verify_chain
from ailo.ledger.tx import transfer_tx

from ledger_helpers import FakeClock, join, report, service, wallet

USERS = [wallet(n) for n in ("alice", "bob", "carol", "dave")]   # dave: registered, idle
STRANGER = wallet("stranger")                                     # never registered
AMOUNTS = st.one_of(st.integers(1, UNIT // 4), st.integers(1, UNIT // 100),
                    st.sampled_from([0, -1, 10**15, UNIT]))
USER = st.one_of(st.integers(0, 3), st.integers(0, 2), st.just(4))
TRANSFER = st.tuples(st.just("transfer"), USER, USER, AMOUNTS,
                     st.sampled_from([0] * 8 + [-1, 1]),
                     st.sampled_from([0] * 8 + [120_000, -700_000]))
OPS = st.one_of(
    TRANSFER, TRANSFER, TRANSFER,
    st.tuples(st.just("mint"), USER, st.integers(-1, UNIT + 5), st.integers(0, 6)),
    st.tuples(st.just("replay"), st.integers(0, 50)),
    st.tuples(st.just("report"), USER, st.integers(0, 3)),
    st.tuples(st.just("report"), st.integers(0, 2), st.just(0)),
    st.tuples(st.just("report"), st.integers(0, 2), st.just(0)),
    st.tuples(st.just("advance"), st.sampled_from([0, 1_000, 30_000, 61_000])),
    st.tuples(st.just("seal")),
)


def who(i: int):
    return USERS[i] if i < len(USERS) else STRANGER


def fingerprint(svc) -> tuple:
    """What a refused operation must not change. Per-address spendable + pending, because
    opening a block may first seal a due settlement (pending -> spendable, same owner)."""
    s = svc._working or svc._state
    owned = {a: s.spendable.get(a, 0) + s.pending_in.get(a, 0)
             for a in set(s.spendable) | set(s.pending_in)}
    return (owned, dict(s.nonces), s.minted, s.burned, dict(s.status), len(s.refs),
            len(s.names))


def check_invariants(svc) -> None:
    s = svc._working or svc._state
    assert all(v >= 0 for v in s.spendable.values()), "negative spendable balance"
    assert all(v >= 0 for v in s.pending_in.values()), "negative pending balance"
    total = sum(s.spendable.values()) + sum(s.pending_in.values())
    assert total == s.minted - s.burned, "supply identity broken"
    assert sum(p.amount for p in s.pending.values()) == sum(s.pending_in.values())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=15, max_size=40), auto_seal=st.booleans())
def test_random_operations_keep_invariants(ops, auto_seal) -> None:
    clock = FakeClock()
    svc = service(clock=clock, auto_seal=auto_seal)
    for w in USERS:
        join(svc, w, mint=UNIT // 2 if w.username != "dave" else 0)
    minted, transfers, mints = (svc._working or svc._state).minted, [], []
    seen_txids: set[str] = set()
    order: list[str] = []
    for op in ops:
        before = fingerprint(svc)
        try:
            if op[0] == "mint":
                _, i, amount, ref = op
                r = svc.mint_training(who(i).address, amount, f"update:{ref}")
                if r.created:
                    minted += amount
                    mints.append(r.txid)
                else:
                    assert fingerprint(svc) == before            # idempotent: no new money
            elif op[0] == "transfer":
                _, i, j, amount, dn, dt = op
                sender = who(i)
                nonce = svc.balance(sender.address).nonce + 1 + dn
                valid = 1 <= amount <= 10**14
                tx = transfer_tx(sender, who(j).address, amount if valid else 1, nonce,
                                 clock() + dt).to_json()
                tx["amount"] = amount             # invalid amounts must be refused
                spend_before = svc.balance(sender.address).spendable
                tip_before = svc._state.tip_ts
                acc = svc.submit_transfer(tx)
                assert acc.txid not in seen_txids                # no double spend
                seen_txids.add(acc.txid)
                order.append(acc.txid)
                assert 1 <= amount <= 10**14 and i != j and dn == 0
                assert dt <= 60_000 and clock() + dt + 600_000 >= tip_before
                assert spend_before >= amount + FEE
                transfers.append(tx)
                event("transfer accepted")
            elif op[0] == "replay":
                if not transfers:
                    continue
                tx = transfers[op[1] % len(transfers)]
                try:
                    svc.submit_transfer(tx)
                except LedgerError as exc:
                    assert exc.code in ("bad_nonce", "stale_timestamp")
                    raise
                raise AssertionError("a replayed transfer was accepted")
            elif op[0] == "report":
                _, i, k = op
                targets = [t for t in reversed(order)] + mints[:1]   # newest first
                if not targets:
                    continue
                target = targets[k % len(targets)]
                if svc._working is None:
                    svc.seal_block()              # seal a due settlement now, not inside
                st0 = (svc._working or svc._state).copy()
                acc = svc.submit_report(report(svc, who(i), target))
                assert target not in mints                        # mints are never reversible
                st1 = svc._working or svc._state
                assert (st1.minted, st1.burned) == (st0.minted, st0.burned)
                expected_spendable, expected_pending = dict(st0.spendable), dict(st0.pending_in)
                if acc.status == "REVERSED":      # the pending amount goes back, nothing more
                    p = st0.pending[target]
                    expected_spendable[p.sender] = st0.spendable.get(p.sender, 0) + p.amount
                    expected_pending[p.recipient] -= p.amount
                assert st1.spendable == expected_spendable
                assert st1.pending_in == expected_pending
                event(f"report -> {acc.status}")
            elif op[0] == "advance":
                clock.advance(op[1])
            else:
                svc.seal_block()
        except LedgerError as exc:
            event(f"refused {op[0]}: {exc.code}")
            assert fingerprint(svc) == before, f"refused {op[0]} changed the state"
        check_invariants(svc)
        s = svc._working or svc._state
        assert s.minted == minted and s.burned == fee_split()[0] * len(transfers)
    svc.seal_block()
    report_ = verify_chain(svc.chain(), now=clock())
    assert report_.ok, report_.violation
    final = svc.state()
    assert (report_.state.spendable, report_.state.pending_in, report_.state.nonces) == \
        (final.spendable, final.pending_in, final.nonces)
    assert report_.minted == minted and report_.supply == final.supply


VALID = json.loads((Path(__file__).parent / "vectors" / "ledger" / "valid_basic.json")
                   .read_text())


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))
    else:
        yield path, obj


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_single_edit_of_a_valid_chain_is_caught(data) -> None:
    chain = copy.deepcopy(VALID["chain"])
    b = data.draw(st.integers(0, len(chain) - 1), label="block")
    leaves = list(_leaves(chain[b]))
    path, value = data.draw(st.sampled_from(leaves), label="field")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return
    if isinstance(value, int):
        new = value + data.draw(st.sampled_from([-1, 1, 1000, -(10**8)]))
    else:
        i = data.draw(st.integers(0, max(0, len(value) - 1)))
        c = value[i] if value else ""
        new = value[:i] + ("0" if c != "0" else "1") + value[i + 1:]
    target = chain[b]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    result = verify_chain(chain, now=VALID["now_ms"])
    assert not result.ok, (b, path)
    assert result.violation.block == b, (b, path, result.violation)   # caught where edited
