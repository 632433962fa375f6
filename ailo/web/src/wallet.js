// The contributor's wallet in the browser: an Ed25519 key kept in IndexedDB (a non-extractable
// WebCrypto CryptoKey where the browser supports Ed25519, else a @noble/ed25519 seed), its
// Ailo address, and the signatures the coordinator checks: REGISTER transactions
// (docs/LEDGER.md) and updates (ailo/federation/core/signing.py).
import { KV } from './idb.js';
import { toHex } from './hash.js';
import { addressFromPublicKey, generateKey, keyFromSeed, sign } from './ed25519.js';
import { signTx } from './ledger.js';

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
  }

  get kind() { return this.key.kind; }

  async signHex(message) { return toHex(await sign(this.key, message)); }

  static async fromSeed(seed, opts) { return new Wallet(await keyFromSeed(seed, opts)); }

  static async generate() { return new Wallet(await generateKey()); }

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
      await kv.put(STORE, 'default', { key: this.key, address: this.address, username: this.username, registered: this.registered, lastNonce: this.lastNonce });
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
export function updateMessage(round, baseVersion, bodySha256, nSamples, nonce, timestampMs) {
  return `ailo-update/v1|${round}|${baseVersion}|${bodySha256}|${nSamples}|${nonce}|${timestampMs}`;
}
