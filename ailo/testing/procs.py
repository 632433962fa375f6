"""Real `ailo` processes on loopback, for tests and benches: a free port, `ailo …` in its own
session, a health wait that fails fast when the process dies, and a stop that takes the whole
process group down."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ailo(*args: str, log: Path | None = None, threads: int | None = 1, home: str | Path | None = ROOT,
         env: dict[str, str] | None = None) -> subprocess.Popen:
    """`ailo …` from this tree as a process of its own session. `threads`: OMP_NUM_THREADS (None:
    inherited); `home`: AILO_HOME (tokenizer, corpus; None: inherited); `env`: more variables."""
    extra = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT)])}
    if threads:
        extra["OMP_NUM_THREADS"] = str(threads)
    if home is not None:
        extra["AILO_HOME"] = str(home)
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "ailo.cli.main", *args], cwd=ROOT,
                            env={**os.environ, **extra, **(env or {})},
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def check_alive(procs: dict[str, subprocess.Popen], logs: Path | None = None, must_run: tuple[str, ...] = (),
                tail: int = 3000) -> None:
    """Raise RuntimeError naming the first process that exited with an error, or at all for the
    names in `must_run` (servers), with its log's tail from `logs/<name>.log` when given: a wait
    loop calls this so it fails fast, not at its timeout."""
    for name, p in procs.items():
        if p.poll() is not None and (p.returncode != 0 or name in must_run):
            log = logs / f"{name}.log" if logs else None
            text = log.read_text(errors="replace")[-tail:] if log and log.exists() else ""
            raise RuntimeError(f"{name} exited with {p.returncode}" + (f":\n{text}" if text else ""))


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0, path: str = "/healthz",
                 log: Path | None = None) -> httpx.Response:
    """Poll `path` until it answers 200 (returned); fail fast if the process exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url}{path} answered"
                               + (f"; see {log}" if log else ""))
        try:
            r = httpx.get(f"{url}{path}", timeout=2.0)
            if r.status_code == 200:
                return r
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}{path} not ready after {timeout}s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def stop_all(procs, grace: float = 30.0) -> None:
    """SIGTERM every live process group at once, then wait up to `grace` s for each (SIGKILL after)."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in procs:
        stop(p, grace=grace)
