"""What `ailo api` adds per token, against `ailo ask`'s own path, on the same room (issue 31).

A real `ailo coordinator` (ledger: every request pays its PAY_INFERENCE) and `ailo node`
processes serve an `ailo` GPT room on loopback. In this process, alternately:
- direct: `RoomRequester.open`, the code `ailo ask` runs, reading the room's NDJSON events;
- relay: `ailo api`'s app (uvicorn on a thread) streaming /v1/completions as Server-Sent Events
  to an httpx client, the requester inside it timestamping each room event as it arrives.
Added latency per token = when the client got a token's SSE chunk − when the relay got the
same token's event from the coordinator (one clock, one process: no pairing across runs).
Speculative decoding delivers tokens in bursts (several events in one read); `*_burst_first`
counts only tokens that arrived alone or first of their burst, i.e. without the wait behind
earlier tokens of the same burst.
The per-token intervals of both paths are reported too. Prints one JSON line.

    .venv/bin/python bench/api_relay.py              # ailo-small, 4 x 2 requests of 200 tokens
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common import ROOT, ailo, free_port, stop_all, wait_healthy  # noqa: E402  (puts this tree on sys.path)
from ailo.api.app import build_api_app  # noqa: E402
from ailo.inference.loader import save_ailo_checkpoint  # noqa: E402
from ailo.inference.requester import Answer, RoomRequester  # noqa: E402
from ailo.inference.serving import ThreadedServer  # noqa: E402
from ailo.ledger.params import UNIT  # noqa: E402
from ailo.ledger.service import LedgerService  # noqa: E402
from ailo.ledger.tx import register_tx  # noqa: E402
from ailo.model import build_model  # noqa: E402
from ailo.server.services import coordinator_wallet  # noqa: E402
from ailo.storage.ledger_store import SQLiteLedgerStore  # noqa: E402
from ailo.wallet import Wallet  # noqa: E402

AILO = [sys.executable, "-m", "ailo.cli.main"]
PROMPT = "Now is the winter of our discontent"


class Timed(RoomRequester):
    """The relay's requester, noting when each room event line arrives (perf_counter)."""

    arrivals: list[tuple[float, dict]]

    def open(self, room, body, view=None):
        parent = super().open(room, body, view)
        self.arrivals = []

        class Wrapped:
            def __enter__(inner):
                answer = parent.__enter__()

                def lines():
                    for line in answer.lines:
                        if line:
                            self.arrivals.append((time.perf_counter(), json.loads(line)))
                        yield line
                return Answer(answer.price, answer.request_id, lines())

            def __exit__(inner, *exc):
                return parent.__exit__(*exc)
        return Wrapped()


def direct(requester: RoomRequester, room: str, n: int) -> list[float]:
    """`ailo ask`'s path: arrival times of the token events that carry text."""
    times = []
    with requester.open(room, {"prompt": PROMPT, "max_new_tokens": n, "temperature": 0.0}) as answer:
        for event in answer.events():
            if event["type"] == "token" and event.get("text"):
                times.append(time.perf_counter())
    return times


