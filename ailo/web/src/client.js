// One federated round from the page, as the native worker does it (ailo/federation/worker.py).
import * as tf from '@tensorflow/tfjs';
import { ChunkCache, ChunkLoader, assembleTensors } from './chunks.js';
import { sha256Hex } from './hash.js';
import { GPT } from './model.js';
import { trainLocal, randomBatches } from './train.js';
import { codecFromTask, compress, ErrorFeedbackStore } from './codecs.js';
import { submitSigned } from './upload.js';
import { withBackoff } from './backoff.js';
import { isRetryable } from './api.js';

export { CoordinatorClient, HttpError, syncChain } from './api.js';

/** Keeps the current global model in memory, loading chunks through the IndexedDB cache. */
export class ModelHolder {
  constructor(client, { onProgress = null, dbName = 'ailo-chunks' } = {}) {
    this.client = client; this.onProgress = onProgress; this.dbName = dbName;
    this.manifest = null; this.tensors = null; this.stats = null;
    this.bytesDownloaded = 0;  // chunk bytes fetched over the network by this holder, all versions
  }

  /** Load the served model (or keep the one in memory when its version is current). */
  async ensure(version = null) {
    if (this.manifest && (version === null || this.manifest.version === version)) {
      const m = await this.client.manifest();
      if (m.version === this.manifest.version) return this;
    }
    const cache = await ChunkCache.open(this.dbName);
    try {
      const manifest = await this.client.manifest();
      const loader = new ChunkLoader({ base: this.client.base, cache, onProgress: this.onProgress });
      let bytes;
      try {
        // A coordinator restart mid-download: retried under the shared policy; every chunk
        // verified so far is already in IndexedDB, so the retry fetches only the rest.
        bytes = await withBackoff(() => loader.loadAll(manifest), { policy: this.client.policy, transient: isRetryable, what: 'model download' });
      } finally {
        this.bytesDownloaded += loader.stats.downloadedBytes;
      }
      this.tensors = assembleTensors(manifest, bytes);
      this.manifest = manifest;
      this.stats = { ...loader.stats, chunks: manifest.chunks.length, totalBytes: manifest.chunks.reduce((s, c) => s + c.size, 0) };
      await cache.prune(manifest);  // chunks of older versions are not needed again
    } finally {
      cache.kv.close();
    }
    return this;
  }
}

/** One federated round from this page: task → model → local training on the visitor's tokens
 *  → Δ → sign → submit. The text never leaves the page; only Δ (and n_k, loss) is sent. */
export async function contributeRound({ client, wallet, holder, tokens, onStatus = () => {}, onStep = null, seed = Date.now(), shouldStop = null }) {
  if (!wallet.registered) throw new Error('register a username first');
  onStatus({ phase: 'task' });
  let task = await client.task(wallet.username, wallet.address);
  for (let tries = 0; task.status === 'wait' && tries < 600; tries++) {
    if (shouldStop && shouldStop()) return { status: 'stopped', task };
    onStatus({ phase: 'wait', task });
    await new Promise((r) => setTimeout(r, 1000 * Math.min(5, Math.max(0.5, task.retry_after || 1))));
    task = await client.task(wallet.username, wallet.address);
  }
  if (task.status !== 'train') return { status: task.status, task };
  onStatus({ phase: 'model', task });
  await holder.ensure(task.version);
  if (holder.manifest.version !== task.version) throw new Error(`coordinator serves model version ${holder.manifest.version}, the task trains ${task.version}; try again`);
  const seq = Math.min(task.seq_len || holder.manifest.config.n_ctx, holder.manifest.config.n_ctx);
  const model = new GPT(holder.manifest.config, holder.tensors);
  let result;
  try {
    onStatus({ phase: 'train', task });
    result = await trainLocal(model, randomBatches(tokens, task.batch_size, seq, seed % 2147483647),
      { steps: task.steps, batch_size: task.batch_size, lr: task.lr, optimizer: task.optimizer }, { onStep });
  } finally {
    model.dispose();
  }
  onStatus({ phase: 'sign', task, result });
  // The round's codec, with error feedback kept in IndexedDB and committed only once accepted.
  const codec = codecFromTask(task);
  const ef = codec.name === 'fp32' ? null : await ErrorFeedbackStore.open();
  const { body, error } = compress(result.delta, ef ? await ef.load(holder.manifest.preset, codec) : null, codec);
  const sha = await sha256Hex(body);
  onStatus({ phase: 'submit', task, result, bytes: body.byteLength });
  let reply;
  try {
    // Signed here; resent as is after a network error / 5xx, re-signed on replay (upload.js).
    reply = await submitSigned(client, wallet, body, sha, {
      clientId: wallet.username, round: task.round, baseVersion: task.version, nSamples: result.nSamples,
      trainLoss: result.trainLoss, taskId: task.task_id,
    }, {
      // 202: stored and queued; the coordinator's validation pipeline decides (accepted / refused:
      // waitVerdict throws the refusal as an HttpError with its reason).
      awaitVerdict: (receipt) => { onStatus({ phase: 'verdict', task, result, receipt }); return client.waitVerdict(receipt.update_id); },
    });
    if (ef) await ef.save(holder.manifest.preset, codec, error);  // only what was really applied
  } finally {
    if (ef) ef.close();
  }
  return { status: 'submitted', codec: codec.name, task, result: { ...result, delta: undefined }, reply, sha256: sha, bytes: body.byteLength, backend: tf.getBackend() };
}

