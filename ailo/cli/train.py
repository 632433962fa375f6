"""`ailo train`: train a preset locally on the shipped corpus, showing validation loss fall."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ailo.cli import checks
from ailo.cli.errors import CLIError
from ailo.presets import PRESETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model locally on a text folder")
    p.add_argument("--preset", default="ailo-tiny", choices=sorted(PRESETS), help="model size")
    p.add_argument("--steps", type=checks.positive_int, default=200, help="optimizer steps")
    p.add_argument("--batch-size", type=checks.positive_int, default=8, help="sequences per step")
    p.add_argument("--seq-len", type=checks.positive_int, default=None, help="tokens per sequence (default: the preset's context)")
    p.add_argument("--lr", type=checks.positive_float, default=3e-3, help="learning rate")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"], help="local optimizer")
    p.add_argument("--eval-every", type=checks.positive_int, default=50, help="steps between validation losses")
    p.add_argument("--data", default=None, help="folder of .txt files (default: shipped corpus)")
    p.add_argument("--device", type=checks.device, default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the batches")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (worth it on CUDA)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="save the trained model as a Hugging Face folder (for `ailo generate`, transformers)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def _datasets(args: argparse.Namespace, batch_size: int, seq: int):
    from ailo.data import TokenDataset
    where = args.data or "the shipped corpus"
    try:
        train = TokenDataset.from_dir(args.data, "train")
        val = TokenDataset.from_dir(args.data, "val").fixed_batches(4, batch_size, seq)
        return train.random_batches(batch_size, seq, seed=args.seed), val
    except FileNotFoundError as exc:
        raise CLIError(f"--data {where}: {exc} (give a folder of .txt files)") from None
    except ValueError as exc:
        raise CLIError(f"--data {where}: {exc} (add text or lower --seq-len/--batch-size)") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from ailo.model import build_model, count_parameters, get_preset
    from ailo.training import TrainConfig, evaluate, pick_device, train_local

    cfg = get_preset(args.preset)
    seq = args.seq_len or cfg.n_ctx
    if seq > cfg.n_ctx:
        raise CLIError(f"--seq-len {seq} is longer than {cfg.name}'s context of {cfg.n_ctx} tokens")
    if args.out is not None and args.out.exists() and not args.force:
        raise CLIError(f"--out {args.out} already exists (pass --force to replace it)")
    if args.data is not None and not Path(args.data).is_dir():
        raise CLIError(f"--data {args.data}: not a folder")
    batches, val = _datasets(args, args.batch_size, seq)
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    model = build_model(cfg, seed=args.seed).to(device)
    print(f"{cfg.name}: {count_parameters(model):,} parameters on {device}")
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
    if args.out is not None:
        save(model, cfg, args, history[-1][1], done)
    if args.json:
        print(json.dumps({"preset": cfg.name, "val_loss": history}))
    return 0


def save(model, cfg, args: argparse.Namespace, val_loss: float, steps: int) -> None:
    """The trained weights as an export (same writer as `ailo export`, model card included)."""
    from ailo.chunks import split_state_dict
    from ailo.export import ModelVersion, export_version

    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    manifest, _ = split_state_dict(state, 1, preset=cfg.name, config=cfg.to_dict())
    data = f"local text folder {args.data}" if args.data else "the shipped public-domain corpus (Shakespeare)"
    export_version(ModelVersion(0, manifest, state, val_loss, None), args.out, "hf", overwrite=args.force,
                   provenance={"training": f"`ailo train`, {steps} steps on one machine", "data": data,
                               "contributors": 1})
    print(f"saved to {args.out} (load with `ailo generate --model {args.out} PROMPT`)")
