"""The delayed rule (issue 27): an update trained on the previous version is taken into the open
round and judged against its own base; older ones and copies of a global change are refused."""
import hashlib
import time

import pytest
import torch
from fastapi.testclient import TestClient

from ailo.chunks import ChunkStore, DirectorySource, Manifest
from ailo.data import TokenDataset
from ailo.federation.client.worker import Worker
from ailo.federation.coordinator.config import CoordinatorConfig
from ailo.federation.coordinator.holdout import sequence_losses
from ailo.federation.core.signing import sign_update
from ailo.federation.core.update_format import UpdateMeta, encode_update
from ailo.ledger.tx import register_tx
from ailo.ledger.verify import now_ms
from ailo.model import build_model
from ailo.server.services import ServiceConfig, build_app
from ailo.training import TrainConfig, train_local
from ailo.wallet import Wallet
from tests.verdicts import resolve

STEPS, BATCH, SEQ = 3, 4, 32


def _weights(coord, version):
    rec = next(v for v in coord.store.versions() if v.version == version)
    return ChunkStore(Manifest.from_json(rec.manifest), DirectorySource(coord.store.chunks_dir)).state_dict()


def _trained_on(coord, version, corpus_dir, seed):
    """An honest Δ: STEPS AdamW steps on real text from W_version."""
    model = build_model(coord.cfg.name)
    model.load_state_dict(_weights(coord, version))
    batches = TokenDataset.from_dir(corpus_dir, "train", 2, 3).random_batches(BATCH, SEQ, seed=seed)
    return train_local(model, batches, TrainConfig(steps=STEPS, batch_size=BATCH, lr=3e-3)).delta


def _submit(client, wallet, delta, round_id, version):
    body = encode_update(delta)
    meta = sign_update(wallet, UpdateMeta(f"c-{wallet.address[:8]}", round_id, version, STEPS * BATCH, 6.0),
                       hashlib.sha256(body).hexdigest())
    r = client.post("/v1/updates", content=body, headers=meta.to_headers())
    out = resolve(client, r)
    while out.json().get("status") == "pending":  # a loaded box: the verdict may take longer than one long-poll
        out = resolve(client, r)
    return out


@pytest.mark.slow
def test_an_update_on_the_previous_version_is_judged_on_it_and_copies_or_older_ones_are_refused(
        tmp_path, corpus_dir, one_thread):
    cfg = CoordinatorConfig(min_updates=2, local_steps=STEPS, batch_size=BATCH, seq_len=SEQ, val_batches=1,
                            max_rounds=3, codec="fp32")
    app = build_app(cfg, tmp_path / "coord", ServiceConfig(holdout_sequences=16))
    with TestClient(app) as client:
        coord, poc = app.state.coordinator, app.state.poc
        honest = [Worker("http://testserver", f"h{i}", corpus_dir, i, 3, progress=False, http=client,
                         wallet=Wallet.generate().with_username(f"honest-{i}"), cache_dir=tmp_path / f"c{i}")
                  for i in range(2)]
        for w in honest:
            w.ensure_registered()
        late, mallory = Wallet.generate(), Wallet.generate()
        for name, wallet in (("late", late), ("mallory", mallory)):
            assert client.post("/v1/register", json=register_tx(wallet, name, now_ms()).to_json()).status_code == 200

        # the late wallet trains on W_0 during round 1; two others close round 1 before it uploads
        stale_delta = _trained_on(coord, 0, corpus_dir, seed=5)
        assert [w.run_round().response["status"] for w in honest] == ["accepted", "accepted"]
        assert coord.version == 1 and coord.current_round().id == 2

        # round 2 open (base v1): a copy of the global change W_0 − W_1 claiming base 0 is a free
        # loss drop at W_0, and is refused as a copy
        w0, w1 = _weights(coord, 0), _weights(coord, 1)
        r = _submit(client, mallory, {k: w0[k] - w1[k] for k in w0}, 1, 0)
        assert (r.status_code, r.json()["reason"]) == (422, "copied_global"), r.json()

        # the honest late update of round 1 is taken into round 2, judged against W_0
        r = _submit(client, late, stale_delta, 1, 0)
        assert r.status_code == 200 and r.json()["status"] == "accepted", r.json()
        row = coord.store.update(r.json()["update_id"])
        assert row.round_id == 2 and row.extra["task_round"] == 1 and row.extra["stale"] == 1
        x, y = poc.pool.windows(0, SEQ)
        with torch.no_grad():
            at_w0 = sequence_losses(coord.model, x, y, 8, params={k: v.float() for k, v in w0.items()})
            at_w1 = sequence_losses(coord.model, x, y, 8, params={k: v.float() for k, v in w1.items()})
        assert row.extra["loss_before"] == pytest.approx(float(at_w0.mean()), rel=1e-5)   # its own base, v0's draw
        assert abs(float(at_w1.mean()) - float(at_w0.mean())) > 1e-3                      # (not the current model)
        assert client.post("/v1/tasks", json={"client_id": "x", "address": late.address}).json()["status"] == "wait"

        # a second one for round 1 from the same wallet is a duplicate; round 2 closes with a fresh update
        r = _submit(client, late, _trained_on(coord, 0, corpus_dir, seed=6), 1, 0)
        assert r.json()["reason"] == "duplicate", r.json()
        assert honest[0].run_round().response["status"] == "accepted"
        assert coord.version == 2
        accepted = coord.store.updates(2, "accepted")
        assert {u.address for u in accepted} == {late.address, honest[0].wallet.address}
        deadline = time.time() + 300
        while coord.settled_round < 2 and time.time() < deadline:
            time.sleep(0.2)
        paid = app.state.ledger.balance(late.address)
        assert paid.spendable + paid.pending == 10**7   # BaseRate × n_k only: no LossBonus, no SpeedBonus

        # round 3 (base v2): two rounds back is older than max_staleness = 1; a base that is not
        # its round's is refused as before
        r = _submit(client, mallory, _trained_on(coord, 0, corpus_dir, seed=7), 1, 0)
        assert (r.status_code, r.json()["reason"]) == (409, "stale_round"), r.json()
        r = _submit(client, mallory, _trained_on(coord, 1, corpus_dir, seed=8), 2, 0)
        assert (r.status_code, r.json()["reason"]) == (409, "stale_version"), r.json()
