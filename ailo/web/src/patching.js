// Compact downloads in the page (ailo/federation/core/served.py, patching.py): the coordinator's
// `--compact-downloads` serves W_v, bfloat16 tensors, as the manifest of GET /v1/model?format=bf16,
// and P_v = the int8 update-codec body of (M_v − W_{v−1}) at GET /v1/patches/{v}. A page that
// holds W_{v−1} fetches only P_v (≈ ¼ of the fp32 bytes), rebuilds
//
//     W_v = bf16(float32(W_{v−1}) + decode(P_v))      (float32 add, round-to-nearest-even)
//
// bit for bit as PyTorch does, re-serialises every chunk of the bf16 manifest and accepts the
// result only when each chunk's size and sha256 match; anything else (no held version, a gap,
// a 404, a malformed patch, one wrong hash) answers null and the caller downloads the bf16 chunks.
import { sha256Hex } from './hash.js';
import { parseSafetensors, serializeSafetensors } from './safetensors.js';
import { CodecError, byName, decodeInt8Body } from './codecs.js';

export class PatchError extends CodecError {
  get name() { return 'PatchError'; }
}


const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

/** float32 → bfloat16 bits, round to nearest even (c10::BFloat16; NaN → 0x7FC0). */
export function bf16Bits(x) {
  F32[0] = x;
  const b = U32[0];
  if ((b & 0x7fffffff) > 0x7f800000) return 0x7fc0;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** bfloat16 bits of a Float32Array whose values are all bfloat16 (e.g. read from BF16 chunks). */
export function heldBits(values) {
  const u = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < u.length; i++) {
    if (u[i] & 0xffff) throw new PatchError('held tensor is not bfloat16');
    out[i] = u[i] >>> 16;
  }
  return out;
}

/** A sparse patch (ailo/federation/sparse_patch.py): the changed bf16 values of W_v at their
 *  global flat index (tensors in sorted-name order), as idx U16 (mod 65536) + count I32 per
 *  65536-slot + value U16 (bf16 bits). W_v = W_{v−1} with those values set, exactly. */
function applySparsePatch(held, tensors) {
  const names = [...held.keys()].sort(byName);
  const total = names.reduce((s, n) => s + held.get(n).data.length, 0);
  const it = tensors.get('idx'), ct = tensors.get('count'), vt = tensors.get('value');
  if (!it || !ct || !vt || it.dtype !== 'U16' || vt.dtype !== 'U16' || ct.dtype !== 'I32') throw new PatchError('sparse patch needs idx U16, count I32, value U16');
  const count = new Int32Array(ct.bytes.slice().buffer);
  const idx = new Uint16Array(it.bytes.slice().buffer), value = new Uint16Array(vt.bytes.slice().buffer);
  if (count.length !== Math.ceil(total / 65536) || idx.length !== value.length) throw new PatchError('sparse patch arrays do not fit this model');
  const out = new Map(), starts = [];
  let off = 0;
  for (const name of names) {
    const t = held.get(name);
    out.set(name, { shape: t.shape, bits: heldBits(t.data).slice() });
    starts.push([off, name]);
    off += t.data.length;
  }
  let j = 0, at = 0, prev = -1;
  for (let slot = 0; slot < count.length; slot++) {
    if (count[slot] < 0 || j + count[slot] > idx.length) throw new PatchError('sparse patch counts do not fit its indices');
    for (let c = 0; c < count[slot]; c++, j++) {
      const pos = slot * 65536 + idx[j];
      if (pos <= prev || pos >= total) throw new PatchError('sparse patch indices are not ascending within the model');
      prev = pos;
      while (at + 1 < starts.length && starts[at + 1][0] <= pos) at++;
      out.get(starts[at][1]).bits[pos - starts[at][0]] = value[j];
    }
  }
  if (j !== idx.length) throw new PatchError('sparse patch counts do not add up to its indices');
  return out;
}

/** W_v bits from W_{v−1} (Map name → {shape, data: Float32Array of bf16 values}) and P_v. */
export function applyPatch(held, patch) {
  let parsed = null;
  try { parsed = parseSafetensors(patch); } catch (e) { /* decodeInt8Body reports it */ }
  if (parsed && parsed.metadata && parsed.metadata.format === 'sparse-bf16') return applySparsePatch(held, parsed.tensors);
  const shapes = new Map([...held.entries()].map(([n, t]) => [n, t.shape]));
  const step = decodeInt8Body(patch, shapes);
  const out = new Map();
  for (const [name, t] of held) {
    const d = step.get(name);
    const bits = new Uint16Array(t.data.length);
    for (let i = 0; i < bits.length; i++) bits[i] = bf16Bits(t.data[i] + d[i]);  // float32 + float32, exact in float64
    out.set(name, { shape: t.shape, bits });
  }
  return out;
}

/** The chunk files of a bf16 `manifest` rebuilt from full tensors (ailo/chunks.py
 *  chunk_bytes): Map chunk index → bytes. */
export function chunkBytes(manifest, weights) {
  const groups = new Map();
  for (const [name, entry] of Object.entries(manifest.tensors)) {
    const t = weights.get(name);
    if (!t) throw new PatchError(`patched model lacks tensor ${name}`);
    const rowSize = entry.shape.slice(1).reduce((a, b) => a * b, 1);
    for (const p of entry.parts) {
      const whole = p.key === name;
      const data = whole ? t.bits : t.bits.subarray(p.start * rowSize, p.stop * rowSize);
      const shape = whole ? entry.shape : [p.stop - p.start, ...entry.shape.slice(1)];
      if (!groups.has(p.chunk)) groups.set(p.chunk, new Map());
      groups.get(p.chunk).set(p.key, { shape, dtype: 'BF16', data });
    }
  }
  return new Map([...groups.entries()].map(([i, g]) => [i, serializeSafetensors(g)]));
}

/** W_v's chunks (Map index → bytes) from the held W_{v−1} and the patch bytes, each checked
 *  against `manifest`'s size and sha256; throws PatchError naming the first mismatch. */
export async function patchedChunks(manifest, held, patch) {
  if (Object.values(manifest.tensors).some((t) => t.dtype !== 'bfloat16')) throw new PatchError('the manifest is not the bf16 served model');
  const names = Object.keys(manifest.tensors).sort(byName);
  if (names.join('\n') !== [...held.keys()].sort(byName).join('\n')) throw new PatchError('held model has other tensors than the manifest');
  const blobs = chunkBytes(manifest, applyPatch(held, patch));
  for (const c of manifest.chunks) {
    const data = blobs.get(c.index);
    if (!data || data.byteLength !== c.size || (await sha256Hex(data)) !== c.sha256) {
      throw new PatchError(`patched chunk ${c.index} of v${manifest.version} does not match its sha256`);
    }
  }
  return blobs;
}
