// The ledger state and the rule of each transaction type (state.py).
import { ZERO_HASH } from './codec.js';
import { LedgerError } from './errors.js';
import { BURN_BPS, REVERSAL_PERCENT } from './params.js';
import { INFERENCE_REF_RE, MINT_TYPES, REFUND_REF_RE } from './tx.js';

const REPORTED = 'REPORTED', DISPUTED = 'DISPUTED', REVERSED = 'REVERSED';

export class LedgerState {
  constructor(params) {
    this.params = params;
    this.height = -1; this.tipHash = ZERO_HASH; this.tipTs = 0;
    this.spendable = new Map(); this.pendingIn = new Map(); this.nonces = new Map();
    this.usernames = new Map(); this.names = new Map(); this.refs = new Map(); this.lastWork = new Map();
    this.pending = new Map(); this.settleQueue = []; this.reporters = new Map(); this.status = new Map();
    this.kinds = new Map(); this.requests = new Map(); // paid inference request -> { payer, remaining, settled }
    this.minted = 0; this.burned = 0; this.txCount = 0; this.openHeight = null; this.newPending = [];
  }

  get supply() { return this.minted - this.burned; }

  balance(address) { return { spendable: this.spendable.get(address) || 0, pending: this.pendingIn.get(address) || 0 }; }

  activeNodes() {
    const cutoff = this.tipTs - this.params.active_window_ms;
    const out = new Set();
    for (const [a, ts] of this.lastWork) if (ts >= cutoff && this.names.has(a)) out.add(a);
    return out;
  }

  checkInvariants() {
    for (const m of [this.spendable, this.pendingIn]) {
      for (const v of m.values()) if (v < 0) throw new LedgerError('negative_balance', 'a balance is negative');
    }
    let total = 0;
    for (const v of this.spendable.values()) total += v;
    for (const v of this.pendingIn.values()) total += v;
    if (total !== this.supply) throw new LedgerError('supply_mismatch', `sum of balances ${total} != minted - burned ${this.supply}`);
  }
}

const credit = (m, a, amount) => m.set(a, (m.get(a) || 0) + amount);

export function beginBlock(s, height) { s.openHeight = height; s.newPending = []; }

export function endBlock(s, blockHash, timestamp) {
  const window = s.params.dispute_window_ms;
  for (const txid of s.newPending) {
    const p = s.pending.get(txid);
    if (p) s.pending.set(txid, { ...p, settleAt: timestamp + window });
  }
  s.settleQueue.push(...s.newPending);
  while (s.settleQueue.length) {
    const p = s.pending.get(s.settleQueue[0]);
    if (!p) { s.settleQueue.shift(); continue; }
    if (p.settleAt === null || p.settleAt > timestamp) break;
    s.settleQueue.shift();
    s.pending.delete(p.txid);
    s.pendingIn.set(p.recipient, s.pendingIn.get(p.recipient) - p.amount);
    credit(s.spendable, p.recipient, p.amount);
  }
  s.height = s.openHeight !== null ? s.openHeight : s.height + 1;
  s.tipHash = blockHash; s.tipTs = timestamp;
  s.openHeight = null; s.newPending = [];
}

function disputeTarget(s, target) {
  const p = s.pending.get(target);
  if (p) return p;
  const kind = s.kinds.get(target);
  if (kind === undefined) throw new LedgerError('unknown_tx', `no transaction ${target} on this chain`);
  if (kind !== 'TRANSFER') throw new LedgerError('not_reversible', `${kind} transactions can never be reversed`);
  if (s.status.get(target) === REVERSED) throw new LedgerError('already_reversed', `${target} is already reversed`);
  throw new LedgerError('dispute_closed', `${target} has settled; its dispute window is closed`);
}

function checkReversible(s, target) {
  const p = disputeTarget(s, target);
  if (s.status.get(target) !== DISPUTED) throw new LedgerError('no_quorum', `${target} is not DISPUTED (needs ${s.params.dispute_quorum} reports)`);
  const active = s.activeNodes();
  const reps = s.reporters.get(target) || new Set();
  let votes = 0;
  for (const r of reps) if (active.has(r)) votes++;
  if (!active.size || votes * 100 < REVERSAL_PERCENT * active.size) {
    throw new LedgerError('no_quorum', `${votes} of ${active.size} active nodes reported ${target}; ${REVERSAL_PERCENT}% needed`);
  }
  return p;
}

