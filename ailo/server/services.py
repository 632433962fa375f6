"""Wires the coordinator's services together into one FastAPI app (composition root)."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from ailo.federation.coordinator import Coordinator, CoordinatorConfig
from ailo.server.app import create_app


def build_app(config: CoordinatorConfig, state_dir: Path) -> FastAPI:
    coord = Coordinator(config, state_dir)
    app = create_app(coord)
    app.state.coordinator = coord
    return app
