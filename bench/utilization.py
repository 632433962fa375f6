"""Contributors' compute utilization behind emulated home links (issue 27).

Starts a real `ailo coordinator` (project defaults unless `--coord-arg` adds flags) and N
`ailo worker --json-log` processes, each behind its own household line (bench/linkemu.py `Line`:
bandwidth each way + RTT, shared by every connection of the household). After `--rounds`
rounds it trains ONE centralized process in this process on the same number of tokens (the
accepted updates' samples, batch = N × the task batch, same init, lr and optimizer) and prints
ONE JSON line:

- `utilization` per worker: training seconds ÷ wall seconds after its first round (from the
  workers' own JSON lines: Σ seconds.train of updates 2..n ÷ (t_n − t_1)), and the median;
- bytes per round each way (median per worker-round; the first full download apart);
- `val_loss` of the last published version, `central_val_loss`, `loss_ratio`.

    .venv/bin/python bench/utilization.py                                    # ailo-small, 3 × 10/2 Mbit/s, 40 ms
    python3 bench/utilization.py --preset ailo-1b --device cuda --workers 2 --down-mbit 100 --up-mbit 20 \\
        --coord-arg=--codec=sparse ...                                       # the GPU machine (bench/RESULTS.md)

Every wait fails fast when a process exits early.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common import add_out, ailo, emit, follow_rounds, free_port, stop_all, wait_healthy
from linkemu import Line, LinkEmulator


def spawn(args: list[str], log: Path, threads: int | None) -> subprocess.Popen:
    return ailo(*args, log=log, threads=threads, home=None)  # AILO_HOME as the caller set it


def worker_lines(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def utilization(lines: list[dict]) -> float | None:
    """Σ train seconds of updates 2..n ÷ wall seconds from update 1 to update n."""
    if len(lines) < 2:
        return None
    lines = sorted(lines, key=lambda r: r["t"])
    return sum(r["seconds"]["train"] for r in lines[1:]) / (lines[-1]["t"] - lines[0]["t"])


def centralized(preset: str, task: dict, samples: int, workers: int, device: str, val_batches: int, seed: int) -> dict:
    """One process from the coordinator's genesis on the same tokens, evaluated like the coordinator."""
    import torch
    from ailo.data import TokenDataset
    from ailo.model import build_model, get_preset
    from ailo.training import TrainConfig, evaluate, train_local

    dev = torch.device(device)
    model = build_model(get_preset(preset), seed=seed).to(dev)
    batch = task["batch_size"] * workers
    steps = max(1, round(samples / batch))
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=task["lr"], optimizer=task["optimizer"],
                      warmup_steps=int(task.get("warmup_steps", 0)))
    t0 = time.time()
    train_local(model, TokenDataset.from_dir(None, "train").random_batches(batch, task["seq_len"], seed=seed + 7), cfg, dev)
    val = TokenDataset.from_dir(None, "val").fixed_batches(val_batches, task["batch_size"], task["seq_len"])
    return {"central_steps": steps, "central_batch": batch, "central_val_loss": evaluate(model, val, dev),
            "central_seconds": round(time.time() - t0, 1)}


def accepted_samples(coord_state: Path) -> int | None:
    """Samples of every accepted update, from the coordinator's store: a worker stopped as soon
    as training finished never prints its last update's line, so its lines undercount."""
    import sqlite3
    db = coord_state / "state.db"
    if not db.exists():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COALESCE(SUM(n_samples), 0) FROM updates WHERE status = 'accepted'").fetchone()[0])


def warm_caches(work: Path, workers: int, url: str) -> None:
    """Link version 0's served chunks (bf16 when compact, else fp32) into every worker's cache."""
    from ailo.chunks import Manifest
    served = work / "coord" / "served" / "v0.json"
    manifest = Manifest.from_json(served.read_text() if served.exists() else httpx.get(f"{url}/v1/model", timeout=60).text)
    for k in range(workers):
        target = work / f"cache-{k}" / "chunks"
        target.mkdir(parents=True, exist_ok=True)
        for c in manifest.chunks:
            if not (target / c.sha256).exists():
                os.link(work / "coord" / "chunks" / c.sha256, target / c.sha256)


