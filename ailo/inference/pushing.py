"""Coordinator side of pushed pipelines (node side and trust model: `links.py`).

`PushHub` keeps one asyncio loop with kept-alive HTTP connections to every node (no per-hop
set-up) and the requests waiting for their last span's output. A generation thread calls
`PushRoute.through()`: route the nodes once per route (in parallel, one round trip per request,
not per token), push the first frame, wait for the output the last node pushes back (checked:
signed by that node's wallet, for a request that waits). Node reports of a failed hop become
the same `_HopFailed` the relay path raises, so failover and cache rebuilds are shared.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field

import httpx
import torch

from ailo.inference.links import H_LINK, SignedFrame, refusal_entry
from ailo.inference.transport import CacheMiss, NodeUnavailable
from ailo.inference.wire import BATCH_TYPE, CONTENT_TYPE, SIG_BYTES, Frame, WireError, encode_batch


class HopError(Exception):
    def __init__(self, index: int, status: int, detail: str):
        super().__init__(detail)
        self.index, self.status = index, status


PROBE_TIMEOUT = 3.0  # s: how long a node's successor gets to answer us before a blame sticks
COHORT_WAIT_S = 0.003  # the longest a first frame waits for the others of its cohort (expect_pushes)


@dataclass
class _Wait:
    hops: list[tuple[str | None, tuple[int, int]]]   # (wallet, span) of each route position
    urls: list[str] = field(default_factory=list)    # each route position's node URL (blame checks)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    received: list[SignedFrame] = field(default_factory=list)  # the last node's signed outputs


class PushHub:
    """Thread-safe; one per coordinator."""

    def __init__(self) -> None:
        self._waiting: dict[str, _Wait] = {}
        self._lock = threading.Lock()
        self._outbox: dict[tuple[str, str], list] = {}  # (node URL, link token) -> frames to push (hub loop only)
        self._cohort: set[str] = set()  # requests whose next frame is expected now (expect_pushes)
        ready = threading.Event()
        self._http: httpx.AsyncClient | None = None

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self._http = httpx.AsyncClient(limits=httpx.Limits(max_connections=512, max_keepalive_connections=256))
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True, name="push-hub").start()
        ready.wait()

    # ----- called by generation threads ------------------------------------------------------
    def call(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def open(self, rid: str, hops: list[tuple[str | None, tuple[int, int]]], urls: list[str] | None = None) -> None:
        with self._lock:
            old = self._waiting.get(rid)
            self._waiting[rid] = _Wait(hops, list(urls or []), received=old.received if old else [])

    def expect(self, rid: str) -> concurrent.futures.Future:
        with self._lock:
            w = self._waiting[rid]
            w.future = concurrent.futures.Future()
            return w.future

    def received(self, rid: str) -> list[SignedFrame]:
        with self._lock:
            w = self._waiting.get(rid)
            return list(w.received) if w else []

    def clear_received(self, rid: str) -> None:
        with self._lock:
            w = self._waiting.get(rid)
            if w is not None:
                w.received.clear()

    def close(self, rid: str) -> None:
        self._cohort.discard(rid)
        with self._lock:
            self._waiting.pop(rid, None)

    async def route_all(self, items: list[tuple[str, str, dict]], timeout: float,
                        times: list[float | None] | None = None) -> list[str | None]:
        """POST each node its place; an error text per node that refused or did not answer.
        `times` gets each node's round trip in ms (None where it failed)."""
        async def one(k: int, url: str, token: str, payload: dict) -> str | None:
            for attempt in (0, 1):  # a route is idempotent: once more on a kept-alive connection the peer closed
                try:
                    t0 = time.perf_counter()
                    r = await self._http.post(f"{url}/v1/node/route", json=payload, headers={H_LINK: token},
                                              timeout=timeout)
                    if times is not None and r.status_code == 200:
                        times[k] = (time.perf_counter() - t0) * 1000
                    break
                except httpx.TransportError as exc:
                    if attempt or isinstance(exc, httpx.TimeoutException):
                        return f"{type(exc).__name__}: {exc or 'connection lost'}"
                except httpx.HTTPError as exc:
                    return f"{type(exc).__name__}: {exc or 'connection lost'}"
            return None if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:300]}"
        return list(await asyncio.gather(*(one(k, *item) for k, item in enumerate(items))))

    async def push(self, url: str, token: str, body: bytes, timeout: float, rid: str = "") -> str | None:
        """Send a request's first frame to its first node; frames of requests that go there at the
        same moment leave together, as one batch (the node runs them as one forward)."""
        fut = self.loop.create_future()
        box = self._outbox.setdefault((url, token), [])
        box.append((body, fut))
        self._cohort.discard(rid)
        if len(box) == 1:
            self.loop.create_task(self._flush(url, token, timeout))
        return await fut

    def expect_pushes(self, rids: list[str]) -> None:
        """Outputs of these requests just arrived together (their last node batched them): their
        next frames are about to be pushed, so a flush waits for them (at most COHORT_WAIT_S)."""
        if len(rids) > 1:
            self._cohort.update(rids)

    async def _flush(self, url: str, token: str, timeout: float) -> None:
        deadline = self.loop.time() + COHORT_WAIT_S
        while self._cohort and self.loop.time() < deadline:
            await asyncio.sleep(0.0005)
        items = self._outbox.pop((url, token))
        if len(items) == 1:
            content, kind = items[0][0], CONTENT_TYPE
        else:  # from the coordinator (link token): the per-frame signatures are not used
            content, kind = encode_batch([(body, bytes(SIG_BYTES)) for body, _ in items]), BATCH_TYPE
        try:
            r = await self._http.post(f"{url}/v1/node/push", content=content, timeout=timeout,
                                      headers={H_LINK: token, "content-type": kind})
            err = None if r.status_code == 202 else f"HTTP {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as exc:
            err = f"{type(exc).__name__}: {exc or 'connection lost'}"
        for _, fut in items:
            if not fut.done():
                fut.set_result(err)

    async def fetch_received(self, url: str, token: str, rid: str, timeout: float) -> list[SignedFrame]:
        r = await self._http.get(f"{url}/v1/node/requests/{rid}/received", headers={H_LINK: token}, timeout=timeout)
        r.raise_for_status()
        if r.json().get("complete") is False:
            raise ValueError("the node kept only part of this request's frames")
        return [SignedFrame.from_json(f) for f in r.json()["frames"]]

    async def probe(self, urls: list[str], timeout: float) -> int | None:
        """Index of the first node that does not answer its info page, else None."""
        async def one(url: str) -> bool:
            try:
                return (await self._http.get(f"{url}/v1/node/info", timeout=timeout)).status_code == 200
            except httpx.HTTPError:
                return False
        alive = await asyncio.gather(*(one(u) for u in urls))
        return next((k for k, ok in enumerate(alive) if not ok), None)

    # ----- called by the coordinator's endpoints ---------------------------------------------
    def deliver(self, rid: str, signer: str, body: bytes, signature: str) -> tuple[int, str, str]:
        """The last node's output for `rid`: (status, reason, detail) to answer it with."""
        try:
            frame = Frame.decode(body)
        except WireError as exc:
            return 400, "bad_frame", f"bad frame: {exc}"
        if frame.request_id != rid:
            return 400, "bad_frame", "frame names another request"
        with self._lock:
            w = self._waiting.get(rid)
            if w is None:
                return 403, "not_routed", f"no request {rid} waits for an output"
            if signer != w.hops[-1][0]:
                return 403, "wrong_sender", f"request {rid} takes its output from {w.hops[-1][0]}, not {signer}"
            if w.future.done():
                return 409, "unexpected", f"request {rid} is not waiting for an output now"
            w.received.append(SignedFrame(body, signer, signature))
            w.future.set_result(frame)
        return 202, "", ""

    async def hop_error(self, rid: str, signer: str, span: tuple[int, int] | None, failed: str, status: int,
                        detail: str, evidence: dict | None = None) -> tuple[int, str, str]:
        """A node's report that it ("self") or its successor ("next") could not go on.

        Blaming the successor takes evidence, or any node could have its neighbour replaced
        (and unpaid) by saying so: the successor's own signed refusal of this request (its
        status decides: 409 = rebuild its cache, 421/5xx = it cannot serve, anything else =
        it refused what the reporter sent, so the reporter is at fault), else a check by us —
        the successor not answering us either is blamed, one that answers leaves the blame
        with the reporter, which could not deliver."""
        with self._lock:
            w = self._waiting.get(rid)
            if w is None:
                return 403, "not_routed", f"no request {rid} waits"
            mine = [k for k, (a, s) in enumerate(w.hops) if a == signer and (span is None or s == span)]
            if not mine:
                return 403, "wrong_sender", f"{signer} is not on the route of request {rid}"
            k = mine[0]
            if failed == "next" and k + 1 >= len(w.hops):
                return 409, "unexpected", "the last span has no next node"
        if failed == "next":
            k, status, detail = await self._judge(rid, w, k, status, detail, evidence)
        with self._lock:
            if self._waiting.get(rid) is not w or w.future.done():
                return 409, "unexpected", "nothing to fail"
            w.future.set_exception(HopError(k, status, f"reported by {signer}: {detail}"))
        return 202, "", ""

    async def _judge(self, rid: str, w: _Wait, k: int, status: int, detail: str,
                     evidence: dict | None) -> tuple[int, int, str]:
        """(route index at fault, status, detail) for node k's report that node k + 1 failed."""
        nxt = w.hops[k + 1][0]
        entry = refusal_entry(evidence, nxt, rid) if isinstance(evidence, dict) and nxt else None
        if entry is not None:
            said = int(entry.get("status", 0)) if str(entry.get("status", "")).isdigit() else 0
            why = f"{entry.get('reason')}: {str(entry.get('detail', ''))[:300]}"
            if said == 409:
                return k + 1, 409, f"its successor lost the request's cache ({why})"
            if said == 421 or said >= 500:
                return k + 1, 502, f"its successor cannot serve the request ({why})"
            return k, 502, f"its successor refused what it sent ({why})"
        url = w.urls[k + 1] if k + 1 < len(w.urls) else None
        alive = url is not None and await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self.probe([url], PROBE_TIMEOUT), self.loop)) is None
        if alive:
            return k, 502, f"could not reach its successor, which answers the coordinator ({detail})"
        return k + 1, 502 if status != 409 else 409, f"its successor does not answer the coordinator either ({detail})"