const RULES = {
  REGISTER(s, tx) {
    const { address, username } = tx.body;
    if (s.names.has(address)) throw new LedgerError('already_registered', `${address} is already registered as '${s.names.get(address)}'`);
    if (s.usernames.has(username)) throw new LedgerError('username_taken', `username '${username}' is taken`);
    s.names.set(address, username);
    s.usernames.set(username, address);
  },
  MINT(s, tx) {
    const { to, amount, ref } = tx.body;
    if (amount > s.params.max_mint) throw new LedgerError('bad_amount', `mint of ${amount} exceeds max_mint ${s.params.max_mint}`);
    if (!s.names.has(to)) throw new LedgerError('unregistered', `mint recipient ${to} is not registered`);
    if (to === s.params.coordinator) throw new LedgerError('self_mint', 'the coordinator cannot mint to itself');
    if (s.refs.has(ref)) throw new LedgerError('duplicate_ref', `ref '${ref}' was already minted`);
    if (tx.type === 'MINT_INFERENCE') {
      const m = INFERENCE_REF_RE.exec(ref), refund = REFUND_REF_RE.exec(ref);
      if (!refund && (!m || m[2] !== to)) throw new LedgerError('bad_ref', 'MINT_INFERENCE ref must be request:<32-hex request id>:<recipient address> or refund:<32-hex request id>');
      const request = (refund || m)[1];
      const budget = s.requests.get(request);
      if (!budget) throw new LedgerError('unpaid_request', `request ${request} was never paid (no PAY_INFERENCE)`);
      if (refund && to !== budget.payer) throw new LedgerError('bad_ref', `a refund of request ${request} goes to its payer ${budget.payer}`);
      if (!refund && to === budget.payer) throw new LedgerError('self_dealing', 'the requester cannot be paid for its own request');
      if (budget.settled) throw new LedgerError('settled', `request ${request} is settled: its refund was minted, nothing more is paid`);
      if (amount > budget.remaining) throw new LedgerError('over_budget', `mint of ${amount} exceeds the ${budget.remaining} units left of request ${request}'s payment`);
      s.requests.set(request, { payer: budget.payer, remaining: budget.remaining - amount, settled: !!refund });
    }
    credit(s.spendable, to, amount);
    s.minted += amount;
    s.refs.set(ref, { txid: tx.txid, type: tx.type, to, amount, height: s.openHeight || 0 });
    // only verified training makes an address ACTIVE (R12); inference is paid by requesters
    if (tx.type === 'MINT_TRAINING') s.lastWork.set(to, Math.max(s.lastWork.get(to) || 0, tx.timestamp));
  },
  PAY_INFERENCE(s, tx) {
    const { from: payer, request, amount, fee } = tx.body;
    if (s.requests.has(request)) throw new LedgerError('duplicate_request', `request ${request} is already paid`);
    const have = s.spendable.get(payer) || 0;
    if (have < amount + fee) throw new LedgerError('insufficient_funds', `spendable balance ${have} < amount ${amount} + fee ${fee}`);
    const burned = Math.floor((fee * BURN_BPS) / 10000);
    s.spendable.set(payer, have - amount - fee);
    credit(s.spendable, s.params.pool, fee - burned);
    s.burned += amount + burned;
    s.requests.set(request, { payer, remaining: amount });
  },
  TRANSFER(s, tx) {
    const { from: sender, to, amount, fee, nonce } = tx.body;
    if (sender === to) throw new LedgerError('self_transfer', 'sender and recipient are the same address');
    const expected = (s.nonces.get(sender) || 0) + 1;
    if (nonce !== expected) throw new LedgerError('bad_nonce', `nonce ${nonce} is ${nonce < expected ? 'replayed' : 'out of order'}; expected ${expected}`);
    const have = s.spendable.get(sender) || 0;
    if (have < amount + fee) throw new LedgerError('insufficient_funds', `spendable balance ${have} < amount ${amount} + fee ${fee}`);
    const burned = Math.floor((fee * BURN_BPS) / 10000);
    s.spendable.set(sender, have - amount - fee);
    credit(s.spendable, s.params.pool, fee - burned);
    s.burned += burned;
    credit(s.pendingIn, to, amount);
    s.pending.set(tx.txid, { txid: tx.txid, sender, recipient: to, amount, height: s.openHeight || 0, settleAt: null });
    s.newPending.push(tx.txid);
    s.nonces.set(sender, nonce);
  },
  REPORT(s, tx) {
    const { reporter, target } = tx.body;
    if (!s.names.has(reporter)) throw new LedgerError('unregistered', `reporter ${reporter} is not a registered node`);
    disputeTarget(s, target);
    const reps = new Set(s.reporters.get(target) || []);
    if (reps.has(reporter)) throw new LedgerError('duplicate_report', `${reporter} already reported ${target}`);
    reps.add(reporter);
    s.reporters.set(target, reps);
    s.status.set(target, reps.size >= s.params.dispute_quorum ? DISPUTED : REPORTED);
  },
  REVERSAL(s, tx) {
    const p = checkReversible(s, tx.body.target);
    if (tx.body.from !== p.recipient || tx.body.to !== p.sender || tx.body.amount !== p.amount) {
      throw new LedgerError('reversal_mismatch', "REVERSAL from/to/amount must be the disputed transfer's recipient/sender/amount");
    }
    s.pending.delete(p.txid);
    s.pendingIn.set(p.recipient, s.pendingIn.get(p.recipient) - p.amount);
    credit(s.spendable, p.sender, p.amount);
    s.status.set(p.txid, REVERSED);
    s.reporters.delete(p.txid);
  },
};

/** Check a (signature-verified) transaction against the state and apply it, or throw and change nothing. */
export function applyTx(s, tx, maxTs) {
  if (s.openHeight === null) throw new LedgerError('no_open_block', 'no open block');
  const ts = tx.timestamp;
  if (ts > maxTs) throw new LedgerError('future_timestamp', `timestamp ${ts} is in the future (limit ${maxTs})`);
  if (ts + s.params.max_tx_age_ms < s.tipTs) {
    throw new LedgerError('stale_timestamp', `timestamp ${ts} is older than the previous block (${s.tipTs}) by more than max_tx_age_ms`);
  }
  (MINT_TYPES.has(tx.type) ? RULES.MINT : RULES[tx.type])(s, tx);
  s.kinds.set(tx.txid, tx.type);
  s.txCount += 1;
}
