"""A rooms-only coordinator for tests, benchmarks and local trials.

The real coordinator (`ailo.server.app`) mounts the very same router next to training and
the ledger; this one mounts only `make_rooms_router`, so rooms can be exercised alone:

    python -m ailo.server.devserver --port 8700

Dev defaults: node URLs on loopback/private networks are allowed, the operator token is
random per start (printed; `server.operator_token` in tests), and with no ledger any valid
wallet signature is accepted (there is no registry to check against) and nobody is paid.
"""
from __future__ import annotations

import argparse
import secrets
import time
from pathlib import Path

from fastapi import FastAPI

from ailo.inference.rewards import InferenceRewardSink
from ailo.inference.rooms import RoomRegistry
from ailo.inference.serving import ThreadedServer
from ailo.server.errors import install_error_handlers
from ailo.server.rooms_api import RoomPolicy, make_rooms_router


# A blank page that loads the bundle and exposes it as window.ailo (tests and benchmarks).
HARNESS_HTML = b"""<!doctype html><meta charset="utf-8"><title>ailo harness</title>
<script type="module">
import * as ailo from '/static/ailo.js';
window.ailo = ailo;
window.ailoReady = true;
</script>
"""


def dev_policy(rewards: InferenceRewardSink | None = None, **overrides) -> RoomPolicy:
    registered = getattr(rewards, "is_registered", None)
    base = dict(operator_token=secrets.token_urlsafe(32), allow_private_urls=True, is_registered=registered)
    return RoomPolicy(**{**base, **overrides})


def build_app(rooms: RoomRegistry, rewards: InferenceRewardSink | None = None, policy: RoomPolicy | None = None, *,
              checkpoints: str | Path | None = None, web: bool = False, mirrors: tuple[str, ...] = (),
              **router_kw) -> FastAPI:
    """`checkpoints`: a folder of checkpoint folders served to browser nodes (span weights);
    `web`: also serve the browser bundle under /static/ and a `/harness` page that loads it
    (browser-node tests and benches)."""
    from ailo.inference.socket_nodes import RoutingNodeClient, SocketHub
    from ailo.server.room_socket_api import make_room_socket_router

    app = FastAPI(title="Ailo rooms (dev coordinator)")
    install_error_handlers(app)
    policy = policy or dev_policy(rewards)
    library = None
    if checkpoints is not None:  # browser nodes' weights, and the spot-check referee unless the caller chose one
        from ailo.inference.verify import references_from_library
        from ailo.inference.weights import CheckpointLibrary
        library = CheckpointLibrary(checkpoints)
        router_kw.setdefault("references", references_from_library(library))
    hub = SocketHub()  # browser nodes: /v1/rooms/{id}/node-socket
    app.include_router(make_rooms_router(rooms, rewards, policy=policy, client_factory=lambda: RoutingNodeClient(hub),
                                         **router_kw))
    app.include_router(make_room_socket_router(rooms, hub, policy))
    app.state.socket_hub = hub
    if library is not None:
        from ailo.server.room_weights_api import make_room_weights_router
        app.include_router(make_room_weights_router(rooms, library, mirrors))
    if web:
        from fastapi.responses import HTMLResponse

        from ailo.server.web_routes import ISOLATION, make_web_router
        app.include_router(make_web_router())
        # a blank page with the bundle as window.ailo, on this origin (browser-node tests, benches)
        app.add_api_route("/harness", lambda: HTMLResponse(HARNESS_HTML.decode(), headers=ISOLATION),
                          include_in_schema=False)
    return app


def serve(rooms: RoomRegistry, rewards: InferenceRewardSink | None = None, host: str = "127.0.0.1",
          port: int = 0, policy: RoomPolicy | None = None, **kw) -> ThreadedServer:
    """Start on a background thread; returns the running server (`.url`, `.stop()`,
    `.operator_token`, `.policy`)."""
    policy = policy or dev_policy(rewards)
    server = ThreadedServer(build_app(rooms, rewards, policy, **kw), host, port).start()
    server.policy, server.operator_token = policy, policy.operator_token
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8700)
    ap.add_argument("--heartbeat-timeout", type=float, default=10.0)
    ap.add_argument("--room-checkpoints", help="folder of checkpoint folders served to browser nodes")
    args = ap.parse_args(argv)
    server = serve(RoomRegistry(heartbeat_timeout=args.heartbeat_timeout), None, args.host, args.port,
                   checkpoints=args.room_checkpoints, web=args.room_checkpoints is not None)
    print(f"rooms coordinator on {server.url}; operator token: {server.operator_token}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
