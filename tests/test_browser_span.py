"""A room's span in TensorFlow.js (headless Chromium) against the PyTorch span (issue 16, part 1).

Random Llama (grouped-query attention, tied embeddings, rope_theta 5e5), Qwen2 (q/k/v bias,
rope_theta 1e6, sharded files) and ailo GPT checkpoints are served by a rooms coordinator
(`GET /v1/rooms/{id}/weights`, `/chunks/{sha}`); the page fetches only its span's pieces,
verifies and caches them, builds `BrowserSpan` and runs a prefill plus cached decode steps.
Every output equals `SpanModel`'s within 1e-3 relative, on wasm and on WebGL (SwiftShader).
"""
from __future__ import annotations

import pytest
import torch

from fastapi.staticfiles import StaticFiles

from ailo.server import devserver
from ailo.inference.units import RequestCache
from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.inference.loader import load_span, save_ailo_checkpoint
from ailo.inference.rooms import RoomRegistry
from ailo.inference.serving import ThreadedServer
from ailo.inference.weights import CheckpointIndex
from ailo.model import GPT, GPTConfig
from ailo.testing.harness import chromium, ensure_built

pytestmark = pytest.mark.slow
TOL = 1e-3
PROMPT = [7, 100, 42, 9, 250, 3, 77]
DECODE = [11, 300, 5]

# room -> (folder, spans to compare)
ROOMS = {"llama": ("llama", [(0, 3), (3, 6), (6, 8)]), "qwen": ("qwen", [(0, 2), (2, 5), (5, 6)]),
         "gpt": ("gpt", [(0, 1), (1, 4)])}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    ensure_built()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("checkpoints")
    make_hf_checkpoint(root / "llama", "llama", layers=4, heads=4, kv_heads=2, tie=True, rope_theta=5e5, init_std=0.3)
    make_hf_checkpoint(root / "qwen", "qwen2", layers=3, heads=4, kv_heads=1, rope_theta=1e6, init_std=0.3,
                       max_shard_size="60KB")
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(name="gpt-test", n_layer=2, n_embd=32, n_head=4, n_ffn=64, n_ctx=32, vocab_size=512))
    save_ailo_checkpoint(gpt, root / "gpt")
    rooms = RoomRegistry()
    mirror = tmp_path_factory.mktemp("mirror")
    app = devserver.build_app(rooms, checkpoints=root, web=True, mirrors=("/mirror",))
    app.mount("/mirror", StaticFiles(directory=mirror))  # a same-origin static "mirror" for the test
    server = ThreadedServer(app).start()
    from ailo.inference.families import read_spec
    for rid, (folder, _) in ROOMS.items():
        spec = read_spec(root / folder)
        rooms.create_room(rid, spec, 2, checkpoint=folder)
    try:
        with chromium() as ctx:
            page = ctx.new_page()
            page.ailo_console = []
            page.on("console", lambda m: page.ailo_console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: page.ailo_console.append(f"pageerror: {e}"))
            page.goto(server.url + "/harness")
            page.wait_for_function("window.ailoReady === true", timeout=60_000)
            yield {"root": root, "page": page, "url": server.url, "mirror": mirror}
    finally:
        server.stop()


