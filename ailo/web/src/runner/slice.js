// Slice training (issue 26) in the runner: the page's SliceModel / trainSlice, reading frozen
// weights from a chunk directory (manifest.json + chunk files named by sha256, as
// ailo.chunks.write_chunks writes them) instead of IndexedDB — the same ChunkTensors, another
// byte source.
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';

/** {manifest, source} of a chunk directory; every chunk's size and sha256 is checked once. */
async function chunkDir(ailo, dir, keep = 2) {
  const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8'));
  for (const c of manifest.chunks) {
    if ((await stat(join(dir, c.sha256))).size !== c.size) throw new Error(`chunk ${c.index}: wrong size`);
    if (await ailo.sha256Hex(await readFile(join(dir, c.sha256))) !== c.sha256) throw new Error(`chunk ${c.index}: sha256 mismatch`);
  }
  const source = new ailo.ChunkTensors(manifest, async (info) => new Uint8Array(await readFile(join(dir, info.sha256))), { keep });
  return { manifest, source };
}

/** Tensor names of units [start, stop) (units: embed, blocks.0 … ; ln_f rides with the last block). */
function unitNames(manifest, start, stop) {
  const L = manifest.config.n_layer;
  const unitOf = (n) => {
    const m = /^blocks\.(\d+)\./.exec(n);
    if (m) return 1 + Number(m[1]);
    return n.startsWith('ln_f.') ? L : 0;
  };
  return Object.keys(manifest.tensors).filter((n) => unitOf(n) >= start && unitOf(n) < stop);
}

/** {chunks, names | units: [start, stop], batches (JSON file), micro, keep, out}: loss and the slice's gradients. */
export async function sliceGrads(ailo, job, readBatches) {
  const tf = ailo.tfjs;
  const { manifest, source } = await chunkDir(ailo, job.chunks, job.keep ?? 2);
  const names = job.names || unitNames(manifest, ...job.units);
  const model = await ailo.SliceModel.load(manifest.config, source, names);
  const [b] = readBatches(job.batches);
  const mb = job.micro || b.batch;
  const micros = [];
  for (let i = 0; i < b.batch; i += mb) {
    micros.push({ x: tf.tensor2d(b.x.subarray(i * b.seq, (i + mb) * b.seq), [mb, b.seq], 'int32'),
      y: tf.tensor2d(b.y.subarray(i * b.seq, (i + mb) * b.seq), [mb, b.seq], 'int32') });
  }
  const before = tf.memory().numTensors;
  const { loss, grads } = await model.lossAndGrads(micros);
  const out = new Map();
  for (const n of names) out.set(n, { shape: grads.get(n).shape, data: await grads.get(n).data() });
  const { writeFileSync } = await import('node:fs');
  writeFileSync(job.out, ailo.serializeSafetensors(out));
  tf.dispose([...grads.values(), ...micros.flatMap((m) => [m.x, m.y])]);
  const leaked = tf.memory().numTensors - before + 2 * micros.length;
  model.dispose();
  return { loss, names, leaked, bytesRead: source.bytesRead };
}

/** trainSlice tokens/s: {chunks, units: [start, stop], batch, seq, steps, warmup, micro}. */
export async function sliceBench(ailo, job, randomTokenBatches) {
  const tf = ailo.tfjs;
  const { manifest, source } = await chunkDir(ailo, job.chunks);
  const names = job.names || unitNames(manifest, ...job.units);
  const t0 = performance.now();
  const model = await ailo.SliceModel.load(manifest.config, source, names);
  const loadS = (performance.now() - t0) / 1000;
  const seq = job.seq || manifest.config.n_ctx;
  const batches = randomTokenBatches(manifest.config.vocab_size, job.batch || 1, seq, 1);
  const cfg = { batch_size: job.batch || 1, lr: job.lr || 1e-4, optimizer: 'adamw', grad_clip: 1.0 };
  const opts = { microBatch: job.micro || null };
  const w = job.warmup ?? 1;
  const t1 = performance.now();
  if (w) await ailo.trainSlice(model, batches, { ...cfg, steps: w }, { ...opts, keepStart: true });
  const warmupS = (performance.now() - t1) / 1000;
  const read0 = source.bytesRead;
  const r = await ailo.trainSlice(model, batches, { ...cfg, steps: job.steps || 3 }, opts);
  const params = names.reduce((s, n) => s + manifest.tensors[n].shape.reduce((a, c) => a * c, 1), 0);
  const out = { preset: manifest.preset, units: job.units || null, tensors: names.length, params, batch: cfg.batch_size, seq,
    steps: r.steps, loadSeconds: loadS, warmupSeconds: warmupS, seconds: r.seconds, stepMs: (1000 * r.seconds) / r.steps,
    tokensPerS: r.tokens / r.seconds, losses: r.losses, chunkBytesReadPerStep: (source.bytesRead - read0) / r.steps,
    memory: tf.memory() };
  model.dispose();
  return out;
}
