// Ledger errors (errors.py): a stable `code` per refusal, as in docs/LEDGER.md and the vectors.
export class LedgerError extends Error {
  constructor(code, message) { super(message); this.code = code; }
  get name() { return 'LedgerError'; }
}

export class ChainViolation extends LedgerError {
  constructor(block, tx, error) { super(error.code, error.message); this.block = block; this.tx = tx; }
  get name() { return 'ChainViolation'; }
}
