// Ed25519 and Ailo addresses in the browser (docs/LEDGER.md §2).
//
// WebCrypto Ed25519 where the browser has it (keys can then be non-extractable CryptoKeys,
// stored as such in IndexedDB), else @noble/ed25519 (audited, pure JS) with @noble/hashes'
// SHA-512, which also works outside secure contexts. Ed25519 signatures are deterministic,
// so both paths, PyNaCl and libsodium give the same bytes for the same key and message.
import * as ed from '@noble/ed25519';
import { sha512 } from '@noble/hashes/sha2.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { fromHex, toHex } from './hash.js';

ed.hashes.sha512 = sha512;
ed.hashes.sha512Async = (m) => Promise.resolve(sha512(m));

export const ADDRESS_PREFIX = 'ailo1';
const ADDRESS_RE = /^ailo1[0-9a-f]{72}$/;
const PKCS8_PREFIX = fromHex('302e020100300506032b657004220420');  // RFC 8410 wrapper of a 32-byte seed

let webCryptoEd25519 = null;

/** Whether this browser's WebCrypto implements Ed25519 (probed once). */
export async function hasWebCryptoEd25519() {
  if (webCryptoEd25519 !== null) return webCryptoEd25519;
  webCryptoEd25519 = false;
  try {
    if (typeof crypto !== 'undefined' && crypto.subtle) {
      const k = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
      const sig = await crypto.subtle.sign({ name: 'Ed25519' }, k.privateKey, new Uint8Array([1]));
      webCryptoEd25519 = sig.byteLength === 64;
    }
  } catch {
    webCryptoEd25519 = false;
  }
  return webCryptoEd25519;
}

/** For tests: force the pure-JS path (true) or auto-detect again (false). */
export function forceNoble(on = true) { webCryptoEd25519 = on ? false : null; }

export function addressFromPublicKey(pub) {
  if (pub.length !== 32) throw new Error('an Ed25519 public key is 32 bytes');
  return ADDRESS_PREFIX + toHex(pub) + toHex(sha256(pub).subarray(0, 4));
}

/** Decode and check an address → 32-byte public key; throws naming what is wrong. */
export function publicKeyFromAddress(address) {
  if (typeof address !== 'string' || !ADDRESS_RE.test(address)) {
    throw new Error(`address must be '${ADDRESS_PREFIX}' followed by 72 lowercase hex digits`);
  }
  const raw = fromHex(address.slice(ADDRESS_PREFIX.length));
  const pub = raw.subarray(0, 32);
  const check = toHex(raw.subarray(32));
  if (toHex(sha256(pub).subarray(0, 4)) !== check) throw new Error('address checksum mismatch (mistyped address?)');
  return pub;
}

export function isValidAddress(address) {
  try { publicKeyFromAddress(address); return true; } catch { return false; }
}

const enc = (m) => (typeof m === 'string' ? new TextEncoder().encode(m) : m);

/** A signing key: {kind: 'webcrypto', privateKey: CryptoKey} or {kind: 'noble', seed}. */
export async function generateKey() {
  if (await hasWebCryptoEd25519()) {
    const k = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
    const pub = new Uint8Array(await crypto.subtle.exportKey('raw', k.publicKey));
    return { kind: 'webcrypto', privateKey: k.privateKey, publicKey: pub };
  }
  const seed = crypto.getRandomValues(new Uint8Array(32));
  return { kind: 'noble', seed, publicKey: ed.getPublicKey(seed) };
}

/** Key from a 32-byte seed (PyNaCl's SigningKey(seed)); the private part stays non-extractable. */
export async function keyFromSeed(seed, { useWebCrypto = null } = {}) {
  const wc = useWebCrypto === null ? await hasWebCryptoEd25519() : useWebCrypto;
  const publicKey = ed.getPublicKey(seed);
  if (wc) {
    const pkcs8 = new Uint8Array(48);
    pkcs8.set(PKCS8_PREFIX);
    pkcs8.set(seed, 16);
    const privateKey = await crypto.subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, false, ['sign']);
    return { kind: 'webcrypto', privateKey, publicKey };
  }
  return { kind: 'noble', seed: Uint8Array.from(seed), publicKey };
}

/** Detached signature (64 bytes) of `message` (bytes or string → UTF-8). */
export async function sign(key, message) {
  const m = enc(message);
  if (key.kind === 'webcrypto') return new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, key.privateKey, m));
  return ed.sign(m, key.seed);
}

/** Verify a signature by an address's key; false for any malformed input. RFC 8032 strict
 *  (canonical encodings) on the pure-JS path, like libsodium. */
export async function verify(address, message, signatureHex) {
  let pub, sig;
  try {
    pub = publicKeyFromAddress(address);
    if (!/^[0-9a-f]{128}$/.test(signatureHex)) return false;
    sig = fromHex(signatureHex);
  } catch {
    return false;
  }
  const m = enc(message);
  if (await hasWebCryptoEd25519()) {
    try {
      const k = await crypto.subtle.importKey('raw', pub, { name: 'Ed25519' }, false, ['verify']);
      return await crypto.subtle.verify({ name: 'Ed25519' }, k, sig, m);
    } catch {
      return false;
    }
  }
  try {
    return ed.verify(sig, m, pub, { zip215: false });
  } catch {
    return false;
  }
}
