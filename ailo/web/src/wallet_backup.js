// Wallet backup files: the 32-byte Ed25519 seed encrypted under a passphrase, so a contributor
// can move a wallet to another browser or machine (and keep it when site data is cleared).
//
//   key = PBKDF2-SHA256(passphrase, salt, 600,000 iterations) → AES-256-GCM
//   file = {"format": "ailo-wallet-backup/v1", "address", "username", "kdf": {...}, "iv", "ciphertext"}
//
// The address is authenticated as AES-GCM additional data, so a file whose address was edited
// does not decrypt. WebCrypto only: nothing hand-written around the primitives.
import { fromHex, toHex } from './hash.js';

export const BACKUP_FORMAT = 'ailo-wallet-backup/v1';
const ITERATIONS = 600_000;  // OWASP's 2023 figure for PBKDF2-HMAC-SHA256
const MIN_PASSPHRASE = 8;

async function deriveKey(passphrase, salt, iterations) {
  const base = await crypto.subtle.importKey('raw', new TextEncoder().encode(passphrase), 'PBKDF2', false, ['deriveKey']);
  return crypto.subtle.deriveKey({ name: 'PBKDF2', hash: 'SHA-256', salt, iterations }, base,
    { name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
}

/** Encrypt `seed` (32 bytes) for `address` under `passphrase`; returns the backup object. */
export async function encryptBackup(seed, address, username, passphrase) {
  if (!passphrase || passphrase.length < MIN_PASSPHRASE) throw new Error(`the passphrase needs at least ${MIN_PASSPHRASE} characters`);
  const salt = crypto.getRandomValues(new Uint8Array(16));
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const key = await deriveKey(passphrase, salt, ITERATIONS);
  const ct = await crypto.subtle.encrypt({ name: 'AES-GCM', iv, additionalData: new TextEncoder().encode(address) }, key, seed);
  return { format: BACKUP_FORMAT, address, username: username || null,
    kdf: { name: 'PBKDF2-SHA256', iterations: ITERATIONS, salt: toHex(salt) }, iv: toHex(iv), ciphertext: toHex(new Uint8Array(ct)) };
}

/** The seed inside a backup object; throws a readable error for a wrong passphrase or a bad file. */
export async function decryptBackup(backup, passphrase) {
  if (!backup || backup.format !== BACKUP_FORMAT || !backup.kdf || backup.kdf.name !== 'PBKDF2-SHA256') {
    throw new Error('not an Ailo wallet backup file');
  }
  const iterations = Number(backup.kdf.iterations);
  if (!Number.isInteger(iterations) || iterations < 100_000 || iterations > 10_000_000) throw new Error('backup file: bad iteration count');
  let seed;
  try {
    const key = await deriveKey(passphrase, fromHex(backup.kdf.salt), iterations);
    seed = new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv: fromHex(backup.iv),
      additionalData: new TextEncoder().encode(backup.address) }, key, fromHex(backup.ciphertext)));
  } catch {
    throw new Error('wrong passphrase, or the backup file was changed');
  }
  if (seed.length !== 32) throw new Error('backup file: the key is not 32 bytes');
  return seed;
}
