"""Worker behaviour against a real coordinator app (in-process): retries and give-ups."""
import httpx
import pytest
from fastapi.testclient import TestClient

from ailo.backoff import Backoff

from ailo.federation.coordinator.coordinator import CoordinatorConfig
from ailo.federation.client.worker import Worker
from ailo.server.services import build_app
from ailo.wallet import Wallet


@pytest.mark.slow  # > 20 s on the 2-core box (make test runs it; make test-fast skips it)
def test_refused_worker_retries_on_fresh_batches_then_gives_the_round_up(tmp_path, corpus_dir):
    app = build_app(CoordinatorConfig(min_updates=1, local_steps=3, val_batches=1), tmp_path / "coord")
    with TestClient(app) as client:
        cheater = Worker("http://testserver", "cheater", corpus_dir, 0, 2, progress=False, http=client,
                         wallet=Wallet.generate().with_username("cheater"), attack="sign-flip",
                         cache_dir=tmp_path / "c0", max_attempts=2)
        cheater.ensure_registered()
        first, second = cheater.run_round(), cheater.run_round()
        assert [r.response["reason"] for r in (first, second)] == ["wrong_direction", "wrong_direction"]
        assert cheater.run_round() is None and cheater.last_status == "wait"  # gave round 1 up
        refused = app.state.coordinator.store.updates(1, "refused")
        assert len(refused) == 2 and refused[0].sha256 != refused[1].sha256  # retrained on other batches

        honest = Worker("http://testserver", "honest", corpus_dir, 1, 2, progress=False, http=client,
                        wallet=Wallet.generate().with_username("honest"), cache_dir=tmp_path / "c1")
        honest.ensure_registered()
        report = honest.run_round()
        assert report.response["status"] == "accepted" and report.response["aggregated"] is True
        assert report.downloaded > 0
        again = honest.run_round()  # round 2: chunks changed, the cache re-downloads only those
        assert again.response["status"] == "accepted" and again.round == 2


class Flaky(httpx.BaseTransport):
    """In front of the app: `faults[(method, path)]` is a list of what to do to the next calls —
    "refuse" (connection refused, nothing reaches the coordinator), "drop" (the coordinator
    handles the request, the reply is lost: a crash before answering), or a callable(request)."""

    def __init__(self, inner: httpx.BaseTransport, faults: dict):
        self.inner, self.faults = inner, faults

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        todo = self.faults.get((request.method, request.url.path))
        action = todo.pop(0) if todo else None
        if action == "refuse":
            raise httpx.ConnectError("connection refused", request=request)
        if callable(action):
            action(request)
            raise httpx.ConnectError("connection refused", request=request)
        inner = self.inner.handle_request(request)
        response = httpx.Response(inner.status_code, headers=inner.headers, content=inner.read())
        if action == "drop":
            raise httpx.RemoteProtocolError("server disconnected without sending a response", request=request)
        return response


def _flaky_worker(client, faults, name, corpus_dir, tmp_path, shard=0):
    http = httpx.Client(transport=Flaky(client._transport, faults), base_url="http://testserver")
    return Worker("http://testserver", name, corpus_dir, shard, 2, progress=False, http=http,
                  wallet=Wallet.generate().with_username(name), cache_dir=tmp_path / name,
                  policy=Backoff(base=0.01, cap=0.05))


def test_reply_lost_after_accept_is_retried_with_the_same_body_and_counted_once(tmp_path, corpus_dir, one_thread):
    app = build_app(CoordinatorConfig(min_updates=1, local_steps=3, val_batches=1), tmp_path / "coord")
    with TestClient(app) as client:
        faults = {("POST", "/v1/tasks"): ["refuse", "refuse"], ("GET", "/v1/model"): ["refuse"],
                  ("POST", "/v1/updates"): ["refuse", "drop"]}
        worker = _flaky_worker(client, faults, "alice", corpus_dir, tmp_path)
        worker.ensure_registered()
        report = worker.run_round()
        coord, ledger = app.state.coordinator, app.state.ledger
        rows = coord.store.updates(1)
        assert report.response["status"] == "accepted" and report.response["replayed"] is True
        assert report.response["resigned"] == 0                    # the same signed body, sent again
        assert [(u.status, u.id) for u in rows] == [("accepted", report.response["update_id"])]
        assert rows[0].extra["device"].startswith("torch cpu")  # X-Ailo-Device, shown on the dashboard
        assert coord.version == 1 and worker.outages == 3  # tasks, model, update: each rode it out
        paid = ledger.balance(worker.wallet.address).spendable
        assert paid > 0 and ledger.state().refs.keys() == {f"update:{rows[0].id}"}  # one mint


def test_nonce_consumed_by_an_interrupted_attempt_is_re_signed(tmp_path, corpus_dir, one_thread):
    app = build_app(CoordinatorConfig(min_updates=1, local_steps=3, val_batches=1), tmp_path / "coord")
    with TestClient(app) as client:
        coord = app.state.coordinator

        def consume_nonce(request):  # the coordinator read the nonce, then died before the row
            coord.store.set_counter(f"nonce:{request.headers['x-ailo-address']}", int(request.headers["x-ailo-nonce"]))
        worker = _flaky_worker(client, {("POST", "/v1/updates"): [consume_nonce]}, "bob", corpus_dir, tmp_path)
        worker.ensure_registered()
        report = worker.run_round()
        assert report.response["status"] == "accepted" and report.response["resigned"] == 1
        assert [u.status for u in coord.store.updates(1)] == ["refused", "accepted"]
        assert coord.store.updates(1)[0].reason == "replay"


def test_registration_whose_reply_was_lost_is_recognised(tmp_path, corpus_dir):
    app = build_app(CoordinatorConfig(min_updates=1, local_steps=3, val_batches=1), tmp_path / "coord")
    with TestClient(app) as client:
        worker = _flaky_worker(client, {("POST", "/v1/register"): ["drop"]}, "carol", corpus_dir, tmp_path)
        worker.ensure_registered()  # the resent REGISTER is refused as a duplicate, the balance shows it landed
        assert app.state.ledger.username(worker.wallet.address) == "carol"


def test_task_carries_the_warmup_and_the_worker_trains_with_it(tmp_path, corpus_dir, monkeypatch):
    import ailo.federation.client.worker as worker_module
    app = build_app(CoordinatorConfig(min_updates=1, local_steps=3, val_batches=1, warmup_steps=2), tmp_path / "coord")
    seen, real = [], worker_module.train_planned  # every full task trains through the plan's step loop
    monkeypatch.setattr(worker_module, "train_planned",
                        lambda model, batches, cfg, plan, device: (seen.append(cfg), real(model, batches, cfg, plan, device))[1])
    with TestClient(app) as client:
        assert client.post("/v1/tasks", json={"client_id": "peek"}).json()["warmup_steps"] == 2
        worker = Worker("http://testserver", "warm", corpus_dir, 0, 2, progress=False, http=client,
                        wallet=Wallet.generate().with_username("warm"), cache_dir=tmp_path / "w")
        worker.ensure_registered()
        report = worker.run_round()
        assert [c.warmup_steps for c in seen] == [2] and report.response["status"] == "accepted"
