"""Drive the browser client from Python: build check, a loopback static server, headless Chromium.

Used by the browser tests and `bench/browser.py`. Chromium is Debian's `/usr/bin/chromium`
(installed by `make setup`), driven by Playwright through `executable_path` with a fresh
user-data directory; Playwright never downloads a browser.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

from ailo.paths import REPO_ROOT
from ailo.server.devserver import HARNESS_HTML

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_DIR = WEB_DIR / "static"
BUNDLE = STATIC_DIR / "ailo.js"

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]

_CONTENT_TYPES = {".js": "text/javascript", ".json": "application/json", ".wasm": "application/wasm",
                  ".html": "text/html; charset=utf-8", ".css": "text/css", ".bpe": "text/plain; charset=utf-8",
                  ".txt": "text/plain; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}


class BuildError(RuntimeError):
    pass


def _sources() -> list[Path]:
    return [p for p in (WEB_DIR / "src").rglob("*") if p.is_file()] + \
           [p for p in (WEB_DIR / "pages").rglob("*") if p.is_file()] + [WEB_DIR / "build.mjs"]


def ensure_built() -> Path:
    """Rebuild static/ when a source is newer than the bundle (the Makefile builds it on set-up)."""
    stamp = STATIC_DIR / ".built"
    if stamp.exists() and BUNDLE.exists():
        built = stamp.stat().st_mtime
        if all(p.stat().st_mtime <= built for p in _sources()):
            return BUNDLE
    if not (REPO_ROOT / "node_modules" / "esbuild").exists():
        raise BuildError("node_modules lacks esbuild: run `make setup` (npm ci) first")
    proc = subprocess.run(["node", str(WEB_DIR / "build.mjs")], cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"browser bundle build failed:\n{proc.stdout}\n{proc.stderr}")
    return BUNDLE


def chromium_path() -> str:
    path = os.environ.get("AILO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        raise FileNotFoundError("Debian's chromium is not installed: run `make setup` "
                                "(apt-get install -y chromium)")
    return path


Handler = Callable[[bytes, dict[str, str]], tuple[int, bytes, str] | bytes]


@dataclass
class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1: `/static/*` from STATIC_DIR plus registered routes.

    `routes[path]` is bytes (served as is) or a callable (body, headers) → bytes or
    (status, bytes, content type). Every response carries COOP/COEP headers, so the page is
    cross-origin isolated and tfjs-wasm may use threads. Requests are logged in `log`.
    """
    routes: dict[str, bytes | Handler] = field(default_factory=dict)
    static_dir: Path = STATIC_DIR
    log: list[tuple[str, str, int]] = field(default_factory=list)
    bytes_sent: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        server = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(body)
                    except (BrokenPipeError, ConnectionResetError):  # the page navigated away
                        return
                path = self.path.split("?")[0]
                server.log.append((self.command, path, len(body)))
                server.bytes_sent[path] = server.bytes_sent.get(path, 0) + len(body)

            def _handle(self) -> None:
                path = self.path.split("?")[0]
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                route = server.routes.get(path)
                if route is None:
                    prefix = next((p for p in server.routes if p.endswith("*") and path.startswith(p[:-1])), None)
                    route = server.routes.get(prefix) if prefix else None
                if route is not None:
                    out = route(body, {"path": path, **dict(self.headers)}) if callable(route) else route
                    if isinstance(out, tuple):
                        self._send(*out)
                    else:
                        ctype = _CONTENT_TYPES.get(Path(path).suffix, "application/octet-stream")
                        self._send(200, out, "text/html; charset=utf-8" if path.endswith("/") else ctype)
                    return
                if path.startswith("/static/"):
                    target = (server.static_dir / path[len("/static/"):]).resolve()
                    if target.is_file() and server.static_dir.resolve() in target.parents:
                        self._send(200, target.read_bytes(), _CONTENT_TYPES.get(target.suffix, "application/octet-stream"))
                        return
                self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

            do_GET = do_POST = do_PUT = do_HEAD = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.routes.setdefault("/", HARNESS_HTML)
        self.routes.setdefault("/favicon.ico", lambda body, headers: (204, b"", "image/x-icon"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def chromium(headless: bool = True, extra_args: list[str] | None = None) -> Iterator:
    """A Playwright BrowserContext on Debian's chromium with a fresh user-data dir."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="ailo-chromium-")
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=chromium_path(), headless=headless,
                args=CHROMIUM_FLAGS + list(extra_args or []))
            try:
                yield ctx
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def open_harness(ctx, server: LoopbackServer, path: str = "/", timeout_ms: int = 60_000):
    """A page with window.ailo loaded; console errors are collected in page.ailo_console."""
    page = ctx.new_page()
    page.ailo_console = []  # type: ignore[attr-defined]
    page.on("console", lambda m: page.ailo_console.append(f"{m.type}: {m.text}"))  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: page.ailo_console.append(f"pageerror: {e}"))  # type: ignore[attr-defined]
    page.goto(server.url + path)
    page.wait_for_function("window.ailoReady === true", timeout=timeout_ms)
    return page


def json_route(obj) -> bytes:
    return json.dumps(obj).encode()
