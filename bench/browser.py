"""Training throughput of the browser client (TensorFlow.js in headless Chromium) per backend,
against the native trainer (`ailo.training.train_local`) on the same preset and batch, in the
same run. Prints one JSON line.

Each backend runs the page's `trainLocal` (AdamW, clipping; the exact code a contributor's
page runs) after one warm-up step (shader compilation, wasm start-up), best of --repeats.
Headless Chromium here runs with --disable-gpu, so WebGL is SwiftShader's software GL and
WebGPU has no adapter: the numbers are a CPU-only machine's, not a GPU browser's.

    .venv/bin/python bench/browser.py
    .venv/bin/python bench/browser.py --backends wasm webgl --steps 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ailo.model import build_model, get_preset  # noqa: E402
from ailo.training import TrainConfig, train_local  # noqa: E402
from ailo.web.harness import LoopbackServer, chromium, ensure_built, open_harness  # noqa: E402

PAGE_JS = """async ([backend, preset, batch, seq, steps, repeats]) => {
  await ailo.useBackend(backend);
  const model = new ailo.GPT(preset, null, 0);
  const cfg = { steps, batch_size: batch, lr: 1e-4, optimizer: 'adamw', grad_clip: 1.0 };
  const vocab = model.cfg.vocab_size;
  const tokens = new Int32Array(200000);
  const rand = ailo.mulberry32(0);
  for (let i = 0; i < tokens.length; i++) tokens[i] = Math.floor(rand() * vocab);
  const data = ailo.randomBatches(tokens, batch, seq, 0);
  await ailo.trainLocal(model, data, { ...cfg, steps: 1 });  // warm-up
  const secs = [];
  let loss = null;
  for (let r = 0; r < repeats; r++) {
    const out = await ailo.trainLocal(model, data, cfg);
    secs.push(out.seconds);
    loss = out.trainLoss;
  }
  model.dispose();
  return { seconds: Math.min(...secs), tokens: steps * batch * seq, loss, info: ailo.backendInfo() };
}"""


def native_tokens_per_s(preset: str, batch: int, seq: int, steps: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 50257, (batch, seq + 1), generator=g) for _ in range(steps)]
    data = [(d[:, :-1], d[:, 1:]) for d in data]
    model = build_model(preset, seed=0)
    tc = TrainConfig(steps=steps, batch_size=batch, lr=1e-4)
    train_local(model, data[:1], TrainConfig(steps=1, batch_size=batch, lr=1e-4))  # warm-up
    best = min(train_local(model, data, tc, torch.device("cpu")).seconds for _ in range(repeats))
    return steps * batch * seq / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="ailo-tiny")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--backends", nargs="*", default=None, help="default: every backend that initialises")
    args = ap.parse_args()
    cfg = get_preset(args.preset)
    seq = min(args.seq_len, cfg.n_ctx)
    ensure_built()
    server = LoopbackServer()
    browser: dict[str, dict] = {}
    try:
        with chromium() as ctx:
            page = open_harness(ctx, server)
            available = page.evaluate("() => ailo.availableBackends()")
            version = ctx.browser.version if ctx.browser else ""
            for backend in args.backends or available:
                if backend not in available:
                    browser[backend] = {"available": False}
                    continue
                r = page.evaluate(PAGE_JS, [backend, cfg.name, args.batch_size, seq, args.steps, args.repeats])
                browser[backend] = {"tokens_per_s": round(r["tokens"] / r["seconds"], 1),
                                    "step_s": round(r["seconds"] / args.steps, 3), "loss": round(r["loss"], 4),
                                    **({"wasm_threads": r["info"]["threads"]} if backend == "wasm" else {})}
    finally:
        server.close()
    native = native_tokens_per_s(cfg.name, args.batch_size, seq, args.steps, max(args.repeats, 2))
    best = max((v["tokens_per_s"] for v in browser.values() if "tokens_per_s" in v), default=0.0)
    out = {"bench": "browser_training", "preset": cfg.name, "batch_size": args.batch_size, "seq_len": seq,
           "steps": args.steps, "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "chromium": version, "chromium_flags": "--headless --disable-gpu (software WebGL, no WebGPU adapter)",
           "backends_available": available, "browser": browser,
           "native": {"device": "cpu", "torch_threads": torch.get_num_threads(), "tokens_per_s": round(native, 1)},
           "ratio_best_browser_to_native": round(best / native, 4) if native else None,
           "ratio_per_backend": {k: round(v["tokens_per_s"] / native, 4) for k, v in browser.items() if "tokens_per_s" in v}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
