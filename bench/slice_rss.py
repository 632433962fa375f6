"""Peak RSS of an `ailo worker --memory-budget` slice worker against a real coordinator (issue 26 B).

Starts `ailo coordinator` (default ailo-1b on the CPU, short sequences, 1 update a round) and one
`ailo worker --memory-budget 3GiB --rounds 1` process, waits for the verdict and the round's
mint, and prints one JSON line: the worker's peak RSS (ru_maxrss of that process, via wait4),
the slice it got, its verdict, what it was paid, and the coordinator's peak RSS.

    PYTHONPATH=$PWD AILO_HOME=/work/main .venv/bin/python bench/slice_rss.py            # ailo-1b
    PYTHONPATH=$PWD AILO_HOME=/work/main .venv/bin/python bench/slice_rss.py --preset ailo-small --budget 380MiB
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from common import ROOT, ailo as _ailo, free_port, stop, wait_healthy


def ailo(*args: str, log: Path) -> subprocess.Popen:
    """`ailo …` as a process of its own (AILO_HOME as given, else this tree: tokenizer and corpus)."""
    return _ailo(*args, log=log, threads=None, home=os.environ.get("AILO_HOME", str(ROOT)))


def rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="ailo-1b")
    ap.add_argument("--budget", default="3GiB")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=35)
    ap.add_argument("--holdout-sequences", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=1500)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slice-rss-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    coord = ailo("coordinator", "--state", str(work / "coord"), "--port", str(port), "--preset", args.preset,
                 "--seq-len", str(args.seq_len), "--batch-size", "1", "--local-steps", str(args.steps),
                 "--min-updates", "1", "--holdout-sequences", str(args.holdout_sequences),
                 "--chunks", str(args.chunks), "--device", "cpu", "--rounds", "1", "--round-seconds", "3600",
                 log=work / "coord.log")
    worker = None
    t0 = time.time()
    try:
        wait_healthy(url, coord, timeout=900, path="/v1/ready", log=work / "coord.log")
        t_ready = time.time() - t0
        worker = ailo("worker", "--coordinator", url, "--memory-budget", args.budget, "--rounds", "1",
                      "--wallet", str(work / "w.json"), "--client-id", "slice-rss", "--cache", str(work / "cache"),
                      "--quiet", "--json-log", log=work / "worker.log")
        _, status, usage = os.wait4(worker.pid, 0)
        worker.returncode = os.waitstatus_to_exitcode(status)
        from ailo.wallet import Wallet
        address = Wallet.load(work / "w.json").address
        row, paid = None, 0
        deadline = time.time() + args.timeout
        while time.time() < deadline:
            st = httpx.get(f"{url}/v1/status", timeout=30).json()
            if st.get("settled_round", 0) >= 1:
                paid = httpx.get(f"{url}/v1/balance/{address}", timeout=30).json()["spendable"]
                break
            if coord.poll() is not None:
                break
            time.sleep(2)
        lines = [json.loads(line) for line in (work / "worker.log").read_text().splitlines() if line.startswith("{")]
        row = lines[-1] if lines else None
        print(json.dumps({
            "bench": "slice_rss", "preset": args.preset, "budget": args.budget, "seq_len": args.seq_len,
            "batch": 1, "steps": args.steps, "worker_exit": worker.returncode,
            "worker_peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
            "coordinator_peak_rss_gib": round(rss_kib(coord.pid) / 2**20, 3) if coord.poll() is None else None,
            "worker_round": row, "paid_units": paid, "coordinator_ready_s": round(t_ready, 1),
            "total_s": round(time.time() - t0, 1), "logs": str(work)}))
    finally:
        if worker is not None and worker.poll() is None:
            stop(worker)
        stop(coord)


if __name__ == "__main__":
    main()
