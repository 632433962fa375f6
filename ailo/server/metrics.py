"""The coordinator's `GET /metrics` in Prometheus text format (`prometheus-client`).

Two kinds of series, in one registry per app (several coordinators in one test process never
share counters):
- events, counted as they happen (reset by a restart, which Prometheus' rate() handles):
  updates accepted / refused by reason, validation seconds, rounds closed (coordinator hooks),
  HTTP requests by method, route TEMPLATE and status (an ASGI middleware; a path that matches
  no route is `other`, so junk URLs cannot grow the label set);
- state, read when scraped: round and model version, chunk bytes served by the coordinator
  and reported as fetched from mirrors, update bytes received, rooms by state, room nodes
  (ready / joined), spot checks by verdict, strikes and barred wallets, ledger height, supply,
  minted, burned, transactions.
Label values are fixed codes and route templates only: never a wallet address, a username, a
room name or a client id.
"""
from __future__ import annotations

import time
from collections import Counter as Tally
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

VALIDATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)


class StateCollector(Collector):
    """Series read from the coordinator's services when /metrics is scraped."""

    def __init__(self, coord: Any, ledger: Any = None, rooms: Any = None):
        self.coord, self.ledger, self.rooms = coord, ledger, rooms

    def collect(self):
        coord = self.coord
        yield GaugeMetricFamily("ailo_round", "id of the open training round", value=coord.current_round().id)
        yield GaugeMetricFamily("ailo_model_version", "published global model version", value=coord.version)
        counters = coord.store.counters()
        for name, key, doc in (
                ("ailo_chunk_bytes_served", "chunk_bytes_served", "weight chunk and patch bytes the coordinator sent"),
                ("ailo_chunk_bytes_mirrors", "chunk_bytes_mirrors",
                 "chunk bytes workers reported fetching from mirrors (X-Ailo-Mirror-Bytes)"),
                ("ailo_update_bytes_received", "update_bytes_received", "update body bytes admitted")):
            yield CounterMetricFamily(name, doc, value=counters.get(key, 0))
        if self.rooms is not None:
            yield from self._rooms()
        if self.ledger is not None:
            info = self.ledger.info()
            yield GaugeMetricFamily("ailo_ledger_height", "sealed blocks in the chain", value=info["height"])
            for key in ("supply", "minted", "burned"):
                yield GaugeMetricFamily(f"ailo_ledger_{key}_units", f"AiloCoin {key} (units of 1e-8 ALC)",
                                        value=info[key])
            yield CounterMetricFamily("ailo_ledger_transactions", "transactions in sealed blocks",
                                      value=info["tx_count"])
            yield GaugeMetricFamily("ailo_ledger_registered_wallets", "wallets with a username",
                                    value=info["registered"])

    def _rooms(self):
        by_state, nodes, checks = Tally(), Tally(), Tally()
        strikes = barred = 0
        for room in self.rooms.rooms():
            view = self.rooms.view(room)
            by_state[view["state"]] += 1
            nodes["joined"] += len(view["nodes"])
            nodes["ready"] += sum(1 for n in view["nodes"] if n["ready"])
            checks.update(view["verification"]["checks"])
            strikes += sum(room.strikes.values())
            barred += len(room.banned)
        rooms = GaugeMetricFamily("ailo_rooms", "inference rooms by state", labels=["state"])
        for state in ("forming", "ready", "degraded"):
            rooms.add_metric([state], by_state.get(state, 0))
        yield rooms
        gauge = GaugeMetricFamily("ailo_room_nodes", "room nodes: joined, and ready to serve", labels=["state"])
        for state in ("joined", "ready"):
            gauge.add_metric([state], nodes[state])
        yield gauge
        family = CounterMetricFamily("ailo_room_spot_checks", "spot checks of room hops by verdict",
                                     labels=["verdict"])
        for verdict, n in sorted(checks.items()):
            family.add_metric([str(verdict)], n)
        yield family
        yield GaugeMetricFamily("ailo_room_strikes", "spot-check strikes held by wallets", value=strikes)
        yield GaugeMetricFamily("ailo_room_barred_wallets", "wallets evicted for cheating", value=barred)


class HttpMetrics:
    """Pure ASGI middleware (streams pass through untouched): requests and their duration by
    method, route template and status, counted when the response starts."""

    def __init__(self, app, registry: CollectorRegistry):
        self.app = app
        self.requests = Counter("ailo_http_requests", "HTTP requests by route template and status",
                                ["method", "route", "status"], registry=registry)
        self.seconds = Histogram("ailo_http_request_seconds", "time to the response's first byte",
                                 ["method", "route"], buckets=HTTP_BUCKETS, registry=registry)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, seen = time.perf_counter(), {}

        async def sending(message):
            if message["type"] == "http.response.start" and not seen:
                seen["status"] = message["status"]
                self._count(scope, message["status"], t0)
            await send(message)
        try:
            await self.app(scope, receive, sending)
        except Exception:
            if not seen:
                self._count(scope, 500, t0)
            raise

    def _count(self, scope, status: int, t0: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "other"
        method = scope["method"] if scope["method"] in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS") else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.seconds.labels(method, route).observe(time.perf_counter() - t0)


def install_metrics(app: FastAPI, coord: Any, ledger: Any = None, rooms: Any = None) -> CollectorRegistry:
    """Mount GET /metrics, hook the coordinator's events and count HTTP requests."""
    registry = CollectorRegistry()
    registry.register(StateCollector(coord, ledger, rooms))
    accepted = Counter("ailo_updates_accepted", "updates accepted", registry=registry)
    refused = Counter("ailo_updates_refused", "updates refused, by reason", ["reason"], registry=registry)
    validation = Histogram("ailo_update_validation_seconds", "time to validate one update (pipeline)",
                           buckets=VALIDATION_BUCKETS, registry=registry)
    rounds = Counter("ailo_rounds_closed", "training rounds closed (a version published)", registry=registry)

    def judged(sub) -> None:
        if "validate_ms" in sub.extra:  # admission refusals are not validated
            validation.observe(sub.extra["validate_ms"] / 1000.0)

    coord.on_accept.append(lambda _c, sub, _id: (accepted.inc(), judged(sub)))
    coord.on_refused.append(lambda _c, sub, exc: (refused.labels(exc.reason).inc(), judged(sub)))
    coord.on_round_closed.append(lambda _c, _round: rounds.inc())

    router = APIRouter(tags=["operations"])

    @router.get("/metrics", summary="Prometheus metrics (text exposition format)", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router)
    app.add_middleware(HttpMetrics, registry=registry)
    return registry
