"""Coordinator side of a request: route activations through the spans, sample, fail over.

The coordinator embeds nothing itself: token ids go to the first span's node, hidden states
come back and go to the next span's node, and the last span answers with next-token logits.
Each node keeps the request's KV cache, so after the prompt every new token sends ONE
position through the pipeline. When a node fails (connection refused or reset, timeout,
5xx, garbage) the request moves to a live replica of the same span and every span's cache is
rebuilt from the prompt plus the tokens so far; when no replica is live the request ends
with an error event naming the span and the failure. A node that answers 409 lost its cache
(restart, eviction) and is rebuilt in place. Nothing is ever sampled from a partial pipeline.

Two transports share that logic: relayed (we send each span its input and get its output
back) and pushed (issue 28, `pushing.py`: nodes pass activations to each other and only the
last span's output comes back), used when every node of the route can take pushed frames.
At temperature 0 a pass may carry drafted tokens (`draft.py`): the room's own greedy choices
decide, so the output is plain greedy decoding in fewer passes.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ailo.inference.draft import propose
from ailo.inference.plan import Span
from ailo.inference.pushing import HopError, PushHub, PushPath, hop_cause, replay
from ailo.inference.rewards import InferenceRewardSink, failed_settlement, pay_request, settle_failed
from ailo.inference.rooms import NodeRecord, Room, RoomError, RoomRegistry
from ailo.inference.transport import CacheMiss, HttpNodeClient, NodeClient, NodeUnavailable
from ailo.inference.verify import SpanAudit, SpotChecker
from ailo.inference.wire import Frame, WireError

log = logging.getLogger(__name__)


class GenerationError(Exception):
    """The request cannot be completed correctly; the message is shown to the requester."""


@dataclass
class GenerateParams:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_at_eos: bool = True
    transport: str = "auto"  # "auto": nodes push activations to each other when all can; "relay": via us
    draft_tokens: int = 4    # speculative decoding at temperature 0 (draft.py); 0 = off
    stop: tuple[str, ...] = ()  # the answer ends once its text contains one (finish_reason "stop")


def sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> int:
    """Greedy when temperature is 0, else temperature + nucleus (top-p) sampling."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        p, idx = torch.sort(probs, descending=True)
        keep = (torch.cumsum(p, 0) - p) < top_p  # the smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter_(0, idx[keep], p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


@dataclass
class _Stats:
    prefill_bytes: int = 0
    decode_bytes: int = 0
    decode_steps: int = 0
    rebuild_bytes: int = 0
    failovers: int = 0
    passes: int = 0
    drafted: int = 0
    accepted: int = 0


