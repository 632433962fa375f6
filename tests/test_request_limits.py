"""Rate limits an attacker cannot sidestep (issue 25, point 5), against a real `ailo coordinator`.

On the old code `POST /v1/tasks` had no limit (and every answer grew `Coordinator.tasks` for
ever), and uvicorn trusted `X-Forwarded-For` from 127.0.0.1 by default, so behind a local proxy
passing client headers through, each request could pick its own rate-limit key. Now tasks are
limited per network address, issued tasks are pruned, and forwarded headers are trusted only from
`--forwarded-allow-ips` (default: none)."""
import itertools

import httpx
import pytest

from ailo.federation.coordinator import coordinator as coordinator_module
from ailo.federation.coordinator.config import CoordinatorConfig
from ailo.ledger.tx import register_tx
from ailo.ledger.verify import now_ms
from ailo.wallet import Wallet
from tests.live import live_coordinator
from tests.procs import ailo, free_port, stop, wait_healthy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    base = tmp_path_factory.mktemp("limits")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = ailo("coordinator", "--state", str(base / "state"), "--port", str(port), "--registrations-per-hour", "1",
                log=base / "coordinator.log")
    try:
        wait_healthy(url, proc, 120)
        with httpx.Client(base_url=url, timeout=30) as http:
            yield http
    finally:
        stop(proc)


def test_forwarded_for_does_not_choose_the_rate_limit_key(coordinator):
    http = coordinator
    first = Wallet.generate()
    r = http.post("/v1/register", json=register_tx(first, "fwd_first", now_ms()).to_json(),
                  headers={"X-Forwarded-For": "198.51.100.1"})
    assert r.status_code == 200, r.text
    second = Wallet.generate()
    r = http.post("/v1/register", json=register_tx(second, "fwd_second", now_ms()).to_json(),
                  headers={"X-Forwarded-For": "198.51.100.2"})  # a fresh "address" per request on the old code
    assert (r.status_code, r.json()["reason"]) == (429, "rate_limited"), r.text
    assert "127.0.0.1" in r.json()["detail"]


def test_task_requests_are_rate_limited_per_address(coordinator):
    http = coordinator
    codes = []
    for i in itertools.count():
        r = http.post("/v1/tasks", json={"client_id": f"junk-{i}"}, headers={"X-Forwarded-For": f"203.0.113.{i % 250}"})
        codes.append(r.status_code)
        if r.status_code == 429 or i > 2000:
            break
    assert codes[-1] == 429 and r.json()["reason"] == "rate_limited", codes[-5:]
    assert len(codes) >= 100 and set(codes[:-1]) == {200}  # burst 120, then 10/s: a slow client sees more


def test_issued_tasks_are_pruned(tmp_path, monkeypatch):
    monkeypatch.setattr(coordinator_module, "MAX_OPEN_TASKS", 5)
    with live_coordinator(tmp_path / "state", CoordinatorConfig(min_updates=1, val_batches=1)) as (app, _, http):
        coord = app.state.coordinator
        for i in range(20):
            assert http.post("/v1/tasks", json={"client_id": f"c{i}"}).json()["status"] == "train"
        assert len(coord.tasks) <= 5
        coord.store.publish(1, 1, coord.manifest.to_json(), 1.0, coord.current_round().task, 1, 10**10)
        assert http.post("/v1/tasks", json={"client_id": "next"}).json()["round"] == 2
        assert [v[1] for v in coord.tasks.values()] == [2]  # the closed round's tasks are gone
