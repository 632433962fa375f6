"""A red-team campaign (`ailo.testing.redteam`) played on a real coordinator app with a
private holdout carved from the corpus: the setting the PoC campaign tests share."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from fastapi.testclient import TestClient

from ailo.data import carve_private
from ailo.federation.coordinator.coordinator import CoordinatorConfig
from ailo.testing.redteam import Campaign
from ailo.federation.core.validate import ValidationConfig
from ailo.server.services import ServiceConfig, build_app


@contextmanager
def played_campaign(tmp: Path, corpus_dir: Path, kinds: tuple[str, ...], rounds: int,
                    prepare: Callable[[Campaign], None] | None = None) -> Iterator[tuple]:
    """Yields (app, client, campaign) after `rounds` rounds of honest workers and `kinds` attackers."""
    carve_private(corpus_dir, tmp / "public", tmp / "private")
    cfg = CoordinatorConfig(min_updates=1, max_updates=1000, local_steps=6, lr_decay=0.8, round_seconds=3600,
                            val_batches=2, data_dir=str(tmp / "public"))
    svc = ServiceConfig(validation=ValidationConfig(registrations_per_hour=30), holdout_dir=str(tmp / "private"),
                        holdout_sequences=32)
    app = build_app(cfg, tmp / "coord", svc)
    with TestClient(app) as client:
        camp = Campaign(client, app.state.coordinator, tmp / "public", cache_dir=tmp / "cache", kinds=kinds)
        if prepare is not None:
            prepare(camp)
        camp.play(rounds)
        yield app, client, camp
