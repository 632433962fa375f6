"""`ailo api`: an OpenAI-compatible server on the user's own machine, over a coordinator's rooms.

    GET  /v1/models              rooms that can serve now: id = room name, owned_by, price
    POST /v1/completions         {model, prompt, max_tokens, temperature, top_p, stop, seed, n=1, stream}
    POST /v1/chat/completions    {model, messages, ...}: through the room's chat template (ailo.inference.chat)

Non-custodial: the wallet stays in this process. Each request is signed and paid (one
PAY_INFERENCE of the room's price) exactly as `ailo ask` does it (ailo.inference.requester); the
room's NDJSON events are relayed as OpenAI answers or Server-Sent Events ending `data: [DONE]`.
Every answer carries `X-Request-Id` (the room request, which the payment names) and
`X-Ailo-Price` / `X-Ailo-Fee` (units of 1e-8 ALC). Errors are OpenAI-shaped (ailo.api.wire).
"""
from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from ailo.api.wire import (ApiError, BadRequest, ChatRequest, CompletionRequest, StopFilter, completion,
                           finish_reason, refusal_error, sse, usage)
from ailo.inference.requester import RoomRefused, RoomRequester, Unreachable
from ailo.ledger.params import FEE

MAX_BODY_BYTES = 1 << 20


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), exc.status, headers=exc.headers)


class _Relay:
    """One request's room events, opened in a worker thread; `first` is the start event."""

    def __init__(self, requester: RoomRequester, room: str, body: dict[str, Any]):
        self.requester, self.room, self.body = requester, room, body
        self.price: int | None = None
        self.events = self._events()

    def _events(self) -> Iterator[dict]:
        try:
            view = self.requester.room(self.room)
            if not view.get("has_tokenizer"):
                raise BadRequest(f"room {self.room!r} has no tokenizer; the OpenAI API needs text", "model")
            with self.requester.open(self.room, self.body, view=view) as answer:
                self.price = answer.price
                yield from answer.events()
        except RoomRefused as exc:
            raise refusal_error(exc.status, exc.reason, exc.detail, exc.retry_after, self.room) from None
        except Unreachable as exc:
            raise ApiError(502, str(exc), "api_error", "coordinator_unreachable") from None

    def start(self) -> dict:
        first = next(self.events)
        if first.get("type") != "start":
            raise ApiError(502, f"the room answered {first.get('type')!r} first", "api_error", "bad_upstream")
        return first

    def headers(self, start: dict) -> dict[str, str]:
        out = {"X-Request-Id": start["request_id"], "X-Ailo-Room": self.room}
        if self.price is not None:
            out.update({"X-Ailo-Price": str(self.price), "X-Ailo-Fee": str(FEE)})
        return out


def build_api_app(requester: RoomRequester, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="Ailo Network OpenAI-compatible API", version="0.1.0",
                  description="OpenAI's /v1/completions and /v1/chat/completions over a coordinator's rooms, "
                              "paid from the local wallet.")
    owner = urlsplit(requester.coordinator).netloc or requester.coordinator

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    @app.middleware("http")
    async def bearer(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(ApiError(401, "Incorrect API key provided (Authorization: Bearer KEY, as given "
                                            "to `ailo api --api-key`)", "invalid_request_error", "invalid_api_key"))
        return await call_next(request)

    @app.get("/v1/models")
    async def models() -> dict:
        try:
            rooms = await run_in_threadpool(requester.rooms)
        except (RoomRefused, Unreachable) as exc:
            raise ApiError(502, f"cannot list the coordinator's rooms: {exc}", "api_error", "coordinator_unreachable")
        return {"object": "list", "data": [
            {"id": r["id"], "object": "model", "created": 0, "owned_by": owner, "price": r.get("price"),
             "fee": FEE if r.get("price") else None, "family": r.get("family"), "context": r.get("context"),
             "chat_template": r.get("chat")}
            for r in rooms if r.get("state") == "ready" and r.get("has_tokenizer")]}

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise BadRequest(f"body exceeds {MAX_BODY_BYTES} bytes")
        try:
            return model.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            e = exc.errors()[0]
            raise BadRequest(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}",
                             str(e["loc"][0]) if e["loc"] else None) from None

    async def answer(kind: str, req: CompletionRequest | ChatRequest) -> Any:
        relay = _Relay(requester, req.model, req.room_body())
        start = await run_in_threadpool(relay.start)  # refusals (nothing charged) raise here, before any byte
        headers, created = relay.headers(start), int(time.time())
        rid, prompt_tokens = start["request_id"], start["prompt_tokens"]
        stops = StopFilter(req.stops())

        def chunks() -> Iterator[tuple[str, str | None, int]]:
            """(text to send, finish reason once done, completion tokens so far)."""
            received, tokens = "", 0
            for event in relay.events:
                if event["type"] == "token":
                    tokens += 1
                    piece = event.get("text") or ""
                    received += piece
                    yield stops.feed(piece), None, tokens
                elif event["type"] == "done":
                    tail = event.get("text") or ""  # a trailing partial character held back by the room
                    rest = stops.feed(tail[len(received):]) if tail.startswith(received) else ""
                    yield rest + stops.flush(), finish_reason(event.get("finish_reason")), tokens
                    return
                elif event["type"] == "error":
                    back = event.get("refunded") or 0
                    raise ApiError(502, event["error"] + (f" (payment refunded: {back} units; the fee is kept)"
                                                          if back else ""), "api_error", "generation_failed")
            raise ApiError(502, "the room's stream ended without an answer", "api_error", "generation_failed")

        if not req.stream:
            parts = await run_in_threadpool(lambda: list(chunks()))
            text, (_, finish, tokens) = "".join(p[0] for p in parts), parts[-1]
            return JSONResponse(completion(kind, rid, req.model, created, text, finish,
                                           usage(prompt_tokens, tokens)), headers=headers)

        def stream() -> Iterator[bytes]:
            if kind == "chat":  # OpenAI's first chunk names the role
                first = completion(kind, rid, req.model, created, "", None, chunk=True)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                yield sse(first)
            try:
                for text, finish, tokens in chunks():
                    if text:
                        yield sse(completion(kind, rid, req.model, created, text, None, chunk=True))
                    if finish:
                        yield sse(completion(kind, rid, req.model, created, "", finish, chunk=True))
                        if req.include_usage:
                            last = completion(kind, rid, req.model, created, "", None, usage(prompt_tokens, tokens),
                                              chunk=True)
                            last["choices"] = []
                            yield sse(last)
            except ApiError as exc:  # after the first byte: an error event, as OpenAI streams one
                yield sse(exc.body())
            yield sse("[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer("text", await parse(request, CompletionRequest))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer("chat", await parse(request, ChatRequest))

    @app.exception_handler(404)
    async def not_found(request: Request, _exc) -> JSONResponse:
        return _error(ApiError(404, f"no route {request.method} {request.url.path}", "invalid_request_error",
                               "unknown_url"))

    return app
