"""Distributed-inference throughput: a room of 4 local node processes against one process.

Same random Llama checkpoint, prompt and greedy decoding on both sides. The single-process
baseline runs the very same span code over all layers with its KV cache, so the ratio
measures what distribution costs (HTTP hops, frame encoding, coordinator work), not a
difference in kernels. Runs alternate (best of --repeats) so drift on a shared machine hits
both. Spot checks are on (ailo.inference.verify, default p = 5 %, the coordinator-side
float32 reference as referee since the room has no replicas); the same room is also timed
through a second coordinator front-end with p = 0, giving the verification overhead.
Prints one JSON line.

    .venv/bin/python bench/inference.py        # Llama, hidden 2048, 8 layers, 492 M parameters
    .venv/bin/python bench/inference.py --hidden 1536 --heads 12 --intermediate 4096
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import httpx
import torch

from common import ailo, stop_all  # noqa: E402  (puts this tree on sys.path)
from ailo.server import devserver  # noqa: E402
from ailo.inference.auth import sign_request  # noqa: E402
from ailo.inference.units import RequestCache  # noqa: E402
from ailo.inference.checkpoints import make_hf_checkpoint  # noqa: E402
from ailo.inference.loader import load_span  # noqa: E402
from ailo.inference.rooms import RoomRegistry  # noqa: E402
from ailo.inference.families import param_count, read_spec  # noqa: E402
from ailo.inference.verify import DEFAULT_P, ReferenceSpans  # noqa: E402
from ailo.wallet import Wallet  # noqa: E402


def local_generate(model, prompt: list[int], n: int) -> tuple[list[int], float]:
    """Greedy decoding in this process with the span code over all units; (tokens, seconds)."""
    cache, out = RequestCache(), []
    t0 = time.perf_counter()
    x, pos = torch.tensor([prompt]), 0
    for _ in range(n):
        logits = model(x, pos, cache)
        pos += x.shape[1]
        out.append(int(torch.argmax(logits[0])))
        x = torch.tensor([[out[-1]]])
    return out, time.perf_counter() - t0


ASKER = Wallet.from_label("bench-asker")


def room_generate(http: httpx.Client, prompt: list[int], n: int) -> tuple[list[int], float, dict]:
    """One request through the room (spot checks per the front-end `http` talks to)."""
    t0 = time.perf_counter()
    body = json.dumps({"input_ids": prompt, "max_new_tokens": n, "stop_at_eos": False, "stream": False}).encode()
    headers = {"content-type": "application/json", **sign_request(ASKER, "POST", "/v1/rooms/bench/generate", body)}
    r = http.post("/v1/rooms/bench/generate", content=body, headers=headers)
    dt = time.perf_counter() - t0
    r.raise_for_status()
    done = r.json()
    return done["tokens"], dt, done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--verify-p", type=float, default=DEFAULT_P, help="spot-check probability per hop")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="ailo-bench-inference-")
    d = Path(tmp.name)
    ref = make_hf_checkpoint(d, "llama", vocab=args.vocab, hidden=args.hidden, layers=args.layers, heads=args.heads,
                             kv_heads=args.kv_heads, intermediate=args.intermediate, init_std=0.05)
    del ref
    spec = read_spec(d)
    prompt = torch.randint(0, args.vocab, (args.prompt_tokens,), generator=torch.Generator().manual_seed(0)).tolist()

    registry = RoomRegistry(heartbeat_interval=1.0, heartbeat_timeout=10.0)
    reference = ReferenceSpans(d)
    server = devserver.serve(registry, verify_p=args.verify_p, references=lambda room: reference)
    plain = devserver.serve(registry, verify_p=0.0)  # same room and nodes, no spot checks
    http = httpx.Client(base_url=server.url, timeout=300)
    http0 = httpx.Client(base_url=plain.url, timeout=300)
    http.post("/v1/rooms", json={"id": "bench", "slots": args.nodes,
                                 "model": json.loads((d / "config.json").read_text())},
              headers={"authorization": f"Bearer {server.operator_token}"}).raise_for_status()
    keys = [Wallet.from_label(f"bench-node-{i}").save(d / f"node-{i}.json") for i in range(args.nodes)]
    procs = [ailo("node", "--room", "bench", "--model-dir", str(d), "--coordinator", server.url, "--memory", "4GB",
                  "--wallet", str(keys[i]), log=d / "nodes.log", threads=None, home=None) for i in range(args.nodes)]
    try:
        model = load_span(d, 0, spec.n_units).model
        deadline = time.monotonic() + 300
        while http.get("/v1/rooms/bench").json()["state"] != "ready":
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit(f"room did not become ready:\n{(d / 'nodes.log').read_text()}")
            time.sleep(0.2)
        local_generate(model, prompt, args.new_tokens)  # warm up both paths (and fault weights in)
        room_generate(http0, prompt, args.new_tokens)
        for span in http.get("/v1/rooms/bench").json()["plan"]["spans"]:  # the referee loads its spans once
            reference.run((span["start"], span["end"]), torch.tensor([prompt]) if span["start"] == 0 else
                          torch.zeros(1, 1, args.hidden))
        load_before = os.getloadavg()[0]
        local_s, room_s, plain_s, compute_s, match, checks = [], [], [], [], True, []
        for _ in range(args.repeats):
            a, t_local = local_generate(model, prompt, args.new_tokens)
            b, t_room, done = room_generate(http, prompt, args.new_tokens)
            c, t_plain, _ = room_generate(http0, prompt, args.new_tokens)
            local_s.append(t_local)
            room_s.append(t_room)
            plain_s.append(t_plain)
            compute_s.append(done["stats"]["node_compute_ms"] / 1000)
            checks += done["checks"]
            match = match and a == b == c
        best = min(range(args.repeats), key=room_s.__getitem__)
        local_tps, room_tps = args.new_tokens / min(local_s), args.new_tokens / min(room_s)
        pair_ratios = sorted(t_l / t_r for t_l, t_r in zip(local_s, room_s))
        stats = done["stats"]
        print(json.dumps({
            "bench": "inference", "model": {"family": "llama", "hidden": args.hidden, "layers": args.layers,
                                            "heads": args.heads, "kv_heads": args.kv_heads,
                                            "intermediate": args.intermediate, "vocab": args.vocab,
                                            "parameters": param_count(spec), "dtype": spec.dtype},
            "nodes": args.nodes, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
            "spans": [s["label"] for s in http.get("/v1/rooms/bench").json()["plan"]["spans"]],
            "local_tokens_per_s": round(local_tps, 2), "room_tokens_per_s": round(room_tps, 2),
            "ratio": round(room_tps / local_tps, 3),
            "ratio_median_of_pairs": round(pair_ratios[len(pair_ratios) // 2], 3), "tokens_match": match,
            "verify_p": args.verify_p, "room_tokens_per_s_unverified": round(args.new_tokens / min(plain_s), 2),
            "ratio_unverified": round(args.new_tokens / min(plain_s) / local_tps, 3),
            "verification_overhead": round(1 - min(plain_s) / min(room_s), 3),
            "checks_run": len(checks), "checks_flagged": sum(c["status"] != "ok" for c in checks),
            "max_check_distance": max((c["distance"] for c in checks if isinstance(c["distance"], float)), default=None),
            "room_ms_per_token": round(1000 * room_s[best] / args.new_tokens, 2),
            "node_compute_ms_per_token": round(1000 * compute_s[best] / args.new_tokens, 2),
            "local_ms_per_token": round(1000 * min(local_s) / args.new_tokens, 2),
            "bytes_per_token": round(stats["bytes_per_token"]), "prefill_bytes": stats["prefill_bytes"],
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }))
    finally:
        stop_all(procs, grace=15)
        http.close()
        http0.close()
        server.stop()
        plain.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
