// Update codecs in the page, byte-identical to ailo/federation/core/codecs.py (docs/ARCHITECTURE.md,
// "Communication: update codecs"). The coordinator names the codec in the task; the page encodes
// Δ with error feedback (x = β·e + Δ; body = encode(x); e ← x − decode(body)) and keeps e in
// IndexedDB between rounds (feedbackstore.js); `decodeInt8Body` also reads compact-download patches. Every value is float32 arithmetic done exactly as numpy does it
// (double ops on float32 inputs rounded once), ties broken by index, so the sha256 the wallet
// signs is the same one a native worker would sign for the same Δ.
import { parseSafetensors, serializeSafetensors } from './safetensors.js';

export const CODECS = ['fp32', 'int8', 'sparse'];

export class CodecError extends Error {
  get name() { return 'CodecError'; }
}

export const INT8_BLOCK = 256;
const SLOT = 65536;
const f32 = Math.fround;
const numel = (shape) => shape.reduce((a, b) => a * b, 1);
/** Code-point order of tensor names (Python's sorted()). */
export const byName = (l, r) => (l < r ? -1 : l > r ? 1 : 0);

/** The task's codec ({name, density, ef_decay}); tasks without one are fp32. */
export function codecFromTask(task = {}) {
  const c = task.codec || { name: 'fp32' };
  if (!CODECS.includes(c.name)) throw new Error(`unknown codec ${c.name}; known: ${CODECS.join(', ')}`);
  return { name: c.name, density: c.density ?? 0.01, efDecay: c.ef_decay ?? 1.0 };
}

/** Entries kept of an n-entry tensor by the sparse codec: ceil(density·n) in float64. */
export const sparseK = (n, density) => (n ? Math.min(n, Math.ceil(density * n)) : 0);

function int8Tensor(x, qOut, qOff, scaleOut, sOff, dec) {
  const n = x.length;
  const nb = Math.ceil(n / INT8_BLOCK);
  for (let b = 0; b < nb; b++) {
    const lo = b * INT8_BLOCK, hi = Math.min(n, lo + INT8_BLOCK);
    let amax = 0;
    for (let i = lo; i < hi; i++) { const a = Math.abs(x[i]); if (a > amax) amax = a; }
    const s = f32(amax / 127);
    scaleOut[sOff + b] = s;
    for (let i = lo; i < hi; i++) {
      let q = s > 0 ? Math.floor(x[i] / s + 0.5) : 0;
      q = Math.max(-127, Math.min(127, q));
      qOut[qOff + i] = q;
      dec[i] = q * s;  // exact in float64, rounded once to float32 on store
    }
  }
  return nb;
}

function sparseSelect(x, kMax) {
  const n = x.length;
  const a = new Float32Array(n);
  let nnz = 0;
  for (let i = 0; i < n; i++) { a[i] = Math.abs(x[i]); if (a[i] !== 0) nnz++; }
  const k = Math.min(kMax, nnz);
  if (k === 0) return new Int32Array(0);
  const sorted = a.slice().sort();
  const t = sorted[n - k];
  let above = 0;
  for (let i = 0; i < n; i++) if (a[i] > t) above++;
  let ties = k - above;
  const sel = new Int32Array(k);
  let j = 0;
  for (let i = 0; i < n && j < k; i++) {
    if (a[i] > t || (a[i] === t && ties-- > 0)) sel[j++] = i;
  }
  return sel;
}

/** Encode the flat values `x` (Map name → Float32Array, any order) → {body, decoded}. */
function encodeLossy(x, spec) {
  const names = [...x.keys()].sort((l, r) => (l < r ? -1 : l > r ? 1 : 0));
  const total = names.reduce((s, n) => s + x.get(n).length, 0);
  const decoded = new Map();
  if (spec.name === 'int8') {
    const q = new Int8Array(total);
    const nblocks = names.reduce((s, n) => s + Math.ceil(x.get(n).length / INT8_BLOCK), 0);
    const scale = new Float32Array(nblocks);
    let off = 0, b = 0;
    for (const name of names) {
      const v = x.get(name);
      const dec = new Float32Array(v.length);
      b += int8Tensor(v, q, off, scale, b, dec);
      decoded.set(name, dec);
      off += v.length;
    }
    const body = serializeSafetensors(new Map([
      ['q', { shape: [total], dtype: 'I8', data: q }], ['scale', { shape: [nblocks], dtype: 'F32', data: scale }]]),
    { codec: 'int8' });
    return { body, decoded };
  }
  const scale = new Float32Array(names.length * 2);
  const sels = [], codesAll = [];
  let off = 0, kTotal = 0;
  names.forEach((name, ti) => {
    const v = x.get(name);
    const sel = sparseSelect(v, sparseK(v.length, spec.density));
    const k = sel.length;
    const dec = new Float32Array(v.length);
    const codes = new Uint8Array(k);
    if (k) {
      const m = new Float32Array(k);
      for (let j = 0; j < k; j++) m[j] = Math.abs(v[sel[j]]);
      m.sort();
      const lo = m[k >> 2], mid = m[k >> 1], hi = m[Math.floor((3 * k) / 4)];
      scale[2 * ti] = lo; scale[2 * ti + 1] = hi;
      for (let j = 0; j < k; j++) {
        const val = v[sel[j]];
        const high = Math.abs(val) >= mid;
        const neg = val < 0;
        codes[j] = (neg ? 2 : 0) | (high ? 1 : 0);
        const mag = high ? hi : lo;
        dec[sel[j]] = neg ? -mag : mag;
      }
    }
    decoded.set(name, dec);
    sels.push([sel, off]);
    codesAll.push(codes);
    off += v.length;
    kTotal += k;
  });
  const slots = Math.ceil(total / SLOT);
  const idx = new Uint16Array(kTotal);
  const count = new Int32Array(slots);
  const code = new Uint8Array(Math.ceil(kTotal / 4));
  let j = 0;
  sels.forEach(([sel, base], ti) => {
    const codes = codesAll[ti];
    for (let i = 0; i < sel.length; i++, j++) {
      const g = base + sel[i];
      idx[j] = g % SLOT;
      count[Math.floor(g / SLOT)]++;
      code[j >> 2] |= codes[i] << (2 * (j & 3));
    }
  });
  const body = serializeSafetensors(new Map([
    ['idx', { shape: [kTotal], dtype: 'U16', data: idx }], ['count', { shape: [slots], dtype: 'I32', data: count }],
    ['code', { shape: [code.length], dtype: 'U8', data: code }], ['scale', { shape: [names.length, 2], dtype: 'F32', data: scale }]]),
  { codec: 'sparse' });
  return { body, decoded };
}

