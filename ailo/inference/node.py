"""A room node: join a room, load the assigned span only, heartbeat, serve activations.

HTTP endpoints (binary frames, see `wire.py`; the app is `ailo.server.node_app`):
  POST   /v1/node/forward              frame in → frame out (hidden states, or logits on the last span)
  DELETE /v1/node/requests/{id}        drop a finished request's KV cache
  GET    /v1/node/info                 span, tensors read from the checkpoint, cache count
Status codes the coordinator acts on: 409 = "I do not hold the positions you assume"
(rebuild my cache), 421 = "I serve another span", 503 = "span not loaded yet".
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from ailo.backoff import Backoff, is_transient
from ailo.errors import Refused
from ailo.inference.auth import sign_request
from ailo.inference.blocks import SpanModel
from ailo.inference.links import NodeLink
from ailo.inference.loader import load_span
from ailo.inference.families import read_spec
from ailo.inference.units import RequestCache
from ailo.inference.wire import Frame
from ailo.wallet import Wallet

log = logging.getLogger(__name__)


class NodeError(Refused):
    """A frame this node will not compute; the status tells the coordinator what to do."""


class CacheStore:
    """Per-request KV caches, least recently used evicted first, idle ones expired."""

    def __init__(self, max_requests: int = 64, ttl_s: float = 600.0):
        self.max_requests, self.ttl_s = max_requests, ttl_s
        self._items: OrderedDict[str, tuple[RequestCache, float]] = OrderedDict()

    def get(self, rid: str) -> RequestCache | None:
        item = self._items.get(rid)
        if item is None:
            return None
        self._items[rid] = (item[0], time.monotonic())
        self._items.move_to_end(rid)
        return item[0]

    def new(self, rid: str) -> RequestCache:
        now = time.monotonic()
        for k in [k for k, (_, t) in self._items.items() if now - t > self.ttl_s]:
            del self._items[k]
        while len(self._items) >= self.max_requests:
            self._items.popitem(last=False)
        cache = RequestCache()
        self._items[rid] = (cache, now)
        return cache

    def drop(self, rid: str) -> None:
        self._items.pop(rid, None)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class NodeService:
    """The node's model state; all compute happens under one lock (one forward at a time)."""

    model_dir: Path
    dtype: str = "auto"
    device: str = "cpu"
    max_requests: int = 64
    model: SpanModel | None = None
    tensor_names: list[str] = field(default_factory=list)
    tensor_bytes: int = 0
    state: str = "waiting"
    node_id: str | None = None
    room: str | None = None
    attack: str | None = None  # tests/benchmarks only: "zeros" | "noise" | "skip" (see _cheat)
    link: NodeLink | None = None  # pushed pipelines (links.py), set when the node joins a room

    def __post_init__(self) -> None:
        self.spec = read_spec(self.model_dir)
        self.caches = CacheStore(self.max_requests)
        self.lock = threading.Lock()

    @property
    def span(self) -> tuple[int, int] | None:
        return None if self.model is None else (self.model.start, self.model.end)

    def load(self, start: int, end: int) -> None:
        self.state = "loading"
        loaded = load_span(self.model_dir, start, end, dtype=self.dtype, device=self.device, spec=self.spec)
        with self.lock:
            self.model, self.tensor_names, self.tensor_bytes = loaded.model, loaded.tensor_names, loaded.tensor_bytes
            self.caches.clear()
            self.state = "ready"

    def forward(self, frame: Frame) -> Frame:
        out = self.forward_many([frame])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def forward_many(self, frames: list[Frame]) -> list[Frame | Exception]:
        """The frames waiting at this node (one per request) as ONE batched forward: each
        request keeps its own KV cache; a frame the node refuses gets its NodeError in its place
        and does not stop the others."""
        model = self.model
        results: list[Frame | Exception | None] = [None] * len(frames)
        pending = list(enumerate(frames))
        with self.lock:
            while pending:  # a request's later frame (e.g. a rebuild) runs after its earlier one, as it came
                run, later, seen = [], [], set()
                for i, frame in pending:
                    if frame.request_id in seen:
                        later.append((i, frame))
                        continue
                    seen.add(frame.request_id)
                    try:
                        run.append((i, frame, self._prepare(model, frame)))
                    except NodeError as exc:
                        results[i] = exc
                if run:
                    self._run(model, run, results)
                pending = later
        return results  # type: ignore[return-value]

    def _prepare(self, model: SpanModel | None, frame: Frame) -> RequestCache:
        """Check a frame against this node's span and state; the cache it runs on (under the lock)."""
        if model is None:
            raise NodeError(503, "not_loaded", "span not loaded yet")
        if frame.span != (model.start, model.end):
            raise NodeError(421, "wrong_span", f"this node serves units [{model.start}, {model.end}), not {list(frame.span)}")
        x = frame.tensor
        if model.first != (x.dtype == torch.int64) or x.dim() != (2 if model.first else 3) or x.shape[0] != 1:
            raise NodeError(400, "bad_input", f"unexpected input {x.dtype} {tuple(x.shape)} for this span")
        if not model.first and x.shape[-1] != model.spec.hidden:
            raise NodeError(400, "bad_input", f"hidden size {x.shape[-1]}, this model's is {model.spec.hidden}")
        cache = None if frame.reset else self.caches.get(frame.request_id)
        if cache is None:
            if frame.start != 0 and not frame.reset:
                raise NodeError(409, "cache_miss", f"no cache for request {frame.request_id}; "
                                f"resend from position 0 (got {frame.start})")
            return self.caches.new(frame.request_id)
        if frame.start < cache.length:  # drafted tokens the room rejected: forget them
            cache.truncate(frame.start)
        elif cache.length != frame.start:
            raise NodeError(409, "cache_miss", f"cache holds {cache.length} positions, frame starts at {frame.start}")
        return cache

    def _run(self, model: SpanModel, run: list, results: list) -> None:
        xs = [f.tensor.to(self.device) for _, f, _ in run]
        try:
            if self.attack is None:
                outs = model.forward_batch(xs, [f.start for _, f, _ in run], [c for _, _, c in run],
                                           [f.all_logits for _, f, _ in run])
            else:
                outs = [_cheat(self.attack, model, x, f.start, c, f.all_logits) for x, (_, f, c) in zip(xs, run)]
        except ValueError as exc:
            if len(run) > 1:  # find the request at fault; the others start again from their positions
                for i, f, c in run:
                    c.truncate(min(c.length, f.start))
                    self._run(model, [(i, f, c)], results)
                return
            self.caches.drop(run[0][1].request_id)
            results[run[0][0]] = NodeError(400, "bad_input", str(exc))
            return
        except Exception:
            for _, f, _ in run:
                self.caches.drop(f.request_id)
            raise
        for (i, f, _), out in zip(run, outs):
            if f.greedy and model.last:  # temperature 0: the token ids, not 4 × vocab bytes a position
                out = out.argmax(-1)
            results[i] = Frame(f.request_id, f.start, f.span, out.cpu())

    def info(self) -> dict:
        span = self.span
        return {"node_id": self.node_id, "room": self.room, "state": self.state, "family": self.spec.family,
                "fingerprint": self.spec.fingerprint(), "span": {"start": span[0], "end": span[1]} if span else None,
                "tensor_names": self.tensor_names, "tensor_bytes": self.tensor_bytes,
                "cached_requests": len(self.caches), "dtype": str(self.dtype), "device": str(self.device),
                "push": None if self.link is None else {
                    "pushed": self.link.pushed, "forwards": self.link.batches, "frames": self.link.batched,
                    "frames_per_forward": round(self.link.batched / self.link.batches, 3) if self.link.batches else None}}


