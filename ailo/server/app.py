"""The coordinator's HTTP API (FastAPI). Routers from other domains (ledger, rooms, web pages)
are mounted beside the federation endpoints when the caller provides them."""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi import Path as FastAPIPath
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from ailo.federation.coordinator.admission import receive_to_file
from ailo.federation.coordinator.coordinator import Coordinator
from ailo.federation.core.update_format import CLIENT_ID_PATTERN, UpdateMeta, UpdateRejected, max_update_bytes
from ailo.mirrors import with_mirrors
from ailo.server.docs_ui import install_docs
from ailo.server.contract import install_contract
from ailo.server.limits import INT64_MAX
from ailo.server.schemas import (BINARY, UPDATE_OPENAPI, ManifestReply, ReadyReply, StatusReply, TaskReply,
                                 UpdateReply, reply)


class ChunkFile(FileResponse):
    """Weight chunks are hundreds of MB: read them 4 MiB at a time, not Starlette's 64 KiB
    (each read is a hop to a worker thread; ailo-1b's 3.29 GB per client was ~250 MB/s)."""
    chunk_size = 4 << 20


class TaskRequest(BaseModel):
    client_id: str = Field(min_length=1, max_length=128, pattern=CLIENT_ID_PATTERN,
                           description="printable ASCII, as in X-Ailo-Client")
    address: str | None = Field(None, max_length=128)  # the wallet that will sign: the caller's identity
    memory_budget: int | None = Field(default=None, ge=0, description="bytes the client can spend on training "
                                      "(its --memory-budget); a coordinator may answer a small one with a slice")
    memory_device: Literal["cpu", "cuda"] = Field(default="cpu", description="where the client trains: sizes the "
                                                  "budget's plan or slice (cpu, also for browsers: the larger estimate)")


def federation_router(coord: Coordinator) -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["federation"])

    @r.get("/model", summary="Manifest of the current global model (version, preset, chunk hashes); "
                             "?format=bf16: the compact served model", responses=reply(ManifestReply))
    def model(format: str = "fp32") -> Response:
        if format not in ("fp32", "bf16"):
            raise UpdateRejected("bad_format", f"format must be fp32 or bf16, not {format[:20]!r}", 400)
        if format == "bf16":
            if coord.downloads is None:
                raise UpdateRejected("no_compact", "this coordinator serves only the fp32 model", 404)
            with coord.lock:
                version, text = coord.version, coord.downloads.manifest_json(coord.version, coord.model.state_dict())
            if coord.config.mirrors:  # the bf16 chunks sit in the same content-addressed folder
                text = with_mirrors(text, coord.config.mirrors)
            return Response(text, media_type="application/json",
                            headers={"Cache-Control": "no-cache", "X-Ailo-Version": str(version)})
        manifest = coord.manifest
        if coord.config.mirrors:  # clients try these first (verified), then /v1/chunks
            manifest = dataclasses.replace(manifest, mirrors=list(coord.config.mirrors))
        return Response(manifest.to_json(), media_type="application/json",
                        headers={"Cache-Control": "no-cache", "X-Ailo-Version": str(coord.version)})

    @r.get("/chunks/{sha256}", summary="One immutable weight chunk (safetensors bytes); Range supported",
           responses=reply(content=BINARY, more={206: {"description": "a Range", "content": BINARY},
                                                 304: {"description": "If-None-Match matched"}}))
    def chunk(sha256: str, request: Request) -> Response:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise HTTPException(400, "chunk id must be a lowercase hex sha256")
        path: Path = coord.store.chunk_path(sha256)
        if not path.exists():
            raise HTTPException(404, f"no chunk {sha256}")
        etag = f'"{sha256}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        size = path.stat().st_size
        rng = request.headers.get("range", "")
        sent = size - int(rng[6:].split("-")[0] or 0) if rng.startswith("bytes=") and rng[6:].split("-")[0].isdigit() else size
        coord.record_chunk_bytes(max(0, sent))
        return ChunkFile(path, media_type="application/octet-stream",
                         headers={"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable"})

    @r.get("/patches/{version}", summary="int8 patch from served model version−1 to version (safetensors)",
           responses=reply(content=BINARY))
    def patch(version: int) -> Response:
        path = coord.downloads.patch_path(version) if coord.downloads is not None and 0 < version < 2**31 else None
        if path is None or not path.exists():
            raise UpdateRejected("no_patch", f"no patch to served model version {version}", 404)
        coord.record_chunk_bytes(path.stat().st_size)
        return ChunkFile(path, media_type="application/octet-stream",  # streamed: an ailo-1b patch is 0.8 GB
                         headers={"Cache-Control": "public, max-age=31536000, immutable"})

    @r.post("/tasks", summary="Ask for work: which version to train, steps, batch, learning rate",
            responses=reply(TaskReply))
    def task(req: TaskRequest) -> dict:
        return coord.task(req.client_id, req.address, req.memory_budget, req.memory_device)

    @r.post("/updates", status_code=202,
            summary="Submit a pseudo-gradient (safetensors body, X-Ailo-* headers); 202 + update id, "
                    "the verdict comes from GET /v1/updates/{id}",
            openapi_extra=UPDATE_OPENAPI,
            responses=reply(UpdateReply, status=202, more={200: {"model": UpdateReply, "description": "already decided"}}))
    async def update(request: Request) -> JSONResponse:
        meta = UpdateMeta.from_headers(request.headers)
        declared = request.headers.get("content-length")
        tmp = coord.store.incoming_path()
        t0 = time.perf_counter()
        sha, size = await receive_to_file(request.stream(), tmp, max_update_bytes(coord.manifest),
                                          int(declared) if declared and declared.isdigit() else None)
        peer = request.client.host if request.client else ""
        receive_ms = round(1000 * (time.perf_counter() - t0), 1)
        receipt = await asyncio.to_thread(coord.submit_file, meta, tmp, sha, size, peer, receive_ms)
        mirrored = request.headers.get("x-ailo-mirror-bytes", "")
        if receipt.get("status") == "pending" and not receipt.get("replayed") and mirrored.isdigit() \
                and len(mirrored) <= 13:  # what the worker reports it fetched from mirrors (/metrics; not trusted)
            coord.store.bump_counter("chunk_bytes_mirrors", int(mirrored))
        return JSONResponse(receipt, status_code=202 if receipt["status"] == "pending" else 200)

    @r.get("/updates/{update_id}", summary="Verdict of one update: pending, accepted (aggregated?) or refused "
                                          "(reason); `wait` long-polls up to that many seconds for a decision",
           responses=reply(UpdateReply))
    async def verdict(update_id: int = FastAPIPath(ge=0, le=INT64_MAX),
                      wait: float = Query(0.0, ge=0.0, le=60.0)) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            v = coord.verdict(update_id)
            if v is None:
                raise UpdateRejected("unknown_update", f"no update {update_id}", 404)
            if v["status"] != "pending" or loop.time() >= deadline:
                return v
            await asyncio.sleep(0.2)

    @r.get("/status", summary="Round, version, clients and validation-loss history", responses=reply(StatusReply))
    def status() -> dict:
        return coord.status()

    return r


