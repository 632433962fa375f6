// Canonical JSON, hashing and Merkle trees (codec.py): the exact bytes that get hashed and signed.
import { sha256 } from '@noble/hashes/sha2.js';
import { fromHex, toHex } from '../hash.js';
import { LedgerError } from './errors.js';

export const MAX_SAFE_INT = 2 ** 53 - 1;
export const ZERO_HASH = '0'.repeat(64);
export const TX_DOMAIN = 'AILO-TX-V1\n';
export const BLOCK_DOMAIN = 'AILO-BLOCK-V1\n';

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

export const isInt = (v) => typeof v === 'number' && Number.isInteger(v);
export const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof JsonFloat);

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

export const sameKeys = (obj, expected) => {
  const keys = Object.keys(obj);
  return keys.length === expected.size && keys.every((k) => expected.has(k));
};
