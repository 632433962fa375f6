"""Rooms over the internet: tokens/s of real coordinator and node processes behind emulated links.

Shapes of the whitepaper's presets at tiny width (compute is negligible, so this measures the
network path): Qwen 1.8B × 4 nodes (24 layers), Llama-2 7B × 12 nodes (32 layers). One
coordinator process (`python -m ailo...devserver`, the rooms router of `ailo coordinator`) and
N `ailo node` processes; each listens behind its own link of `bench/linkemu.py`, so every link
(coordinator → node, node → node, node → coordinator) has the same round trip and bandwidth.
For each transport mode the same room is timed at 0 ms (loopback) and at --rtt-ms: one stream,
then --concurrency streams at once (aggregate tokens/s); every run's tokens are compared with
greedy decoding over all layers in this process. The 70B × 120 room is simulated from the
per-hop cost measured here (120 processes do not fit a 2-core box). Prints one JSON line.

    .venv/bin/python bench/wan_inference.py --preset llama-2-7b
    .venv/bin/python bench/wan_inference.py --preset qwen-1.8b
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from linkemu import LinkEmulator  # noqa: E402

from ailo.inference.auth import sign_request  # noqa: E402
from ailo.inference.units import RequestCache  # noqa: E402
from ailo.inference.checkpoints import make_hf_checkpoint  # noqa: E402
from ailo.inference.loader import load_span  # noqa: E402
from ailo.inference.plan import LLAMA_2_70B, GiB, fewest_spans  # noqa: E402
from ailo.inference.rooms import RoomRegistry  # noqa: E402
from ailo.wallet import Wallet  # noqa: E402

AILO = [sys.executable, "-m", "ailo.cli.main"]
SHAPES = {"qwen-1.8b": dict(layers=24, nodes=4, vocab=32000), "llama-2-7b": dict(layers=32, nodes=12, vocab=32000),
          "llama-2-70b": dict(layers=80, nodes=120, vocab=32000)}
ASKERS = itertools.count()  # one wallet per request: the per-wallet rate limit is not what is measured
# transport modes, as generate-request fields (see GenerateBody)
MODES = {"relay": {"transport": "relay", "draft_tokens": 0},
         "push": {"transport": "auto", "draft_tokens": 0},
         "push+draft": {"transport": "auto", "draft_tokens": 4},
         "push+draft8": {"transport": "auto", "draft_tokens": 8}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_generate(model, prompt: list[int], n: int) -> list[int]:
    cache, out, x, pos = RequestCache(), [], torch.tensor([prompt]), 0
    for _ in range(n):
        logits = model(x, pos, cache)
        pos += x.shape[1]
        out.append(int(torch.argmax(logits[0])))
        x = torch.tensor([[out[-1]]])
    return out


def ask(url: str, prompt: list[int], n: int, extra: dict) -> tuple[list[int], float, dict]:
    body = json.dumps({"input_ids": prompt, "max_new_tokens": n, "stop_at_eos": False, "stream": False,
                       **extra}).encode()
    headers = {"content-type": "application/json", **sign_request(Wallet.from_label(f"wan-asker-{next(ASKERS)}"), "POST", "/v1/rooms/wan/generate", body)}
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/rooms/wan/generate", content=body, headers=headers, timeout=600)
    dt = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"generate: HTTP {r.status_code}: {r.text[:500]}")
    done = r.json()
    return done["tokens"], dt, done


def start_coordinator(d: Path, port: int) -> tuple[subprocess.Popen, str]:
    mod = "ailo.server.devserver" if (ROOT / "ailo/server/devserver.py").exists() else "ailo.inference.devserver"
    log = open(d / "coordinator.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", mod, "--port", str(port), "--heartbeat-timeout", "30"],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = (d / "coordinator.log").read_text()
        if "operator token:" in text:
            return proc, text.split("operator token:")[1].split()[0]
        if proc.poll() is not None:
            raise SystemExit(f"coordinator died:\n{text}")
        time.sleep(0.2)
    raise SystemExit("coordinator did not start")


def batching(node_urls: list[str]) -> tuple[int, int]:
    """(forwards, frames) the nodes' push workers ran so far (GET /v1/node/info, direct)."""
    forwards = frames = 0
    for u in node_urls:
        push = httpx.get(f"{u}/v1/node/info").json().get("push") or {}
        forwards, frames = forwards + push.get("forwards", 0), frames + push.get("frames", 0)
    return forwards, frames


