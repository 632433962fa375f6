// Continuous contribution: the page trains round after round until the tab closes (issue 16).
//
// Each turn is one `contributeRound` (task → model → train → sign → submit). Between turns the
// loop asks the coordinator again at once; when the coordinator says wait (a `wait` task with
// `retry_after`, HTTP 429/503 with Retry-After, or the network is down) it sleeps, doubling the
// pause on consecutive failures up to `maxBackoffS`. A refused update (stale round, PoC
// refusal) is counted and the next round is tried. With `pauseWhenHidden` nothing is trained
// while the tab is hidden (document.visibilityState), so a background tab costs nothing.
import { HttpError } from './api.js';
import { contributeRound } from './client.js';

/** Seconds to wait before the next try after `error` (null after a success). Pure. */
export function backoffSeconds(prevS, error, { baseS = 1, maxS = 60 } = {}) {
  if (!error) return 0;
  const said = error instanceof HttpError ? error.retryAfter : null;
  const doubled = prevS ? Math.min(maxS, prevS * 2) : baseS;
  return Math.min(maxS, Math.max(doubled, said || 0));
}

/** Errors worth trying again after a pause (overload, outage); anything else is a refusal. */
export function isTransient(error) {
  if (!(error instanceof HttpError)) return true;  // network failure, aborted fetch, …
  return error.status === 429 || error.status >= 500;
}

export class ContinuousContributor {
  /** `getTokens()` → Int32Array of the visitor's tokens; `onChange(state)` after every change. */
  constructor({ client, wallet, holder, getTokens, onChange = () => {}, onStep = null, pauseWhenHidden = false, maxBackoffS = 60 }) {
    Object.assign(this, { client, wallet, holder, getTokens, onChange, onStep, pauseWhenHidden, maxBackoffS });
    this.running = false;
    this._wake = null;
    this.state = { running: false, phase: 'idle', round: null, loss: null, rounds: [], accepted: 0, refused: 0,
      earned: 0, bytesDown: 0, bytesUp: 0, backoffS: 0, lastError: null };
    if (typeof document !== 'undefined') document.addEventListener('visibilitychange', () => this._poke());
  }

  _set(patch) { Object.assign(this.state, patch); this.onChange(this.state); }

  _poke() { if (this._wake) this._wake(); }

  /** Sleep `s` seconds, cut short by stop() or by the tab becoming visible again. */
  _sleep(s) {
    return new Promise((resolve) => {
      const t = setTimeout(done, s * 1000);
      const self = this;
      function done() { clearTimeout(t); self._wake = null; resolve(); }
      this._wake = done;
    });
  }

  _hidden() { return this.pauseWhenHidden && typeof document !== 'undefined' && document.visibilityState === 'hidden'; }

  async _balanceUnits() {
    const b = await this.client.balance(this.wallet.address);
    return (b.spendable || 0) + (b.pending || 0);
  }

  start() {
    if (this.running) return this._loop;
    this.running = true;
    this._set({ running: true, phase: 'starting', lastError: null });
    this._loop = this._run().finally(() => { this.running = false; this._set({ running: false, phase: 'stopped' }); });
    return this._loop;
  }

  stop() { this.running = false; this._poke(); return this._loop; }

  async _run() {
    const tokens = await this.getTokens();
    let base = null;
    try { base = await this._balanceUnits(); } catch { base = null; }
    let backoff = 0;
    while (this.running) {
      if (this._hidden()) {
        this._set({ phase: 'paused' });
        await this._sleep(3600);  // woken by visibilitychange or stop()
        continue;
      }
      const downBefore = this.holder.bytesDownloaded || 0;
      try {
        const out = await contributeRound({
          client: this.client, wallet: this.wallet, holder: this.holder, tokens, onStep: this.onStep,
          shouldStop: () => !this.running || this._hidden(),
          onStatus: ({ phase, task }) => this._set({ phase, round: task ? task.round : this.state.round }),
        });
        this._set({ bytesDown: this.state.bytesDown + (this.holder.bytesDownloaded || 0) - downBefore });
        if (out.status === 'done') { this._set({ phase: 'finished' }); break; }
        if (out.status !== 'submitted') continue;  // stopped or hidden while waiting
        const accepted = out.reply && out.reply.status === 'accepted';
        const entry = { round: out.task.round, version: out.task.version, status: out.reply.status, loss: out.result.trainLoss,
          steps: out.result.steps, bytes: out.bytes, aggregated: !!out.reply.aggregated, reason: out.reply.reason || null };
        this._set({ rounds: [...this.state.rounds, entry], accepted: this.state.accepted + (accepted ? 1 : 0),
          refused: this.state.refused + (accepted ? 0 : 1), loss: out.result.trainLoss, bytesUp: this.state.bytesUp + out.bytes,
          backoffS: 0, lastError: null });
        backoff = 0;
        if (base !== null) {
          try { this._set({ earned: (await this._balanceUnits()) - base }); } catch { /* shown next round */ }
        }
      } catch (e) {
        this._set({ bytesDown: this.state.bytesDown + (this.holder.bytesDownloaded || 0) - downBefore });
        const message = e.message || String(e);
        if (isTransient(e)) {
          backoff = backoffSeconds(backoff, e, { maxS: this.maxBackoffS });
          this._set({ phase: 'backoff', backoffS: backoff, lastError: message });
          await this._sleep(backoff);
        } else {
          this._set({ refused: this.state.refused + 1, lastError: message,
            rounds: [...this.state.rounds, { round: this.state.round, status: 'refused', reason: e.reason || null, error: message }] });
          backoff = backoffSeconds(backoff, e, { maxS: this.maxBackoffS });
          await this._sleep(Math.min(backoff, 5));
        }
      }
    }
  }
}
