// Training a slice of the model in the page (issue 26 part 3; the native worker's twin is
// ailo/federation/client/slice_training.py, the task rules ailo/federation/core/slices.py).
//
// A slice task names units (`embed` = wte + wpe, `blocks.i`; ln_f rides with the last block)
// and their tensors. Only those tensors live as trainable variables with their optimizer
// states and the start copy Δ needs; the frozen blocks are read from the verified chunk cache
// one block at a time (frozen.js) each time they are needed, and dropped after use:
// - forward, block by block: every micro-batch goes through the block while its weights are
//   loaded; the input of each block from the first trained unit on is kept (B·T·C floats);
// - the head (ln_f, tied wte) gives the loss and its gradient w.r.t. the last hidden state;
// - backward, block by block from the last: the block is run again on its kept input and
//   back-propagated (activation checkpointing), a frozen block for the input's gradient only;
// - the embedding gradient (when `embed` is trained) from the gradient of block 0's input.
// The same maths as the full model (tests/test_webgpu.py checks the gradients against
// PyTorch), the same optimizer, warm-up and clipping as trainLocal.
import * as tf from '@tensorflow/tfjs';
import { block, configFrom, crossEntropy, embed, finalNorm, matmulNT } from './model.js';
import { AdamW, SGD, clipCoefficient, trainConfigFrom } from './train.js';

const HEAD = ['ln_f.weight', 'ln_f.bias'];
const numel = (shape) => shape.reduce((a, b) => a * b, 1);

// Bytes per trained parameter (slices.py TRAINED_BYTES) and the planner's headroom.
const TRAINED_BYTES = { adamw: 20, sgd: 12 };
const HEADROOM = 0.06;

/** Peak bytes of a slice worker (slices.py slice_state_bytes): the slice's training state, the
 *  resident frozen embedding, one frozen block twice (read + parse) and the activations. */
export function sliceStateBytes(cfg, sliceParams, units, optimizer, microBatch, seq) {
  const C = cfg.n_embd, tokens = microBatch * seq;
  const emb = cfg.vocab_size * C + cfg.n_ctx * C;
  const blockParams = 4 * C + 3 * C * C + 3 * C + C * C + C + cfg.n_ffn * C + cfg.n_ffn + C * cfg.n_ffn + C;
  const trainedBlocks = units.filter((u) => u.startsWith('blocks.')).length;
  const perBlock = tokens * (34 * C + 5 * cfg.n_head * seq) * 4;
  const act = (trainedBlocks + 1) * perBlock + cfg.n_layer * tokens * C * 4 + 2 * tokens * cfg.vocab_size * 4;
  return (TRAINED_BYTES[optimizer] || 20) * sliceParams + (units.includes('embed') ? 0 : 4 * emb) + 8 * blockParams + act;
}

/** The largest divisor of the batch whose slice state fits the budget (slices.py micro_batch_for). */
export function microBatchFor(cfg, slice, optimizer, batch, seq, budget) {
  if (!budget) return batch;
  for (let m = batch; m > 0; m--) {
    if (batch % m === 0 && sliceStateBytes(cfg, slice.params, slice.units, optimizer, m, seq) <= budget * (1 - HEADROOM)) return m;
  }
  return 1;
}

/** The slice's tensors as variables (+ their start values), everything else frozen. */
export class SliceModel {
  /** `source`: a ChunkTensors (or anything with `tensors(names)` and `block(i)`). */
  static async load(config, source, names) {
    const cfg = configFrom(config);
    const start = await source.tensors(names);
    const resident = await source.tensors(['wte.weight', 'wpe.weight', ...HEAD].filter((n) => !names.includes(n)));
    return new SliceModel(cfg, source, names, start, resident);
  }

  constructor(cfg, source, names, start, resident) {
    this.cfg = cfg; this.source = source; this.names = [...names]; this.start = start;
    this.params = new Map(this.names.map((n) => [n, tf.variable(tf.tensor(start.get(n).data, start.get(n).shape, 'float32'), true)]));
    this.frozen = new Map([...resident].map(([n, t]) => [n, tf.tensor(t.data, t.shape, 'float32')]));
    const blocks = this.names.filter((n) => n.startsWith('blocks.')).map((n) => Number(n.split('.')[1]));
    this.trained = new Set(blocks);
    this.embedTrained = this.names.includes('wte.weight') || this.names.includes('wpe.weight');
    // From which block on the inputs are kept and the backward runs.
    this.first = this.embedTrained ? 0 : Math.min(...blocks, cfg.n_layer);
    this.headTrained = HEAD.filter((n) => this.params.has(n)).concat(this.params.has('wte.weight') ? ['wte.weight'] : []);
  }

