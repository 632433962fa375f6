"""Real processes on loopback: a coordinator and 3 native workers run FedAvg rounds."""
import json
import signal
import sqlite3

import httpx
import numpy as np
import pytest
import torch

from ailo.chunks import ChunkStore, DirectorySource, Manifest
from ailo.federation.core.update_format import UpdateMeta, encode_update
from tests.procs import ailo, free_port, stop, wait_healthy

pytestmark = pytest.mark.slow


def _weights(state_dir, manifest_json):
    manifest = Manifest.from_json(manifest_json)
    return ChunkStore(manifest, DirectorySource(state_dir / "chunks")).state_dict()


def test_three_workers_three_rounds_loss_falls_and_fedavg_exact(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state = tmp_path / "coord"
    coord = ailo("coordinator", "--state", str(state), "--port", str(port), "--rounds", "3",
                 "--local-steps", "15", "--min-updates", "3", log=tmp_path / "coord.log")
    workers = []
    try:
        wait_healthy(url, coord)
        workers = [ailo("worker", "--coordinator", url, "--shard", str(k), "--num-shards", "3",
                        "--client-id", f"worker-{k}", "--cache", str(tmp_path / f"cache{k}"), "--quiet",
                        "--wallet", str(tmp_path / f"wallet{k}.json"),
                        log=tmp_path / f"w{k}.log") for k in range(3)]
        for w in workers:
            assert w.wait(timeout=400) == 0, (tmp_path / "coord.log").read_text()
        status = httpx.get(f"{url}/v1/status").json()
        balances = []
        for k in range(3):
            address = json.loads((tmp_path / f"wallet{k}.json").read_text())["address"]
            balances.append(httpx.get(f"{url}/v1/balance/{address}").json()["spendable"])
    finally:
        for p in workers + [coord]:
            stop(p)
    losses = [h["val_loss"] for h in status["history"]]
    assert [h["version"] for h in status["history"]] == [0, 1, 2, 3]
    assert losses[3] < losses[2] < losses[1] < losses[0]
    assert status["clients"] == ["worker-0", "worker-1", "worker-2"]
    assert all(b >= 3 * 10**7 for b in balances), balances  # ≥ 0.1 ALC per accepted update

    # Recompute every aggregate independently from the stored updates and n_k.
    db = sqlite3.connect(state / "state.db")
    versions = dict(db.execute("SELECT version, manifest FROM versions"))
    for rnd in (1, 2, 3):
        base = _weights(state, versions[rnd - 1])
        after = _weights(state, versions[rnd])
        rows = db.execute("SELECT n_samples, sha256 FROM updates WHERE round_id=? AND status='accepted'", (rnd,)).fetchall()
        assert len(rows) == 3
        n = sum(r[0] for r in rows)
        from safetensors.numpy import load_file
        deltas = [(r[0] / n, load_file(str(state / "updates" / r[1]))) for r in rows]
        for name in ("wte.weight", "blocks.1.mlp.fc.weight", "ln_f.bias"):
            expected = base[name].numpy() - sum(w * d[name] for w, d in deltas)
            np.testing.assert_allclose(after[name].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_coordinator_killed_mid_round_keeps_accepted_updates(tmp_path):
    state = tmp_path / "coord"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ("coordinator", "--state", str(state), "--port", str(port), "--min-updates", "3", "--open", "--codec", "fp32")  # bodies built here
    coord = ailo(*args, log=tmp_path / "coord.log")
    try:
        wait_healthy(url, coord)
        manifest = Manifest.from_json(httpx.get(f"{url}/v1/model").content)
        base = ChunkStore(manifest, DirectorySource(state / "chunks")).state_dict()
        deltas = {c: {k: torch.randn_like(v) * 1e-3 for k, v in base.items()} for c in ("a", "b", "c")}
        counts = {"a": 8, "b": 16, "c": 24}

        def submit(client):
            meta = UpdateMeta(client, 1, 0, counts[client], 6.0)
            r = httpx.post(f"{url}/v1/updates", content=encode_update(deltas[client]), headers=meta.to_headers(), timeout=60)
            assert r.status_code == 202, r.text
            return httpx.get(f"{url}/v1/updates/{r.json()['update_id']}", params={"wait": 30}, timeout=60).json()

        assert submit("a")["status"] == "accepted" and submit("b")["status"] == "accepted"
        stop(coord, signal.SIGKILL)  # no clean shutdown
        coord = ailo(*args, log=tmp_path / "coord.log")
        wait_healthy(url, coord)
        status = httpx.get(f"{url}/v1/status").json()
        assert status["round"] == 1 and status["accepted_in_round"] == 2 and status["version"] == 0
        r = submit("c")
        assert r["status"] == "accepted" and r["aggregated"] is True and r["version"] == 1
        new = Manifest.from_json(httpx.get(f"{url}/v1/model").content)
        after = ChunkStore(new, DirectorySource(state / "chunks")).state_dict()
    finally:
        stop(coord)
    for name in base:
        expected = base[name] - sum(counts[c] / 48 * deltas[c][name] for c in deltas)
        assert torch.allclose(after[name], expected, atol=1e-6), name
