"""Room definitions that survive a coordinator restart.

`RoomRegistry` keeps rooms in memory (membership is soft state: nodes re-join after a
restart). What an operator created — the room id, its model spec, slots and options — is
written to `rooms.json` in the state directory on every create/delete (`ailo.storage.rooms_file`:
a crash leaves the old file or the new one) and re-created at start-up, so `ailo node`
processes that ride out the restart find their room again. Spot-check sanctions — each wallet's
strikes and the wallets barred for cheating — are written the same way whenever a strike is
recorded, so a restart is not an amnesty.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ailo.inference.rooms import Room, RoomRegistry
from ailo.inference.spec import ModelSpec
from ailo.storage.rooms_file import RoomsFile


class DurableRoomRegistry(RoomRegistry):
    def __init__(self, path: Path, **kwargs: Any):
        super().__init__(**kwargs)
        self.file = RoomsFile(Path(path))
        self._defs: dict[str, dict] = {}
        for d in self.file.load():
            room = super().create_room(d["id"], ModelSpec.from_dict(d["spec"]), d["slots"], **d["options"])
            sanctions = d.get("sanctions", {})
            room.strikes.update(sanctions.get("strikes", {}))
            room.banned.update(sanctions.get("banned", []))
            self._defs[d["id"]] = d

    def create_room(self, room_id: str, spec: ModelSpec, slots: int, **options: Any) -> Room:
        room = super().create_room(room_id, spec, slots, **options)
        self._defs[room_id] = {"id": room_id, "spec": spec.to_dict(), "slots": slots, "options": options}
        self._save()
        return room

    def delete_room(self, room_id: str) -> None:
        super().delete_room(room_id)
        self._defs.pop(room_id, None)
        self._save()

    def record_check(self, room_id: str, verdict: dict, culprit: str | None, strikes_to_evict: int) -> bool:
        struck = super().record_check(room_id, verdict, culprit, strikes_to_evict)
        if struck and room_id in self._defs:
            room = self.get(room_id)
            with self._lock:
                self._defs[room_id]["sanctions"] = {"strikes": dict(room.strikes), "banned": sorted(room.banned)}
            self._save()
        return struck

    def _save(self) -> None:
        with self._lock:  # one writer at a time (creates, deletes, strikes), the latest state last
            self.file.save(list(self._defs.values()))
