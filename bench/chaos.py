"""Chaos run (issue 17): a real coordinator process SIGKILLed at random moments and at named
crash points (inside a round close, between publishing a version and paying it, half-way
through paying a round), restarted on the same state each time, with two `ailo worker`
processes, an `ailo node` serving an inference room, a stream of signed transfers and of
signed generation requests. Prints one JSON line: kills, rounds closed (after the first
kill), client exits, invariant failures (chain verifies, one mint per accepted update,
consecutive versions, hash-correct chunk/update files, supply = minted − burned, every
acknowledged transfer and completed request paid exactly once, no temporary files left).

    .venv/bin/python bench/chaos.py                 # 10 kills: 3 crash points + 7 random
    .venv/bin/python bench/chaos.py --random-kills 20 --rounds-after 10
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("AILO_HOME", str(ROOT))
from tests.chaos_harness import Chaos, ChaosConfig  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--random-kills", type=int, default=7)
    p.add_argument("--crash-points", default="close_aggregate,after_publish,mid_settle")
    p.add_argument("--rounds-after", type=int, default=5, help="run until this many rounds closed after kill 1")
    p.add_argument("--gap", type=float, nargs=2, default=(4.0, 15.0), help="seconds between random kills")
    p.add_argument("--timeout", type=float, default=1200.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs, state)")
    args = p.parse_args()
    cfg = ChaosConfig(random_kills=args.random_kills, crash_points=tuple(filter(None, args.crash_points.split(","))),
                      rounds_after_first_kill=args.rounds_after, gap=tuple(args.gap), timeout=args.timeout,
                      seed=args.seed)
    base = Path(tempfile.mkdtemp(prefix="ailo-chaos-"))
    chaos = Chaos(base, cfg)
    try:
        result = chaos.run()
    finally:
        chaos.close()
    out = {"bench": "chaos", **result.summary(), "target": {"kills": 10, "client_exits": 0,
                                                           "rounds_closed_after_first_kill": 5,
                                                           "invariant_failures": 0},
           "machine": f"{platform.machine()} {os.cpu_count()} cores", "load": os.getloadavg()[0],
           "dir": str(base) if args.keep else None, "date": time.strftime("%Y-%m-%d")}
    if not args.keep:
        import shutil
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out))
    return 0 if not result.invariant_failures and result.client_exits == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
