"""OpenAPI models of the coordinator's requests and replies (pydantic), for clients and fuzzers.

Routes whose body is checked by the domain itself (ledger transactions: their exact rules and
error codes are the ledger spec; rooms: the signature covers the raw bytes; updates: a binary
safetensors body with `X-Ailo-*` headers) read the raw body and declare it here with
`openapi_extra=json_body(Model)` / `UPDATE_OPENAPI`, so the document is complete without
FastAPI re-validating (and re-wording) what the domain checks. Reply models allow extra fields:
they describe what a client may rely on, and adding a field never breaks a client.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ailo.federation.core.update_format import CLIENT_ID_PATTERN
from ailo.ledger.params import FEE, MAX_AMOUNT
from ailo.server.limits import INT64_MAX

MAX_SAFE_INT = 2**53 - 1
ADDRESS = r"^ailo1[0-9a-f]{72}$"
HEX64 = r"^[0-9a-f]{64}$"
SIGNATURE = r"^[0-9a-f]{128}$"


class Reply(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(Reply):
    """Every 4xx (and the 5xx that would be a bug)."""
    detail: str = Field(description="what is wrong, for people")
    reason: str = Field(description="stable machine code, e.g. bad_field, too_large, rate_limited")
    fields: list[str] | None = Field(None, description="the offending fields, when a schema check failed")


# -- ledger ------------------------------------------------------------------------------------

class _Tx(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    timestamp: int = Field(ge=0, le=MAX_SAFE_INT, description="milliseconds since the epoch")
    signature: str = Field(pattern=SIGNATURE, description="hex Ed25519 signature (docs/LEDGER.md)")


class RegisterTx(_Tx):
    type: Literal["REGISTER"]
    address: str = Field(pattern=ADDRESS)
    username: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{2,31}$")


class TransferTx(_Tx):
    type: Literal["TRANSFER"]
    from_: str = Field(alias="from", pattern=ADDRESS)
    to: str = Field(pattern=ADDRESS)
    amount: int = Field(ge=1, le=MAX_AMOUNT, description="units (1 ALC = 10^8)")
    fee: Literal[FEE]
    nonce: int = Field(ge=0, le=MAX_SAFE_INT)


class ReportTx(_Tx):
    type: Literal["REPORT"]
    reporter: str = Field(pattern=ADDRESS)
    target: str = Field(pattern=HEX64, description="txid of the transfer reported")
    reason: str = Field(pattern=r"^[\x20-\x7e]{0,200}$")


class AcceptedReply(Reply):
    txid: str
    type: str
    height: int
    status: str | None = None
    reversal_txid: str | None = None


class ChainPage(Reply):
    height: int
    from_: int = Field(alias="from")
    blocks: list[dict[str, Any]]


class BalanceReply(Reply):
    address: str
    spendable: int
    pending: int
    nonce: int
    next_nonce: int
    username: str | None
    active: bool


class LedgerInfo(Reply):
    height: int
    tip: str
    supply: int
    minted: int
    burned: int
    params: dict[str, Any]


# -- federation ------------------------------------------------------------------------------

class ManifestReply(Reply):
    version: int
    preset: str
    chunks: list[dict[str, Any]]
    tensors: dict[str, Any]


class TaskReply(Reply):
    status: Literal["train", "wait", "done"]
    round: int
    version: int


class StatusReply(Reply):
    round: int
    version: int
    settled_round: int
    finished: bool
    accepted_in_round: int
    needed_in_round: int  # accepted updates that close the open round before its deadline
    history: list[dict[str, Any]]


class ReadyReply(Reply):
    ready: bool
    reason: str | None = None


class UpdateReply(Reply):
    status: str


# -- rooms, web ----------------------------------------------------------------------------

class RoomView(Reply):
    id: str
    state: str
    slots: int
    nodes: list[dict[str, Any]]


class GenerateDone(Reply):
    type: str


class SamplesReply(Reply):
    samples: list[dict[str, Any]]


class DashboardUpdates(Reply):
    updates: list[dict[str, Any]]


class ExportsReply(Reply):
    exports: list[dict[str, Any]]
    latest: dict[str, Any] | None


def _header(name: str, description: str, required: bool = False, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "description": description,
            "schema": schema or {"type": "string"}}


_UINT = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
UPDATE_OPENAPI: dict[str, Any] = {
    "parameters": [
        _header("X-Ailo-Client", "client id (printable ASCII)", True, type="string", minLength=1, maxLength=128,
                pattern=CLIENT_ID_PATTERN),
        _header("X-Ailo-Round", "round the update was trained for", True, **_UINT),
        _header("X-Ailo-Base-Version", "model version it was trained on", True, **_UINT),
        _header("X-Ailo-Samples", "n_k, samples trained on", True, type="integer", minimum=1, maximum=INT64_MAX),
        _header("X-Ailo-Train-Loss", "mean local training loss (finite)", True, type="number"),
        _header("X-Ailo-Task", "task id from POST /v1/tasks"),
        _header("X-Ailo-Device", "what trained the update (backend and adapter), shown on the dashboard; not signed",
                type="string", maxLength=128, pattern="^[ -~]*$"),
        _header("X-Ailo-Address", "wallet address (Proof-of-Contribution)", type="string", pattern=ADDRESS),
        _header("X-Ailo-Nonce", "strictly increasing per address", **_UINT),
        _header("X-Ailo-Timestamp", "milliseconds since the epoch, as signed", **_UINT),
        _header("X-Ailo-Signature", "hex Ed25519 over ailo-update/v2|round|base|sha256|n|nonce|ts|client",
                type="string", pattern=SIGNATURE),
        _header("X-Ailo-Mirror-Bytes", "chunk bytes the worker fetched from mirrors for this round "
                "(informational, counted in GET /metrics)", type="string", pattern=r"^[0-9]{1,13}$"),
    ],
    "requestBody": {"required": True, "description": "safetensors file of the pseudo-gradient (or the round's codec)",
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
}


def json_body(model: type[BaseModel], description: str = "") -> dict[str, Any]:
    """`openapi_extra` declaring a JSON request body a route reads itself (flat models only)."""
    schema = model.model_json_schema(by_alias=True)
    assert "$defs" not in schema, f"{model.__name__}: nested models need components"
    return {"requestBody": {"required": True, "description": description or (model.__doc__ or "").strip(),
                            "content": {"application/json": {"schema": schema}}}}


def signed_headers(what: str) -> list[dict[str, Any]]:
    """The four headers of a wallet-signed rooms request (ailo.inference.auth)."""
    return [_header("X-Ailo-Address", f"wallet that signs {what}", type="string", pattern=ADDRESS),
            _header("X-Ailo-Nonce", "8-64 chars, never reused", type="string", pattern=r"^[A-Za-z0-9_-]{8,64}$"),
            _header("X-Ailo-Timestamp", "milliseconds since the epoch", **_UINT),
            _header("X-Ailo-Signature", "hex Ed25519 over the ailo-room/v1 line", type="string", pattern=SIGNATURE)]


BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
TEXT = {"text/plain": {"schema": {"type": "string"}}}
NDJSON = {"application/x-ndjson": {"schema": {"type": "string", "description": "one JSON event per line"}}}
OPERATOR_ONLY: dict[str, Any] = {"security": [{"operator": []}]}


def signed_json(model: type[BaseModel], what: str) -> dict[str, Any]:
    """`openapi_extra` of a wallet-signed rooms request: the four headers and the JSON body."""
    return {"parameters": signed_headers(what), **json_body(model)}


def reply(model: type[BaseModel] | None = None, *, content: dict[str, Any] | None = None,
          status: int = 200, more: dict[int, Any] | None = None) -> dict[int | str, Any]:
    """`responses=` for a route: its success reply (a model, or another content type)."""
    ok: dict[str, Any] = {"description": "OK"}
    if model is not None:
        ok["model"] = model
    if content is not None:
        ok["content"] = content
    return {status: ok, **(more or {})}
