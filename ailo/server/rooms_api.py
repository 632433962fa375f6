"""Distributed-inference rooms over HTTP (SPEC R8, R9): an APIRouter the coordinator mounts.

    app.include_router(make_rooms_router(RoomRegistry(), rewards=ledger_service, policy=RoomPolicy(...)))

Endpoints (JSON unless noted; who may call them: docs/ARCHITECTURE.md, "Rooms: who may do what"):
  GET    /v1/rooms/presets             anyone: the whitepaper's rooms and their plans
  POST   /v1/rooms                     OPERATOR (Bearer token): create {id, slots, model | preset, tokenizer?, context?}
  GET    /v1/rooms, /v1/rooms/{id}     anyone: state, plan, nodes, price, verification events
  DELETE /v1/rooms/{id}                OPERATOR
  POST   /v1/rooms/{id}/join           signed by the node's wallet → {node_id, span?, heartbeat_interval}
  POST   /v1/rooms/{id}/heartbeat      signed by the node's owner → {span?, state}
  POST   /v1/rooms/{id}/leave          signed by the node's owner
  POST   /v1/rooms/{id}/generate       signed by the requester {prompt | input_ids, max_new_tokens, temperature,
                                        top_p, seed, stop?, payment?} or {messages: [{role, content}], ...} → NDJSON stream of start/token/failover/done|error
Refusals are JSON {"detail": "...", "reason": "<code>"} with a 4xx status (429 carries Retry-After).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ailo.inference.chat import MAX_TEMPLATE_CHARS, ChatError, render_chat
from ailo.inference.links import H_ADDRESS, H_SIGNATURE, frame_message, frame_signer, verified
from ailo.inference.pushing import PushHub
from ailo.inference.wire import BATCH_TYPE, Frame, WireError, decode_batch
from ailo.inference.auth import AuthError, RateLimiter, RequestVerifier, check_node_url, check_operator
from ailo.inference.generate import GenerateParams, Generation
from ailo.inference.plan import PRESETS, PlanError, get_preset
from ailo.inference.rewards import InferencePayments, InferenceRewardSink, request_price
from ailo.inference.room_tokenizers import RoomTokenizers
from ailo.inference.rooms import RoomError, RoomRegistry
from ailo.inference.families import family, param_count, spec_from_config
from ailo.inference.spec import SpecError
from ailo.inference.transport import HttpNodeClient, NodeClient
from ailo.inference.verify import DEFAULT_P, ReferenceSpans, SpotChecker
from ailo.ledger.errors import LedgerError
from ailo.server.schemas import (NDJSON, OPERATOR_ONLY, GenerateDone, RoomView, json_body, reply, signed_json)

MAX_BODY_BYTES = 4 * 1024 * 1024  # a tokenizer.json rides along with `create`


class CreateRoom(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    slots: int | None = Field(None, ge=1, le=100_000)
    model: dict[str, Any] | None = Field(None, description="the checkpoint's config.json")
    preset: str | None = Field(None, description="one of GET /v1/rooms/presets")
    tokenizer: str | None = Field(None, description="'gpt2' or the contents of a tokenizer.json")
    context: int = Field(2048, ge=1, le=1_000_000)
    checkpoint: str | None = Field(None, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                   description="checkpoint folder the coordinator serves to browser nodes")
    placement: Literal["spread", "fewest"] = Field(
        "spread", description="spread: one span per slot; fewest: the fewest nodes that hold the model serve "
        "its spans (fewer hops over wide-area links), the others are replicas")
    chat_template: str | None = Field(None, min_length=1, max_length=MAX_TEMPLATE_CHARS,
                                      description="the checkpoint's tokenizer_config.json chat_template (Jinja)")
    special_tokens: dict[Literal["bos_token", "eos_token"], Annotated[str, Field(max_length=64)]] | None = Field(
        None, description="bos_token / eos_token the chat template names")


class Join(BaseModel):
    url: str = Field(max_length=512)
    memory: int = Field(ge=1, le=2 ** 53)
    fingerprint: str = Field(max_length=128)
    address: str | None = Field(None, description="optional; must equal the signer (rewards go to the signer)")
    link_token: str | None = Field(None, min_length=16, max_length=128,
                                   description="the node takes pushed frames from its neighbours: the secret "
                                   "the coordinator shows it when routing (ailo/inference/links.py)")


class Heartbeat(BaseModel):
    node_id: str = Field(max_length=64)
    loaded: list[int] | None = Field(None, max_length=2)
    hop_ms: float | None = Field(None, ge=0, le=1e7, description="the node's measured push to its next node")
    compute_ms: float | None = Field(None, ge=0, le=1e7, description="the node's compute per frame")
    peer_ms: dict[Annotated[str, Field(max_length=64)], Annotated[float, Field(ge=0, le=1e6)]] | None = Field(
        None, max_length=64, description="round trips (ms) the node timed to the nodes its heartbeat reply named")


class Leave(BaseModel):
    node_id: str = Field(max_length=64)


class GenerateBody(BaseModel):
    prompt: str | None = Field(None, max_length=200_000)
    input_ids: list[int] | None = Field(None, max_length=200_000)
    messages: list[dict[str, str]] | None = Field(None, min_length=1, max_length=256,
                                                  description="a conversation [{role, content}], through the "
                                                  "room's chat template (ailo.inference.chat)")
    max_new_tokens: int = Field(64, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=100.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2 ** 63 - 1)
    stop_at_eos: bool = True
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list, max_length=4,
                            description="end the answer once its text contains one of these (needs the room's tokenizer)")
    stream: bool = True
    payment: dict[str, Any] | None = Field(None, description="signed PAY_INFERENCE transaction (docs/LEDGER.md)")
    transport: Literal["auto", "relay"] = Field("auto", description="auto: nodes push activations to each other "
                                                "when every node of the route can; relay: every hop via the coordinator")
    draft_tokens: int = Field(4, ge=0, le=16, description="speculative decoding at temperature 0 (0 = off)")


@dataclass
class RoomPolicy:
    """Who may do what, and how often. `allow_private_urls` is for loopback dev rooms, tests and
    the demo; a public coordinator leaves it off so nodes cannot point it at internal services."""

    operator_token: str | None = None
    allow_private_urls: bool = False
    is_registered: Callable[[str], bool] | None = None  # None: any valid signer (dev coordinator, no ledger)
    generate_per_wallet_per_min: float = 60.0
    generate_wallet_burst: int = 10
    generate_per_ip_per_min: float = 240.0
    generate_ip_burst: int = 40
    join_per_ip_per_min: float = 60.0
    frames_per_ip_per_min: float = 60_000.0  # last spans' outputs: one per token of every request they end
    frames_ip_burst: int = 2_000
    join_ip_burst: int = 30


async def _body(request: Request) -> bytes:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise AuthError(413, "too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
    return raw


def _peer(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def make_rooms_router(rooms: RoomRegistry, rewards: InferenceRewardSink | None = None, *,
                      policy: RoomPolicy | None = None, hop_timeout: float = 30.0,
                      max_failovers: int = 4, client_factory: Callable[[], NodeClient] | None = None,
                      verify_p: float = DEFAULT_P,
                      references: Callable[[Any], ReferenceSpans | None] | None = None) -> APIRouter:
    """Room registry, node membership and generation endpoints under /v1/rooms. `client_factory`
    makes the per-request node client (default HTTP; `socket_nodes.RoutingNodeClient` adds page nodes).
    A fraction `verify_p` of hops is spot-checked against `references(room)` or other owners' replicas."""
    policy = policy or RoomPolicy()
    router = APIRouter(prefix="/v1/rooms", tags=["rooms"])
    codecs = RoomTokenizers()
    checker = SpotChecker(rooms, verify_p, references, timeout=hop_timeout,
                          client_factory=client_factory or HttpNodeClient) if verify_p > 0 else None
    verifier = RequestVerifier()
    per_wallet = RateLimiter(policy.generate_per_wallet_per_min, policy.generate_wallet_burst, "wallet")
    per_ip = RateLimiter(policy.generate_per_ip_per_min, policy.generate_ip_burst, "network address")
    joins_per_ip = RateLimiter(policy.join_per_ip_per_min, policy.join_ip_burst, "network address")
    payments = rewards if isinstance(rewards, InferencePayments) else None  # a ledger: requests are paid
    push = PushHub()  # node-to-node activations: routes out, last spans' outputs back
    frames_per_ip = RateLimiter(policy.frames_per_ip_per_min, policy.frames_ip_burst, "network address")

    def price(room) -> int | None:
        return request_price(len(room.plan.spans)) if payments is not None and room.plan is not None else None

    def view(room) -> dict:
        out = {**rooms.view(room), "price": price(room)}
        out["verification"]["p"] = verify_p
        return out

    def charge(payment: dict | None, signer: str, room) -> str:
        """Apply the requester's PAY_INFERENCE to the ledger; returns the paid request id."""
        due = price(room)
        if payment is None:
            raise AuthError(402, "payment_required", f"room {room.room_id!r} costs {due} units per request: send "
                            "'payment', a PAY_INFERENCE transaction signed by your wallet (docs/LEDGER.md)")
        if payment.get("type") != "PAY_INFERENCE" or payment.get("from") != signer:
            raise AuthError(400, "bad_payment", "'payment' must be a PAY_INFERENCE from the request's signer")
        if type(payment.get("amount")) is not int or payment["amount"] < due:
            raise AuthError(402, "underpaid", f"room {room.room_id!r} costs {due} units per request, "
                            f"the payment offers {payment.get('amount')!r}")
        try:
            payments.pay_inference(payment)
        except LedgerError as exc:
            status = 402 if exc.code == "insufficient_funds" else exc.http_status
            raise AuthError(status, exc.code, f"payment refused: {exc}") from None
        return payment["request"]

    async def signed(request: Request, model: type[BaseModel]) -> tuple[str, Any]:
        """(signer, parsed body): signature, replay and registration checked first."""
        raw = await _body(request)
        signer = verifier.verify(request.method, request.url.path, request.headers, raw)
        if policy.is_registered is not None and not policy.is_registered(signer):
            raise AuthError(403, "unregistered", f"wallet {signer} is not registered; run `ailo wallet register NAME`")
        return signer, model.model_validate_json(raw or b"{}")

    def span_dict(room_id: str, node_id: str) -> dict | None:
        room = rooms.get(room_id)
        span = room.span_of(room.nodes[node_id]) if node_id in room.nodes else None
        return span.to_dict() if span else None

    @router.get("/presets")
    def presets() -> list[dict]:
        return [{"name": p.name, "model": p.model.name, "nodes": p.nodes, "node_memory": p.node_memory,
                 "parameters": param_count(p.model), "context": p.context, "plan": p.plan().to_dict()}
                for p in PRESETS.values()]

    @router.post("", status_code=201, openapi_extra={**OPERATOR_ONLY, **json_body(CreateRoom, "a room to create")},
                 responses=reply(RoomView, status=201))
    async def create(request: Request):
        try:
            check_operator(request.headers.get("authorization"), policy.operator_token)
            body = CreateRoom.model_validate_json(await _body(request))
            if (body.model is None) == (body.preset is None):
                raise RoomError("give exactly one of 'model' (a config.json) or 'preset'", 400)
            if body.id == "presets":
                raise RoomError("'presets' is reserved", 400)
            if body.preset is not None:
                preset = get_preset(body.preset)
                spec, slots = preset.model, body.slots or preset.nodes
            else:
                spec, slots = spec_from_config(body.model), body.slots
            if slots is None:
                raise RoomError("'slots' is required with 'model'", 400)
            tokenizer = body.tokenizer or family(spec).default_tokenizer
            if tokenizer is not None:
                codecs.check(tokenizer)
            chat = {"chat_template": body.chat_template, "special_tokens": body.special_tokens} \
                if body.chat_template else {}  # only what a template needs is kept (rooms.json)
            room = rooms.create_room(body.id, spec, slots, context=body.context, tokenizer=tokenizer,
                                     checkpoint=body.checkpoint, placement=body.placement, **chat)
        except ValidationError:
            raise
        except (SpecError, PlanError, ValueError) as exc:  # a config or preset this server cannot plan
            raise RoomError(str(exc), 400) from None
        return JSONResponse(view(room), 201)

    @router.get("")
    def list_rooms() -> list[dict]:
        return [view(r) for r in rooms.rooms()]

    @router.get("/{room_id}", responses=reply(RoomView))
    def show(room_id: str):
        return view(rooms.get(room_id))

    @router.delete("/{room_id}", openapi_extra=OPERATOR_ONLY)
    async def delete(room_id: str, request: Request):
        check_operator(request.headers.get("authorization"), policy.operator_token)
        rooms.delete_room(room_id)
        return {"deleted": room_id}

    @router.post("/{room_id}/join", openapi_extra=signed_json(Join, "the join"))
    async def join(room_id: str, request: Request):
        joins_per_ip.take(_peer(request))
        signer, body = await signed(request, Join)
        if body.address is not None and body.address != signer:
            raise AuthError(400, "address_not_signer", "rewards go to the signing wallet: 'address' must be "
                            f"the signer {signer} (or left out)")
        url = check_node_url(body.url, policy.allow_private_urls)
        node = rooms.join(room_id, url=url, memory=body.memory, fingerprint=body.fingerprint, address=signer,
                          link_token=body.link_token)
        return {"node_id": node.node_id, "room": room_id, "address": signer,
                "span": span_dict(room_id, node.node_id), "heartbeat_interval": rooms.heartbeat_interval,
                "heartbeat_timeout": rooms.heartbeat_timeout}

    @router.post("/{room_id}/heartbeat", openapi_extra=signed_json(Heartbeat, "the heartbeat"))
    async def heartbeat(room_id: str, request: Request):
        signer, body = await signed(request, Heartbeat)
        loaded = tuple(body.loaded) if body.loaded else None
        if loaded is not None and len(loaded) != 2:
            raise RoomError("'loaded' is [start, end]", 400)
        node = rooms.heartbeat(room_id, body.node_id, loaded, owner=signer, hop_ms=body.hop_ms,
                               compute_ms=body.compute_ms, peer_ms=body.peer_ms)
        room = rooms.get(room_id)
        return {"node_id": node.node_id, "span": span_dict(room_id, node.node_id), "state": rooms.state(room),
                "peers": rooms.peers(room_id, node.node_id)}

    @router.post("/{room_id}/leave", openapi_extra=signed_json(Leave, "the leave"))
    async def leave(room_id: str, request: Request):
        signer, body = await signed(request, Leave)
        rooms.leave(room_id, body.node_id, owner=signer)
        return {"left": body.node_id}

    async def node_signed(request: Request, what: str) -> tuple[bytes, str]:
        """A node's push to the coordinator (a frame, a hop report): rate-limited per address,
        signed by the X-Ailo-Address wallet; refusals are AuthErrors (ailo.server.errors answers)."""
        frames_per_ip.take(_peer(request))
        raw = await _body(request)
        signer = frame_signer(request.headers, raw)
        if signer is None:
            raise AuthError(401, "bad_signature", f"{what} is not signed by the X-Ailo-Address wallet")
        return raw, signer

    @router.post("/{room_id}/frames", include_in_schema=False)
    async def frames(room_id: str, request: Request):
        """The last span's outputs of pushed requests, signed by its node (ailo/inference/links.py):
        one frame, or a batch (one signature a frame) when its node ran several requests at once."""
        if not (request.headers.get("content-type") or "").startswith(BATCH_TYPE):
            raw, signer = await node_signed(request, "frame")
            try:
                rid = Frame.decode(raw).request_id
            except WireError as exc:
                return JSONResponse({"detail": f"bad frame: {exc}", "reason": "bad_frame"}, 400)
            status, reason, detail = push.deliver(rid, signer, raw, request.headers.get(H_SIGNATURE, ""))
            return Response(status_code=202) if status == 202 else JSONResponse({"detail": detail, "reason": reason}, status)
        frames_per_ip.take(_peer(request))
        signer = request.headers.get(H_ADDRESS) or ""
        try:
            items = decode_batch(await _body(request))
            rids = [Frame.decode(raw).request_id for raw, _ in items]
        except WireError as exc:
            return JSONResponse({"detail": f"bad batch: {exc}", "reason": "bad_frame"}, 400)
        refused = []
        for rid, (raw, sig) in zip(rids, items):
            if not verified(signer, frame_message(raw), sig.hex()):
                status, reason, detail = 401, "bad_signature", "frame is not signed by the X-Ailo-Address wallet"
            else:
                status, reason, detail = push.deliver(rid, signer, raw, sig.hex())
            if status != 202:
                refused.append({"request_id": rid, "status": status, "reason": reason, "detail": detail})
        push.expect_pushes([rid for rid in rids if rid not in {r["request_id"] for r in refused}])
        if not refused:
            return Response(status_code=202)
        return JSONResponse({"detail": refused[0]["detail"], "reason": refused[0]["reason"], "refused": refused}, 207)

    @router.post("/{room_id}/hop-errors", include_in_schema=False)
    async def hop_errors(room_id: str, request: Request):
        """A node of a pushed request could not run its frame, or reach the next node (blaming the
        next node takes evidence: PushHub.hop_error)."""
        raw, signer = await node_signed(request, "report")
        try:
            d = json.loads(raw)
            span = tuple(int(v) for v in d["span"]) if d.get("span") else None
            evidence = d.get("evidence")
            status, reason, detail = await push.hop_error(
                str(d["request_id"]), signer, span, "next" if d.get("failed") == "next" else "self",
                int(d.get("status", 502)), str(d.get("detail", ""))[:500],
                evidence if isinstance(evidence, dict) else None)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return JSONResponse({"detail": f"bad report: {exc}", "reason": "bad_request"}, 400)
        return Response(status_code=202) if status == 202 else JSONResponse({"detail": detail, "reason": reason}, status)

    @router.post("/{room_id}/generate", openapi_extra=signed_json(GenerateBody, "the request"),
                 responses=reply(GenerateDone, content=NDJSON,
                                 more={502: {"description": "every node of a span failed (stream: false)"},
                                       503: {"description": "the room is forming or a span has no live node"}}))
    async def generate(room_id: str, request: Request):
        try:
            per_ip.take(_peer(request))
            signer, body = await signed(request, GenerateBody)
            per_wallet.take(signer)
            room = rooms.get(room_id)
            codec = await run_in_threadpool(codecs.get, room_id, room.tokenizer)
            if sum(x is not None for x in (body.prompt, body.input_ids, body.messages)) != 1:
                raise RoomError("give exactly one of 'prompt', 'input_ids' or 'messages'", 400)
            if body.prompt is not None and codec is None:
                raise RoomError(f"room {room_id!r} has no tokenizer; send 'input_ids'", 400)
            if body.stop and codec is None:
                raise RoomError(f"room {room_id!r} has no tokenizer: 'stop' strings cannot be matched", 400)
            if body.messages is not None:
                chat = await run_in_threadpool(codecs.chat, room)
                ids = await run_in_threadpool(render_chat, chat, body.messages)
            else:
                ids = body.input_ids if body.input_ids is not None else codec.encode(body.prompt).ids
            params = GenerateParams(body.max_new_tokens, body.temperature, body.top_p, body.seed, body.stop_at_eos,
                                    body.transport, body.draft_tokens, tuple(body.stop))
            decode: Callable | None = codec.decode if codec is not None else None
            gen = Generation(rooms, room_id, list(ids), params, requester=signer, rewards=rewards,
                             hop_timeout=hop_timeout, max_failovers=max_failovers, decode_text=decode,
                             client_factory=client_factory or HttpNodeClient, checker=checker, push=push)
            if payments is not None:  # charged only once the request is routable (a 503 costs nothing)
                gen.request_id = await run_in_threadpool(charge, body.payment, signer, room)
        except ChatError as exc:  # messages the room's chat template cannot render
            raise RoomError(str(exc), 400) from None
        if body.stream:
            def lines() -> Iterator[str]:
                for event in gen.events():
                    yield json.dumps(event) + "\n"
            return StreamingResponse(lines(), media_type="application/x-ndjson")
        final = (await run_in_threadpool(lambda: list(gen.events())))[-1]
        if final["type"] == "error":
            return JSONResponse({"detail": final["error"], "reason": "generation_failed",
                                 "refunded": final.get("refunded", 0)}, 502)
        return final

    return router
