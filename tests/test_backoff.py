"""The shared back-off policy: bounded, jittered delays; what is retried and what is a verdict."""
import random

import httpx
import pytest

from ailo.backoff import Backoff, Unavailable, is_transient, request


def test_delays_grow_exponentially_are_jittered_and_capped():
    p = Backoff(base=0.5, factor=2.0, cap=8.0, jitter=0.5)
    rng = random.Random(1)
    for n in range(30):
        full = min(8.0, 0.5 * 2 ** n)
        samples = [p.delay(n, rng=rng) for _ in range(50)]
        assert all(0.5 * full <= d <= full for d in samples)
        assert len(set(samples)) > 1  # jittered: a crowd does not reconnect in lock-step
    assert p.delay(0, retry_after=5.0) >= 5.0 and p.delay(0, retry_after=100.0) <= 8.0


def test_transient_statuses():
    assert all(is_transient(s) for s in (500, 502, 503, 504, 408, 429))
    assert not any(is_transient(s) for s in (200, 202, 400, 401, 403, 404, 409, 413, 422))


def _client(answers):
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req.url.path)
        a = answers[min(len(calls) - 1, len(answers) - 1)]
        if isinstance(a, Exception):
            raise a
        return httpx.Response(a, json={"n": len(calls)})
    return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://c"), calls


def test_request_retries_connection_errors_and_5xx_until_an_answer():
    http, calls = _client([httpx.ConnectError("refused"), httpx.RemoteProtocolError("disconnected"), 503, 200])
    retries = []
    r = request(http, "GET", "/v1/model", Backoff(base=0.001), on_retry=lambda n, w, why: retries.append(n))
    assert r.status_code == 200 and r.json()["n"] == 4 and retries == [1, 2, 3]


def test_a_4xx_is_a_verdict_not_retried():
    http, calls = _client([409, 200])
    assert request(http, "POST", "/v1/updates", Backoff(base=0.001)).status_code == 409
    assert len(calls) == 1


def test_budget_runs_out_with_unavailable():
    http, calls = _client([httpx.ConnectError("refused")])
    with pytest.raises(Unavailable, match="after 3 attempts"):
        request(http, "GET", "/v1/tasks", Backoff(base=0.001, max_attempts=3))
    assert len(calls) == 3