  get(n) { return this.params.get(n) || this.frozen.get(n); }

  variables() { return this.names.map((n) => this.params.get(n)); }

  /** Block i's weights as {names: short names, tensors, owned}: the slice's variables, or frozen ones read now. */
  async _blockWeights(i) {
    if (this.trained.has(i)) {
      const prefix = `blocks.${i}.`;
      const names = this.names.filter((n) => n.startsWith(prefix));
      return { names: names.map((n) => n.slice(prefix.length)), full: names, tensors: names.map((n) => this.params.get(n)), owned: false };
    }
    const w = await this.source.block(i);
    const names = [...w.keys()];
    return { names, full: null, tensors: names.map((n) => tf.tensor(w.get(n).data, w.get(n).shape, 'float32')), owned: true };
  }

  /** {loss: number, grads: Map name → tensor} of the mean loss over `micros`: [{x, y}] int32
   *  [m, T] tensor pairs, each weighted by its share of the batch. The caller disposes grads. */
  async lossAndGrads(micros) {
    const cfg = this.cfg, L = cfg.n_layer;
    const total = micros.reduce((s, m) => s + m.x.shape[0], 0);
    const grads = new Map();
    const addGrad = (name, g) => {
      const old = grads.get(name);
      grads.set(name, old ? tf.tidy(() => tf.add(old, g)) : tf.keep(g));
      if (old) { old.dispose(); g.dispose(); }
    };
    let xs = micros.map(({ x }) => tf.tidy(() => embed(cfg, this.get('wte.weight'), this.get('wpe.weight'), x)));
    const kept = [];  // kept[i][m]: input of block i (i >= first)
    for (let i = 0; i < L; i++) {
      const w = await this._blockWeights(i);
      const q = (n) => w.tensors[w.names.indexOf(n)];
      kept[i] = i >= this.first ? xs : null;
      const next = xs.map((x, m) => tf.tidy(() => block(cfg, q, x, micros[m].x.shape[0], micros[m].x.shape[1])));
      if (i < this.first) xs.forEach((x) => x.dispose());
      xs = next;
      if (w.owned) tf.dispose(w.tensors);
    }
    let loss = 0;
    const dx = [];
    const head = this.headTrained.map((n) => this.params.get(n));
    for (let m = 0; m < micros.length; m++) {
      const share = micros[m].x.shape[0] / total;
      const y = tf.reshape(micros[m].y, [-1]);
      const f = (hh, ...ps) => {
        const p = (n) => (this.headTrained.includes(n) ? ps[this.headTrained.indexOf(n)] : this.frozen.get(n));
        return tf.mul(crossEntropy(matmulNT(finalNorm(cfg, hh, p('ln_f.weight'), p('ln_f.bias')), p('wte.weight')), y), share);
      };
      const { value, grads: g } = tf.valueAndGrads(f)([xs[m], ...head]);
      loss += (await value.data())[0];
      tf.dispose([value, y, xs[m]]);
      this.headTrained.forEach((n, k) => addGrad(n, g[k + 1]));
      dx.push(g[0]);
    }
    for (let i = L - 1; i >= this.first; i--) {
      const w = await this._blockWeights(i);
      const needX = i > this.first || this.embedTrained;
      for (let m = 0; m < micros.length; m++) {
        const [B, T] = micros[m].x.shape;
        const x = kept[i][m];
        const args = [...(needX ? [x] : []), ...(w.owned ? [] : w.tensors)];
        const f = (...a) => {
          const xx = needX ? a[0] : x;
          const ws = w.owned ? w.tensors : a.slice(needX ? 1 : 0);
          return block(cfg, (n) => ws[w.names.indexOf(n)], xx, B, T);
        };
        const g = tf.grads(f)(args, dx[m]);
        dx[m].dispose();
        if (!w.owned) w.full.forEach((n, k) => addGrad(n, g[(needX ? 1 : 0) + k]));
        dx[m] = needX ? g[0] : null;
        x.dispose();
      }
      if (w.owned) tf.dispose(w.tensors);
    }
    if (this.embedTrained) {
      const which = ['wte.weight', 'wpe.weight'].filter((n) => this.params.has(n));
      micros.forEach(({ x }, m) => {
        const f = (...ps) => {
          const p = (n) => (which.includes(n) ? ps[which.indexOf(n)] : this.frozen.get(n));
          return embed(cfg, p('wte.weight'), p('wpe.weight'), x);
        };
        const g = tf.grads(f)(which.map((n) => this.params.get(n)), dx[m]);
        dx[m].dispose();
        which.forEach((n, k) => addGrad(n, g[k]));
      });
    }
    return { loss, grads };
  }

