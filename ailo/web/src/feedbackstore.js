// The page's error-feedback residuals (codecs.js `compress`) kept in IndexedDB between rounds.
import { KV } from './idb.js';

/** Error-feedback residuals in IndexedDB, one entry per (preset, codec). */
export class ErrorFeedbackStore {
  static async open(dbName = 'ailo-error-feedback') { return new ErrorFeedbackStore(await KV.open(dbName, ['residual'])); }

  constructor(kv) { this.kv = kv; }

  async load(preset, spec) {
    const v = await this.kv.get('residual', `${preset}:${spec.name}`);
    return v ? new Map(Object.entries(v)) : null;
  }

  save(preset, spec, error) { return this.kv.put('residual', `${preset}:${spec.name}`, Object.fromEntries(error)); }

  close() { this.kv.close(); }
}
