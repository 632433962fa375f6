"""A room's checkpoint for browser nodes (issue 16): span manifests and verified pieces.

    app.include_router(make_room_weights_router(rooms, CheckpointLibrary(dir)))

  GET /v1/rooms/{id}/weights?start=&end=    the tensors units [start, end) load (default: the whole
                                            model), each as a list of sha256-named pieces, plus the
                                            room's ModelSpec and the coordinator's chunk mirrors
  GET /v1/rooms/{id}/chunks/{sha256}        one piece's bytes (immutable; a mirror may copy them)

Read-only and public like the training model's chunks: the weights of a room are what every
node of it must hold anyway. Pieces are read straight from the operator's checkpoint folder;
`ailo mirror sync` copies them into a mirror folder (`<mirror>/<sha256>`, like model chunks),
and the page tries the manifest's `mirrors` first, verifying every byte.
"""
from __future__ import annotations

import re

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from ailo.inference.rooms import RoomError, RoomRegistry
from ailo.inference.weights import CheckpointLibrary, WeightsError

_SHA = re.compile(r"^[0-9a-f]{64}\Z")


def _refuse(status: int, detail: str, reason: str) -> JSONResponse:
    return JSONResponse({"detail": detail, "reason": reason}, status_code=status)


def make_room_weights_router(rooms: RoomRegistry, library: CheckpointLibrary,
                             mirrors: tuple[str, ...] | list[str] = ()) -> APIRouter:
    router = APIRouter(prefix="/v1/rooms", tags=["rooms"])

    def index_of(room_id: str):
        room = rooms.get(room_id)
        return library.index(room.spec, getattr(room, "checkpoint", None))

    @router.get("/{room_id}/weights", summary="Span manifest: the checkpoint tensors of units [start, end)")
    def weights(room_id: str, start: int = Query(0, ge=0, le=1 << 20), end: int | None = Query(None, ge=1, le=1 << 20)):
        try:
            index = index_of(room_id)
            manifest = index.span_manifest(start, index.spec.n_units if end is None else end)
        except RoomError as exc:
            return _refuse(exc.status, str(exc), "no_room" if exc.status == 404 else "room_error")
        except WeightsError as exc:
            return _refuse(exc.status, str(exc), "bad_span" if exc.status == 400 else "no_checkpoint")
        return JSONResponse(dict(manifest, room=room_id, mirrors=list(mirrors)), headers={"Cache-Control": "no-cache"})

    @router.get("/{room_id}/chunks/{sha256}", summary="One verified piece of the room's checkpoint")
    def chunk(room_id: str, sha256: str):
        if not _SHA.match(sha256):
            return _refuse(400, "piece id must be a lowercase hex sha256", "bad_hash")
        try:
            data = index_of(room_id).read(sha256)
        except RoomError as exc:
            return _refuse(exc.status, str(exc), "no_room")
        except WeightsError as exc:
            return _refuse(exc.status, str(exc), "no_piece")
        return Response(data, media_type="application/octet-stream",
                        headers={"ETag": f'"{sha256}"', "Cache-Control": "public, max-age=31536000, immutable"})

    return router