@dataclass
class Generation:
    """One request through one room; `events()` yields dicts (start, token*, failover*, done|error)."""

    registry: RoomRegistry
    room_id: str
    prompt: list[int]
    params: GenerateParams
    requester: str | None = None
    rewards: InferenceRewardSink | None = None
    hop_timeout: float = 30.0
    max_failovers: int = 4
    decode_text: Callable[[list[int]], str] | None = None  # when the room has a tokenizer
    client_factory: Callable[[], NodeClient] = HttpNodeClient
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    checker: SpotChecker | None = None  # spot checks of a random fraction of hops (verify.py)
    push: PushHub | None = None  # node-to-node activations (links.py, pushing.py)

    def __post_init__(self) -> None:
        self.room: Room = self.registry.get(self.room_id)
        spec = self.room.spec
        if not self.prompt:
            raise RoomError("empty prompt", 400)
        if any(not 0 <= t < spec.vocab for t in self.prompt):
            raise RoomError(f"token ids must be in [0, {spec.vocab})", 400)
        if len(self.prompt) >= spec.max_positions:
            raise RoomError(f"prompt of {len(self.prompt)} tokens leaves no room in the model's "
                            f"{spec.max_positions}-token context", 400)
        self.route: list[NodeRecord] = self.registry.route(self.room_id)  # RoomError(503) if incomplete
        self.spans: list[Span] = list(self.room.plan.spans)
        self.tokens: list[int] = list(self.prompt)
        self.processed: dict[str, str | None] = {}  # node_id -> address, in first-use order
        self.failed: set[str] = set()
        self.steps: dict[str, int] = {}  # node_id -> emitted tokens whose forward pass it processed
        self.fault: NodeRecord | None = None  # the node whose failure ended the request
        self.stats = _Stats()
        self._used: dict[str, NodeRecord] = {}
        self._client: NodeClient = self.client_factory()
        self._notes: list[dict] = []  # failover events, streamed before the next token or error
        # spans audited in this request (verify.py): what each was sent and answered since its cache was built
        chosen = [k for k in range(len(self.spans)) if self.checker is not None and self.checker.sample()]
        self._audit: dict[int, tuple[list, list, list]] = {k: ([], [], []) for k in chosen}
        self._pushed = PushPath(self.push, self.request_id, self.hop_timeout) if self.push is not None else None
        self._last_pushed = False

    def _pushable(self) -> bool:
        return (self._pushed is not None and self.params.transport != "relay"
                and all(getattr(n, "link_token", None) for n in self.route))

    def _through_push(self, ids: list[int], start: int, reset: bool, every: bool) -> tuple[torch.Tensor, int]:
        greedy = self.params.temperature <= 0
        first = Frame(self.request_id, start, (self.spans[0].start, self.spans[0].end),
                      torch.tensor([ids], dtype=torch.long), reset, every, greedy)
        for n in self.route:
            self._used.setdefault(n.node_id, n)
        try:
            out = self._pushed.through(self.route, self.spans, first).tensor
        except HopError as exc:
            raise _HopFailed(exc.index, hop_cause(exc)) from None
        finally:
            for n, ms in zip(self.route, self._pushed.route_ms):  # timed when the route was sent
                if ms is not None:
                    self.registry.observe_coordinator(n, ms)
            self._pushed.route_ms = []
        rows = len(ids) if every else 1
        want = (rows,) if greedy else (rows, self.room.spec.vocab)
        ok = out.dtype == torch.int64 and bool(((out >= 0) & (out < self.room.spec.vocab)).all()) if greedy \
            else bool(torch.isfinite(out).all())
        if tuple(out.shape) != want or not ok:
            raise _HopFailed(len(self.spans) - 1, NodeUnavailable(
                f"answered {tuple(out.shape)} {out.dtype} (expected {want}) or values out of range"))
        for n in self.route:
            self.processed.setdefault(n.node_id, n.address)
        self._last_pushed = True
        return out, len(ids) * 8 + out.numel() * out.element_size()

    # ----- pipeline -----------------------------------------------------------------------
    def _through(self, ids: list[int], start: int, reset: bool, every: bool) -> tuple[torch.Tensor, int]:
        if self._pushable():
            return self._through_push(ids, start, reset, every)
        self._last_pushed = False
        x = torch.tensor([ids], dtype=torch.long)
        moved = 0
        for k, span in enumerate(self.spans):
            node = self.route[k]
            self._used.setdefault(node.node_id, node)
            body = Frame(self.request_id, start, (span.start, span.end), x, reset).encode()
            t0 = time.perf_counter()
            try:
                raw = self._client.forward(node.url, body, self.hop_timeout)
                self.registry.observe_hop(node, (time.perf_counter() - t0) * 1000)
                out = Frame.decode(raw).tensor
            except WireError as exc:
                raise _HopFailed(k, NodeUnavailable(f"bad frame: {exc}")) from None
            except (NodeUnavailable, CacheMiss) as exc:
                raise _HopFailed(k, exc) from None
            want = (1, self.room.spec.vocab) if span.last else (1, len(ids), self.room.spec.hidden)
            if tuple(out.shape) != want or not torch.isfinite(out).all():
                raise _HopFailed(k, NodeUnavailable(f"answered shape {tuple(out.shape)} (expected {want}) "
                                                    "or non-finite values"))
            moved += len(body) + len(raw)
            self.processed.setdefault(node.node_id, node.address)
            if k in self._audit:
                sent, answers, ends = self._audit[k]
                if start == 0:  # the node's cache was (re)built: earlier hops are superseded
                    sent.clear(), answers.clear(), ends.clear()
                sent.append(x)
                answers.append(out)
                ends.append(start + x.shape[1])
            x = out
        return x, moved

    def _forward(self, new_ids: list[int], start: int, every: bool = False) -> torch.Tensor:
        """Logits (1, vocab) of the last position — every position's with `every` — or, on the
        pushed path at temperature 0, the greedy token ids (rows,)."""
        ids, reset, attempts = new_ids, start == 0, 0
        while True:
            try:
                logits, moved = self._through(ids, start, reset, every)
            except _HopFailed as hop:
                attempts += 1
                span, node = self.spans[hop.index], self.route[hop.index]
                if attempts > self.max_failovers:
                    self.fault = node
                    raise GenerationError(f"request aborted after {self.max_failovers} failovers; last: "
                                          f"{span.label} on node {node.node_id}: {hop.cause}") from None
                if isinstance(hop.cause, NodeUnavailable):
                    self._replace(hop.index, str(hop.cause))
                ids, start, reset = self.tokens[:start] + ids, 0, True  # rebuild every span's cache
                continue
            if reset and start == 0 and attempts:
                self.stats.rebuild_bytes += moved
            elif start > 0:
                self.stats.decode_bytes += moved
                self.stats.decode_steps += 1
            else:
                self.stats.prefill_bytes += moved
            self.stats.passes += 1
            return logits[-(len(new_ids) if every else 1):]

    def _replace(self, k: int, reason: str) -> None:
        span, node = self.spans[k], self.route[k]
        self.failed.add(node.node_id)
        self.processed.pop(node.node_id, None)  # its share of the work is being redone elsewhere
        self.registry.mark_failed(self.room_id, node.node_id, reason)
        log.warning("room %s: %s on node %s failed: %s", self.room_id, span.label, node.node_id, reason)
        options = self.registry.candidates(self.room_id, span.index, exclude=self.failed)
        if not options:
            self.fault = node
            raise GenerationError(f"{span.label} failed on node {node.node_id} ({reason}) and no live replica "
                                  f"holds that span; request {self.request_id} aborted, nothing was generated "
                                  "past the failure")
        self.registry.set_active(node, -1)
        self.registry.set_active(options[0], +1)
        self.route[k] = options[0]
        self.stats.failovers += 1
        self._notes.append({"type": "failover", "span": span.label, "from": node.node_id,
                            "to": options[0].node_id, "reason": reason})

    def _collect_audits(self) -> list[SpanAudit]:
        """The audited spans' hops: recorded by us on the relay path, fetched signed from the
        neighbours on the pushed path (before the nodes are released)."""
        out = []
        for k in self._audit:
            s = self.spans[k]
            if self._last_pushed:
                pairs = self._pushed.audit_pairs(self.route, k)
                got = replay(pairs, s.last) if pairs else None
                if got is None:
                    log.warning("request %s: %s's frames cannot be audited", self.request_id, s.label)
                    continue
                inputs, answers, ends = got
            else:
                sent, answers, ends = self._audit[k]
                if not answers:
                    continue
                inputs = torch.cat(sent, dim=1)
            out.append(SpanAudit(self.room_id, self.request_id, k, (s.start, s.end), s.label, s.last,
                                 self.route[k], inputs, answers, ends))
        return out

    def _drain(self) -> list[dict]:
        notes, self._notes = self._notes, []
        return notes

    # ----- request ------------------------------------------------------------------------
    def events(self) -> Iterator[dict]:
        p, spec = self.params, self.room.spec
        budget = min(p.max_new_tokens, spec.max_positions - len(self.prompt))
        gen = torch.Generator().manual_seed(p.seed) if p.seed is not None else None
        eos = set(spec.eos_token_ids) if p.stop_at_eos else set()
        if self.push is not None:  # the request id may have changed since construction (a paid request's)
            self._pushed = PushPath(self.push, self.request_id, self.hop_timeout)
        for n in self.route:
            self.registry.set_active(n, +1)
        completed, emitted, finish, audits = False, "", "length", []
        try:
            yield {"type": "start", "request_id": self.request_id, "room": self.room_id,
                   "prompt_tokens": len(self.prompt),
                   "route": [{"span": s.label, "node_id": n.node_id} for s, n in zip(self.spans, self.route)]}
            new, start, i = list(self.prompt), 0, 0
            k = p.draft_tokens if p.temperature <= 0 else 0
            while i < budget:
                drafts = propose(self.tokens, min(k, budget - i - 1)) if start > 0 and k and self._pushable() else []
                out = self._forward(new + drafts, start, every=bool(drafts))
                yield from self._drain()
                if out.dtype == torch.int64:
                    picks = out.view(-1).tolist()
                elif drafts:
                    picks = out.argmax(-1).tolist()
                else:
                    picks = [sample(out[-1], p.temperature, p.top_p, gen)]
                emit = [picks[0]]
                for j, d in enumerate(drafts):  # the room's own choice decides; a draft only saves a pass
                    if picks[j] != d:
                        break
                    emit.append(picks[j + 1])
                self.stats.drafted += len(drafts)
                self.stats.accepted += len(emit) - 1
                for tok in emit[:budget - i]:
                    self.tokens.append(tok)
                    piece: str | None = None
                    if self.decode_text is not None:
                        piece = ""
                        text = self.decode_text(self.tokens[len(self.prompt):])
                        if not text.endswith("\ufffd"):
                            piece, emitted = text[len(emitted):], text
                    yield {"type": "token", "index": i, "token": tok, "text": piece}
                    i += 1
                    for n in self.route:  # delivered work: this token's pass went through every routed node
                        self._used.setdefault(n.node_id, n)
                        self.steps[n.node_id] = self.steps.get(n.node_id, 0) + 1
                    if tok in eos:
                        finish = "eos"
                        break
                    if p.stop and any(s in emitted for s in p.stop):
                        finish = "stop"
                        break
                if finish != "length":
                    break
                start, new = len(self.tokens) - 1, [self.tokens[-1]]
            audits = self._collect_audits()
            completed = True
        except GenerationError as exc:
            yield from self._drain()
            yield {"type": "error", "request_id": self.request_id, "error": str(exc), **self._settle_failed(budget)}
        finally:
            for n in self.route:
                self.registry.set_active(n, -1, served=completed and n.node_id in self.processed)
            for n in self._used.values():
                if n.node_id not in self.failed:
                    self._client.release(n.url, self.request_id)
            self._client.close()
            if self.push is not None:
                self.push.close(self.request_id)
        if completed:
            checks = [self.checker.submit(a) for a in audits]
            verdicts = []
            for future in checks:  # rewards wait for this request's audits
                try:
                    verdicts.append(future.result(timeout=max(self.hop_timeout, 1.0) * 2))
                except Exception as exc:  # a check that cannot finish proves nothing
                    log.warning("spot check for request %s did not finish: %s", self.request_id, exc)
            unpaid = {v.node_id for v in verdicts if v.unpaid}
            cheats = {self.processed[n] for n in unpaid if n in self.processed}
            earners = [a for n, a in self.processed.items() if n not in unpaid and a not in cheats]
            paid, errors = pay_request(self.rewards, self.request_id, earners, self.requester)
            generated = self.tokens[len(self.prompt):]
            steps = max(self.stats.decode_steps, 1)
            yield {"type": "done", "request_id": self.request_id, "tokens": generated,
                   "text": self.decode_text(generated) if self.decode_text is not None else None,
                   "finish_reason": finish, "nodes": list(self.processed), "payees": paid,
                   "checks": [v.to_dict() for v in verdicts],
                   "reward_errors": errors, "failovers": self.stats.failovers,
                   "stats": {"prefill_bytes": self.stats.prefill_bytes, "decode_bytes": self.stats.decode_bytes,
                             "decode_steps": self.stats.decode_steps, "rebuild_bytes": self.stats.rebuild_bytes,
                             "bytes_per_token": self.stats.decode_bytes / steps,
                             "transport": "push" if self._last_pushed else "relay", "passes": self.stats.passes,
                             "drafted": self.stats.drafted, "accepted": self.stats.accepted,
                             "acceptance": round(self.stats.accepted / self.stats.drafted, 3)
                             if self.stats.drafted else None,
                             "node_compute_ms": round(getattr(self._client, "node_compute_ms", 0.0), 3)}}


    def _settle_failed(self, budget: int) -> dict:
        """Settlement by delivered work (rewards.failed_settlement): nodes paid per processed step,
        the unprocessed share refunded unless the requester's own node caused the failure."""
        work = [(self._used[n].address, steps) for n, steps in self.steps.items()]
        tokens = len(self.tokens) - len(self.prompt)
        fault = self.fault.address if self.fault is not None else None
        payouts, refund = failed_settlement(work, tokens, len(self.spans), budget, self.requester, fault)
        paid, refunded = settle_failed(self.rewards, self.request_id, payouts, refund)
        return {"refunded": refunded, "payees": paid, "delivered_tokens": tokens,
                "fault_node": self.fault.node_id if self.fault is not None else None,
                "own_fault": fault is not None and fault == self.requester}


class _HopFailed(Exception):
    def __init__(self, index: int, cause: Exception):
        super().__init__(str(cause))
        self.index, self.cause = index, cause
