"""The page's update codecs (ailo/web/src/codecs.js, headless Chromium) against
ailo/federation/core/codecs.py: for the same Δ and error-feedback residual, the same body bytes (so
the same sha256 to sign) and the same new residual, under every codec."""
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ailo.federation.core.codecs import CodecSpec, compress
from ailo.testing.harness import LoopbackServer, chromium, ensure_built, open_harness

pytestmark = pytest.mark.slow

SPECS = {"fp32": CodecSpec(), "int8": CodecSpec("int8"), "sparse": CodecSpec("sparse", 0.01),
         "sparse-decay": CodecSpec("sparse", 0.037, 0.9), "int8-decay": CodecSpec("int8", ef_decay=0.95)}


def _inputs():
    g = torch.Generator().manual_seed(5)
    delta = {
        "wte.weight": torch.randn(1500, 64, generator=g) * 1e-3,       # 96,000 entries: two 65536-slots
        "blocks.0.attn.qkv.weight": torch.randn(192, 64, generator=g) * 2e-3,
        "blocks.0.ln1.bias": torch.randn(257, generator=g),            # not a multiple of 256, k % 4 ≠ 0
        "ties": torch.tensor([0.5, -0.5, 0.5, 0.25, 0.0, -0.5] * 50),  # many equal magnitudes
        "zeros": torch.zeros(33),
        "scalar": torch.tensor(-3.0),
    }
    error = {k: torch.randn(v.shape, generator=g) * 1e-4 for k, v in delta.items() if k != "zeros"}
    return delta, error


@pytest.fixture(scope="module")
def page():
    ensure_built()
    delta, error = _inputs()
    results: dict[str, bytes] = {}

    def sink(body: bytes, headers: dict) -> bytes:
        results[headers["path"].rsplit("/", 1)[1]] = body
        return b"ok"

    server = LoopbackServer(routes={"/delta.safetensors": st_save(delta), "/error.safetensors": st_save(error),
                                    "/result/*": sink})
    with chromium() as ctx:
        p = open_harness(ctx, server)
        p.ailo_results = results
        yield p
    server.close()


JS = """
async ([key, spec, useError]) => {
  const load = async (url) => {
    const { tensors } = ailo.parseSafetensors(new Uint8Array(await (await fetch(url)).arrayBuffer()));
    return new Map([...tensors].map(([n, t]) => [n, { shape: t.shape, data: ailo.toFloat32(t.dtype, t.bytes) }]));
  };
  const delta = await load('/delta.safetensors');
  const err = useError ? new Map([...(await load('/error.safetensors'))].map(([n, t]) => [n, t.data])) : null;
  const codec = ailo.codecFromTask({ codec: spec });
  const t0 = performance.now();
  const { body, error } = ailo.compress(delta, err, codec);
  const ms = performance.now() - t0;
  await fetch('/result/body-' + key, { method: 'POST', body });
  const out = new Map([...error].map(([n, v]) => [n, { shape: delta.get(n).shape, data: v }]));
  await fetch('/result/error-' + key, { method: 'POST', body: ailo.serializeSafetensors(out) });
  return { ms, sha: await ailo.sha256Hex(body) };
}
"""


@pytest.mark.parametrize("use_error", [False, True], ids=["first-round", "with-residual"])
@pytest.mark.parametrize("key", list(SPECS))
def test_page_encodes_byte_identically(page, key, use_error):
    spec = SPECS[key]
    delta, error = _inputs()
    body, residual = compress(delta, error if use_error else None, spec)
    tag = f"{key}-{use_error}"
    out = page.evaluate(JS, [tag, spec.to_task(), use_error])
    got = page.ailo_results[f"body-{tag}"]
    print(f"{key}: {len(got)} bytes, page encode {out['ms']:.0f} ms")
    assert got == body
    if spec.lossy:
        back = st_load(page.ailo_results[f"error-{tag}"])
        assert set(back) == set(residual)
        for k, v in residual.items():
            assert torch.equal(back[k].reshape(v.shape), v), k
