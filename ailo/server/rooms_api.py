"""Distributed-inference rooms over HTTP (SPEC R8, R9): an APIRouter the coordinator mounts.

    app.include_router(make_rooms_router(RoomRegistry(), rewards=ledger_service))

Endpoints (JSON unless noted):
  GET    /v1/rooms/presets             the whitepaper's rooms and their plans
  POST   /v1/rooms                     create {id, slots, model: config.json | preset, tokenizer?, context?}
  GET    /v1/rooms, /v1/rooms/{id}     state, plan, nodes
  DELETE /v1/rooms/{id}
  POST   /v1/rooms/{id}/join           node → {node_id, span?, heartbeat_interval}
  POST   /v1/rooms/{id}/heartbeat      node → {span?, state}
  POST   /v1/rooms/{id}/leave
  POST   /v1/rooms/{id}/generate       {prompt | input_ids, max_new_tokens, temperature, top_p, seed,
                                        requester} → NDJSON stream of start/token/failover/done|error events
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ailo.inference.generate import GenerateParams, Generation
from ailo.inference.plan import PRESETS, PlanError, get_preset
from ailo.inference.rewards import InferenceRewardSink
from ailo.inference.rooms import RoomError, RoomRegistry
from ailo.inference.spec import SpecError, spec_from_config
from ailo.wallet import is_valid_address


class CreateRoom(BaseModel):
    id: str
    slots: int | None = None
    model: dict[str, Any] | None = Field(None, description="the checkpoint's config.json")
    preset: str | None = Field(None, description="one of GET /v1/rooms/presets")
    tokenizer: str | None = Field(None, description="'gpt2' or the contents of a tokenizer.json")
    context: int = 2048
    checkpoint: str | None = Field(None, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                   description="checkpoint folder the coordinator serves to browser nodes")


class Join(BaseModel):
    url: str
    memory: int
    fingerprint: str
    address: str | None = None


class Heartbeat(BaseModel):
    node_id: str
    loaded: list[int] | None = None


class Leave(BaseModel):
    node_id: str


class GenerateBody(BaseModel):
    prompt: str | None = None
    input_ids: list[int] | None = None
    max_new_tokens: int = Field(64, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop_at_eos: bool = True
    requester: str | None = Field(None, description="the requester's wallet address (never rewarded)")
    stream: bool = True


def _check_address(address: str | None, what: str) -> None:
    if address is not None and not is_valid_address(address):
        raise RoomError(f"{what} {address!r} is not a wallet address (ailo1 + 72 hex digits)", 400)


def _http(exc: Exception) -> HTTPException:
    status = exc.status if isinstance(exc, RoomError) else 400
    return HTTPException(status, str(exc))


class _Codecs:
    """Tokenizers per room, built once (GPT-2 BPE for 'gpt2', else a tokenizer.json string)."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, room_id: str, source: str | None):
        if source is None:
            return None
        with self._lock:
            if room_id not in self._cache:
                if source == "gpt2":
                    from ailo.tokenizer import load_tokenizer
                    self._cache[room_id] = load_tokenizer()
                else:
                    from tokenizers import Tokenizer
                    self._cache[room_id] = Tokenizer.from_str(source)
            return self._cache[room_id]


