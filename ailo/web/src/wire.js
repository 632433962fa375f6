// Activation frames in the page: the exact binary layout of ailo/inference/wire.py.
//
//   magic "AILF" | version u8 (1) | dtype u8 (0 f32, 1 f16, 2 bf16, 3 i64) | ndim u8 | flags u8
//   (bit 0 reset) | start u32 | span start u32 | span end u32 | request id length u16 | id UTF-8
//   | shape u32 × ndim | payload (C order), all little-endian.
import { toFloat32 } from './safetensors.js';

const FIXED = 4 + 4 + 4 + 4 + 4 + 2;  // "<4sBBBBIIIH"
const CODES = ['F32', 'F16', 'BF16', 'I64'];
const SIZE = { F32: 4, F16: 2, BF16: 2, I64: 8 };
export const FLAG_RESET = 1;

export class WireError extends Error {
  get name() { return 'WireError'; }
}

/** bytes → {requestId, start, span: [a, b], reset, dtype, shape, data}; float payloads become
 *  Float32Array, i64 token ids an Int32Array (ids of any real vocabulary fit). */
export function decodeFrame(buf) {
  const u8 = buf instanceof Uint8Array ? buf : new Uint8Array(buf);
  if (u8.byteLength < FIXED) throw new WireError('frame too short');
  const dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
  if (String.fromCharCode(u8[0], u8[1], u8[2], u8[3]) !== 'AILF' || u8[4] !== 1) throw new WireError('not an ailo activation frame');
  const code = u8[5], ndim = u8[6], flags = u8[7];
  if (code >= CODES.length) throw new WireError(`unknown dtype code ${code}`);
  const start = dv.getUint32(8, true), s0 = dv.getUint32(12, true), s1 = dv.getUint32(16, true);
  const rlen = dv.getUint16(20, true);
  let off = FIXED;
  if (off + rlen + 4 * ndim > u8.byteLength) throw new WireError('frame too short');
  const requestId = new TextDecoder().decode(u8.subarray(off, off + rlen));
  off += rlen;
  const shape = [];
  for (let i = 0; i < ndim; i++, off += 4) shape.push(dv.getUint32(off, true));
  const dtype = CODES[code];
  const n = shape.reduce((a, b) => a * b, 1);
  const payload = u8.subarray(off);
  if (payload.byteLength !== n * SIZE[dtype]) throw new WireError(`payload of ${payload.byteLength} bytes does not match shape [${shape}] ${dtype}`);
  let data;
  if (dtype === 'I64') {
    const copy = payload.slice();
    const big = new BigInt64Array(copy.buffer, 0, n);
    data = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      if (big[i] < -2147483648n || big[i] > 2147483647n) throw new WireError('token id out of range');
      data[i] = Number(big[i]);
    }
  } else {
    data = toFloat32(dtype, payload);
  }
  return { requestId, start, span: [s0, s1], reset: !!(flags & FLAG_RESET), dtype, shape, data };
}

/** A float32 frame (what the page answers with). */
export function encodeFrame({ requestId, start, span, shape, data, reset = false }) {
  if (!(data instanceof Float32Array)) throw new WireError('the page sends float32 frames');
  const rid = new TextEncoder().encode(requestId);
  const out = new Uint8Array(FIXED + rid.byteLength + 4 * shape.length + data.byteLength);
  const dv = new DataView(out.buffer);
  out.set([65, 73, 76, 70, 1, 0, shape.length, reset ? FLAG_RESET : 0]);
  dv.setUint32(8, start, true); dv.setUint32(12, span[0], true); dv.setUint32(16, span[1], true);
  dv.setUint16(20, rid.byteLength, true);
  out.set(rid, FIXED);
  let off = FIXED + rid.byteLength;
  for (const d of shape) { dv.setUint32(off, d, true); off += 4; }
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), off);
  return out;
}
