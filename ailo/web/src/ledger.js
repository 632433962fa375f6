// AiloCoin chain verification in the browser (SPEC R11): a port of docs/LEDGER.md (Python
// reference: ailo/ledger/{codec,tx,block,params,state,verify}.py). Same canonical bytes, same
// order of checks, same error codes: it reproduces every vector in tests/vectors/ledger/.
// Integers are JS Numbers: the schemas keep every chain integer within [0, 2^53 − 1].
import { sha256 } from '@noble/hashes/sha2.js';
import { fromHex, toHex } from './hash.js';
import { isValidAddress, publicKeyFromAddress, verify as verifySig } from './ed25519.js';

export const UNIT = 100_000_000;
export const FEE = UNIT / 100;
export const BURN_BPS = 5000;
export const MAX_AMOUNT = 1_000_000 * UNIT;
export const REVERSAL_PERCENT = 51;
export const MAX_SAFE_INT = 2 ** 53 - 1;
export const ZERO_HASH = '0'.repeat(64);
const TX_DOMAIN = 'AILO-TX-V1\n';
const BLOCK_DOMAIN = 'AILO-BLOCK-V1\n';

export class LedgerError extends Error {
  constructor(code, message) { super(message); this.code = code; }
  get name() { return 'LedgerError'; }
}

export class ChainViolation extends LedgerError {
  constructor(block, tx, error) { super(error.code, error.message); this.block = block; this.tx = tx; }
  get name() { return 'ChainViolation'; }
}

// ---- JSON ---------------------------------------------------------------------------------
/** A JSON number written with a fraction or exponent (Python parses it as float, never int). */
export class JsonFloat {
  constructor(value) { this.value = value; }
}

/** JSON.parse that keeps "1.0" distinguishable from "1" (Python's int/float split), using the
 *  reviver's source text where the browser provides it. */
export function parseJson(text) {
  return JSON.parse(text, function reviver(key, value, context) {
    if (typeof value === 'number' && context && typeof context.source === 'string' && /[.eE]/.test(context.source)) {
      return new JsonFloat(value);
    }
    return value;
  });
}

const isInt = (v) => typeof v === 'number' && Number.isInteger(v);
const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof JsonFloat);

function pyString(s) {
  // json.dumps(ensure_ascii=True): escape ", \, control characters and everything outside
  // printable ASCII (0x20–0x7e) as \uXXXX (lowercase hex, UTF-16 units).
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const ch = s[i];
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (c < 0x20 || c > 0x7e) out += '\\u' + c.toString(16).padStart(4, '0');
    else out += ch;
  }
  return out + '"';
}

/** Canonical JSON (docs/LEDGER.md §3): json.dumps(x, sort_keys=True, separators=(",", ":")). */
export function canonicalJson(x) {
  if (x === null) return 'null';
  if (x === true) return 'true';
  if (x === false) return 'false';
  if (x instanceof JsonFloat) throw new LedgerError('malformed', 'floats are never canonical');
  if (typeof x === 'number') {
    if (!Number.isInteger(x)) throw new LedgerError('malformed', 'floats are never canonical');
    return String(x);
  }
  if (typeof x === 'string') return pyString(x);
  if (Array.isArray(x)) return '[' + x.map(canonicalJson).join(',') + ']';
  const keys = Object.keys(x).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return '{' + keys.map((k) => pyString(k) + ':' + canonicalJson(x[k])).join(',') + '}';
}

const utf8 = (s) => new TextEncoder().encode(s);
export const sha256Hex = (bytes) => toHex(sha256(typeof bytes === 'string' ? utf8(bytes) : bytes));

export function merkleLeaf(txid, signature) {
  const buf = new Uint8Array(1 + 32 + 64);
  buf[0] = 0;
  buf.set(fromHex(txid), 1);
  buf.set(fromHex(signature), 33);
  return sha256(buf);
}

/** Binary Merkle tree, node = sha256(0x01 || l || r), unpaired last node carried up. */
export function merkleRoot(leaves) {
  let level = [...leaves];
  if (!level.length) return toHex(sha256(new Uint8Array(0)));
  while (level.length > 1) {
    const next = [];
    for (let i = 0; i + 1 < level.length; i += 2) {
      const buf = new Uint8Array(65);
      buf[0] = 1;
      buf.set(level[i], 1);
      buf.set(level[i + 1], 33);
      next.push(sha256(buf));
    }
    if (level.length % 2) next.push(level[level.length - 1]);
    level = next;
  }
  return toHex(level[0]);
}

