"""HTTP endpoints of the ledger, mounted by the coordinator app:

    GET  /v1/chain?from=H&limit=N   -> {"height": tip, "from": H, "blocks": [block, ...]}
    GET  /v1/balance/{address}      -> {"address", "spendable", "pending", "nonce",
                                        "next_nonce", "username", "active"}
    GET  /v1/ledger/info            -> height, supply, minted, burned, params
    POST /v1/register               body: signed REGISTER tx   -> {"txid", "type", "height"}
    POST /v1/transfers              body: signed TRANSFER tx   -> {"txid", "type", "height"}
    POST /v1/reports                body: signed REPORT tx     -> {..., "status",
                                                                   "reversal_txid"}

Bad input gets a 4xx (a `LedgerError`, answered by ailo.server.errors) with {"detail": "<code>: <message>", "reason": "<code>"} and nothing is
written: the service checks every rule on a working copy before anything reaches the store.
Bodies are limited (size, JSON depth) by ailo.server.limits before they are parsed.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from ailo.ledger.service import LedgerService
from ailo.server.errors import ApiError
from ailo.server.limits import INT64_MAX, LEDGER_TX_BYTES, parse_json
from ailo.server.schemas import (AcceptedReply, BalanceReply, ChainPage, LedgerInfo, RegisterTx, ReportTx,
                                 TransferTx, json_body, reply)
from ailo.wallet import AddressError, public_key_from_address

MAX_BODY_BYTES = LEDGER_TX_BYTES
MAX_CHAIN_PAGE = 1000


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"too_large: body exceeds {MAX_BODY_BYTES} bytes", "too_large")
    return parse_json(raw)


def make_ledger_router(service: LedgerService) -> APIRouter:
    """Routes for one LedgerService; include with `app.include_router(router)`."""
    router = APIRouter(tags=["ledger"])

    @router.get("/v1/chain", summary="Blocks from height `from`, at most `limit`", responses=reply(ChainPage))
    async def get_chain(from_: int = Query(0, alias="from", ge=0, le=INT64_MAX),
                        limit: int = Query(MAX_CHAIN_PAGE, ge=1, le=MAX_CHAIN_PAGE)) -> dict:
        blocks = await run_in_threadpool(service.chain, from_, limit)
        return {"height": service.info()["height"], "from": from_, "blocks": blocks}

    @router.get("/v1/balance/{address}", summary="Spendable and pending units, nonce, username",
                responses=reply(BalanceReply))
    async def get_balance(address: str) -> dict:
        try:
            public_key_from_address(address)
        except AddressError as exc:
            raise ApiError(400, f"bad_address: {exc}", "bad_address") from None
        bal = await run_in_threadpool(service.balance, address)
        return {**asdict(bal), "next_nonce": bal.nonce + 1}

    @router.get("/v1/ledger/info", summary="Tip, supply, chain parameters", responses=reply(LedgerInfo))
    async def get_info() -> dict:
        return await run_in_threadpool(service.info)

    @router.post("/v1/register", summary="Bind a username to a wallet (signed REGISTER)",
                 openapi_extra=json_body(RegisterTx, "signed REGISTER transaction (docs/LEDGER.md)"),
                 responses=reply(AcceptedReply))
    async def post_register(request: Request) -> dict:
        return asdict(await run_in_threadpool(service.register, await _json_body(request)))

    @router.post("/v1/transfers", summary="Send AiloCoin (signed TRANSFER)",
                 openapi_extra=json_body(TransferTx, "signed TRANSFER transaction (docs/LEDGER.md)"),
                 responses=reply(AcceptedReply))
    async def post_transfer(request: Request) -> dict:
        return asdict(await run_in_threadpool(service.submit_transfer, await _json_body(request)))

    @router.post("/v1/reports", summary="Report a transfer inside its dispute window (signed REPORT)",
                 openapi_extra=json_body(ReportTx, "signed REPORT transaction (docs/LEDGER.md)"),
                 responses=reply(AcceptedReply))
    async def post_report(request: Request) -> dict:
        return asdict(await run_in_threadpool(service.submit_report, await _json_body(request)))

    return router
