"""A 200 MB body to POST /v1/register on a real uvicorn coordinator: refused at the limit (issue 14)
versus the same ledger route without the API contract (reads the whole body, then 413).

Both servers run as subprocesses on loopback; the client streams the body chunked (no
Content-Length, so the server must count) and stops when the answer arrives. Reported: the status,
seconds until the answer, MB the client had pushed by then (includes kernel socket buffers) and the
server's RSS growth. Also the declared case (Content-Length: 200 MB), answered before any read.

    .venv/bin/python bench/api_limits.py      # prints one JSON line
"""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, free_port  # noqa: E402  (puts this tree on sys.path)
BODY = 200 * 1024 * 1024
PIECE = 64 * 1024


def serve(kind: str, port: int, state: str) -> None:
    import uvicorn
    from fastapi import FastAPI

    if kind == "contract":
        from ailo.federation.coordinator.coordinator import CoordinatorConfig
        from ailo.server.services import build_app
        app = build_app(CoordinatorConfig(val_batches=1), Path(state))
    else:  # the ledger router alone: what POST /v1/register did before the contract
        from ailo.ledger.service import LedgerService
        from ailo.server.ledger_api import make_ledger_router
        from ailo.storage.ledger_store import SQLiteLedgerStore
        from ailo.wallet import Wallet
        from ailo.server.errors import install_error_handlers
        app = FastAPI()
        install_error_handlers(app)
        app.include_router(make_ledger_router(LedgerService(SQLiteLedgerStore(), Wallet.generate())))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post_200mb(port: int, declared: bool) -> dict:
    sock = socket.create_connection(("127.0.0.1", port))
    length = f"Content-Length: {BODY}" if declared else "Transfer-Encoding: chunked"
    sock.sendall(f"POST /v1/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{length}\r\n\r\n".encode())
    piece = b"7" * PIECE
    frame = piece if declared else f"{PIECE:x}\r\n".encode() + piece + b"\r\n"
    sent, start, answer = 0, time.perf_counter(), b""
    sock.settimeout(5)
    while sent < BODY:
        if select.select([sock], [], [], 0)[0]:      # the answer came: stop sending
            break
        try:
            sock.sendall(frame)
        except (socket.timeout, ConnectionError):
            break
        sent += PIECE
    if not declared and sent >= BODY:
        sock.sendall(b"0\r\n\r\n")
    sock.settimeout(60)
    try:
        answer = sock.recv(65536)
    except (ConnectionError, socket.timeout):
        pass
    took = time.perf_counter() - start
    sock.close()
    status = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/") else None
    return {"status": status, "seconds": round(took, 3), "client_sent_mb": round(sent / 2**20, 1)}


def measure(kind: str) -> dict:
    port, state = free_port(), tempfile.mkdtemp(prefix="ailo-bench-")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port), state], env=env)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        before = rss_mb(proc.pid)
        chunked = post_200mb(port, declared=False)
        chunked["server_rss_delta_mb"] = round(rss_mb(proc.pid) - before, 1)
        declared = post_200mb(port, declared=True)
        return {"chunked": chunked, "declared": declared}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    baseline, contract = measure("baseline"), measure("contract")
    print(json.dumps({"bench": "api_limits", "body_mb": BODY // 2**20, "route": "POST /v1/register",
                      "limit_bytes": 16 * 1024, "contract": contract, "baseline_no_contract": baseline}))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
