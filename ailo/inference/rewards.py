"""Per-request inference rewards (SPEC R7, R9).

Each successfully completed request pays 0.05 ALC to every node that processed it, once,
and never to the requester — even when the requester's own node served a span. A paid request
that fails (a span with no node left) gets its unspent payment back (`refund_request`). The ledger
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


def refund_request(sink: object, request_id: str) -> int:
    """Units given back to the payer of a request that failed (0: unpaid, no ledger, or the
    ledger refused). Never raises: the client still gets the failure it is owed."""
    refund = getattr(sink, "refund_inference", None)
    if refund is None:
        return 0
    try:
        receipt = refund(request_id)
    except Exception as exc:
        log.warning("refund of %s failed: %s", request_id, exc)
        return 0
    return int(getattr(receipt, "amount", 0) or 0)
