// Local training in the page (SPEC R3 browser side, R4 step 2), mirroring ailo/training.py:
// `trainLocal` runs S steps of AdamW (betas 0.9/0.95, eps 1e-8, decoupled weight decay) or
// SGD, clips the global gradient norm like torch.nn.utils.clip_grad_norm_, optional linear
// warm-up, and returns the pseudo-gradient Δ = M_start − M_end in float32 with n_k (samples
// seen) and the mean train loss. `encodeUpdate(Δ)` gives the update body: a safetensors file
// with the model's own tensor names, byte-identical to `safetensors.torch.save` of the same Δ.
import * as tf from '@tensorflow/tfjs';
import { serializeSafetensors } from './safetensors.js';
import { fusedAdamW, fusedAdamWAvailable, sumSquaresFused, wgslKernels } from './webgpu_kernels.js';

export const DEFAULT_TRAIN_CONFIG = Object.freeze({
  steps: 20, batchSize: 8, lr: 3e-3, optimizer: 'adamw', weightDecay: 0.0, gradClip: 1.0, warmupSteps: 0,
});

/** Coordinator task / Python TrainConfig field names → the JS config. */
export function trainConfigFrom(x = {}) {
  const pick = (...keys) => keys.map((k) => x[k]).find((v) => v !== undefined && v !== null);
  const c = { ...DEFAULT_TRAIN_CONFIG };
  c.steps = pick('steps') ?? c.steps;
  c.batchSize = pick('batchSize', 'batch_size') ?? c.batchSize;
  c.lr = pick('lr', 'learning_rate') ?? c.lr;
  c.optimizer = pick('optimizer') ?? c.optimizer;
  c.weightDecay = pick('weightDecay', 'weight_decay') ?? c.weightDecay;
  c.gradClip = pick('gradClip', 'grad_clip') ?? c.gradClip;
  c.warmupSteps = pick('warmupSteps', 'warmup_steps') ?? c.warmupSteps;
  if (!['adamw', 'sgd'].includes(c.optimizer)) throw new Error(`unknown optimizer ${c.optimizer}; use adamw or sgd`);
  return c;
}

/** torch.optim.AdamW semantics (amsgrad off, maximize off). */
export class AdamW {
  constructor(vars, { lr, betas = [0.9, 0.95], eps = 1e-8, weightDecay = 0 }) {
    this.vars = vars;
    this.lr = lr; this.b1 = betas[0]; this.b2 = betas[1]; this.eps = eps; this.wd = weightDecay;
    this.t = 0;
    this.m = vars.map((v) => tf.variable(tf.zerosLike(v), false));
    this.v = vars.map((v) => tf.variable(tf.zerosLike(v), false));
  }

  /** `coef` (optional scalar tensor): the gradients are used times coef (gradient clipping). */
  step(grads, lr = this.lr, coef = null) {
    this.t += 1;
    const bc1 = 1 - this.b1 ** this.t;
    const bc2sqrt = Math.sqrt(1 - this.b2 ** this.t);
    const stepSize = lr / bc1;
    if (fusedAdamWAvailable()) {  // WebGPU: 3 WGSL dispatches per tensor instead of ~15 stock ops
      const hp = { b1: this.b1, b2: this.b2, eps: this.eps, decay: 1 - lr * this.wd, stepSize, bc2sqrt };
      tf.tidy(() => {
        const c = coef ? tf.reshape(coef, [1]) : tf.ones([1]);
        this.vars.forEach((p, i) => {
          const [p2, m2, v2] = fusedAdamW(p, this.m[i], this.v[i], grads[i], c, hp);
          this.m[i].assign(m2); this.v[i].assign(v2); p.assign(p2);
        });
      });
      return;
    }
    // One tensor at a time, each intermediate freed as soon as it is used: a slice's [V, C]
    // embedding would otherwise hold ~14 temporaries of 321 MB (ailo-1b) in a 4 GiB wasm heap.
    this.vars.forEach((p, i) => tf.tidy(() => {
      const g = coef ? tf.mul(grads[i], coef) : grads[i];
      if (this.wd) p.assign(tf.tidy(() => tf.mul(p, 1 - lr * this.wd)));
      const m = tf.tidy(() => tf.add(tf.mul(this.m[i], this.b1), tf.mul(g, 1 - this.b1)));
      this.m[i].assign(m);
      const v = tf.tidy(() => tf.add(tf.mul(this.v[i], this.b2), tf.mul(tf.mul(g, g), 1 - this.b2)));
      this.v[i].assign(v);
      if (g !== grads[i]) g.dispose();
      const upd = tf.tidy(() => tf.mul(tf.div(m, tf.add(tf.div(tf.sqrt(v), bc2sqrt), this.eps)), stepSize));
      p.assign(tf.tidy(() => tf.sub(p, upd)));
    }));
  }

