"""Compact downloads: the bf16 served model and int8 patches from v−1 (served.py, downloads.py,
patching.py) through a real coordinator app and worker."""
import pytest
import torch
from fastapi.testclient import TestClient

from ailo.chunks import ChunkStore, DirectorySource, Manifest
from ailo.federation.core.codecs import CodecSpec, encode
from ailo.federation.coordinator.coordinator import Coordinator, CoordinatorConfig
from ailo.federation.core.served import apply_patch, next_served, to_served
from ailo.federation.client.worker import Worker
from ailo.server.app import create_app


def _rand(seed, like):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 1e-2 for k, v in like.items()}


def test_served_model_tracks_the_master_without_drift():
    master = {"w": torch.randn(300, 70), "b": torch.randn(70)}
    served = to_served(master)
    for seed in range(6):  # many small steps: errors must not accumulate
        master = {k: v - s for (k, v), s in zip(master.items(), _rand(seed, master).values())}
        patch, served = next_served(served, master)
        assert all(t.dtype == torch.bfloat16 for t in served.values())
    for k in master:  # one int8 step + one bf16 rounding away from the fp32 master
        err = (served[k].float() - master[k]).abs().max()
        assert err <= master[k].abs().max() * 2 ** -7, (k, err)


def _worker(client, name, corpus_dir, tmp_path, shard=0):
    return Worker("http://testserver", name, corpus_dir, shard, 2, progress=False, http=client,
                  cache_dir=tmp_path / f"cache-{name}")


@pytest.mark.slow  # > 20 s on the 2-core box (make test runs it; make test-fast skips it)
def test_worker_downloads_bf16_then_only_patches(tmp_path, corpus_dir, one_thread):
    cfg = CoordinatorConfig(min_updates=1, local_steps=2, val_batches=1, codec="sparse", compact_downloads=True)
    coord = Coordinator(cfg, tmp_path / "state")
    with TestClient(create_app(coord)) as client:
        fp32_total = coord.manifest.total_bytes
        w = _worker(client, "alice", corpus_dir, tmp_path)
        first = w.run_round()
        assert first.response["status"] == "accepted", first.response
        assert 0.45 * fp32_total < first.downloaded < 0.55 * fp32_total  # the bf16 chunks
        second = w.run_round()
        assert second.response["status"] == "accepted" and second.version == 1
        patch = client.get("/v1/patches/1").content
        assert second.downloaded == len(patch) < fp32_total / 3.5
        # the worker trained from exactly the served W_1 (rebuilt from W_0 + patch, verified by hash)
        held_version, held = w.served.held
        m1 = Manifest.from_json(coord.downloads.manifest_path(1).read_text())
        assert held_version == 1 and all(t.dtype == "bfloat16" for t in m1.tensors.values())
        w1 = ChunkStore(m1, DirectorySource(coord.store.chunks_dir)).state_dict()
        assert all(torch.equal(held[k], w1[k]) for k in w1)

        # a patch that does not rebuild the listed chunks is refused: the client falls back
        shapes = {k: tuple(v.shape) for k, v in held.items()}
        coord.downloads.patch_path(2).write_bytes(encode({k: torch.full(s, 1e-3) for k, s in shapes.items()},
                                                         CodecSpec("int8")))
        bob = _worker(client, "bob", corpus_dir, tmp_path, shard=1)
        bob.served = type(w.served)(tmp_path / "cache-bob", held=(1, held))
        report = bob.run_round()
        assert report.response["status"] == "accepted" and report.version == 2
        assert report.downloaded > 0.45 * fp32_total and "does not match its sha256" in bob.served.notes[0]
        # routes refuse what they cannot serve, with reasons
        for path, status, reason in [("/v1/model?format=fp8", 400, "bad_format"), ("/v1/patches/99", 404, "no_patch"),
                                     ("/v1/patches/0", 404, "no_patch")]:
            r = client.get(path)
            assert (r.status_code, r.json()["reason"]) == (status, reason)


def test_restart_keeps_serving_and_patching(tmp_path):
    cfg = CoordinatorConfig(min_updates=1, val_batches=1, compact_downloads=True)
    from ailo.federation.core.update_format import UpdateMeta
    coord = Coordinator(cfg, tmp_path / "s")
    coord.submit(UpdateMeta("a", 1, 0, 8, 5.0), encode(_rand(1, coord.model.state_dict()), CodecSpec()))
    coord.drain()  # the validation pipeline's work, in this thread
    v1 = coord.downloads.manifest_path(1).read_text()
    coord.store.close()
    again = Coordinator(cfg, tmp_path / "s")
    assert again.downloads.manifest_json(1, again.model.state_dict()) == v1
    again.submit(UpdateMeta("a", 2, 1, 8, 5.0), encode(_rand(2, again.model.state_dict()), CodecSpec()))
    again.drain()  # the validation pipeline's work, in this thread
    m1, m2 = (Manifest.from_json(again.downloads.manifest_path(v).read_text()) for v in (1, 2))
    w1 = ChunkStore(m1, DirectorySource(again.store.chunks_dir)).state_dict()
    w2 = ChunkStore(m2, DirectorySource(again.store.chunks_dir)).state_dict()
    rebuilt = apply_patch(w1, again.downloads.patch_path(2).read_bytes())
    assert all(torch.equal(rebuilt[k], w2[k]) for k in w2)
    plain = Coordinator(CoordinatorConfig(val_batches=1), tmp_path / "plain")
    with TestClient(create_app(plain)) as client:
        r = client.get("/v1/model?format=bf16")
        assert (r.status_code, r.json()["reason"]) == (404, "no_compact")
