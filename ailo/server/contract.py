"""The API contract, installed on the coordinator app in one call: error shape, limits, OpenAPI.

    install_contract(app, {("POST", "/v1/updates"): max_update_bytes(manifest)})

Route limits are keyed by method and path template, so routes included later are covered too.
The OpenAPI document is completed here for every operation, whoever wrote the route: refusals
are declared as `4XX` with the `ErrorBody` schema (FastAPI's own 422 model is replaced, since
errors.py answers 422 in the same shape), so a client or fuzzer can rely on one error shape.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ailo.server.errors import install_error_handlers
from ailo.server.limits import BodyLimitMiddleware, JsonDepthMiddleware
from ailo.server.schemas import ErrorBody

OPERATOR_SECURITY = {"operator": {"type": "http", "scheme": "bearer",
                                  "description": "contents of the coordinator's operator-token file"}}


def install_contract(app: FastAPI, body_limits: dict[tuple[str, str], int] | None = None) -> None:
    install_error_handlers(app)
    app.add_middleware(JsonDepthMiddleware)
    app.add_middleware(BodyLimitMiddleware, limits=body_limits)
    install_openapi(app)


def complete_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare the error shape on every operation (in place; returns `schema`)."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.setdefault("securitySchemes", {}).update(OPERATOR_SECURITY)
    error = {"description": 'Refused: {"detail", "reason"} (see docs/ARCHITECTURE.md, "API contract")',
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for operations in schema.get("paths", {}).values():
        for op in operations.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses = op["responses"]
            for code in list(responses):
                declared_elsewhere = code.startswith("5") and "content" in responses[code]
                if code.startswith("4") or (code.startswith("5") and not declared_elsewhere):
                    responses[code] = {**error, "description": responses[code].get("description") or error["description"]}
            responses.setdefault("4XX", error)
            for response in responses.values():   # `-> dict` beside a declared model: keep the model
                for media in response.get("content", {}).values():
                    if "$ref" in media.get("schema", {}):
                        media["schema"] = {"$ref": media["schema"]["$ref"]}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if getattr(app.state, "openapi_completed", False):
            return app.openapi_schema
        schema = complete_openapi(generate())
        app.openapi_schema, app.state.openapi_completed = schema, True
        return schema

    app.openapi = openapi
