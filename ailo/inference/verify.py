"""Spot checks of node outputs: is a node really computing its span? (issue 10, part 3)

Unit of audit: one span of one request. When a request starts, each span is chosen for audit
with probability `p` (default 10 %, so 10 % of all hops are checked); nodes cannot tell. For an
audited span the coordinator keeps what it sent the node and every answer; when the request is
done it re-runs the span ONCE over the whole sequence on a *referee* (one batched prefill, far
cheaper than re-running each hop's prefix) and compares every hop's rows:

- referees, in order: the room's coordinator-side reference (the operator's checkpoint,
  float32, loaded span by span on first use) when there is one, then ready replicas of the
  same span owned by OTHER wallets (a node's own replica cannot vouch for it; a replica of the
  last span returns only the final position's logits, so only the last hop is compared there);
- per hop, distance = ‖got − want‖₂ / ‖want‖₂ over its rows (hidden states, or the last span's
  logits) in float32; the verdict takes the worst hop, so one cheated hop among many is not
  diluted; tolerance = the loosest of the two answers' dtypes (float32 1e-3, float16 2e-2,
  bfloat16 5e-2): honest float16 / bfloat16 nodes stay far below it, zeros (1.0), noise (≈ 1.4)
  or a skipped half-layer (≥ 0.08 measured, bench/verify.py) far above;
- a mismatch against the reference convicts the node; against a replica it is re-checked on
  the next referee: if that one agrees with the node, the first replica lied (it gets the
  strike); with no second referee the audit is *disputed*: the node is not paid for the
  request, nobody gets a strike.

A convicted node is not paid for that request, gets a strike, and loses its slot (and may not
rejoin the room with that wallet) after `strikes_to_evict` strikes. Audits run on a small
thread pool; the request's rewards wait for them.

Detection: a node that cheats in every request escapes n audits-or-not with probability
(1 − p)ⁿ, so it is caught within ⌈ln 0.01 / ln(1 − p)⌉ = 44 of its requests with probability
≥ 99 % at p = 10 % (regardless of how many tokens each request has).
"""
from __future__ import annotations

import logging
import math
import random
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ailo.inference.units import RequestCache
from ailo.inference.loader import load_span
from ailo.inference.rooms import NodeRecord, Room, RoomRegistry
from ailo.inference.transport import HttpNodeClient
from ailo.inference.wire import Frame

log = logging.getLogger(__name__)

DEFAULT_P = 0.10
STRIKES_TO_EVICT = 3
RTOL = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def requests_for_detection(p: float, confidence: float = 0.99) -> int:
    """Requests a node cheating in every request survives with probability < 1 − confidence."""
    return math.ceil(math.log(1 - confidence) / math.log(1 - p))


def tolerance(*dtypes: torch.dtype) -> float:
    return max(RTOL.get(d, RTOL[torch.bfloat16]) for d in dtypes)


def distance(got: torch.Tensor, want: torch.Tensor) -> float:
    """Relative L2 distance in float32; inf for a shape mismatch or non-finite values."""
    if got.shape != want.shape:
        return math.inf
    g, w = got.float(), want.float()
    d = float(torch.linalg.vector_norm(g - w) / (torch.linalg.vector_norm(w) + 1e-12))
    return d if math.isfinite(d) else math.inf


@dataclass
class SpanAudit:
    """One span of one finished request: `inputs` = every position sent to the node since its
    cache was (re)built (ids or hidden states), `outputs[i]` its answer to hop i, which covered
    positions [ends[i-1], ends[i])."""

    room_id: str
    request_id: str
    span_index: int
    span: tuple[int, int]
    label: str
    last: bool
    node: NodeRecord
    inputs: torch.Tensor
    outputs: list[torch.Tensor]
    ends: list[int]


@dataclass
class Verdict:
    request_id: str
    span: str
    node_id: str
    address: str | None
    status: str                  # ok | mismatch | disputed | unverifiable
    distance: float | None = None
    tolerance: float | None = None
    by: str | None = None        # "reference" or the referee node's id
    culprit: str | None = None   # node id judged wrong (the node itself, or a lying referee)
    hops: int = 0                # hops compared

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["distance"] is not None:
            d["distance"] = round(d["distance"], 6) if math.isfinite(d["distance"]) else "inf"
        return d

    @property
    def unpaid(self) -> bool:
        """The checked node loses this request's reward."""
        return self.status == "disputed" or (self.status == "mismatch" and self.culprit == self.node_id)


class ReferenceSpans:
    """The operator's checkpoint as a trusted referee, on the coordinator's CPU (float32)."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        self._spans: dict[tuple[int, int], torch.nn.Module] = {}
        self._lock = threading.Lock()

    def run(self, span: tuple[int, int], x: torch.Tensor) -> torch.Tensor:
        """The span over every position of `x`: hidden states (1, L, H), or on the last span the
        logits of EVERY position (1, L, V) — a node answers only the last one per hop."""
        with self._lock, torch.inference_mode():
            model = self._spans.get(span)
            if model is None:
                model = self._spans[span] = load_span(self.dir, span[0], span[1], dtype="float32").model
            head, model.head = model.head, None
            try:
                out = model(x, 0, RequestCache())
            finally:
                model.head = head
            return out if head is None else head.lm_head(head.norm(out)).float()


def hop_distances(audit: SpanAudit, want: torch.Tensor) -> list[float]:
    """Distance of each hop's answer to the referee's rows (a node referee on the last span
    gives only the final position: then only the last hop is compared). Last-span answers are
    (rows, vocab) logits or, on the pushed path at temperature 0, (rows,) greedy token ids; a
    hop whose answer was cut by a later rollback (None) is not compared."""
    if audit.last and want.dim() == 2:
        got = next((o for o in reversed(audit.outputs) if o is not None), None)
        return [] if got is None else [_last_distance(got[-1:], want)]
    out, start = [], 0
    for got, end in zip(audit.outputs, audit.ends):
        if got is not None:
            if audit.last:
                rows = got.shape[0]
                out.append(_last_distance(got, want[0, end - rows:end]))
            else:
                out.append(distance(got, want[:, start:end]))
        start = end
    return out


def _last_distance(got: torch.Tensor, want: torch.Tensor) -> float:
    """Logits: relative L2. Greedy ids: how far below the referee's best logit the chosen
    token's is, in standard deviations of the row (0 for an honest node; a near-tie stays tiny)."""
    if got.dtype != torch.int64:
        return distance(got, want)
    w = want.float()
    if got.dim() != 1 or got.shape[0] != w.shape[0] or bool((got < 0).any()) or bool((got >= w.shape[-1]).any()):
        return math.inf
    chosen = w.gather(-1, got.view(-1, 1)).squeeze(-1)
    gap = float(((w.max(-1).values - chosen) / (w.std(-1) + 1e-12)).max())
    return gap if math.isfinite(gap) else math.inf


