"""Overlapped, time-sized rounds (issue 27): workers train while their update uploads and is judged."""
import threading

import pytest
import torch
from fastapi.testclient import TestClient

from ailo.federation.coordinator.config import CoordinatorConfig
from ailo.federation.core.local_phase import effective_task, phase_fields, work_steps
from ailo.federation.core.validate import same_work
from ailo.federation.client.overlap import Job, OverlappedRun
from ailo.federation.client.worker import Worker
from ailo.server.services import ServiceConfig, build_app
from ailo.wallet import Wallet


def _job(delta):
    return Job({}, delta, 8, 1, 0.0, 0.0, 0.0, 0.0)


def test_merge_replaces_the_own_sent_step_with_the_global_one_or_carries_it():
    w_old, w_new = torch.zeros(4), torch.tensor([1.0, 2.0, 3.0, 4.0])
    sent = torch.tensor([0.5, 0.0, -0.5, 0.0])          # Δ_r = W_old − θ_at_submit
    progress = torch.tensor([0.1, 0.1, 0.1, 0.1])       # δ: steps since the submission
    for carry, expect in ((False, w_new + progress), (True, w_new - sent + progress)):
        model = torch.nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            model.weight.copy_((w_old - sent + progress)[None])
        base = {"weight": w_old[None].clone()}
        OverlappedRun._merge(model, base, {"weight": w_new[None].to(torch.bfloat16)}, None if carry else _job({"weight": sent[None]}))
        assert torch.allclose(model.weight.detach()[0], expect)
        assert torch.equal(base["weight"][0], w_new)     # the next update is taken against W_new


def test_time_sized_tasks_judge_the_work_an_update_claims():
    task = {"steps": 20, "batch_size": 8, "lr": 1e-3, **phase_fields(30.0, 100)}
    assert task["seconds"] == 30.0 and work_steps(task, 8 * 57) == 57
    assert work_steps(task, 10**9) == 100 and work_steps(task, 0) == 1       # capped, never zero
    assert effective_task({"steps": 20, "batch_size": 8}, 8 * 57)["steps"] == 20  # step-sized: unchanged
    assert phase_fields(0, 100) == {}


def test_time_sized_norms_are_z_scored_within_the_round_among_similar_claimed_work():
    # (norm per lr·step, claimed steps, round): measured on ailo-tiny int8 (bench/utilization.py)
    rows = [(1316.0, 5, 1), (730.0, 25, 2), (732.0, 25, 2), (276.0, 25, 3), (300.0, 40, 3), (999.0, 100, 3),
            (500.0, None, 3)]
    assert same_work(rows, 25, 3) == [276.0, 300.0, 500.0]
    assert same_work(rows, 5, 1) == [1316.0] and same_work(rows, 25, 4) == []


@pytest.mark.slow
def test_overlapped_workers_train_through_uploads_and_every_update_is_accepted(tmp_path, corpus_dir, one_thread):
    # small steps and a small holdout: the validator shares this process's CPU with two trainers
    # that never stop (bench/utilization.py runs the same path as separate processes)
    cfg = CoordinatorConfig(min_updates=2, local_steps=3, local_seconds=1.5, batch_size=4, seq_len=32, val_batches=1,
                            max_rounds=3, round_seconds=600, compact_downloads=True, codec="int8")
    app = build_app(cfg, tmp_path / "coord", ServiceConfig(holdout_sequences=16))
    lines: list[str] = []
    with TestClient(app) as client:
        workers = [Worker("http://testserver", f"wkr{i}", corpus_dir, i, 2, progress=False, http=client,
                          wallet=Wallet.generate().with_username(f"wkr{i}"), cache_dir=tmp_path / f"c{i}", json_log=True)
                   for i in range(2)]
        for w in workers:
            w.ensure_registered()
        threads = [threading.Thread(target=w.run, args=(3,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=900)
        coord = app.state.coordinator
        assert coord.version == 3
        for w in workers:
            assert [r.response.get("status") for r in w.reports] == ["accepted"] * 3
            assert [r.version for r in w.reports] == [0, 1, 2]      # each on the version served then
            later = w.reports[1:]
            # rounds 2+: the phase began while the previous update was still out, so the trainer
            # ran for (nearly) the whole wall time between two submissions
            assert all(r.timings["train"] >= 0.8 * r.timings["wall"] for r in later), [r.timings for r in later]
            assert all(r.uploaded > 0 and r.downloaded > 0 for r in w.reports[:-1])
        rows = coord.store.updates(2, "accepted")
        assert {u.client_id for u in rows} == {"wkr0", "wkr1"}