// ---- transactions (tx.py) -----------------------------------------------------------------
export const TX_TYPES = ['REGISTER', 'MINT_TRAINING', 'MINT_INFERENCE', 'TRANSFER', 'REPORT', 'REVERSAL', 'PAY_INFERENCE'];
const MINT_TYPES = new Set(['MINT_TRAINING', 'MINT_INFERENCE']);
const HEX64 = /^[0-9a-f]{64}$/;
const SIG = /^[0-9a-f]{128}$/;
const USERNAME_RE = /^[a-z0-9][a-z0-9_-]{2,31}$/;
const REF_RE = /^[A-Za-z0-9:._/-]{1,128}$/;
const REASON_RE = /^[\x20-\x7e]{0,200}$/;
const REQUEST_RE = /^[0-9a-f]{32}$/;
const INFERENCE_REF_RE = /^request:([0-9a-f]{32}):(ailo1[0-9a-f]{72})$/;
const REFUND_REF_RE = /^refund:([0-9a-f]{32})$/; // a failed request's unspent payment, back to its payer

function checkInt(name, v) {
  if (!isInt(v) || v < 0 || v > MAX_SAFE_INT) throw new LedgerError('malformed', `${name} must be an integer in [0, 2^53-1]`);
}
function checkAddress(name, v) {
  if (typeof v !== 'string') throw new LedgerError('bad_address', `${name}: must be a string`);
  try { publicKeyFromAddress(v); } catch (e) { throw new LedgerError('bad_address', `${name}: ${e.message}`); }
}
function checkAmount(name, v) {
  if (!isInt(v)) throw new LedgerError('malformed', `${name} must be an integer number of units`);
  if (!(v >= 1 && v <= MAX_AMOUNT)) throw new LedgerError('bad_amount', `${name} must be between 1 and ${MAX_AMOUNT} units, got ${v}`);
}
const pattern = (re, what) => (name, v) => {
  if (typeof v !== 'string' || !re.test(v)) throw new LedgerError('malformed', `${name} must be ${what}`);
};
const checkUsername = pattern(USERNAME_RE, '3-32 chars of a-z 0-9 _ - (starting with a-z or 0-9)');
const checkTxid = pattern(HEX64, 'a 64-char lowercase hex transaction id');
const checkRef = pattern(REF_RE, '1-128 chars of A-Z a-z 0-9 : . _ / -');
const checkReason = pattern(REASON_RE, 'at most 200 printable ASCII characters');
const checkRequest = pattern(REQUEST_RE, 'a 32-char lowercase hex request id');
function checkFee(name, v) {
  if (!isInt(v)) throw new LedgerError('malformed', 'fee must be an integer number of units');
  if (v !== FEE) throw new LedgerError('bad_amount', `fee must be exactly ${FEE} units (0.01 ALC), got ${v}`);
}

const MINT_SCHEMA = [['to', checkAddress], ['amount', checkAmount], ['ref', checkRef], ['timestamp', checkInt]];
export const SCHEMAS = {
  REGISTER: [['address', checkAddress], ['username', checkUsername], ['timestamp', checkInt]],
  MINT_TRAINING: MINT_SCHEMA,
  MINT_INFERENCE: MINT_SCHEMA,
  TRANSFER: [['from', checkAddress], ['to', checkAddress], ['amount', checkAmount], ['fee', checkFee],
    ['nonce', checkInt], ['timestamp', checkInt]],
  REPORT: [['reporter', checkAddress], ['target', checkTxid], ['reason', checkReason], ['timestamp', checkInt]],
  REVERSAL: [['target', checkTxid], ['from', checkAddress], ['to', checkAddress], ['amount', checkAmount], ['timestamp', checkInt]],
  PAY_INFERENCE: [['from', checkAddress], ['request', checkRequest], ['amount', checkAmount], ['fee', checkFee], ['timestamp', checkInt]],
};
const SIGNER_FIELD = { REGISTER: 'address', TRANSFER: 'from', REPORT: 'reporter', PAY_INFERENCE: 'from', MINT_TRAINING: null, MINT_INFERENCE: null, REVERSAL: null };

const sameKeys = (obj, expected) => {
  const keys = Object.keys(obj);
  return keys.length === expected.size && keys.every((k) => expected.has(k));
};

/** Validate a transaction object's shape; returns its body (no signature). */
export function parseBody(data, withSignature) {
  if (!isObj(data)) throw new LedgerError('malformed', 'a transaction must be a JSON object');
  const kind = data.type;
  const schema = typeof kind === 'string' && Object.hasOwn(SCHEMAS, kind) ? SCHEMAS[kind] : null;
  if (!schema) throw new LedgerError('bad_type', `unknown transaction type ${JSON.stringify(kind)}; expected one of ${[...TX_TYPES].sort()}`);
  if (withSignature && !Object.hasOwn(data, 'signature')) throw new LedgerError('bad_signature', `${kind} has no signature`);
  const expected = new Set(['type', ...schema.map(([n]) => n), ...(withSignature ? ['signature'] : [])]);
  if (!sameKeys(data, expected)) {
    const missing = [...expected].filter((k) => !Object.hasOwn(data, k)).sort();
    const extra = Object.keys(data).filter((k) => !expected.has(k)).sort();
    throw new LedgerError('malformed', `${kind}: missing fields [${missing}], unexpected fields [${extra}]`);
  }
  for (const [name, check] of schema) check(name, data[name]);
  const body = {};
  for (const [k, v] of Object.entries(data)) if (k !== 'signature') body[k] = v;
  return body;
}

