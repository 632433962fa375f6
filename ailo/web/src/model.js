// The GPT of ailo/model.py in TensorFlow.js: same architecture, same parameter names and shapes.
//
// Pre-LayerNorm blocks (eps 1e-5), learned absolute positions, tanh-approximated GELU MLP,
// causal multi-head attention with 1/sqrt(head_dim) scaling, tied input/output embeddings,
// loss = mean token cross-entropy (as torch.nn.functional.cross_entropy). Linear weights are
// stored [out, in] like torch.nn.Linear. Stock TensorFlow.js ops only; the embedding lookup,
// the cross-entropy and (on wasm/cpu) x·Wᵀ get closed-form gradients written with those ops
// (scatter-add, softmax − one-hot, plain matmuls), so every backend, wasm included, trains, and
// fast.
import * as tf from '@tensorflow/tfjs';
import { geluTanhFused, layerNormFused, wgslKernels } from './webgpu_kernels.js';

export const GPT2_VOCAB = 50257;

const preset = (name, n_layer, n_embd, n_head, n_ffn, n_ctx) =>
  ({ name, n_layer, n_embd, n_head, n_ffn, n_ctx, vocab_size: GPT2_VOCAB, layer_norm_eps: 1e-5 });

export const PRESETS = {
  'ailo-tiny': preset('ailo-tiny', 2, 64, 4, 256, 64),
  'ailo-small': preset('ailo-small', 6, 256, 8, 1024, 256),
  'ailo-1b': preset('ailo-1b', 24, 1600, 25, 6400, 2048),
};

export function getPreset(name) {
  const p = PRESETS[name];
  if (!p) throw new Error(`unknown preset ${name}; known: ${Object.keys(PRESETS).join(', ')}`);
  return p;
}

/** [name, shape] of every parameter, in torch `named_parameters()` order. */
export function paramShapes(cfg) {
  const C = cfg.n_embd, F = cfg.n_ffn;
  const out = [['wte.weight', [cfg.vocab_size, C]], ['wpe.weight', [cfg.n_ctx, C]]];
  for (let i = 0; i < cfg.n_layer; i++) {
    const p = `blocks.${i}.`;
    out.push(
      [`${p}ln1.weight`, [C]], [`${p}ln1.bias`, [C]],
      [`${p}attn.qkv.weight`, [3 * C, C]], [`${p}attn.qkv.bias`, [3 * C]],
      [`${p}attn.proj.weight`, [C, C]], [`${p}attn.proj.bias`, [C]],
      [`${p}ln2.weight`, [C]], [`${p}ln2.bias`, [C]],
      [`${p}mlp.fc.weight`, [F, C]], [`${p}mlp.fc.bias`, [F]],
      [`${p}mlp.proj.weight`, [C, F]], [`${p}mlp.proj.bias`, [C]],
    );
  }
  out.push(['ln_f.weight', [C]], ['ln_f.bias', [C]]);
  return out;
}

/** Manifest `config` (GPTConfig.to_dict) or a preset name → config object. */
export function configFrom(x) {
  if (typeof x === 'string') return getPreset(x);
  const cfg = { ...x };
  cfg.vocab_size ??= GPT2_VOCAB;
  cfg.layer_norm_eps ??= 1e-5;
  return cfg;
}

// tfjs-backend-wasm (and cpu) run a matmul with a transposed operand several times slower than a
// plain one (1.3 s vs 0.2 s for the [512,64]·[64,50257] LM head), so on those backends
// x·Wᵀ transposes W explicitly and gets a gradient made of plain matmuls. GPU backends fold the
// transpose into the shader and keep tf.matMul's own gradient.
const EXPLICIT_TRANSPOSE = new Set(['wasm', 'cpu']);
// Scatter/gather over the 25.7 M-entry logits are cheap on CPU backends and on WebGPU (its
// ScatterNd dispatches one atomic add per update: O(N·C), not O(N·V·C)), but pathological in
// tfjs's WebGL shaders (every output texel loops over all updates), so only WebGL uses one-hot
// products — which on WebGPU cost as many FLOPs as the LM head and an [N, V] float one-hot.
// tf.env flag AILO_SPARSE_GRADS (default on) lets bench/webgpu.py time WebGPU's old one-hot path.
tf.env().registerFlag('AILO_SPARSE_GRADS', () => true);
const cpuLike = () => EXPLICIT_TRANSPOSE.has(tf.getBackend()) || (tf.getBackend() !== 'webgl' && tf.env().getBool('AILO_SPARSE_GRADS'));
const oneHotF32 = (ids, depth) => tf.cast(tf.oneHot(ids, depth), 'float32');  // wasm's float32 OneHot is broken

/** a [M, K] · b[N, K]ᵀ → [M, N] (torch's F.linear without bias). */
export function matmulNT(a, b) {
  if (!EXPLICIT_TRANSPOSE.has(tf.getBackend())) return tf.matMul(a, b, false, true);
  const f = tf.customGrad((x, w, save) => {
    save([x, w]);
    return {
      value: tf.matMul(x, tf.transpose(w)),
      gradFunc: (dy, [xs, ws]) => [tf.matMul(dy, ws), tf.matMul(tf.transpose(dy), xs)],
    };
  });
  return f(a, b);
}

