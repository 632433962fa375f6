"""Room registry: which nodes are in which room, which span each serves, who is alive.

A room names a model (a `ModelSpec`) and a number of node slots. Nodes join advertising
their memory; when the slots are filled the planner splits the model over them in join
order, and every later node becomes a replica of the span with the fewest live nodes that
fits its memory (an orphaned span first). A node is routable when it has loaded its span,
heartbeats within the timeout and has not been given up on by the router. State lives in
memory behind one lock: joins arrive on the event loop, generations run in worker threads.
"""
from __future__ import annotations

import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ailo.errors import DomainError
from ailo.inference.plan import Plan, PlanError, Span, fewest_spans, plan_room, span_need
from ailo.inference.spec import ModelSpec


class RoomError(DomainError):
    """A request the room cannot serve; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 409, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason or {400: "bad_request", 403: "forbidden", 404: "not_found", 409: "conflict",
                                 503: "unavailable"}.get(status, "refused")


@dataclass
class NodeRecord:
    node_id: str
    address: str | None
    url: str
    memory: int
    joined_at: float
    last_seen: float
    span: int | None = None
    loaded: tuple[int, int] | None = None
    failed: str | None = None
    failed_at: float = 0.0
    active: int = 0
    served: int = 0
    checks: int = 0     # spot checks of this node's hops (ailo.inference.verify)
    strikes: int = 0    # convictions; the node loses its slot at the room's limit
    link_token: str | None = None  # secret the node gave at join: it takes pushed frames (links.py)
    hop_ms: float | None = None      # measured: its push to the next node (its report), or our relay hop
    compute_ms: float | None = None  # measured: its span's compute per frame (its report)
    peer_ms: dict[str, float] = field(default_factory=dict)  # measured round trip to next-span nodes (its report)
    coordinator_ms: float | None = None  # measured: our round trip to it (route posts), moving average


@dataclass
class Room:
    room_id: str
    spec: ModelSpec
    slots: int
    context: int
    dtype_bytes: int
    tokenizer: str | None = None
    checkpoint: str | None = None  # folder the coordinator serves span weights from (browser nodes)
    placement: str = "spread"      # "spread": one span per slot; "fewest": fewest nodes that fit, rest replicas
    chat_template: str | None = None  # the checkpoint's own (ailo.inference.chat); None: the transcript
    special_tokens: dict[str, str] | None = None  # bos_token / eos_token the chat template names
    created_at: float = field(default_factory=time.time)
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    plan: Plan | None = None
    checks: Counter = field(default_factory=Counter)                      # verdict status -> count
    events: deque = field(default_factory=lambda: deque(maxlen=50))      # mismatches, disputes, evictions
    banned: set[str] = field(default_factory=set)                         # wallets evicted for cheating
    strikes: Counter = field(default_factory=Counter)  # per wallet (node id if unsigned): a re-join keeps them

    def span_of(self, node: NodeRecord) -> Span | None:
        return None if self.plan is None or node.span is None else self.plan.spans[node.span]


class RoomRegistry:
    def __init__(self, *, heartbeat_interval: float = 2.0, heartbeat_timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self._clock = clock
        self._rooms: dict[str, Room] = {}
        self._lock = threading.RLock()
        self._rr: dict[tuple[str, int], int] = {}  # per span: one shared counter starves replicas when
        # route() asks for an even number of spans (every span then sees the same parity)

    # ----- rooms --------------------------------------------------------------------------
    def create_room(self, room_id: str, spec: ModelSpec, slots: int, *, context: int = 2048,
                    tokenizer: str | None = None, dtype_bytes: int | None = None,
                    checkpoint: str | None = None, placement: str = "spread", chat_template: str | None = None,
                    special_tokens: dict[str, str] | None = None) -> Room:
        if not room_id or "/" in room_id:
            raise RoomError("room id must be a non-empty name without '/'", 400)
        if not 1 <= slots <= spec.n_units:
            raise RoomError(f"slots must be between 1 and {spec.n_units} (half-layers of the model)", 400)
        if placement not in ("spread", "fewest"):
            raise RoomError("placement is 'spread' (one span per slot) or 'fewest' (fewest spans that fit)", 400)
        with self._lock:
            if room_id in self._rooms:
                raise RoomError(f"room {room_id!r} already exists", 409)
            room = Room(room_id, spec, slots, min(context, spec.max_positions), dtype_bytes or spec.dtype_bytes,
                        tokenizer, checkpoint, placement=placement, chat_template=chat_template,
                        special_tokens=special_tokens)
            self._rooms[room_id] = room
            return room

    def get(self, room_id: str) -> Room:
        with self._lock:
            room = self._rooms.get(room_id)
        if room is None:
            raise RoomError(f"no room {room_id!r}", 404)
        return room

    def rooms(self) -> list[Room]:
        with self._lock:
            return list(self._rooms.values())

    def delete_room(self, room_id: str) -> None:
        with self._lock:
            if self._rooms.pop(room_id, None) is None:
                raise RoomError(f"no room {room_id!r}", 404)

    # ----- membership ---------------------------------------------------------------------
    def alive(self, node: NodeRecord) -> bool:
        return node.failed is None and self._clock() - node.last_seen <= self.heartbeat_timeout

    def ready(self, room: Room, node: NodeRecord) -> bool:
        span = room.span_of(node)
        return span is not None and node.loaded == (span.start, span.end) and self.alive(node)

    def join(self, room_id: str, *, url: str, memory: int, fingerprint: str, address: str | None = None,
             link_token: str | None = None) -> NodeRecord:
        """`address` is the signer of the join (its reward address). A URL already used by a
        live node of ANOTHER owner is refused; the same owner (a restart) replaces its old record."""
        room = self.get(room_id)
        if fingerprint != room.spec.fingerprint():
            raise RoomError(f"checkpoint does not match room {room_id!r}'s model "
                            f"({room.spec.name or room.spec.family}, fingerprint {room.spec.fingerprint()})", 409)
        if memory <= 0:
            raise RoomError("memory must be positive", 400)
        if address is not None and address in room.banned:
            raise RoomError(f"wallet {address} lost its place in room {room_id!r} after failed spot checks", 403,
                            "banned")
        now = self._clock()
        with self._lock:
            for other in list(room.nodes.values()):  # a restarted node reuses its URL: forget the old one
                if other.url == url:
                    if other.address != address and self.alive(other):
                        raise RoomError(f"URL {url} is served by a live node of another wallet", 409, "url_in_use")
                    del room.nodes[other.node_id]
            node = NodeRecord(secrets.token_hex(16), address, url, int(memory), now, now, link_token=link_token)
            node.strikes = room.strikes.get(address, 0) if address else 0  # leaving does not wipe a record
            if room.plan is None:
                for other in list(room.nodes.values()):
                    if not self.alive(other):
                        del room.nodes[other.node_id]
                waiting = list(room.nodes.values()) + [node]
                if len(waiting) == room.slots:
                    memory = [n.memory for n in waiting]
                    try:
                        if room.placement == "fewest":
                            plan, chosen = fewest_spans(room.spec, memory, dtype_bytes=room.dtype_bytes,
                                                        context=room.context)
                        else:
                            plan, chosen = plan_room(room.spec, memory, dtype_bytes=room.dtype_bytes,
                                                     context=room.context), list(range(len(waiting)))
                    except PlanError as exc:
                        raise RoomError(str(exc), 409) from None
                    room.plan = plan
                    for i, k in enumerate(chosen):
                        waiting[k].span = i
                    for n in waiting:
                        if n.span is None:
                            try:
                                n.span = self._replica_span(room, n.memory)
                            except RoomError:  # fits no span of this plan: joined, serves nothing
                                pass
            else:
                node.span = self._replica_span(room, node.memory)
            room.nodes[node.node_id] = node
            return node

    def _replica_span(self, room: Room, memory: int) -> int:
        assert room.plan is not None
        fits = [s for s in room.plan.spans
                if span_need(room.spec, s.start, s.end, room.dtype_bytes, room.context) <= memory]
        if not fits:
            smallest = min(room.plan.need_bytes)
            raise RoomError(f"node memory {memory / 1e9:.2f} GB is too small for any span of room "
                            f"{room.room_id!r} (smallest needs {smallest / 1e9:.2f} GB)", 409)
        live = {s.index: 0 for s in fits}
        for n in room.nodes.values():
            if n.span in live and self.alive(n):
                live[n.span] += 1
        return min(live, key=lambda i: (live[i], i))

    def owned(self, room: Room, node_id: str, owner: str | None) -> NodeRecord:
        """The node, if `owner` (the request's signer) registered it; 404 / 403 otherwise."""
        node = room.nodes.get(node_id)
        if node is None:
            raise RoomError(f"node {node_id} is not in room {room.room_id!r}; join again", 404)
        if owner is not None and node.address != owner:
            raise RoomError(f"node {node_id} belongs to another wallet", 403, "not_owner")
        return node

    def heartbeat(self, room_id: str, node_id: str, loaded: tuple[int, int] | None,
                  owner: str | None = None, hop_ms: float | None = None,
                  compute_ms: float | None = None, peer_ms: dict[str, float] | None = None) -> NodeRecord:
        room = self.get(room_id)
        with self._lock:
            node = self.owned(room, node_id, owner)
            now = self._clock()
            if node.failed is not None and now - node.failed_at >= self.heartbeat_interval:
                node.failed = None  # alive after all (e.g. a slow answer): routable again
            node.last_seen = now
            node.loaded = tuple(loaded) if loaded else None
            if hop_ms is not None:
                node.hop_ms = round(float(hop_ms), 2)
            if compute_ms is not None:
                node.compute_ms = round(float(compute_ms), 3)
            for peer, ms in (peer_ms or {}).items():  # only nodes of this room; bounded by its size
                if peer in room.nodes and peer != node_id and 0 <= float(ms) < 1e6:
                    node.peer_ms[peer] = round(float(ms), 2)
            return node

    def peers(self, room_id: str, node_id: str, limit: int = 16) -> list[dict]:
        """The nodes a node should time its round trip to: those that may follow it in a route
        (the next span's live nodes), so `route` can pick short hops."""
        room = self.get(room_id)
        with self._lock:
            node = room.nodes.get(node_id)
            if node is None or node.span is None or room.plan is None or node.span + 1 >= len(room.plan.spans):
                return []
            nxt = [n for n in room.nodes.values() if n.span == node.span + 1 and self.alive(n)]
            return [{"node_id": n.node_id, "url": n.url} for n in nxt[:limit]]

    def observe_coordinator(self, node: NodeRecord, ms: float) -> None:
        """Our round trip to a node (a pushed request's route post), moving average."""
        with self._lock:
            old = node.coordinator_ms
            node.coordinator_ms = round(ms if old is None else 0.8 * old + 0.2 * ms, 2)

    def observe_hop(self, node: NodeRecord, ms: float) -> None:
        """A relayed hop's time as the coordinator saw it (moving average)."""
        with self._lock:
            node.hop_ms = round(ms if node.hop_ms is None else 0.8 * node.hop_ms + 0.2 * ms, 2)

    def leave(self, room_id: str, node_id: str, owner: str | None = None) -> None:
        room = self.get(room_id)
        with self._lock:
            self.owned(room, node_id, owner)
            room.nodes.pop(node_id, None)

    def mark_failed(self, room_id: str, node_id: str, reason: str) -> None:
        with self._lock:
            node = self.get(room_id).nodes.get(node_id)
            if node is not None:
                node.failed, node.failed_at = reason, self._clock()

    def record_check(self, room_id: str, verdict: dict, culprit: str | None, strikes_to_evict: int) -> bool:
        """Count a spot-check verdict; strike the culprit's wallet, and at the limit evict every
        node of that wallet and bar it. Strikes belong to the wallet, not the node record: a
        cheater who leaves and re-joins (or runs several nodes) keeps counting towards eviction.
        True when a strike was recorded."""
        try:
            room = self.get(room_id)
        except RoomError:
            return False
        with self._lock:
            room.checks[verdict["status"]] += 1
            checked = room.nodes.get(verdict["node_id"])
            if checked is not None:
                checked.checks += 1
            if verdict["status"] != "ok" or culprit is not None:
                room.events.append({"time": time.time(), **verdict})
            node = room.nodes.get(culprit) if culprit else None
            if node is None:
                return False
            key = node.address or node.node_id
            room.strikes[key] += 1
            mine = [n for n in room.nodes.values() if (n.address or n.node_id) == key]
            for n in mine:
                n.strikes = room.strikes[key]
            if room.strikes[key] >= strikes_to_evict:
                for n in mine:
                    room.nodes.pop(n.node_id, None)
                if node.address:
                    room.banned.add(node.address)
                room.events.append({"time": time.time(), "status": "evicted", "node_id": node.node_id,
                                    "address": node.address, "strikes": room.strikes[key],
                                    "nodes": [n.node_id for n in mine]})
            return True

    # ----- routing ------------------------------------------------------------------------
    def candidates(self, room_id: str, span_index: int, exclude: set[str] = frozenset(),
                   rotate: bool = True) -> list[NodeRecord]:
        """Ready nodes of a span, least busy first, rotating among equals (`rotate=False`: a
        look-up, e.g. for spot-check referees, that must not shift the routing turn)."""
        room = self.get(room_id)
        with self._lock:
            nodes = [n for n in room.nodes.values()
                     if n.span == span_index and n.node_id not in exclude and self.ready(room, n)]
            turn = self._rr.get((room_id, span_index), 0) + int(rotate)
            self._rr[(room_id, span_index)] = turn
            k = turn % len(nodes) if nodes else 0
            nodes = nodes[k:] + nodes[:k]
            return sorted(nodes, key=lambda n: n.active)

    def route(self, room_id: str) -> list[NodeRecord]:
        """One ready node per span, in span order, or RoomError(503) naming the missing spans.
        Among a span's least busy replicas the one with the shortest measured round trip from
        the previous pick wins (`peer_ms`, timed by the nodes; unmeasured pairs keep the turn);
        for the first span our own `coordinator_ms` (one not measured yet is tried first)."""
        room = self.get(room_id)
        if room.plan is None:
            raise RoomError(f"room {room_id!r} is still forming: {len(room.nodes)}/{room.slots} nodes joined", 503)
        route, missing = [], []
        for span in room.plan.spans:
            c = self.candidates(room_id, span.index)
            if c and route:
                prev = route[-1].peer_ms
                c = sorted(c, key=lambda n: (n.active, prev.get(n.node_id, float("inf"))))
            elif c:  # the first span: nearest to us (we send it the first frame); unmeasured ones get tried
                c = sorted(c, key=lambda n: (n.active, n.coordinator_ms or 0.0))
            if c:
                route.append(c[0])
            else:
                missing.append(span.label)
        if missing:
            raise RoomError(f"room {room_id!r} has no live node for {', '.join(missing)}", 503)
        return route

    def set_active(self, node: NodeRecord, delta: int, served: bool = False) -> None:
        with self._lock:
            node.active += delta
            node.served += int(served)

    # ----- views --------------------------------------------------------------------------
    def state(self, room: Room) -> str:
        if room.plan is None:
            return "forming"
        spans = {n.span for n in room.nodes.values() if self.ready(room, n)}
        return "ready" if len(spans) == len(room.plan.spans) else "degraded"

    def view(self, room: Room) -> dict:
        with self._lock:
            nodes = [{"node_id": n.node_id, "address": n.address, "url": n.url, "memory": n.memory,
                      "span": n.span, "ready": self.ready(room, n), "alive": self.alive(n), "failed": n.failed,
                      "served": n.served, "checks": n.checks, "strikes": n.strikes,
                      "hop_ms": n.hop_ms, "compute_ms": n.compute_ms, "peer_ms": dict(n.peer_ms),
                      "coordinator_ms": n.coordinator_ms,
                      "push": n.link_token is not None} for n in room.nodes.values()]
            return {"id": room.room_id, "model": room.spec.name or room.spec.family, "family": room.spec.family,
                    "placement": room.placement,
                    "fingerprint": room.spec.fingerprint(), "slots": room.slots, "context": room.context,
                    "state": self.state(room), "has_tokenizer": room.tokenizer is not None,
                    "chat": None if room.tokenizer is None else "checkpoint" if room.chat_template else "transcript",
                    "plan": room.plan.to_dict() if room.plan else None, "nodes": nodes,
                    "verification": {"checks": dict(room.checks), "events": list(room.events)[-20:],
                                     "banned": sorted(room.banned)}}
