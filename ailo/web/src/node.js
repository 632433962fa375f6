// The page as a room node (issue 16): join over a WebSocket the page opens, fetch only the
// assigned span's weights, run it in TensorFlow.js, answer activation frames.
//
// Protocol (ailo/inference/socket_nodes.py, ailo/server/room_socket_api.py): the first message
// is a join signed by the in-page wallet — the rooms API line
// `ailo-room/v1|JOIN|/v1/rooms/{id}/node-socket|address|nonce|timestamp|sha256(body)`;
// then `heartbeat` {loaded} every interval (answered with the span to serve); binary messages
// are u32 sequence number + activation frame (wire.js), answered the same way, or with a JSON
// `error` {seq, status, detail} using the native node's status codes (409 lost cache, 421 other
// span, 503 not loaded, 400 bad input). One forward at a time, like `ailo node`.
import * as tf from '@tensorflow/tfjs';
import { sha256Hex, toHex } from './hash.js';
import { BrowserSpan, SpanCache } from './span.js';
import { loadSpanWeights } from './spanweights.js';
import { decodeFrame, encodeFrame } from './wire.js';

const PREFIX = 'ailo-room/v1';

/** The rooms API's signed line (ailo/inference/auth.py request_message). */
export function roomRequestMessage(method, path, address, nonce, timestampMs, bodySha256) {
  return `${PREFIX}|${method.toUpperCase()}|${path}|${address}|${nonce}|${timestampMs}|${bodySha256}`;
}

/** Headers (as a plain object) that authenticate `body` (a string) sent as `METHOD path`. */
export async function signRoomRequest(wallet, method, path, body) {
  const nonce = toHex(crypto.getRandomValues(new Uint8Array(16)));
  const timestamp = Date.now();
  const sha = await sha256Hex(new TextEncoder().encode(body));
  const signature = await wallet.signHex(roomRequestMessage(method, path, wallet.address, nonce, timestamp, sha));
  return { address: wallet.address, nonce, timestamp, signature };
}

class CacheStore {
  constructor(max = 16) { this.max = max; this.items = new Map(); }
  get(id) { const c = this.items.get(id); if (c) { this.items.delete(id); this.items.set(id, c); } return c; }
  create(id) {
    this.drop(id);
    while (this.items.size >= this.max) this.drop(this.items.keys().next().value);
    const c = new SpanCache();
    this.items.set(id, c);
    return c;
  }
  drop(id) { const c = this.items.get(id); if (c) { c.dispose(); this.items.delete(id); } }
  clear() { for (const id of [...this.items.keys()]) this.drop(id); }
  get size() { return this.items.size; }
}

class NodeRefusal extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

export class BrowserNode {
  /** `base`: coordinator origin ('' = this page's); `memory`: bytes offered to the room. */
  constructor({ base = '', room, wallet, memory = 1e9, dbName = 'ailo-room-chunks', onChange = () => {}, reconnect = true, maxBackoffS = 30 }) {
    Object.assign(this, { base, room, wallet, memory, dbName, onChange, reconnect, maxBackoffS });
    this._stopped = false;
    this.ws = null; this.span = null; this.model = null; this.caches = new CacheStore();
    this.queue = Promise.resolve();
    this.state = { status: 'idle', nodeId: null, span: null, loaded: null, roomState: null, frames: 0, requests: 0,
      computeMs: 0, bytesIn: 0, bytesOut: 0, weights: null, error: null, reconnects: 0 };
    this._seen = new Set();
  }

  _set(patch) { Object.assign(this.state, patch); this.onChange(this.state); }

  _socketUrl(path) {
    const origin = this.base || location.origin;
    return origin.replace(/^http/, 'ws') + path;
  }

  /** Join and serve until stop(). Resolves once joined (rejects if refused). When the socket
   *  drops later (network, coordinator restart) the node joins again after a back-off (1 s
   *  doubling to `maxBackoffS`), keeping its loaded span; a refusal other than a rate limit
   *  (room deleted, unregistered wallet) ends it. */
  async start() {
    this._stopped = false;
    this._refusal = null;
    const room = await (await fetch(`${this.base}/v1/rooms/${encodeURIComponent(this.room)}`, { cache: 'no-store' })).json();
    if (!room.fingerprint) throw new Error(`no room ${this.room}: ${room.detail || ''}`);
    this.fingerprint = room.fingerprint;
    const path = `/v1/rooms/${encodeURIComponent(this.room)}/node-socket`;
    const body = JSON.stringify({ memory: Math.floor(this.memory), fingerprint: room.fingerprint });
    const auth = await signRoomRequest(this.wallet, 'JOIN', path, body);
    const ws = new WebSocket(this._socketUrl(path));
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this._set({ status: 'joining' });
    return new Promise((resolve, reject) => {
      let joined = false;
      ws.onopen = () => ws.send(JSON.stringify({ type: 'join', body, ...auth }));
      ws.onclose = (ev) => {
        clearInterval(this._beat);
        this.caches.clear();
        if (this._stopped) return;
        this._set({ status: 'closed', error: this.state.error || (ev.reason || null) });
        if (!joined) reject(new Error(`room ${this.room}: socket closed before joining (${this.state.error || ev.code})`));
        else if (this.reconnect) this._rejoin(1);
      };
      ws.onmessage = (ev) => {
        if (typeof ev.data !== 'string') { this._enqueue(new Uint8Array(ev.data)); return; }
        const m = JSON.parse(ev.data);
        if (m.type === 'refused') { this._refusal = m.reason; this._set({ error: `${m.reason}: ${m.detail}` }); return; }
        if (m.type === 'joined') {
          joined = true;
          this._set({ status: 'joined', nodeId: m.node_id, address: m.address });
          this._beat = setInterval(() => this._heartbeat(), 1000 * (m.heartbeat_interval || 2));
          this._onSpan(m.span);
          resolve(this);
        } else if (m.type === 'span') {
          this._set({ roomState: m.state });
          this._onSpan(m.span);
        } else if (m.type === 'release') {
          this.queue = this.queue.then(() => this.caches.drop(m.request_id));
        }
      };
    });
  }