function linear(x2d, w, b) {
  return tf.add(matmulNT(x2d, w), b);
}

function layerNorm(x, w, b, eps) {
  if (wgslKernels() && x.shape.length === 2) return layerNormFused(x, w, b, eps);
  const { mean, variance } = tf.moments(x, -1, true);  // biased variance, as torch
  return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))), w), b);
}

const GELU_C = Math.sqrt(2 / Math.PI);

function geluTanh(x) {
  if (wgslKernels()) return geluTanhFused(x);
  const inner = tf.mul(tf.add(x, tf.mul(tf.mul(tf.mul(x, x), x), 0.044715)), GELU_C);
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.tanh(inner), 1));
}

/** table[idx] whose gradient is a scatter-add (works on every backend). */
function embedding(table, idxFlat) {
  const [V, C] = table.shape;
  // Tensors a gradFunc uses must go through save(): the forward's scope is disposed before backward.
  const f = tf.customGrad((tbl, save) => {
    save([idxFlat]);
    return {
      value: tf.gather(tbl, idxFlat),
      gradFunc: (dy, [ids]) => (cpuLike()
        ? tf.scatterND(tf.reshape(ids, [-1, 1]), dy, [V, C])
        : tf.matMul(oneHotF32(ids, V), dy, true, false)),
    };
  });
  return f(table);
}

/** Mean cross-entropy of logits [N, V] against int32 targets [N] (torch's F.cross_entropy).
 *  Forward: logsumexp − logit[target] from one max/exp/sum sweep; backward: (softmax − onehot)/N
 *  from the saved exponentials. CPU backends and WebGPU pick and patch the N target entries
 *  with gather/scatter; WebGL uses a one-hot mask. */
export function crossEntropy(logits, targets) {
  const [N, V] = logits.shape;
  const f = tf.customGrad((lg, save) => {
    const z = tf.sub(lg, tf.max(lg, 1, true));
    const e = tf.exp(z);
    const s = tf.sum(e, 1, true);
    const lse = tf.log(tf.reshape(s, [-1]));
    if (cpuLike()) {
      const rows = tf.range(0, N, 1, 'int32');
      const flat = tf.add(tf.mul(rows, tf.scalar(V, 'int32')), targets);
      save([e, s, tf.stack([rows, targets], 1), flat]);
      return {
        value: tf.mean(tf.sub(lse, tf.gather(tf.reshape(z, [-1]), flat))),
        gradFunc: (dy, [es, ss, at, fl]) => {
          const scale = tf.div(dy, N);
          const g = tf.mul(es, tf.div(scale, ss));
          return tf.tensorScatterUpdate(g, at, tf.sub(tf.gather(tf.reshape(g, [-1]), fl), scale));
        },
      };
    }
    const oh = oneHotF32(targets, V);
    save([e, s, oh]);
    return {
      value: tf.mean(tf.sub(lse, tf.sum(tf.mul(z, oh), 1))),
      gradFunc: (dy, [es, ss, o]) => {
        const scale = tf.div(dy, N);
        return tf.sub(tf.mul(es, tf.div(scale, ss)), tf.mul(o, scale));
      },
    };
  });
  return f(logits);
}

const masks = new Map();  // T → additive causal mask [T, T], kept for the page's lifetime

function causalMask(T) {
  const key = `${tf.getBackend()}:${T}`;
  if (!masks.has(key)) {
    masks.set(key, tf.tidy(() => tf.keep(tf.mul(tf.sub(1, tf.linalg.bandPart(tf.ones([T, T]), -1, 0)), -1e9))));
  }
  return masks.get(key);
}

/** Token + position embedding of int32 idx [B, T] → [B*T, C]. */
export function embed(cfg, wte, wpe, idx) {
  const [B, T] = idx.shape;
  if (T > cfg.n_ctx) throw new Error(`sequence of ${T} tokens exceeds context ${cfg.n_ctx}`);
  const C = cfg.n_embd;
  const x = tf.add(tf.reshape(embedding(wte, tf.reshape(idx, [-1])), [B, T, C]), tf.slice(wpe, [0, 0], [T, C]));
  return tf.reshape(x, [B * T, C]);
}

/** One pre-LN block on x [B*T, C]; `q(name)` gives the block's tensor `name` (e.g. 'ln1.weight').
 *  Exported for the slice trainer (slice.js), which runs blocks one at a time. */