def measure(url: str, prompt: list[int], n: int, extra: dict, concurrency: int, want: list[int],
            node_urls: list[str] = ()) -> dict:
    toks, dt, done = ask(url, prompt, n, extra)
    passes = max(done.get("stats", {}).get("passes", n), 1)
    single = {"tokens_per_s": round(n / dt, 2), "ms_per_token": round(1000 * dt / n, 1), "match": toks == want,
              "ms_per_pass": round(1000 * dt / passes, 1),
              "stats": done.get("stats", {})}
    prompts = [prompt[i:] + prompt[:i] for i in range(concurrency)]  # distinct requests
    before = batching(node_urls)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: ask(url, p, n, extra), prompts))
    wall = time.perf_counter() - t0
    after = batching(node_urls)
    single["aggregate_tokens_per_s"] = round(concurrency * n / wall, 2)
    if after[0] > before[0]:  # pushed modes: frames per node forward while the requests ran together
        single["concurrent_frames_per_forward"] = round((after[1] - before[1]) / (after[0] - before[0]), 2)
    single["concurrent_match_first"] = results[0][0] == want
    single["concurrent_acceptance"] = [r[2]["stats"].get("acceptance") for r in results]
    return single


def simulate(out: dict, args, shape: dict) -> dict:
    """Llama-2 70B over 120 nodes at the same link, from this run's measured pushed pipeline:
    a pass costs (hops + 1) × the per-hop time measured here (one-way delay, HTTP, signing,
    checks, compute at tiny width), plus each hop's serialisation of a real-width frame
    (8192 × 2 bytes a position at --mbit) that the tiny-width run did not carry; tokens per
    pass as measured with drafts. Compute at real width is NOT included (a 70B layer on a
    consumer GPU adds ~1-3 ms per hop)."""
    spans = out["spans"]
    push, draft = out["push"]["wan"], out["push+draft"]["wan"]
    per_hop_ms = push["ms_per_pass"] / (spans + 1)
    tokens_per_pass = args.new_tokens / max(draft["stats"]["passes"], 1)
    rows = 1 + draft["stats"]["drafted"] / max(draft["stats"]["passes"], 1)
    wire_ms = lambda hidden, r: hidden * 2 * r * 8 / (args.mbit * 1e6) * 1000 if args.mbit else 0.0  # noqa: E731
    res = {"basis": "simulated from this run's per-hop cost", "per_hop_ms": round(per_hop_ms, 2),
           "tokens_per_pass": round(tokens_per_pass, 2)}
    for name, gib in (("spread", None), ("fewest_2gib", 2), ("fewest_8gib", 8)):  # placement at that memory
        spans70 = 120 if gib is None else len(fewest_spans(LLAMA_2_70B, [gib * GiB] * 120)[0].spans)
        hops = spans70 + 1
        res[name] = {"spans": spans70,
                     "tokens_per_s": round(1000 / (hops * (per_hop_ms + wire_ms(8192, 1))), 2),
                     "tokens_per_s_with_drafts": round(1000 * tokens_per_pass / (hops * (per_hop_ms + wire_ms(8192, rows))), 2)}
    res["llama_2_7b_real_width_tokens_per_s_with_drafts"] = round(
        1000 * tokens_per_pass / ((spans + 1) * (per_hop_ms + wire_ms(4096, rows))), 2)
    res["routing_by_latency"] = simulate_routing(max(per_hop_ms - args.rtt_ms / 2, 0.0), tokens_per_pass,
                                                 wire_ms(8192, rows))
    return res


