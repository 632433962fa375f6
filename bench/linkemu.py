"""The one link emulator of the benches: an asyncio TCP proxy in front of a listening process.

Each `proxy()` is one emulated line. All connections through it share its two directions
(to the server: a home's upload, or a node's input; to the client: a home's download), like
one DSL/cable line: two transfers at once each get about half of it. Every piece leaves when
the line is free (serialisation at the line's rate) and arrives one-way delay later, in order
per connection, so a request/response pays the round trip and a bulk transfer the bandwidth.
A reader waits while more than `BURST` bytes are queued on a direction (TCP flow control), so
a sender is not told a large upload is gone before the line carried it.

Two uses:
- inference rooms (bench/wan_inference.py): one proxy in front of EVERY listener (coordinator and
  nodes), all following the emulator's live setting, so every link has the same delay and rate
  per endpoint; `set()` switches a running room between loopback and WAN:

      emu = LinkEmulator().start()
      url = emu.proxy("127.0.0.1", 8701)      # http://127.0.0.1:<proxy port> forwards to :8701
      emu.set(one_way_s=0.020, mbit_s=50)

- home lines (bench/utilization.py): one proxy per household, asymmetric and fixed, paying a
  round trip for each new connection (the TCP handshake):

      home = Line(down_mbit=10, up_mbit=2, rtt_ms=40, handshake=True)
      url = emu.proxy("127.0.0.1", coordinator_port, home)   # home.bytes_up / bytes_down count
"""
from __future__ import annotations

import asyncio
import collections
import socket
import threading
import time
from dataclasses import dataclass, field

PIECE = 16 * 1024   # read size
BURST = 2 * PIECE   # bytes a direction may queue before its reader waits


@dataclass
class Line:
    """One line's setting and counters. `up` is toward the proxied server, `down` back to the
    client; 0 Mbit/s is unlimited. Changes take effect at the next piece."""

    down_mbit: float = 0.0
    up_mbit: float = 0.0
    rtt_ms: float = 0.0
    handshake: bool = False     # a new connection waits one round trip before its first byte
    bytes_up: int = 0
    bytes_down: int = 0

    @property
    def one_way_s(self) -> float:
        return self.rtt_ms / 2000


