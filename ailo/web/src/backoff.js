// The back-off policy of ailo/backoff.py, for the page: the coordinator is restartable, so a
// network failure (fetch throws), a 5xx (503 while it starts) or 408/425/429 is retried after
//   delay(n) = uniform((1 − jitter)·d, d),  d = min(cap, base · factor^n)   (Retry-After honoured)
// and any other 4xx is a verdict, returned to the caller at once.

export const DEFAULT_POLICY = Object.freeze({ baseS: 0.5, factor: 2, capS: 20, jitter: 0.5, maxElapsedS: 300, maxAttempts: Infinity });

export function isTransientStatus(status) {
  return status >= 500 || status === 408 || status === 425 || status === 429;
}

/** Seconds before retry number `attempt` (0-based); `retryAfterS` from the server raises it. */
export function delaySeconds(attempt, retryAfterS = null, policy = DEFAULT_POLICY, random = Math.random) {
  let d = Math.min(policy.capS, policy.baseS * policy.factor ** Math.min(attempt, 64));
  d *= 1 - policy.jitter * random();
  if (retryAfterS) d = Math.max(d, Math.min(policy.capS, retryAfterS));
  return d;
}

export class Unavailable extends Error {
  get name() { return 'Unavailable'; }
}

/** Run `once()` (an async call that throws on failure) until it succeeds or fails for good.
 *  `transient(error)` decides what is retried; `onRetry(attempt, delayS, error)` is told. */
export async function withBackoff(once, { policy = DEFAULT_POLICY, transient, onRetry = () => {},
  sleep = (s) => new Promise((r) => setTimeout(r, s * 1000)), what = 'coordinator' } = {}) {
  const start = Date.now();
  for (let attempt = 0; ; attempt++) {
    try {
      return await once();
    } catch (e) {
      if (!transient(e)) throw e;
      const wait = delaySeconds(attempt, e.retryAfter || null, policy);
      const elapsed = (Date.now() - start) / 1000;
      if (attempt + 1 >= policy.maxAttempts || elapsed + wait > policy.maxElapsedS) {
        const err = new Unavailable(`${what} unavailable after ${attempt + 1} attempts (${elapsed.toFixed(0)} s): ${e.message || e}`);
        err.cause = e;
        throw err;
      }
      onRetry(attempt + 1, wait, e);
      await sleep(wait);
    }
  }
}
