"""A real coordinator app served by uvicorn on a loopback port in a thread, for attack tests that
need real HTTP (keep-alive connections, the server's own error handling) while still reading the
coordinator's state directly to prove nothing was written."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from ailo.federation.coordinator.config import CoordinatorConfig
from ailo.server.services import ServiceConfig, build_app
from tests.procs import free_port


@contextmanager
def serve(app, **uvicorn_kw):
    """Serve `app` with uvicorn (lifespan on) until the block ends; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_kw))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@contextmanager
def live_coordinator(state: Path, config: CoordinatorConfig | None = None, svc: ServiceConfig | None = None,
                     **uvicorn_kw):
    """(app, base URL, httpx client) of a real coordinator over HTTP."""
    app = build_app(config or CoordinatorConfig(min_updates=2, val_batches=1), state, svc or ServiceConfig())
    with serve(app, **uvicorn_kw) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield app, url, http
