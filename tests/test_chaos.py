"""Chaos: a real coordinator process SIGKILLed at random moments and at named crash points
(inside a round close, between publishing a version and paying it, half-way through paying a
round, half-way through writing a blob, after accepting an update) and restarted on the same
state; real clients ride it out and the ledger/round invariants hold. Longer runs: bench/chaos.py."""
from __future__ import annotations

import json
import os
import signal
import threading

import httpx
import pytest
import torch

from ailo.backoff import Backoff
from ailo.chunks import ChunkStore, DirectorySource, Manifest
from ailo.federation.core.update_format import UpdateMeta, encode_update
from ailo.federation.client.uploader import submit_update
from tests.chaos_harness import Chaos, ChaosConfig
from tests.procs import ailo, free_port, stop, wait_healthy

pytestmark = pytest.mark.slow


def test_clients_ride_out_kills_inside_close_publish_pay_and_at_random(tmp_path):
    chaos = Chaos(tmp_path, ChaosConfig(random_kills=1, crash_points=("close_aggregate", "after_publish", "mid_settle"),
                                        rounds_after_first_kill=3, timeout=170, seed=17))
    try:
        result = chaos.run()
    finally:
        chaos.close()
    summary = result.summary()
    print(json.dumps(summary))
    assert result.crash_point_kills == ["close_aggregate", "after_publish", "mid_settle"], summary
    assert result.kills == 4 and result.client_exits == 0, summary
    assert result.rounds_closed_after_first_kill >= 3, summary
    assert result.invariant_failures == [], summary
    assert result.transfers_acked > 0 and result.requests_completed > 0, summary


def status_rows(state):
    import sqlite3
    db = sqlite3.connect(state / "state.db")
    try:
        return db.execute("SELECT client_id, status FROM updates").fetchall()
    finally:
        db.close()


def test_half_written_blob_is_removed_and_a_reply_lost_after_accept_counts_once(tmp_path):
    state, port = tmp_path / "coord", free_port()
    url = f"http://127.0.0.1:{port}"
    args = ("coordinator", "--state", str(state), "--port", str(port), "--min-updates", "2", "--open", "--codec", "fp32")  # bodies built here

    def start(crash_at=None):
        if crash_at:
            os.environ["AILO_CRASH_AT"] = crash_at
        try:
            return ailo(*args, log=tmp_path / "coord.log")
        finally:
            os.environ.pop("AILO_CRASH_AT", None)

    coord = start("update_write")
    try:
        wait_healthy(url, coord, 90, path="/v1/ready")
        manifest = Manifest.from_json(httpx.get(f"{url}/v1/model").content)
        base = ChunkStore(manifest, DirectorySource(state / "chunks")).state_dict()
        body = encode_update({k: torch.randn_like(v) * 1e-3 for k, v in base.items()})
        meta = UpdateMeta("alice", 1, 0, 8, 6.0)
        with pytest.raises(httpx.TransportError):    # killed with the body in its temporary file
            httpx.post(f"{url}/v1/updates", content=body, headers=meta.to_headers(), timeout=60)
        assert coord.wait(30) == -signal.SIGKILL
        assert len(list((state / "updates").glob(".*.tmp"))) == 1 and status_rows(state) == []
        coord = start("after_accept")
        ready = wait_healthy(url, coord, 90, path="/v1/ready").json()
        assert ready["removed_at_start"]["tmp"] == 1 and not list((state / "updates").glob(".*.tmp"))

        verdict = {}
        upload = threading.Thread(target=lambda: verdict.update(submit_update(
            httpx.Client(base_url=url, timeout=60), body, meta, policy=Backoff(base=0.2, cap=1.0))))
        upload.start()                                 # 202, judged accepted, committed, then killed
        assert coord.wait(60) == -signal.SIGKILL
        coord = start()                                # the uploader keeps polling for the verdict meanwhile
        upload.join(120)
        assert verdict["status"] == "accepted" and verdict["resigned"] == 0 and verdict["resent"] == 0, verdict
        status = httpx.get(f"{url}/v1/status").json()
        assert status["accepted_in_round"] == 1 and status["version"] == 0
        rows = httpx.get(f"{url}/v1/dashboard/updates").json()["updates"]
        assert [(u["id"], u["status"]) for u in rows if u["client"] == "alice"] == [(verdict["update_id"], "accepted")]
        again = submit_update(httpx.Client(base_url=url, timeout=60), body, meta)  # the same body, once more
        assert again["status"] == "accepted" and again["update_id"] == verdict["update_id"]
    finally:
        stop(coord)
