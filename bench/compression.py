"""Communication cost vs quality: the same federated run (same seeds, clients, rounds, batches)
with fp32 FedAvg and with each codec / outer-optimizer / download setting. Prints one JSON line
whose last fields are `upload_ratio`, `download_ratio`, `loss_penalty` for the best setting
(highest upload ratio with loss_penalty ≤ 0.02 and download_ratio ≥ 2).

The federation runs in-process, through the real `Coordinator` (task → submit: codec decoding,
aggregation, outer optimizer, validation loss on its fp32 master) and the real client code
(`train_local`, `codecs.compress` with per-client error feedback, `served.next_served` /
`apply_patch` for the compact download). Bytes are what would cross the wire per client-round:
upload = the encoded body; download = every fp32 chunk (all of them change each round) for the
fp32 baseline, else the int8 patch from the version the client holds (the bf16 chunks on its
first round).

    .venv/bin/python bench/compression.py                    # ≈ 10 min on the shared 2-core box
    .venv/bin/python bench/compression.py --plot docs/compression.png
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ailo.chunks import split_state_dict  # noqa: E402
from ailo.data import TokenDataset  # noqa: E402
from ailo.federation.core.codecs import CodecSpec, compress  # noqa: E402
from ailo.federation.coordinator.coordinator import Coordinator, CoordinatorConfig  # noqa: E402
from ailo.federation.core.served import next_served, to_served  # noqa: E402
from ailo.federation.core.update_format import UpdateMeta  # noqa: E402
from ailo.federation.client.rounds import _batch_seed  # noqa: E402
from ailo.model import build_model  # noqa: E402
from ailo.training import TrainConfig, train_local  # noqa: E402

# name → (codec, density, outer optimizer, outer lr, compact download, inner optimizer or None = --optimizer).
# "fp32" is the baseline every ratio and penalty refers to; "fp32-adamw" is a reference only (the
# same run with AdamW local steps): magnitude top-k of an AdamW pseudo-gradient keeps its noisiest
# coordinates (Adam moves rarely-seen embedding rows by ~lr per step), so sparse rounds use SGD.
SETTINGS = {
    "fp32": ("fp32", 0.01, "sgd", 1.0, False, None),
    "fp32-adamw": ("fp32", 0.01, "sgd", 1.0, False, "adamw"),
    "int8": ("int8", 0.01, "sgd", 1.0, True, None),
    "sparse-1%": ("sparse", 0.01, "sgd", 1.0, True, None),
    "sparse-1%+lr2": ("sparse", 0.01, "sgd", 2.0, True, None),
    "sparse-1%+nesterov": ("sparse", 0.01, "nesterov", 0.7, True, None),
}
ADAMW_LR = 3e-3


def chunk_bytes(state: dict, num_chunks: int) -> int:
    manifest, _ = split_state_dict(state, num_chunks)
    return manifest.total_bytes


def warm_start(args, path: Path) -> float:
    """The common starting checkpoint: `--warm-steps` of plain local training on all shards
    together (DiLoCo's experiments also start from a pretrained model). Returns its seconds."""
    t0 = time.perf_counter()
    model = build_model(args.preset, seed=args.seed)
    if args.warm_steps:
        data = TokenDataset.from_dir(None, "train")
        train_local(model, data.random_batches(args.batch, args.seq, seed=args.seed + 1),
                    TrainConfig(steps=args.warm_steps, batch_size=args.batch, lr=ADAMW_LR))
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return time.perf_counter() - t0


def run(name: str, args, shards: list[TokenDataset], init: Path) -> dict:
    codec, density, outer, outer_lr, compact, inner = SETTINGS[name]
    optimizer, lr = (inner, ADAMW_LR) if inner else (args.optimizer, args.lr)
    cfg = CoordinatorConfig(preset=args.preset, seed=args.seed, num_chunks=args.chunks, min_updates=args.clients,
                            max_rounds=args.rounds, local_steps=args.steps, batch_size=args.batch,
                            seq_len=args.seq, lr=lr, optimizer=optimizer, lr_decay=args.lr_decay, val_batches=args.val_batches,
                            codec=codec, codec_density=density, outer=outer, server_lr=outer_lr, init=str(init))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        coord = Coordinator(cfg, Path(tmp))
        served = to_served(coord.model.state_dict()) if compact else None
        fp32_chunks = coord.manifest.total_bytes
        bf16_chunks = chunk_bytes(served, args.chunks) if compact else 0
        patch: bytes | None = None
        model = build_model(args.preset, seed=args.seed)
        errors: list[dict | None] = [None] * args.clients
        holds: list[int | None] = [None] * args.clients
        up = down = client_rounds = 0
        curve = [(0, 0, coord.store.versions()[0].val_loss)]  # (bytes up, bytes down, val loss) per version
        for rnd in range(1, args.rounds + 1):
            version = coord.version
            start = {k: v.to(torch.float32) for k, v in served.items()} if compact else coord.model.state_dict()
            for k in range(args.clients):
                cid = f"client-{k}"
                task = coord.task(cid)
                assert task["status"] == "train" and task["version"] == version, task
                if not compact:
                    down += fp32_chunks
                elif holds[k] == version - 1 and patch is not None:
                    down += len(patch)
                else:
                    down += bf16_chunks
                holds[k] = version
                model.load_state_dict(start)
                batches = shards[k].random_batches(task["batch_size"], task["seq_len"],
                                                   seed=_batch_seed(args.seed, cid, rnd))
                upd = train_local(model, batches, TrainConfig(steps=task["steps"], batch_size=task["batch_size"],
                                                              lr=task["lr"], optimizer=task["optimizer"]))
                body, residual = compress(upd.delta, errors[k], CodecSpec.from_task(task))
                receipt = coord.submit(UpdateMeta(cid, task["round"], version, upd.n_samples, upd.train_loss), body)
                coord.drain(tick=False)  # the validation pipeline's work, in this thread
                result = coord.verdict(receipt["update_id"])
                assert result["status"] == "accepted", result
                errors[k] = residual
                up += len(body)
                client_rounds += 1
            assert coord.version == version + 1
            if compact:
                patch, served = next_served(served, coord.model.state_dict())
            curve.append((up, down, coord.store.versions()[-1].val_loss))
        out = {"val_loss": curve[-1][2], "upload_bytes": up / client_rounds, "download_bytes": down / client_rounds,
               "seconds": round(time.perf_counter() - t0, 1), "curve": curve}
        if compact:
            served_model = build_model(args.preset, seed=args.seed)
            served_model.load_state_dict({k: v.to(torch.float32) for k, v in served.items()})
            from ailo.training import evaluate
            out["served_val_loss"] = evaluate(served_model, coord.val_batches)
        coord.store.close()
    print(f"{name}: val loss {out['val_loss']:.4f}, ↑{out['upload_bytes']:,.0f} B ↓{out['download_bytes']:,.0f} B "
          f"per client-round, {out['seconds']} s", file=sys.stderr, flush=True)
    return out


def plot(results: dict, path: Path) -> None:
    """Validation loss against cumulative bytes uploaded (left) and downloaded (right), all clients."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), dpi=100, sharey=True)
    start = next(iter(results.values()))["curve"][0][2]
    for ax, i, what in ((axes[0], 0, "uploaded"), (axes[1], 1, "downloaded")):
        for name, r in results.items():
            pts = r["curve"][1:]
            ax.plot([p[i] / 1e6 for p in pts], [p[2] for p in pts], marker="o", markersize=3, label=name)
        ax.axhline(start, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"MB {what}, all clients (log)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation loss (nats/token)")
    axes[1].legend(fontsize=7)
    fig.suptitle("Ailo: validation loss vs bytes moved (bench/compression.py)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="ailo-tiny")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="local steps per round")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--optimizer", default="sgd", help="local optimizer of every setting but fp32-adamw")
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--lr-decay", type=float, default=0.9)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--val-batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warm-steps", type=int, default=60, help="common centralized warm start (0 = from scratch)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--plot", default=None, help="write the val-loss-vs-bytes PNG here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shards = [TokenDataset.from_dir(None, "train", k, args.clients) for k in range(args.clients)]
    names = ["fp32"] + [n for n in args.settings.split(",") if n != "fp32"]
    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "init.safetensors"
        warm_seconds = warm_start(args, init)
        results = {n: run(n, args, shards, init) for n in names}
    base = results["fp32"]
    table = {}
    for n, r in results.items():
        table[n] = {"val_loss": round(r["val_loss"], 4),
                    "served_val_loss": round(r["served_val_loss"], 4) if "served_val_loss" in r else None,
                    "upload_bytes": round(r["upload_bytes"]), "download_bytes": round(r["download_bytes"]),
                    "upload_ratio": round(base["upload_bytes"] / r["upload_bytes"], 1),
                    "download_ratio": round(base["download_bytes"] / r["download_bytes"], 2),
                    "loss_penalty": round((r["val_loss"] - base["val_loss"]) / base["val_loss"], 4),
                    "seconds": r["seconds"]}
    ok = [n for n, t in table.items() if t["loss_penalty"] <= 0.02 and t["download_ratio"] >= 2]
    best = max(ok, key=lambda n: (table[n]["upload_ratio"], -table[n]["loss_penalty"])) if ok else \
        min(table, key=lambda n: table[n]["loss_penalty"])
    if args.plot:
        plot(results, Path(args.plot))
    print(json.dumps({"preset": args.preset, "clients": args.clients, "rounds": args.rounds, "local_steps": args.steps,
                      "batch": args.batch, "seq": args.seq, "optimizer": args.optimizer, "lr": args.lr, "lr_decay": args.lr_decay,
                      "threads": args.threads, "warm_steps": args.warm_steps, "warm_seconds": round(warm_seconds, 1),
                      "val_loss_start": round(base["curve"][0][2], 4), "settings": table, "best": best,
                      "val_loss_fp32": table["fp32"]["val_loss"], "val_loss_best": table[best]["val_loss"],
                      "upload_ratio": table[best]["upload_ratio"], "download_ratio": table[best]["download_ratio"],
                      "loss_penalty": table[best]["loss_penalty"]}))


if __name__ == "__main__":
    main()
