"""Home lines for benches: an asyncio TCP proxy per household (bench/utilization.py).

Unlike `bench/linkemu.py` (one proxy per listening endpoint, the same bandwidth each way, for
node-to-node inference links), a household line is asymmetric (down ≠ up) and sits on the
client side: every connection the household opens shares its two buckets.

Every connection a household opens to the coordinator goes through its `Household` proxy, and
all of them share the household's two token buckets (down: coordinator → home, up: home →
coordinator), like one DSL/cable line: two transfers at once each get about half of it. Every
piece is delivered half the round-trip time after the bucket lets it through (one-way delay),
in order per connection, so a request/response pays the RTT and a bulk transfer the bandwidth.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

PIECE = 16 * 1024


class TokenBucket:
    """`rate` bytes/s with a burst of `burst` bytes; FIFO among waiters (one lock)."""

    def __init__(self, rate: float, burst: int = 2 * PIECE):
        self.rate, self.burst = float(rate), burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


@dataclass
class Household:
    """One home line: listen on `port`, forward to (target_host, target_port)."""
    target_host: str
    target_port: int
    down_bps: float            # bits per second, coordinator → home
    up_bps: float              # bits per second, home → coordinator
    rtt_s: float
    port: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    _server: asyncio.base_events.Server | None = field(default=None, repr=False)

    async def start(self) -> None:
        self.down = TokenBucket(self.down_bps / 8)
        self.up = TokenBucket(self.up_bps / 8)
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bucket: TokenBucket,
                    count: str) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                at, data = await queue.get()
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if data is None:
                    break
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        task = asyncio.create_task(deliver())
        try:
            while data := await reader.read(PIECE):
                await bucket.take(len(data))
                setattr(self, count, getattr(self, count) + len(data))
                queue.put_nowait((time.monotonic() + self.rtt_s / 2, data))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait((time.monotonic() + self.rtt_s / 2, None))
            try:
                await task
            except (ConnectionError, OSError):
                pass

    async def _handle(self, home_r: asyncio.StreamReader, home_w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(self.rtt_s)  # the TCP handshake's round trip
        try:
            coord_r, coord_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            home_w.close()
            return
        await asyncio.gather(self._pump(home_r, coord_w, self.up, "bytes_up"),
                             self._pump(coord_r, home_w, self.down, "bytes_down"), return_exceptions=True)
        for w in (home_w, coord_w):
            w.close()


class LinkEmulator(threading.Thread):
    """Runs households on an asyncio loop in a daemon thread."""

    def __init__(self, households: list[Household]):
        super().__init__(daemon=True)
        self.households = households
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        for h in self.households:
            self.loop.run_until_complete(h.start())
        self.ready.set()
        self.loop.run_forever()

    def start_and_wait(self) -> "LinkEmulator":
        self.start()
        if not self.ready.wait(30):
            raise RuntimeError("link emulator did not start")
        return self
