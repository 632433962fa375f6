// Frozen weights streamed from verified chunks (issue 26 part 3; Python: CachedTensors in
// ailo/federation/client/slice_training.py). A page that trains a slice of a model it cannot
// hold (ailo-1b: 6.2 GB fp32) keeps the model's chunks in IndexedDB, never in memory: every
// chunk is fetched or re-checked once per model version (size + sha256, one chunk in memory at
// a time) by `cacheChunks`, then `ChunkTensors` reads the tensors a block needs, when it needs
// them, from those chunks. Reads after the check are not hashed again (IndexedDB is this
// origin's own storage; hashing 3 GB per forward pass would cost more than the pass), but
// every read is size-checked and a missing chunk is an error, never a zero weight.
import { ChunkIntegrityError, assembleTensors } from './chunks.js';

/** Every chunk of `manifest` verified and stored through `loader` (a ChunkLoader with an
 *  IndexedDB cache): cache hits are re-verified, missing chunks downloaded; nothing is kept. */
export async function cacheChunks(manifest, loader, { concurrency = 2 } = {}) {
  if (!loader.cache) throw new Error('cacheChunks needs a ChunkLoader with a cache');
  if (loader.mirrors === null) loader.mirrors = (manifest.mirrors || []).map((m) => String(m).replace(/\/+$/, ''));
  const queue = [...manifest.chunks];
  let done = 0;
  const work = async () => {
    while (queue.length) {
      const info = queue.shift();
      await loader.chunkBytes(info);  // verified (and stored when it came from the network), then dropped
      done++;
      if (loader.onProgress) loader.onProgress({ kind: 'chunk', index: info.index, done, total: manifest.chunks.length, stats: loader.stats });
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, queue.length) }, work));
  return loader.stats;
}

/** A manifest's tensors read on demand. `read(info)` gives chunk `info`'s bytes (IndexedDB in
 *  the page, files in the Node runner's bench); the last `keep` chunks read stay parsed, so a
 *  sweep over the blocks in order reads each chunk once. */
export class ChunkTensors {
  constructor(manifest, read, { keep = 2 } = {}) {
    this.manifest = manifest;
    this.read = read;
    this.keep = keep;
    this.info = new Map(manifest.chunks.map((c) => [c.index, c]));
    this.recent = new Map();  // chunk index → bytes, oldest first
    this.bytesRead = 0;
  }

  /** Reads chunks from an open ChunkCache (the page). */
  static fromCache(manifest, cache, opts) {
    return new ChunkTensors(manifest, (info) => cache.get(info.sha256), opts);
  }

  async _chunk(i) {
    if (this.recent.has(i)) {
      const bytes = this.recent.get(i);
      this.recent.delete(i);
      this.recent.set(i, bytes);
      return bytes;
    }
    const info = this.info.get(i);
    if (!info) throw new ChunkIntegrityError(`chunk ${i} is not in the manifest`);
    const bytes = await this.read(info);
    if (!bytes) throw new ChunkIntegrityError(`chunk ${i} (${info.sha256.slice(0, 12)}) is not in this browser's cache any more`);
    if (bytes.byteLength !== info.size) throw new ChunkIntegrityError(`chunk ${i}: ${bytes.byteLength} bytes cached, expected ${info.size}`);
    this.bytesRead += bytes.byteLength;
    this.recent.set(i, bytes);
    while (this.recent.size > this.keep) this.recent.delete(this.recent.keys().next().value);
    return bytes;
  }

  /** Map name → {shape, dtype: 'F32', data: Float32Array} of `names`. */
  async tensors(names) {
    const chunks = new Map();
    for (const n of names) {
      const entry = this.manifest.tensors[n];
      if (!entry) throw new Error(`the model has no tensor ${n}`);
      for (const p of entry.parts) if (!chunks.has(p.chunk)) chunks.set(p.chunk, await this._chunk(p.chunk));
    }
    return assembleTensors(this.manifest, chunks, names);
  }

  /** Block i's tensors, keyed by their name inside the block ('ln1.weight', ...). */
  async block(i) {
    const prefix = `blocks.${i}.`;
    const names = Object.keys(this.manifest.tensors).filter((n) => n.startsWith(prefix));
    const full = await this.tensors(names);
    return new Map([...full].map(([n, t]) => [n.slice(prefix.length), t]));
  }

  dispose() { this.recent.clear(); }
}
