"""The validation pipeline: judges stored updates and closes rounds, off the request path.

`POST /v1/updates` only admits (identity, header structure, durable `pending` row) and
enqueues the update id. One validator thread per device takes ids from a bounded queue, in
arrival order, and calls `judge(id)`, which decides the row exactly once (accepted/refused)
and may close the round. Between items, and at least every `idle_seconds`, it calls `tick()`
(round deadlines), so round closing also never runs in a client's request.

Nothing is lost on a crash: the queue is only a wake-up list; the truth is the `pending` rows.
`start()` enqueues every pending row left by a previous process before taking new ones, and a
row already decided is skipped, so each stored update is judged once.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class ValidationPipeline:
    judge: Callable[[int], None]
    tick: Callable[[], None]
    recover: Callable[[], list[int]]           # pending ids, oldest first
    capacity: int = 256
    idle_seconds: float = 0.5
    name: str = "validator"
    niceness: int = 10                          # the validator yields the CPU to the request path
    in_flight: int | None = None
    judged: int = 0
    busy_seconds: float = 0.0
    _queue: queue.Queue = field(default_factory=queue.Queue)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _done: threading.Condition = field(default_factory=threading.Condition)
    _outstanding: int = 0                       # ids queued or in the backlog, not yet judged
    _overflow: bool = False
    _backlog: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._queue = queue.Queue(maxsize=self.capacity)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def depth(self) -> int:
        return self._queue.qsize()

    def full(self) -> bool:
        return self._queue.full()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._load_backlog()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def submit(self, update_id: int) -> None:
        """Wake the validator for a freshly stored row. Never blocks: when the queue is full
        the row stays pending and is picked up by the next `recover()` sweep."""
        with self._done:
            try:
                self._queue.put_nowait(update_id)
                self._outstanding += 1
            except queue.Full:
                self._overflow = True

    def _load_backlog(self) -> None:
        ids = list(self.recover())
        with self._done:
            self._backlog = ids
            self._outstanding += len(ids)

    def _next(self) -> int | None:
        if self._backlog:
            return self._backlog.pop(0)
        try:
            return self._queue.get(timeout=self.idle_seconds)
        except queue.Empty:
            if self._overflow:  # ids that did not fit: read them back from the store
                self._overflow = False
                self._load_backlog()
            return None

    def _lower_priority(self) -> None:
        """On a small CPU box validation and admission share the cores: a lower scheduling
        priority for this thread (Linux: per-thread nice) keeps `POST /v1/updates` answering at
        transfer speed while the validator works. Threads it starts (torch's pool) inherit it."""
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), self.niceness))
        except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
            pass

    def _loop(self) -> None:
        self._lower_priority()
        while not self._stop.is_set():
            update_id = self._next()
            if update_id is not None:
                self.in_flight = update_id
                t0 = time.perf_counter()
                try:
                    self.judge(update_id)
                except Exception as exc:  # a bug must not kill the validator; the row stays pending
                    print(f"validator: update {update_id} failed: {exc!r}", flush=True)
                finally:
                    self.busy_seconds += time.perf_counter() - t0
                    self.judged += 1
                    self.in_flight = None
                    with self._done:
                        self._outstanding -= 1
                        self._done.notify_all()
            try:
                self.tick()
            except Exception as exc:
                print(f"validator: tick failed: {exc!r}", flush=True)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Tests and benches: wait until every queued id has been judged."""
        deadline = time.time() + timeout
        with self._done:
            while self._outstanding > 0:
                left = deadline - time.time()
                if left <= 0:
                    return False
                self._done.wait(min(left, 0.1))
        return True