def hop_cause(exc: HopError) -> Exception:
    return CacheMiss(str(exc)) if exc.status == 409 else NodeUnavailable(str(exc))


def replay(pairs: list[tuple[Frame, torch.Tensor | None]], last: bool):
    """(inputs, outputs, ends) of a span's hops since its cache was last built, positions that a
    later hop rolled back (rejected drafts) cut off: what the spot check re-runs and compares."""
    hops: list[list] = []  # [start, x, out]
    for fin, out in pairs:
        if fin.reset:
            hops.clear()
        s = fin.start
        while hops and hops[-1][0] >= s:
            hops.pop()
        if hops and hops[-1][0] + hops[-1][1].shape[1] > s:
            hs, x, o = hops[-1]
            keep = s - hs
            if o is not None:
                rows = o.shape[0] if last else o.shape[1]
                o = (o[:keep] if rows == x.shape[1] else None) if last else o[:, :keep]
            hops[-1] = [hs, x[:, :keep], o]
        hops.append([s, fin.tensor, out])
    if not hops:
        return None
    inputs = torch.cat([h[1] for h in hops], dim=1)
    return inputs, [h[2] for h in hops], [h[0] + h[1].shape[1] for h in hops]


class PushPath:
    """One request's pushed pipeline: routes sent once per route, frames in, output back.
    Raises HopError(index, status, detail) for whatever went wrong where (status 409: rebuild)."""

    def __init__(self, hub: PushHub, request_id: str, timeout: float):
        self.hub, self.rid, self.timeout = hub, request_id, timeout
        self._routed: tuple | None = None
        self.sent: list[Frame] = []  # what the coordinator pushed to the first span (audits of span 0)
        self.route_ms: list[float | None] = []  # our round trip to each routed node (its route POST)

    def through(self, route: list, spans: list, frame: Frame) -> Frame:
        key = tuple(n.node_id for n in route)
        if key != self._routed:
            items = []
            for k, node in enumerate(route):
                nxt = route[k + 1] if k + 1 < len(route) else None
                items.append((node.url, node.link_token, {
                    "request_id": self.rid, "prev": route[k - 1].address if k else None,
                    "next_url": nxt.url if nxt else None,
                    "next_span": [spans[k + 1].start, spans[k + 1].end] if nxt else None}))
            try:
                self.route_ms = [None] * len(route)
                errors = self.hub.call(self.hub.route_all(items, self.timeout, self.route_ms), self.timeout + 5)
            except concurrent.futures.TimeoutError:
                raise HopError(0, 502, "routing the request timed out") from None
            for k, err in enumerate(errors):
                if err is not None:
                    raise HopError(k, 502, f"route refused: {err}")
            self.hub.open(self.rid, [(n.address, (s.start, s.end)) for n, s in zip(route, spans)],
                          [n.url for n in route])
            self._routed = key
        future = self.hub.expect(self.rid)
        if frame.reset:
            self.sent.clear()
            self.hub.clear_received(self.rid)
        self.sent.append(frame)
        try:
            err = self.hub.call(self.hub.push(route[0].url, route[0].link_token, frame.encode(), self.timeout,
                                              self.rid), self.timeout + 5)
        except concurrent.futures.TimeoutError:
            err = "pushing the first frame timed out"
        if err is not None:
            raise HopError(0, 502, err)
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            try:
                dead = self.hub.call(self.hub.probe([n.url for n in route], 3.0), 10.0)
            except concurrent.futures.TimeoutError:
                dead = None
            if dead is None:  # everyone is up but the output never came: rebuild the caches
                raise HopError(len(route) - 1, 409, f"no output within {self.timeout:g} s") from None
            raise HopError(dead, 502, f"no output within {self.timeout:g} s; node not answering") from None

    def audit_pairs(self, route: list, k: int) -> list[tuple[Frame, torch.Tensor]] | None:
        """(input frame, output) of each hop of span k since its cache was built, from the frames
        its neighbours hold signed by their senders (what the node was given and what it signed);
        None when they cannot be had, do not verify or do not pair up."""
        try:
            ins = list(self.sent) if k == 0 else [Frame.decode(f.body) for f in self._signed_raw(route[k], route[k - 1].address)]
            if k + 1 < len(route):
                outs = [Frame.decode(f.body) for f in self._signed_raw(route[k + 1], route[k].address)]
            else:
                got = self.hub.received(self.rid)
                if any(f.address != route[k].address or not f.valid() for f in got):
                    return None
                outs = [Frame.decode(f.body) for f in got]
        except (httpx.HTTPError, WireError, ValueError, KeyError, concurrent.futures.TimeoutError):
            return None
        if len(ins) != len(outs) or not ins:
            return None
        return [(fin, out.tensor) for fin, out in zip(ins, outs)]

    def _signed_raw(self, node, signer: str | None) -> list[SignedFrame]:
        frames = self.hub.call(self.hub.fetch_received(node.url, node.link_token, self.rid, self.timeout),
                               self.timeout + 5)
        if any(f.address != signer or not f.valid() for f in frames):
            raise ValueError("a frame is not signed by the route's sender")
        return frames