class _Skipped(torch.nn.Module):
    def forward(self, x, step, cache):  # noqa: D401 - a unit that does nothing
        return x


def _cheat(attack: str, model: SpanModel, x: torch.Tensor, start: int, cache: RequestCache,
           all_logits: bool = False) -> torch.Tensor:
    """A dishonest node, for the spot-check tests and bench/verify.py: answers zeros, noise of
    the right scale, or skips the last unit (half-layer) of its span."""
    if attack == "skip":
        last = len(model.units) - 1
        unit, model.units[last] = model.units[last], _Skipped()
        try:
            return model(x, start, cache, all_logits)
        finally:
            model.units[last] = unit
    out = model(x, start, cache, all_logits)
    if attack == "zeros":
        return torch.zeros_like(out)
    if attack == "noise":
        return torch.randn_like(out.float()).mul(out.float().std()).to(out.dtype)
    raise ValueError(f"unknown attack {attack!r}")


PEER_PROBE_EVERY_S = 60.0  # how often a node re-times its round trip to a possible successor
PEER_TIMEOUT_S = 2.0


class JoinRefused(RuntimeError):
    """The coordinator will not take this node (wrong checkpoint, too little memory, no room)."""


class CoordinatorBusy(RuntimeError):
    """A transient answer (5xx/429, or the room not restored yet after a restart): back off."""


