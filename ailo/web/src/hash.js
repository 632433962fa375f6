// sha256: WebCrypto when the page is a secure context (https, localhost, 127.0.0.1), else the
// audited pure-JS @noble/hashes implementation. Both give the same bytes.
import { sha256 as nobleSha256 } from '@noble/hashes/sha2.js';

export function toHex(bytes) {
  const u8 = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let s = '';
  for (let i = 0; i < u8.length; i++) s += u8[i].toString(16).padStart(2, '0');
  return s;
}

export function fromHex(hex) {
  if (hex.length % 2 || /[^0-9a-f]/i.test(hex)) throw new Error('invalid hex string');
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(2 * i, 2), 16);
  return out;
}

export const hasWebCryptoDigest = () => typeof crypto !== 'undefined' && !!crypto.subtle && typeof crypto.subtle.digest === 'function';

/** sha256 of bytes → Uint8Array(32). */
export async function sha256(bytes) {
  const u8 = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  if (hasWebCryptoDigest()) return new Uint8Array(await crypto.subtle.digest('SHA-256', u8));
  return nobleSha256(u8);
}

export async function sha256Hex(bytes) {
  return toHex(await sha256(bytes));
}
