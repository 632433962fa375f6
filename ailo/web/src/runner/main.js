// The page's own code on WebGPU outside the browser: `node ailo/web/node/runner.mjs CMD JOB.json`
// (the bundle ailo/web/build.mjs makes of this file). It imports the modules the page bundles
// (model, train, span, codecs, patching, client, wallet) through ../index.js — one code base —
// after dawn.js has installed Dawn as navigator.gpu and shims.js IndexedDB.
//
// Commands (JOB is a JSON file; the answer is one JSON line on stdout):
//   info    backend and adapter
//   grads   {backend, preset, weights, batches, out}  loss + every gradient (safetensors at `out`)
//   train   {backend, preset, weights, batches, config, out}  trainLocal → Δ (safetensors at `out`)
//   span    {backend, spec, files, spans: [{start, end, steps}]}  BrowserSpan prefill + cached decode
//   round   {backend, coordinator, username, seed, tokens, rounds}  contributeRound, signed, end to end
//   bench   {backend, preset, batch, seq, steps, warmup}  trainLocal tokens/s
//   profile {backend, preset, batch, seq, top}  kernel times of one step
// Every job may carry tfFlags {name: value} set with tf.env().set (AILO_WGSL_KERNELS, AILO_SPARSE_GRADS).
//   spanbench {backend, spec, start, end, prompt, decode}  span forward timing on random weights
//   slicegrads {backend, chunks, units: [a, b] | names, batches, micro, out}  SliceModel loss + the slice's gradients
//   slicebench {backend, chunks, units, batch, seq, steps, warmup, micro}  trainSlice tokens/s (frozen blocks streamed)
import './shims.js';
import { gpu } from './dawn.js';
import { readFileSync, writeFileSync } from 'node:fs';
import * as ailo from '../index.js';
import { profileStep, randomTokenBatches, spanBench, trainBench } from './bench.js';
import { sliceBench, sliceGrads } from './slice.js';

const tf = ailo.tfjs;

function readWeights(path) {
  const { tensors } = ailo.parseSafetensors(new Uint8Array(readFileSync(path)));
  return new Map([...tensors].map(([n, t]) => [n, { shape: t.shape, data: ailo.toFloat32(t.dtype, t.bytes) }]));
}

const readBatches = (path) => JSON.parse(readFileSync(path, 'utf8')).map(([xs, ys]) =>
  ({ x: Int32Array.from(xs.flat()), y: Int32Array.from(ys.flat()), batch: xs.length, seq: xs[0].length }));

async function grads(job) {
  const model = new ailo.GPT(job.preset, readWeights(job.weights));
  const [b] = readBatches(job.batches);
  const x = tf.tensor2d(b.x, [b.batch, b.seq], 'int32'), y = tf.tensor2d(b.y, [b.batch, b.seq], 'int32');
  const t0 = performance.now();
  const { loss, grads: g } = model.lossAndGrads(x, y);
  const lossValue = (await loss.data())[0];
  const ms = performance.now() - t0;
  const out = new Map();
  for (const n of model.names) out.set(n, { shape: g[n].shape, data: await g[n].data() });
  writeFileSync(job.out, ailo.serializeSafetensors(out));
  tf.dispose([x, y, loss, ...Object.values(g)]);
  model.dispose();
  return { loss: lossValue, ms };
}

async function train(job) {
  const model = new ailo.GPT(job.preset, readWeights(job.weights));
  const r = await ailo.trainLocal(model, readBatches(job.batches), job.config);
  writeFileSync(job.out, ailo.encodeUpdate(r.delta));
  model.dispose();
  return { losses: r.losses, nSamples: r.nSamples, tokens: r.tokens, steps: r.steps, trainLoss: r.trainLoss };
}

