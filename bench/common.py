"""What the benches share: this tree on sys.path, the process helpers (ailo/testing/procs.py) and
the one JSON result a bench prints (and writes to --out or $OUT for the GPU machine's files).

    from common import ROOT, add_out, ailo, emit, free_port, stop_all   # bench/ is sys.path[0]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ailo.testing.procs import ailo, check_alive, free_port, stop, stop_all, wait_healthy  # noqa: E402,F401


def add_out(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", default=None, help="also write the JSON here: a .json file, or a folder "
                    "(as <bench>.json; default: $OUT if set)")


def out_dir(args: argparse.Namespace) -> Path | None:
    """The folder of --out (or $OUT, the GPU machine's folder that comes back), created; None: neither."""
    out = getattr(args, "out", None) or os.environ.get("OUT")
    if not out:
        return None
    folder = Path(out).parent if out.endswith(".json") else Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_out(result: dict, args: argparse.Namespace, name: str) -> Path | None:
    """Write `result` to --out/$OUT now (also mid-run: a run cut short keeps what it measured)."""
    folder = out_dir(args)
    if folder is None:
        return None
    out = getattr(args, "out", None) or ""
    path = Path(out) if out.endswith(".json") else folder / f"{name}.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def emit(result: dict, args: argparse.Namespace | None = None, name: str | None = None) -> None:
    """Print the bench's ONE JSON line; with --out/$OUT also write it (`write_out`)."""
    print(json.dumps(result), flush=True)
    if args is not None:
        write_out(result, args, name or str(result.get("bench", "bench")))


def follow_rounds(url: str, procs: dict, logs: Path, started: float, max_seconds: float, on_version=None) -> dict:
    """Poll the coordinator's GET /v1/status until it says `finished` (returned); fail fast when a
    process dies (`check_alive`, the coordinator must keep running), TimeoutError past
    `max_seconds` since `started`; `on_version(status)` once per newly published version."""
    import httpx
    shown = 0
    while True:
        check_alive(procs, logs, must_run=("coordinator",))
        status = httpx.get(f"{url}/v1/status", timeout=60).json()
        if len(status["history"]) > shown:
            shown = len(status["history"])
            if on_version is not None:
                on_version(status)
        if status["finished"]:
            return status
        if time.time() - started > max_seconds:
            raise TimeoutError(f"stopped after {max_seconds} s at version {status['version']}")
        time.sleep(1.0)
