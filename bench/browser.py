"""Training throughput of the browser client (TensorFlow.js in headless Chromium) per backend,
against the native trainer (`ailo.training.train_local`) on the same preset and batch, and the
page's room-span forward (`BrowserSpan`, what a browser inference node runs) against the native
`SpanModel` on the same random Llama checkpoint and span, in the same run. Prints one JSON line.

Span: a random Llama (GQA) checkpoint served by an in-process rooms coordinator; the page
fetches the span's pieces through `GET /v1/rooms/{id}/weights` like a browser node, then runs a
prefill of --span-prompt tokens and --span-decode cached decode steps (best of --repeats);
the native side runs the same span in PyTorch (float32, CPU) the same way.

Each backend runs the page's `trainLocal` (AdamW, clipping; the exact code a contributor's
page runs) after one warm-up step (shader compilation, wasm start-up), best of --repeats.
Headless Chromium here runs with --disable-gpu, so WebGL is SwiftShader's software GL and
WebGPU has no adapter: the numbers are a CPU-only machine's, not a GPU browser's.

    .venv/bin/python bench/browser.py
    .venv/bin/python bench/browser.py --backends wasm webgl --steps 5
    .venv/bin/python bench/browser.py --skip-train --span-hidden 512 --span-layers 4
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ailo.model import build_model, get_preset  # noqa: E402
from ailo.training import TrainConfig, train_local  # noqa: E402
from ailo.testing.harness import LoopbackServer, chromium, ensure_built, open_harness  # noqa: E402

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


SPAN_JS = """async ([backend, room, start, end, prompt, decode, repeats]) => {
  await ailo.useBackend(backend);
  const { manifest, weights, stats } = await ailo.loadSpanWeights({ room, start, end, dbName: 'bench-span' });
  const span = new ailo.BrowserSpan(manifest.spec, start, end, weights);
  const H = manifest.spec.hidden;
  const rand = ailo.mulberry32(1);
  const x = new Float32Array(prompt * H).map(() => rand() - 0.5);
  const step = new Float32Array(H).map(() => rand() - 0.5);
  const runOnce = async () => {
    const cache = new ailo.SpanCache();
    const t0 = performance.now();
    await span.forward(x, 0, cache);
    const t1 = performance.now();
    for (let i = 0; i < decode; i++) await span.forward(step, prompt + i, cache);
    const t2 = performance.now();
    cache.dispose();
    return { prefill: (t1 - t0) / 1000, decode: (t2 - t1) / 1000 };
  };
  await runOnce();  // warm-up: shader compilation, wasm start-up
  let best = null;
  for (let r = 0; r < repeats; r++) {
    const t = await runOnce();
    best = best ? { prefill: Math.min(best.prefill, t.prefill), decode: Math.min(best.decode, t.decode) } : t;
  }
  span.dispose();
  return { ...best, bytes: stats.totalBytes, info: ailo.backendInfo() };
}"""


def native_span(model_dir: Path, start: int, end: int, prompt: int, decode: int, repeats: int) -> dict:
    from ailo.inference.units import RequestCache
    from ailo.inference.loader import load_span

    span = load_span(model_dir, start, end, dtype="float32").model
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, prompt, span.spec.hidden, generator=g) - 0.5
    step = torch.rand(1, 1, span.spec.hidden, generator=g) - 0.5

    def once() -> tuple[float, float]:
        cache = RequestCache()
        t0 = time.perf_counter()
        span(x, 0, cache)
        t1 = time.perf_counter()
        for i in range(decode):
            span(step, prompt + i, cache)
        return t1 - t0, time.perf_counter() - t1

    once()
    runs = [once() for _ in range(max(repeats, 2))]
    return {"prefill": min(r[0] for r in runs), "decode": min(r[1] for r in runs)}


def span_bench(args, available: list[str], ctx_factory) -> dict:
    """Page span forward vs native span on one random Llama checkpoint (a middle span: no
    embedding, no head — the work every node of a large room does)."""
    from ailo.server import devserver
    from ailo.inference.checkpoints import make_hf_checkpoint
    from ailo.inference.rooms import RoomRegistry
    from ailo.inference.families import read_spec

    tmp = Path(tempfile.mkdtemp(prefix="ailo-bench-span-"))
    d = tmp / "llama"
    make_hf_checkpoint(d, "llama", vocab=512, hidden=args.span_hidden, layers=args.span_layers,
                       heads=args.span_hidden // 64, kv_heads=max(1, args.span_hidden // 128),
                       intermediate=int(args.span_hidden * 2.75), init_std=0.02)
    spec = read_spec(d)
    start, end = 1, spec.n_units - 1  # every layer's units except the first attention and last MLP
    rooms = RoomRegistry()
    rooms.create_room("bench", spec, 2, checkpoint="llama")
    server = devserver.serve(rooms, checkpoints=tmp, web=True)
    out: dict = {"model": {"family": "llama", "hidden": spec.hidden, "layers": spec.n_layers, "heads": spec.n_heads,
                           "kv_heads": spec.n_kv_heads, "intermediate": spec.intermediate},
                 "span": [start, end], "prompt_tokens": args.span_prompt, "decode_steps": args.span_decode,
                 "browser": {}}
    try:
        with ctx_factory() as ctx:
            page = ctx.new_page()
            page.goto(server.url + "/harness")
            page.wait_for_function("window.ailoReady === true", timeout=60_000)
            for backend in args.span_backends:
                if backend not in available:
                    out["browser"][backend] = {"available": False}
                    continue
                r = page.evaluate(SPAN_JS, [backend, "bench", start, end, args.span_prompt, args.span_decode,
                                            max(args.repeats, 3)])
                out["browser"][backend] = {"prefill_tok_s": round(args.span_prompt / r["prefill"], 1),
                                           "decode_ms_per_token": round(1000 * r["decode"] / args.span_decode, 2),
                                           "decode_tok_s": round(args.span_decode / r["decode"], 1),
                                           **({"wasm_threads": r["info"]["threads"]} if backend == "wasm" else {})}
                out["weights_bytes"] = r["bytes"]
    finally:
        server.stop()
    # The baseline is the better of torch's default threads and one thread (on a busy 2-core
    # machine, a second intra-op thread is often descheduled and makes small ops slower).
    default_threads, runs = torch.get_num_threads(), []
    for threads in sorted({default_threads, 1}):
        torch.set_num_threads(threads)
        runs.append((threads, native_span(d, start, end, args.span_prompt, args.span_decode, max(args.repeats, 5))))
    torch.set_num_threads(default_threads)
    threads, n = min(runs, key=lambda r: r[1]["decode"])
    out["native"] = {"torch_threads": threads, "prefill_tok_s": round(args.span_prompt / n["prefill"], 1),
                     "decode_ms_per_token": round(1000 * n["decode"] / args.span_decode, 2),
                     "decode_tok_s": round(args.span_decode / n["decode"], 1)}
    out["decode_ratio_per_backend"] = {k: round(v["decode_tok_s"] / out["native"]["decode_tok_s"], 4)
                                       for k, v in out["browser"].items() if "decode_tok_s" in v}
    out["prefill_ratio_per_backend"] = {k: round(v["prefill_tok_s"] / out["native"]["prefill_tok_s"], 4)
                                        for k, v in out["browser"].items() if "prefill_tok_s" in v}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="ailo-tiny")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--backends", nargs="*", default=None, help="default: every backend that initialises")
    ap.add_argument("--skip-train", action="store_true", help="only the span forward comparison")
    ap.add_argument("--skip-span", action="store_true", help="only the training comparison")
    ap.add_argument("--span-hidden", type=int, default=256)
    ap.add_argument("--span-layers", type=int, default=4)
    ap.add_argument("--span-prompt", type=int, default=32)
    ap.add_argument("--span-decode", type=int, default=16)
    ap.add_argument("--span-backends", nargs="*", default=["wasm", "webgl"])
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
            for backend in [] if args.skip_train else (args.backends or available):
                if backend not in available:
                    browser[backend] = {"available": False}
                    continue
                r = page.evaluate(PAGE_JS, [backend, cfg.name, args.batch_size, seq, args.steps, args.repeats])
                browser[backend] = {"tokens_per_s": round(r["tokens"] / r["seconds"], 1),
                                    "step_s": round(r["seconds"] / args.steps, 3), "loss": round(r["loss"], 4),
                                    **({"wasm_threads": r["info"]["threads"]} if backend == "wasm" else {})}
    finally:
        server.close()
    out = {"bench": "browser", "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "chromium": version, "chromium_flags": "--headless --disable-gpu (software WebGL, no WebGPU adapter)",
           "backends_available": available}
    if not args.skip_train:
        native = native_tokens_per_s(cfg.name, args.batch_size, seq, args.steps, max(args.repeats, 2))
        best = max((v["tokens_per_s"] for v in browser.values() if "tokens_per_s" in v), default=0.0)
        out["training"] = {
            "preset": cfg.name, "batch_size": args.batch_size, "seq_len": seq, "steps": args.steps, "browser": browser,
            "native": {"device": "cpu", "torch_threads": torch.get_num_threads(), "tokens_per_s": round(native, 1)},
            "ratio_best_browser_to_native": round(best / native, 4) if native else None,
            "ratio_per_backend": {k: round(v["tokens_per_s"] / native, 4) for k, v in browser.items() if "tokens_per_s" in v}}
    if not args.skip_span:
        out["span_forward"] = span_bench(args, available, chromium)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
