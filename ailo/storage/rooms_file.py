"""`rooms.json`: the room definitions an operator created, as plain JSON records.

What a record holds is the inference side's business (`ailo.inference.durable_rooms`); this
module only reads the list and replaces the file atomically (a crash leaves the old one or
the new one)."""
from __future__ import annotations

import json
from pathlib import Path

from ailo.storage.atomic import atomic_write, remove_leftovers


class RoomsFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        remove_leftovers(self.path)  # a crash mid-save: the old file stands

    def load(self) -> list[dict]:
        return json.loads(self.path.read_text()) if self.path.exists() else []

    def save(self, records: list[dict]) -> None:
        atomic_write(self.path, json.dumps(records))
