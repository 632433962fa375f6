// safetensors reader and writer (https://github.com/huggingface/safetensors, format v0.4).
//
// File = u64 little-endian header length N | N bytes of JSON header (padded with spaces to a
// multiple of 8) | raw little-endian tensor data. The writer lays tensors out exactly as the
// Python/Rust `safetensors.torch.save` does (sorted by dtype alignment, then name; compact
// JSON), so the browser and the native worker produce byte-identical update bodies for equal
// tensors, and therefore the same sha256 to sign.

const DTYPE_SIZE = { BOOL: 1, U8: 1, I8: 1, I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4, F32: 4, F64: 8, I64: 8, U64: 8 };
// Order of the Rust `Dtype` enum; the writer sorts by it, descending (largest alignment first).
const DTYPE_RANK = ['BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'F64', 'I64', 'U64'];
// torch dtype names used in the chunk manifest → safetensors dtype codes.
export const TORCH_TO_ST = { float32: 'F32', float16: 'F16', bfloat16: 'BF16', int64: 'I64', int32: 'I32', uint8: 'U8', float64: 'F64' };

export class SafetensorsError extends Error {
  get name() { return 'SafetensorsError'; }
}

const numel = (shape) => shape.reduce((a, b) => a * b, 1);

/** Parse a safetensors buffer. Returns {metadata, tensors: Map name → {dtype, shape, bytes}}
 *  where `bytes` is a Uint8Array view of the tensor's raw data (no copy). */
export function parseSafetensors(buf) {
  const u8 = buf instanceof Uint8Array ? buf : new Uint8Array(buf);
  if (u8.byteLength < 8) throw new SafetensorsError('safetensors: shorter than the 8-byte header length');
  const dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
  const n = Number(dv.getBigUint64(0, true));
  if (n > u8.byteLength - 8) throw new SafetensorsError(`safetensors: header of ${n} bytes exceeds the buffer`);
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(u8.subarray(8, 8 + n)));
  } catch (e) {
    throw new SafetensorsError(`safetensors: unreadable header: ${e.message}`);
  }
  const base = 8 + n;
  const tensors = new Map();
  let metadata = null;
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') { metadata = info; continue; }
    const { dtype, shape, data_offsets: [a, b] } = info;
    const size = DTYPE_SIZE[dtype];
    if (!size) throw new SafetensorsError(`safetensors: tensor ${name}: unsupported dtype ${dtype}`);
    if (b - a !== numel(shape) * size) throw new SafetensorsError(`safetensors: tensor ${name}: ${b - a} bytes for shape [${shape}] ${dtype}`);
    if (base + b > u8.byteLength) throw new SafetensorsError(`safetensors: tensor ${name} runs past the end (truncated file)`);
    tensors.set(name, { dtype, shape, bytes: u8.subarray(base + a, base + b) });
  }
  return { metadata, tensors };
}

function halfToFloat(h) {
  const s = (h & 0x8000) ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/** Raw tensor bytes (little-endian) → Float32Array (copy). */
export function toFloat32(dtype, bytes) {
  const count = bytes.byteLength / DTYPE_SIZE[dtype];
  const aligned = (bytes.byteOffset % 8 === 0) ? bytes : bytes.slice();
  switch (dtype) {
    case 'F32': return new Float32Array(aligned.buffer.slice(aligned.byteOffset, aligned.byteOffset + aligned.byteLength));
    case 'F64': return Float32Array.from(new Float64Array(aligned.buffer, aligned.byteOffset, count));
    case 'F16': {
      const h = new Uint16Array(aligned.buffer, aligned.byteOffset, count);
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = halfToFloat(h[i]);
      return out;
    }
    case 'BF16': {
      const h = new Uint16Array(aligned.buffer, aligned.byteOffset, count);
      const bits = new Uint32Array(count);
      for (let i = 0; i < count; i++) bits[i] = h[i] << 16;
      return new Float32Array(bits.buffer);
    }
    case 'I32': return Float32Array.from(new Int32Array(aligned.buffer, aligned.byteOffset, count));
    case 'I64': return Float32Array.from(new BigInt64Array(aligned.buffer, aligned.byteOffset, count), Number);
    case 'U8': return Float32Array.from(aligned);
    default: throw new SafetensorsError(`cannot convert ${dtype} to float32`);
  }
}

const TYPED = { F32: Float32Array, F64: Float64Array, I32: Int32Array, U32: Uint32Array, I64: BigInt64Array, U64: BigUint64Array, I16: Int16Array, U16: Uint16Array, F16: Uint16Array, BF16: Uint16Array, I8: Int8Array, U8: Uint8Array, BOOL: Uint8Array };

/** Serialise tensors to safetensors bytes, byte-identical to `safetensors.torch.save`.
 *  `tensors`: Map or object name → {shape, data: TypedArray, dtype = 'F32'}. */
export function serializeSafetensors(tensors, metadata = null) {
  const entries = (tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors)).map(([name, t]) => {
    const dtype = t.dtype || 'F32';
    const size = DTYPE_SIZE[dtype];
    if (!size) throw new SafetensorsError(`tensor ${name}: unsupported dtype ${dtype}`);
    const n = numel(t.shape);
    if (t.data.length !== n) throw new SafetensorsError(`tensor ${name}: ${t.data.length} values for shape [${t.shape}]`);
    if (!(t.data instanceof TYPED[dtype])) throw new SafetensorsError(`tensor ${name}: data must be a ${TYPED[dtype].name} for ${dtype}`);
    return { name, dtype, shape: t.shape.map(Number), data: t.data, nbytes: n * size };
  });
  entries.sort((l, r) => (DTYPE_RANK.indexOf(r.dtype) - DTYPE_RANK.indexOf(l.dtype)) || (l.name < r.name ? -1 : l.name > r.name ? 1 : 0));
  const parts = [];
  if (metadata) parts.push(`"__metadata__":${JSON.stringify(Object.fromEntries(Object.entries(metadata).map(([k, v]) => [k, String(v)])))}`);
  let offset = 0;
  for (const e of entries) {
    parts.push(`${JSON.stringify(e.name)}:{"dtype":"${e.dtype}","shape":[${e.shape.join(',')}],"data_offsets":[${offset},${offset + e.nbytes}]}`);
    e.offset = offset;
    offset += e.nbytes;
  }
  let header = new TextEncoder().encode(`{${parts.join(',')}}`);
  const pad = (8 - (header.byteLength % 8)) % 8;
  if (pad) {
    const padded = new Uint8Array(header.byteLength + pad).fill(0x20);
    padded.set(header);
    header = padded;
  }
  const out = new Uint8Array(8 + header.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(header.byteLength), true);
  out.set(header, 8);
  const base = 8 + header.byteLength;
  for (const e of entries) {
    out.set(new Uint8Array(e.data.buffer, e.data.byteOffset, e.nbytes), base + e.offset);
  }
  return out;
}
