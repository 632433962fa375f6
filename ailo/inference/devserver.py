"""A rooms-only coordinator for tests, benchmarks and local trials.

The real coordinator (`ailo.server.app`) mounts the very same router next to training and
the ledger; this one mounts only `make_rooms_router`, so rooms can be exercised alone:

    python -m ailo.inference.devserver --port 8700
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from fastapi import FastAPI

from ailo.inference.rewards import InferenceRewardSink
from ailo.inference.rooms import RoomRegistry
from ailo.inference.serving import ThreadedServer
from ailo.server.rooms_api import make_rooms_router


def build_app(rooms: RoomRegistry, rewards: InferenceRewardSink | None = None, *,
              checkpoints: str | Path | None = None, web: bool = False, **router_kw) -> FastAPI:
    """`checkpoints`: a folder of checkpoint folders served to browser nodes (span weights);
    `web`: also serve the browser bundle under /static/ (browser-node tests and benches)."""
    app = FastAPI(title="Ailo rooms (dev coordinator)")
    app.include_router(make_rooms_router(rooms, rewards, **router_kw))
    if checkpoints is not None:
        from ailo.inference.weights import CheckpointLibrary
        from ailo.server.room_weights_api import make_room_weights_router
        app.include_router(make_room_weights_router(rooms, CheckpointLibrary(checkpoints)))
    if web:
        from ailo.web.routes import make_web_router
        app.include_router(make_web_router())
    return app


def serve(rooms: RoomRegistry, rewards: InferenceRewardSink | None = None, host: str = "127.0.0.1",
          port: int = 0, **kw) -> ThreadedServer:
    """Start on a background thread; returns the running server (`.url`, `.stop()`)."""
    return ThreadedServer(build_app(rooms, rewards, **kw), host, port).start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8700)
    ap.add_argument("--heartbeat-timeout", type=float, default=10.0)
    ap.add_argument("--room-checkpoints", help="folder of checkpoint folders served to browser nodes")
    args = ap.parse_args(argv)
    server = serve(RoomRegistry(heartbeat_timeout=args.heartbeat_timeout), None, args.host, args.port,
                   checkpoints=args.room_checkpoints, web=args.room_checkpoints is not None)
    print(f"rooms coordinator on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