def make_rooms_router(rooms: RoomRegistry, rewards: InferenceRewardSink | None = None, *,
                      hop_timeout: float = 30.0, max_failovers: int = 4) -> APIRouter:
    """Room registry, node membership and generation endpoints under /v1/rooms."""
    router = APIRouter(prefix="/v1/rooms", tags=["rooms"])
    codecs = _Codecs()

    def span_dict(room_id: str, node_id: str) -> dict | None:
        room = rooms.get(room_id)
        span = room.span_of(room.nodes[node_id]) if node_id in room.nodes else None
        return span.to_dict() if span else None

    @router.get("/presets")
    def presets() -> list[dict]:
        return [{"name": p.name, "model": p.model.name, "nodes": p.nodes, "node_memory": p.node_memory,
                 "parameters": p.model.param_count(), "context": p.context, "plan": p.plan().to_dict()}
                for p in PRESETS.values()]

    @router.post("", status_code=201)
    def create(body: CreateRoom) -> dict:
        try:
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
            tokenizer = body.tokenizer or ("gpt2" if spec.family == "ailo" else None)
            room = rooms.create_room(body.id, spec, slots, context=body.context, tokenizer=tokenizer,
                                     checkpoint=body.checkpoint)
        except (RoomError, SpecError, PlanError) as exc:
            raise _http(exc) from None
        return rooms.view(room)

    @router.get("")
    def list_rooms() -> list[dict]:
        return [rooms.view(r) for r in rooms.rooms()]

    @router.get("/{room_id}")
    def show(room_id: str) -> dict:
        try:
            return rooms.view(rooms.get(room_id))
        except RoomError as exc:
            raise _http(exc) from None

    @router.delete("/{room_id}")
    def delete(room_id: str) -> dict:
        try:
            rooms.delete_room(room_id)
        except RoomError as exc:
            raise _http(exc) from None
        return {"deleted": room_id}

    @router.post("/{room_id}/join")
    def join(room_id: str, body: Join) -> dict:
        try:
            _check_address(body.address, "node address")
            node = rooms.join(room_id, url=body.url.rstrip("/"), memory=body.memory,
                              fingerprint=body.fingerprint, address=body.address)
            return {"node_id": node.node_id, "room": room_id, "span": span_dict(room_id, node.node_id),
                    "heartbeat_interval": rooms.heartbeat_interval, "heartbeat_timeout": rooms.heartbeat_timeout}
        except RoomError as exc:
            raise _http(exc) from None

    @router.post("/{room_id}/heartbeat")
    def heartbeat(room_id: str, body: Heartbeat) -> dict:
        try:
            node = rooms.heartbeat(room_id, body.node_id, tuple(body.loaded) if body.loaded else None)
            room = rooms.get(room_id)
            return {"node_id": node.node_id, "span": span_dict(room_id, node.node_id), "state": rooms.state(room)}
        except RoomError as exc:
            raise _http(exc) from None

    @router.post("/{room_id}/leave")
    def leave(room_id: str, body: Leave) -> dict:
        try:
            rooms.leave(room_id, body.node_id)
        except RoomError as exc:
            raise _http(exc) from None
        return {"left": body.node_id}

    @router.post("/{room_id}/generate")
    def generate(room_id: str, body: GenerateBody):
        try:
            room = rooms.get(room_id)
            _check_address(body.requester, "requester")
            codec = codecs.get(room_id, room.tokenizer)
            if (body.prompt is None) == (body.input_ids is None):
                raise RoomError("give exactly one of 'prompt' or 'input_ids'", 400)
            if body.prompt is not None and codec is None:
                raise RoomError(f"room {room_id!r} has no tokenizer; send 'input_ids'", 400)
            ids = body.input_ids if body.input_ids is not None else codec.encode(body.prompt).ids
            params = GenerateParams(body.max_new_tokens, body.temperature, body.top_p, body.seed, body.stop_at_eos)
            decode: Callable | None = codec.decode if codec is not None else None
            gen = Generation(rooms, room_id, list(ids), params, requester=body.requester, rewards=rewards,
                             hop_timeout=hop_timeout, max_failovers=max_failovers, decode_text=decode)
        except RoomError as exc:
            raise _http(exc) from None
        if body.stream:
            def lines() -> Iterator[str]:
                for event in gen.events():
                    yield json.dumps(event) + "\n"
            return StreamingResponse(lines(), media_type="application/x-ndjson")
        final = list(gen.events())[-1]
        if final["type"] == "error":
            raise HTTPException(502, final["error"])
        return final

    return router
