"""Quality of slice workers (issue 26 B): validation loss after R rounds for full workers alone
versus the same full workers plus slice workers, on a real coordinator with Proof-of-Contribution
(in-process FastAPI TestClient, same seeds, same data shards for the full workers).

    PYTHONPATH=$PWD AILO_HOME=/work/main .venv/bin/python bench/slice_quality.py --rounds 4

One JSON line: both loss curves, accepted counts, the slices handed out, and `never_worse`
(final loss with slices ≤ final loss without).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient  # noqa: E402

from ailo.federation.client.worker import Worker  # noqa: E402
from ailo.federation.coordinator.config import CoordinatorConfig  # noqa: E402
from ailo.federation.core.slices import HEADROOM, make_slice, slice_state_bytes  # noqa: E402
from ailo.model import build_model, get_preset  # noqa: E402
from ailo.paths import corpus_dir  # noqa: E402
from ailo.server.services import ServiceConfig, build_app  # noqa: E402
from ailo.wallet import Wallet  # noqa: E402


def run(preset: str, rounds: int, full: int, sliced: int, steps: int, batch: int, seq: int, blocks: int,
        n_shards: int) -> dict:
    cfg = get_preset(preset)
    shapes = {n: tuple(t.shape) for n, t in build_model(cfg, device="meta").state_dict().items()}
    need = slice_state_bytes(cfg, shapes, make_slice(shapes, cfg.n_layer, 1, 1 + blocks), "adamw", 1, seq)
    budget = int(need / (1 - HEADROOM)) + (1 << 20)  # holds `blocks` blocks at micro-batch 1
    ccfg = CoordinatorConfig(preset=preset, min_updates=full + sliced, local_steps=steps, batch_size=batch,
                             seq_len=seq, max_rounds=rounds, val_batches=8, round_seconds=3600)
    work = Path(tempfile.mkdtemp(prefix="slice-quality-"))
    app = build_app(ccfg, work / "coord", ServiceConfig())
    got_slices, accepted = [], 0
    t0 = time.time()
    with TestClient(app) as client:
        workers = [Worker("http://testserver", f"{'full' if k < full else 'slice'}-{k}", corpus_dir(), k, n_shards,
                          progress=False, http=client, wallet=Wallet.generate().with_username(f"w{k}-{preset[-3:]}"),
                          memory_budget=None if k < full else budget, cache_dir=work / f"cache{k}")
                   for k in range(full + sliced)]
        for w in workers:
            w.ensure_registered()
        for _ in range(rounds):
            for w in workers:
                rep = w.run_round()
                if rep is None:
                    continue
                accepted += rep.response.get("status") == "accepted"
                if rep.slice_units:
                    got_slices.append(rep.slice_units)
        history = client.get("/v1/status").json()["history"]
    return {"val_loss": [round(h["val_loss"], 4) for h in history], "accepted": accepted,
            "slices": got_slices, "slice_budget": budget, "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="ailo-small")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--full", type=int, default=2)
    ap.add_argument("--sliced", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=2, help="blocks a slice worker's budget holds")
    a = ap.parse_args()
    alone = run(a.preset, a.rounds, a.full, 0, a.steps, a.batch, a.seq, a.blocks, a.full + a.sliced)
    mixed = run(a.preset, a.rounds, a.full, a.sliced, a.steps, a.batch, a.seq, a.blocks, a.full + a.sliced)
    print(json.dumps({"bench": "slice_quality", "preset": a.preset, "rounds": a.rounds, "steps": a.steps,
                      "batch": a.batch, "seq": a.seq, "full_workers": a.full, "slice_workers": a.sliced,
                      "full_alone": alone, "full_plus_slices": mixed,
                      "final_full_alone": alone["val_loss"][-1], "final_full_plus_slices": mixed["val_loss"][-1],
                      "never_worse": mixed["val_loss"][-1] <= alone["val_loss"][-1]}))


if __name__ == "__main__":
    main()
