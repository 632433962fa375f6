"""The page's chunk loader (ailo/web/src/chunks.js) against real manifests from ailo.chunks.

In headless Chromium with IndexedDB: tensors assembled from verified chunks equal the
PyTorch state dict bit for bit; a second visit (page reload) downloads zero chunk bytes; a
changed model downloads only the changed chunks; a reload in the middle of a download resumes
from the chunks already cached; a corrupted chunk from the network or in the cache is refused.
"""
from __future__ import annotations

import threading
import time

import pytest
import torch
from safetensors.torch import load as st_load

from ailo.chunks import split_state_dict
from ailo.model import build_model
from ailo.testing.harness import LoopbackServer, chromium, ensure_built, open_harness

pytestmark = pytest.mark.slow

NUM_CHUNKS = 6

LOAD_JS = """async (concurrency) => {
  const cache = await ailo.ChunkCache.open('ailo-chunks');
  try {
    const r = await ailo.loadModelWeights({ cache, concurrency });
    await fetch('/result', { method: 'POST', body: ailo.serializeSafetensors(r.tensors) });
    return { ok: true, stats: r.stats, version: r.manifest.version, cached: (await cache.keys()).sort() };
  } catch (e) {
    return { ok: false, error: e.message, name: e.name, cached: (await cache.keys()).sort() };
  } finally {
    cache.kv.close();
  }
}"""


