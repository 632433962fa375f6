// One federated round from the page, as the native worker does it (ailo/federation/client/worker.py).
import * as tf from '@tensorflow/tfjs';
import { ChunkCache, ChunkLoader, assembleTensors } from './chunks.js';
import { ChunkTensors, cacheChunks } from './frozen.js';
import { SliceModel, microBatchFor, trainSlice } from './slice.js';
import { patchedChunks } from './patching.js';
import { sha256Hex } from './hash.js';
import { GPT } from './model.js';
import { trainLocal, randomBatches } from './train.js';
import { CodecError, codecFromTask, compress } from './codecs.js';
import { ErrorFeedbackStore } from './feedbackstore.js';
import { submitSigned } from './upload.js';
import { withBackoff } from './backoff.js';
import { isRetryable } from './api.js';
import { deviceLabel } from './backend.js';

export { CoordinatorClient, HttpError, syncChain } from './api.js';

/** Keeps the current global model in memory, loading chunks through the IndexedDB cache.
 *
 *  `format`: 'fp32' (the master chunks), 'bf16' (the compact served model of a coordinator run
 *  with `--compact-downloads`) or 'auto' (bf16 when the coordinator serves it, else fp32). With
 *  bf16, a holder that has W_{v−1} — in memory, or after a reload from its cached chunks and the
 *  manifest kept in localStorage — fetches only the int8 patch to v (patching.js), verified chunk
 *  by chunk against the manifest's sha256; anything else loads the bf16 chunks.
 *
 *  `budget` (bytes, null = no limit): a model whose full training state (20 bytes a parameter:
 *  fp32 weight, gradient, two AdamW moments, start copy) exceeds it is never assembled in
 *  memory: `ensure` only verifies its chunks into IndexedDB (`streamed`), from where a slice
 *  task reads one block at a time (frozen.js, slice.js). */
export class ModelHolder {
  constructor(client, { onProgress = null, dbName = 'ailo-chunks', format = 'auto', budget = null } = {}) {
    this.client = client; this.onProgress = onProgress; this.dbName = dbName; this.format = format; this.budget = budget;
    this.streamed = false;
    this.manifest = null; this.tensors = null; this.stats = null; this.loadedFormat = null;
    this.bytesDownloaded = 0;  // chunk + patch bytes fetched over the network by this holder, all versions
    this.notes = [];           // why a patch was not used (404, gap, hash mismatch), newest last
  }

  get servedKey() { return `ailo-served:${this.dbName}`; }

  /** (manifest, format) in `want` ('auto' probes bf16 first and settles on what is served). */
  async _manifest(want) {
    if (want === 'fp32') return [await this.client.manifest('fp32'), 'fp32'];
    try {
      return [await this.client.manifest('bf16'), 'bf16'];
    } catch (e) {
      if (want !== 'auto' || !/HTTP 404/.test(e.message || '')) throw e;
      this.format = 'fp32';  // this coordinator serves only the fp32 model
      return [await this.client.manifest('fp32'), 'fp32'];
    }
  }

