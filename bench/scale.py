"""Coordinator at scale on this machine: 32 concurrent simulated clients, `ailo-small`.

A real `ailo coordinator` process (Proof-of-Contribution on, CPU) and 32 clients (threads of
this process), each with its own registered wallet, submitting valid signed updates: per model
version one real local training run (AdamW, 1 step) on the served weights per client. Two runs in
this process, same load, different K (updates per round):

    memory_ratio   = coordinator peak RSS (VmHWM) with K=32 ÷ with K=4    (goal ≤ 1.25)
    accept_p99_ms  = p99 of POST /v1/updates response time (202 answers, the body's transfer
                     included) in the K=32 run (goal ≤ 1000)
    updates_per_s  = accepted updates / wall seconds in the K=32 run
    sink_p99_ms    = baseline, same process: the same bodies, 32 at once, to a server that only
                     reads and hashes them (the transfer's own cost on this machine)

    .venv/bin/python bench/scale.py                 # fp32 bodies (70 MB each), prints one JSON line
    .venv/bin/python bench/scale.py --codec int8    # the int8 codec's 17.7 MB bodies
    python3 bench/scale.py --device cuda --threads 8  # on a GPU server: validation on the GPU
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from common import ailo, free_port, stop as stop_process, wait_healthy  # noqa: E402  (puts this tree on sys.path)
from ailo.chunks import ChunkStore, Manifest  # noqa: E402
from ailo.data import TokenDataset  # noqa: E402
from ailo.federation.core.signing import sign_update  # noqa: E402
from ailo.federation.core.codecs import CodecSpec, encode  # noqa: E402
from ailo.federation.core.update_format import UpdateMeta  # noqa: E402
from ailo.federation.client.uploader import BodyPieces  # noqa: E402
from ailo.ledger.tx import register_tx  # noqa: E402
from ailo.ledger.verify import now_ms  # noqa: E402
from ailo.model import build_model, get_preset  # noqa: E402
from ailo.training import TrainConfig, train_local  # noqa: E402
from ailo.wallet import Wallet  # noqa: E402


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


class Deltas:
    """Per model version: `variants` real one-step training runs on the served weights."""

    def __init__(self, url: str, preset: str, variants: int, seq_len: int):
        self.url, self.variants, self.seq_len = url, variants, seq_len
        self.model = build_model(get_preset(preset), seed=0)
        self.data = TokenDataset.from_dir(None, "train")
        self.lock = threading.Lock()
        self.version, self.deltas = -1, []

    def get(self, version: int, task: dict) -> list[bytes]:
        """Encoded update bodies (kept as bytes: 32 decoded ailo-small deltas plus per-thread
        copies took 20 GB of this machine's 24 GiB)."""
        with self.lock:
            if version != self.version:
                with httpx.Client(base_url=self.url, timeout=120) as c:
                    manifest = Manifest.from_json(c.get("/v1/model").content)
                    if manifest.version != version:
                        return []

                    class Src:
                        def fetch(self, sha):
                            return c.get(f"/v1/chunks/{sha}").content
                    state = ChunkStore(manifest, Src()).state_dict()
                out = []
                for j in range(self.variants):
                    self.model.load_state_dict(state)
                    batches = self.data.random_batches(task["batch_size"], task["seq_len"], seed=1000 * version + j)
                    cfg = TrainConfig(steps=task["steps"], batch_size=task["batch_size"], lr=task["lr"],
                                      optimizer=task["optimizer"])
                    out.append(encode(train_local(self.model, batches, cfg).delta, CodecSpec.from_task(task)))
                self.version, self.deltas = version, out
            return self.deltas


SINK = """
import hashlib, sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
async def sink(request):
    h, n = hashlib.sha256(), 0
    async for piece in request.stream():
        h.update(piece)
        n += len(piece)
    return JSONResponse({"bytes": n, "sha256": h.hexdigest()}, status_code=202)
uvicorn.run(Starlette(routes=[Route("/v1/updates", sink, methods=["POST"])]), host="127.0.0.1",
            port=int(sys.argv[1]), log_level="warning")
"""


def sink_baseline(body: bytes, clients: int, waves: int = 3) -> dict:
    """The baseline: the same uploads (`clients` at once, `waves` times) to a server process that
    only reads and hashes each body. On one small machine 32 clients sending at once share its
    cores and loopback with the server, so the transfer alone takes seconds for large bodies;
    the coordinator's accept latency is judged against this."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SINK, str(port)], start_new_session=True)
    try:
        end = time.time() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.time() > end:
                    raise RuntimeError("sink server did not start")
                time.sleep(0.2)
        ms: list[float] = []

        def one() -> None:
            pieces = BodyPieces(body)
            with httpx.Client(timeout=300) as c:
                t0 = time.perf_counter()
                r = c.post(f"http://127.0.0.1:{port}/v1/updates", content=pieces, headers=pieces.headers())
                assert r.status_code == 202 and r.json()["bytes"] == len(body)
                ms.append(1000 * (time.perf_counter() - t0))
        for _ in range(waves):
            threads = [threading.Thread(target=one) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        ms.sort()
        return {"body_bytes": len(body), "posts": len(ms), "p50_ms": round(ms[len(ms) // 2], 1),
                "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def client_loop(i: int, url: str, wallet: Wallet, deltas: Deltas, stop: threading.Event, log: dict) -> None:
    name = f"sim-{i}"
    with httpx.Client(base_url=url, timeout=300) as c:
        while not stop.is_set():
            task = c.post("/v1/tasks", json={"client_id": name, "address": wallet.address}).json()
            if task["status"] == "done":
                return
            if task["status"] != "train":
                time.sleep(0.2)
                continue
            variants = deltas.get(task["version"], task)
            if not variants:
                continue
            body = variants[i % len(variants)]
            meta = sign_update(wallet, UpdateMeta(name, task["round"], task["version"], task["steps"] * task["batch_size"],
                                                  5.0, task_id=task["task_id"]), hashlib.sha256(body).hexdigest())
            t0 = time.perf_counter()
            pieces = BodyPieces(body)
            r = c.post("/v1/updates", content=pieces, headers={**meta.to_headers(), **pieces.headers()})
            ms = 1000 * (time.perf_counter() - t0)
            with log["lock"]:  # 202 = admitted; a 429 (cool-down, rate limit) is answered before any body work
                log["post_ms" if r.status_code == 202 else "other_ms"].append(ms)
                log["codes"][r.status_code] = log["codes"].get(r.status_code, 0) + 1
            if r.status_code != 202:
                time.sleep(0.5)
                continue
            while not stop.is_set():
                v = c.get(f"/v1/updates/{r.json()['update_id']}", params={"wait": 20}).json()
                if v["status"] != "pending":
                    with log["lock"]:
                        log["verdicts"][v.get("reason") or v["status"]] = log["verdicts"].get(v.get("reason") or v["status"], 0) + 1
                    break


def run(k: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = Path(tmp) / "coord.log"
        coord = ailo(
            "coordinator", "--state", f"{tmp}/state", "--port", str(port),
            "--preset", args.preset, "--min-updates", str(k), "--max-updates", str(k), "--rounds", str(args.rounds),
            "--local-steps", "1", "--batch-size", "1", "--seq-len", str(args.seq_len), "--lr", str(args.lr),
            "--codec", args.codec, "--round-seconds", "3600", "--device", args.device,
            "--registrations-per-hour", "100000", log=log_path, threads=args.threads, home=None)
        try:
            wait_healthy(url, coord, timeout=300, log=log_path)
            wallets = []
            for i in range(args.clients):
                w = Wallet.generate().with_username(f"sim-{i}")
                r = httpx.post(f"{url}/v1/register", json=register_tx(w, f"sim-{i}", now_ms()).to_json(), timeout=60)
                assert r.status_code == 200, r.text
                wallets.append(w)
            deltas = Deltas(url, args.preset, args.variants, args.seq_len)
            log = {"lock": threading.Lock(), "post_ms": [], "other_ms": [], "codes": {}, "verdicts": {}}
            stop = threading.Event()
            t0 = time.perf_counter()
            threads = [threading.Thread(target=client_loop, args=(i, url, w, deltas, stop, log), daemon=True)
                       for i, w in enumerate(wallets)]
            for t in threads:
                t.start()
            while True:
                if coord.poll() is not None:
                    raise RuntimeError(f"coordinator died:\n{log_path.read_text()[-3000:]}")
                status = httpx.get(f"{url}/v1/status", timeout=60).json()
                if status["finished"] or time.perf_counter() - t0 > args.max_seconds:
                    break
                time.sleep(0.5)
            wall = time.perf_counter() - t0
            stop.set()
            for t in threads:
                t.join(30)
            rss = peak_rss(coord.pid)
        finally:
            stop_process(coord, grace=30)
    post = sorted(log["post_ms"])
    accepted = sum(h["updates"] for h in status["history"])
    validate_ms = [h["validate_ms"] / max(1, h["updates"] + h["refused"]) for h in status["history"][1:]]
    return {"k": k, "peak_rss_bytes": rss, "rounds": len(status["history"]) - 1, "finished": status["finished"],
            "accepted": accepted, "wall_s": round(wall, 1), "posts": len(post),
            "accept_p50_ms": round(post[len(post) // 2], 1) if post else None,
            "accept_p99_ms": round(post[min(len(post) - 1, int(0.99 * len(post)))], 1) if post else None,
            "codes": log["codes"], "verdicts": log["verdicts"],
            "validate_ms_per_update": round(sum(validate_ms) / max(1, len(validate_ms)), 1),
            "val_loss": [round(h["val_loss"], 4) for h in status["history"]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="ailo-small")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--variants", type=int, default=None,
                    help="real training runs per model version (default: one per client; fewer are "
                         "refused as duplicate work by Proof-of-Contribution)")
    ap.add_argument("--threads", type=int, default=1, help="coordinator's intra-op threads")
    ap.add_argument("--device", default="cpu", help="coordinator's device (cuda: validation on the GPU)")
    ap.add_argument("--max-seconds", type=float, default=900)
    ap.add_argument("--k", type=int, nargs=2, default=[4, 32], metavar=("SMALL", "LARGE"))
    ap.add_argument("--codec", default="fp32", choices=["fp32", "int8", "sparse"],
                    help="update codec of the run (fp32 ailo-small bodies are 70 MB: 32 at once take seconds to send)")
    ap.add_argument("--lr", type=float, default=1e-4,
                    help="local AdamW lr (1 step on 64 tokens: at 1e-3 the step is noise that raises the holdout "
                         "loss, and PoC refuses it from version 1 on)")
    args = ap.parse_args()
    args.variants = args.variants or args.clients
    model = build_model(get_preset(args.preset), seed=0)
    g = torch.Generator().manual_seed(0)
    body = encode({k: torch.randn(v.shape, generator=g) * 1e-4 for k, v in model.state_dict().items()},
                  CodecSpec(args.codec))
    sink = sink_baseline(body, args.clients)
    small, large = run(args.k[0], args), run(args.k[1], args)
    print(json.dumps({"bench": "scale", "preset": args.preset, "clients": args.clients, "codec": args.codec,
                      "device": args.device, "threads": args.threads,
                      "memory_ratio": round(large["peak_rss_bytes"] / small["peak_rss_bytes"], 3),
                      "accept_p99_ms": large["accept_p99_ms"], "sink_p99_ms": sink["p99_ms"],
                      "updates_per_s": round(large["accepted"] / large["wall_s"], 2),
                      "sink": sink, f"k{args.k[0]}": small, f"k{args.k[1]}": large}))


if __name__ == "__main__":
    main()