  dispose() { for (const t of [...this.m, ...this.v]) t.dispose(); }
}

/** torch.optim.SGD semantics (no momentum; weight decay added to the gradient). */
export class SGD {
  constructor(vars, { lr, weightDecay = 0 }) { this.vars = vars; this.lr = lr; this.wd = weightDecay; }

  step(grads, lr = this.lr, coef = null) {
    tf.tidy(() => {
      this.vars.forEach((p, i) => {
        const gc = coef ? tf.mul(grads[i], coef) : grads[i];
        const g = this.wd ? tf.add(gc, tf.mul(p, this.wd)) : gc;
        p.assign(tf.sub(p, tf.mul(g, lr)));
      });
    });
  }

  dispose() {}
}

export function makeOptimizer(model, cfg) {
  const vars = model.variables();
  if (cfg.optimizer === 'adamw') return new AdamW(vars, { lr: cfg.lr, weightDecay: cfg.weightDecay });
  if (cfg.optimizer === 'sgd') return new SGD(vars, { lr: cfg.lr, weightDecay: cfg.weightDecay });
  throw new Error(`unknown optimizer ${cfg.optimizer}`);
}

/** Σ of same-shape tensors, at most 4 per addN: WebGPU's AddN binds one storage buffer per input
 *  and the default device allows 8 per shader stage (a 6-layer model has 76 gradients). */
export function sumAll(ts) {
  let level = ts;
  while (level.length > 1) {
    const next = [];
    for (let i = 0; i < level.length; i += 4) next.push(level.length - i === 1 ? level[i] : tf.addN(level.slice(i, i + 4)));
    level = next;
  }
  return level[0];
}

/** torch.nn.utils.clip_grad_norm_: g ← g · min(1, max_norm / (‖g‖₂ + 1e-6)), over all tensors. */
export function clipGradNorm(grads, maxNorm) {
  return tf.tidy(() => {
    const coef = clipCoefficient(grads, maxNorm);
    return grads.map((g) => tf.mul(g, coef));
  });
}

/** Σ g² of one tensor. On WebGPU a large one goes through strided partial sums in WGSL
 *  (webgpu_kernels.js): tfjs's full reduction runs one workgroup over every entry. */
export function sumSquares(g) {
  return wgslKernels() && g.size >= 1 << 16 ? sumSquaresFused(g) : tf.sum(tf.square(g));
}

/** The scalar min(1, max_norm / (‖g‖₂ + 1e-6)) of clip_grad_norm_, left on the device. */
export function clipCoefficient(grads, maxNorm) {
  return tf.tidy(() => {
    const total = tf.sqrt(sumAll(grads.map(sumSquares)));
    return tf.minimum(tf.div(maxNorm, tf.add(total, 1e-6)), 1);
  });
}