class SpotChecker:
    def __init__(self, registry: RoomRegistry, p: float = DEFAULT_P,
                 references: Callable[[Room], ReferenceSpans | None] | None = None, *,
                 strikes_to_evict: int = STRIKES_TO_EVICT, timeout: float = 30.0, workers: int = 2,
                 seed: int | None = None, client_factory: Callable[[], object] = HttpNodeClient):
        if not 0.0 <= p <= 1.0:
            raise ValueError("spot-check probability must be in [0, 1]")
        self.registry, self.p, self.references = registry, p, references
        self.strikes_to_evict, self.timeout = strikes_to_evict, timeout
        self.client_factory = client_factory  # how referee nodes are reached (HTTP, or page nodes' sockets)
        self._rng = random.Random(seed)  # unpredictable to nodes: they never learn which hop is checked
        self._rng_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="spot-check")

    def sample(self) -> bool:
        if self.p <= 0:
            return False
        with self._rng_lock:
            return self._rng.random() < self.p

    def submit(self, audit: SpanAudit) -> Future:
        return self._pool.submit(self.judge, audit)

    # ----- judging ------------------------------------------------------------------------
    def _referees(self, rec: SpanAudit) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        try:
            room = self.registry.get(rec.room_id)
            ref = self.references(room) if self.references is not None else None
        except Exception as exc:  # no reference for this room: replicas only
            log.info("no reference for room %s: %s", rec.room_id, exc)
            ref = None
        if ref is not None:
            out.append(("reference", ref))
        try:
            replicas = self.registry.candidates(rec.room_id, rec.span_index, exclude={rec.node.node_id},
                                                rotate=False)
        except Exception:
            replicas = []
        out += [(n.node_id, n) for n in replicas if n.address != rec.node.address]
        return out

    def _run(self, referee: object, rec: SpanAudit) -> torch.Tensor:
        if isinstance(referee, ReferenceSpans):
            return referee.run(rec.span, rec.inputs)
        node: NodeRecord = referee  # type: ignore[assignment]
        client, rid = self.client_factory(), f"check-{uuid.uuid4().hex}"
        try:
            raw = client.forward(node.url, Frame(rid, 0, rec.span, rec.inputs, True).encode(), self.timeout)
            return Frame.decode(raw).tensor
        finally:
            client.release(node.url, rid)
            client.close()

    def judge(self, rec: SpanAudit) -> Verdict:
        base = dict(request_id=rec.request_id, span=rec.label, node_id=rec.node.node_id, address=rec.node.address,
                    hops=len(rec.outputs))
        results: list[tuple[str, float, float]] = []  # (referee, distance to the node's answer, tolerance)
        for name, referee in self._referees(rec):
            try:
                want = self._run(referee, rec)
            except Exception as exc:  # an unreachable referee proves nothing either way
                log.info("referee %s for %s unavailable: %s", name, rec.label, exc)
                continue
            tol = tolerance(rec.outputs[-1].dtype, want.dtype)
            results.append((name, max(hop_distances(rec, want), default=0.0), tol))
            dist = results[-1][1]
            if dist <= tol:
                if len(results) == 1:
                    verdict = Verdict(**base, status="ok", distance=dist, tolerance=tol, by=name)
                else:  # the first referee (a replica) disagreed with two honest answers: it lied
                    first = results[0][0]
                    verdict = Verdict(**base, status="ok", distance=dist, tolerance=tol, by=name, culprit=first)
                break
            if name == "reference" or len(results) == 2:
                verdict = Verdict(**base, status="mismatch", distance=dist, tolerance=tol, by=name,
                                  culprit=rec.node.node_id)
                break
        else:
            if results:
                name, dist, tol = results[0]
                verdict = Verdict(**base, status="disputed", distance=dist, tolerance=tol, by=name)
            else:
                verdict = Verdict(**base, status="unverifiable")
        self.registry.record_check(rec.room_id, verdict.to_dict(), verdict.culprit, self.strikes_to_evict)
        return verdict


def references_from_library(library) -> Callable[[Room], ReferenceSpans | None]:
    """Referees from the coordinator's checkpoint library (`--room-checkpoints`), one per folder."""
    cache: dict[Path, ReferenceSpans] = {}
    lock = threading.Lock()

    def reference(room: Room) -> ReferenceSpans | None:
        folder = library.root / library.resolve(room.spec, getattr(room, "checkpoint", None))
        with lock:
            if folder not in cache:
                cache[folder] = ReferenceSpans(folder)
            return cache[folder]

    return reference