  dispose() {
    for (const t of [...this.params.values(), ...this.frozen.values()]) t.dispose();
    if (this.source.dispose) this.source.dispose();
  }
}

/** trainLocal for a slice: `batches` as trainLocal's, config a task / TrainConfig; each batch
 *  is run as micro-batches of `microBatch` sequences (gradients accumulated: the same mean
 *  loss). Returns trainLocal's result with Δ of the slice's tensors only; the start copies are
 *  released (`keepStart` keeps them for another call on the same model). */
export async function trainSlice(model, batches, config = {}, { onStep = null, microBatch = null, keepStart = false } = {}) {
  const cfg = trainConfigFrom(config);
  const vars = model.variables();
  const opt = cfg.optimizer === 'adamw' ? new AdamW(vars, { lr: cfg.lr, weightDecay: cfg.weightDecay }) : new SGD(vars, { lr: cfg.lr, weightDecay: cfg.weightDecay });
  const losses = [];
  let nSamples = 0, tokens = 0;
  const it = batches[Symbol.iterator] ? batches[Symbol.iterator]() : batches;
  const t0 = performance.now();
  try {
    for (let step = 0; step < cfg.steps; step++) {
      const nx = it.next();
      if (nx.done) break;
      const { x, y, batch, seq } = nx.value;
      const mb = Math.max(1, Math.min(batch, microBatch || batch));
      const micros = [];
      for (let b = 0; b < batch; b += mb) {
        const n = Math.min(mb, batch - b);
        micros.push({ x: tf.tensor2d(x.subarray(b * seq, (b + n) * seq), [n, seq], 'int32'),
          y: tf.tensor2d(y.subarray(b * seq, (b + n) * seq), [n, seq], 'int32') });
      }
      let res;
      try {
        res = await model.lossAndGrads(micros);
      } finally {
        micros.forEach((m) => tf.dispose([m.x, m.y]));
      }
      const lr = cfg.warmupSteps ? cfg.lr * Math.min(1, (step + 1) / cfg.warmupSteps) : cfg.lr;
      const g = model.names.map((n) => res.grads.get(n));
      const coef = cfg.gradClip ? clipCoefficient(g, cfg.gradClip) : null;
      opt.step(g, lr, coef);
      tf.dispose([...g, ...(coef ? [coef] : [])]);
      losses.push(res.loss);
      nSamples += batch;
      tokens += batch * seq;
      if (onStep) onStep({ step: losses.length, steps: cfg.steps, loss: res.loss, tokens, seconds: (performance.now() - t0) / 1000 });
      await new Promise((r) => setTimeout(r, 0));
    }
    const seconds = (performance.now() - t0) / 1000;
    const delta = new Map();
    for (const n of model.names) {  // Δ written over the read-back copy; the start copy is let go
      const d = await model.params.get(n).data();
      const s = model.start.get(n);
      for (let i = 0; i < d.length; i++) d[i] = s.data[i] - d[i];
      delta.set(n, { shape: s.shape, dtype: 'F32', data: d });
      if (!keepStart) model.start.delete(n);
    }
    return { delta, nSamples, tokens, steps: losses.length, seconds, losses,
      trainLoss: losses.reduce((a, b) => a + b, 0) / Math.max(1, losses.length) };
  } finally {
    opt.dispose();
  }
}

export { numel };
