"""Compact downloads in the browser: what the page spends to move from served version 0 to 1.

Two ways for the contributor page to get W_1 (ailo/web/src/patching.js, ailo/federation/core/served.py):
  chunks — fetch every bf16 chunk of W_1, verify size + sha256, assemble float32 tensors;
  patch  — fetch the int8 patch P_1, rebuild W_1 = bf16(W_0 + decode(P_1)) bit for bit,
           re-serialise every chunk, check its sha256 against the manifest, assemble.
Both in headless Chromium over loopback (so the time is the page's CPU, not a network's), best
of --repeats, with the bytes each moves; and the native client's patch path
(`apply_patch` + `chunk_bytes` + sha256, what `ailo.federation.client.patching.ServedCache` runs) on
the same W_0, P_1 in this process as the baseline. W_1 is W_0's master after one random step of
--step-std (an AdamW round moves weights ~1e-3). Prints one JSON line.

    .venv/bin/python bench/browser_compact.py
    .venv/bin/python bench/browser_compact.py --preset ailo-small --repeats 3
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ailo.chunks import split_state_dict  # noqa: E402
from ailo.chunks import chunk_bytes  # noqa: E402
from ailo.federation.core.served import apply_patch, next_served, to_served  # noqa: E402
from ailo.model import build_model, get_preset  # noqa: E402
from ailo.testing.harness import LoopbackServer, chromium, ensure_built, json_route, open_harness  # noqa: E402

PAGE_JS = """async (repeats) => {
  const m0 = await (await fetch('/m0.json')).json();
  const m1 = await (await fetch('/m1.json')).json();
  const chunkPath = (sha) => `/chunks/${sha}`;
  const held = ailo.assembleTensors(m0, await new ailo.ChunkLoader({ chunkPath, mirrors: [] }).loadAll(m0));
  const best = { chunks: Infinity, patch: Infinity };
  let same = true, patchBytes = 0, chunkBytes = 0;
  for (let r = 0; r < repeats; r++) {
    let t0 = performance.now();
    const loader = new ailo.ChunkLoader({ chunkPath, mirrors: [] });
    const viaChunks = ailo.assembleTensors(m1, await loader.loadAll(m1));
    best.chunks = Math.min(best.chunks, performance.now() - t0);
    chunkBytes = loader.stats.downloadedBytes;
    t0 = performance.now();
    const patch = new Uint8Array(await (await fetch('/patch', { cache: 'no-store' })).arrayBuffer());
    const viaPatch = ailo.assembleTensors(m1, await ailo.patchedChunks(m1, held, patch));
    best.patch = Math.min(best.patch, performance.now() - t0);
    patchBytes = patch.byteLength;
    for (const [name, t] of viaChunks) {
      const u = viaPatch.get(name).data;
      for (let i = 0; i < t.data.length; i++) if (t.data[i] !== u[i]) { same = false; break; }
    }
  }
  return { best, same, patchBytes, chunkBytes };
}"""


def native_patch_ms(w0: dict, patch: bytes, manifest, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        w1 = apply_patch(w0, patch)
        blobs = chunk_bytes(manifest, w1)
        for c in manifest.chunks:
            assert hashlib.sha256(blobs[c.index]).hexdigest() == c.sha256
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="ailo-tiny")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--step-std", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = get_preset(args.preset)
    master0 = {k: v.detach().clone() for k, v in build_model(cfg, seed=0).state_dict().items()}
    g = torch.Generator().manual_seed(1)
    master1 = {k: v + args.step_std * torch.randn(v.shape, generator=g) for k, v in master0.items()}
    w0 = to_served(master0)
    patch, w1 = next_served(w0, master1)
    meta = {"preset": args.preset, "config": {}}
    m0, blobs0 = split_state_dict(w0, args.chunks, version=0, **meta)
    m1, blobs1 = split_state_dict(w1, args.chunks, version=1, **meta)
    fp32_total = sum(c.size for c in split_state_dict(master1, args.chunks, version=1, **meta)[0].chunks)
    blobs = {**blobs0, **blobs1}
    native = native_patch_ms(w0, patch, m1, args.repeats)

    ensure_built()
    routes = {"/m0.json": json_route(json.loads(m0.to_json())), "/m1.json": json_route(json.loads(m1.to_json())),
              "/patch": patch, "/chunks/*": lambda body, h: blobs[h["path"].rsplit("/", 1)[1]]}
    server = LoopbackServer(routes=routes)
    try:
        with chromium() as ctx:
            page = open_harness(ctx, server)
            out = page.evaluate(PAGE_JS, args.repeats)
    finally:
        server.close()
    assert out["same"], "the patched W_1 differs from the served chunks"
    print(json.dumps({
        "preset": args.preset, "weights": sum(v.numel() for v in w1.values()), "chunks": args.chunks,
        "bytes": {"fp32": fp32_total, "bf16_chunks": out["chunkBytes"], "patch": out["patchBytes"]},
        "page_ms": {"chunks": round(out["best"]["chunks"], 1), "patch": round(out["best"]["patch"], 1)},
        "native_patch_ms": round(native, 1),
        "page_patch_vs_native": round(out["best"]["patch"] / native, 2),
        "machine": platform.machine(), "repeats": args.repeats,
    }))


if __name__ == "__main__":
    main()
