"""OpenAI's wire format for `ailo api` (pure: no I/O): request bodies, answers and stream
chunks, errors, and the stop-string filter. Field names and shapes follow OpenAI's
`/v1/completions` and `/v1/chat/completions` so the official clients parse them unchanged."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_NEW_TOKENS = 8192  # the coordinator's limit per request (rooms_api.GenerateBody)


class _Sampling(BaseModel):
    """Fields both endpoints share; unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=64)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2 ** 63 - 1)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logprobs: Any = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or not all(0 < len(s) <= 256 for s in stops):
            raise BadRequest("'stop' is up to 4 strings of 1 to 256 characters", "stop")
        return stops

    def room_body(self, max_tokens: int | None, default: int) -> dict[str, Any]:
        if self.logprobs:
            raise BadRequest("logprobs are not available from rooms", "logprobs")
        n = default if max_tokens is None else max_tokens
        if not 1 <= n <= MAX_NEW_TOKENS:
            raise BadRequest(f"max_tokens must be between 1 and {MAX_NEW_TOKENS}", "max_tokens")
        return {"max_new_tokens": n, "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "stop": self.stops()}

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] = Field(description="text, one text in a list, or token ids")
    max_tokens: int | None = 16  # OpenAI's default for completions
    echo: bool = False

    def room_body(self) -> dict[str, Any]:  # type: ignore[override]
        if self.echo:
            raise BadRequest("echo is not supported", "echo")
        body = super().room_body(self.max_tokens, 16)
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise BadRequest("one prompt per request (a list of texts gives several choices)", "prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise BadRequest("'prompt' is empty", "prompt")
            return {**body, "prompt": prompt}
        if not prompt:
            raise BadRequest("'prompt' is empty", "prompt")
        return {**body, "input_ids": list(prompt)}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: only text ones can go to a language model
            if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in self.content):
                raise BadRequest("only text content parts are supported", "messages")
            return "".join(p["text"] for p in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tools: Any = None

    def room_body(self) -> dict[str, Any]:  # type: ignore[override]
        if self.tools:
            raise BadRequest("tools are not supported", "tools")
        n = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        body = super().room_body(n, MAX_NEW_TOKENS)  # the coordinator stops at the model's context
        return {**body, "messages": [{"role": m.role, "content": m.text()} for m in self.messages]}


class ApiError(Exception):
    """An answer in OpenAI's error shape: {"error": {"message", "type", "code", "param"}}."""

    def __init__(self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.type, "code": self.code, "param": self.param}}


class BadRequest(ApiError):
    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request"):
        super().__init__(400, message, "invalid_request_error", code, param)


def refusal_error(status: int, reason: str, detail: str, retry_after: float | None, room: str) -> ApiError:
    """The coordinator's refusal (rooms_api: {detail, reason}, nothing charged) as OpenAI would say it."""
    if status == 404:
        return ApiError(404, f"The model '{room}' does not exist: {detail}", "invalid_request_error",
                        "model_not_found", "model")
    if status == 402:
        return ApiError(402, f"Your wallet cannot pay for this request: {detail}", "insufficient_quota",
                        "insufficient_quota")
    if status == 503:
        wait = f"{max(1, round(retry_after or 5))}"
        return ApiError(503, f"The model '{room}' cannot serve now: {detail}", "server_error", "model_not_ready",
                        headers={"Retry-After": wait})
    if status == 429:
        return ApiError(429, detail, "rate_limit_error", "rate_limit_exceeded",
                        headers={"Retry-After": f"{max(1, round(retry_after or 1))}"})
    if status in (400, 413, 422):
        return ApiError(400, detail, "invalid_request_error", reason)
    if status in (401, 403):
        return ApiError(403, f"The coordinator refused this wallet: {detail}", "permission_error", reason)
    return ApiError(502, f"The coordinator answered {status}: {detail}", "api_error", reason)


def finish_reason(room_finish: str | None) -> str:
    """Room 'eos' and 'stop' (a stop string) are OpenAI's 'stop'; 'length' stays."""
    return "length" if room_finish == "length" else "stop"


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


@dataclass
class StopFilter:
    """Text as it streams, cut before the first stop string. Holds back any tail that could
    still become a stop string, so nothing of a stop string is ever sent."""

    stops: list[str]
    text: str = ""
    sent: int = 0
    stopped: bool = False
    _longest: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._longest = max((len(s) for s in self.stops), default=0)

    def feed(self, piece: str) -> str:
        if self.stopped or not piece:
            return ""
        self.text += piece
        if not self.stops:
            return self._send(len(self.text))
        look = max(0, self.sent - self._longest)
        hits = [i for s in self.stops if (i := self.text.find(s, look)) >= 0]
        if hits:
            self.stopped = True
            return self._send(min(hits))
        hold = max((k for s in self.stops for k in range(1, min(len(s), len(self.text)) + 1)
                    if self.text.endswith(s[:k])), default=0)
        return self._send(len(self.text) - hold)

    def flush(self) -> str:
        return "" if self.stopped else self._send(len(self.text))

    def _send(self, end: int) -> str:
        end = max(end, self.sent)
        out, self.sent = self.text[self.sent:end], end
        return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(kind: str, rid: str, model: str, created: int, text: str, finish: str | None,
               use: dict | None = None, chunk: bool = False) -> dict[str, Any]:
    """A (chunk of a) chat completion or text completion, as OpenAI shapes it."""
    if kind == "chat":
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if chunk:
            choice["delta"] = {"content": text} if text else {}
        else:
            choice["message"] = {"role": "assistant", "content": text, "refusal": None}
        out = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk" if chunk else "chat.completion",
               "created": created, "model": model, "system_fingerprint": None, "choices": [choice]}
    else:
        out = {"id": f"cmpl-{rid}", "object": "text_completion", "created": created, "model": model,
               "system_fingerprint": None,
               "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    if use is not None:
        out["usage"] = use
    return out
