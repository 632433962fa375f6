"""The HTTP face of a room node (`ailo node`): the composition root around `NodeService`.

    POST   /v1/node/forward              frame in → frame out (hidden states, or logits on the last span)
    DELETE /v1/node/requests/{id}        drop a finished request's KV cache
    GET    /v1/node/info                 span, tensors read from the checkpoint, cache count
    POST   /v1/node/route                the coordinator routes a request through this node (pushed pipelines)
    POST   /v1/node/push                 frames pushed by the previous node, one or a batch (202; outputs pushed on)
    GET    /v1/node/requests/{id}/received  the signed frames an audit re-runs
The checks and the push worker are `ailo.inference.links` (domain); this module only maps HTTP.
"""
from __future__ import annotations

import time

from fastapi import FastAPI, Request, Response

from ailo.inference import forwarding, links
from ailo.inference.node import NodeError, NodeService
from ailo.inference.wire import CONTENT_TYPE, Frame, WireError
from ailo.server.errors import install_error_handlers


def build_node_app(service: NodeService) -> FastAPI:
    app = FastAPI(title="Ailo room node")
    install_error_handlers(app)  # NodeError → its status (409 rebuild the cache, 421 other span, 503 loading)

    @app.post("/v1/node/forward")
    async def forward(request: Request) -> Response:
        body = await request.body()
        try:
            frame = Frame.decode(body)
        except WireError as exc:
            raise NodeError(400, "bad_frame", f"bad frame: {exc}") from None
        # Computed on the event loop thread itself: forwards are serialised by the node's lock
        # anyway, and skipping the hand-off to a worker thread saves two context switches per hop.
        t0 = time.perf_counter()
        out = service.forward(frame)
        ms = (time.perf_counter() - t0) * 1000
        return Response(content=out.encode(), media_type=CONTENT_TYPE, headers={"x-ailo-compute-ms": f"{ms:.3f}"})

    @app.delete("/v1/node/requests/{request_id}")
    def release(request_id: str) -> dict:
        with service.lock:
            service.caches.drop(request_id)
        if service.link is not None:
            service.link.forget(request_id)
        return {"released": request_id}

    @app.post("/v1/node/route")
    async def route(request: Request) -> dict:
        hop = links.accept_route(service, request.headers, await request.body())
        return {"routed": hop.request_id}

    @app.post("/v1/node/push", status_code=202)
    async def push(request: Request) -> Response:
        accepted, refused = links.accept_push(service, request.headers, await request.body())
        if accepted:
            forwarding.enqueue(service, accepted)
        if not refused:
            return Response(status_code=202)
        status, body, headers = links.signed_refusal(service.link.wallet, refused, len(accepted) + len(refused) > 1)
        return Response(content=body, status_code=status, headers=headers)

    @app.get("/v1/node/requests/{request_id}/received")
    def received(request_id: str, request: Request) -> dict:
        return links.received_frames(service, request.headers, request_id)

    @app.get("/v1/node/info")
    def info() -> dict:
        return service.info()

    return app
