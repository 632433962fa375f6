"""Each room's tokenizers, built once per room: the plain one that encodes prompts and decodes
answers (GPT-2 BPE for 'gpt2', else the room's tokenizer.json) and the `transformers` one that
renders chat prompts through the room's template (ailo.inference.chat)."""
from __future__ import annotations

import threading
from typing import Any

from ailo.inference.chat import chat_tokenizer
from ailo.inference.rooms import RoomError


class RoomTokenizers:
    """Tokenizers per room, built once (GPT-2 BPE for 'gpt2', else a tokenizer.json string)."""

    def __init__(self) -> None:
        self._cache: dict[Any, Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def check(source: str) -> None:
        """Refuse a room whose tokenizer cannot be built, at creation rather than at generate."""
        if source != "gpt2":
            from tokenizers import Tokenizer
            try:
                Tokenizer.from_str(source)
            except Exception as exc:
                raise RoomError(f"tokenizer is not 'gpt2' nor a valid tokenizer.json ({exc})", 400, "bad_tokenizer") from None

    def get(self, room_id: str, source: str | None):
        if source is None:
            return None
        with self._lock:
            if room_id not in self._cache:
                if source == "gpt2":
                    from ailo.tokenizer import load_tokenizer
                    self._cache[room_id] = load_tokenizer()
                else:
                    from tokenizers import Tokenizer
                    try:
                        self._cache[room_id] = Tokenizer.from_str(source)
                    except Exception as exc:  # the tokenizers library raises a bare Exception
                        raise RoomError(f"room {room_id!r}: tokenizer is not a valid tokenizer.json ({exc})", 400, "bad_tokenizer") from None
            return self._cache[room_id]

    def chat(self, room) -> Any:
        """The room's `transformers` tokenizer with its chat template (ailo.inference.chat), built once."""
        codec = self.get(room.room_id, room.tokenizer)
        if codec is None:
            raise RoomError(f"room {room.room_id!r} has no tokenizer; send 'input_ids'", 400)
        key = ("chat", room.room_id)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = chat_tokenizer(codec, room.chat_template, room.special_tokens)
            return self._cache[key]
