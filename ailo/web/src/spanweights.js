// A room's span weights in the page: the coordinator's span manifest
// (GET /v1/rooms/{id}/weights?start&end, ailo/inference/weights.py) lists exactly the tensors
// the span loads and the sha256-named pieces that hold them; pieces come from
// GET /v1/rooms/{id}/chunks/{sha256} through the same verified IndexedDB cache as the training
// model's chunks, so a reload or a second span sharing tensors downloads nothing twice. Mirrors
// the manifest lists (`ailo mirror sync` copies room pieces too) are tried first, verified.
import { ChunkCache, ChunkLoader, ChunkIntegrityError } from './chunks.js';
import { toFloat32 } from './safetensors.js';

export async function fetchSpanManifest(base, room, start, end) {
  const path = `/v1/rooms/${encodeURIComponent(room)}/weights?start=${start}&end=${end}`;
  const res = await fetch(base + path, { cache: 'no-store' });
  if (!res.ok) {
    let detail = await res.text();
    try { detail = JSON.parse(detail).detail; } catch { /* keep text */ }
    throw new Error(`GET ${path}: HTTP ${res.status}: ${detail}`);
  }
  return res.json();
}

/** Manifest + verified piece bytes → Map name → {shape, data: Float32Array}. */
export function assembleSpan(manifest, bytesBySha) {
  const out = new Map();
  for (const [name, t] of Object.entries(manifest.tensors)) {
    const parts = t.pieces.map((sha) => {
      const b = bytesBySha.get(sha);
      if (!b) throw new Error(`piece ${sha.slice(0, 12)} of ${name} was not loaded`);
      return b;
    });
    const size = parts.reduce((s, b) => s + b.byteLength, 0);
    const raw = new Uint8Array(size);
    let off = 0;
    for (const b of parts) { raw.set(b, off); off += b.byteLength; }
    const data = toFloat32(t.dtype, raw);
    if (data.length !== t.shape.reduce((a, b) => a * b, 1)) throw new ChunkIntegrityError(`tensor ${name}: ${data.length} values for shape [${t.shape}]`);
    out.set(name, { shape: t.shape, data });
  }
  return out;
}

/** {manifest, weights, stats} for units [start, end) of room `room`. */
export async function loadSpanWeights({ base = '', room, start, end, dbName = 'ailo-room-chunks', onProgress = null, concurrency = 3 }) {
  const manifest = await fetchSpanManifest(base, room, start, end);
  const cache = dbName ? await ChunkCache.open(dbName) : null;
  try {
    const loader = new ChunkLoader({ base, cache, onProgress, concurrency, chunkPath: (sha) => `/v1/rooms/${encodeURIComponent(room)}/chunks/${sha}` });
    const byIndex = await loader.loadAll(manifest);
    const bySha = new Map(manifest.chunks.map((c) => [c.sha256, byIndex.get(c.index)]));
    return { manifest, weights: assembleSpan(manifest, bySha), stats: { ...loader.stats, chunks: manifest.chunks.length, totalBytes: manifest.total_bytes } };
  } finally {
    if (cache) cache.kv.close();
  }
}
