"""Outer-optimizer state on disk: one safetensors file per model version (`v<version>.safetensors`),
written before the version is published, so a restart resumes the momentum / moments that
produced the version it serves. Older files are pruned (the previous one is kept)."""
from __future__ import annotations

import re
from pathlib import Path

from safetensors.torch import load_file, save

from ailo.federation.core.outer import OuterOptimizer
from ailo.storage.atomic import atomic_write


class OuterStateStore:
    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def path(self, version: int) -> Path:
        return self.dir / f"v{version}.safetensors"

    def save(self, outer: OuterOptimizer, version: int) -> None:
        state = outer.state_dict()
        if len(state) <= 1 and not self.dir.exists():
            return  # stateless (plain FedAvg): nothing to keep
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path(version), save(state, {"optimizer": outer.name, "version": str(version)}))
        for p in self.dir.glob("v*.safetensors"):
            m = re.fullmatch(r"v(\d+)\.safetensors", p.name)
            if m and int(m.group(1)) < version - 1:
                p.unlink(missing_ok=True)

    def restore(self, outer: OuterOptimizer, version: int) -> bool:
        """Load the state saved with `version` (the one being served); False when there is none."""
        p = self.path(version)
        if not p.exists():
            return False
        outer.load_state_dict(load_file(str(p)))
        return True
