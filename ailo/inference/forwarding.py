"""A node's push worker (issue 28): the frames waiting at this node run as ONE batched forward,
and their outputs leave in one body per destination.

Frames queue as they arrive (`links.accept_push` checked them). The worker takes everything
waiting — one frame when the node is idle, so a lone request pays no delay; many when several
requests reach it at once, which is exactly when batching pays — runs them through
`NodeService.forward_many` (dense layers once for all rows, attention per request over its own
KV cache), signs each output and sends the outputs bound for the same next node (or the
coordinator) together, a `wire` batch, in one HTTP request. Requests that meet at a node
therefore travel on together: with 8 concurrent requests the room moves a few batches per hop
instead of 8 frames.

Failures are reported to the coordinator (`/hop-errors`, signed): "self" when this node could
not run a frame, "next" when the next node did not take it — with the next node's own signed
refusal as evidence when it answered one; without evidence the coordinator checks the next node
itself before blaming it (`pushing.PushHub.hop_error`).
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import time

import httpx

from ailo.errors import DomainError
from ailo.inference.links import H_ADDRESS, H_SIGNATURE, Hop, NodeLink, frame_message, sign_frame
from ailo.inference.wire import BATCH_TYPE, CONTENT_TYPE, MAX_BATCH, Frame, encode_batch

log = logging.getLogger(__name__)


def enqueue(service, accepted: list[tuple[Frame, Hop]]) -> None:
    """Queue checked frames for this node's worker (started with the first frame, on this loop)."""
    link: NodeLink = service.link
    if link.queue is None:
        link.queue = asyncio.Queue()
        # idle connections are dropped before uvicorn's default 5 s keep-alive can close them under a send
        link.http = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=64, keepalive_expiry=4.0),
                                      timeout=30.0)
        asyncio.get_running_loop().create_task(_worker(service, link))
    for item in accepted:
        link.queue.put_nowait(item)


async def _worker(service, link: NodeLink) -> None:
    """Everything waiting, as one forward (on this loop: compute is short and the hand-off to a
    thread costs more), then one send per destination without waiting for the receivers."""
    assert link.queue is not None
    while True:
        batch = [await link.queue.get()]
        while not link.queue.empty() and len(batch) < MAX_BATCH:
            batch.append(link.queue.get_nowait())
        t0 = time.perf_counter()
        try:
            outs = service.forward_many([frame for frame, _ in batch])
        except Exception as exc:  # never let one batch stop the worker
            log.exception("push worker: a batch of %d frames failed", len(batch))
            outs = [exc] * len(batch)
        link.observe("compute_ms", (time.perf_counter() - t0) * 1000)
        link.batches += 1
        link.batched += len(batch)
        groups: dict[str, list[tuple[bytes, Frame]]] = {}
        for (frame, hop), out in zip(batch, outs):
            if isinstance(out, Exception):  # refused (NodeError: 409, 421, 503, 400) or crashed
                status = getattr(out, "status", 500) if isinstance(out, DomainError) else 500
                text = str(out) if status != 500 else f"{type(out).__name__}: {out}"
                asyncio.ensure_future(report(link, frame.request_id, "self", status, text, frame.span))
                continue
            body = Frame(frame.request_id, frame.start, hop.next_span or frame.span, out.tensor, frame.reset,
                         frame.all_logits, frame.greedy).encode()
            target = f"{hop.next_url}/v1/node/push" if hop.next_url else \
                f"{link.coordinator.rstrip('/')}/v1/rooms/{link.room}/frames"
            groups.setdefault(target, []).append((body, frame))
        for target, items in groups.items():
            asyncio.ensure_future(_send(link, target, items, target.endswith("/v1/node/push")))


async def _send(link: NodeLink, url: str, items: list[tuple[bytes, Frame]], to_node: bool) -> None:
    """One frame as before (signature in the headers), several as one batch (one signature each)."""
    assert link.http is not None
    if len(items) == 1:
        content, headers = items[0][0], {"content-type": CONTENT_TYPE, **sign_frame(link.wallet, items[0][0])}
    else:
        key = link.wallet.signing_key
        content = encode_batch([(body, key.sign(frame_message(body)).signature) for body, _ in items])
        headers = {"content-type": BATCH_TYPE, H_ADDRESS: link.wallet.address}
    t0 = time.perf_counter()
    refused: dict[str, dict] = {}
    try:
        r = await link.http.post(url, content=content, headers=headers)
        if r.status_code == 202:
            link.pushed += len(items)
            link.observe("hop_ms", (time.perf_counter() - t0) * 1000)
            return
        evidence = None
        if r.headers.get(H_SIGNATURE):  # the receiver's signed refusal: what it said, provably
            evidence = {"body": base64.b64encode(r.content).decode(), "signature": r.headers[H_SIGNATURE]}
        try:
            refused = {e["request_id"]: e for e in r.json().get("refused", [])}
        except (ValueError, AttributeError, TypeError, KeyError):
            refused = {}
        failures = [(f, refused.get(f.request_id), evidence) for _, f in items
                    if not refused or f.request_id in refused]
        link.pushed += len(items) - len(failures)
        detail = f"HTTP {r.status_code}: {r.text[:300]}"
    except httpx.HTTPError as exc:
        failures = [(f, None, None) for _, f in items]
        detail = f"{type(exc).__name__}: {exc or 'connection lost'}"
    for frame, entry, evidence in failures:
        if not to_node:
            log.warning("coordinator refused the output of %s: %s", frame.request_id, detail)
            continue
        status = int(entry["status"]) if entry else 502
        await report(link, frame.request_id, "next", status, entry["detail"] if entry else detail, frame.span,
                     evidence if entry else None)


async def report(link: NodeLink, rid: str, failed: str, status: int, detail: str,
                 span: tuple[int, int] | None = None, evidence: dict | None = None) -> None:
    """Tell the coordinator that this node ("self") or the next one ("next") could not go on;
    `evidence`: the next node's signed refusal {body, signature} (base64 body, hex signature)."""
    assert link.http is not None
    body = json.dumps({"request_id": rid, "failed": failed, "status": status, "detail": detail[:500],
                       "span": list(span) if span else None, "evidence": evidence}).encode()
    try:
        await link.http.post(f"{link.coordinator.rstrip('/')}/v1/rooms/{link.room}/hop-errors", content=body,
                             headers={"content-type": "application/json", **sign_frame(link.wallet, body)})
    except httpx.HTTPError as exc:
        log.warning("cannot report a hop error for %s: %s", rid, exc)
