"""Training throughput of `ailo.training.train_local` against a plain hand-written PyTorch loop.

Same preset, batch, seed and optimizer, in the same process; runs alternate so drift on a
shared machine hits both. Prints one JSON line. On CUDA it also reports MFU against the
device's dense bf16 peak (pass --peak-tflops, default 989 for an H100/H200 SXM).

    .venv/bin/python bench/train_throughput.py --preset ailo-tiny
    .venv/bin/python bench/train_throughput.py --preset ailo-1b --batch-size 8 --seq-len 2048 --device cuda
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ailo.model import build_model, flops_per_token, get_preset  # noqa: E402
from ailo.training import TrainConfig, pick_device, train_local  # noqa: E402


def batches(n, batch_size, seq_len, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = [torch.randint(0, 50257, (batch_size, seq_len + 1), generator=g) for _ in range(n)]
    return [(d[:, :-1].to(device), d[:, 1:].to(device)) for d in data]


def plain_loop(model, data, lr, use_amp, device) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda" or None)
    t0 = time.perf_counter()
    for x, y in data:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    loss.detach().item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="ailo-tiny")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    args = ap.parse_args()
    cfg = get_preset(args.preset)
    seq = args.seq_len or cfg.n_ctx
    device = pick_device(args.device)
    use_amp = device.type == "cuda"
    torch.manual_seed(0)
    data = batches(args.steps, args.batch_size, seq, device)
    tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-4)
    ours, plain = [], []
    m_ours = build_model(cfg, seed=0).to(device)
    m_plain = build_model(cfg, seed=0).to(device)
    if args.compile:
        m_ours, m_plain = torch.compile(m_ours), torch.compile(m_plain)
    train_local(m_ours, data[:3], TrainConfig(steps=3, lr=1e-4), device)  # warm-up both
    plain_loop(m_plain, data[:3], 1e-4, use_amp, device)
    for _ in range(args.repeats):
        ours.append(train_local(m_ours, data, tc, device).seconds)
        plain.append(plain_loop(m_plain, data, 1e-4, use_amp, device))
    tokens = args.steps * args.batch_size * seq
    tps_ours, tps_plain = tokens / min(ours), tokens / min(plain)
    out = {"bench": "train_throughput", "preset": cfg.name, "device": str(device),
           "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "batch_size": args.batch_size, "seq_len": seq, "steps": args.steps,
           "tokens_per_s_ailo": round(tps_ours, 1), "tokens_per_s_plain": round(tps_plain, 1),
           "ratio": round(tps_ours / tps_plain, 4), "target": 0.95}
    if device.type == "cuda":
        f = flops_per_token(cfg, seq)
        out["mfu_ailo"] = round(tps_ours * f / (args.peak_tflops * 1e12), 4)
        out["mfu_plain"] = round(tps_plain * f / (args.peak_tflops * 1e12), 4)
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
