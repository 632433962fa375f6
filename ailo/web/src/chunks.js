// Chunked, content-addressed weights in the browser (SPEC R2; Python side: ailo/chunks.py).
//
// GET /v1/model returns the manifest (`Manifest.to_json`): chunks [{index, sha256, size}] and,
// per tensor, its shape, torch dtype and row-slices `parts` [{chunk, start, stop, key}]. Each
// chunk is a safetensors file named by its sha256 and served at GET /v1/chunks/{sha256}.
//
// Mirrors: a manifest may list `mirrors` (base URLs of static servers holding `<base>/<sha256>`,
// see ailo/mirrors.py). They are tried first, in order; their bytes are verified like any
// other, and a mirror that lies, lacks a chunk or is down costs one request before the next
// mirror or the coordinator is asked (an unreachable mirror is skipped for the rest of the load).
//
// Every chunk is verified (size + sha256) before use, and stored in IndexedDB keyed by its hash
// the moment it is verified: a second visit downloads zero chunk bytes, a changed model
// downloads only the chunks whose hash changed, and a reload in the middle of a download
// resumes with the chunks already stored.
import { KV } from './idb.js';
import { sha256Hex } from './hash.js';
import { parseSafetensors, toFloat32, TORCH_TO_ST } from './safetensors.js';

export class ChunkIntegrityError extends Error {
  get name() { return 'ChunkIntegrityError'; }
}

const STORE = 'chunks';

/** IndexedDB cache of verified chunk bytes, keyed by sha256. */
export class ChunkCache {
  static async open(dbName = 'ailo-chunks') {
    return new ChunkCache(await KV.open(dbName, [STORE]));
  }

  constructor(kv) { this.kv = kv; }

  async get(sha) {
    const v = await this.kv.get(STORE, sha);
    return v === undefined ? undefined : new Uint8Array(v);
  }

  put(sha, bytes) {
    // Store a standalone ArrayBuffer (not a view into a larger one).
    const buf = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes.buffer : bytes.slice().buffer;
    return this.kv.put(STORE, sha, buf);
  }

  keys() { return this.kv.keys(STORE); }

  delete(sha) { return this.kv.delete(STORE, sha); }

  clear() { return this.kv.clear(STORE); }

  /** Drop cached chunks that `manifest` does not reference; returns how many were dropped. */
  async prune(manifest) {
    const keep = new Set(manifest.chunks.map((c) => c.sha256));
    let dropped = 0;
    for (const k of await this.keys()) {
      if (!keep.has(k)) { await this.delete(k); dropped++; }
    }
    return dropped;
  }
}