  _rejoin(delayS) {
    this._set({ status: 'reconnecting', backoffS: delayS });
    setTimeout(async () => {
      if (this._stopped) return;
      try {
        await this.start();
        this._set({ reconnects: this.state.reconnects + 1, error: null });
      } catch (e) {
        if (this._refusal && this._refusal !== 'rate_limited') { this._set({ status: 'closed', error: e.message }); return; }
        this._rejoin(Math.min(this.maxBackoffS, delayS * 2));
      }
    }, delayS * 1000);
  }

  _heartbeat() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: 'heartbeat', loaded: this.state.loaded }));
  }

  _onSpan(span) {
    this._set({ span });
    if (!span || this._loading) return;
    const want = [span.start, span.end];
    if (this.state.loaded && this.state.loaded[0] === want[0] && this.state.loaded[1] === want[1]) {
      if (this.state.status === 'joined') { this._set({ status: 'serving' }); this._heartbeat(); }  // rejoined, span kept
      return;
    }
    this._loading = this._load(want).catch((e) => this._set({ status: 'error', error: `loading ${span.label}: ${e.message}` }))
      .finally(() => { this._loading = null; });
  }

  async _load([start, end]) {
    this._set({ status: 'loading' });
    const t0 = performance.now();
    const { manifest, weights, stats } = await loadSpanWeights({ base: this.base, room: this.room, start, end, dbName: this.dbName });
    if (manifest.fingerprint !== this.fingerprint) throw new Error(`weights of fingerprint ${manifest.fingerprint}, room is ${this.fingerprint}`);
    const model = new BrowserSpan(manifest.spec, start, end, weights);
    await this.queue;  // no frame in flight while the model changes
    if (this.model) this.model.dispose();
    this.caches.clear();
    this.model = model;
    this._set({ status: 'serving', loaded: [start, end], weights: { ...stats, tensors: Object.keys(manifest.tensors).length, seconds: (performance.now() - t0) / 1000 } });
    this._heartbeat();
  }

  _enqueue(msg) {
    this.queue = this.queue.then(() => this._serve(msg)).catch(() => {});
  }

  async _serve(msg) {
    const seq = new DataView(msg.buffer, msg.byteOffset, 4).getUint32(0, true);
    const t0 = performance.now();
    let frame = null;
    try {
      frame = decodeFrame(msg.subarray(4));
      const out = await this._forward(frame);
      const reply = encodeFrame({ requestId: frame.requestId, start: frame.start, span: frame.span, shape: out.shape, data: out.data });
      const buf = new Uint8Array(4 + reply.byteLength);
      new DataView(buf.buffer).setUint32(0, seq, true);
      buf.set(reply, 4);
      if (this.ws.readyState !== WebSocket.OPEN) return;
      this.ws.send(buf);
      if (!this._seen.has(frame.requestId)) { this._seen.add(frame.requestId); this.state.requests++; }
      this._set({ frames: this.state.frames + 1, computeMs: this.state.computeMs + performance.now() - t0,
        bytesIn: this.state.bytesIn + msg.byteLength, bytesOut: this.state.bytesOut + buf.byteLength });
    } catch (e) {
      const status = e instanceof NodeRefusal ? e.status : 400;
      if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: 'error', seq, status, detail: e.message }));
    }
  }

  /** The native node's checks (ailo/inference/node.py NodeService.forward). */
  async _forward(f) {
    const m = this.model;
    if (!m) throw new NodeRefusal(503, 'span not loaded yet');
    if (f.span[0] !== m.start || f.span[1] !== m.end) throw new NodeRefusal(421, `this node serves units [${m.start}, ${m.end}), not [${f.span}]`);
    const ok = m.first ? (f.dtype === 'I64' && f.shape.length === 2) : (f.dtype !== 'I64' && f.shape.length === 3 && f.shape[2] === m.spec.hidden);
    if (!ok || f.shape[0] !== 1) throw new NodeRefusal(400, `unexpected input ${f.dtype} [${f.shape}] for this span`);
    let cache = f.reset ? null : this.caches.get(f.requestId);
    if (!cache) {
      if (f.start !== 0 && !f.reset) throw new NodeRefusal(409, `no cache for request ${f.requestId}; resend from position 0 (got ${f.start})`);
      cache = this.caches.create(f.requestId);
    } else if (cache.length !== f.start) {
      throw new NodeRefusal(409, `cache holds ${cache.length} positions, frame starts at ${f.start}`);
    }
    try {
      return await m.forward(f.data, f.start, cache);
    } catch (e) {
      this.caches.drop(f.requestId);
      throw new NodeRefusal(400, e.message);
    }
  }

  /** Leave the room (closing the socket is leaving). */
  stop() {
    this._stopped = true;
    clearInterval(this._beat);
    if (this.ws) this.ws.close(1000, 'left');
    this.caches.clear();
    if (this.model) { this.model.dispose(); this.model = null; }
    this._set({ status: 'stopped', loaded: null });
  }

  info() { return { ...this.state, backend: tf.getBackend(), cachedRequests: this.caches.size }; }
}
