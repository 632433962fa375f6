"""`ailo train`: train a preset locally on the shipped corpus, showing validation loss fall."""
from __future__ import annotations

import argparse
import json

import torch

from ailo.data import TokenDataset
from ailo.model import PRESETS, build_model, count_parameters, get_preset
from ailo.training import TrainConfig, evaluate, pick_device, train_local


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model locally on a text folder")
    p.add_argument("--preset", default="ailo-tiny", choices=sorted(PRESETS))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=None, help="default: the preset's context")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--data", default=None, help="folder of .txt files (default: shipped corpus)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (worth it on CUDA)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = get_preset(args.preset)
    seq = args.seq_len or cfg.n_ctx
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    model = build_model(cfg, seed=args.seed).to(device)
    print(f"{cfg.name}: {count_parameters(model):,} parameters on {device}")
    train = TokenDataset.from_dir(args.data, "train")
    val = TokenDataset.from_dir(args.data, "val").fixed_batches(4, args.batch_size, seq)
    batches = train.random_batches(args.batch_size, seq, seed=args.seed)
    tc = TrainConfig(steps=args.eval_every, batch_size=args.batch_size, lr=args.lr,
                     optimizer=args.optimizer, progress=not args.json, compile=args.compile)
    history = [(0, evaluate(model, val))]
    print(f"step {0:5d}  val loss {history[0][1]:.4f}")
    done = 0
    while done < args.steps:
        tc = TrainConfig(**{**tc.__dict__, "steps": min(args.eval_every, args.steps - done)})
        upd = train_local(model, batches, tc, device)
        done += upd.steps
        history.append((done, evaluate(model, val)))
        print(f"step {done:5d}  train loss {upd.train_loss:.4f}  val loss {history[-1][1]:.4f}  "
              f"{upd.tokens / upd.seconds:,.0f} tok/s")
    if args.json:
        print(json.dumps({"preset": cfg.name, "val_loss": history}))
    return 0
