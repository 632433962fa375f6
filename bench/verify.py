"""Spot-check detection and false positives (issue 10, part 3). Prints one JSON line.

A 3-span Llama room of in-process nodes (real HTTP on loopback) with a small-init checkpoint
(std 0.02: a skipped half-layer changes the hidden state least). For each attack (zeros, noise,
skip the span's last unit) one bfloat16 node cheats on every hop; requests of --new-tokens tokens are
sent with audit probability --p (per span per request) until the first mismatch verdict,
--trials times. Reported: requests until detection — mean, 99th percentile, max — against the
bound N = ceil(ln 0.01 / ln(1 - p)) requests, and how many audits of the cheater missed. Then honest float16 / bfloat16 nodes are checked on every
hop (p = 1) against the float32 reference: flags must be 0; the largest distance is reported
next to its tolerance.

    .venv/bin/python bench/verify.py [--p 0.05 --trials 100 --new-tokens 8]
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ailo.inference.checkpoints import make_hf_checkpoint  # noqa: E402
from ailo.inference.generate import GenerateParams, Generation  # noqa: E402
from ailo.inference.node import NodeService  # noqa: E402
from ailo.server.node_app import build_node_app  # noqa: E402
from ailo.inference.rooms import RoomRegistry  # noqa: E402
from ailo.inference.serving import ThreadedServer  # noqa: E402
from ailo.inference.families import read_spec  # noqa: E402
from ailo.inference.verify import DEFAULT_P, RTOL, ReferenceSpans, SpotChecker, requests_for_detection  # noqa: E402
from ailo.wallet import Wallet  # noqa: E402

PROMPT = [3, 14, 15, 92, 65, 35]


def room(ckpt: Path, dtypes: list[str], attack_on: int | None, attack: str | None):
    reg = RoomRegistry(clock=lambda: 0.0)
    reg.create_room("r", read_spec(ckpt), len(dtypes))
    servers, recs, services = [], [], []
    for i, dt in enumerate(dtypes):
        svc = NodeService(ckpt, dtype=dt, attack=attack if i == attack_on else None)
        srv = ThreadedServer(build_node_app(svc)).start()
        rec = reg.join("r", url=srv.url, memory=10 ** 9, fingerprint=svc.spec.fingerprint(),
                       address=Wallet.from_label(f"bench-verify-{i}").address)
        servers.append(srv)
        recs.append(rec)
        services.append(svc)
    for svc, rec in zip(services, recs):  # the plan exists once every slot is filled
        span = reg.get("r").span_of(rec)
        svc.load(span.start, span.end)
        reg.heartbeat("r", rec.node_id, (span.start, span.end))
    return reg, servers, recs


def ask(reg, checker, n: int) -> dict:
    gen = Generation(reg, "r", PROMPT, GenerateParams(max_new_tokens=n, stop_at_eos=False), checker=checker)
    return list(gen.events())[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--p", type=float, default=DEFAULT_P)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--honest-requests", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ckpt = Path(tempfile.mkdtemp(prefix="ailo-bench-verify-"))
    make_hf_checkpoint(ckpt, "llama", layers=3, init_std=0.02)
    ref = ReferenceSpans(ckpt)
    bound_requests = requests_for_detection(args.p)
    out: dict = {"bench": "verify", "p": args.p, "new_tokens": args.new_tokens, "trials": args.trials,
                 "bound_requests_99": bound_requests, "attacks": {}}
    t0 = time.perf_counter()
    for attack in ("zeros", "noise", "skip"):
        # the cheater runs bfloat16, the loosest tolerance (5e-2): the hardest case for detection
        reg, servers, recs = room(ckpt, ["float32", "bfloat16", "float32"], 1, attack)
        cheat = recs[1].node_id
        # strikes never evict here: each trial measures time-to-first-detection from scratch
        checker = SpotChecker(reg, p=args.p, references=lambda r: ref, strikes_to_evict=10 ** 9)
        requests_needed, distances, checks_on_cheater, missed = [], [], 0, 0
        for _ in range(args.trials):
            k = 0
            while True:
                k += 1
                done = ask(reg, checker, args.new_tokens)
                mine = [c for c in done["checks"] if c["node_id"] == cheat]
                checks_on_cheater += len(mine)
                missed += sum(c["status"] != "mismatch" for c in mine)
                distances += [c["distance"] for c in mine if c["distance"] not in (None, "inf")]
                if any(c["status"] == "mismatch" for c in mine):
                    break
            requests_needed.append(k)
        for s in servers:
            s.stop()
        requests_needed.sort()
        out["attacks"][attack] = {
            "requests_to_detection_mean": round(sum(requests_needed) / len(requests_needed), 2),
            "requests_to_detection_p99": requests_needed[min(len(requests_needed) - 1,
                                                             math.ceil(0.99 * len(requests_needed)) - 1)],
            "requests_to_detection_max": requests_needed[-1],
            "caught_within_bound": sum(k <= bound_requests for k in requests_needed) / len(requests_needed),
            "checks_of_cheater": checks_on_cheater, "checks_that_missed": missed,
            "min_distance": round(min(distances), 4) if distances else None,
            "tolerance": RTOL[torch.bfloat16]}
    reg, servers, recs = room(ckpt, ["float16", "bfloat16", "float16"], None, None)
    checker = SpotChecker(reg, p=1.0, references=lambda r: ref)
    flags, worst, n_checks = 0, {"float16": 0.0, "bfloat16": 0.0}, 0
    dtype_of = {r.node_id: dt for r, dt in zip(recs, ["float16", "bfloat16", "float16"])}
    for _ in range(args.honest_requests):
        for c in ask(reg, checker, args.new_tokens)["checks"]:
            n_checks += 1
            flags += c["status"] != "ok"
            worst[dtype_of[c["node_id"]]] = max(worst[dtype_of[c["node_id"]]], c["distance"])
    for s in servers:
        s.stop()
    out["honest_other_dtypes"] = {"checks": n_checks, "flagged": flags,
                                  "max_distance": {k: round(v, 5) for k, v in worst.items()},
                                  "tolerance": {"float16": RTOL[torch.float16], "bfloat16": RTOL[torch.bfloat16]}}
    out.update(seconds=round(time.perf_counter() - t0, 1), cpus=__import__("os").cpu_count(),
               machine=platform.machine())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