def create_app(coord: Coordinator, extra_routers: list[APIRouter] | None = None,
               periodic: list[Callable[[], object]] | None = None) -> FastAPI:
    """`periodic` jobs run every second beside the round deadline check (e.g. ledger sealing)."""
    stop = threading.Event()
    jobs = list(periodic or [])  # round deadlines are the validation pipeline's (coord.tick)

    def ticker() -> None:
        while not stop.wait(1.0):
            for job in jobs:
                try:
                    job()
                except Exception as exc:  # keep ticking; the error is visible in the log
                    print(f"periodic job {job!r} failed: {exc!r}", flush=True)

    started: dict[str, float] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        coord.start()  # validation pipeline: judges pending updates (also those left by a crash)
        threading.Thread(target=ticker, name="periodic-jobs", daemon=True).start()
        started["at"] = time.time()
        yield
        stop.set()
        coord.stop()

    app = FastAPI(title="Ailo Network coordinator", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Federated training, Proof-of-Contribution, AiloCoin ledger, inference rooms.")
    install_docs(app)  # Swagger UI from the bundled static files, not a CDN

    @app.get("/healthz", include_in_schema=False)
    def health() -> dict:
        """Liveness: the process answers HTTP (it may still be starting; see /v1/ready)."""
        return {"ok": True, "version": coord.version}

    @app.get("/v1/ready", summary="Readiness after a (re)start: 200 when tasks, updates and the ledger are served",
             responses=reply(ReadyReply, more={503: {"model": ReadyReply, "description": "starting, or the store is down"}}))
    def ready() -> JSONResponse:
        """200 once start-up finished (state reopened, leftovers removed, unpaid rewards
        settled, round ticker running) and the round store answers; else 503 + Retry-After."""
        if "at" not in started:
            return JSONResponse({"ready": False, "reason": "starting"}, 503, headers={"Retry-After": "1"})
        try:
            rnd = coord.current_round()
        except Exception as exc:  # the store does not answer: not ready, say why
            return JSONResponse({"ready": False, "reason": "store", "detail": repr(exc)[:200]}, 503,
                                headers={"Retry-After": "1"})
        return JSONResponse({"ready": True, "version": coord.version, "round": rnd.id,
                             "uptime_s": round(time.time() - started["at"], 3),
                             "removed_at_start": coord.store.removed_at_start})

    app.include_router(federation_router(coord))
    for router in extra_routers or []:
        app.include_router(router)
    install_contract(app, {("POST", "/v1/updates"): max_update_bytes(coord.manifest)})

    return app
