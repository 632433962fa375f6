// Submitting one update from the page so that a coordinator restart neither loses it nor
// counts it twice (the page's copy of ailo/federation/client/uploader.py):
// - network errors and 5xx/429: `client.request` resends the SAME signed body (backoff.js);
//   the coordinator answers a resent, already accepted update with its original verdict;
// - refused as `replay` (the interrupted attempt consumed the nonce) or `bad_timestamp` (the
//   outage outlived the signature): the same body is signed again with a fresh nonce and
//   timestamp, at most `maxResign` times;
// - 202 + update id: the verdict is polled at GET /v1/updates/{id} (resent if the restarted
//   coordinator no longer knows the id), or by `awaitVerdict(receipt)` when given;
// - any other 4xx is the verdict: thrown as HttpError, as before.
import { HttpError } from './api.js';
import { updateMessage } from './wallet.js';

const RESIGN = new Set(['replay', 'bad_timestamp']);
const PENDING = new Set(['pending', 'queued', 'received', 'validating']);

async function pollVerdict(client, updateId, pollS) {
  for (;;) {
    let v;
    try {
      v = await client.request(`/v1/updates/${encodeURIComponent(updateId)}`);
    } catch (e) {
      if (e instanceof HttpError && e.status === 404) return null;  // lost in a restart
      throw e;
    }
    if (!PENDING.has(v.status)) {
      if (v.status === 'refused') throw new HttpError(v.http_status || 422, `update ${updateId} refused: ${v.detail || v.reason}`, v.reason);
      return v;
    }
    await new Promise((r) => setTimeout(r, pollS * 1000));
  }
}

/** Sign and submit `body` (sha256 hex `sha`) for `meta` {clientId, round, baseVersion, nSamples,
 *  trainLoss, taskId}; returns the verdict JSON plus `resigned`. */
export async function submitSigned(client, wallet, body, sha, meta, { maxResign = 3, maxResend = 5, pollS = 0.5, awaitVerdict = null } = {}) {
  let resigned = 0, resent = 0;
  for (;;) {
    const nonce = await wallet.nextNonce();
    const timestamp = Date.now();
    const signature = await wallet.signHex(updateMessage(meta.round, meta.baseVersion, sha, meta.nSamples, nonce, timestamp, meta.clientId));
    let reply;
    try {
      reply = await client.submitUpdate(body, { ...meta, address: wallet.address, signature, nonce, timestamp });
      if (PENDING.has(reply.status) && reply.update_id != null) {
        const verdict = awaitVerdict ? await awaitVerdict(reply) : await pollVerdict(client, reply.update_id, pollS);
        if (verdict === null && resent < maxResend) { resent += 1; continue; }
        reply = verdict || reply;
      }
    } catch (e) {
      if (e instanceof HttpError && RESIGN.has(e.reason) && resigned < maxResign) { resigned += 1; continue; }
      throw e;
    }
    return { ...reply, resigned, resent };
  }
}