@dataclass
class _Direction:
    """One direction of one line: a piece leaves when the line is free and arrives one-way later."""

    line: Line
    up: bool
    free_at: float = 0.0

    async def admit(self, n: int) -> float:
        """Account `n` bytes; wait while the backlog exceeds BURST; return their arrival time."""
        line = self.line
        mbit = line.up_mbit if self.up else line.down_mbit
        now = time.monotonic()
        self.free_at = max(now, self.free_at) + (n * 8 / (mbit * 1e6) if mbit else 0.0)
        if self.up:
            line.bytes_up += n
        else:
            line.bytes_down += n
        if mbit and (backlog := self.free_at - now - BURST * 8 / (mbit * 1e6)) > 0:
            await asyncio.sleep(backlog)
        return self.free_at + line.one_way_s


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class LinkEmulator:
    """Runs the proxies on one asyncio loop in a daemon thread. `live` is the setting of every
    proxy opened without a line of its own (`set()` changes it; each such proxy still has its
    own bandwidth per direction)."""

    host: str = "127.0.0.1"
    live: Line = field(default_factory=Line)
    loop: asyncio.AbstractEventLoop | None = None
    bytes_moved: int = 0
    _servers: list = field(default_factory=list)

    def start(self) -> "LinkEmulator":
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True, name="link-emulator").start()
        if not ready.wait(30):
            raise RuntimeError("link emulator did not start")
        return self

    @property
    def one_way_s(self) -> float:
        return self.live.one_way_s

    @property
    def mbit_s(self) -> float:
        return self.live.up_mbit

    def set(self, one_way_s: float, mbit_s: float = 0.0) -> None:
        """The live setting: `one_way_s` each way, `mbit_s` each direction of each endpoint."""
        self.live.rtt_ms, self.live.up_mbit, self.live.down_mbit = 2000 * one_way_s, mbit_s, mbit_s

    def proxy(self, host: str, port: int, line: Line | None = None) -> str:
        """Listen on a free port; forward to host:port through `line` (default: the live setting,
        with this endpoint's own bandwidth). Returns the proxy's URL."""
        line = line or self.live
        up, down = _Direction(line, True), _Direction(line, False)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers = [writer]
            try:
                if line.handshake:
                    await asyncio.sleep(2 * line.one_way_s)
                r2, w2 = await asyncio.open_connection(host, port)
                writers.append(w2)
                _nodelay(writer)
                _nodelay(w2)
                await asyncio.gather(self._carry(reader, w2, up), self._carry(r2, writer, down), return_exceptions=True)
            except (OSError, asyncio.CancelledError):  # target down, or stop(): the connection ends
                pass
            for w in writers:
                w.close()

        async def start() -> int:
            server = await asyncio.start_server(handle, self.host, 0)
            self._servers.append(server)
            return server.sockets[0].getsockname()[1]

        assert self.loop is not None, "start() first"
        listen = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return f"http://{self.host}:{listen}"

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: _Direction) -> None:
        queue: collections.deque = collections.deque()
        wake = asyncio.Event()
        done = False

        async def deliver() -> None:
            while True:
                while not queue:
                    if done:
                        return
                    wake.clear()
                    await wake.wait()
                at, data = queue.popleft()
                if (delay := at - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                if data is None:
                    break
                writer.write(data)
                try:
                    await writer.drain()
                except (ConnectionError, OSError):
                    return
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except (ConnectionError, OSError):
                pass

        task = asyncio.ensure_future(deliver())
        try:
            while True:
                try:
                    data = await reader.read(PIECE)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    break
                self.bytes_moved += len(data)
                queue.append((await way.admit(len(data)), data))
                wake.set()
        finally:
            queue.append((time.monotonic() + way.line.one_way_s, None))
            done = True
            wake.set()
            await task

    def stop(self) -> None:
        if self.loop is None:
            return

        async def close() -> None:  # servers, then every open connection (no pending task left behind)
            for s in self._servers:
                s.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


def _selfcheck() -> dict:
    """Measured against what the line promises: round trips and transfer times through a proxy in
    front of a local HTTP server (one JSON line; `python bench/linkemu.py`)."""
    import concurrent.futures
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # GET /<n>: n bytes back
            n = int(self.path.strip("/") or 0)
            self.send_response(200)
            self.send_header("content-length", str(n))
            self.end_headers()
            self.wfile.write(b"x" * n)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    emu, home = LinkEmulator().start(), Line(down_mbit=8, up_mbit=2, rtt_ms=40, handshake=True)
    url = emu.proxy("127.0.0.1", server.server_address[1], home)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return round(time.perf_counter() - t0, 3)

    with httpx.Client(base_url=url) as a, httpx.Client(base_url=url) as b:
        out = {"bench": "linkemu", "line": "8/2 Mbit/s, 40 ms", "first_request_s": timed(lambda: a.get("/0")),
               "rtt_s": timed(lambda: a.get("/0")), "down_1MB_s": timed(lambda: a.get("/1000000")),
               "up_250KB_s": timed(lambda: a.post("/", content=b"y" * 250_000))}
        b.get("/0")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            out["two_down_500KB_shared_s"] = timed(lambda: list(pool.map(lambda c: c.get("/500000"), (a, b))))
    out["expected_s"] = {"first_request_s": 0.08, "rtt_s": 0.04, "down_1MB_s": 1.04, "up_250KB_s": 1.04,
                         "two_down_500KB_shared_s": 1.04}
    emu.stop()
    server.shutdown()
    return out


if __name__ == "__main__":
    import json
    print(json.dumps(_selfcheck()))
