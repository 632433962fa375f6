// A minimal promise wrapper over IndexedDB: one database, named object stores, out-of-line keys.

const req2p = (req) => new Promise((resolve, reject) => {
  req.onsuccess = () => resolve(req.result);
  req.onerror = () => reject(req.error);
});

export class KV {
  /** Open (or create) database `dbName` with the given object stores. */
  static async open(dbName, stores, version = 1) {
    const req = indexedDB.open(dbName, version);
    req.onupgradeneeded = () => {
      for (const s of stores) if (!req.result.objectStoreNames.contains(s)) req.result.createObjectStore(s);
    };
    return new KV(await req2p(req));
  }

  constructor(db) { this.db = db; }

  _store(name, mode) { return this.db.transaction(name, mode).objectStore(name); }

  get(store, key) { return req2p(this._store(store, 'readonly').get(key)); }

  keys(store) { return req2p(this._store(store, 'readonly').getAllKeys()); }

  getAll(store) { return req2p(this._store(store, 'readonly').getAll()); }

  /** Resolves once the write transaction has committed (durable across a reload). */
  put(store, key, value) {
    return new Promise((resolve, reject) => {
      const tx = this.db.transaction(store, 'readwrite');
      tx.objectStore(store).put(value, key);
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error || new Error('IndexedDB transaction aborted'));
    });
  }

  delete(store, key) {
    return new Promise((resolve, reject) => {
      const tx = this.db.transaction(store, 'readwrite');
      tx.objectStore(store).delete(key);
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
  }

  clear(store) { return req2p(this._store(store, 'readwrite').clear()); }

  close() { this.db.close(); }

  static deleteDatabase(name) { return req2p(indexedDB.deleteDatabase(name)); }
}
