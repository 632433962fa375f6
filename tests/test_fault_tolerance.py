"""Round liveness, start-up hygiene, readiness and durable rooms (issue 17; in-process)."""
import time

import torch
from fastapi.testclient import TestClient

from ailo.federation.coordinator.coordinator import Coordinator, CoordinatorConfig
from ailo.federation.core.update_format import UpdateMeta, encode_update
from ailo.server.services import ServiceConfig, build_app
from ailo.storage.rounds_store import SQLiteRoundStore


def _submit(coord, client_id):
    delta = {k: torch.full_like(v, 1e-3) for k, v in coord.model.state_dict().items()}
    rnd = coord.current_round()
    receipt = coord.submit(UpdateMeta(client_id, rnd.id, rnd.base_version, 8, 5.0), encode_update(delta))
    coord.drain(tick=False)  # the validation pipeline's work, in this thread (no deadline tick)
    return coord.verdict(receipt["update_id"])


def _wait_until(t):
    time.sleep(max(0.0, t - time.time()) + 0.02)


def test_round_short_of_min_updates_closes_with_the_quorum_once_twice_its_deadline_old(tmp_path):
    coord = Coordinator(CoordinatorConfig(min_updates=2, round_seconds=0.6, val_batches=1), tmp_path / "s")
    assert _submit(coord, "alice")["accepted_in_round"] == 1
    rnd = coord.current_round()
    _wait_until(rnd.deadline)
    coord.tick()                       # first deadline: 1 < min_updates, extended by round_seconds
    assert coord.current_round().id == 1 and coord.version == 0
    extended = coord.current_round().deadline
    assert extended >= rnd.created + 2 * 0.6
    _wait_until(extended)
    coord.tick()                       # 2 × round_seconds old with ≥ quorum (1): closes with what it has
    assert coord.current_round().id == 2 and coord.version == 1
    assert coord.store.versions()[-1].round_id == 1


def test_a_round_with_no_accepted_update_or_below_the_quorum_never_closes(tmp_path):
    coord = Coordinator(CoordinatorConfig(min_updates=3, quorum_updates=2, round_seconds=0.3, val_batches=1),
                        tmp_path / "s")
    _wait_until(coord.current_round().deadline)
    coord.tick()
    _wait_until(coord.current_round().deadline)
    coord.tick()
    assert coord.current_round().id == 1            # nothing accepted: nothing to publish
    _submit(coord, "alice")
    _wait_until(coord.current_round().deadline)
    coord.tick()
    assert coord.current_round().id == 1            # 1 < quorum 2
    _submit(coord, "bob")
    _wait_until(coord.current_round().deadline)
    coord.tick()
    assert coord.current_round().id == 2 and coord.version == 1


def test_leftovers_of_interrupted_writes_are_removed_at_start(tmp_path):
    store = SQLiteRoundStore(tmp_path)
    kept, orphan = "a" * 64, "b" * 64
    store.put_update_blob(kept, b"accepted body")
    store.record_update(1, "alice", None, 8, 5.0, kept, 13, "accepted")
    (store.updates_dir / orphan).write_bytes(b"blob whose row never committed")
    (store.updates_dir / f".{orphan}.123.456.tmp").write_bytes(b"half an upd")
    (store.chunks_dir / f".{'c' * 64}.123.456.tmp").write_bytes(b"half a chu")
    store.close()
    again = SQLiteRoundStore(tmp_path)
    assert again.removed_at_start == {"tmp": 2, "updates": 1}
    assert sorted(p.name for p in again.updates_dir.iterdir()) == [kept]
    assert list(again.chunks_dir.iterdir()) == []
    assert again.update_blob(kept) == b"accepted body"


def test_ready_endpoint_and_rooms_survive_a_restart(tmp_path):
    cfg = CoordinatorConfig(min_updates=1, val_batches=1)
    room = {"id": "r1", "preset": "qwen-1.8b"}
    with TestClient(build_app(cfg, tmp_path, ServiceConfig(proof_of_contribution=False))) as client:
        r = client.get("/v1/ready")
        assert r.status_code == 200 and r.json()["ready"] is True and r.json()["round"] == 1
        token = {"Authorization": f"Bearer {(tmp_path / 'operator-token').read_text().strip()}"}
        created = client.post("/v1/rooms", json=room, headers=token)
        assert created.status_code == 201, created.text
    (tmp_path / "updates" / f".{'d' * 64}.1.2.tmp").write_bytes(b"x")
    with TestClient(build_app(cfg, tmp_path, ServiceConfig(proof_of_contribution=False))) as client:
        r = client.get("/v1/ready").json()
        assert r["ready"] is True and r["removed_at_start"]["tmp"] == 1
        again = client.get("/v1/rooms/r1")
        assert again.status_code == 200 and again.json()["state"] == "forming"
        assert client.delete("/v1/rooms/r1", headers=token).status_code == 200
    with TestClient(build_app(cfg, tmp_path, ServiceConfig(proof_of_contribution=False))) as client:
        assert client.get("/v1/rooms/r1").status_code == 404
