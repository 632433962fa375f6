"""Peak memory and speed of a worker's training under memory budgets, and of the coordinator's
validation (issue 26). Prints ONE JSON line (and writes it to --out).

Each mode runs in a fresh subprocess (a clean peak), on the same model init and the same
batches (one warm-up step, then --steps timed ones):
- `today`: `train_local` (what `ailo worker` ran before budgets: one batch, full AdamW states);
- `budget:SIZE`: the worker's plan for that budget (ailo.federation.client.memory_plan) and
  `train_planned`; the plan and its estimate are printed next to the measured peak;
- `validation`: the coordinator's Proof-of-Contribution for one update: the holdout reference
  (gradient + per-sequence losses, lean: fp32, blocks and head recomputed) and the checks of an
  update; `validation-old` the same with the former batching (8 sequences per forward, all
  activations kept; the gradient is no longer cloned in either), for the before/after.
Peak = torch.cuda.max_memory_allocated on CUDA; on CPU the process's peak RSS (VmHWM), also
minus its RSS before the model was built.

    # GPU machine (ailo-1b, batch 2 x 2048)
    python3 bench/memory.py --preset ailo-1b --device cuda --batch-size 2 --seq-len 2048 --steps 3 \
        --budgets 24GB,12GB,9GB --validation --holdout-sequences 8 --slices 4GB,4GB@12 --tmp /dev/shm
    # this CPU box
    .venv/bin/python bench/memory.py --preset ailo-small --device cpu --batch-size 8 --seq-len 128 --steps 3 \
        --budgets 1GB,600MB,400MB --validation --slices 300MB,300MB@3
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss(field: str = "VmHWM") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _peak(device) -> dict:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "reserved_bytes": torch.cuda.max_memory_reserved()}
    return {"peak_bytes": rss("VmHWM")}


def _measure(train, batches: list, steps: int, device, base_rss: int, out: dict) -> dict:
    """One warm-up step (kernels, torch.compile of the 8/4-bit optimizer step), then `steps` timed
    ones: the row's peak, speed, loss and ‖Δ‖ (and RSS above the start on the CPU)."""
    train(batches[:1], 1)
    upd = train(batches[1:], steps)
    out.update(_peak(device), tokens_per_s=round(upd.tokens / upd.seconds, 1), seconds=round(upd.seconds, 3),
               train_loss=round(upd.train_loss, 4), delta_norm=round(float(sum(float(d.float().pow(2).sum()) for d in upd.delta.values()) ** 0.5), 5))
    if device.type == "cpu":
        out["rss_above_start_bytes"] = out["peak_bytes"] - base_rss
    return out


def run_training(args, mode: str) -> dict:
    import torch

    from ailo.data import TokenDataset
    from ailo.federation.client.lean_training import model_shape, train_planned
    from ailo.federation.client.memory_plan import TaskShape, parse_size, plan
    from ailo.model import build_model, get_preset
    from ailo.training import TrainConfig, train_local

    device = torch.device(args.device)
    data = TokenDataset.from_dir(None, "train").random_batches(args.batch_size, args.seq_len, seed=1)
    batches = [next(data) for _ in range(args.steps + 1)]
    base_rss = rss("VmRSS")
    model = build_model(args.preset, seed=0, device=device)
    out: dict = {"mode": mode}
    if mode == "today":
        train = lambda bs, steps: train_local(model, bs, TrainConfig(steps=steps, batch_size=args.batch_size, lr=1e-3), device)  # noqa: E731
    else:
        budget = parse_size(mode.split(":", 1)[1])
        p = plan(model_shape(get_preset(args.preset)), TaskShape(args.batch_size, args.seq_len, "adamw"), budget, device.type)
        out.update(plan=p.describe(), optimizer=p.optimizer, micro_batch=p.micro_batch,
                   checkpoint_blocks=p.checkpoint_blocks, estimate_bytes=p.estimate, budget_bytes=budget,
                   breakdown=p.breakdown)
        train = lambda bs, steps: train_planned(model, bs, TrainConfig(steps=steps, batch_size=args.batch_size, lr=1e-3), p, device)  # noqa: E731
    return _measure(train, batches, args.steps, device, base_rss, out)


def chunk_dir(args) -> Path:
    import tempfile
    return Path(args.tmp or tempfile.gettempdir()) / f"ailo-bench-memory-{args.preset}-{args.slice_chunks}"


