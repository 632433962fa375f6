// A span of a room's model in TensorFlow.js: the half-layer units of ailo/inference/families/
// (Llama-2, Qwen2, ailo GPT) with a per-request KV cache, so a browser can serve a room.
//
// Unit 2·i is layer i's attention, unit 2·i+1 its MLP; the first span also embeds token ids,
// the last also applies the final norm and the output matrix to the last position. Tensor
// names are the checkpoint's (`model.layers.3.self_attn.q_proj.weight`, `blocks.0.attn.qkv.bias`),
// the list ailo/inference/loader.py's `checkpoint_names` gives, so the page needs exactly the
// tensors the coordinator's span manifest lists. Math as the reference: RMSNorm in float32,
// rotate-half rotary embedding with the checkpoint's rope_theta, grouped-query attention
// (each key/value head serves n_heads / n_kv_heads consecutive query heads), SwiGLU,
// Qwen2's q/k/v bias; LayerNorm + tanh-GELU for ailo GPT. Everything runs in float32.
import * as tf from '@tensorflow/tfjs';
import { familyOf } from './families.js';

/** Checkpoint tensor names units [start, end) of `spec` load (mirror of loader.checkpoint_names). */
export function spanTensorNames(spec, start, end, hasLmHead) {
  const hf = familyOf(spec).layout === 'hf';
  const out = [];
  if (start === 0) {
    out.push(hf ? 'model.embed_tokens.weight' : 'wte.weight');
    if (!hf) out.push('wpe.weight');
  }
  for (let u = start; u < end; u++) {
    const i = u >> 1;
    if (hf) {
      const p = `model.layers.${i}.`;
      if (u % 2 === 0) {
        out.push(`${p}input_layernorm.weight`);
        for (const n of ['q', 'k', 'v']) {
          out.push(`${p}self_attn.${n}_proj.weight`);
          if (spec.qkv_bias) out.push(`${p}self_attn.${n}_proj.bias`);
        }
        out.push(`${p}self_attn.o_proj.weight`);
        if (spec.o_bias) out.push(`${p}self_attn.o_proj.bias`);
      } else {
        out.push(`${p}post_attention_layernorm.weight`);
        for (const n of ['gate', 'up', 'down']) {
          out.push(`${p}mlp.${n}_proj.weight`);
          if (spec.mlp_bias) out.push(`${p}mlp.${n}_proj.bias`);
        }
      }
    } else {
      const p = `blocks.${i}.`;
      const names = u % 2 === 0 ? ['ln1', 'attn.qkv', 'attn.proj'] : ['ln2', 'mlp.fc', 'mlp.proj'];
      for (const n of names) out.push(`${p}${n}.weight`, `${p}${n}.bias`);
    }
  }
  if (end === 2 * spec.n_layers) {
    if (hf) out.push('model.norm.weight', hasLmHead || !spec.tie_embeddings ? 'lm_head.weight' : 'model.embed_tokens.weight');
    else out.push('ln_f.weight', 'ln_f.bias', 'wte.weight');
  }
  return [...new Set(out)];
}

/** Keys/values of every attention unit of one span for one request; `length` = positions held. */
export class SpanCache {
  constructor() { this.kv = new Map(); this.length = 0; }

  /** Append new keys/values [heads, T, D] of `layer`; returns the full (kept) tensors. */
  append(layer, k, v) {
    const prev = this.kv.get(layer);
    const nk = prev ? tf.concat([prev.k, k], 1) : k.clone();
    const nv = prev ? tf.concat([prev.v, v], 1) : v.clone();
    tf.keep(nk); tf.keep(nv);
    if (prev) { prev.k.dispose(); prev.v.dispose(); }
    this.kv.set(layer, { k: nk, v: nv });
    return [nk, nv];
  }

  bytes() { let n = 0; for (const { k } of this.kv.values()) n += 2 * 4 * k.size; return n; }

  dispose() {
    for (const { k, v } of this.kv.values()) { k.dispose(); v.dispose(); }
    this.kv.clear();
    this.length = 0;
  }
}

const GELU_C = Math.sqrt(2 / Math.PI);

function rmsNorm(x, w, eps) {
  return tf.mul(tf.mul(x, tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), eps))), w);
}

function layerNorm(x, w, b, eps) {
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))), w), b);
}

const silu = (x) => tf.mul(x, tf.sigmoid(x));
const geluTanh = (x) => tf.mul(tf.mul(x, 0.5), tf.add(tf.tanh(tf.mul(tf.add(x, tf.mul(tf.mul(tf.mul(x, x), x), 0.044715)), GELU_C)), 1));

