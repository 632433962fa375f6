"""Protocol constants and the per-chain parameters fixed in the genesis block."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from ailo.wallet import is_valid_address

from .errors import ChainError

UNIT = 10**8                      # 1 ALC = 10^8 units; every amount is an integer of units
FEE = UNIT // 100                 # 0.01 ALC per TRANSFER (R10)
BURN_BPS = 5000                   # 50.00 % of every fee is burned ...
# ... and the rest (FEE - FEE * BURN_BPS // 10000) is credited to the chain's `pool` address.
MAX_AMOUNT = 10**6 * UNIT         # largest single transfer: 1,000,000 ALC (< 2^53)
REVERSAL_PERCENT = 51             # share of ACTIVE nodes whose reports force a REVERSAL (R12)


def fee_split(fee: int = FEE) -> tuple[int, int]:
    """(burned, to_pool) for one fee."""
    burned = fee * BURN_BPS // 10000
    return burned, fee - burned


@dataclass(frozen=True)
class ChainParams:
    """Chosen by the coordinator at genesis and signed with it; every verifier reads them
    from block 0. Economics (fee, burn share, 51 %) are protocol constants, not params."""

    coordinator: str                     # address whose key signs blocks, mints, reversals
    pool: str                            # receives the non-burned share of fees
    max_mint: int = UNIT                 # largest single mint: 1 ALC (R7 pays ~0.1-0.15)
    dispute_window_ms: int = 3_600_000   # received transfers stay pending (reportable) 1 h
    active_window_ms: int = 86_400_000   # a node with a mint in the last 24 h is ACTIVE
    dispute_quorum: int = 2              # distinct reports that make a transfer DISPUTED
    max_future_ms: int = 60_000          # tolerated clock skew for "not in the future"
    max_tx_age_ms: int = 600_000         # a tx older than this vs the previous block is stale
    version: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "ChainParams":
        names = {f.name for f in fields(cls)}
        if not isinstance(data, Mapping) or set(data) != names:
            raise ChainError(f"genesis params must have exactly the keys {sorted(names)}",
                             "bad_params")
        for name in names - {"coordinator", "pool"}:
            value = data[name]
            if type(value) is not int or not 0 <= value <= 2**53 - 1:
                raise ChainError(f"param {name} must be a non-negative integer", "bad_params")
        for name in ("coordinator", "pool"):
            if not is_valid_address(data[name]):
                raise ChainError(f"param {name} is not a valid address", "bad_params")
        params = cls(**dict(data))
        if params.version != 1 or not 1 <= params.max_mint <= MAX_AMOUNT \
                or params.dispute_quorum < 1:
            raise ChainError("unsupported version, max_mint or dispute_quorum", "bad_params")
        return params


def parse_alc(text: str) -> int:
    """"1.5" (ALC, up to 8 decimals) -> 150000000 units, exactly (no floats)."""
    from decimal import Decimal, InvalidOperation
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None
    units = value * UNIT
    if not value.is_finite() or units != units.to_integral_value():
        raise ValueError(f"{text!r}: at most 8 decimal places (1 unit = 0.00000001 ALC)")
    return int(units)


def format_alc(units: int) -> str:
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), UNIT)
    return f"{sign}{whole}.{frac:08d} ALC"