/** The span's tensors from the checkpoint's safetensors files (names as spanTensorNames). */
function spanWeights(spec, files, start, end) {
  const all = new Map();
  for (const f of files) for (const [n, t] of readWeights(f)) all.set(n, t);
  const names = ailo.spanTensorNames(spec, start, end, all.has('lm_head.weight'));
  return new Map(names.map((n) => [n, all.get(n)]));
}

/** Every span of `job.spans` ({start, end, steps}) of the checkpoint: prefill + cached decode. */
async function span(job) {
  const results = [];
  for (const { start, end, steps } of job.spans) {
    const s = new ailo.BrowserSpan(job.spec, start, end, spanWeights(job.spec, job.files, start, end));
    const cache = new ailo.SpanCache();
    const outs = [];
    for (const x of steps) {
      const input = start === 0 ? Int32Array.from(x) : Float32Array.from(x);
      const r = await s.forward(input, cache.length, cache);
      outs.push({ shape: r.shape, data: Array.from(r.data) });
    }
    cache.dispose();
    s.dispose();
    results.push({ start, end, names: s.names, outs });
  }
  return { spans: results, tensors: tf.memory().numTensors };
}

/** `rounds` federated rounds as the page's "Train" button does them: register the wallet,
 *  then contributeRound (task → model, fp32 chunks or bf16 + int8 patches → trainLocal → codec →
 *  signed submit → verdict). */
async function round(job) {
  const client = new ailo.CoordinatorClient(job.coordinator);
  const wallet = job.seed ? await ailo.Wallet.fromSeed(ailo.fromHex(job.seed)) : await ailo.Wallet.generate();
  await client.register(await wallet.registerTx(job.username));
  wallet.username = job.username; wallet.registered = true;
  const holder = new ailo.ModelHolder(client, { format: job.format || 'auto', dbName: 'runner-chunks' });
  const tokens = Int32Array.from(JSON.parse(readFileSync(job.tokens, 'utf8')));
  const rounds = [];
  for (let i = 0; i < (job.rounds || 1); i++) {
    const r = await ailo.contributeRound({ client, wallet, holder, tokens, seed: (job.seed_batches || 1) + i });
    rounds.push({
      status: r.status, codec: r.codec, backend: r.backend, device: r.device, version: r.task && r.task.version, reply: r.reply,
      losses: r.result && r.result.losses, model: { ...holder.stats, version: holder.manifest && holder.manifest.version, notes: holder.notes },
    });
    if (r.status !== 'submitted') break;  // the next call waits (task 'wait') until the next round opens
  }
  return { address: wallet.address, rounds, bytesDownloaded: holder.bytesDownloaded };
}

const COMMANDS = {
  info: async () => ({}),
  grads, train, span, round,
  bench: (job) => trainBench(ailo, job),
  profile: (job) => profileStep(ailo, job),
  spanbench: (job) => spanBench(ailo, job),
  slicegrads: (job) => sliceGrads(ailo, job, readBatches),
  slicebench: (job) => sliceBench(ailo, job, randomTokenBatches),
};

async function main() {
  const [cmd, jobPath] = process.argv.slice(2);
  if (!COMMANDS[cmd]) throw new Error(`unknown command ${cmd}; use one of ${Object.keys(COMMANDS).join(', ')}`);
  const job = jobPath ? JSON.parse(readFileSync(jobPath, 'utf8')) : {};
  const backend = await ailo.useBackend(job.backend || 'webgpu');
  for (const [k, v] of Object.entries(job.tfFlags || {})) ailo.tfjs.env().set(k, v);  // e.g. {AILO_WGSL_KERNELS: false}
  const result = await COMMANDS[cmd](job);
  return { ok: true, command: cmd, ...ailo.backendInfo(), backend, ...result };
}

main().then((r) => {
  process.stdout.write(JSON.stringify(r) + '\n');
  process.exit(0);  // a live Dawn device keeps Node's event loop alive
}, (e) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String((e && e.stack) || e) }) + '\n');
  process.exit(1);
});
export { gpu };