export class Transaction {
  constructor(body, signature, bodyJson, txid) { Object.assign(this, { body, signature, bodyJson, txid }); }

  get type() { return this.body.type; }

  get timestamp() { return this.body.timestamp; }

  static fromJson(data) {
    const body = parseBody(data, true);
    const sig = data.signature;
    if (typeof sig !== 'string' || !SIG.test(sig)) throw new LedgerError('bad_signature', 'signature must be 128 lowercase hex digits (Ed25519)');
    const raw = canonicalJson(body);
    return new Transaction(body, sig, raw, sha256Hex(raw));
  }

  signer(coordinator) {
    const f = SIGNER_FIELD[this.type];
    return f === null ? coordinator : this.body[f];
  }

  async checkSignature(coordinator) {
    if (!(await verifySig(this.signer(coordinator), TX_DOMAIN + this.bodyJson, this.signature))) {
      const f = SIGNER_FIELD[this.type];
      throw new LedgerError('bad_signature', `${this.type} signature is not valid for ${f === null ? 'the coordinator' : `${f} ${this.signer(coordinator)}`}`);
    }
  }

  leaf() { return merkleLeaf(this.txid, this.signature); }

  toJson() { return { ...this.body, signature: this.signature }; }
}

/** Build and sign a transaction body with a wallet (what a client submits). */
export async function signTx(body, wallet) {
  const clean = parseBody({ ...body }, false);
  const raw = canonicalJson(clean);
  const signature = await wallet.signHex(TX_DOMAIN + raw);
  return { ...clean, signature };
}

// ---- params, blocks (params.py, block.py) -------------------------------------------------
const PARAM_DEFAULTS = {
  max_mint: UNIT, dispute_window_ms: 3_600_000, active_window_ms: 86_400_000, dispute_quorum: 2,
  max_future_ms: 60_000, max_tx_age_ms: 600_000, version: 1,
};
const PARAM_NAMES = new Set(['coordinator', 'pool', ...Object.keys(PARAM_DEFAULTS)]);

export function paramsFromJson(data) {
  if (!isObj(data) || !sameKeys(data, PARAM_NAMES)) {
    throw new LedgerError('bad_params', `genesis params must have exactly the keys ${[...PARAM_NAMES].sort()}`);
  }
  for (const name of PARAM_NAMES) {
    if (name === 'coordinator' || name === 'pool') continue;
    const v = data[name];
    if (!isInt(v) || v < 0 || v > MAX_SAFE_INT) throw new LedgerError('bad_params', `param ${name} must be a non-negative integer`);
  }
  for (const name of ['coordinator', 'pool']) {
    if (!isValidAddress(data[name])) throw new LedgerError('bad_params', `param ${name} is not a valid address`);
  }
  if (data.version !== 1 || !(data.max_mint >= 1 && data.max_mint <= MAX_AMOUNT) || data.dispute_quorum < 1) {
    throw new LedgerError('bad_params', 'unsupported version, max_mint or dispute_quorum');
  }
  return { ...data };
}

const HEADER_FIELDS = ['height', 'prev', 'timestamp', 'merkle_root', 'tx_count'];

export function blockFromJson(data) {
  if (!isObj(data)) throw new LedgerError('malformed', 'a block must be a JSON object');
  const expected = new Set([...HEADER_FIELDS, 'txs', 'hash', 'signature']);
  if (data.height === 0) expected.add('params');
  if (!sameKeys(data, expected)) throw new LedgerError('malformed', `block fields must be [${[...expected].sort()}], got [${Object.keys(data).sort()}]`);
  for (const name of ['height', 'timestamp', 'tx_count']) {
    const v = data[name];
    if (!isInt(v) || v < 0 || v > MAX_SAFE_INT) throw new LedgerError('malformed', `block ${name} must be a non-negative integer`);
  }
  for (const name of ['prev', 'merkle_root', 'hash']) {
    if (typeof data[name] !== 'string' || !HEX64.test(data[name])) throw new LedgerError('malformed', `block ${name} must be 64 lowercase hex digits`);
  }
  if (typeof data.signature !== 'string' || !SIG.test(data.signature)) throw new LedgerError('malformed', 'block signature must be 128 lowercase hex digits');
  if (!Array.isArray(data.txs)) throw new LedgerError('malformed', 'block txs must be a list');
  const header = {};
  for (const [k, v] of Object.entries(data)) if (!['txs', 'hash', 'signature'].includes(k)) header[k] = v;
  return { header, txs: data.txs, hash: data.hash, signature: data.signature };
}

