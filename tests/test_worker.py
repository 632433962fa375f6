"""Worker behaviour against a real coordinator app (in-process): retries and give-ups."""
from fastapi.testclient import TestClient

from ailo.federation.coordinator import CoordinatorConfig
from ailo.federation.worker import Worker
from ailo.server.services import build_app
from ailo.wallet import Wallet


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
