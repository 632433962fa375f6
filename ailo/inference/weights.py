"""A room's checkpoint in verified pieces, so a browser node fetches only its span's tensors.

A browser cannot open the node's checkpoint folder, so the coordinator (or a mirror) serves
it: every tensor of every `*.safetensors` file is cut into byte ranges of at most
`piece_bytes` (whole elements), each named by its sha256. `span_manifest(start, end)` lists
exactly the tensors `SpanModel(start, end)` loads (same names as `loader.checkpoint_names`)
and the pieces that hold them; `read(sha)` returns one piece's bytes, read straight from the
original file (no copy of the checkpoint is made). The page verifies every piece's size and
hash before use and caches it in IndexedDB by hash, exactly like the training model's chunks.

Indexing reads every byte once (to hash it); a room indexes its checkpoint on first use.
"""
from __future__ import annotations

import hashlib
import json
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ailo.inference.blocks import SpanModel
from ailo.inference.loader import checkpoint_names
from ailo.inference.spec import ModelSpec
from ailo.inference.families import read_spec

PIECE_BYTES = 4 << 20
_ELEMENT = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1}


class WeightsError(Exception):
    """The checkpoint cannot be served this way; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Piece:
    sha256: str
    size: int
    file: str
    offset: int


@dataclass(frozen=True)
class TensorPieces:
    name: str
    dtype: str          # safetensors code: F32, F16, BF16
    shape: tuple[int, ...]
    pieces: tuple[str, ...]


def _header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


class CheckpointIndex:
    """Name → pieces over a checkpoint folder; built once, then read-only (thread-safe reads)."""

    def __init__(self, model_dir: str | Path, piece_bytes: int = PIECE_BYTES):
        if piece_bytes <= 0 or piece_bytes % 8:
            raise ValueError("piece_bytes must be a positive multiple of 8")
        self.dir = Path(model_dir)
        self.spec: ModelSpec = read_spec(self.dir)
        self.piece_bytes = piece_bytes
        self.tensors: dict[str, TensorPieces] = {}
        self.pieces: dict[str, Piece] = {}
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise WeightsError(f"no *.safetensors in {self.dir}", 404)
        for path in files:
            header, base = _header(path)
            with open(path, "rb") as f:
                for name, info in header.items():
                    if name == "__metadata__":
                        continue
                    dtype = info["dtype"]
                    if dtype not in _ELEMENT:
                        raise WeightsError(f"tensor {name}: dtype {dtype} cannot be served to a browser")
                    a, b = info["data_offsets"]
                    shas = []
                    for off in range(a, b, piece_bytes) if b > a else ():
                        f.seek(base + off)
                        data = f.read(min(piece_bytes, b - off))
                        sha = hashlib.sha256(data).hexdigest()
                        self.pieces.setdefault(sha, Piece(sha, len(data), path.name, base + off))
                        shas.append(sha)
                    self.tensors[name] = TensorPieces(name, dtype, tuple(info["shape"]), tuple(shas))

    def span_names(self, start: int, end: int) -> list[str]:
        """Checkpoint tensors units [start, end) load — the list `load_span` reads."""
        try:
            with torch.device("meta"):
                model = SpanModel(self.spec, start, end)
        except ValueError as exc:
            raise WeightsError(str(exc), 400) from None
        names = checkpoint_names(self.spec, model, has_lm_head="lm_head.weight" in self.tensors)
        out: list[str] = []
        for n in names.values():
            if n not in self.tensors:
                raise WeightsError(f"tensor {n!r} is not in checkpoint {self.dir.name}", 404)
            if n not in out:
                out.append(n)
        return out

    def span_manifest(self, start: int, end: int) -> dict:
        names = self.span_names(start, end)
        chunks: list[dict] = []
        seen: set[str] = set()
        for n in names:
            for sha in self.tensors[n].pieces:
                if sha not in seen:
                    seen.add(sha)
                    chunks.append({"index": len(chunks), "sha256": sha, "size": self.pieces[sha].size})
        return {"fingerprint": self.spec.fingerprint(), "spec": self.spec.to_dict(),
                "span": {"start": start, "end": end}, "piece_bytes": self.piece_bytes,
                "tensors": {n: {"dtype": self.tensors[n].dtype, "shape": list(self.tensors[n].shape),
                                "pieces": list(self.tensors[n].pieces)} for n in names},
                "chunks": chunks, "total_bytes": sum(c["size"] for c in chunks)}

    def read(self, sha256: str) -> bytes:
        piece = self.pieces.get(sha256)
        if piece is None:
            raise WeightsError(f"no piece {sha256} in this checkpoint", 404)
        with open(self.dir / piece.file, "rb") as f:
            f.seek(piece.offset)
            return f.read(piece.size)


class CheckpointLibrary:
    """The checkpoint folders an operator lets the coordinator serve: `root/<name>/`.

    A room is served from the folder named at its creation (`checkpoint`), else from the one
    folder whose architecture fingerprint equals the room's; indexes are built once, lazily.
    """

    def __init__(self, root: str | Path, piece_bytes: int = PIECE_BYTES):
        self.root = Path(root)
        self.piece_bytes = piece_bytes
        self._index: dict[str, CheckpointIndex] = {}
        self._lock = threading.Lock()

    def folders(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "config.json").is_file())

    def resolve(self, spec: ModelSpec, name: str | None = None) -> str:
        if name is not None:
            if name not in self.folders():
                raise WeightsError(f"no checkpoint {name!r} served by this coordinator", 404)
            return name
        matches = []
        for folder in self.folders():
            try:
                if read_spec(self.root / folder).fingerprint() == spec.fingerprint():
                    matches.append(folder)
            except Exception:  # an unreadable folder is simply not a match
                continue
        if not matches:
            raise WeightsError("this coordinator serves no checkpoint of the room's model; "
                               "browser nodes cannot join it", 404)
        if len(matches) > 1:
            raise WeightsError(f"several checkpoints match the room's model ({', '.join(matches)}); "
                               "create the room with 'checkpoint' naming one", 409)
        return matches[0]

    def index(self, spec: ModelSpec, name: str | None = None) -> CheckpointIndex:
        folder = self.resolve(spec, name)
        with self._lock:
            if folder not in self._index:
                self._index[folder] = CheckpointIndex(self.root / folder, self.piece_bytes)
            idx = self._index[folder]
        if idx.spec.fingerprint() != spec.fingerprint():
            raise WeightsError(f"checkpoint {folder!r} is not the room's model "
                               f"(fingerprint {idx.spec.fingerprint()} != {spec.fingerprint()})", 409)
        return idx