  /** Whether the full training state of `manifest`'s model fits this holder's budget. */
  fitsInMemory(manifest) {
    const params = Object.values(manifest.tensors).reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0);
    return !this.budget || 20 * params <= this.budget;
  }

  /** Drop the tensors held in memory (a slice task reads its weights from the chunk cache). */
  release() { this.tensors = null; this.streamed = true; }

  /** Load the served model (or keep the one in memory when its version is current). `format`
   *  (a task's `download`: 'bf16' or 'fp32') overrides the holder's for this call. `resident`:
   *  true = assemble the tensors in memory, false = only verify the chunks into IndexedDB,
   *  null = in memory when the model fits the budget (`fitsInMemory`). */
  async ensure(version = null, { format = null, resident = null } = {}) {
    const want = format || (this.format === 'auto' && this.loadedFormat ? this.loadedFormat : this.format);
    if (this.manifest && (version === null || this.manifest.version === version) && (want === 'auto' || want === this.loadedFormat)
        && !(resident === true && !this.tensors)) {
      const [m] = await this._manifest(this.loadedFormat);
      if (m.version === this.manifest.version) return this;
    }
    const cache = await ChunkCache.open(this.dbName);
    try {
      const [manifest, fmt] = await this._manifest(want);
      const stream = resident === false || (resident !== true && !this.fitsInMemory(manifest));
      let bytes = fmt === 'bf16' && !stream ? await this._patched(manifest, cache) : null;
      let stats;
      if (stream) {  // verified into IndexedDB one chunk at a time; nothing assembled
        const loader = new ChunkLoader({ base: this.client.base, cache, onProgress: this.onProgress });
        try {
          await withBackoff(() => cacheChunks(manifest, loader), { policy: this.client.policy, transient: isRetryable, what: 'model download' });
        } finally {
          this.bytesDownloaded += loader.stats.downloadedBytes;
        }
        stats = { ...loader.stats, patchBytes: 0 };
      } else if (bytes) {
        stats = { downloadedBytes: this.lastPatchBytes, downloadedChunks: 0, cacheHits: 0, cacheBytes: 0, patchBytes: this.lastPatchBytes };
        this.bytesDownloaded += this.lastPatchBytes;
      } else {
        const loader = new ChunkLoader({ base: this.client.base, cache, onProgress: this.onProgress });
        try {
          // A coordinator restart mid-download: retried under the shared policy; every chunk
          // verified so far is already in IndexedDB, so the retry fetches only the rest.
          bytes = await withBackoff(() => loader.loadAll(manifest), { policy: this.client.policy, transient: isRetryable, what: 'model download' });
        } finally {
          this.bytesDownloaded += loader.stats.downloadedBytes;
        }
        stats = { ...loader.stats, patchBytes: 0 };
      }
      this.tensors = stream ? null : assembleTensors(manifest, bytes);
      this.streamed = stream;
      this.manifest = manifest;
      this.loadedFormat = fmt;
      this.stats = { ...stats, format: fmt, via: stream ? 'stream' : stats.patchBytes ? 'patch' : 'chunks', chunks: manifest.chunks.length,
        totalBytes: manifest.chunks.reduce((s, c) => s + c.size, 0) };
      if (fmt === 'bf16' && !stream && typeof localStorage !== 'undefined') localStorage.setItem(this.servedKey, JSON.stringify(manifest));
      await cache.prune(manifest);  // chunks of older versions are not needed again
    } finally {
      cache.kv.close();
    }
    return this;
  }

  /** W_v's verified chunk bytes rebuilt from the held W_{v−1} + the patch, stored in the cache;
   *  null when the patch path does not apply (the reason is kept in `notes`). */
  async _patched(manifest, cache) {
    const held = await this._held(manifest, cache);
    if (!held || held.version !== manifest.version - 1) return null;
    let patch;
    try {
      patch = await this.client.patch(manifest.version);
    } catch (e) {
      this.notes.push(`patch to v${manifest.version}: ${e.message}`);
      return null;
    }
    let blobs;
    try {
      blobs = await patchedChunks(manifest, held.tensors, patch);
    } catch (e) {
      if (!(e instanceof CodecError)) throw e;  // PatchError too
      this.notes.push(`patch to v${manifest.version} refused: ${e.message}`);
      return null;
    }
    for (const c of manifest.chunks) await cache.put(c.sha256, blobs.get(c.index));
    this.lastPatchBytes = patch.byteLength;
    return blobs;
  }

  /** The bf16 model this holder has: in memory, else the last bf16 manifest it loaded (kept in
   *  localStorage) rebuilt from chunks still in IndexedDB (verified; nothing is downloaded). */
  async _held(manifest, cache) {
    if (this.manifest && this.loadedFormat === 'bf16' && this.tensors) return { version: this.manifest.version, tensors: this.tensors };
    if (typeof localStorage === 'undefined') return null;
    let prev;
    try { prev = JSON.parse(localStorage.getItem(this.servedKey) || 'null'); } catch { prev = null; }
    if (!prev || prev.preset !== manifest.preset || prev.version !== manifest.version - 1) return null;
    const offline = new ChunkLoader({ base: this.client.base, cache, mirrors: [], fetchImpl: () => Promise.reject(new Error('not cached')) });
    try {
      return { version: prev.version, tensors: assembleTensors(prev, await offline.loadAll(prev)) };
    } catch (e) {
      this.notes.push(`held v${prev.version} not in this browser's cache: ${e.message}`);
      return null;
    }
  }
}

async function trainFullTask(holder, batches, cfg, onStep) {
  const model = new GPT(holder.manifest.config, holder.tensors);
  try {
    return await trainLocal(model, batches, cfg, { onStep });
  } finally {
    model.dispose();
  }
}

