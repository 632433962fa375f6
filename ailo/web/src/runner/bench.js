// Speed of the page's training and span code on the runner's backend (bench/webgpu.py drives it):
// trainLocal tokens/s on random tokens, a per-kernel profile of one training step, and the
// forward of a room span (prefill + cached decode) on random weights.

const now = () => performance.now();

export function* randomTokenBatches(vocab, batch, seq, seed) {
  let s = seed >>> 0;
  for (;;) {
    const x = new Int32Array(batch * seq), y = new Int32Array(batch * seq);
    for (let i = 0; i < x.length; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0; x[i] = s % vocab;
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0; y[i] = s % vocab;
    }
    yield { x, y, batch, seq };
  }
}

/** trainLocal (the page's function, AdamW + clipping) on random init and tokens: `warmup` steps
 *  first (shader compilation, buffer pools), then `steps` timed steps. */
export async function trainBench(ailo, { preset = 'ailo-small', batch = 8, seq = null, steps = 10, warmup = 3, lr = 1e-3 }) {
  const tf = ailo.tfjs;
  const model = new ailo.GPT(preset, null, 0);
  const T = seq || model.cfg.n_ctx;
  const batches = randomTokenBatches(model.cfg.vocab_size, batch, T, 1);
  const cfg = { steps: warmup, batch_size: batch, lr, optimizer: 'adamw', grad_clip: 1.0 };
  const t0 = now();
  await ailo.trainLocal(model, batches, cfg, { yieldEvery: 0 });
  const warmupS = (now() - t0) / 1000;
  const r = await ailo.trainLocal(model, batches, { ...cfg, steps }, { yieldEvery: 0 });
  const out = {
    preset, batch, seq: T, steps: r.steps, warmupSteps: warmup, warmupSeconds: warmupS, seconds: r.seconds,
    stepMs: (1000 * r.seconds) / r.steps, tokensPerS: r.tokens / r.seconds, losses: r.losses,
    params: model.numParameters(), memory: tf.memory(),
  };
  model.dispose();
  return out;
}

/** Kernel times (GPU timestamps where the backend has them) of one forward+backward+AdamW step,
 *  summed per kernel and per kernel+shapes, largest first. */
export async function profileStep(ailo, { preset = 'ailo-small', batch = 8, seq = null, top = 25 }) {
  const tf = ailo.tfjs;
  const model = new ailo.GPT(preset, null, 0);
  const T = seq || model.cfg.n_ctx;
  const it = randomTokenBatches(model.cfg.vocab_size, batch, T, 2);
  const opt = new ailo.AdamW(model.variables(), { lr: 1e-3 });
  const step = () => {
    const { x, y } = it.next().value;
    return tf.tidy(() => {
      const { loss, grads } = model.lossAndGrads(tf.tensor2d(x, [batch, T], 'int32'), tf.tensor2d(y, [batch, T], 'int32'));
      const g = model.names.map((n) => grads[n]);
      opt.step(g, 1e-3, ailo.clipCoefficient(g, 1.0));  // as trainLocal does
      return loss;
    });
  };
  for (let i = 0; i < 2; i++) { const l = step(); await l.data(); l.dispose(); }  // compile shaders first
  const t0 = now();
  const info = await tf.profile(async () => { const l = step(); await l.data(); l.dispose(); });
  const wallMs = now() - t0;
  const byKernel = new Map(), byShape = new Map();
  let total = 0;
  for (const k of info.kernels) {
    const ms = Number(await k.kernelTimeMs) || 0;
    total += ms;
    const a = byKernel.get(k.name) || { kernel: k.name, ms: 0, calls: 0 };
    a.ms += ms; a.calls += 1; byKernel.set(k.name, a);
    const key = `${k.name} ${k.inputShapes.map((s) => `[${s}]`).join('')}`;
    const b = byShape.get(key) || { kernel: key, ms: 0, calls: 0 };
    b.ms += ms; b.calls += 1; byShape.set(key, b);
  }
  const sorted = (m) => [...m.values()].sort((p, q) => q.ms - p.ms).slice(0, top).map((e) => ({ ...e, ms: +e.ms.toFixed(3), share: +(e.ms / total).toFixed(4) }));
  opt.dispose(); model.dispose();
  return { preset, batch, seq: T, kernels: info.kernels.length, kernelMs: total, wallMs, byKernel: sorted(byKernel), byShape: sorted(byShape) };
}

function randomWeights(tf, names, spec, start, end, seed) {
  // Shapes from the spec (Llama/Qwen names); N(0, 0.02) values, RMSNorm weights 1.
  const H = spec.hidden, D = spec.head_dim, I = spec.intermediate;
  const shape = (n) => {
    if (/embed_tokens|lm_head/.test(n)) return [spec.vocab, H];
    if (/layernorm|norm\.weight/.test(n)) return [H];
    if (/q_proj\.weight/.test(n)) return [spec.n_heads * D, H];
    if (/[kv]_proj\.weight/.test(n)) return [spec.n_kv_heads * D, H];
    if (/o_proj\.weight/.test(n)) return [H, spec.n_heads * D];
    if (/(gate|up)_proj\.weight/.test(n)) return [I, H];
    if (/down_proj\.weight/.test(n)) return [H, I];
    throw new Error(`no shape for ${n}`);
  };
  let s = seed >>> 0;
  return new Map(names.map((n) => {
    const sh = shape(n);
    const data = new Float32Array(sh.reduce((a, b) => a * b, 1));
    if (sh.length === 1) data.fill(1);
    else for (let i = 0; i < data.length; i++) { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; data[i] = ((s / 4294967296) - 0.5) * 0.07; }
    return [n, { shape: sh, data }];
  }));
}

/** A room span's forward (the page's BrowserSpan) on random weights: prefill of `prompt` tokens,
 *  then `decode` single-token steps with the KV cache; `repeats` requests after one warm-up. */
export async function spanBench(ailo, { spec, start, end, prompt = 128, decode = 32, repeats = 3 }) {
  const tf = ailo.tfjs;
  const names = ailo.spanTensorNames(spec, start, end, !spec.tie_embeddings);
  const span = new ailo.BrowserSpan(spec, start, end, randomWeights(tf, names, spec, start, end, 5));
  const input = (T) => (start === 0 ? Int32Array.from({ length: T }, (_, i) => (i * 7919) % spec.vocab)
    : Float32Array.from({ length: T * spec.hidden }, (_, i) => Math.sin(i) * 0.5));
  const request = async () => {
    const cache = new ailo.SpanCache();
    const t0 = now();
    await span.forward(input(prompt), 0, cache);
    const t1 = now();
    for (let i = 0; i < decode; i++) await span.forward(input(1), cache.length, cache);
    const t2 = now();
    cache.dispose();
    return { prefillMs: t1 - t0, decodeMsPerToken: (t2 - t1) / decode };
  };
  await request();
  const runs = [];
  for (let i = 0; i < repeats; i++) runs.push(await request());
  const med = (k) => runs.map((r) => r[k]).sort((a, b) => a - b)[Math.floor(runs.length / 2)];
  span.dispose();
  return { start, end, prompt, decode, prefillMs: med('prefillMs'), prefillTokensPerS: (1000 * prompt) / med('prefillMs'),
    decodeMsPerToken: med('decodeMsPerToken'), decodeTokensPerS: 1000 / med('decodeMsPerToken'), runs };
}
