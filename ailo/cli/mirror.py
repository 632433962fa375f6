"""`ailo mirror sync` (keep a folder of chunk files in step) and `ailo mirror nginx-conf`."""
from __future__ import annotations

import argparse
from pathlib import Path

from ailo.cli import checks
from ailo.cli.errors import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("mirror", help="chunk mirrors: sync a folder of chunk files, print an nginx config")
    ms = m.add_subparsers(dest="mirror_command", required=True)
    s = ms.add_parser("sync", help="download the current model's chunks into a folder (verified, atomic)")
    s.add_argument("--coordinator", required=True, type=checks.url, help="coordinator URL, e.g. http://127.0.0.1:8400")
    s.add_argument("--out", required=True, help="folder a static web server serves as <URL>/<sha256>")
    s.add_argument("--quick", action="store_true", help="trust existing files of the right size (no re-hash)")
    s.add_argument("--prune", action="store_true", help="delete chunk files the current model does not use")
    s.add_argument("--watch", type=float, default=None, metavar="SECONDS", help="sync again every SECONDS")
    s.set_defaults(func=run_sync)

    n = ms.add_parser("nginx-conf", help="print a self-contained nginx config serving a mirror folder")
    n.add_argument("--root", required=True, help="the synced folder")
    n.add_argument("--port", type=checks.port, default=8480, help="port nginx listens on")
    n.add_argument("--host", default="127.0.0.1", help="address nginx listens on")
    n.add_argument("--prefix", required=True, help="folder for nginx's pid, logs and temp files")
    n.set_defaults(func=run_nginx_conf)


def run_sync(args: argparse.Namespace) -> int:
    import httpx

    from ailo.chunks import ChunkError
    from ailo.mirrors import sync_mirror, watch_mirror

    opts = {"verify": not args.quick, "prune": args.prune}
    if args.watch is not None:
        if args.watch <= 0:
            raise CLIError("--watch must be a positive number of seconds")
        watch_mirror(args.coordinator, Path(args.out), args.watch, **opts)
        return 0
    try:
        rep = sync_mirror(args.coordinator, Path(args.out), **opts)
    except (httpx.HTTPError, ChunkError) as exc:
        raise CLIError(f"mirror sync from {args.coordinator} failed: {exc}") from None
    print(f"model version {rep.version}: {len(rep.downloaded)} chunks downloaded, {len(rep.repaired)} damaged "
          f"files replaced, {rep.kept} kept, {len(rep.pruned)} pruned ({rep.bytes:,} bytes)")
    return 0


def run_nginx_conf(args: argparse.Namespace) -> int:
    from ailo.mirrors import nginx_conf

    print(nginx_conf(Path(args.root), args.port, Path(args.prefix), args.host), end="")
    return 0
