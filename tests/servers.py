"""Real third-party servers for tests: nginx (chunk mirrors) and PostgreSQL (storage backends),
both from Debian packages installed by `make setup`. Tests skip when the binaries are absent."""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from ailo.mirrors import nginx_conf
from tests.procs import free_port, stop

NGINX = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
PG_BIN = Path(os.environ.get("AILO_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _wait_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not listening on {port} after {timeout}s")


@contextmanager
def nginx_mirror(root: Path, prefix: Path):
    """nginx serving `root` on a free loopback port; yields (base URL, prefix with access.log)."""
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(root, port, prefix, user="root" if os.geteuid() == 0 else None))
    log = prefix / "stderr.log"
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"),
                             "-g", "daemon off;"], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_port(port, proc, "nginx", log)
        yield f"http://127.0.0.1:{port}", prefix
    finally:
        stop(proc)


def _unprivileged() -> tuple[int, int] | None:
    """initdb refuses root: run the server as `postgres` (or nobody) when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user for PostgreSQL")


def _demote(ids):
    if ids is None:
        return None

    def fn():
        os.setgid(ids[1])
        os.setuid(ids[0])
    return fn


@contextmanager
def postgres_server(fsync: bool = False):
    """A throw-away PostgreSQL cluster (initdb + pg_ctl) on a free port; yields an admin URL.
    Tests run it without fsync (speed); `fsync=True` for benchmarks (durable commits)."""
    ids = _unprivileged()
    base = Path(tempfile.mkdtemp(prefix="ailo-pg-"))
    if ids:
        os.chown(base, *ids)
    data, port, log = base / "data", free_port(), base / "server.log"
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "HOME": str(base)}
    subprocess.run([str(PG_BIN / "initdb"), "-D", str(data), "-U", "ailo", "--auth=trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True, env=env, preexec_fn=_demote(ids))
    ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c shared_buffers=16MB -c max_connections=50"
    if not fsync:
        opts += " -c fsync=off"
    subprocess.run(ctl + ["-o", opts, "start"], check=True, capture_output=True, env=env, preexec_fn=_demote(ids))
    try:
        yield f"postgresql://ailo@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(ctl + ["-m", "immediate", "stop"], capture_output=True, env=env, preexec_fn=_demote(ids))
        shutil.rmtree(base, ignore_errors=True)


def pg_available() -> bool:
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()
