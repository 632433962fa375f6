"""Composition root: builds the coordinator's services and mounts them in one FastAPI app.

    federation (rounds, FedAvg)  ── checks/hooks ──  Proof-of-Contribution ── mints ──  ledger
    rooms (distributed inference) ── mints ──┘        web pages (browser client, dashboard)

State lives under one directory: `state.db` + `chunks/` + `updates/` (federation),
`ledger.db` (chain), `rooms.json` (room definitions and spot-check sanctions, restored at start-up),
`coordinator-key.json` (the key that signs blocks and mints, 0600), `operator-token` (the
Bearer token that creates and deletes rooms, 0600), and `exports/` (model releases written by `ailo export`, served read-only).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI

from ailo.federation.coordinator.coordinator import Coordinator, CoordinatorConfig
from ailo.federation.coordinator.poc import ProofOfContribution
from ailo.federation.core.validate import ValidationConfig
from ailo.inference.auth import load_operator_token
from ailo.inference.socket_nodes import RoutingNodeClient, SocketHub
from ailo.ledger.service import LedgerService
from ailo.server.app import create_app
from ailo.server.exports_api import make_exports_router
from ailo.server.ledger_api import make_ledger_router
from ailo.server.metrics import install_metrics
from ailo.server.ratelimit import Buckets, Limit, RateLimitMiddleware
from ailo.server.room_socket_api import make_room_socket_router
from ailo.server.rooms_api import RoomPolicy, make_rooms_router
from ailo.storage.factory import open_ledger_store, open_round_store
from ailo.inference.durable_rooms import DurableRoomRegistry
from ailo.server.web_routes import make_web_router
from ailo.wallet import Wallet


@dataclass(frozen=True)
class ServiceConfig:
    proof_of_contribution: bool = True     # False: open mode, unsigned updates, no rewards (experiments)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    ip_updates_per_minute: float = 240.0   # per network address (many volunteers may share a NAT)
    ip_update_burst: int = 60
    room_checkpoints: Path | None = None   # folder of checkpoint folders served to browser nodes
    allow_private_node_urls: bool = False  # rooms: let nodes advertise loopback/private URLs (dev, demo)
    ip_tasks_per_minute: float = 600.0     # POST /v1/tasks per address (a waiting worker polls every 0.5 s)
    ip_task_burst: int = 120
    ip_junk_per_minute: float = 30.0       # malformed requests per address, counted apart from the above
    ip_junk_burst: int = 20
    room_requests_per_minute: float = 60.0  # generate, per requester wallet (4x that per network address)
    db_url: str | None = None              # postgresql://... for rounds + ledger; None: SQLite files in state_dir
    room_verify_p: float = 0.10             # share of (request, span) audits (ailo.inference.verify)
    holdout_dir: str | None = None         # private PoC holdout text (never served); see docs/REWARDS.md
    holdout_sequences: int = 64            # holdout windows scored per model version


def coordinator_wallet(state_dir: Path) -> Wallet:
    path = state_dir / "coordinator-key.json"
    if path.exists():
        return Wallet.load(path)
    wallet = Wallet.generate()
    wallet.save(path)
    return wallet


def rate_limit_middleware(app: FastAPI, validation: ValidationConfig, svc: ServiceConfig) -> None:
    """Per-network-address token buckets on the write paths a Sybil would hammer; malformed
    requests count in a separate bucket (ailo.server.ratelimit), so junk cannot lock an address out."""
    def junk() -> Buckets:
        return Buckets(svc.ip_junk_per_minute / 60.0, svc.ip_junk_burst)
    limits = {
        "/v1/register": Limit(Buckets(validation.registrations_per_hour / 3600.0,
                                      max(1, int(validation.registrations_per_hour))), junk(),
                              f"{validation.registrations_per_hour:g} registrations per hour"),
        "/v1/updates": Limit(Buckets(svc.ip_updates_per_minute / 60.0, svc.ip_update_burst), junk(),
                             f"{svc.ip_updates_per_minute:g} updates per minute"),
        "/v1/tasks": Limit(Buckets(svc.ip_tasks_per_minute / 60.0, svc.ip_task_burst), junk(),
                           f"{svc.ip_tasks_per_minute:g} task requests per minute"),
    }
    app.add_middleware(RateLimitMiddleware, limits=limits)


def build_app(config: CoordinatorConfig, state_dir: Path, svc: ServiceConfig = ServiceConfig()) -> FastAPI:
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    coord = Coordinator(config, state_dir, store=open_round_store(state_dir, svc.db_url))
    ledger = LedgerService(open_ledger_store(state_dir, svc.db_url), coordinator_wallet(state_dir))
    rooms = DurableRoomRegistry(state_dir / "rooms.json")
    rpm = svc.room_requests_per_minute
    policy = RoomPolicy(operator_token=load_operator_token(state_dir), allow_private_urls=svc.allow_private_node_urls,
                        is_registered=ledger.is_registered, generate_per_wallet_per_min=rpm,
                        generate_wallet_burst=max(1, int(rpm / 6)), generate_per_ip_per_min=4 * rpm,
                        generate_ip_burst=max(1, int(4 * rpm / 6)))
    library, references = None, None
    if svc.room_checkpoints is not None:  # the operator's checkpoints: browser nodes' weights + spot-check referee
        from ailo.inference.verify import references_from_library
        from ailo.inference.weights import CheckpointLibrary
        library = CheckpointLibrary(svc.room_checkpoints)
        references = references_from_library(library)
    hub = SocketHub()  # browser nodes join over /v1/rooms/{id}/node-socket
    routers = [make_ledger_router(ledger),
               make_rooms_router(rooms, rewards=ledger, policy=policy, client_factory=lambda: RoutingNodeClient(hub),
                                 verify_p=svc.room_verify_p, references=references),
               make_room_socket_router(rooms, hub, policy),
               make_web_router(coord), make_exports_router(state_dir / "exports")]
    if library is not None:
        from ailo.server.room_weights_api import make_room_weights_router
        routers.append(make_room_weights_router(rooms, library, config.mirrors))
    poc = None
    if svc.proof_of_contribution:
        poc = ProofOfContribution(ledger, svc.validation, holdout_dir=svc.holdout_dir,
                                  holdout_sequences=svc.holdout_sequences)
        poc.install(coord)
    app = create_app(coord, routers, periodic=[ledger.seal_block])
    rate_limit_middleware(app, svc.validation, svc)
    install_metrics(app, coord, ledger, rooms)  # outermost middleware: counts the rate limiter's 429s too
    app.state.coordinator, app.state.ledger, app.state.poc, app.state.rooms = coord, ledger, poc, rooms
    return app