/** [T, D] cos/sin tables of positions [start, start + T) (rotate-half layout, float32 like torch). */
export function rotaryTables(headDim, theta, start, length) {
  const half = headDim / 2;
  const inv = new Float32Array(half);
  for (let j = 0; j < half; j++) inv[j] = Math.fround(1 / Math.fround(theta ** Math.fround((2 * j) / headDim)));
  const cos = new Float32Array(length * headDim), sin = new Float32Array(length * headDim);
  for (let t = 0; t < length; t++) {
    for (let j = 0; j < half; j++) {
      const a = Math.fround(Math.fround(start + t) * inv[j]);
      const c = Math.cos(a), s = Math.sin(a);
      cos[t * headDim + j] = cos[t * headDim + j + half] = c;
      sin[t * headDim + j] = sin[t * headDim + j + half] = s;
    }
  }
  return [tf.tensor2d(cos, [length, headDim]), tf.tensor2d(sin, [length, headDim])];
}

function rotateHalf(x) {
  const d = x.shape[x.shape.length - 1] / 2;
  const [x1, x2] = tf.split(x, [d, d], -1);
  return tf.concat([tf.neg(x2), x1], -1);
}

/** Additive causal mask [T, L] for queries at positions start.. over keys 0..L-1. */
function causalMask(start, T, L) {
  const m = new Float32Array(T * L);
  for (let i = 0; i < T; i++) for (let j = start + i + 1; j < L; j++) m[i * L + j] = -1e9;
  return tf.tensor2d(m, [T, L]);
}

/** Causal attention of q [H, T, D] over all cached k/v [Hkv, L, D]; returns [T, H·D]. */
function attend(q, k, v, start, scale) {
  const [H, T, D] = q.shape;
  const [Hkv, L] = k.shape;
  if (Hkv !== H) {  // grouped-query: kv head j serves query heads j·g … j·g+g−1
    const g = H / Hkv;
    const rep = (z) => tf.reshape(tf.tile(tf.expandDims(z, 1), [1, g, 1, 1]), [H, L, D]);
    k = rep(k); v = rep(v);
  }
  let s = tf.mul(tf.matMul(q, k, false, true), scale);
  if (T > 1) s = tf.add(s, causalMask(start, T, L));
  const y = tf.matMul(tf.softmax(s), v);
  return tf.reshape(tf.transpose(y, [1, 0, 2]), [T, H * D]);
}

/** Units [start, end) of a model with weights in TensorFlow.js tensors on the current backend. */
export class BrowserSpan {
  /** `weights`: Map checkpoint name → {shape, data: Float32Array} holding `spanTensorNames`. */
  constructor(spec, start, end, weights) {
    const nUnits = 2 * spec.n_layers;
    if (!(Number.isInteger(start) && Number.isInteger(end) && start >= 0 && start < end && end <= nUnits)) {
      throw new Error(`bad span [${start}, ${end}) for ${nUnits} units`);
    }
    this.spec = spec; this.start = start; this.end = end;
    this.first = start === 0; this.last = end === nUnits;
    this.hf = familyOf(spec).layout === 'hf';
    this.backend = tf.getBackend();
    const has = (n) => (weights instanceof Map ? weights.has(n) : n in weights);
    this.names = spanTensorNames(spec, start, end, has('lm_head.weight'));
    this.w = {};
    for (const n of this.names) {
      const t = weights instanceof Map ? weights.get(n) : weights[n];
      if (!t) throw new Error(`weights lack tensor ${n}`);
      // Linear weights are stored [out, in] (torch); keep them transposed once so every
      // product is a plain matmul (wasm/cpu run transposed operands several times slower).
      const x = tf.tensor(t.data, t.shape, 'float32');
      const linear = t.shape.length === 2 && !/embed_tokens|wte|wpe/.test(n);
      this.w[n] = linear ? tf.keep(tf.tidy(() => tf.transpose(x))) : x;
      if (linear) x.dispose();
    }
    this.headName = null;
    if (this.last) {
      this.headName = !this.hf ? 'wte.weight'
        : (has('lm_head.weight') || !spec.tie_embeddings ? 'lm_head.weight' : 'model.embed_tokens.weight');
      // A tied output matrix is the [vocab, hidden] embedding: keep a transposed copy for the head.
      if (this.headName !== 'lm_head.weight') this.headT = tf.keep(tf.tidy(() => tf.transpose(this.w[this.headName])));
    }
  }

  _lin(x, name, biasName = null) {
    const y = tf.matMul(x, this.w[name]);
    return biasName && this.w[biasName] ? tf.add(y, this.w[biasName]) : y;
  }

  _llamaAttention(x, i, start, cache, rope) {
    const s = this.spec, p = `model.layers.${i}.self_attn.`;
    const T = x.shape[0], D = s.head_dim;
    const h = rmsNorm(x, this.w[`model.layers.${i}.input_layernorm.weight`], s.norm_eps);
    const heads = (z, n) => tf.transpose(tf.reshape(z, [T, n, D]), [1, 0, 2]);
    let q = heads(this._lin(h, `${p}q_proj.weight`, `${p}q_proj.bias`), s.n_heads);
    let k = heads(this._lin(h, `${p}k_proj.weight`, `${p}k_proj.bias`), s.n_kv_heads);
    const v = heads(this._lin(h, `${p}v_proj.weight`, `${p}v_proj.bias`), s.n_kv_heads);
    const [cos, sin] = rope;
    q = tf.add(tf.mul(q, cos), tf.mul(rotateHalf(q), sin));
    k = tf.add(tf.mul(k, cos), tf.mul(rotateHalf(k), sin));
    const [kk, vv] = cache.append(i, k, v);
    const y = attend(q, kk, vv, start, 1 / Math.sqrt(D));
    return tf.add(x, this._lin(y, `${p}o_proj.weight`, `${p}o_proj.bias`));
  }

