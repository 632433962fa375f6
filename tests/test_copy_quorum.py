"""A round filled to quorum by Sybil copies of the last global change (issue 25, point 6), over
real HTTP against a real coordinator.

Diluted copies of G = M_{v−1} − M_v (G plus 30 % noise, no training) pass every refusal check
(cosine with G ≈ 0.96 < 0.99, plausible norm, downhill) and are accepted. On the old code three
of them, from three registered wallets, filled a `--min-updates 3` round and closed it on their
own: the round published G again and the honest workers' updates for it arrived too late. Now
updates the settlement would pay nothing (no fresh work, docs/REWARDS.md "Fresh work") do not
count towards closing a round, neither at min_updates nor at the deadline rule, and they stay
unpaid once honest work closes the round."""
import dataclasses
import hashlib
import math
import time

import pytest
import torch

from ailo.chunks import ChunkStore, Manifest
from ailo.federation.client.uploader import submit_update
from ailo.federation.client.worker import Worker
from ailo.federation.coordinator.config import CoordinatorConfig
from ailo.federation.core.codecs import CodecSpec
from ailo.federation.core.signing import sign_update
from ailo.federation.core.update_format import UpdateMeta, encode_update
from ailo.ledger.tx import register_tx
from ailo.ledger.verify import now_ms
from ailo.testing.redteam import _HTTPSource
from ailo.wallet import Wallet
from tests.live import live_coordinator

pytestmark = pytest.mark.slow  # two rounds of three honest workers


def _published(http) -> dict[str, torch.Tensor]:
    """The current global model, as anyone downloads it."""
    manifest = Manifest.from_json(http.get("/v1/model").content)
    return ChunkStore(manifest, _HTTPSource(http)).state_dict()


def _diluted(g: dict[str, torch.Tensor], scale: float, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    noise = {k: torch.randn(v.shape, generator=gen) for k, v in g.items()}
    ratio = 0.3 * math.sqrt(sum(float((v.double() ** 2).sum()) for v in g.values())) / \
        math.sqrt(sum(float((v.double() ** 2).sum()) for v in noise.values()))
    return {k: scale * (v + ratio * noise[k]) for k, v in g.items()}


def test_sybil_copies_of_the_global_change_neither_fill_a_round_nor_get_paid(tmp_path, corpus_dir, one_thread):
    cfg = CoordinatorConfig(min_updates=3, local_steps=4, batch_size=4, seq_len=64, val_batches=1, lr_decay=0.8,
                            round_seconds=600)
    with live_coordinator(tmp_path / "state", cfg) as (app, url, http):
        coord = app.state.coordinator
        honest = []
        for k in range(3):
            w = Worker(url, f"honest-{k}", corpus_dir, k, 4, cache_dir=tmp_path / f"h{k}", progress=False,
                       wallet=Wallet.generate().with_username(f"honest-{k}"))
            w.ensure_registered()
            honest.append(w)
        sybils = [Wallet.generate().with_username(f"sybil-{i}") for i in range(3)]
        for s in sybils:
            assert http.post("/v1/register", json=register_tx(s, s.username, now_ms()).to_json()).status_code == 200
        m0 = _published(http)
        lr1 = http.post("/v1/tasks", json={"client_id": "sybil-0", "address": sybils[0].address}).json()["lr"]
        for w in honest:
            assert w.run_round().response["status"] == "accepted"
        assert coord.current_round().id == 2  # round 1 closed by honest work: G = M_0 − M_1 is public
        m1 = _published(http)
        g = {k: m0[k] - m1[k] for k in m0}

        for i, s in enumerate(sybils):  # three wallets, three diluted copies of G, zero compute
            task = http.post("/v1/tasks", json={"client_id": s.username, "address": s.address}).json()
            assert task["status"] == "train" and task["round"] == 2, task
            body = encode_update(_diluted(g, task["lr"] / lr1, seed=i), CodecSpec.from_task(task))
            meta = sign_update(s, UpdateMeta(s.username, 2, task["version"], task["steps"] * task["batch_size"], 5.0,
                                             task_id=task["task_id"]), hashlib.sha256(body).hexdigest())
            verdict = submit_update(http, body, meta)
            assert verdict["status"] == "accepted", verdict  # every refusal check passes
        assert coord.store.count_updates(2, "accepted") == 3
        time.sleep(1.0)  # the validator's ticks run meanwhile
        assert coord.current_round().id == 2, "three copies closed the round on their own"
        # due, and even overdue (the liveness rule closes with quorum 1): copies do not count
        coord.config = dataclasses.replace(coord.config, round_seconds=0.05)
        coord.store.extend_deadline(2, time.time() - 1)
        time.sleep(1.0)
        assert coord.current_round().id == 2 and coord.version == 1, "copies closed an overdue round"
        coord.config = dataclasses.replace(coord.config, round_seconds=600)
        coord.store.extend_deadline(2, time.time() + 600)

        for w in honest:  # honest work arrives and closes the round
            report = w.run_round()
            assert report.response["status"] == "accepted", report.response
        deadline = time.time() + 60
        while coord.settled_round < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert coord.version == 2 and coord.settled_round == 2
        paid = {u.address: u for u in coord.store.updates(2, "accepted")}
        assert len(paid) == 6

        def balance(addr):
            return http.get(f"/v1/balance/{addr}").json()["spendable"]
        assert [balance(s.address) for s in sybils] == [0, 0, 0]
        assert all(balance(w.wallet.address) > 0 for w in honest)
        scores = app.state.poc.fresh_scores(coord, 2)
        limit = app.state.poc.validation.min_fresh_cosine
        assert all(scores[paid[s.address].id] < limit for s in sybils), scores
        assert all(scores[paid[w.wallet.address].id] >= limit for w in honest), scores
