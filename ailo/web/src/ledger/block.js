// Blocks (block.py): the header fields and a block's JSON form.
import { MAX_SAFE_INT, isInt, isObj, sameKeys } from './codec.js';
import { LedgerError } from './errors.js';
import { HEX64, SIG } from './tx.js';

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
