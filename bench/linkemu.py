"""A wide-area link emulator: one asyncio TCP proxy in front of each listening process.

Every byte that reaches a proxied endpoint (a node, or the coordinator) is delivered
`one_way_s` later and no faster than `mbit_s`, and so is every byte of the answer, so a
connection through it has a round trip of 2 · one_way_s (40 ms RTT = 20 ms each way) plus
serialisation. Putting one proxy in front of EVERY listener (coordinator and nodes) gives every
link the same delay: coordinator → node, node → node, node → coordinator. Bandwidth is shared
per endpoint and direction, like a home uplink. Delays are read per chunk, so a running room
switches between loopback (0) and WAN without restarting anything.

    emu = LinkEmulator(); emu.start()
    url = emu.proxy("127.0.0.1", 8701)      # http://127.0.0.1:<proxy port> forwards to :8701
    emu.set(one_way_s=0.020, mbit_s=50)
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field


@dataclass
class _Pipe:
    """One direction of one endpoint's link: bytes leave when the link is free, arrive one_way later."""

    emu: "LinkEmulator"
    free_at: float = 0.0

    def schedule(self, n: int) -> float:
        now = time.monotonic()
        start = max(now, self.free_at)
        bw = self.emu.mbit_s
        self.free_at = start + (n * 8 / (bw * 1e6) if bw else 0.0)
        return self.free_at + self.emu.one_way_s


@dataclass
class LinkEmulator:
    one_way_s: float = 0.0
    mbit_s: float = 0.0  # 0 = unlimited
    host: str = "127.0.0.1"
    loop: asyncio.AbstractEventLoop | None = None
    _servers: list = field(default_factory=list)
    bytes_moved: int = 0

    def start(self) -> "LinkEmulator":
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True, name="link-emulator").start()
        ready.wait()
        return self

    def set(self, one_way_s: float, mbit_s: float = 0.0) -> None:
        self.one_way_s, self.mbit_s = one_way_s, mbit_s

    def proxy(self, host: str, port: int) -> str:
        """Listen on a free port; forward to host:port through this endpoint's link. Returns its URL."""
        up, down = _Pipe(self), _Pipe(self)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                r2, w2 = await asyncio.open_connection(host, port)
            except OSError:
                writer.close()
                return
            sock = w2.get_extra_info("socket")
            if sock is not None:
                import socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            csock = writer.get_extra_info("socket")
            if csock is not None:
                import socket
                csock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.gather(self._carry(reader, w2, up), self._carry(r2, writer, down))

        async def start() -> int:
            server = await asyncio.start_server(handle, self.host, 0)
            self._servers.append(server)
            return server.sockets[0].getsockname()[1]

        assert self.loop is not None, "start() first"
        listen = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return f"http://{self.host}:{listen}"

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pipe: _Pipe) -> None:
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
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if data is None:
                    break
                writer.write(data)
                try:
                    await writer.drain()
                except (ConnectionError, OSError):
                    return
            try:
                writer.close()
            except Exception:
                pass

        task = asyncio.ensure_future(deliver())
        try:
            while True:
                try:
                    data = await reader.read(1 << 16)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    break
                self.bytes_moved += len(data)
                queue.append((pipe.schedule(len(data)), data))
                wake.set()
        finally:
            queue.append((time.monotonic() + self.one_way_s, None))
            done = True
            wake.set()
            await task

    def stop(self) -> None:
        if self.loop is None:
            return

        async def close() -> None:
            for s in self._servers:
                s.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