  _llamaMlp(x, i) {
    const s = this.spec, p = `model.layers.${i}.mlp.`;
    const h = rmsNorm(x, this.w[`model.layers.${i}.post_attention_layernorm.weight`], s.norm_eps);
    const gate = silu(this._lin(h, `${p}gate_proj.weight`, `${p}gate_proj.bias`));
    return tf.add(x, this._lin(tf.mul(gate, this._lin(h, `${p}up_proj.weight`, `${p}up_proj.bias`)), `${p}down_proj.weight`, `${p}down_proj.bias`));
  }

  _gptAttention(x, i, start, cache) {
    const s = this.spec, p = `blocks.${i}.`;
    const T = x.shape[0], D = s.head_dim, H = s.n_heads;
    const h = layerNorm(x, this.w[`${p}ln1.weight`], this.w[`${p}ln1.bias`], s.norm_eps);
    const [q, k, v] = tf.split(this._lin(h, `${p}attn.qkv.weight`, `${p}attn.qkv.bias`), 3, 1)
      .map((z) => tf.transpose(tf.reshape(z, [T, H, D]), [1, 0, 2]));
    const [kk, vv] = cache.append(i, k, v);
    const y = attend(q, kk, vv, start, 1 / Math.sqrt(D));
    return tf.add(x, this._lin(y, `${p}attn.proj.weight`, `${p}attn.proj.bias`));
  }

  _gptMlp(x, i) {
    const s = this.spec, p = `blocks.${i}.`;
    const h = layerNorm(x, this.w[`${p}ln2.weight`], this.w[`${p}ln2.bias`], s.norm_eps);
    return tf.add(x, this._lin(geluTanh(this._lin(h, `${p}mlp.fc.weight`, `${p}mlp.fc.bias`)), `${p}mlp.proj.weight`, `${p}mlp.proj.bias`));
  }

  /** Positions [start, start + T): `input` is Int32Array ids (first span) or Float32Array of
   *  T·hidden values. Returns {data: Float32Array, shape}: hidden states [1, T, hidden], or on
   *  the last span the float32 logits [1, vocab] of the last position. */
  async forward(input, start, cache) {
    if (tf.getBackend() !== this.backend) throw new Error(`span was loaded on ${this.backend}, backend is now ${tf.getBackend()}`);
    if (cache.length !== start) throw new Error(`cache holds ${cache.length} positions, input starts at ${start}`);
    const s = this.spec;
    const T = this.first ? input.length : input.length / s.hidden;
    if (!Number.isInteger(T) || T < 1) throw new Error(`input of ${input.length} values is not T × ${s.hidden}`);
    if (start + T > s.max_positions) throw new Error(`sequence of ${start + T} tokens exceeds the model's ${s.max_positions}`);
    const out = tf.tidy(() => {
      let x;
      if (this.first) {
        for (const id of input) if (!(id >= 0 && id < s.vocab)) throw new Error(`token id ${id} outside [0, ${s.vocab})`);
        x = tf.gather(this.w[this.hf ? 'model.embed_tokens.weight' : 'wte.weight'], tf.tensor1d(input, 'int32'));
        if (!this.hf) x = tf.add(x, tf.slice(this.w['wpe.weight'], [start, 0], [T, s.hidden]));
      } else {
        x = tf.tensor2d(input, [T, s.hidden], 'float32');
      }
      let rope = null;
      if (this.hf) rope = rotaryTables(s.head_dim, s.rope_theta, start, T);
      for (let u = this.start; u < this.end; u++) {
        const i = u >> 1;
        if (this.hf) x = u % 2 === 0 ? this._llamaAttention(x, i, start, cache, rope) : this._llamaMlp(x, i);
        else x = u % 2 === 0 ? this._gptAttention(x, i, start, cache) : this._gptMlp(x, i);
      }
      if (!this.last) return x;
      const lastRow = tf.slice(x, [T - 1, 0], [1, s.hidden]);
      const n = this.hf ? rmsNorm(lastRow, this.w['model.norm.weight'], s.norm_eps)
        : layerNorm(lastRow, this.w['ln_f.weight'], this.w['ln_f.bias'], s.norm_eps);
      return tf.matMul(n, this.headT || this.w[this.headName]);
    });
    cache.length = start + T;
    try {
      const data = await out.data();
      return { data, shape: this.last ? [1, s.vocab] : [1, T, s.hidden] };
    } finally {
      out.dispose();
    }
  }

  dispose() {
    for (const t of Object.values(this.w)) t.dispose();
    if (this.headT) this.headT.dispose();
    this.w = {};
  }
}
