"""Client side of compact downloads (`served.py`, `downloads.py`): keep the served bf16 model
W_{v−1} this client trained from, and turn the int8 patch P_v into W_v, accepted only when
every rebuilt chunk has the size and sha256 the bf16 manifest lists. Anything else (no held
version, a gap, a 404, a malformed patch, one wrong hash) answers None and the caller
downloads the bf16 chunks instead. Files: `<cache>/served.json` (manifest of the held
version) beside the verified chunk cache `<cache>/chunks/`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ailo.chunks import ChunkError, ChunkStore, Manifest
from ailo.federation.core.codecs import CodecError
from ailo.chunks import chunk_bytes
from ailo.federation.core.served import apply_patch
from ailo.storage.atomic import atomic_write


class _NoNetwork:
    def fetch(self, sha256: str) -> bytes:
        raise ChunkError(f"chunk {sha256[:12]} is not cached")


@dataclass
class ServedCache:
    cache_dir: Path
    held: tuple[int, dict[str, torch.Tensor]] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def manifest_path(self) -> Path:
        return Path(self.cache_dir) / "served.json"

    def _held(self, preset: str) -> tuple[int, dict[str, torch.Tensor]] | None:
        if self.held is None and self.manifest_path.exists():  # after a restart: from the chunk cache
            try:
                m = Manifest.from_json(self.manifest_path.read_text())
                if m.preset == preset:
                    self.held = (m.version, ChunkStore(m, _NoNetwork(), Path(self.cache_dir) / "chunks").state_dict())
            except (ChunkError, ValueError, KeyError):
                self.held = None
        return self.held

    def patched(self, manifest: Manifest, fetch_patch: Callable[[int], bytes | None]) -> tuple[dict, int] | None:
        """(W_v, patch bytes downloaded) or None when the patch path does not apply."""
        held = self._held(manifest.preset)
        if held is None or held[0] != manifest.version - 1:
            return None
        patch = fetch_patch(manifest.version)
        if patch is None:
            return None
        try:
            weights = apply_patch(held[1], patch)
        except (CodecError, KeyError) as exc:
            self.notes.append(f"patch to v{manifest.version} refused: {exc}")
            return None
        blobs = chunk_bytes(manifest, weights)
        for c in manifest.chunks:
            data = blobs.get(c.index)
            if data is None or len(data) != c.size or hashlib.sha256(data).hexdigest() != c.sha256:
                self.notes.append(f"patched chunk {c.index} of v{manifest.version} does not match its sha256")
                return None
        for c in manifest.chunks:
            atomic_write(Path(self.cache_dir) / "chunks" / c.sha256, blobs[c.index])
        return weights, len(patch)

    def remember(self, manifest: Manifest, weights: dict[str, torch.Tensor]) -> None:
        """Hold W_v (bf16, untouched by training) for the next round's patch."""
        self.held = (manifest.version, {k: v.detach().to(torch.bfloat16).clone() for k, v in weights.items()})
        Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(self.manifest_path, manifest.to_json().encode())
