// The page as a paying requester of an inference room (what `ailo ask` does, ailo/cli/inference.py):
// the wallet pays the room's price with a signed PAY_INFERENCE (docs/LEDGER.md: spans × 0.05 ALC,
// plus the 0.01 ALC fee; burned) and signs the generate request itself with the rooms API line
// (ailo/inference/auth.py); the answer streams back as NDJSON events (start, token*, failover*,
// done | error). The nodes that served the request are paid by the coordinator's MINT_INFERENCE.
import { HttpError } from './api.js';
import { toHex } from './hash.js';
import { FEE, signTx } from './ledger/index.js';
import { signRoomRequest } from './node.js';

/** Signed PAY_INFERENCE of `amount` units for request `request` (32 hex chars). */
export function payInferenceTx(wallet, request, amount, timestamp = Date.now()) {
  return signTx({ type: 'PAY_INFERENCE', from: wallet.address, request, amount, fee: FEE, timestamp }, wallet);
}

/** Token ids typed as text: "7, 100 42" → [7, 100, 42]; null when it is not a list of ids. */
export function parseTokenIds(text) {
  const parts = String(text).trim().split(/[\s,]+/).filter(Boolean);
  if (!parts.length || !parts.every((p) => /^\d+$/.test(p))) return null;
  return parts.map(Number);
}

/** Ask `room` and pay for it. Give `prompt` (rooms with a tokenizer) or `inputIds`; `price` is
 *  read from the room when not given. `onEvent` sees every streamed event. Resolves with the
 *  `done` event; rejects with an HttpError (402 insufficient_funds, 429 rate_limited, 503 no live
 *  node, ...) or with the stream's `error` event. */
export async function askRoom({ base = '', room, wallet, prompt = null, inputIds = null, maxNewTokens = 32, temperature = 0,
  price, onEvent = () => {} }) {
  const path = `/v1/rooms/${encodeURIComponent(room)}/generate`;
  if (price === undefined) {
    const res = await fetch(`${base}/v1/rooms/${encodeURIComponent(room)}`, { cache: 'no-store' });
    const view = await res.json();
    if (!res.ok) throw new HttpError(res.status, `room ${room}: ${view.detail}`, view.reason);
    price = view.price;
  }
  const payload = { max_new_tokens: maxNewTokens, temperature, stream: true };
  if (inputIds) payload.input_ids = inputIds; else payload.prompt = prompt;
  if (price) payload.payment = await payInferenceTx(wallet, toHex(crypto.getRandomValues(new Uint8Array(16))), price);
  const body = JSON.stringify(payload);
  const auth = await signRoomRequest(wallet, 'POST', path, body);
  const res = await fetch(base + path, {
    method: 'POST', body, cache: 'no-store',
    headers: { 'content-type': 'application/json', 'x-ailo-address': auth.address, 'x-ailo-nonce': auth.nonce,
      'x-ailo-timestamp': String(auth.timestamp), 'x-ailo-signature': auth.signature },
  });
  if (!res.ok) {
    const raw = await res.text();
    let detail = raw, reason = null;
    try { const d = JSON.parse(raw); detail = d.detail; reason = d.reason; } catch { /* keep text */ }
    const ra = Number(res.headers.get('Retry-After'));
    throw new HttpError(res.status, `room ${room}: HTTP ${res.status}: ${detail}`, reason, Number.isFinite(ra) && ra > 0 ? ra : null);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffered = '', last = null;
  const take = (line) => {
    if (!line.trim()) return;
    last = JSON.parse(line);
    onEvent(last);
  };
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) { take(buffered.slice(0, nl)); buffered = buffered.slice(nl + 1); }
  }
  take(buffered + decoder.decode());
  if (!last || last.type === 'error') {
    const back = last && last.refunded ? ` (payment refunded: ${(last.refunded / 1e8).toFixed(8)} ALC; the fee is kept)` : '';
    throw new Error(last ? last.error + back : `room ${room}: the answer stopped before it was done`);
  }
  if (last.type !== 'done') throw new Error(`room ${room}: the answer stopped before it was done`);
  return last;
}