@dataclass
class RoomAgent:
    """Join → heartbeat → load the assigned span → keep heartbeating; rejoin when forgotten.
    Every call is signed by `wallet` (see `ailo.inference.auth`); rewards go to its address.

    The coordinator is restartable: connection errors, 5xx/429 and — once this node has been
    in the room — a 404 for the room itself are retried under `policy` (ailo.backoff), the
    node keeps serving meanwhile; only a clear refusal (409 wrong checkpoint / does not fit,
    or an unknown room at the very first join) raises JoinRefused."""

    service: NodeService
    coordinator: str
    room: str
    url: str
    memory: int
    wallet: Wallet
    interval: float = 2.0
    on_event: object = print
    policy: Backoff = field(default_factory=lambda: Backoff(base=0.5, cap=10.0))

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self._http = httpx.Client(base_url=self.coordinator.rstrip("/"), timeout=10.0)
        if self.service.link is None:  # frames pushed by other nodes, outputs pushed on (links.py)
            self.service.link = NodeLink(self.wallet, self.coordinator, self.room)
        self._joined_once = False
        self._peers = httpx.Client(timeout=PEER_TIMEOUT_S)  # kept alive: a timed call is one round trip
        self._peer_ms: dict[str, float] = {}   # measured since the last heartbeat, sent with the next
        self._peer_at: dict[str, float] = {}
        self.failures = 0      # consecutive failed steps (drives the back-off)
        self.outages = 0       # times the coordinator became unavailable

    def _post(self, path: str, payload: dict) -> dict:
        body = json.dumps(payload).encode()
        route = f"/v1/rooms/{self.room}/{path}"
        headers = {"content-type": "application/json",
                   **sign_request(self.wallet, "POST", httpx.URL(self.coordinator.rstrip("/") + route).path, body)}
        r = self._http.post(route, content=body, headers=headers)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            if is_transient(r.status_code):
                raise CoordinatorBusy(f"{path}: HTTP {r.status_code}: {detail}")
            if r.status_code == 404 and path == "heartbeat":
                raise LookupError(detail)
            if r.status_code == 404 and path == "join" and self._joined_once:
                raise CoordinatorBusy(f"room {self.room} not there (yet) after a restart: {detail}")
            raise JoinRefused(f"{path} refused by {self.coordinator} (HTTP {r.status_code}): {detail}")
        return r.json()

    def _join(self) -> None:
        reply = self._post("join", {"url": self.url, "memory": self.memory,
                                    "fingerprint": self.service.spec.fingerprint(),
                                    "link_token": self.service.link.token})
        self.service.node_id, self.service.room = reply["node_id"], self.room
        self._joined_once = True
        self.interval = float(reply.get("heartbeat_interval", self.interval))
        self.on_event(f"ailo node: joined room {self.room} as {reply['node_id']} at {self.url}")

    def step(self) -> None:
        if self.service.node_id is None:
            self._join()
        try:
            link = self.service.link
            reply = self._post("heartbeat", {"node_id": self.service.node_id, "loaded": self.service.span,
                                             "hop_ms": link.hop_ms if link else None,
                                             "compute_ms": link.compute_ms if link else None,
                                             "peer_ms": self._peer_ms or None})
            self._peer_ms = {}
        except LookupError:
            self.on_event("ailo node: coordinator forgot this node; joining again")
            self.service.node_id = None
            return
        self._time_peers(reply.get("peers") or [])
        span = reply.get("span")
        if span and (span["start"], span["end"]) != self.service.span:
            self.on_event(f"ailo node: loading {span['label']}")
            self.service.load(span["start"], span["end"])
            self.on_event(f"ailo node: ready, {len(self.service.tensor_names)} tensors "
                          f"({self.service.tensor_bytes / 1e6:.1f} MB) read")
            self._post("heartbeat", {"node_id": self.service.node_id, "loaded": self.service.span})

    def _time_peers(self, peers: list[dict]) -> None:
        """Round trips to the nodes that may follow this one in a route (the coordinator names
        them), each at most every PEER_PROBE_EVERY_S: the best of two GETs of their info page
        (the first may pay the connection set-up). The coordinator routes through short hops."""
        now = time.monotonic()
        for peer in peers[:16]:
            if self.stop.is_set():  # shutting down: leave at once
                break
            pid, url = str(peer.get("node_id", "")), str(peer.get("url", ""))
            if not pid or not url.startswith(("http://", "https://")) or \
                    now - self._peer_at.get(pid, -1e9) < PEER_PROBE_EVERY_S:
                continue
            self._peer_at[pid] = now
            best = None
            for _ in range(2):
                t0 = time.perf_counter()
                try:
                    self._peers.get(f"{url.rstrip('/')}/v1/node/info").raise_for_status()
                except httpx.HTTPError:
                    break
                best = min(best or 1e9, (time.perf_counter() - t0) * 1000)
            if best is not None:
                self._peer_ms[pid] = round(best, 2)

    def run(self) -> None:
        """Loop until `stop` is set; outages back off and retry, refusals raise JoinRefused."""
        while not self.stop.is_set():
            try:
                self.step()
                if self.failures:
                    self.on_event(f"ailo node: coordinator back after {self.failures} failed attempts")
                self.failures, wait = 0, self.interval
            except (httpx.HTTPError, CoordinatorBusy) as exc:
                if self.failures == 0:
                    self.outages += 1
                    self.on_event(f"ailo node: coordinator unavailable ({exc}); backing off")
                wait = self.policy.delay(self.failures)
                self.failures += 1
                log.warning("coordinator unavailable: %s", exc)
            self.stop.wait(wait)

    def leave(self) -> None:
        if self.service.node_id is not None:
            try:
                self._post("leave", {"node_id": self.service.node_id})
            except (httpx.HTTPError, JoinRefused, LookupError):
                pass
        self._http.close()
        self._peers.close()


def available_memory(device: str) -> int:
    """Bytes this node can offer by default: free accelerator memory, else MemAvailable."""
    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info()[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
