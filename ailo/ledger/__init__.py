"""AiloCoin ledger (R10-R12). Pure core: `codec`, `tx`, `block`, `state`, `verify`;
`service.LedgerService` adds signing and persistence. Rules: docs/LEDGER.md."""
from .errors import LedgerError
from .params import BURN_BPS, FEE, MAX_AMOUNT, UNIT, ChainParams, fee_split
from .state import LedgerState, apply_tx, begin_block, end_block
from .tx import (MINT_INFERENCE, MINT_TRAINING, PAY_INFERENCE, REGISTER, REPORT, REVERSAL, TRANSFER,
                 Transaction)
from .verify import VerifyReport, Violation, apply_block, check_block, verify_chain

__all__ = [
    "LedgerError", "UNIT", "FEE", "BURN_BPS", "MAX_AMOUNT", "ChainParams", "fee_split",
    "LedgerState", "apply_tx", "begin_block", "end_block", "Transaction", "REGISTER",
    "MINT_TRAINING", "MINT_INFERENCE", "PAY_INFERENCE", "TRANSFER", "REPORT", "REVERSAL", "VerifyReport",
    "Violation", "apply_block", "check_block", "verify_chain",
]
