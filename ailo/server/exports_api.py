"""Model releases made by `ailo export` into `STATE/exports/`, served read-only.

The coordinator learns about an export only through the file system: `ailo export --state S`
writes `S/exports/v<N>-<format>/` atomically (with an `export.json` saying what it holds), and
this router lists and serves whatever complete folders are there. Nothing here writes.
"""
from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from ailo.export import list_exports
from ailo.server.schemas import BINARY, ExportsReply, reply

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def make_exports_router(exports_dir: Path) -> APIRouter:
    r = APIRouter(tags=["release"])
    exports_dir = Path(exports_dir)

    def entry(meta: dict) -> dict:
        base = f"/exports/{meta['name']}"
        return {**meta, "url": base + "/", "files": [{"name": n, **f, "url": f"{base}/{n}"}
                                                      for n, f in sorted(meta.get("files", {}).items())]}

    @r.get("/v1/exports", summary="Released model folders (Hugging Face GPT-2 or plain Ailo), newest first",
           responses=reply(ExportsReply))
    def exports() -> dict:
        items = [entry(m) for m in list_exports(exports_dir)]
        return {"exports": items, "latest": items[0] if items else None}

    @r.get("/exports/{name}/{filename}", summary="One file of a released model folder",
           responses=reply(content={**BINARY, "application/json": {}}))
    def export_file(name: str, filename: str) -> FileResponse:
        if not _NAME.match(name) or not _NAME.match(filename):
            raise HTTPException(400, "bad export or file name")
        known = {m["name"]: m for m in list_exports(exports_dir)}
        if name not in known or filename not in known[name].get("files", {}) and filename != "export.json":
            raise HTTPException(404, f"no file {filename!r} in export {name!r}")
        path = exports_dir / name / filename
        if not path.is_file():
            raise HTTPException(404, f"no file {filename!r} in export {name!r}")
        return FileResponse(path, media_type="application/json" if filename.endswith(".json") else "application/octet-stream",
                            filename=filename)

    return r