/** `format` 'bf16': the compact served model of `--compact-downloads` (404 when not served). */
export async function fetchManifest(base = '', fetchImpl = globalThis.fetch.bind(globalThis), format = 'fp32') {
  const path = format === 'bf16' ? '/v1/model?format=bf16' : '/v1/model';
  const res = await fetchImpl(`${base}${path}`, { cache: 'no-store' });
  if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status}`);
  return res.json();
}

async function verify(info, bytes, origin) {
  if (bytes.byteLength !== info.size) {
    throw new ChunkIntegrityError(`chunk ${info.index} (${info.sha256.slice(0, 12)}) from ${origin}: ${bytes.byteLength} bytes, expected ${info.size} (truncated or padded)`);
  }
  if (await sha256Hex(bytes) !== info.sha256) {
    throw new ChunkIntegrityError(`chunk ${info.index} (${info.sha256.slice(0, 12)}) from ${origin}: sha256 mismatch`);
  }
  return bytes;
}

/** Fetches chunks through the IndexedDB cache, verifying every byte. */
export class ChunkLoader {
  constructor({ base = '', cache = null, concurrency = 3, onProgress = null, fetchImpl = null, chunkPath = null, mirrors = null } = {}) {
    this.base = base;
    // Where a chunk is served, by hash (a room's checkpoint pieces live under /v1/rooms/{id}/chunks/).
    this.chunkPath = chunkPath || ((sha) => `/v1/chunks/${sha}`);
    this.mirrors = mirrors;   // null: take the manifest's list in loadAll
    this.down = new Set();
    this.cache = cache;
    this.concurrency = concurrency;
    this.onProgress = onProgress;
    this.fetch = fetchImpl || globalThis.fetch.bind(globalThis);
    this.stats = { downloadedBytes: 0, downloadedChunks: 0, cacheHits: 0, cacheBytes: 0, droppedCorrupt: 0,
      mirrorBytes: 0, mirrorChunks: 0, mirrorFailures: [] };
  }

  async _download(info, url = null, origin = 'network') {
    const path = this.chunkPath(info.sha256);
    const res = await this.fetch(url || `${this.base}${path}`, { cache: 'no-store' });
    if (!res.ok) throw new Error(`GET ${url || `${path.slice(0, -52)}${info.sha256.slice(0, 12)}…`}: HTTP ${res.status}`);
    const out = new Uint8Array(info.size);
    let got = 0;
    const reader = res.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      this.stats.downloadedBytes += value.byteLength;
      if (got + value.byteLength > info.size) {
        await reader.cancel();
        throw new ChunkIntegrityError(`chunk ${info.index} (${info.sha256.slice(0, 12)}) from ${origin}: more than ${info.size} bytes`);
      }
      out.set(value, got);
      got += value.byteLength;
      if (this.onProgress) this.onProgress({ kind: 'bytes', index: info.index, bytes: got, size: info.size, stats: this.stats });
    }
    return out.subarray(0, got);
  }

  /** Verified bytes of one chunk: cache first (re-verified), else the network. */
  async chunkBytes(info) {
    if (this.cache) {
      const cached = await this.cache.get(info.sha256);
      if (cached) {
        try {
          await verify(info, cached, 'cache');
          this.stats.cacheHits++;
          this.stats.cacheBytes += cached.byteLength;
          return cached;
        } catch (e) {
          if (!(e instanceof ChunkIntegrityError)) throw e;
          this.stats.droppedCorrupt++;
          await this.cache.delete(info.sha256);  // damaged entry: fetch again
        }
      }
    }
    const bytes = await this._fromNetwork(info);
    this.stats.downloadedChunks++;
    if (this.cache) await this.cache.put(info.sha256, bytes);
    return bytes;
  }

  /** Verified bytes from the first mirror that delivers them, else from the coordinator. */
  async _fromNetwork(info) {
    for (const m of this.mirrors || []) {
      if (this.down.has(m)) continue;
      const origin = `mirror ${m}`;
      try {
        const bytes = await verify(info, await this._download(info, `${m}/${info.sha256}`, origin), origin);
        this.stats.mirrorBytes += bytes.byteLength;
        this.stats.mirrorChunks++;
        return bytes;
      } catch (e) {
        if (e instanceof TypeError) this.down.add(m);  // network failure (down, CORS refused): skip it from now on
        this.stats.mirrorFailures.push(`${m}: ${e.message}`);
      }
    }
    return verify(info, await this._download(info), 'network');
  }

  /** All chunks of a manifest → Map index → bytes. */
  async loadAll(manifest) {
    if (this.mirrors === null) this.mirrors = (manifest.mirrors || []).map((m) => String(m).replace(/\/+$/, ''));
    const out = new Map();
    const queue = [...manifest.chunks];
    let done = 0;
    const worker = async () => {
      while (queue.length) {
        const info = queue.shift();
        out.set(info.index, await this.chunkBytes(info));
        done++;
        if (this.onProgress) this.onProgress({ kind: 'chunk', index: info.index, done, total: manifest.chunks.length, stats: this.stats });
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, queue.length) }, worker));
    return out;
  }
}

/** Rebuild full tensors from chunk bytes: Map name → {shape, dtype: 'F32', data: Float32Array}. */
export function assembleTensors(manifest, chunkBytes, names = null) {
  const parsed = new Map();
  const chunk = (i) => {
    if (!parsed.has(i)) {
      const bytes = chunkBytes.get(i);
      if (!bytes) throw new Error(`chunk ${i} was not loaded`);
      parsed.set(i, parseSafetensors(bytes).tensors);
    }
    return parsed.get(i);
  };
  const out = new Map();
  for (const name of names || Object.keys(manifest.tensors)) {
    const entry = manifest.tensors[name];
    const shape = entry.shape;
    const rowSize = shape.slice(1).reduce((a, b) => a * b, 1);
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    const want = TORCH_TO_ST[entry.dtype];
    for (const p of entry.parts) {
      const t = chunk(p.chunk).get(p.key);
      if (!t) throw new ChunkIntegrityError(`tensor ${name}: key ${p.key} missing from chunk ${p.chunk}`);
      if (t.dtype !== want) throw new ChunkIntegrityError(`tensor ${name}: stored ${t.dtype}, manifest says ${entry.dtype}`);
      const rows = shape.length ? p.stop - p.start : 1;
      const values = toFloat32(t.dtype, t.bytes);
      if (values.length !== rows * rowSize) throw new ChunkIntegrityError(`tensor ${name}: part ${p.key} has ${values.length} values, expected ${rows * rowSize}`);
      data.set(values, p.start * rowSize);
    }
    out.set(name, { shape, dtype: 'F32', data });
  }
  return out;
}

/** Manifest + verified, cached chunks → {manifest, tensors, stats}. */
export async function loadModelWeights({ base = '', cache = null, onProgress = null, fetchImpl = null, concurrency = 3 } = {}) {
  const manifest = await fetchManifest(base, fetchImpl || undefined);
  const loader = new ChunkLoader({ base, cache, onProgress, fetchImpl, concurrency });
  const bytes = await loader.loadAll(manifest);
  const tensors = assembleTensors(manifest, bytes);
  return { manifest, tensors, stats: loader.stats };
}
