// Protocol constants and the per-chain parameters fixed in the genesis block (params.py).
import { isValidAddress } from '../ed25519.js';
import { MAX_SAFE_INT, isInt, isObj, sameKeys } from './codec.js';
import { LedgerError } from './errors.js';

export const UNIT = 100_000_000;
export const FEE = UNIT / 100;
export const BURN_BPS = 5000;
export const MAX_AMOUNT = 1_000_000 * UNIT;
export const REVERSAL_PERCENT = 51;

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

export function formatAlc(units) {
  const sign = units < 0 ? '-' : '';
  const a = Math.abs(units);
  return `${sign}${Math.floor(a / UNIT)}.${String(a % UNIT).padStart(8, '0')} ALC`;
}
