"""Plot `bench/gpu_round.py` results: per round, where the wall seconds went, and the loss.

    .venv/bin/python bench/plot_rounds.py bench/results/gpu_round_*.json --out docs/gpu_round.png

One panel per JSON file: stacked bars per round (worker download, train, encode; upload body
receive; validation; publish; the rest of the wall time = turnaround: verdict long-poll, task
polling, the serial order of the pipeline) against the 60 s goal, validation loss on the right axis.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

PHASES = [("download_s", "download"), ("train_s", "train"), ("encode_s", "encode"), ("upload_s", "upload"),
          ("validate_s", "validate"), ("publish_s", "publish")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/gpu_round.png"))
    args = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = [json.loads(f.read_text()) for f in args.files]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.2), squeeze=False, sharey=True)
    for ax, run, path in zip(axes[0], runs, args.files):
        rounds = run["rounds"]
        xs = [r["round"] for r in rounds]
        bottom = [0.0] * len(rounds)
        for key, label in PHASES:
            vals = [r.get(key) or 0.0 for r in rounds]
            ax.bar(xs, vals, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, vals)]
        rest = [max(0.0, r["wall_s"] - b) for r, b in zip(rounds, bottom)]
        ax.bar(xs, rest, bottom=bottom, label="turnaround", color="lightgrey")
        ax.axhline(60, color="red", linestyle="--", linewidth=1, label="goal 60 s")
        ax.set_xlabel("round")
        ax.set_xticks(xs)
        codec = run["codec"] + (" + compact downloads" if run.get("compact_downloads") else "")
        warm = f", warm-up {run['warmup_steps']} steps" if run.get("warmup_steps") else ""
        ax.set_title(f"{run['preset']} · {codec}\nclient lr {run['lr']:g} × {run.get('lr_decay', 1.0):g}^(r−1){warm} · "
                     f"commit {path.stem.rsplit('_', 1)[-1]}", fontsize=9)
        loss = ax.twinx()
        loss.plot([0] + xs, run["val_loss"][:len(xs) + 1], "k.-", label="val loss")
        loss.set_ylabel("validation loss (nats/token)")
    axes[0][0].set_ylabel("seconds per round (wall)")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle("ailo-1b federated rounds on one H200: coordinator + 2 workers on the GPU")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