def _n_ctx(preset: str) -> int:
    from ailo.model import get_preset
    return get_preset(preset).n_ctx


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="ailo-small")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--down-mbit", type=float, default=10.0)
    ap.add_argument("--up-mbit", type=float, default=2.0)
    ap.add_argument("--rtt-ms", type=float, default=40.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per worker process (CPU)")
    ap.add_argument("--coord-arg", action="append", default=[], help="extra `ailo coordinator` flag (repeatable)")
    ap.add_argument("--worker-arg", action="append", default=[], help="extra `ailo worker` flag (repeatable)")
    ap.add_argument("--max-seconds", type=float, default=3600)
    ap.add_argument("--warm-cache", action="store_true",
                    help="workers start holding version 0 (its chunks linked into their caches): the first "
                         "download of a big model is not part of the rounds measured")
    ap.add_argument("--no-central", action="store_true", help="skip the centralized baseline")
    ap.add_argument("--state", default=None)
    add_out(ap)
    args = ap.parse_args()
    work = Path(args.state) if args.state else Path(tempfile.mkdtemp(prefix="ailo-util-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t_start = time.time()
    coord = spawn(["coordinator", "--state", str(work / "coord"), "--port", str(port), "--preset", args.preset,
                   "--device", args.device, "--min-updates", str(args.workers), "--rounds", str(args.rounds),
                   *args.coord_arg], work / "logs" / "coordinator.log", None)
    procs = {"coordinator": coord}
    emu = LinkEmulator().start()
    homes = [Line(args.down_mbit, args.up_mbit, args.rtt_ms, handshake=True) for _ in range(args.workers)]
    home_urls = [emu.proxy("127.0.0.1", port, home) for home in homes]
    result: dict = {"bench": "utilization", "preset": args.preset, "workers": args.workers, "rounds": args.rounds,
                    "link": {"down_mbit": args.down_mbit, "up_mbit": args.up_mbit, "rtt_ms": args.rtt_ms},
                    "coord_args": args.coord_arg, "device": args.device, "load_start": os.getloadavg()[0]}

    status: dict = {}
    try:
        wait_healthy(url, coord, timeout=args.max_seconds, log=work / "logs" / "coordinator.log")
        if args.warm_cache:
            warm_caches(work, args.workers, url)
        for k, home_url in enumerate(home_urls):
            procs[f"worker-{k}"] = spawn(
                ["worker", "--coordinator", home_url, "--device", args.device, "--shard", str(k),
                 "--num-shards", str(args.workers), "--client-id", f"worker-{k}", "--cache", str(work / f"cache-{k}"),
                 "--json-log", "--quiet", "--wallet", str(work / f"wallet-{k}.json"), *args.worker_arg],
                work / "logs" / f"worker-{k}.log", args.threads)
        status = follow_rounds(url, procs, work / "logs", t_start, args.max_seconds, lambda st: print(
            f"[{time.time() - t_start:6.1f}s] version {st['history'][-1]['version']} val_loss "
            f"{st['history'][-1]['val_loss']:.4f} load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True))
        result["ok"] = True
    except (RuntimeError, TimeoutError) as exc:
        result["ok"] = False
        result["error"] = str(exc)[-2000:]
    finally:
        try:
            status = httpx.get(f"{url}/v1/status", timeout=60).json()
        except httpx.HTTPError:
            pass
        stop_all(procs.values())
        emu.stop()
    result["wall_s"] = round(time.time() - t_start, 1)
    result["load_end"] = os.getloadavg()[0]
    per: dict[str, list[dict]] = {f"worker-{k}": worker_lines(work / "logs" / f"worker-{k}.log")
                                  for k in range(args.workers)}
    util = {n: utilization(ls) for n, ls in per.items()}
    known = [u for u in util.values() if u is not None]
    result["utilization"] = {n: None if u is None else round(u, 3) for n, u in util.items()}
    result["median_utilization"] = round(statistics.median(known), 3) if known else None
    lines = [r for ls in per.values() for r in ls]
    # bytes.down of an update's line is the version fetched after it; the first full download is apart
    ups = [r["bytes"]["up"] for r in lines]
    downs = [r["bytes"]["down"] for r in lines if r["bytes"]["down"]]
    result["bytes_up_per_round"] = int(statistics.median(ups)) if ups else None
    result["bytes_down_per_round"] = int(statistics.median(downs)) if downs else None
    result["first_download_bytes"] = [h.bytes_down - sum(r["bytes"]["down"] for r in per[f"worker-{k}"])
                                      for k, h in enumerate(homes)]
    result["line_bytes"] = [{"down": h.bytes_down, "up": h.bytes_up} for h in homes]
    result["verdicts"] = {n: [r.get("verdict") for r in ls] for n, ls in per.items()}
    result["seconds"] = {n: [r["seconds"] for r in ls] for n, ls in per.items()}
    result["history"] = [{k: h.get(k) for k in ("version", "val_loss", "accepted", "published_at") if k in h}
                         for h in status.get("history", [])]
    result["val_loss"] = status["history"][-1]["val_loss"] if status.get("history") else None
    c = status.get("config", {})
    task = {"batch_size": c.get("batch_size"), "lr": c.get("lr"), "optimizer": c.get("optimizer"),
            "warmup_steps": c.get("warmup_steps", 0), "seq_len": c.get("seq_len") or _n_ctx(args.preset)}
    result["config"] = {k: c.get(k) for k in ("codec", "compact_downloads", "local_seconds", "max_local_steps", "lr",
                                              "batch_size", "optimizer", "outer", "server_lr")}
    partial = not result["ok"] and "stopped after" in result.get("error", "")  # --max-seconds: report what ran
    result["partial"] = partial
    if not args.no_central and (result["ok"] or partial) and task["batch_size"] and result["val_loss"] is not None:
        samples = accepted_samples(work / "coord") or sum(r["n_samples"] for r in lines if r.get("verdict") == "accepted")
        result["tokens"] = samples * task["seq_len"]
        result.update(centralized(args.preset, task, samples, args.workers, args.device,
                                  int(c.get("val_batches", 4)), int(c.get("seed", 0))))
        result["loss_ratio"] = round(result["val_loss"] / result["central_val_loss"], 4)
    emit(result, args)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
