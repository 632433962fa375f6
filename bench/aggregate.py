"""Aggregation throughput: `FedAvg.aggregate` against a plain weighted sum (memory-bandwidth
baseline) over the same K updates, in the same process. Prints one JSON line.

    .venv/bin/python bench/aggregate.py --preset ailo-small --clients 8
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ailo.federation.core.aggregate import FedAvg, WeightedDelta  # noqa: E402
from ailo.model import build_model  # noqa: E402


def baseline(flat_base: torch.Tensor, flat_deltas: list[torch.Tensor], w: list[float]) -> torch.Tensor:
    """The least work any FedAvg must do: one fused pass per update over contiguous memory."""
    acc = torch.zeros_like(flat_base)
    for wk, d in zip(w, flat_deltas):
        acc.add_(d, alpha=wk)
    return flat_base - acc


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="ailo-small")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = build_model(args.preset, seed=0).state_dict()
    g = torch.Generator().manual_seed(1)
    updates = [WeightedDelta({k: torch.randn(v.shape, generator=g) * 1e-3 for k, v in base.items()}, 8 * (i + 1))
               for i in range(args.clients)]
    n = sum(u.n_samples for u in updates)
    w = [u.n_samples / n for u in updates]
    flat_base = torch.cat([v.reshape(-1) for v in base.values()])
    flat_deltas = [torch.cat([u.delta[k].reshape(-1) for k in base]) for u in updates]
    params = flat_base.numel()
    agg = FedAvg()
    out = agg.aggregate(base, updates, 1.0)  # warm-up and correctness check against the baseline
    ref = baseline(flat_base, flat_deltas, w)
    assert torch.allclose(torch.cat([out[k].reshape(-1) for k in base]), ref, atol=1e-6)
    t_ours, t_base = [], []
    for _ in range(args.repeats):  # interleaved so machine noise hits both
        t_ours.append(best(lambda: agg.aggregate(base, updates, 1.0), 1))
        t_base.append(best(lambda: baseline(flat_base, flat_deltas, w), 1))
    ours = params * args.clients / min(t_ours)
    plain = params * args.clients / min(t_base)
    print(json.dumps({"bench": "aggregate", "preset": args.preset, "clients": args.clients, "parameters": params,
                      "params_per_s_fedavg": round(ours), "params_per_s_baseline": round(plain),
                      "gb_per_s_fedavg": round(ours * 4 / 1e9, 2), "ratio": round(ours / plain, 3),
                      "target": 0.5, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