export function block(cfg, q, x, B, T) {
  const C = cfg.n_embd, H = cfg.n_head, D = C / H, eps = cfg.layer_norm_eps;
  const N = B * T;
  const mask = causalMask(T);
  const scale = 1 / Math.sqrt(D);
  const heads = (z) => tf.transpose(tf.reshape(z, [B, T, H, D]), [0, 2, 1, 3]);
  const h = layerNorm(x, q('ln1.weight'), q('ln1.bias'), eps);
  const qkv = linear(h, q('attn.qkv.weight'), q('attn.qkv.bias'));
  const [qh, k, v] = tf.split(qkv, 3, 1).map(heads);
  const att = tf.softmax(tf.add(tf.mul(tf.matMul(qh, k, false, true), scale), mask));
  const y = tf.reshape(tf.transpose(tf.matMul(att, v), [0, 2, 1, 3]), [N, C]);
  x = tf.add(x, linear(y, q('attn.proj.weight'), q('attn.proj.bias')));
  const h2 = layerNorm(x, q('ln2.weight'), q('ln2.bias'), eps);
  return tf.add(x, linear(geluTanh(linear(h2, q('mlp.fc.weight'), q('mlp.fc.bias'))), q('mlp.proj.weight'), q('mlp.proj.bias')));
}

/** Final LayerNorm. */
export function finalNorm(cfg, x, w, b) {
  return layerNorm(x, w, b, cfg.layer_norm_eps);
}

/** Pure forward: p = {name: tensor}, idx int32 [B, T] → final hidden states [B*T, C]. */
export function hidden(cfg, p, idx) {
  const [B, T] = idx.shape;
  let x = embed(cfg, p['wte.weight'], p['wpe.weight'], idx);
  for (let i = 0; i < cfg.n_layer; i++) x = block(cfg, (n) => p[`blocks.${i}.${n}`], x, B, T);
  return finalNorm(cfg, x, p['ln_f.weight'], p['ln_f.bias']);
}

/** Logits [B*T, V] (tied output matrix = wte). */
export function logits(cfg, p, idx) {
  return matmulNT(hidden(cfg, p, idx), p['wte.weight']);
}

export function lossFn(cfg, p, idx, targets) {
  return crossEntropy(logits(cfg, p, idx), tf.reshape(targets, [-1]));
}

let modelCounter = 0;

/** A trainable GPT: tf.Variables named like the torch parameters. */
export class GPT {
  /** `weights`: Map name → {shape, data: Float32Array} (e.g. from assembleTensors), or null for a seeded init. */
  constructor(config, weights = null, seed = 0) {
    this.cfg = configFrom(config);
    this.shapes = paramShapes(this.cfg);
    this.names = this.shapes.map(([n]) => n);
    this.id = ++modelCounter;
    this.params = {};
    if (weights) {
      for (const [name, shape] of this.shapes) {
        const w = weights instanceof Map ? weights.get(name) : weights[name];
        if (!w) throw new Error(`weights lack tensor ${name}`);
        if (w.shape.join(',') !== shape.join(',')) throw new Error(`tensor ${name}: shape [${w.shape}] but the model needs [${shape}]`);
        this.params[name] = tf.variable(tf.tensor(w.data, shape, 'float32'), true, `ailo${this.id}/${name}`);
      }
    } else {
      this.initParameters(seed);
    }
  }

  /** GPT-2 init (N(0, 0.02), residual projections /sqrt(2L), LayerNorm 1/0, biases 0). Same
   *  distribution as ailo.model.GPT.reset_parameters, not the same random numbers. */
  initParameters(seed) {
    const resid = 0.02 / Math.sqrt(2 * this.cfg.n_layer);
    this.shapes.forEach(([name, shape], i) => {
      const t = tf.tidy(() => {
        if (name.endsWith('bias')) return tf.zeros(shape);
        if (name.includes('.ln') || name.startsWith('ln_')) return tf.ones(shape);
        return tf.randomNormal(shape, 0, name.endsWith('proj.weight') ? resid : 0.02, 'float32', seed * 1000 + i);
      });
      if (this.params[name]) { this.params[name].assign(t); t.dispose(); } else this.params[name] = tf.variable(t, true, `ailo${this.id}/${name}`);
    });
  }

  variables() { return this.names.map((n) => this.params[n]); }

  /** Scalar loss tensor (caller disposes). */
  loss(idx, targets) { return lossFn(this.cfg, this.params, idx, targets); }

  /** {loss: scalar tensor, grads: {name: tensor}}; the caller disposes both. */
  lossAndGrads(idx, targets) {
    const names = this.names;
    const f = (...ps) => lossFn(this.cfg, Object.fromEntries(names.map((n, i) => [n, ps[i]])), idx, targets);
    const { value, grads } = tf.valueAndGrads(f)(this.variables());
    return { loss: value, grads: Object.fromEntries(names.map((n, i) => [n, grads[i]])) };
  }

  /** Current weights as Map name → {shape, data: Float32Array}. */
  async getWeights() {
    const out = new Map();
    for (const [name, shape] of this.shapes) out.set(name, { shape, dtype: 'F32', data: await this.params[name].data() });
    return out;
  }

  setWeights(weights) {
    for (const [name, shape] of this.shapes) {
      const w = weights instanceof Map ? weights.get(name) : weights[name];
      tf.tidy(() => this.params[name].assign(tf.tensor(w.data, shape, 'float32')));
    }
  }

  numParameters() { return this.shapes.reduce((s, [, sh]) => s + sh.reduce((a, b) => a * b, 1), 0); }

  dispose() { for (const v of this.variables()) v.dispose(); }
}
