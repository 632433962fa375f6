"""Chunked, content-addressed weights ("VirtualTensor", SPEC R2).

A state dict is packed into N chunks of nearly equal byte size. Tensors are laid end to end
in a fixed order; a tensor that crosses a chunk boundary is split by rows (dim 0), so even
the 321 MB embedding of `ailo-1b` spreads over several chunks. Each chunk is a safetensors
file named by the sha256 of its bytes; the manifest maps every tensor to its row-slices.

`ChunkStore` loads chunks on demand under a memory budget (least-recently-used chunks are
released), verifies every hash before parsing, and keeps a disk cache keyed by hash so a
second load reads zero bytes from the network.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Protocol

from ailo.storage.atomic import atomic_write

if TYPE_CHECKING:  # torch and safetensors load where tensors are made: the manifest, hashes and
    import torch   # `ailo mirror` (bytes only) need neither

DEFAULT_CHUNKS = 35
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ChunkError(Exception):
    """A chunk could not be used; the message names the chunk."""


class ChunkIntegrityError(ChunkError):
    pass


@dataclass(frozen=True)
class Part:
    """Rows [start, stop) of a tensor stored in chunk `chunk` under key `key`."""
    chunk: int
    start: int
    stop: int
    key: str


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]
    dtype: str
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class ChunkInfo:
    index: int
    sha256: str
    size: int


@dataclass
class Manifest:
    version: int
    preset: str
    chunks: list[ChunkInfo]
    tensors: dict[str, TensorEntry]
    config: dict = field(default_factory=dict)
    mirrors: list[str] = field(default_factory=list)  # base URLs serving `<base>/<sha256>` (untrusted)

    def to_json(self) -> str:
        d = {
            "version": self.version, "preset": self.preset, "config": self.config,
            "chunks": [asdict(c) for c in self.chunks],
            "tensors": {n: {"shape": list(t.shape), "dtype": t.dtype,
                            "parts": [asdict(p) for p in t.parts]} for n, t in self.tensors.items()},
        }
        if self.mirrors:  # added when served, never stored: the stored manifest stays mirror-free
            d["mirrors"] = list(self.mirrors)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Manifest":
        d = json.loads(text)
        chunks = [ChunkInfo(**c) for c in d["chunks"]]
        for c in chunks:  # names become file names (caches, mirrors) and URLs: nothing but a sha256
            if not (isinstance(c.sha256, str) and _SHA256.fullmatch(c.sha256)) or not isinstance(c.size, int) or c.size < 0:
                raise ValueError(f"manifest chunk {c.index}: sha256 must be 64 lowercase hex digits and size ≥ 0")
        return cls(
            version=int(d["version"]), preset=d["preset"], config=d.get("config", {}),
            chunks=chunks,
            tensors={n: TensorEntry(n, tuple(t["shape"]), t["dtype"], tuple(Part(**p) for p in t["parts"]))
                     for n, t in d["tensors"].items()},
            mirrors=[str(m) for m in d.get("mirrors", [])],
        )

    @property
    def total_bytes(self) -> int:
        return sum(c.size for c in self.chunks)

    def chunks_for(self, names: Iterable[str]) -> list[int]:
        return sorted({p.chunk for n in names for p in self.tensors[n].parts})


def _row_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    return math.prod(shape[1:]) * itemsize if shape else itemsize


def plan_chunks(specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]], num_chunks: int) -> dict[str, TensorEntry]:
    """Assign row-slices of tensors to chunks so each holds ~total/num_chunks bytes.

    Pure: needs only shapes and dtypes, so the `ailo-1b` plan can be made on the meta device.
    """
    import torch

    if num_chunks < 1:
        raise ValueError("num_chunks must be ≥ 1")
    sizes = {n: math.prod(s) * torch.empty((), dtype=d).element_size() for n, (s, d) in specs.items()}
    target = sum(sizes.values()) / num_chunks
    entries: dict[str, TensorEntry] = {}
    chunk, filled = 0, 0.0
    for name, (shape, dtype) in specs.items():
        rows = shape[0] if shape else 1
        row_b = _row_bytes(shape, torch.empty((), dtype=dtype).element_size())
        parts, start = [], 0
        while start < rows:
            room = target - filled
            take = rows - start if chunk == num_chunks - 1 else max(1, round(room / row_b))
            take = min(take, rows - start)
            if room < row_b / 2 and chunk < num_chunks - 1 and filled > 0:
                chunk, filled = chunk + 1, 0.0
                continue
            stop = start + take
            key = name if (start, stop) == (0, rows) else f"{name}@{start}:{stop}"
            parts.append(Part(chunk, start, stop, key))
            filled += take * row_b
            start = stop
            if filled >= target - row_b / 2 and chunk < num_chunks - 1:
                chunk, filled = chunk + 1, 0.0
        entries[name] = TensorEntry(name, tuple(shape), str(dtype).removeprefix("torch."), tuple(parts))
    return entries


def chunk_bytes(manifest: Manifest, state: Mapping[str, torch.Tensor]) -> dict[int, bytes]:
    """The chunk files of `manifest` rebuilt from full tensors (what a patched client checks)."""
    from safetensors.torch import save as st_save

    groups: dict[int, dict[str, torch.Tensor]] = {}
    for name, entry in manifest.tensors.items():
        t = state[name]
        for p in entry.parts:
            groups.setdefault(p.chunk, {})[p.key] = (t if p.key == name else t[p.start:p.stop]).contiguous()
    return {i: st_save(g) for i, g in groups.items()}


def split_state_dict(state: Mapping[str, torch.Tensor], num_chunks: int = DEFAULT_CHUNKS, *,
                     version: int = 0, preset: str = "", config: dict | None = None,
                     sink: Callable[[str, bytes], None] | None = None) -> tuple[Manifest, dict[str, bytes]]:
    """Returns the manifest and {sha256: chunk bytes}. Deterministic for equal tensors. With
    `sink`, each chunk is handed to it as soon as it is serialised and not kept (the returned
    dict is empty): a few chunks in memory at a time instead of a second copy of the model."""
    from safetensors.torch import save as st_save

    specs = {n: (tuple(t.shape), t.dtype) for n, t in state.items()}
    entries = plan_chunks(specs, num_chunks)
    groups: dict[int, dict[str, torch.Tensor]] = {}
    for name, entry in entries.items():
        t = state[name].detach()  # device tensors are copied to the host by st_save, in the pool
        for p in entry.parts:
            piece = t if p.key == name else t[p.start:p.stop]
            groups.setdefault(p.chunk, {})[p.key] = piece.contiguous()
    def serialize(idx: int) -> tuple[int, bytes, str]:
        data = st_save(groups[idx])
        return idx, data, hashlib.sha256(data).hexdigest()  # hashing releases the GIL
    if sink is not None:
        def serialize_to_sink(idx: int) -> tuple[int, int, str]:
            _, data, sha = serialize(idx)
            sink(sha, data)
            return idx, len(data), sha
        with ThreadPoolExecutor(max(1, min(4, len(groups)))) as pool:
            done_sunk = list(pool.map(serialize_to_sink, sorted(groups)))
        infos = [ChunkInfo(idx, sha, size) for idx, size, sha in done_sunk]
        return Manifest(version, preset, infos, entries, config or {}), {}
    with ThreadPoolExecutor(max(1, min(8, len(groups)))) as pool:
        done = list(pool.map(serialize, sorted(groups)))
    blobs = {sha: data for _, data, sha in done}
    infos = [ChunkInfo(idx, sha, len(data)) for idx, data, sha in done]
    return Manifest(version, preset, infos, entries, config or {}), blobs


def write_chunks(directory: Path, manifest: Manifest, blobs: Mapping[str, bytes]) -> None:
    """Write chunk files then the manifest, each atomically (temp file + rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    for sha, data in blobs.items():
        atomic_write(directory / sha, data)
    atomic_write(directory / "manifest.json", manifest.to_json().encode())


class ChunkSource(Protocol):
    def fetch(self, sha256: str) -> bytes: ...


@dataclass
class DirectorySource:
    """Chunks from a local folder (the coordinator's store, or a test double of the network)."""
    directory: Path
    bytes_read: int = 0

    def fetch(self, sha256: str) -> bytes:
        data = (Path(self.directory) / sha256).read_bytes()
        self.bytes_read += len(data)
        return data


@dataclass
class StoreStats:
    fetched_bytes: int = 0
    cache_hits: int = 0
    resident_bytes: int = 0
    peak_resident_bytes: int = 0
    evictions: int = 0


class ChunkStore:
    """On-demand, verified, cached access to a manifest's tensors."""

    def __init__(self, manifest: Manifest, source: ChunkSource, cache_dir: Path | None = None,
                 budget_bytes: int | None = None, on_fetch: Callable[[ChunkInfo, int], None] | None = None):
        self.manifest = manifest
        self.source = source
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.budget = budget_bytes
        self.on_fetch = on_fetch
        self.stats = StoreStats()
        self._resident: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self._by_index = {c.index: c for c in manifest.chunks}
        if budget_bytes is not None:
            biggest = max(c.size for c in manifest.chunks)
            if biggest > budget_bytes:
                raise ValueError(f"memory budget {budget_bytes} B is smaller than the largest chunk ({biggest} B)")

    def _verified(self, info: ChunkInfo, data: bytes, origin: str) -> bytes:
        if len(data) != info.size:
            raise ChunkIntegrityError(f"chunk {info.index} ({info.sha256[:12]}) from {origin}: "
                                      f"{len(data)} bytes, expected {info.size} (truncated or padded)")
        if hashlib.sha256(data).hexdigest() != info.sha256:
            raise ChunkIntegrityError(f"chunk {info.index} ({info.sha256[:12]}) from {origin}: sha256 mismatch")
        return data

    def chunk_bytes(self, index: int) -> bytes:
        """Bytes of a chunk: disk cache first (re-verified), else the source; never unverified."""
        info = self._by_index[index]
        cached = self.cache_dir / info.sha256 if self.cache_dir else None
        if cached is not None and cached.exists():
            try:
                data = self._verified(info, cached.read_bytes(), "cache")
                self.stats.cache_hits += 1
                return data
            except ChunkIntegrityError:
                cached.unlink()  # a damaged cache entry is dropped and fetched again
        data = self._verified(info, self.source.fetch(info.sha256), "source")
        self.stats.fetched_bytes += len(data)
        if self.on_fetch:
            self.on_fetch(info, len(data))
        if cached is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(cached, data)
        return data

    def prefetch(self) -> None:
        """Make sure every chunk is in the disk cache (what a client does on first visit)."""
        for info in self.manifest.chunks:
            if not (self.cache_dir and (self.cache_dir / info.sha256).exists()):
                self.chunk_bytes(info.index)

    def _chunk(self, index: int) -> dict[str, torch.Tensor]:
        if index in self._resident:
            self._resident.move_to_end(index)
            return self._resident[index]
        size = self._by_index[index].size
        while self.budget is not None and self._resident and self.stats.resident_bytes + size > self.budget:
            old, _ = self._resident.popitem(last=False)
            self.stats.resident_bytes -= self._by_index[old].size
            self.stats.evictions += 1
        from safetensors.torch import load as st_load
        tensors = st_load(self.chunk_bytes(index))
        self._resident[index] = tensors
        self.stats.resident_bytes += size
        self.stats.peak_resident_bytes = max(self.stats.peak_resident_bytes, self.stats.resident_bytes)
        return tensors

    def tensor(self, name: str) -> torch.Tensor:
        try:
            entry = self.manifest.tensors[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} is not in manifest version {self.manifest.version}") from None
        import torch

        pieces = [self._chunk(p.chunk)[p.key] for p in entry.parts]
        out = pieces[0].clone() if len(pieces) == 1 else torch.cat(pieces, dim=0)
        if tuple(out.shape) != entry.shape or str(out.dtype).removeprefix("torch.") != entry.dtype:
            raise ChunkIntegrityError(f"tensor {name!r}: stored {tuple(out.shape)} {out.dtype} does not match manifest")
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: self.tensor(name) for name in self.manifest.tensors}

    def release(self) -> None:
        self._resident.clear()
        self.stats.resident_bytes = 0
