"""The coordinator's web pages: the contributor page `/`, the dashboard `/dashboard`, the built
browser bundle under `/static/`, public sample texts, and the dashboard's update list.

Mounted by `ailo.server.services.build_app`. The pages are cross-origin isolated
(COOP/COEP headers) so TensorFlow.js's wasm backend may use threads.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, PlainTextResponse, Response

from ailo.data import SPLITS, text_files
from ailo.paths import corpus_dir
from ailo.server.schemas import TEXT, DashboardUpdates, SamplesReply, reply

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin"}
_TYPES = {".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css", ".json": "application/json",
          ".bpe": "text/plain; charset=utf-8", ".html": "text/html; charset=utf-8", ".txt": "text/plain; charset=utf-8",
          ".png": "image/png", ".svg": "image/svg+xml"}


def make_web_router(coord=None, static_dir: Path = STATIC_DIR, samples_dir: Path | None = None) -> APIRouter:
    """`coord` (an `ailo.federation.coordinator.coordinator.Coordinator`) feeds the dashboard's update list."""
    r = APIRouter(tags=["web"])
    static_dir = Path(static_dir)

    def page(name: str) -> Response:
        path = static_dir / name
        if not path.is_file():
            return PlainTextResponse("the browser client is not built: run `make setup` (npm ci && npm run build)", 503)
        return FileResponse(path, media_type="text/html; charset=utf-8", headers={**ISOLATION, "Cache-Control": "no-cache"})

    @r.get("/", include_in_schema=False)
    def contributor() -> Response:
        return page("index.html")

    @r.get("/dashboard", include_in_schema=False)
    def dashboard() -> Response:
        return page("dashboard.html")

    @r.get("/static/{path:path}", include_in_schema=False)
    def static(path: str) -> Response:
        root = static_dir.resolve()
        target = (root / path).resolve()
        if root not in target.parents or not target.is_file():
            raise HTTPException(404, f"no static file {path}")
        return FileResponse(target, media_type=_TYPES.get(target.suffix, "application/octet-stream"),
                            headers={**ISOLATION, "Cache-Control": "no-cache"})

    def samples() -> dict[str, Path]:
        try:
            files = text_files(Path(samples_dir or (coord.config.data_dir if coord and coord.config.data_dir else corpus_dir())))
        except FileNotFoundError:
            return {}
        return {f.stem: f for f in files}

    @r.get("/v1/samples", summary="Public sample texts a visitor may train on in the browser",
           responses=reply(SamplesReply))
    def list_samples() -> dict:
        return {"samples": [{"name": name, "bytes": f.stat().st_size} for name, f in samples().items()]}

    @r.get("/v1/samples/{name}", summary="The training part of one public sample text (never the validation parts)",
           responses=reply(content=TEXT))
    def sample(name: str) -> Response:
        f = samples().get(name)
        if f is None:
            raise HTTPException(404, f"no sample {name!r}")
        text = f.read_text(encoding="utf-8", errors="replace")
        lo, hi = SPLITS["train"]
        return PlainTextResponse(text[int(len(text) * lo): int(len(text) * hi)])

    @r.get("/v1/dashboard/updates", summary="Recent updates: accepted or refused, with the refusal reason",
           responses=reply(DashboardUpdates))
    def updates(limit: int = Query(200, ge=1, le=1000)) -> dict:
        if coord is None:
            return {"updates": []}
        rows = coord.store.updates(limit=limit, newest=True)
        keep = ("norm_per_work", "cosine", "reduction", "loss_before", "loss_after", "seconds", "device")
        return {"updates": [{"id": u.id, "round": u.round_id, "client": u.client_id, "address": u.address,
                             "n_samples": u.n_samples, "train_loss": u.train_loss, "status": u.status,
                             "reason": u.reason, "detail": u.detail, "received": u.received,
                             **{k: u.extra[k] for k in keep if k in u.extra}} for u in rows]}

    return r
