// The coordinator's HTTP protocol from the browser (docs/ARCHITECTURE.md "Federation",
// docs/LEDGER.md §11) and the in-page chain sync + verification (R11). No TensorFlow.js here,
// so the dashboard loads without it.
import { DEFAULT_POLICY, isTransientStatus, withBackoff } from './backoff.js';
import { fetchManifest } from './chunks.js';
import { KV } from './idb.js';
import { parseJson, verifyChain } from './ledger/index.js';

export class HttpError extends Error {
  constructor(status, detail, reason, retryAfter = null) { super(detail); this.status = status; this.reason = reason; this.retryAfter = retryAfter; }
  get name() { return 'HttpError'; }
}

/** A failure worth retrying: the network (fetch threw) or a transient HTTP status. */
export function isRetryable(e) {
  if (e instanceof HttpError) return isTransientStatus(e.status);
  return e instanceof TypeError || /HTTP (5\d\d|408|425|429)/.test((e && e.message) || '');  // fetch failed, or a 5xx
}

export class CoordinatorClient {
  /** Every call rides out a coordinator restart: network errors and 5xx/429 are retried under
   *  `policy` (backoff.js, the policy of ailo/backoff.py); `onRetry(attempt, delayS, error)`. */
  constructor(base = '', { policy = DEFAULT_POLICY, onRetry = () => {} } = {}) {
    this.base = base; this.policy = policy; this.onRetry = onRetry; this.retries = 0;
  }

  request(path, opts = {}) {
    return withBackoff(() => this.requestOnce(path, opts), {
      policy: this.policy, transient: isRetryable, what: `${opts.method || 'GET'} ${path}`,
      onRetry: (n, s, e) => { this.retries += 1; this.onRetry(n, s, e); },
    });
  }

  async requestOnce(path, { method = 'GET', json, body, headers = {}, text = false } = {}) {
    const init = { method, headers: { ...headers }, cache: 'no-store' };
    if (json !== undefined) { init.body = JSON.stringify(json); init.headers['Content-Type'] = 'application/json'; }
    if (body !== undefined) init.body = body;
    const res = await fetch(this.base + path, init);
    const raw = await res.text();
    if (!res.ok) {
      let detail = raw, reason;
      try { const d = JSON.parse(raw); detail = typeof d.detail === 'string' ? d.detail : JSON.stringify(d.detail); reason = d.reason; } catch { /* keep text */ }
      if (!reason && typeof detail === 'string' && /^[a-z_]+:/.test(detail)) reason = detail.split(':')[0];
      const ra = Number(res.headers.get('Retry-After'));  // seconds, when the coordinator says wait
      throw new HttpError(res.status, `${method} ${path}: HTTP ${res.status}: ${detail}`, reason, Number.isFinite(ra) && ra > 0 ? ra : null);
    }
    return text ? raw : JSON.parse(raw);
  }

  manifest(format = 'fp32') {
    return withBackoff(() => fetchManifest(this.base, undefined, format), { policy: this.policy, what: 'GET /v1/model',
      transient: (e) => isRetryable(e) && !/HTTP 4\d\d/.test(e.message || '') });
  }

  /** GET /v1/patches/{v}: the int8 patch W_{v−1} → W_v of compact downloads (bytes; 404 → HttpError). */
  patch(version) {
    return withBackoff(async () => {
      const res = await fetch(`${this.base}/v1/patches/${version}`, { cache: 'no-store' });
      if (!res.ok) throw new HttpError(res.status, `GET /v1/patches/${version}: HTTP ${res.status}`, null);
      return new Uint8Array(await res.arrayBuffer());
    }, { policy: this.policy, transient: isRetryable, what: `GET /v1/patches/${version}` });
  }

  /** `memoryBudget` (bytes): what this page can spend on training; a coordinator answers a
   *  budget too small for the full task with a slice task (issue 26). */
  task(clientId, address, memoryBudget = null) {
    return this.request('/v1/tasks', { method: 'POST', json: { client_id: clientId, address, ...(memoryBudget ? { memory_budget: Math.floor(memoryBudget) } : {}) } });
  }