def relay(api: str, client: httpx.Client, room: str, n: int) -> list[float]:
    times = []
    body = {"model": room, "prompt": PROMPT, "max_tokens": n, "temperature": 0, "stream": True}
    with client.stream("POST", f"{api}/v1/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["text"]:
                    times.append(time.perf_counter())
    return times


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="ailo-small")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="api-relay-"))
    state, ckpt = base / "state", base / "ckpt"
    save_ailo_checkpoint(build_model(args.preset, seed=0).eval(), ckpt)
    asker = Wallet.from_label("bench-api-asker")
    nodes = [Wallet.from_label(f"bench-api-node{i}") for i in range(args.nodes)]
    state.mkdir()
    ledger = LedgerService(SQLiteLedgerStore(state / "ledger.db"), coordinator_wallet(state))
    for i, w in enumerate([asker, *nodes]):
        ledger.register(register_tx(w, f"bench_api_{i}", ledger.clock()).to_json())
    for k in range(3):
        ledger.mint_training(asker.address, UNIT, f"update:bench-api-{k}")
    ledger.store.close()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs = [ailo("coordinator", "--state", str(state), "--port", str(port), "--room-requests-per-minute", "6000",
                  log=base / "coordinator.log", home=None)]
    try:
        http = httpx.Client(base_url=url, timeout=30)
        wait_healthy(url, procs[0], timeout=120, log=base / "coordinator.log")
        deadline = time.monotonic() + 120
        out = subprocess.run([*AILO, "room", "create", "--room", "bench", "--slots", str(args.nodes), "--model-dir",
                              str(ckpt), "--coordinator", url, "--operator-token-file", str(state / "operator-token")],
                             cwd=ROOT, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        for i, w in enumerate(nodes):
            key = w.save(base / f"node{i}.json")
            procs.append(ailo("node", "--room", "bench", "--model-dir", str(ckpt), "--coordinator", url,
                              "--memory", "1GB", "--wallet", str(key), log=base / f"node{i}.log", home=None))
        while http.get("/v1/rooms/bench").json()["state"] != "ready":
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline + 120:
                raise SystemExit("room not ready: " + "".join(p.read_text() for p in base.glob("*.log")))
            time.sleep(0.2)
        ask = RoomRequester(url, asker)
        timed = Timed(url, asker)
        server = ThreadedServer(build_api_app(timed)).start()
        client = httpx.Client(timeout=httpx.Timeout(30, read=120))
        first_of_burst: list[float] = []  # tokens that arrived alone or first of a speculative burst
        added, direct_gaps, relay_gaps, direct_s, relay_s, tokens, direct_tokens = [], [], [], 0.0, 0.0, 0, 0
        relay(server.url, client, "bench", 4), direct(ask, "bench", 4)  # warm: connections, tokenizer
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            d = direct(ask, "bench", args.tokens)
            direct_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            r = relay(server.url, client, "bench", args.tokens)
            relay_s += time.perf_counter() - t0
            upstream = [t for t, e in timed.arrivals if e["type"] == "token" and e.get("text")]
            assert len(upstream) == len(r), (len(upstream), len(r))
            added += [(c - u) * 1000 for u, c in zip(upstream, r)]
            first_of_burst += [(c - u) * 1000 for k, (u, c) in enumerate(zip(upstream, r))
                               if k == 0 or u - upstream[k - 1] > 0.002]
            direct_gaps += [(b - a) * 1000 for a, b in zip(d, d[1:])]
            relay_gaps += [(b - a) * 1000 for a, b in zip(r, r[1:])]
            tokens, direct_tokens = tokens + len(r), direct_tokens + len(d)
        server.stop()
        print(json.dumps({
            "bench": "api_relay", "preset": args.preset, "nodes": args.nodes, "requests_each": args.repeats,
            "tokens_per_request": args.tokens, "tokens_measured": tokens,
            "added_ms_p50": round(statistics.median(added), 3), "added_ms_p90": round(pct(added, 0.9), 3),
            "added_ms_p99": round(pct(added, 0.99), 3), "added_ms_max": round(max(added), 3),
            "burst_first_tokens": len(first_of_burst), "added_ms_p50_burst_first": round(statistics.median(first_of_burst), 3),
            "added_ms_p90_burst_first": round(pct(first_of_burst, 0.9), 3),
            "interval_ms_p50_ask": round(statistics.median(direct_gaps), 3),
            "interval_ms_p50_api": round(statistics.median(relay_gaps), 3),
            "tok_s_ask": round(direct_tokens / direct_s, 1), "tok_s_api": round(tokens / relay_s, 1),
            "goal_ms_p50": 5.0, "ok": statistics.median(added) <= 5.0,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}))
    finally:
        stop_all(reversed(procs), grace=10)


if __name__ == "__main__":
    main()