def write_chunks_once(args, mode: str = "chunks") -> dict:
    """The model of the other modes (seed 0) as the coordinator's chunk files, for slice modes."""
    import torch

    from ailo.chunks import split_state_dict, write_chunks
    from ailo.model import build_model

    out = chunk_dir(args)
    if (out / "manifest.json").exists():
        return {"mode": "chunks", "dir": str(out), "reused": True}
    dtype = torch.bfloat16 if args.slice_chunks == "bf16" else torch.float32
    state = {k: v.to(dtype) for k, v in build_model(args.preset, seed=0).state_dict().items()}
    manifest, blobs = split_state_dict(state, version=0, preset=args.preset)
    write_chunks(out, manifest, blobs)
    return {"mode": "chunks", "dir": str(out), "bytes": manifest.total_bytes}


def run_slice(args, mode: str) -> dict:
    """A slice worker's training (ailo.federation.client.slice_training) under a budget."""
    import torch

    from ailo.chunks import ChunkStore, DirectorySource, Manifest
    from ailo.data import TokenDataset
    from ailo.federation.client.slice_training import CachedTensors, train_slice
    from ailo.federation.client.memory_plan import parse_size
    from ailo.federation.core.slices import SlicePolicy, micro_batch_for, slice_state_bytes, units_of
    from ailo.model import get_preset
    from ailo.training import TrainConfig

    device = torch.device(args.device)
    spec = mode.split(":", 1)[1]
    budget_text, _, start = spec.partition("@")
    budget = parse_size(budget_text)
    cfg = get_preset(args.preset)
    folder = chunk_dir(args)
    manifest = Manifest.from_json((folder / "manifest.json").read_bytes())
    shapes = {n: tuple(t.shape) for n, t in manifest.tensors.items()}
    units = [u for u, _ in units_of(shapes, cfg.n_layer)]
    # a fresh coordinator's first pick, or (with @U) the pick when unit U is the least-trained one
    last = {u: (-1 if i == int(start) else 0) for i, u in enumerate(units)} if start else {}
    kind = "cuda" if device.type == "cuda" else "cpu"  # what the worker declares (memory_device)
    sl = SlicePolicy(cfg, shapes).choose(budget, "adamw", args.seq_len, last, {}, kind)
    if sl is None:
        return {"mode": mode, "error": f"no slice of {args.preset} fits {budget_text} (the coordinator answers 422 budget_too_small)"}
    micro = micro_batch_for(cfg, shapes, sl, "adamw", args.batch_size, args.seq_len, budget, kind)
    data = TokenDataset.from_dir(None, "train").random_batches(args.batch_size, args.seq_len, seed=1)
    batches = [next(data) for _ in range(args.steps + 1)]
    t0 = time.perf_counter()
    tensors = CachedTensors(ChunkStore(manifest, DirectorySource(folder), folder), folder)  # sha256 of every chunk
    verify_s = time.perf_counter() - t0
    base_rss = rss("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out: dict = {"mode": mode, "units": list(sl.units), "slice_params": sl.params, "share": round(sl.share, 4),
                 "micro_batch": micro, "estimate_bytes": slice_state_bytes(cfg, shapes, sl, "adamw", micro, args.seq_len, kind),
                 "budget_bytes": budget, "chunks": args.slice_chunks, "chunk_verify_seconds": round(verify_s, 2)}
    train = lambda bs, steps: train_slice(cfg, tensors, list(sl.names), bs, TrainConfig(steps=steps, batch_size=args.batch_size, lr=1e-3), device, micro)  # noqa: E731
    return _measure(train, batches, args.steps, device, base_rss, out)


