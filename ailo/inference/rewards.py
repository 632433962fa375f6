"""Per-request inference rewards (SPEC R7, R9).

Each successfully completed request pays 0.05 ALC to every node that processed it, once,
and never to the requester — even when the requester's own node served a span. A paid request
that fails (a span with no node left) is settled by delivered work (`failed_settlement`): each
node is paid for the steps it processed, the requester gets back only the share of the steps
nobody processed, and nothing when a node of its own wallet caused the failure. The ledger
(`ailo.ledger.LedgerService`, built separately) implements `mint_inference` idempotently
by `ref`; this package only depends on the Protocol below, so rooms run without a ledger.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

UNITS_PER_ALC = 10 ** 8
INFERENCE_REWARD_UNITS = 5_000_000  # 0.05 ALC per node per processed request

log = logging.getLogger(__name__)


@runtime_checkable
class InferenceRewardSink(Protocol):
    def mint_inference(self, address: str, amount: int, ref: str) -> object:
        """Mint `amount` units to `address`; a repeated `ref` must not mint twice.
        (`LedgerService.mint_inference` returns a receipt; the result is not used.)"""


@runtime_checkable
class InferencePayments(Protocol):
    def pay_inference(self, signed_tx: dict) -> object:
        """Apply a requester's signed PAY_INFERENCE (ledger rules: docs/LEDGER.md) or raise
        `ailo.ledger.errors.LedgerError`. (`LedgerService.pay_inference`.)"""


def request_price(n_spans: int) -> int:
    """What one request costs its requester: the most it can mint — one reward per span
    (a span's work is paid to one node; failed nodes are dropped, never added)."""
    return INFERENCE_REWARD_UNITS * n_spans


def reward_ref(request_id: str, address: str) -> str:
    return f"request:{request_id}:{address}"


def payees(node_addresses: Iterable[str | None], requester: str | None) -> list[str]:
    """Distinct, non-empty node addresses in first-seen order, the requester excluded."""
    out: list[str] = []
    for a in node_addresses:
        if a and a != requester and a not in out:
            out.append(a)
    return out


def pay_request(sink: InferenceRewardSink | None, request_id: str, node_addresses: Iterable[str | None],
                requester: str | None) -> tuple[list[str], list[str]]:
    """Mint to each payee; returns (paid, errors). A failing mint does not stop the others."""
    paid: list[str] = []
    errors: list[str] = []
    for address in payees(node_addresses, requester):
        if sink is None:
            break
        try:
            sink.mint_inference(address, INFERENCE_REWARD_UNITS, reward_ref(request_id, address))
            paid.append(address)
        except Exception as exc:  # the ledger's refusal must not turn a good answer into an error
            log.warning("inference reward to %s for %s failed: %s", address, request_id, exc)
            errors.append(f"{address}: {exc}")
    return paid, errors


def failed_settlement(node_steps: Iterable[tuple[str | None, int]], tokens: int, n_spans: int, budget: int,
                      requester: str | None, fault: str | None) -> tuple[dict[str, int], int]:
    """(payouts by address, refund) of a paid request that failed after `tokens` of its `budget`
    steps (docs/REWARDS.md "Failed requests"). `node_steps`: (address, steps it processed) per node;
    a step is one emitted token whose forward pass went through that node (a node on every span's
    route gets one per token, so the steps of a span add up to `tokens`).

    A node earns reward × steps / budget (one reward per span and request, as on success; at most
    one reward per wallet); the requester's own nodes earn nothing. The refund is the share of the
    budget nobody processed — never the processed share, whoever processed it — and 0 when the
    failing node (`fault`) belongs to the requester: a requester that kills its own node gets
    neither a refund nor free tokens. Payouts plus refund never exceed the price."""
    budget = max(1, budget)
    pay: dict[str, int] = {}
    for address, steps in node_steps:
        if address and address != requester and steps > 0:
            pay[address] = pay.get(address, 0) + INFERENCE_REWARD_UNITS * steps // budget
    pay = {a: min(v, INFERENCE_REWARD_UNITS) for a, v in pay.items() if v > 0}
    processed = INFERENCE_REWARD_UNITS * n_spans * min(tokens, budget) // budget
    refund = 0 if requester is not None and fault == requester else request_price(n_spans) - processed
    return pay, refund


def settle_failed(sink: object, request_id: str, payouts: dict[str, int], refund: int) -> tuple[list[str], int]:
    """Mint the payouts, then the refund (which settles the request on the ledger: no payout may
    follow it). Returns (paid addresses, units refunded). Never raises."""
    paid: list[str] = []
    for address, amount in payouts.items():
        if sink is None:
            break
        try:
            sink.mint_inference(address, amount, reward_ref(request_id, address))
            paid.append(address)
        except Exception as exc:
            log.warning("inference payout to %s for failed %s failed: %s", address, request_id, exc)
    return paid, refund_request(sink, request_id, refund) if refund > 0 else 0


def refund_request(sink: object, request_id: str, amount: int | None = None) -> int:
    """Units given back to the payer of a request that failed (0: unpaid, no ledger, or the
    ledger refused); `amount` None = all that is left of its payment. Never raises: the client
    still gets the failure it is owed."""
    refund = getattr(sink, "refund_inference", None)
    if refund is None:
        return 0
    try:
        receipt = refund(request_id, amount)
    except Exception as exc:
        log.warning("refund of %s failed: %s", request_id, exc)
        return 0
    return int(getattr(receipt, "amount", 0) or 0)
