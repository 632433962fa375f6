"""The page's training and span code on WebGPU (Dawn in Node: ailo/web/node/runner.mjs) against
native PyTorch on the same device, preset and batch. Prints one JSON line.

Training: the page's `trainLocal` (AdamW, clipping: the code a contributor's page runs) on
WebGPU, after --warmup steps (shader compilation), vs `ailo.training.train_local` on CUDA
(or CPU) in this process, both fp32 and the native worker's default (bf16 autocast on CUDA).
`--profile` adds the per-kernel GPU time of one WebGPU step (timestamp queries).
Span: the page's `BrowserSpan` (prefill of --span-prompt tokens, then --span-decode cached
decode steps) vs `SpanModel` on a random Llama span of the same shape (TinyLlama-1.1B dims by
default), fp32 both.

    python bench/webgpu.py                                   # ailo-small, batch 8, seq 256
    AILO_NODE=/path/to/node AILO_RUNNER_PREBUILT=1 python3 bench/webgpu.py   # a copy with the runner built elsewhere
    python bench/webgpu.py --preset ailo-tiny --batch 2 --steps 3 --skip-span   # lavapipe (CI box)
    AILO_DAWN_FLAGS='enable-dawn-features=disable_robustness' python bench/webgpu.py --profile
    python bench/webgpu.py --preset ailo-1b --slice 24:25 --batch 1 --seq 256   # a slice task (issue 26)

`--slice A:B` times a slice task instead: units [A, B) of the preset (0 = embed, 1 + i = blocks.i;
ln_f rides with the last block) trained by the page's `trainSlice` with every frozen block read
from bf16 chunk files one at a time (runner `slicebench`), vs the native worker's `train_slice`
on the same chunks, batch and device (fp32 compute both).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ailo.inference.blocks import SpanModel
from ailo.inference.units import RequestCache  # noqa: E402
from ailo.inference.spec import ModelSpec  # noqa: E402
from ailo.model import build_model, get_preset  # noqa: E402
from ailo.testing import noderunner  # noqa: E402
from ailo.training import TrainConfig, train_local  # noqa: E402

STOCK = {"AILO_WGSL_KERNELS": False, "AILO_SPARSE_GRADS": False}
TINYLLAMA = dict(family="llama", n_layers=22, hidden=2048, n_heads=32, n_kv_heads=4, head_dim=64,
                 intermediate=5632, vocab=32000, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False,
                 max_positions=2048)


def runner(cmd: str, job: dict, timeout: float) -> dict:
    return noderunner.run(cmd, job, timeout=timeout, build=not os.environ.get("AILO_RUNNER_PREBUILT"))


def native_train(preset: str, batch: int, seq: int, steps: int, warmup: int, device: torch.device, amp: bool) -> dict:
    torch.manual_seed(0)
    model = build_model(preset, seed=0).to(device)
    vocab = model.cfg.vocab_size
    g = torch.Generator().manual_seed(1)
    data = [(torch.randint(0, vocab, (batch, seq), generator=g), torch.randint(0, vocab, (batch, seq), generator=g))
            for _ in range(max(steps, warmup))]
    cfg = TrainConfig(steps=warmup, batch_size=batch, lr=1e-3, amp=amp)
    train_local(model, data, cfg)  # warm-up: cuBLAS handles, allocator
    best = None
    for _ in range(2):
        upd = train_local(model, data, TrainConfig(steps=steps, batch_size=batch, lr=1e-3, amp=amp))
        best = upd.seconds if best is None else min(best, upd.seconds)
    return {"amp_bf16": amp and device.type == "cuda", "seconds": best, "stepMs": 1000 * best / steps,
            "tokensPerS": steps * batch * seq / best}


def native_span(spec: ModelSpec, start: int, end: int, prompt: int, decode: int, device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    span = SpanModel(spec, start, end).to(device).float()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def inp(t: int) -> torch.Tensor:
        if start == 0:
            return torch.arange(t, device=device).view(1, t) * 7919 % spec.vocab
        return torch.randn(1, t, spec.hidden, device=device) * 0.5

    def request() -> tuple[float, float]:
        cache = RequestCache()
        sync(); t0 = time.perf_counter()
        span(inp(prompt), 0, cache).float().cpu()
        t1 = time.perf_counter()
        for _ in range(decode):
            span(inp(1), cache.length, cache).float().cpu()  # the page reads every output back too
        t2 = time.perf_counter()
        return t1 - t0, (t2 - t1) / decode

    request()
    runs = sorted(request() for _ in range(repeats))
    pre, dec = runs[len(runs) // 2]
    return {"prefillMs": 1000 * pre, "prefillTokensPerS": prompt / pre, "decodeMsPerToken": 1000 * dec, "decodeTokensPerS": 1 / dec}


def slice_bench(args, device: torch.device, seq: int) -> dict:
    """Units [a, b) of a random-init preset, bf16 chunks on disk, page vs native slice trainer."""
    import tempfile
    from ailo.chunks import ChunkStore, DirectorySource, split_state_dict, write_chunks
    from ailo.federation.client.slice_training import CachedTensors, train_slice
    from ailo.federation.core.slices import make_slice
    a, b = (int(v) for v in args.slice.split(":"))
    cfg = get_preset(args.preset)
    work = Path(tempfile.mkdtemp(prefix="webgpu-slice-"))
    t0 = time.perf_counter()
    model = build_model(args.preset, seed=0)
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}  # the served compact model
    del model
    manifest, blobs = split_state_dict(state, args.chunks, preset=cfg.name, config=cfg.to_dict())
    write_chunks(work, manifest, blobs)
    del state, blobs
    prepare_s = time.perf_counter() - t0
    sl = make_slice({n: t.shape for n, t in manifest.tensors.items()}, cfg.n_layer, a, b)
    job = {"chunks": str(work), "units": [a, b], "batch": args.batch, "seq": seq, "steps": args.steps,
           "warmup": args.warmup, "micro": args.micro, "tfFlags": json.loads(args.tf_flags)}
    web = runner("slicebench", job, args.timeout)
    tensors = CachedTensors(ChunkStore(manifest, DirectorySource(work), work), work)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randint(0, cfg.vocab_size, (args.batch, seq), generator=g),
             torch.randint(0, cfg.vocab_size, (args.batch, seq), generator=g)) for _ in range(max(args.steps, args.warmup))]
    tc = TrainConfig(steps=args.warmup, batch_size=args.batch, lr=1e-4)
    if args.warmup:
        train_slice(cfg, tensors, list(sl.names), data, tc, device, args.micro)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    upd = train_slice(cfg, tensors, list(sl.names), data, TrainConfig(steps=args.steps, batch_size=args.batch, lr=1e-4),
                      device, args.micro)
    native = {"seconds": upd.seconds, "stepMs": 1000 * upd.seconds / upd.steps, "tokensPerS": upd.tokens / upd.seconds,
              "losses": upd.losses}
    if device.type == "cuda":
        native["peakAllocatedGiB"] = torch.cuda.max_memory_allocated() / 2**30
    keep = ("stepMs", "tokensPerS", "warmupSeconds", "loadSeconds", "losses", "chunkBytesReadPerStep")
    return {"preset": args.preset, "units": list(sl.units), "params": sl.params, "share": round(sl.share, 6),
            "batch": args.batch, "seq": seq, "steps": args.steps, "micro": args.micro, "chunks": args.chunks,
            "prepareSeconds": prepare_s, "webgpu": {k: web[k] for k in keep}, "native_fp32": native,
            "ratio_vs_native_fp32": web["tokensPerS"] / native["tokensPerS"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="ailo-small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=None, help="default: the preset's context")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--stock", action="store_true", help="also time WebGPU with tfjs's stock ops (the baseline)")
    ap.add_argument("--tf-flags", default="{}", help='tf.env flags for the timed WebGPU run, e.g. \'{"WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE": 64}\'')
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--slice", default=None, metavar="A:B", help="time a slice task: units [A, B) (see above); "
                    "skips the full-model training and span benches")
    ap.add_argument("--chunks", type=int, default=64, help="--slice: chunks the model is split into")
    ap.add_argument("--micro", type=int, default=None, help="--slice: micro-batch (default: the whole batch)")
    ap.add_argument("--skip-span", action="store_true")
    ap.add_argument("--span-layers", type=int, default=4, help="layers in the span (units [0, 2·layers))")
    ap.add_argument("--span-prompt", type=int, default=128)
    ap.add_argument("--span-decode", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=400)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seq = args.seq or get_preset(args.preset).n_ctx
    out: dict = {"bench": "webgpu", "machine": platform.node(), "torch": torch.__version__,
                 "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"}
    info = runner("info", {}, args.timeout)
    out["webgpu"] = {"adapter": info.get("adapter"), "software": info.get("software"), "dawn_flags": os.environ.get("AILO_DAWN_FLAGS", "")}
    if args.slice:
        out["slice"] = slice_bench(args, device, seq)
        args.skip_train = args.skip_span = True
    if not args.skip_train:
        job = {"preset": args.preset, "batch": args.batch, "seq": seq, "steps": args.steps, "warmup": args.warmup,
               "tfFlags": json.loads(args.tf_flags)}
        web = runner("bench", job, args.timeout)
        keep = ("stepMs", "tokensPerS", "warmupSeconds", "losses")
        out["train"] = {"preset": args.preset, "batch": args.batch, "seq": seq, "steps": args.steps,
                        "webgpu": {k: web[k] for k in keep}}
        if args.stock:  # baseline: tfjs's stock ops (one-hot cross-entropy/embedding grad, AdamW from ~15 ops)
            stock = runner("bench", {**job, "tfFlags": {**job["tfFlags"], **STOCK}}, args.timeout)
            out["train"]["webgpu_stock"] = {k: stock[k] for k in keep}
            out["train"]["speedup_vs_stock"] = web["tokensPerS"] / stock["tokensPerS"]
        for amp in ((False, True) if device.type == "cuda" else (False,)):
            nat = native_train(args.preset, args.batch, seq, args.steps, args.warmup, device, amp)
            key = "native_bf16" if nat["amp_bf16"] else "native_fp32"
            out["train"][key] = nat
            out["train"][f"ratio_vs_{key}"] = web["tokensPerS"] / nat["tokensPerS"]
        if args.profile:
            for key, flags in (("profile", {}), ("profile_stock", STOCK)) if args.stock else (("profile", {}),):
                prof = runner("profile", {"preset": args.preset, "batch": args.batch, "seq": seq, "top": 15, "tfFlags": flags},
                              args.timeout)
                out[key] = {k: prof[k] for k in ("kernels", "kernelMs", "wallMs", "byKernel", "byShape")}
    if not args.skip_span:
        spec_d = {**TINYLLAMA, "n_layers": TINYLLAMA["n_layers"]}
        spec = ModelSpec.from_dict(spec_d)
        start, end = 0, 2 * args.span_layers
        web = runner("spanbench", {"spec": spec.to_dict(), "start": start, "end": end, "prompt": args.span_prompt,
                                   "decode": args.span_decode, "repeats": args.repeats}, args.timeout)
        nat = native_span(spec, start, end, args.span_prompt, args.span_decode, device, args.repeats)
        keep = ("prefillMs", "prefillTokensPerS", "decodeMsPerToken", "decodeTokensPerS")
        out["span"] = {"model": "TinyLlama-1.1B shape, random", "units": [start, end], "prompt": args.span_prompt,
                       "decode": args.span_decode, "webgpu": {k: web[k] for k in keep}, "native_fp32": nat,
                       "ratio_prefill": web["prefillTokensPerS"] / nat["prefillTokensPerS"],
                       "ratio_decode": web["decodeTokensPerS"] / nat["decodeTokensPerS"]}
    line = json.dumps(out)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