/** A slice task (issue 26): only the slice's tensors in memory, frozen blocks read from the
 *  verified chunks in IndexedDB one at a time, micro-batches sized to the holder's budget. */
async function trainSliceTask(holder, task, batches, cfg, seq, onStep) {
  holder.release();
  const cache = await ChunkCache.open(holder.dbName);
  let model = null;
  try {
    model = await SliceModel.load(holder.manifest.config, ChunkTensors.fromCache(holder.manifest, cache), task.slice.tensors);
    const microBatch = microBatchFor(model.cfg, task.slice, task.optimizer, task.batch_size, seq, holder.budget);
    const result = await trainSlice(model, batches, cfg, { onStep, microBatch });
    return { ...result, slice: { units: task.slice.units, params: task.slice.params, share: task.slice.share, microBatch } };
  } finally {
    if (model) model.dispose();
    cache.kv.close();
  }
}

/** One federated round from this page: task → model → local training on the visitor's tokens
 *  → Δ → sign → submit. The text never leaves the page; only Δ (and n_k, loss) is sent. */
export async function contributeRound({ client, wallet, holder, tokens, onStatus = () => {}, onStep = null, seed = Date.now(), shouldStop = null }) {
  if (!wallet.registered) throw new Error('register a username first');
  onStatus({ phase: 'task' });
  let task = await client.task(wallet.username, wallet.address, holder.budget);
  for (let tries = 0; task.status === 'wait' && tries < 600; tries++) {
    if (shouldStop && shouldStop()) return { status: 'stopped', task };
    onStatus({ phase: 'wait', task });
    await new Promise((r) => setTimeout(r, 1000 * Math.min(5, Math.max(0.5, task.retry_after || 1))));
    task = await client.task(wallet.username, wallet.address, holder.budget);
  }
  if (task.status !== 'train') return { status: task.status, task };
  onStatus({ phase: 'model', task });
  // The task names the download; a slice task's model stays in IndexedDB (streamed).
  await holder.ensure(task.version, { format: task.download === 'bf16' ? 'bf16' : 'fp32', resident: task.slice ? false : true });
  if (holder.manifest.version !== task.version) throw new Error(`coordinator serves model version ${holder.manifest.version}, the task trains ${task.version}; try again`);
  const seq = Math.min(task.seq_len || holder.manifest.config.n_ctx, holder.manifest.config.n_ctx);
  const cfg = { steps: task.steps, batch_size: task.batch_size, lr: task.lr, optimizer: task.optimizer, warmup_steps: task.warmup_steps ?? 0 };
  const batches = randomBatches(tokens, task.batch_size, seq, seed % 2147483647);
  onStatus({ phase: 'train', task });
  const result = task.slice ? await trainSliceTask(holder, task, batches, cfg, seq, onStep) : await trainFullTask(holder, batches, cfg, onStep);
  onStatus({ phase: 'sign', task, result });
  // The round's codec, with error feedback kept in IndexedDB and committed only once accepted.
  const codec = codecFromTask(task);
  // A slice's residual would mix tensors of different slices: slices send without error feedback.
  const ef = codec.name === 'fp32' || task.slice ? null : await ErrorFeedbackStore.open();
  const { body, error } = compress(result.delta, ef ? await ef.load(holder.manifest.preset, codec) : null, codec);
  const sha = await sha256Hex(body);
  onStatus({ phase: 'submit', task, result, bytes: body.byteLength });
  let reply;
  try {
    // Signed here; resent as is after a network error / 5xx, re-signed on replay (upload.js).
    reply = await submitSigned(client, wallet, body, sha, {
      clientId: wallet.username, round: task.round, baseVersion: task.version, nSamples: result.nSamples,
      trainLoss: result.trainLoss, taskId: task.task_id, device: deviceLabel(),
    }, {
      // 202: stored and queued; the coordinator's validation pipeline decides (accepted / refused:
      // waitVerdict throws the refusal as an HttpError with its reason).
      awaitVerdict: (receipt) => { onStatus({ phase: 'verdict', task, result, receipt }); return client.waitVerdict(receipt.update_id); },
    });
    if (ef) await ef.save(holder.manifest.preset, codec, error);  // only what was really applied
  } finally {
    if (ef) ef.close();
  }
  return { status: 'submitted', codec: codec.name, task, result: { ...result, delta: undefined }, reply, sha256: sha, bytes: body.byteLength, backend: tf.getBackend(), device: deviceLabel() };
}

