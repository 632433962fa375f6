"""`ailo demo`: a coordinator and several workers on this machine, on embedded defaults.

Everything runs as real processes over loopback HTTP (the same code paths as a deployment):
SQLite state and chunk files under `runs/demo/`, disjoint corpus shards per worker. The corpus
is split by file into `public/` (what workers train on and the coordinator publishes as its
validation set) and `private/` (the coordinator's Proof-of-Contribution holdout, which no worker
ever gets: `--holdout-dir`). Prints
per round the global validation loss, the number of updates and the bytes moved, then a
summary and a PNG plot.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ailo.cli import checks
from ailo.cli.errors import CLIError
from ailo.presets import PRESETS


LATE = {"stale_round", "finished"}  # refusals of updates that came after their round: not cheats
HEARTBEAT_S = 15.0  # a progress line at least this often while a round is open

DEFAULT_CODEC, DEFAULT_OUTER, DEFAULT_SERVER_LR, DEFAULT_OPTIMIZER = "sparse", "sgd", 2.0, "sgd"


def _size(n: float) -> str:
    """Bytes for people: 75.5KB, 6.6MB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}B"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a local federated-training demo (coordinator + workers)")
    p.add_argument("--workers", type=checks.positive_int, default=3, help="honest native workers")
    p.add_argument("--rounds", type=checks.positive_int, default=5, help="training rounds")
    p.add_argument("--local-steps", type=checks.positive_int, default=30, help="local steps per worker and round")
    p.add_argument("--preset", default="ailo-tiny", choices=sorted(PRESETS), help="model size")
    p.add_argument("--cheater", default="sign-flip", choices=["sign-flip", "scale", "none"],
                   help="add one worker that sends a corrupted update (refused and unpaid)")
    p.add_argument("--out", default="runs/demo", help="state, logs and the plot go here (wiped first)")
    p.add_argument("--port", type=checks.port, default=0, help="coordinator port (0: a free one)")
    p.add_argument("--round-seconds", type=checks.positive_float, default=90.0,
                   help="deadline: a round closes early with one update per worker, else at the deadline")
    p.add_argument("--lr-decay", type=checks.positive_float, default=0.8, help="client learning rate × this per round")
    # Communication (issue 13; defaults = the best setting of bench/compression.py, bench/RESULTS.md)
    p.add_argument("--optimizer", default=DEFAULT_OPTIMIZER, choices=["adamw", "sgd"], help="workers' local optimizer")
    p.add_argument("--lr", type=checks.positive_float, default=None, help="workers' learning rate (default: 0.3 for sgd, 3e-3 for adamw)")
    p.add_argument("--codec", default=DEFAULT_CODEC, choices=["fp32", "int8", "sparse"], help="update codec")
    p.add_argument("--codec-density", type=checks.probability, default=0.01, help="sparse: share of each tensor's entries sent")
    p.add_argument("--outer", default=DEFAULT_OUTER, choices=["sgd", "nesterov", "fedadam"], help="outer optimizer")
    p.add_argument("--server-lr", type=checks.positive_float, default=DEFAULT_SERVER_LR, help="outer learning rate")
    p.add_argument("--full-downloads", action="store_true",
                   help="serve only the fp32 model (default: bf16 model + int8 patches from the previous version)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--stall-seconds", type=checks.positive_float, default=900.0, help="give up when no round closes this long")
    p.add_argument("--no-room", action="store_true", help="skip the signed, paid inference-room step")
    p.set_defaults(func=run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args: list[str], log: Path, threads: int = 1) -> subprocess.Popen:
    # One math thread per process: N workers on a small machine must not oversubscribe its cores.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ailo.cli.main", *args], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx  # here, not at the top: `ailo --help` stays light
    for _ in range(600):
        if proc.poll() is not None:
            raise CLIError(f"coordinator exited early; see {log}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise CLIError(f"coordinator did not start; see {log}")


def plot(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([h["version"] for h in history], [h["val_loss"] for h in history], marker="o")
    ax.set_xlabel("round (model version)")
    ax.set_ylabel("global validation loss (nats/token)")
    ax.set_title("Ailo federated training")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    port = args.port or _free_port()
    url = f"http://127.0.0.1:{port}"
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    coord_log = out / "logs" / "coordinator.log"
    import httpx

    from ailo.data import carve_private
    from ailo.paths import corpus_dir
    public, private = out / "public", out / "private"
    carve_private(corpus_dir(), public, private)
    coord = _spawn(["coordinator", "--state", str(out / "coordinator"), "--port", str(port), "--preset", args.preset,
                    "--rounds", str(args.rounds), "--max-updates", str(args.workers), "--min-updates", "1",
                    "--round-seconds", str(args.round_seconds), "--lr-decay", str(args.lr_decay),
                    "--local-steps", str(args.local_steps), "--data", str(public), "--holdout-dir", str(private),
                    "--optimizer", args.optimizer,
                    "--lr", str(args.lr if args.lr is not None else (0.3 if args.optimizer == "sgd" else 3e-3)),
                    "--codec", args.codec,
                    "--codec-density", str(args.codec_density), "--outer", args.outer, "--server-lr", str(args.server_lr),
                    *([] if args.full_downloads else ["--compact-downloads"])], coord_log)
    procs = [coord]
    t0 = time.time()
    try:
        _wait_healthy(url, coord, coord_log)
        say(f"coordinator {url} · {args.workers} workers · {args.rounds} rounds of {args.preset} · codec {args.codec}"
            f"{f' {args.codec_density:g}' if args.codec == 'sparse' else ''} · outer {args.outer} (lr {args.server_lr:g}) · "
            f"downloads {'fp32' if args.full_downloads else 'bf16 + int8 patches'}")
        names = [f"worker-{k}" for k in range(args.workers)]
        if args.cheater != "none":
            names.append("cheater")
        for k, name in enumerate(names):
            cmd = ["worker", "--coordinator", url, "--data", str(public),
                   "--shard", str(k % args.workers), "--num-shards", str(args.workers),
                   "--client-id", name, "--cache", str(out / f"cache-{name}"), "--quiet", "--json-log",
                   "--wallet", str(out / "wallets" / f"{name}.json")]
            if name == "cheater":
                cmd += ["--attack", args.cheater]
                say(f"cheater: a worker that sends {args.cheater} updates")
            procs.append(_spawn(cmd, out / "logs" / f"{name}.log"))
        shown, last_progress = 0, time.time()
        say(f"{'round':>5} {'val loss':>9} {'accepted':>8} {'refused':>8} {'late':>5} {'down':>10} {'up':>10}"
            f"   (refused: failed Proof-of-Contribution; late: came after the round closed)")
        last_line = time.time()
        while True:
            status = httpx.get(f"{url}/v1/status", timeout=30).json()
            for h in status["history"][shown:]:
                if h["version"] > 0 or shown == 0:
                    say(_round_line(h))
                    last_line = time.time()
            if len(status["history"]) > shown:
                last_progress = time.time()
            shown = len(status["history"])
            if status["finished"] and status["settled_round"] >= status["round"] - 1:  # last round paid too
                break
            if time.time() - last_line > HEARTBEAT_S and not status["finished"]:
                left = max(0, status["deadline"] - time.time())
                say(f"      round {status['round']}: {status['accepted_in_round']} accepted, "
                    f"{status['pending_in_round']} being validated, closes with {args.workers} or in {left:.0f} s")
                last_line = time.time()
            if time.time() - last_progress > args.stall_seconds:
                raise CLIError(f"no round closed for {args.stall_seconds:.0f} s; see {out / 'logs'}")
            dead = [p for p in procs[1:] if p.poll() not in (None, 0)]
            if dead:
                raise CLIError(f"a worker failed; see {out / 'logs'}")
            time.sleep(0.5)
        for p in procs[1:]:
            p.wait(timeout=60)
        room = None
        if not args.no_room and args.workers >= 3:
            room = _room_step(url, out, say)
        balances = _balances(url, out / "wallets", names)
        verify = subprocess.run([sys.executable, "-m", "ailo.cli.main", "chain", "verify", "--coordinator", url],
                                capture_output=True, text=True, timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=30)
    history = status["history"]
    plot(history, out / "val_loss.png")
    summary = {"preset": args.preset, "workers": args.workers, "rounds": len(history) - 1, "codec": args.codec,
               "outer": args.outer, "compact_downloads": not args.full_downloads,
               "val_loss_start": history[0]["val_loss"], "val_loss_end": history[-1]["val_loss"],
               "val_loss": [h["val_loss"] for h in history],
               "bytes_down": sum(h["bytes_down"] for h in history), "bytes_up": sum(h["bytes_up"] for h in history),
               "seconds": round(time.time() - t0, 1), "plot": str(out / "val_loss.png"),
               "balances_alc": balances, "room": room, "chain_verify_ok": verify.returncode == 0,
               "chain_verify": verify.stdout.strip().splitlines()[-1] if verify.stdout.strip() else verify.stderr.strip()}
    if args.json:
        print(json.dumps(summary))
    else:
        say(f"validation loss {summary['val_loss_start']:.3f} → {summary['val_loss_end']:.3f} in "
            f"{summary['rounds']} rounds, {summary['seconds']} s; moved {_size(summary['bytes_down'])} down, "
            f"{_size(summary['bytes_up'])} up; plot: {summary['plot']}")
        say("balances (ALC): " + ", ".join(f"{n} {b:.8f}" for n, b in balances.items()))
        say(f"ailo chain verify: {summary['chain_verify']}")
    return 0 if summary["chain_verify_ok"] else 1


def _round_line(h: dict) -> str:
    reasons = h.get("refusals", {})
    late = sum(n for r, n in reasons.items() if r in LATE)
    cheats = ", ".join(f"{r} ×{n}" for r, n in sorted(reasons.items()) if r not in LATE)
    return (f"{h['version']:>5} {h['val_loss']:>9.4f} {h['updates']:>8} {h['refused'] - late:>8} {late:>5} "
            f"{_size(h['bytes_down']):>10} {_size(h['bytes_up']):>10}" + (f"   refused: {cheats}" if cheats else ""))


def _room_step(url: str, out: Path, say) -> dict:
    """The signed inference flow: the operator creates a 2-span room (token file), worker-0 and
    worker-1 serve it with `ailo node --wallet`, worker-2 asks with `ailo ask --wallet` and pays
    the room's price with a PAY_INFERENCE; each node earns 0.05 ALC."""
    import httpx

    from ailo.inference.checkpoints import make_hf_checkpoint

    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # no stray "Writing model shards" bar in the demo's output
    model = out / "room-model"
    make_hf_checkpoint(model, "llama", layers=2, hidden=64, vocab=512, init_std=0.3)
    token = (out / "coordinator" / "operator-token").read_text().strip()
    r = httpx.post(f"{url}/v1/rooms", json={"id": "demo", "slots": 2, "model": json.loads((model / "config.json").read_text())},
                   headers={"authorization": f"Bearer {token}"}, timeout=30)
    if r.status_code != 201:
        raise CLIError(f"room create: {r.text}")
    wallets = {n: out / "wallets" / f"{n}.json" for n in ("worker-0", "worker-1", "worker-2")}
    addr = {n: json.loads(p.read_text())["address"] for n, p in wallets.items()}
    before = {n: httpx.get(f"{url}/v1/balance/{a}", timeout=30).json()["spendable"] for n, a in addr.items()}
    nodes = [_spawn(["node", "--room", "demo", "--model-dir", str(model), "--coordinator", url, "--memory", "1GB",
                     "--wallet", str(wallets[n])], out / "logs" / f"node-{n}.log") for n in ("worker-0", "worker-1")]
    try:
        deadline = time.time() + 120
        while httpx.get(f"{url}/v1/rooms/demo", timeout=30).json()["state"] != "ready":
            if time.time() > deadline or any(p.poll() is not None for p in nodes):
                raise CLIError(f"the demo room did not become ready; see {out / 'logs'}")
            time.sleep(0.3)
        price = httpx.get(f"{url}/v1/rooms/demo", timeout=30).json()["price"]
        ask = subprocess.run([sys.executable, "-m", "ailo.cli.main", "ask", "--room", "demo", "--coordinator", url,
                              "--wallet", str(wallets["worker-2"]), "--ids", "1,2,3,4", "--max-tokens", "8", "-v"],
                             capture_output=True, text=True, timeout=120)
        if ask.returncode != 0:
            raise CLIError(f"ailo ask: {ask.stderr.strip()}")
    finally:
        for p in nodes:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)
    after = {n: httpx.get(f"{url}/v1/balance/{a}", timeout=30).json()["spendable"] for n, a in addr.items()}
    delta = {n: (after[n] - before[n]) / 1e8 for n in addr}
    say(f"inference room 'demo' (2 spans, price {price / 1e8:.2f} ALC + 0.01 fee): worker-0 and worker-1 serve it "
        f"with signed nodes, worker-2 asks and pays; balance changes: "
        + ", ".join(f"{n} {d:+.2f}" for n, d in delta.items()))
    return {"price_alc": price / 1e8, "tokens": ask.stdout.strip(), "balance_change_alc": delta}


def _balances(url: str, wallet_dir: Path, names: list[str]) -> dict[str, float]:
    import httpx  # here, not at the top: `ailo --help` stays light
    out = {}
    for name in names:
        address = json.loads((wallet_dir / f"{name}.json").read_text())["address"]
        out[name] = httpx.get(f"{url}/v1/balance/{address}", timeout=30).json()["spendable"] / 1e8
    return out
