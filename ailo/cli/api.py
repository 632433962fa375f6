"""`ailo api`: an OpenAI-compatible server over a coordinator's rooms, paid from the local wallet."""
from __future__ import annotations

import argparse
import os
import signal

from ailo.cli import checks
from ailo.cli.errors import CLIError
from ailo.cli.inference import COORDINATOR_HELP, DEFAULT_COORDINATOR, load_wallet


def cmd_api(args: argparse.Namespace) -> int:
    from ailo.api.app import build_api_app
    from ailo.inference.requester import RoomRequester
    from ailo.inference.serving import ThreadedServer
    # The request path samples and decodes with torch; importing it for the first time inside a
    # server thread, after the server started, hung the first completion (a 60 s timeout in
    # tests/test_openai_api.py once the CLI stopped importing torch to build its parser).
    import torch  # noqa: F401

    wallet = load_wallet(args.wallet, "`ailo api` (it signs and pays each request)")
    key = args.api_key or os.environ.get("AILO_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and key is None:
        print("ailo api: warning: listening beyond loopback without --api-key: anyone who reaches "
              f"{args.host}:{args.port} spends this wallet's ALC", flush=True)
    requester = RoomRequester(args.coordinator, wallet)
    try:
        server = ThreadedServer(build_api_app(requester, key), args.host, args.port, log_level="info")
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    server.start()
    print(f"ailo api: OpenAI-compatible API on {server.url}/v1 for {args.coordinator} "
          f"(wallet {wallet.address})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.stop()
    finally:
        requester.close()
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("api", help="serve the OpenAI API (/v1/chat/completions, /v1/completions, "
                              "/v1/models) over a coordinator's rooms, paid from your wallet")
    p.add_argument("--coordinator", type=checks.url, default=DEFAULT_COORDINATOR, help=COORDINATOR_HELP)
    p.add_argument("--wallet", help="key file that signs and pays each request; it never leaves this machine "
                   "(default $AILO_WALLET or ~/.ailo/wallet.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (keep 127.0.0.1 unless --api-key is set)")
    p.add_argument("--port", type=checks.port, default=8000, help="port of the OpenAI-compatible API")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default $AILO_API_KEY; "
                   "set one before sharing the server on a LAN)")
    p.set_defaults(func=cmd_api)
