"""Compact downloads on the coordinator: the bf16 served model W_v and the int8 patches
P_v (W_{v−1} → W_v) of `served.py`, published next to the fp32 master chunks.

Files under `<state>/served/`: `v<version>.json` (the bf16 manifest: same layout as the fp32
one, dtype bfloat16; its chunks live in the shared content-addressed chunk folder and are served
by `GET /v1/chunks/{sha256}`) and `patch-v<version>.safetensors`. `prepare` writes a version's
files before the coordinator publishes it; `commit` makes it current once published. After a
restart, W of the served version is read back from its own bf16 chunks (verified by hash).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import torch

from ailo.chunks import ChunkStore, DirectorySource, Manifest, split_state_dict
from ailo.federation.core.served import next_served, to_served
from ailo.storage.rounds_store import SQLiteRoundStore
from ailo.storage.atomic import atomic_write


class CompactDownloads:
    def __init__(self, store: SQLiteRoundStore, num_chunks: int, preset: str, config: dict):
        self.store, self.num_chunks, self.preset, self.config = store, num_chunks, preset, config
        self.dir = store.dir / "served"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.version: int | None = None
        self.weights: dict[str, torch.Tensor] | None = None
        self._pending: tuple[int, dict[str, torch.Tensor]] | None = None

    def manifest_path(self, version: int) -> Path:
        return self.dir / f"v{version}.json"

    def patch_path(self, version: int) -> Path:
        return self.dir / f"patch-v{version}.safetensors"

    def _load(self, version: int, master: Mapping[str, torch.Tensor]) -> None:
        """W of the served version: its bf16 chunks, else (files lost) re-derived from the master."""
        if self.version == version:
            return
        path = self.manifest_path(version)
        if path.exists():
            manifest = Manifest.from_json(path.read_text())
            self.weights = ChunkStore(manifest, DirectorySource(self.store.chunks_dir)).state_dict()
        else:
            self.weights = to_served(master)
            self._write(version, self.weights, None)
        self.version = version

    def _write(self, version: int, weights: Mapping[str, torch.Tensor], patch: bytes | None) -> None:
        manifest, blobs = split_state_dict(weights, self.num_chunks, version=version, preset=self.preset,
                                           config=self.config)
        self.store.put_chunks(blobs)
        if patch is not None:
            atomic_write(self.patch_path(version), patch)
        atomic_write(self.manifest_path(version), manifest.to_json().encode())

    def prepare(self, version: int, master: Mapping[str, torch.Tensor], previous_master: Mapping[str, torch.Tensor]) -> None:
        """Write W_version and P_version (from the served W_{version−1})."""
        if version == 0:
            self._pending = (0, to_served(master))
            self._write(0, self._pending[1], None)
            return
        self._load(version - 1, previous_master)
        patch, weights = next_served(self.weights, master)
        self._write(version, weights, patch)
        self._pending = (version, weights)

    def prepare_seconds(self, version: int, master: Mapping[str, torch.Tensor],
                        previous_master: Mapping[str, torch.Tensor]) -> float:
        """`prepare` timed (the coordinator runs it beside the fp32 split and logs both)."""
        t0 = time.perf_counter()
        self.prepare(version, master, previous_master)
        return time.perf_counter() - t0

    def commit(self) -> None:
        if self._pending is not None:
            self.version, self.weights = self._pending
            self._pending = None

    def manifest_json(self, version: int, master: Mapping[str, torch.Tensor]) -> str:
        if not self.manifest_path(version).exists():  # lost files: re-derived from the master
            self.version = None
            self._load(version, master)
        return self.manifest_path(version).read_text()
