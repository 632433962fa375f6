"""Node-to-node activations (issue 28): a node pushes its output straight to the next span's node.

The coordinator relays nothing per token. For each request it sends every node of the route
its place once (`POST /v1/node/route`: who may send this request's frames, where the output
goes), pushes the first frame to the first span's node, and waits for the last span's
node to push the logits back to it (`POST /v1/rooms/{room}/frames` on the coordinator). Each
hop is one one-way trip over a kept-alive connection; the 202 that acknowledges a push travels
back off the critical path.

Trust:
- route and coordinator frames carry the node's link token (`X-Ailo-Link`): a random secret the
  node gave the coordinator in its signed join, so only that coordinator can route it;
- every node-to-node (and node-to-coordinator) frame is signed by the sending node's wallet
  over `ailo-frame/v1|<sha256 hex of the frame bytes>` (`X-Ailo-Address`, `X-Ailo-Signature`);
  the receiver refuses (403) a frame for a request it is not routed for, from any wallet but the
  route's predecessor, or for another span (421);
- each node keeps the signed frames it received for a request (since its cache was last
  built) until the request is released; spot checks fetch them (`GET .../received`), so an
  audit re-runs a span on exactly the inputs its predecessor signed and compares with the
  outputs the node itself signed: a node cannot deny what it sent.
HTTP: ailo/server/node_app.py mounts the three routes; this module checks frames (one, or a
batch with a signature per frame) and logs them; `forwarding.py` runs and sends them on.
Failures: a node that cannot run a frame (409 lost cache, …) or cannot reach the next node reports
it (`POST /v1/rooms/{room}/hop-errors`, signed) and the coordinator fails over as before; a
refused push is answered with the receiver's signed refusal, the evidence a blame needs.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import httpx

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from ailo.errors import Refused
from ailo.inference.wire import BATCH_TYPE, Frame, WireError, decode_batch
from ailo.wallet import AddressError, Wallet, is_valid_address, public_key_from_address, verify_signature

log = logging.getLogger(__name__)

FRAME_PREFIX = "ailo-frame/v1"
REFUSAL_PREFIX = "ailo-refusal/v1"
H_LINK, H_ADDRESS, H_SIGNATURE = "x-ailo-link", "x-ailo-address", "x-ailo-signature"
MAX_ROUTES = 1024
MAX_LOGS = 64                 # requests whose received frames are kept (like the KV caches' LRU)
MAX_LOG_BYTES = 16 * 2 ** 20  # per request; past it the request's audit is unverifiable, not wrong


def frame_message(body: bytes) -> bytes:
    return f"{FRAME_PREFIX}|{hashlib.sha256(body).hexdigest()}".encode("ascii")


def sign_frame(wallet: Wallet, body: bytes) -> dict[str, str]:
    return {H_ADDRESS: wallet.address, H_SIGNATURE: wallet.sign(frame_message(body))}


def frame_signer(headers, body: bytes) -> str | None:
    """The wallet that signed `body`, or None when the signature is missing or wrong."""
    address, sig = headers.get(H_ADDRESS), headers.get(H_SIGNATURE)
    if not address or not sig or not is_valid_address(address):
        return None
    return address if verify_signature(address, frame_message(body), sig) else None


@dataclass
class Hop:
    """This node's place in one request's route."""

    request_id: str
    prev: str | None            # wallet address allowed to push frames here; None = the coordinator only
    next_url: str | None        # where outputs go; None = back to the coordinator (last span)
    next_span: tuple[int, int] | None


@dataclass
class SignedFrame:
    body: bytes
    address: str
    signature: str

    def to_json(self) -> dict:
        return {"body": base64.b64encode(self.body).decode(), "address": self.address, "signature": self.signature}

    @classmethod
    def from_json(cls, d: dict) -> "SignedFrame":
        return cls(base64.b64decode(d["body"]), str(d["address"]), str(d["signature"]))

    def valid(self) -> bool:
        return is_valid_address(self.address) and verify_signature(self.address, frame_message(self.body),
                                                                   self.signature)


@dataclass
class NodeLink:
    """What a node needs to take part in pushed pipelines: its wallet (signs frames), its
    coordinator (where the last span's output and hop errors go) and the link token."""

    wallet: Wallet
    coordinator: str
    room: str
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    routes: OrderedDict = field(default_factory=OrderedDict)       # request id -> Hop
    received: OrderedDict = field(default_factory=OrderedDict)  # request id -> [SignedFrame] since the last reset
    overflow: set[str] = field(default_factory=set)              # requests whose log was cut
    queue: asyncio.Queue | None = None
    http: httpx.AsyncClient | None = None
    pushed: int = 0
    batches: int = 0  # forwards the push worker ran, and the frames they held (forwarding.py)
    batched: int = 0
    hop_ms: float | None = None      # moving average: push to the next node until its 202
    compute_ms: float | None = None  # moving average: this span per frame

    def observe(self, attr: str, ms: float) -> None:
        old = getattr(self, attr)
        setattr(self, attr, ms if old is None else 0.8 * old + 0.2 * ms)

    def authorised(self, headers) -> bool:
        given = headers.get(H_LINK) or ""
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def route(self, hop: Hop) -> None:
        self.routes[hop.request_id] = hop
        self.routes.move_to_end(hop.request_id)
        while len(self.routes) > MAX_ROUTES:
            rid, _ = self.routes.popitem(last=False)
            self.received.pop(rid, None)

    def forget(self, rid: str) -> None:
        self.routes.pop(rid, None)
        self.received.pop(rid, None)
        self.overflow.discard(rid)

    def keep(self, rid: str, frame: SignedFrame, reset: bool) -> None:
        """Log a frame received from a node (what audits re-run), within memory bounds."""
        frames = self.received.setdefault(rid, [])
        self.received.move_to_end(rid)
        if reset:  # the cache is rebuilt: earlier frames are superseded
            frames.clear()
            self.overflow.discard(rid)
        if rid in self.overflow or sum(len(f.body) for f in frames) + len(frame.body) > MAX_LOG_BYTES:
            frames.clear()
            self.overflow.add(rid)
        else:
            frames.append(frame)
        while len(self.received) > MAX_LOGS:
            old, _ = self.received.popitem(last=False)
            self.overflow.add(old)


class LinkRefused(Refused):
    """A push, route or read this node will not take: answered {"detail", "reason"} with `status`
    by the server's one error mapping (ailo/server/errors.py)."""


def link_of(service) -> NodeLink:
    """The node's link (`service`: node.NodeService), or 404 when it has joined no room."""
    if service.link is None:
        raise LinkRefused(404, "no_link", "this node takes no pushed frames (it has not joined a room)")
    return service.link


def accept_route(service, headers, body: bytes) -> Hop:
    """`POST /v1/node/route`: the coordinator tells this node its place in a request's route."""
    link = link_of(service)
    if not link.authorised(headers):
        raise LinkRefused(403, "not_coordinator", "only this node's coordinator may route requests to it")
    try:
        d = json.loads(body)
        span = d.get("next_span")
        hop = Hop(str(d["request_id"]), d.get("prev"), d.get("next_url"),
                  (int(span[0]), int(span[1])) if span else None)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise LinkRefused(400, "bad_route", f"bad route: {exc}") from None
    link.route(hop)
    return hop


def accept_push(service, headers, body: bytes) -> tuple[list[tuple[Frame, Hop]], list[dict]]:
    """`POST /v1/node/push`: check pushed frames — one frame (`wire.CONTENT_TYPE`, signed in the
    headers) or a batch (`wire.BATCH_TYPE`, each frame signed by the X-Ailo-Address wallet) — for
    a routed request, signed by the route's predecessor or sent by the coordinator, for this
    node's span; log them for audits. Returns the accepted (frame, hop) pairs, for the push
    worker (`forwarding.py`), and one refusal {request_id, status, reason, detail} per frame
    refused. A body that cannot be read at all raises LinkRefused."""
    link = link_of(service)
    coordinator = link.authorised(headers)
    if (headers.get("content-type") or "").startswith(BATCH_TYPE):
        try:
            items = decode_batch(body)
        except WireError as exc:
            raise LinkRefused(400, "bad_frame", f"bad batch: {exc}") from None
        address = headers.get(H_ADDRESS)
        signed = [(raw, None if coordinator else (address, sig.hex())) for raw, sig in items]
    else:
        signed = [(body, None if coordinator else (headers.get(H_ADDRESS), headers.get(H_SIGNATURE)))]
    accepted, refused = [], []
    for raw, sig in signed:
        try:
            frame = Frame.decode(raw)
        except WireError as exc:
            raise LinkRefused(400, "bad_frame", f"bad frame: {exc}") from None
        try:
            hop = _admit(service, link, frame, raw, sig)
        except LinkRefused as exc:
            refused.append({"request_id": frame.request_id, "status": exc.status, "reason": exc.reason,
                            "detail": str(exc)})
            continue
        accepted.append((frame, hop))
    return accepted, refused


def _admit(service, link: NodeLink, frame: Frame, raw: bytes, sig: tuple[str | None, str | None] | None) -> Hop:
    """One pushed frame's checks (`sig`: (address, hex signature), None from the coordinator)."""
    hop = link.routes.get(frame.request_id)
    if hop is None:
        raise LinkRefused(403, "not_routed", f"this node is not routed for request {frame.request_id}")
    if sig is not None:
        sender, signature = sig
        if not sender or not signature or not verified(sender, frame_message(raw), signature):
            raise LinkRefused(401, "bad_signature", "frame is not signed by the X-Ailo-Address wallet")
        if sender != hop.prev:
            raise LinkRefused(403, "wrong_sender", f"request {frame.request_id} takes frames from "
                              f"{hop.prev or 'the coordinator'}, not {sender}")
    if service.span is None or frame.span != service.span:
        raise LinkRefused(421, "wrong_span", f"this node serves {service.span}, not {list(frame.span)}")
    if sig is not None:
        link.keep(frame.request_id, SignedFrame(raw, sig[0], sig[1]), frame.reset)
    return hop


@functools.lru_cache(maxsize=4096)
def _verify_key(address: str) -> VerifyKey | None:
    """An address's Ed25519 key, parsed (checksum, hex) once per neighbour rather than per frame."""
    try:
        return VerifyKey(public_key_from_address(address))
    except (AddressError, ValueError, TypeError):
        return None


def verified(address: str, message: bytes, signature_hex: str) -> bool:
    key = _verify_key(address)
    if key is None:
        return False
    try:
        key.verify(message, bytes.fromhex(signature_hex))
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def signed_refusal(wallet: Wallet, refused: list[dict], batch: bool) -> tuple[int, bytes, dict[str, str]]:
    """The answer to a push with refused frames: (status, JSON body, headers), signed by this
    node (`REFUSAL_PREFIX`), so the sender can show the coordinator that the refusal is the
    receiver's own (evidence for blame, `pushing.PushHub.hop_error`)."""
    first = refused[0]
    body = json.dumps({"detail": first["detail"], "reason": first["reason"], "refused": refused}).encode()
    headers = {"content-type": "application/json", H_ADDRESS: wallet.address,
               H_SIGNATURE: wallet.sign(refusal_message(body))}
    return 207 if batch else first["status"], body, headers


def refusal_message(body: bytes) -> bytes:
    return f"{REFUSAL_PREFIX}|{hashlib.sha256(body).hexdigest()}".encode("ascii")


def refusal_entry(evidence: dict, address: str, rid: str) -> dict | None:
    """The refusal of request `rid` inside a node's signed refusal `evidence` {body, signature},
    or None when it is not `address`'s signature or names no such request."""
    try:
        body = base64.b64decode(str(evidence["body"]), validate=True)
        if not verified(address, refusal_message(body), str(evidence["signature"])):
            return None
        entries = json.loads(body)["refused"]
        return next((e for e in entries if isinstance(e, dict) and e.get("request_id") == rid), None)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def received_frames(service, headers, request_id: str) -> dict:
    """`GET /v1/node/requests/{id}/received`: the signed frames an audit re-runs (coordinator only)."""
    link = link_of(service)
    if not link.authorised(headers):
        raise LinkRefused(403, "not_coordinator", "only this node's coordinator may read its frames")
    return {"frames": [f.to_json() for f in link.received.get(request_id, [])],
            "complete": request_id not in link.overflow}
