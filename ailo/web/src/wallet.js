// The contributor's wallet in the browser: an Ed25519 key kept in IndexedDB (a non-extractable
// WebCrypto CryptoKey where the browser supports Ed25519, else a @noble/ed25519 seed), its
// Ailo address, and the signatures the coordinator checks: REGISTER transactions
// (docs/LEDGER.md) and updates (ailo/federation/core/signing.py).
import { KV } from './idb.js';
import { toHex } from './hash.js';
import { addressFromPublicKey, keyFromSeed, sign } from './ed25519.js';
import { signTx } from './ledger/index.js';
import { decryptBackup, encryptBackup } from './wallet_backup.js';

const STORE = 'wallet';
export const USERNAME_RE = /^[a-z0-9][a-z0-9_-]{2,31}$/;

export class Wallet {
  constructor(key, record = {}) {
    this.key = key;
    this.address = addressFromPublicKey(key.publicKey);
    this.username = record.username || null;
    this.registered = !!record.registered;
    this.lastNonce = record.lastNonce || 0;
    this.dbName = record.dbName || 'ailo-wallet';
    this.wrapped = record.wrapped || null;  // {key: non-extractable AES-GCM CryptoKey, iv, ct}: the seed, for backups
  }

  get kind() { return this.key.kind; }

  async signHex(message) { return toHex(await sign(this.key, message)); }

  static async fromSeed(seed, opts) { return new Wallet(await keyFromSeed(seed, opts)); }

  /** A new wallet. Its seed is kept only wrapped by a non-extractable AES key of this browser,
   *  so `backup()` can write a passphrase-encrypted file later; signing never needs it. */
  static async generate() {
    const seed = crypto.getRandomValues(new Uint8Array(32));
    const wallet = new Wallet(await keyFromSeed(seed));
    if (wallet.key.kind === 'webcrypto') wallet.wrapped = await wrapSeed(seed);
    return wallet;
  }

  /** The wallet in a backup file (checked against the address the file names). */
  static async restore(backup, passphrase) {
    const seed = await decryptBackup(backup, passphrase);
    const wallet = await Wallet.fromSeed(seed);
    if (wallet.address !== backup.address) throw new Error('backup file: the key does not match its address');
    if (wallet.key.kind === 'webcrypto') wallet.wrapped = await wrapSeed(seed);
    wallet.username = backup.username || null;
    return wallet;
  }

  /** A passphrase-encrypted backup object (wallet_backup.js) of this wallet's seed. */
  async backup(passphrase) {
    let seed;
    if (this.key.kind === 'noble') seed = this.key.seed;
    else if (this.wrapped) {
      seed = new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv: this.wrapped.iv }, this.wrapped.key, this.wrapped.ct));
    } else throw new Error('this wallet was made before backups existed: its key cannot leave this browser');
    return encryptBackup(seed, this.address, this.username, passphrase);
  }

  /** The wallet saved in this browser (IndexedDB `ailo-wallet`), or null. */
  static async load(dbName = 'ailo-wallet') {
    const kv = await KV.open(dbName, [STORE]);
    try {
      const rec = await kv.get(STORE, 'default');
      return rec ? new Wallet(rec.key, { ...rec, dbName }) : null;
    } finally { kv.close(); }
  }

  async save(dbName = this.dbName) {
    this.dbName = dbName;
    const kv = await KV.open(dbName, [STORE]);
    try {
      await kv.put(STORE, 'default', { key: this.key, address: this.address, username: this.username, registered: this.registered, lastNonce: this.lastNonce,
        wrapped: this.wrapped });
    } finally { kv.close(); }
  }

  /** Signed REGISTER transaction binding `username` to this address. */
  registerTx(username, timestamp = Date.now()) {
    return signTx({ type: 'REGISTER', address: this.address, username, timestamp }, this);
  }

  /** A strictly increasing update nonce (µs clock, like the native worker), persisted. */
  async nextNonce() {
    this.lastNonce = Math.max(this.lastNonce + 1, Date.now() * 1000);
    await this.save();
    return this.lastNonce;
  }
}

/** The digest line a contributor signs for an update (ailo/federation/core/signing.py). */
export function updateMessage(round, baseVersion, bodySha256, nSamples, nonce, timestampMs, clientId) {
  return `ailo-update/v2|${round}|${baseVersion}|${bodySha256}|${nSamples}|${nonce}|${timestampMs}|${clientId}`;
}

async function wrapSeed(seed) {
  const key = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
  const iv = crypto.getRandomValues(new Uint8Array(12));
  return { key, iv, ct: new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, key, seed)) };
}