def run_validation(args, mode: str) -> dict:
    import hashlib
    import tempfile

    import torch

    from ailo.federation.coordinator.coordinator import Coordinator, CoordinatorConfig, Submission
    from ailo.federation.coordinator import poc as poc_module
    from ailo.federation.coordinator.poc import ProofOfContribution
    from ailo.federation.core.update_format import UpdateMeta, UpdateRejected, decode_update, encode_update

    class NoLedger:
        def is_registered(self, address: str) -> bool:
            return True

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        coord = Coordinator(CoordinatorConfig(preset=args.preset, val_batches=1, local_steps=3, batch_size=args.batch_size,
                                              seq_len=args.seq_len, device=args.device), Path(tmp))
        poc = ProofOfContribution(NoLedger(), holdout_sequences=args.holdout_sequences)  # type: ignore[arg-type]
        if mode == "validation-old":  # the former reference: 8 sequences a forward, activations kept
            poc_module.holdout_batch = lambda seq_len: 8
            poc_module.holdout_recompute = lambda cfg, seq_len: False
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        _, grad = poc.reference(coord)
        t_ref = time.perf_counter() - t0
        # an honest-looking update: a small step along the holdout gradient (M − Δ lowers the loss)
        scale = 1e-3 / float(sum(float(g.pow(2).sum()) for g in grad.values()) ** 0.5)
        delta = {k: (g * scale * 50).cpu() for k, g in grad.items()}
        body = encode_update(delta)
        del delta
        rnd = coord.current_round()
        meta = UpdateMeta("bench", rnd.id, 0, args.batch_size * 3, 5.0)
        t1 = time.perf_counter()
        sub = Submission(meta, body, hashlib.sha256(body).hexdigest(), rnd, time.time())
        sub.tensors = {k: v.to(coord.device) for k, v in decode_update(body, coord.manifest).items()}  # as judge() does
        try:
            poc.check_contribution(coord, sub)
            outcome = "accepted"
        except UpdateRejected as exc:
            outcome = exc.reason
        t_check = time.perf_counter() - t1
        out = {"mode": mode, **_peak(device), "reference_seconds": round(t_ref, 2), "check_seconds": round(t_check, 2),
               "seconds_per_update": round(t_check + t_ref, 2), "outcome": outcome,
               "holdout_sequences": args.holdout_sequences, "loss_before": sub.extra.get("loss_before")}
        coord.store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="ailo-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--budgets", default="", help="comma-separated sizes, e.g. 24GB,12GB,8GB")
    ap.add_argument("--slices", default="", help="comma-separated slice-worker budgets, e.g. 4GB,4GB@12 (@U: slice from unit U)")
    ap.add_argument("--slice-chunks", choices=["fp32", "bf16"], default="fp32", help="dtype of the frozen weights' chunk files")
    ap.add_argument("--validation", action="store_true", help="also measure the coordinator's validation (lean and old)")
    ap.add_argument("--holdout-sequences", type=int, default=64)
    ap.add_argument("--tmp", default=None, help="folder for the coordinator's state (e.g. /dev/shm)")
    ap.add_argument("--out", default=None, help="also write the JSON line here")
    ap.add_argument("--modes", default=None, help="explicit order, e.g. today,budget:12GB,validation (most wanted first)")
    ap.add_argument("--row-timeout", type=float, default=300.0, help="seconds per mode (subprocess)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        fn = run_validation if args.one.startswith("validation") else run_slice if args.one.startswith("slice:") \
            else write_chunks_once if args.one == "chunks" else run_training
        print("RESULT " + json.dumps(fn(args, args.one)), flush=True)
        return
    modes = args.modes.split(",") if args.modes else ["today"] + [f"budget:{b}" for b in args.budgets.split(",") if b] + \
        (["validation", "validation-old"] if args.validation else []) + [f"slice:{b}" for b in args.slices.split(",") if b]
    if any(m.startswith("slice:") for m in modes):
        modes.insert(next(i for i, m in enumerate(modes) if m.startswith("slice:")), "chunks")
    rows: list[dict] = []
    for mode in modes:
        cmd = [sys.executable, __file__, "--one", mode] + [a for a in sys.argv[1:]]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.row_timeout)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            row = json.loads(line[7:]) if line else {"mode": mode, "error": (proc.stderr or proc.stdout)[-600:]}
        except subprocess.TimeoutExpired:
            row = {"mode": mode, "error": f"timed out after {args.row_timeout} s"}
        row["wall_seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        line = json.dumps(summary(args, rows))
        if args.out:  # after every row: a run cut short still leaves what it measured
            Path(args.out).write_text(line + "\n")
    print(line)


def summary(args, rows: list[dict]) -> dict:
    today = next((r for r in rows if r["mode"] == "today" and "tokens_per_s" in r), None)
    rows = [r for r in rows if r["mode"] != "chunks" or "error" in r]
    for r in rows:
        if today and "tokens_per_s" in r:
            r["speed_vs_today"] = round(r["tokens_per_s"] / today["tokens_per_s"], 3)
        if "peak_bytes" in r:
            r["peak_gb"] = round(r["peak_bytes"] / 1e9, 3)
    import torch
    return {"bench": "memory", "preset": args.preset, "device": args.device,
            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
            "batch": [args.batch_size, args.seq_len], "steps": args.steps, "rows": rows}


if __name__ == "__main__":
    main()
