"""Flagship rounds on one GPU box: `ailo-1b`, the coordinator on the GPU, two workers.

Starts real processes: `ailo coordinator --device DEVICE` (Proof-of-Contribution on) and
`--workers` × `ailo worker --device DEVICE --json-log`, each on its own corpus shard and wallet,
runs `--rounds` rounds, and prints ONE JSON line: per round the wall seconds between published
versions split into download / train (worker side, slowest worker) and upload (body receive
time, slowest) / validate / aggregate / evaluate / publish (coordinator side), bytes moved, validation loss, and the
coordinator's peak host RSS and GPU memory (its own CUDA caching allocator) plus every
process's GPU memory as nvidia-smi saw it (all processes share the one GPU, each with its own
CUDA context; nothing is shared between them but the device).

    # on the GPU machine (see bench/RESULTS.md for the exact command used)
    python3 bench/gpu_round.py --preset ailo-1b --device cuda --rounds 3 --local-steps 10 --batch-size 2
    # rehearsal on a CPU box
    .venv/bin/python bench/gpu_round.py --preset ailo-tiny --device cpu --rounds 3 --local-steps 5

Every wait fails fast when a process exits early; partial results are written to
`--out`/gpu_round.json after every round.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from common import add_out, ailo, follow_rounds, free_port, out_dir, stop_all, wait_healthy


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    return ailo(*args, log=log, threads=None, home=None)  # threads and AILO_HOME as the caller set them


def vm_hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class GpuSampler(threading.Thread):
    """Peak GPU memory per process (nvidia-smi), sampled every second."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak: dict[int, int] = {}
        self.total_peak = 0
        self.stop = threading.Event()
        self.available = shutil.which("nvidia-smi") is not None

    def run(self) -> None:
        while self.available and not self.stop.wait(1.0):
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
            except (subprocess.SubprocessError, OSError):
                continue
            total = 0
            for line in out.strip().splitlines():
                try:
                    pid, mib = (int(x) for x in line.split(","))
                except ValueError:
                    continue
                self.peak[pid] = max(self.peak.get(pid, 0), mib * 2**20)
                total += mib * 2**20
            self.total_peak = max(self.total_peak, total)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="ailo-1b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-decay", type=float, default=1.0, help="client lr of round r: lr·decay^(r−1)")
    ap.add_argument("--warmup-steps", type=int, default=0, help="client lr ramp over each round's first N steps")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--codec", default="fp32", choices=["fp32", "int8", "sparse"], help="update codec")
    ap.add_argument("--compact-downloads", action="store_true", help="bf16 model + int8 patches from v-1")
    ap.add_argument("--state", default=None, help="work directory (default: a temp dir, removed after)")
    add_out(ap)
    ap.add_argument("--max-seconds", type=float, default=540, help="give up (and report what ran) after this")
    ap.add_argument("--worker-budgets", default="", help="comma list, one `--memory-budget` per worker "
                    "(e.g. 12GiB,4GiB,4GiB: a budgeted full worker and two slice workers); empty: none")
    args = ap.parse_args()
    budgets = [b for b in args.worker_budgets.split(",") if b]
    if budgets and len(budgets) != args.workers:
        ap.error(f"--worker-budgets names {len(budgets)} budgets for {args.workers} workers")
    out = out_dir(args) or Path(".")
    work = Path(args.state) if args.state else Path(tempfile.mkdtemp(prefix="ailo-gpu-round-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t_start = time.time()
    seq = ["--seq-len", str(args.seq_len)] if args.seq_len else []
    coord = spawn(["coordinator", "--state", str(work / "coord"), "--port", str(port), "--preset", args.preset,
                   "--device", args.device, "--min-updates", str(args.workers), "--max-updates", str(args.workers),
                   "--rounds", str(args.rounds), "--local-steps", str(args.local_steps), "--batch-size",
                   str(args.batch_size), "--lr", str(args.lr), "--lr-decay", str(args.lr_decay), "--warmup-steps", str(args.warmup_steps), "--chunks", str(args.chunks), "--round-seconds", "3600",
                   "--codec", args.codec, *(["--compact-downloads"] if args.compact_downloads else []), *seq], work / "logs" / "coordinator.log")
    procs = {"coordinator": coord}
    sampler = GpuSampler()
    sampler.start()
    result: dict = {"bench": "gpu_round", "preset": args.preset, "device": args.device, "workers": args.workers,
                    "local_steps": args.local_steps, "batch_size": args.batch_size, "lr": args.lr, "lr_decay": args.lr_decay, "warmup_steps": args.warmup_steps,
                    "codec": args.codec, "compact_downloads": args.compact_downloads, "worker_budgets": budgets or None}

    def write(partial: bool) -> None:
        result["partial"] = partial
        result["elapsed_s"] = round(time.time() - t_start, 1)
        (out / "gpu_round.json").write_text(json.dumps(result, indent=1))

    status: dict = {}
    try:
        # the coordinator builds, splits and evaluates the genesis model first
        wait_healthy(url, coord, timeout=args.max_seconds, log=work / "logs" / "coordinator.log")
        result["coordinator_start_s"] = round(time.time() - t_start, 1)
        for k in range(args.workers):
            procs[f"worker-{k}"] = spawn(
                ["worker", "--coordinator", url, "--device", args.device, "--shard", str(k), "--num-shards",
                 str(args.workers), "--client-id", f"worker-{k}", "--cache", str(work / f"cache-{k}"),
                 "--json-log", "--rounds", str(args.rounds), "--wallet", str(work / f"wallet-{k}.json"),
                 *(["--memory-budget", budgets[k]] if budgets else [])],
                work / "logs" / f"worker-{k}.log")

        def published(status: dict) -> None:
            result["history"] = status["history"]
            write(partial=True)
            print(f"[{time.time() - t_start:6.1f}s] version {status['version']} val_loss "
                  f"{status['history'][-1]['val_loss']:.4f}", flush=True)
        status = follow_rounds(url, procs, work / "logs", t_start, args.max_seconds, published)
        result["ok"] = True
    except (RuntimeError, TimeoutError) as exc:
        result["ok"] = False
        result["error"] = str(exc)[-2000:]
    finally:
        result["coordinator_peak_rss_bytes"] = vm_hwm(coord.pid)
        result["worker_peak_rss_bytes"] = {n: vm_hwm(p.pid) for n, p in procs.items() if n != "coordinator"}
        try:
            status = httpx.get(f"{url}/v1/status", timeout=60).json()
        except httpx.HTTPError:
            pass
        stop_all(procs.values())
        sampler.stop.set()
    result["coordinator_peak_memory"] = status.get("peak_memory")
    result["gpu_peak_by_process"] = {n: sampler.peak.get(p.pid) for n, p in procs.items()}
    result["gpu_peak_all_processes_bytes"] = sampler.total_peak or None
    reports: dict[int, list[dict]] = {}
    for k in range(args.workers):
        for line in (work / "logs" / f"worker-{k}.log").read_text(errors="replace").splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                reports.setdefault(r["round"], []).append({**r, "worker": k})
    history = status.get("history", [])
    rounds = []
    for prev, h in zip(history, history[1:]):
        ws = [r for r in reports.get(h["round"], []) if r["status"] == "accepted"]
        worst = {k: max((r["seconds"].get(k, 0) for r in ws), default=None) for k in ("download", "train", "encode")}
        worst["upload"] = h.get("upload_ms_max", 0) / 1000  # body receive time, coordinator side
        rounds.append({"round": h["round"], "wall_s": round(h["published"] - prev["published"], 1),
                       "download_s": worst["download"], "train_s": worst["train"], "encode_s": worst["encode"], "upload_s": worst["upload"],
                       "validate_s": round(h["validate_ms"] / 1000, 2),
                       "aggregate_s": h.get("aggregate_ms", 0) / 1000, "evaluate_s": h.get("evaluate_ms", 0) / 1000,
                       "publish_s": h.get("publish_ms", 0) / 1000, "bytes_down": h["bytes_down"],
                       "validate_phases_s": {k: round(v / 1000, 2) for k, v in h.get("validate_phases_ms", {}).items()},
                       "fold_s": h.get("fold_ms", 0) / 1000, "publish_fp32_chunks_s": h.get("publish_fp32_chunks_ms", 0) / 1000,
                       "publish_compact_s": h.get("publish_compact_ms", 0) / 1000,
                       "bytes_up": h["bytes_up"], "updates": h["updates"], "refused": h["refused"],
                       "val_loss": h["val_loss"],
                       "slices": {f"worker-{r['worker']}": r["slice"] for r in ws if r.get("slice")},
                       "peak_device_bytes": {f"worker-{r['worker']}": r.get("peak_device_bytes") for r in ws}})
    result["rounds"] = rounds
    result["val_loss"] = [h["val_loss"] for h in history]
    result["val_loss_falling"] = all(b < a for a, b in zip(result["val_loss"], result["val_loss"][1:])) and len(rounds) >= 1
    result.pop("history", None)
    write(partial=not result.get("ok"))
    # every process's log tail beside the JSON: the machine that ran it keeps nothing
    (out / "gpu_round_logs.txt").write_text("".join(
        f"===== {name} =====\n{(work / 'logs' / f'{name}.log').read_text(errors='replace')[-20000:]}\n" for name in procs))
    print(json.dumps(result), flush=True)
    if not args.state:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
