import math

import pytest
import torch

from ailo.chunks import (ChunkIntegrityError, ChunkStore, DirectorySource, Manifest, plan_chunks,
                         split_state_dict, write_chunks)
from ailo.model import build_model, get_preset
from ailo.offload import streamed_logits


def _store(tmp_path, n=7, budget=None, seed=0):
    model = build_model("ailo-tiny", seed=seed)
    manifest, blobs = split_state_dict(model.state_dict(), n, version=1, preset="ailo-tiny")
    write_chunks(tmp_path / "server", manifest, blobs)
    source = DirectorySource(tmp_path / "server")
    return model, manifest, source, ChunkStore(manifest, source, tmp_path / "cache", budget)


def test_round_trip_identical_tensors(tmp_path):
    model, manifest, _, store = _store(tmp_path)
    assert len(manifest.chunks) == 7
    loaded = store.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded[k], v), k
    again = Manifest.from_json(manifest.to_json())
    assert again.to_json() == manifest.to_json()


def test_split_is_deterministic_and_unchanged_chunks_keep_hash():
    state = build_model("ailo-tiny").state_dict()
    m1, _ = split_state_dict(state, 7)
    m2, _ = split_state_dict({k: v.clone() for k, v in state.items()}, 7)
    assert [c.sha256 for c in m1.chunks] == [c.sha256 for c in m2.chunks]
    state2 = dict(state)
    state2["ln_f.weight"] = state["ln_f.weight"] + 1
    m3, _ = split_state_dict(state2, 7)
    changed = [a.sha256 != b.sha256 for a, b in zip(m1.chunks, m3.chunks)]
    assert changed == [False] * 6 + [True]  # ln_f lives in the last chunk only


def test_ailo_1b_splits_into_35_roughly_equal_chunks():
    model = build_model("ailo-1b", device="meta")
    specs = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    plan = plan_chunks(specs, 35)
    sizes: dict[int, int] = {}
    for entry in plan.values():
        row = math.prod(entry.shape[1:]) * 4
        for p in entry.parts:
            sizes[p.chunk] = sizes.get(p.chunk, 0) + (p.stop - p.start) * row
        assert sum(p.stop - p.start for p in entry.parts) == entry.shape[0]
    assert sorted(sizes) == list(range(35))
    total = sum(sizes.values())
    assert abs(total - 3.2858816e9) < 1e3  # 821 M fp32 parameters
    assert max(sizes.values()) / min(sizes.values()) < 1.01
    assert len(plan["wte.weight"].parts) >= 3  # the embedding spans several chunks


def test_corrupted_chunk_is_refused_with_its_name(tmp_path):
    _, manifest, source, store = _store(tmp_path)
    bad = manifest.chunks[2]
    path = tmp_path / "server" / bad.sha256
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    name = next(n for n, e in manifest.tensors.items() if any(p.chunk == 2 for p in e.parts))
    with pytest.raises(ChunkIntegrityError, match=rf"chunk 2 \({bad.sha256[:12]}\).*sha256 mismatch"):
        store.tensor(name)
    assert not (tmp_path / "cache" / bad.sha256).exists()


def test_truncated_chunk_is_refused(tmp_path):
    _, manifest, _, store = _store(tmp_path)
    path = tmp_path / "server" / manifest.chunks[0].sha256
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ChunkIntegrityError, match="chunk 0 .*truncated"):
        store.state_dict()


def test_damaged_cache_entry_is_refetched(tmp_path):
    model, manifest, source, store = _store(tmp_path)
    store.prefetch()
    victim = tmp_path / "cache" / manifest.chunks[1].sha256
    victim.write_bytes(b"garbage")
    fresh = ChunkStore(manifest, source, tmp_path / "cache")
    loaded = fresh.state_dict()
    assert fresh.stats.fetched_bytes == manifest.chunks[1].size
    assert torch.equal(loaded["wte.weight"], model.wte.weight)


def test_cache_hit_reads_nothing_from_source(tmp_path):
    _, manifest, source, store = _store(tmp_path)
    store.state_dict()
    assert source.bytes_read == manifest.total_bytes
    second = ChunkStore(manifest, source, tmp_path / "cache")
    second.state_dict()
    assert second.stats.fetched_bytes == 0 and source.bytes_read == manifest.total_bytes
    assert second.stats.cache_hits == len(manifest.chunks)


def test_memory_budget_respected_and_streamed_forward_matches(tmp_path):
    model, manifest, _, _ = _store(tmp_path, n=12)
    budget = 3 * max(c.size for c in manifest.chunks)
    store = ChunkStore(manifest, DirectorySource(tmp_path / "server"), tmp_path / "cache", budget_bytes=budget)
    idx = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        expected = model.eval()(idx)
    got = streamed_logits(store, get_preset("ailo-tiny"), idx)
    assert torch.allclose(got, expected, atol=1e-5)
    assert store.stats.peak_resident_bytes <= budget
    assert store.stats.evictions > 0


def test_budget_smaller_than_a_chunk_is_refused(tmp_path):
    _, manifest, source, _ = _store(tmp_path)
    with pytest.raises(ValueError, match="smaller than the largest chunk"):
        ChunkStore(manifest, source, budget_bytes=10)
