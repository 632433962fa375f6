"""The API contract, installed on the coordinator app in one call: error shape, limits, OpenAPI.

    install_contract(app, {("POST", "/v1/updates"): max_update_bytes(manifest)})

Route limits are keyed by method and path template, so routes included later are covered too.
"""
from __future__ import annotations

from fastapi import FastAPI

from ailo.server.errors import install_error_handlers
from ailo.server.limits import BodyLimitMiddleware, JsonDepthMiddleware


def install_contract(app: FastAPI, body_limits: dict[tuple[str, str], int] | None = None) -> None:
    install_error_handlers(app)
    app.add_middleware(JsonDepthMiddleware)
    app.add_middleware(BodyLimitMiddleware, limits=body_limits)
