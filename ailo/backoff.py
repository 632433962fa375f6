"""One back-off policy for every client of the coordinator (native worker, `ailo node`, wallet
and chain CLI; `ailo/web/src/backoff.js` is the same policy for the browser page).

The coordinator is restartable: a connection error, a timeout, a 5xx (503 while it starts up
or is overloaded), 408/425 and 429 are *transient* and retried after a bounded exponential
delay with jitter (so a crowd of clients does not reconnect in lock-step when it comes back);
any other 4xx is a verdict and is returned to the caller, never retried here.

    delay(n) = uniform((1 − jitter)·d, d),  d = min(cap, base · factor^n)

A `Retry-After` header (seconds) raises the next delay to at least that, still capped.
"""
from __future__ import annotations

import logging
import random
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import httpx

T = TypeVar("T")
log = logging.getLogger("ailo.backoff")


class Unavailable(RuntimeError):
    """The coordinator stayed unreachable (or kept answering 5xx) for the policy's whole budget."""


@dataclass(frozen=True)
class Backoff:
    base: float = 0.5                  # first delay, seconds
    factor: float = 2.0
    cap: float = 20.0                  # no single delay is longer
    jitter: float = 0.5                # share of each delay that is random (0 = none, 1 = "full jitter")
    max_elapsed: float | None = None   # give up after this long (None: never, a volunteer rides it out)
    max_attempts: int | None = None    # or after this many attempts
    interactive: bool = False          # a person waits: say so on the first retry; a host that does
                                       # not resolve is an error at once, not after the whole budget

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        d = min(self.cap, self.base * self.factor ** min(attempt, 64))
        d = d * (1.0 - self.jitter * (rng or random).random())
        if retry_after is not None:
            d = max(d, min(self.cap, retry_after))
        return d

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        n = 0
        while self.max_attempts is None or n < self.max_attempts - 1:
            yield self.delay(n, rng=rng)
            n += 1


DEFAULT = Backoff()
QUICK = Backoff(base=0.2, cap=2.0, max_elapsed=30.0, interactive=True)   # interactive commands: a restart, not an outage
ONCE = Backoff(max_attempts=1)                         # no retry (library default where the caller decides)


def is_transient(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def retrying(fn: Callable[[], T], policy: Backoff = DEFAULT, *, what: str = "coordinator",
             on_retry: Callable[[int, float, str], None] | None = None,
             sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """Call `fn` until it returns; retry transport errors and `TransientStatus`. An
    `httpx.Response` with a transient status is returned by `fn` as-is (use `request`)."""
    start, attempt = clock(), 0
    while True:
        try:
            return fn()
        except httpx.UnsupportedProtocol as exc:  # no retry can fix a wrong URL
            raise Unavailable(f"{what}: {exc} (use an http:// or https:// URL)") from exc
        except (httpx.TransportError, TransientStatus) as exc:
            if policy.interactive and _unresolvable(exc):
                raise Unavailable(f"{what}: the host name does not resolve ({exc})") from exc
            if policy.interactive and attempt == 0:
                budget = f"up to {policy.max_elapsed:.0f} s" if policy.max_elapsed else "as long as it takes"
                log.warning("%s: %s; retrying for %s (Ctrl-C to stop)", what, exc or type(exc).__name__, budget)
            hint = exc.retry_after if isinstance(exc, TransientStatus) else None
            attempt += 1
            wait = policy.delay(attempt - 1, hint)
            over_attempts = policy.max_attempts is not None and attempt >= policy.max_attempts
            over_time = policy.max_elapsed is not None and clock() - start + wait > policy.max_elapsed
            if over_attempts or over_time:
                raise Unavailable(f"{what} unavailable after {attempt} attempts "
                                  f"({clock() - start:.0f} s): {exc}") from exc
            if on_retry is not None:
                on_retry(attempt, wait, str(exc))
            sleep(wait)


def _unresolvable(exc: BaseException) -> bool:
    """A DNS failure anywhere in the exception's cause chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return True
        seen = seen.__cause__ or seen.__context__
    return "Name or service not known" in str(exc) or "nodename nor servname" in str(exc)


class TransientStatus(Exception):
    """A 5xx/408/425/429 answer, raised inside `retrying` so it is retried like a lost connection."""

    def __init__(self, response: httpx.Response):
        super().__init__(f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}")
        self.response = response
        self.retry_after = retry_after(response)


def request(http: httpx.Client, method: str, path: str, policy: Backoff = DEFAULT, *,
            on_retry: Callable[[int, float, str], None] | None = None, **kw) -> httpx.Response:
    """`http.request` under the policy: returns the first non-transient response (2xx/3xx or a
    4xx verdict for the caller to read); raises `Unavailable` when the budget runs out."""
    def once() -> httpx.Response:
        r = http.request(method, path, **kw)
        if is_transient(r.status_code):
            raise TransientStatus(r)
        return r
    base = str(http.base_url).rstrip("/")
    return retrying(once, policy, what=f"{method} {base}{path}", on_retry=on_retry)