// ---- state and rules (state.py) -----------------------------------------------------------
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

// ---- verification (verify.py) -------------------------------------------------------------
/** Verify block `index` on top of `state` (null for genesis); mutates and returns the state. */
export async function checkBlock(state, raw, index, now, coordinator = null) {
  const fail = (e, tx = null) => new ChainViolation(index, tx, e instanceof LedgerError ? e : new LedgerError('malformed', String(e)));
  let block;
  try { block = blockFromJson(raw); } catch (e) { throw fail(e); }
  if (block.header.height !== index) throw fail(new LedgerError('bad_height', `height ${block.header.height} at position ${index}`));
  if (state === null) {
    let params;
    try { params = paramsFromJson(block.header.params); } catch (e) { throw fail(e); }
    if (coordinator !== null && params.coordinator !== coordinator) {
      throw fail(new LedgerError('unexpected_coordinator', `genesis coordinator ${params.coordinator} is not the expected ${coordinator}`));
    }
    state = new LedgerState(params);
  }
  const tipHash = index ? state.tipHash : ZERO_HASH;
  if (block.header.prev !== tipHash) throw fail(new LedgerError('bad_prev_hash', `prev ${block.header.prev.slice(0, 16)}... does not link to block ${index - 1}`));
  if (index && block.header.timestamp < state.tipTs) throw fail(new LedgerError('timestamp_order', `timestamp ${block.header.timestamp} is before the previous block's ${state.tipTs}`));
  if (block.header.timestamp > now + state.params.max_future_ms) throw fail(new LedgerError('future_timestamp', `block timestamp ${block.header.timestamp} is in the future (now ${now})`));
  const coord = state.params.coordinator;
  const txs = [];
  for (let j = 0; j < block.txs.length; j++) {
    let tx;
    try {
      tx = Transaction.fromJson(block.txs[j]);
      await tx.checkSignature(coord);
    } catch (e) { throw fail(e, j); }
    txs.push(tx);
  }
  if (index === 0 && txs.length) throw fail(new LedgerError('malformed', 'the genesis block carries no transactions'), 0);
  if (block.header.tx_count !== txs.length || block.header.merkle_root !== merkleRoot(txs.map((t) => t.leaf()))) {
    throw fail(new LedgerError('bad_merkle_root', 'Merkle root/tx_count do not match the transactions'));
  }
  if (sha256Hex(canonicalJson(block.header)) !== block.hash) throw fail(new LedgerError('bad_block_hash', 'hash does not match the header'));
  if (!(await verifySig(coord, BLOCK_DOMAIN + block.hash, block.signature))) throw fail(new LedgerError('bad_block_signature', "block signature is not the coordinator's"));
  beginBlock(state, index);
  for (let j = 0; j < txs.length; j++) {
    try { applyTx(state, txs[j], block.header.timestamp); } catch (e) { throw fail(e, j); }
  }
  endBlock(state, block.hash, block.header.timestamp);
  return state;
}

function summary(state, count, ok) {
  if (!state) return { ok, height: -1, blocks: 0, tx_count: 0, minted: 0, burned: 0, supply: 0, state: null };
  return { ok, height: state.height, blocks: count, tx_count: state.txCount, minted: state.minted, burned: state.burned, supply: state.supply, state };
}

/** Verify a whole chain (block objects, genesis first). Returns the totals after the last
 *  fully verified block and, on failure, `violation` {block, tx, code, message}. */
export async function verifyChain(blocks, { now = Date.now(), coordinator = null, onBlock = null } = {}) {
  let state = null;
  let good = summary(null, 0, false);
  try {
    for (let i = 0; i < blocks.length; i++) {
      state = await checkBlock(state, blocks[i], i, now, coordinator);
      good = summary(state, i + 1, false);
      if (onBlock) await onBlock(i, blocks[i], state);
    }
    if (state === null) throw new ChainViolation(0, null, new LedgerError('empty_chain', 'the chain is empty'));
    try { state.checkInvariants(); } catch (e) { throw new ChainViolation(state.height, null, e); }
  } catch (e) {
    if (!(e instanceof ChainViolation)) throw e;
    good.violation = { block: e.block, tx: e.tx, code: e.code, message: e.message };
    return good;
  }
  good.ok = true;
  return good;
}

export function formatAlc(units) {
  const sign = units < 0 ? '-' : '';
  const a = Math.abs(units);
  return `${sign}${Math.floor(a / UNIT)}.${String(a % UNIT).padStart(8, '0')} ALC`;
}
