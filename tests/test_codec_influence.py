"""Bounded influence under a lossy codec (issue 25, point 4), over real HTTP.

On the old code a lossy codec emptied the norm history, which switched off both the z-score and
the 1.5× median clip: with `--optimizer sgd` (the documented pairing for `sparse`) a boosted
update was accepted at clip scale 1, moving the model by its full boosted norm. Now the history
and clip run on the decoded update under every codec (docs/REWARDS.md "Bounded influence")."""
import statistics

import pytest

from ailo.federation.client import worker as worker_module
from ailo.federation.client.worker import Worker
from ailo.federation.coordinator.config import CoordinatorConfig
from ailo.wallet import Wallet
from tests.live import live_coordinator

pytestmark = pytest.mark.slow


def test_a_boosted_sparse_sgd_update_is_bounded(tmp_path, corpus_dir, one_thread, monkeypatch):
    monkeypatch.setitem(worker_module.ATTACKS, "boost3", lambda d: {k: 3 * v for k, v in d.items()})
    cfg = CoordinatorConfig(min_updates=5, local_steps=3, val_batches=1, codec="sparse", lr_decay=0.8,
                            optimizer="sgd", lr=0.3)
    with live_coordinator(tmp_path / "state", cfg) as (app, url, http):
        def worker(name, k, attack=None):
            w = Worker(url, name, corpus_dir, k, 4, progress=False, wallet=Wallet.generate().with_username(name),
                       cache_dir=tmp_path / name, attack=attack)
            w.ensure_registered()
            return w
        for k, name in enumerate(("walter", "wendy", "wanda")):
            assert worker(name, k).run_round().response["status"] == "accepted"
        verdict = worker("booster", 3, attack="boost3").run_round().response
        rows = app.state.coordinator.store.updates(1, "accepted")
        honest = statistics.median(u.extra["norm_per_work"] for u in rows if u.client_id != "booster")
        if verdict["status"] == "refused":
            assert verdict["reason"] == "implausible_norm", verdict
        else:  # accepted: it moves the model by at most 1.5 × the median honest norm
            mine = next(u for u in rows if u.client_id == "booster")
            assert mine.extra["clip_scale"] * mine.extra["norm_per_work"] <= 1.5 * honest * 1.0001, mine.extra
