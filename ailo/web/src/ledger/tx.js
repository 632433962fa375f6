// Transactions (tx.py): schemas, parsing, ids and signatures.
import { publicKeyFromAddress, verify as verifySig } from '../ed25519.js';
import { MAX_SAFE_INT, TX_DOMAIN, canonicalJson, isInt, isObj, merkleLeaf, sameKeys, sha256Hex } from './codec.js';
import { LedgerError } from './errors.js';
import { FEE, MAX_AMOUNT } from './params.js';

export const TX_TYPES = ['REGISTER', 'MINT_TRAINING', 'MINT_INFERENCE', 'TRANSFER', 'REPORT', 'REVERSAL', 'PAY_INFERENCE'];
export const MINT_TYPES = new Set(['MINT_TRAINING', 'MINT_INFERENCE']);
export const HEX64 = /^[0-9a-f]{64}$/;
export const SIG = /^[0-9a-f]{128}$/;
const USERNAME_RE = /^[a-z0-9][a-z0-9_-]{2,31}$/;
const REF_RE = /^[A-Za-z0-9:._/-]{1,128}$/;
const REASON_RE = /^[\x20-\x7e]{0,200}$/;
const REQUEST_RE = /^[0-9a-f]{32}$/;
export const INFERENCE_REF_RE = /^request:([0-9a-f]{32}):(ailo1[0-9a-f]{72})$/;
export const REFUND_REF_RE = /^refund:([0-9a-f]{32})$/; // a failed request's unspent payment, back to its payer

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