def reference(root, folder: str, start: int, end: int, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    span = load_span(root / folder, start, end, dtype="float32").model
    cache, pos, out = RequestCache(), 0, []
    for x in inputs:
        out.append(span(x, pos, cache).float())
        pos += x.shape[1]
    return out


def chain_inputs(root, folder: str, spans: list[tuple[int, int]]) -> dict[tuple[int, int], list[torch.Tensor]]:
    """The input every span sees in a real pipeline: ids for the first, the previous span's output after."""
    steps = [torch.tensor([PROMPT])] + [torch.tensor([[t]]) for t in DECODE]
    out = {}
    for s in spans:
        out[s] = steps
        steps = reference(root, folder, s[0], s[1], steps)
    return out


RUN_JS = """async ([backend, room, start, end, steps]) => {
  await ailo.useBackend(backend);
  const { manifest, weights, stats } = await ailo.loadSpanWeights({ room, start, end, dbName: 'span-test-' + backend });
  const span = new ailo.BrowserSpan(manifest.spec, start, end, weights);
  const cache = new ailo.SpanCache();
  const outs = [];
  let pos = 0;
  for (const x of steps) {
    const input = start === 0 ? Int32Array.from(x) : Float32Array.from(x);
    const r = await span.forward(input, pos, cache);
    outs.push({ shape: r.shape, data: Array.from(r.data) });
    pos = cache.length;
  }
  cache.dispose();
  span.dispose();
  return { outs, names: Object.keys(manifest.tensors), stats, backend: ailo.tfjs.getBackend(), tensors: ailo.tfjs.memory().numTensors };
}"""


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("backend", ["wasm", "webgl"])
@pytest.mark.parametrize("room", list(ROOMS))
def test_page_span_equals_pytorch_span(env, room, backend):
    folder, spans = ROOMS[room]
    page, root = env["page"], env["root"]
    inputs = chain_inputs(root, folder, spans)
    for start, end in spans:
        steps = [x.flatten().tolist() for x in inputs[(start, end)]]
        ref = reference(root, folder, start, end, inputs[(start, end)])
        got = page.evaluate(RUN_JS, [backend, room, start, end, steps])
        assert got["backend"] == backend
        loaded = load_span(root / folder, start, end)
        assert sorted(got["names"]) == sorted(loaded.tensor_names)  # exactly the span's tensors
        # identical pieces (e.g. zero biases) travel once
        assert got["stats"]["totalBytes"] == CheckpointIndex(root / folder).span_manifest(start, end)["total_bytes"]
        assert 0 < got["stats"]["totalBytes"] <= loaded.tensor_bytes
        errs = []
        for g, r in zip(got["outs"], ref):
            assert g["shape"] == list(r.shape)
            errs.append(rel(torch.tensor(g["data"]).reshape(r.shape), r))
        print(f"{room} [{start},{end}) {backend}: rel errors {['%.1e' % e for e in errs]}")
        assert max(errs) <= TOL, errs
    assert not [m for m in page.ailo_console if m.startswith("pageerror")], page.ailo_console


def test_second_load_comes_from_indexeddb_and_bad_pieces_are_refused(env):
    page, url = env["page"], env["url"]
    out = page.evaluate("""async () => {
      const a = await ailo.loadSpanWeights({ room: 'llama', start: 0, end: 2, dbName: 'span-cache-test' });
      const b = await ailo.loadSpanWeights({ room: 'llama', start: 0, end: 2, dbName: 'span-cache-test' });
      const m = await ailo.fetchSpanManifest('', 'llama', 0, 2);
      const [c0, c1] = m.chunks;
      const path = (sha) => '/v1/rooms/llama/chunks/' + sha;
      const errors = [];
      for (const [info, chunkPath] of [[{ ...c0, size: c0.size + 1 }, path], [{ ...c0, size: c1.size }, () => path(c1.sha256)]]) {
        try { await new ailo.ChunkLoader({ chunkPath }).chunkBytes(info); errors.push('accepted'); } catch (e) { errors.push(e.name + ': ' + e.message); }
      }
      return { first: a.stats, second: b.stats, errors };
    }""")
    assert out["first"]["downloadedBytes"] > 0 and out["first"]["cacheHits"] == 0
    assert out["second"]["downloadedBytes"] == 0 and out["second"]["cacheHits"] == out["second"]["chunks"]
    assert "truncated or padded" in out["errors"][0] and out["errors"][0].startswith("ChunkIntegrityError"), out
    assert "sha256 mismatch" in out["errors"][1] and out["errors"][1].startswith("ChunkIntegrityError"), out


def test_page_frames_are_the_wire_format(env):
    """wire.js decodes what ailo/inference/wire.py encodes and encodes what it decodes."""
    import base64

    from ailo.inference.wire import Frame

    g = torch.Generator().manual_seed(1)
    frames = [Frame("req-é", 5, (2, 7), torch.tensor([[3, 9, 511]]), reset=True),
              Frame("r2", 0, (0, 1), torch.randn(1, 2, 4, generator=g).to(torch.bfloat16)),
              Frame("r3", 1, (1, 2), torch.randn(1, 3, 4, generator=g).to(torch.float16))]
    got = env["page"].evaluate("""(b64s) => b64s.map((b64) => {
      const f = ailo.decodeFrame(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
      const back = ailo.encodeFrame({ ...f, data: Float32Array.from(f.data) });
      return { ...f, data: Array.from(f.data), back: btoa(String.fromCharCode(...back)) };
    })""", [base64.b64encode(f.encode()).decode() for f in frames])
    for f, g_ in zip(frames, got):
        assert (g_["requestId"], g_["start"], tuple(g_["span"]), g_["reset"]) == (f.request_id, f.start, f.span, f.reset)
        assert g_["shape"] == list(f.tensor.shape) and g_["data"] == f.tensor.float().flatten().tolist()
        back = Frame.decode(base64.b64decode(g_["back"]))
        assert back.request_id == f.request_id and back.span == f.span and back.reset == f.reset
        assert back.tensor.dtype == torch.float32 and torch.equal(back.tensor, f.tensor.float())
    bad = env["page"].evaluate("() => { try { ailo.decodeFrame(new Uint8Array(10)); } catch (e) { return e.name + ': ' + e.message; } }")
    assert bad == "WireError: frame too short"


def test_span_pieces_come_from_a_mirror_first_and_lies_fall_back(env):
    """Pieces a mirror holds are fetched there (verified); a damaged one falls back to the coordinator."""
    idx = CheckpointIndex(env["root"] / "qwen")
    m = idx.span_manifest(2, 4)
    for c in m["chunks"]:
        (env["mirror"] / c["sha256"]).write_bytes(idx.read(c["sha256"]))
    bad = m["chunks"][0]["sha256"]
    (env["mirror"] / bad).write_bytes(b"\0" * m["chunks"][0]["size"])
    got = env["page"].evaluate("""async () => {
      const r = await ailo.loadSpanWeights({ room: 'qwen', start: 2, end: 4, dbName: null });
      return { stats: r.stats, names: Object.keys(r.manifest.tensors), mirrors: r.manifest.mirrors };
    }""")
    st = got["stats"]
    assert got["mirrors"] == ["/mirror"]
    assert st["mirrorChunks"] == len(m["chunks"]) - 1 and st["chunks"] == len(m["chunks"])
    assert len(st["mirrorFailures"]) == 1 and "sha256 mismatch" in st["mirrorFailures"][0]
    assert sorted(got["names"]) == sorted(m["tensors"])