/** Δ (Map name → {shape, data: Float32Array}) → {body, error} with error feedback.
 *  `error`: Map name → Float32Array (or null). fp32: the plain safetensors body, error empty. */
export function compress(delta, error, spec) {
  if (spec.name === 'fp32') return { body: serializeSafetensors(delta), error: new Map() };
  for (const [name, t] of delta) {
    for (let i = 0; i < t.data.length; i++) if (!Number.isFinite(t.data[i])) throw new Error(`tensor ${name} contains NaN or Inf`);
  }
  const beta = f32(spec.efDecay);
  const x = new Map();
  for (const [name, t] of delta) {
    const d = t.data;
    const e = error && error.get(name);
    const v = new Float32Array(d.length);
    if (e && e.length === d.length) {
      if (beta !== 1) for (let i = 0; i < d.length; i++) v[i] = f32(beta * e[i]) + d[i];
      else for (let i = 0; i < d.length; i++) v[i] = e[i] + d[i];
    } else v.set(d);
    x.set(name, v);
  }
  const { body, decoded } = encodeLossy(x, spec);
  const next = new Map();
  for (const [name, v] of x) {
    const dec = decoded.get(name);
    const r = new Float32Array(v.length);
    for (let i = 0; i < v.length; i++) r[i] = v[i] - dec[i];
    next.set(name, r);
  }
  return { body, error: next };
}

/** The int8 codec body over `shapes` (Map name → shape) → Map name → Float32Array, with the
 *  checks of ailo/federation/core/codecs.py `decode` (exactly q I8[total] and scale F32[blocks],
 *  finite non-negative scales, no code −128, finite results). Values are q·s rounded once to
 *  float32, as numpy computes them. */
export function decodeInt8Body(body, shapes) {
  let parsed;
  try { parsed = parseSafetensors(body); } catch (e) { throw new CodecError(`invalid safetensors body: ${e.message}`); }
  const { metadata, tensors } = parsed;
  if (!metadata || metadata.codec !== 'int8') throw new CodecError(`body is encoded as ${(metadata && metadata.codec) || 'fp32'}, not int8`);
  const names = [...shapes.keys()].sort(byName);
  const total = names.reduce((s, n) => s + numel(shapes.get(n)), 0);
  const nblocks = names.reduce((s, n) => s + Math.ceil(numel(shapes.get(n)) / INT8_BLOCK), 0);
  const keys = [...tensors.keys()].sort();
  if (keys.join(',') !== 'q,scale') throw new CodecError(`an int8 body holds exactly the arrays q, scale; got ${keys.slice(0, 8)}`);
  const qt = tensors.get('q'), st = tensors.get('scale');
  if (qt.dtype !== 'I8' || qt.shape.join(',') !== String(total)) throw new CodecError(`q must be I8 [${total}], got ${qt.dtype} [${qt.shape}]`);
  if (st.dtype !== 'F32' || st.shape.join(',') !== String(nblocks)) throw new CodecError(`scale must be F32 [${nblocks}], got ${st.dtype} [${st.shape}]`);
  const q = new Int8Array(qt.bytes.buffer, qt.bytes.byteOffset, total);
  const scale = new Float32Array(st.bytes.slice().buffer);
  for (const s of scale) if (!Number.isFinite(s) || s < 0) throw new CodecError('int8 scales must be finite and non-negative');
  const out = new Map();
  let off = 0, b = 0;
  for (const name of names) {
    const n = numel(shapes.get(name));
    const v = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const code = q[off + i];
      if (code === -128) throw new CodecError('int8 code -128 is not used (codes are -127..127)');
      v[i] = code * scale[b + Math.floor(i / INT8_BLOCK)];  // exact in float64, rounded once on store
      if (!Number.isFinite(v[i])) throw new CodecError(`tensor ${name} decodes to NaN or Inf`);
    }
    out.set(name, v);
    off += n;
    b += Math.ceil(n / INT8_BLOCK);
  }
  return out;
}