def simulate_routing(cpu_ms: float, tokens_per_pass: float, wire: float, sites: int = 3,
                     near_ms: float = 10.0, far_ms: float = 80.0) -> dict:
    """The 70B room (120 nodes of 8 GiB, placement fewest: 18 spans, 102 replicas) spread over
    `sites` sites (MODELED round trips: near_ms within a site, far_ms between; the coordinator at
    site 0), routed by the real `RoomRegistry.route` before and after the nodes report the round
    trips they time (`peer_ms`); a hop costs its one-way delay + this run's measured per-hop CPU
    cost + a real-width frame's serialisation."""
    spec = LLAMA_2_70B
    reg = RoomRegistry(clock=lambda: 0.0)
    reg.create_room("sim", spec, 120, placement="fewest")
    site, rng = {}, random.Random(0)  # each node at a random site, the same draw every run
    for i in range(120):
        rec = reg.join("sim", url=f"http://10.0.0.{i}:8000", memory=8 * GiB, fingerprint=spec.fingerprint())
        site[rec.node_id] = rng.randrange(sites)
    room = reg.get("sim")
    for n in room.nodes.values():
        s = room.span_of(n)
        reg.heartbeat("sim", n.node_id, (s.start, s.end))
    rtt = lambda a, b: near_ms if a == b else far_ms  # noqa: E731

    def pass_ms() -> float:
        total = []
        for _ in range(30):
            route = reg.route("sim")
            legs = [rtt(0, site[route[0].node_id])] + [rtt(site[a.node_id], site[b.node_id])
                                                      for a, b in zip(route, route[1:])] + [rtt(site[route[-1].node_id], 0)]
            total.append(sum(r / 2 + cpu_ms + wire for r in legs))
        return sum(total) / len(total)

    turns = pass_ms()
    for n in list(room.nodes.values()):
        peers = {p["node_id"]: rtt(site[n.node_id], site[p["node_id"]]) for p in reg.peers("sim", n.node_id)}
        s = room.span_of(n)
        reg.heartbeat("sim", n.node_id, (s.start, s.end), peer_ms=peers)
        reg.observe_coordinator(n, rtt(0, site[n.node_id]))  # what its route posts would have timed
    measured = pass_ms()
    return {"basis": f"modeled sites ({sites}; {near_ms:g} / {far_ms:g} ms round trips), real router, "
                     "measured per-hop CPU", "spans": len(room.plan.spans),
            "ms_per_pass_by_turns": round(turns, 1), "ms_per_pass_by_latency": round(measured, 1),
            "tokens_per_s_by_turns": round(1000 * tokens_per_pass / turns, 2),
            "tokens_per_s_by_latency": round(1000 * tokens_per_pass / measured, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-2-7b", choices=["qwen-1.8b", "llama-2-7b"])
    ap.add_argument("--nodes", type=int)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--rtt-ms", type=float, default=40.0)
    ap.add_argument("--mbit", type=float, default=50.0)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--modes", default="relay,push,push+draft")
    args = ap.parse_args()
    shape = SHAPES[args.preset]
    nodes = args.nodes or shape["nodes"]

    tmp = tempfile.TemporaryDirectory(prefix="ailo-bench-wan-")
    d = Path(tmp.name)
    make_hf_checkpoint(d, "llama", vocab=shape["vocab"], hidden=args.hidden, layers=shape["layers"], heads=4,
                       kv_heads=4, intermediate=2 * args.hidden, init_std=0.05)
    prompt = torch.randint(0, shape["vocab"], (args.prompt_tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    emu = LinkEmulator().start()
    cport = free_port()
    coord, token = start_coordinator(d, cport)
    direct = f"http://127.0.0.1:{cport}"
    coord_link = emu.proxy("127.0.0.1", cport)  # what nodes call (results, heartbeats)
    procs: list[subprocess.Popen] = []
    node_urls: list[str] = []  # direct (not through the emulator): the bench's own reads
    try:
        httpx.post(f"{direct}/v1/rooms", json={"id": "wan", "slots": nodes,
                                               "model": json.loads((d / "config.json").read_text())},
                   headers={"authorization": f"Bearer {token}"}).raise_for_status()
        logs = open(d / "nodes.log", "w")
        for i in range(nodes):
            port = free_port()
            node_urls.append(f"http://127.0.0.1:{port}")
            key = Wallet.from_label(f"wan-node-{i}").save(d / f"node-{i}.json")
            procs.append(subprocess.Popen(
                [*AILO, "node", "--room", "wan", "--model-dir", str(d), "--coordinator", coord_link, "--port", str(port),
                 "--advertise-url", emu.proxy("127.0.0.1", port), "--memory", "1GB", "--wallet", str(key)],
                cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
                stdout=logs, stderr=subprocess.STDOUT))
            time.sleep(0.3)  # join order = span order
        deadline = time.monotonic() + 600
        while httpx.get(f"{direct}/v1/rooms/wan").json()["state"] != "ready":
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit(f"room did not become ready:\n{(d / 'nodes.log').read_text()[-3000:]}")
            time.sleep(0.5)
        room = httpx.get(f"{direct}/v1/rooms/wan").json()
        want = local_generate(load_span(d, 0, 2 * shape["layers"]).model, prompt, args.new_tokens)
        out: dict = {"bench": "wan_inference", "preset": args.preset, "layers": shape["layers"], "nodes": nodes,
                     "spans": len(room["plan"]["spans"]), "hidden": args.hidden, "rtt_ms": args.rtt_ms,
                     "mbit_s": args.mbit, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                     "concurrency": args.concurrency}
        for mode in args.modes.split(","):
            extra = MODES[mode]
            res = {}
            for label, one_way in (("loopback", 0.0), ("wan", args.rtt_ms / 2000)):
                emu.set(one_way, args.mbit if one_way else 0.0)
                ask(direct, prompt, 4, extra)  # warm connections at this setting
                res[label] = measure(direct, prompt, args.new_tokens, extra, args.concurrency, want, node_urls)
            out[mode] = res
        if "push" in out and "push+draft" in out:
            out["simulated_70b_120_nodes"] = simulate(out, args, shape)
        view = httpx.get(f"{direct}/v1/rooms/wan").json()["nodes"]  # what the nodes timed to their successors
        out["peer_ms_median"] = sorted(ms for n in view for ms in n["peer_ms"].values())[
            len([ms for n in view for ms in n["peer_ms"].values()]) // 2] if any(n["peer_ms"] for n in view) else None
        out.update({"cpus": os.cpu_count(), "machine": platform.machine(), "load_avg_1m": round(os.getloadavg()[0], 2)})
        print(json.dumps(out))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        coord.terminate()
        coord.wait(timeout=15)
        emu.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