  register(tx) { return this.request('/v1/register', { method: 'POST', json: tx }); }

  balance(address) { return this.request(`/v1/balance/${address}`); }

  status() { return this.request('/v1/status'); }

  ledgerInfo() { return this.request('/v1/ledger/info'); }

  updates(limit = 200) { return this.request(`/v1/dashboard/updates?limit=${limit}`); }

  rooms() { return this.request('/v1/rooms'); }

  exports() { return this.request('/v1/exports'); }

  samples() { return this.request('/v1/samples'); }

  sample(name) { return this.request(`/v1/samples/${encodeURIComponent(name)}`, { text: true }); }

  async chain(from = 0, limit = 1000) {
    return parseJson(await this.request(`/v1/chain?from=${from}&limit=${limit}`, { text: true }));
  }

  /** POST /v1/updates: safetensors body + X-Ailo-* headers (ailo/federation/core/update_format.py). */
  submitUpdate(body, meta) {
    const h = {
      'Content-Type': 'application/octet-stream',
      'X-Ailo-Client': meta.clientId, 'X-Ailo-Round': String(meta.round), 'X-Ailo-Base-Version': String(meta.baseVersion),
      'X-Ailo-Samples': String(meta.nSamples), 'X-Ailo-Train-Loss': String(meta.trainLoss), 'X-Ailo-Task': meta.taskId || '',
      'X-Ailo-Address': meta.address, 'X-Ailo-Signature': meta.signature, 'X-Ailo-Nonce': String(meta.nonce),
      'X-Ailo-Timestamp': String(meta.timestamp), 'X-Ailo-Device': meta.device || '',
    };
    for (const k of Object.keys(h)) if (h[k] === '') delete h[k];
    return this.request('/v1/updates', { method: 'POST', body, headers: h });
  }

  /** GET /v1/updates/{id}: the validation pipeline's verdict; `wait` long-polls (seconds). */
  verdict(updateId, wait = 20) { return this.request(`/v1/updates/${updateId}?wait=${wait}`); }

  /** Poll until the update is accepted (returns the verdict) or refused (throws HttpError with
   *  the refusal's reason and the HTTP status it would have had). */
  async waitVerdict(updateId, { timeoutMs = 30 * 60 * 1000, onPending = null } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await this.verdict(updateId);
      if (v.status === 'accepted') return v;
      if (v.status === 'refused') throw new HttpError(v.code || 422, `update ${updateId} refused: ${v.detail}`, v.reason);
      if (Date.now() > deadline) throw new Error(`no verdict for update ${updateId} after ${timeoutMs / 1000} s`);
      if (onPending) onPending(v);
    }
  }
}

/** Download the chain (only blocks not stored yet), verify all of it with the ledger rules,
 *  store verified blocks in IndexedDB. Returns the verification report (+ fetched count). */
export async function syncChain(client, { dbName = 'ailo-chain', now = Date.now() } = {}) {
  const kv = await KV.open(dbName, ['blocks']);
  try {
    const stored = (await kv.getAll('blocks')).sort((a, b) => a.height - b.height);
    const fetchFrom = async (from) => {
      const out = [];
      for (;;) {
        const page = await client.chain(from + out.length, 1000);
        out.push(...page.blocks);
        if (!page.blocks.length || from + out.length > page.height) return out;
      }
    };
    let fresh = await fetchFrom(stored.length);
    let blocks = [...stored, ...fresh];
    let report = await verifyChain(blocks, { now });
    if (!report.ok && stored.length) {
      // The stored copy does not extend to what the coordinator serves (or was damaged
      // locally): start over from genesis and judge the served chain alone.
      await kv.clear('blocks');
      stored.length = 0;
      fresh = await fetchFrom(0);
      blocks = fresh;
      report = await verifyChain(blocks, { now });
    }
    const verifiedCount = report.ok ? blocks.length : report.blocks;
    for (let i = stored.length; i < verifiedCount; i++) await kv.put('blocks', i, blocks[i]);
    return { ...report, fetched: fresh.length, stored: verifiedCount };
  } finally {
    kv.close();
  }
}