/** A deterministic PRNG (mulberry32) for window sampling in the page. */
export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Endless batches {x: Int32Array, y: Int32Array, batch, seq} of random windows of a token stream. */
export function* randomBatches(tokens, batchSize, seqLen, seed = 0) {
  if (tokens.length <= seqLen + 1) throw new Error(`text of ${tokens.length} tokens is shorter than one window of ${seqLen + 1}`);
  const rand = mulberry32(seed);
  for (;;) {
    const x = new Int32Array(batchSize * seqLen);
    const y = new Int32Array(batchSize * seqLen);
    for (let b = 0; b < batchSize; b++) {
      const s = Math.floor(rand() * (tokens.length - seqLen - 1));
      for (let t = 0; t < seqLen; t++) { x[b * seqLen + t] = tokens[s + t]; y[b * seqLen + t] = tokens[s + t + 1]; }
    }
    yield { x, y, batch: batchSize, seq: seqLen };
  }
}

const nextTick = () => new Promise((r) => setTimeout(r, 0));

/** Train `model` in place for at most cfg.steps batches; returns the pseudo-gradient.
 *  `batches`: iterable of {x, y, batch, seq} (Int32Array token ids). `onStep({step, steps, loss, tokensPerS})`. */
export async function trainLocal(model, batches, config = {}, { onStep = null, yieldEvery = 1 } = {}) {
  const cfg = trainConfigFrom(config);
  const vars = model.variables();
  const start = vars.map((v) => tf.clone(v));
  const opt = makeOptimizer(model, cfg);
  const losses = [];
  let nSamples = 0, tokens = 0;
  const it = batches[Symbol.iterator] ? batches[Symbol.iterator]() : batches;
  const t0 = performance.now();
  let pending = null;
  const settle = async ({ lossT, batch, seq }) => {
    const loss = (await lossT.data())[0];
    lossT.dispose();
    losses.push(loss);
    nSamples += batch;
    tokens += batch * seq;
    if (onStep) onStep({ step: losses.length, steps: cfg.steps, loss, tokens, seconds: (performance.now() - t0) / 1000 });
  };
  try {
    for (let step = 0; step < cfg.steps; step++) {
      const nx = it.next();
      if (nx.done) break;
      const { x, y, batch, seq } = nx.value;
      const lr = cfg.warmupSteps ? cfg.lr * Math.min(1, (step + 1) / cfg.warmupSteps) : cfg.lr;
      const lossT = tf.tidy(() => {
        const xi = tf.tensor2d(x, [batch, seq], 'int32');
        const yi = tf.tensor2d(y, [batch, seq], 'int32');
        const { loss, grads } = model.lossAndGrads(xi, yi);
        const g = model.names.map((n) => grads[n]);
        opt.step(g, lr, cfg.gradClip ? clipCoefficient(g, cfg.gradClip) : null);
        return loss;
      });
      // Read step k's loss only once step k+1 is queued: a GPU backend keeps computing while
      // the CPU records the next step (reading it at once would idle the GPU between steps).
      if (pending) await settle(pending);
      pending = { lossT, batch, seq };
      if (yieldEvery && (step + 1) % yieldEvery === 0) await nextTick();
    }
    if (pending) await settle(pending);
    pending = null;
    const seconds = (performance.now() - t0) / 1000;
    const delta = new Map();
    for (let i = 0; i < vars.length; i++) {
      const d = tf.sub(start[i], vars[i]);
      delta.set(model.names[i], { shape: model.shapes[i][1], dtype: 'F32', data: await d.data() });
      d.dispose();
    }
    return {
      delta, nSamples, tokens, steps: losses.length, seconds, losses,
      trainLoss: losses.reduce((a, b) => a + b, 0) / Math.max(1, losses.length),
    };
  } finally {
    if (pending) pending.lossT.dispose();
    start.forEach((t) => t.dispose());
    opt.dispose();
  }
}

/** The update body: Δ as a safetensors file (F32, model tensor names). */
export function encodeUpdate(delta) {
  return serializeSafetensors(delta);
}

/** M ← M − scale·Δ (what the coordinator does with an aggregate), for local checks. */
export function applyDelta(model, delta, scale = 1) {
  tf.tidy(() => {
    for (const [name, d] of delta) {
      const p = model.params[name];
      p.assign(tf.sub(p, tf.mul(tf.tensor(d.data, d.shape, 'float32'), scale)));
    }
  });
}
