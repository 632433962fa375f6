"""Quality cost of the memory-lean optimizer states (issue 26): validation loss after the same
steps on the same batches (equal tokens) with full-state AdamW, torchao AdamW8bit and AdamW4bit,
from the same init, through the budgeted worker's own loop (`train_planned`). Prints ONE JSON line;
the target is within 2 % of AdamW's loss.

    .venv/bin/python bench/lean_optimizer.py --preset ailo-small --steps 150 --batch-size 8 --seq-len 128
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ailo.data import TokenDataset  # noqa: E402
from ailo.federation.client.memory_plan import MemoryPlan  # noqa: E402
from ailo.federation.client.lean_training import train_planned  # noqa: E402
from ailo.model import build_model  # noqa: E402
from ailo.training import TrainConfig, evaluate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="ailo-small")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--optimizers", default="adamw,adamw8bit,adamw4bit")
    args = ap.parse_args()
    train = TokenDataset.from_dir(None, "train").random_batches(args.batch_size, args.seq_len, seed=7)
    batches = [next(train) for _ in range(args.steps)]
    holdout = TokenDataset.from_dir(None, "holdout").random_batches(16, args.seq_len, seed=8)
    val = [next(holdout) for _ in range(8)]
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=10)
    device = torch.device("cpu")
    rows = {}
    for opt in args.optimizers.split(","):
        model = build_model(args.preset, seed=0)
        plan = MemoryPlan(args.batch_size, 1, 0, 0, opt, False, False, 0, 0, {})
        t0 = time.perf_counter()
        upd = train_planned(model, batches, cfg, plan, device)
        rows[opt] = {"val_loss": round(evaluate(model, val), 4), "train_loss_last10": round(sum(upd.losses[-10:]) / 10, 4),
                     "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps({opt: rows[opt]}), file=sys.stderr, flush=True)
    ref = rows.get("adamw", {}).get("val_loss")
    for r in rows.values():
        if ref:
            r["vs_adamw"] = round(r["val_loss"] / ref - 1, 4)
    print(json.dumps({"bench": "lean_optimizer", "preset": args.preset, "steps": args.steps,
                      "tokens": args.steps * args.batch_size * args.seq_len, "lr": args.lr,
                      "threads": torch.get_num_threads(), "results": rows}))


if __name__ == "__main__":
    main()