class Origin:
    """A stand-in for the coordinator's two read endpoints, serving ailo.chunks output."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.manifest_json = b""
        self.result = b""
        self.gate: dict[str, threading.Event] = {}
        self.requested: list[str] = []
        self.corrupt: set[str] = set()

    def publish(self, state: dict, version: int):
        manifest, blobs = split_state_dict(state, NUM_CHUNKS, version=version, preset="ailo-tiny",
                                           config=build_model("ailo-tiny", device="meta").cfg.to_dict())
        self.blobs.update(blobs)
        self.manifest_json = manifest.to_json().encode()
        return manifest

    def chunk(self, body, headers):
        sha = headers["path"].rsplit("/", 1)[1]
        self.requested.append(sha)
        if sha in self.gate:
            self.gate[sha].wait(30)
        data = self.blobs.get(sha)
        if data is None:
            return 404, b"no chunk", "text/plain"
        if sha in self.corrupt:
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return 200, data, "application/octet-stream"

    def sink(self, body, headers):
        self.result = body
        return b"ok"


@pytest.fixture(scope="module")
def env():
    ensure_built()
    origin = Origin()
    server = LoopbackServer(routes={"/v1/model": lambda b, h: (200, origin.manifest_json, "application/json"),
                                    "/v1/chunks/*": origin.chunk, "/result": origin.sink})
    with chromium() as ctx:
        yield origin, open_harness(ctx, server), server
    server.close()


def test_cache_first_visit_reload_and_model_change(env):
    origin, page, server = env
    state = {k: v.clone() for k, v in build_model("ailo-tiny", seed=0).state_dict().items()}
    m0 = origin.publish(state, version=0)

    first = page.evaluate(LOAD_JS, 3)
    assert first["ok"], first
    assert first["stats"]["downloadedBytes"] == m0.total_bytes and first["stats"]["cacheHits"] == 0
    assert first["cached"] == sorted(c.sha256 for c in m0.chunks)
    back = st_load(origin.result)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)

    # Second visit: a fresh page load, everything from IndexedDB, not one chunk request.
    origin.requested.clear()
    page.reload()
    page.wait_for_function("window.ailoReady === true")
    second = page.evaluate(LOAD_JS, 3)
    assert second["ok"] and second["stats"]["downloadedBytes"] == 0
    assert second["stats"]["cacheHits"] == len(m0.chunks) and origin.requested == []

    # A new model version that changes one tensor: only the chunks holding it are fetched.
    state["ln_f.weight"] += 0.5
    m1 = origin.publish(state, version=1)
    changed = {c.sha256 for c in m1.chunks} - {c.sha256 for c in m0.chunks}
    assert 0 < len(changed) < len(m1.chunks)
    origin.requested.clear()
    third = page.evaluate(LOAD_JS, 3)
    assert third["ok"] and third["version"] == 1
    assert sorted(origin.requested) == sorted(changed)
    assert third["stats"]["downloadedBytes"] == sum(c.size for c in m1.chunks if c.sha256 in changed)
    assert third["stats"]["cacheHits"] == len(m1.chunks) - len(changed)
    back = st_load(origin.result)
    assert torch.equal(back["ln_f.weight"], state["ln_f.weight"])


def test_reload_mid_download_resumes_from_cache(env):
    origin, page, server = env
    page.evaluate("() => ailo.ChunkCache.open('ailo-chunks').then((c) => c.clear())")
    state = build_model("ailo-tiny", seed=5).state_dict()
    m = origin.publish(state, version=2)
    stalled = m.chunks[3].sha256
    origin.gate[stalled] = threading.Event()
    origin.requested.clear()
    page.evaluate(f"() => {{ window.pending = ({LOAD_JS})(1); }}")  # one chunk at a time, in order
    deadline = time.time() + 60
    while stalled not in origin.requested and time.time() < deadline:
        time.sleep(0.05)
    assert origin.requested[:4] == [c.sha256 for c in m.chunks[:4]]
    page.reload()  # the visitor reloads while chunk 3 is still downloading
    page.wait_for_function("window.ailoReady === true")
    origin.gate[stalled].set()
    origin.requested.clear()
    resumed = page.evaluate(LOAD_JS, 1)
    assert resumed["ok"], resumed
    assert origin.requested == [c.sha256 for c in m.chunks[3:]]
    assert resumed["stats"]["cacheHits"] == 3
    assert resumed["stats"]["downloadedBytes"] == sum(c.size for c in m.chunks[3:])
    back = st_load(origin.result)
    assert all(torch.equal(back[k], state[k]) for k in state)
    del origin.gate[stalled]


def test_corrupted_chunks_are_refused(env):
    origin, page, server = env
    page.evaluate("() => ailo.ChunkCache.open('ailo-chunks').then((c) => c.clear())")
    state = build_model("ailo-tiny", seed=9).state_dict()
    m = origin.publish(state, version=3)
    bad = m.chunks[2].sha256
    origin.corrupt.add(bad)
    out = page.evaluate(LOAD_JS, 1)
    assert not out["ok"] and out["name"] == "ChunkIntegrityError" and "sha256 mismatch" in out["error"]
    assert bad not in out["cached"]  # never stored unverified
    origin.corrupt.clear()

    # A damaged cache entry (disk corruption, tampering) is dropped and fetched again.
    assert page.evaluate(LOAD_JS, 3)["ok"]
    page.evaluate("""async (sha) => {
      const c = await ailo.ChunkCache.open('ailo-chunks');
      const b = await c.get(sha); b[b.length - 1] ^= 0xff; await c.put(sha, b);
    }""", bad)
    origin.requested.clear()
    again = page.evaluate(LOAD_JS, 3)
    assert again["ok"] and again["stats"]["droppedCorrupt"] == 1 and origin.requested == [bad]
    back = st_load(origin.result)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_mirror_first_cross_origin_and_lying_mirror(env, tmp_path):
    """Chunks from a real nginx mirror on another origin (CORS + CORP headers under COEP);
    a corrupted mirror file and a dead mirror each cost one request, then the coordinator."""
    from tests.servers import NGINX, nginx_mirror
    if NGINX is None:
        pytest.skip("nginx is not installed (make setup)")
    origin, page, server = env
    page.evaluate("() => ailo.ChunkCache.open('ailo-chunks').then((c) => c.clear())")
    state = build_model("ailo-tiny", seed=11).state_dict()
    m = origin.publish(state, version=4)
    folder = tmp_path / "mirror"
    folder.mkdir()
    for c in m.chunks:
        (folder / c.sha256).write_bytes(origin.blobs[c.sha256])
    bad = m.chunks[1]
    data = bytearray(origin.blobs[bad.sha256])
    data[200] ^= 0x10
    (folder / bad.sha256).write_bytes(bytes(data))
    with nginx_mirror(folder, tmp_path / "nginx") as (url, _):
        from tests.procs import free_port
        m.mirrors = [f"http://127.0.0.1:{free_port()}", url + "/"]   # a dead mirror first
        origin.manifest_json = m.to_json().encode()
        origin.requested.clear()
        out = page.evaluate(LOAD_JS, 1)
    assert out["ok"], out
    assert origin.requested == [bad.sha256]                  # the coordinator served only the bad one
    stats = out["stats"]
    assert stats["mirrorChunks"] == len(m.chunks) - 1
    assert stats["mirrorBytes"] == m.total_bytes - bad.size
    assert len(stats["mirrorFailures"]) == 2, stats["mirrorFailures"]   # dead mirror once, lie once
    assert any(f"{url}: " in f and "sha256 mismatch" in f for f in stats["mirrorFailures"])
    back = st_load(origin.result)
    assert all(torch.equal(back[k], state[k]) for k in state)
