"""The coordinator's read side: an update's verdict as its client sees it, and the status
document (rounds, history with per-round timings and bytes, validation queue, peak memory)
that `GET /v1/status`, the dashboard and the benches read.

A read model: every function reads the round store plus a `LiveState` snapshot of the few facts
only the running coordinator holds (served version, settled round, the update being judged)."""
from __future__ import annotations

import resource
from dataclasses import dataclass, field

import torch

from ailo.federation.core.update_format import UpdateRejected
from ailo.storage.rounds_store import SQLiteRoundStore, UpdateRecord


@dataclass(frozen=True)
class LiveState:
    """What the store cannot say: the running coordinator's in-memory facts at one instant."""
    version: int
    settled_round: int
    in_flight: int | None = None
    finished: bool = False
    preset: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    validation: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    needed_in_round: int = 1             # accepted updates that close a round early (core/round_rules.py)


def short_verdict(u: UpdateRecord) -> dict:
    return {"update_id": u.id, "round": u.round_id, "status": u.status, "reason": u.reason}


def verdict(store: SQLiteRoundStore, live: LiveState, update_id: int) -> dict | None:
    """The client-facing state of one update. `pending` until the pipeline has finished with
    it (including a round close it triggered), so `aggregated` is final when it is not.
    `settled`: its round's rewards are minted (a round closed by its deadline is published
    first, then paid, so balances lag `aggregated` until then)."""
    u = store.update(update_id)
    if u is None:
        return None
    status = "pending" if live.in_flight == update_id else u.status
    out = {"update_id": u.id, "round": u.round_id, "client": u.client_id, "status": status}
    if status == "refused":
        out.update(reason=u.reason, detail=u.detail, code=u.extra.get("code", 422))
    elif status == "accepted":
        rnd = store.round(u.round_id)
        closed = rnd.status == "closed"
        out.update(aggregated=closed, settled=live.settled_round >= u.round_id, version=live.version,
                   accepted_in_round=store.count_updates(u.round_id, "accepted"))
        if not closed:  # when the reward comes: the round closes with `needed` accepted or at its deadline
            out.update(needed_in_round=live.needed_in_round, round_deadline=rnd.deadline)
    return out


def receipt(store: SQLiteRoundStore, live: LiveState, u: UpdateRecord) -> dict:
    """A retried signed body: the original row's id and, once decided, its verdict."""
    v = verdict(store, live, u.id) or {}
    if v.get("status") == "refused":
        raise UpdateRejected(v["reason"], v["detail"], v["code"])
    return {**v, "replayed": True}


def history(store: SQLiteRoundStore, counters: dict) -> list[dict]:
    """One row per published version: its round's verdicts, bytes and timings."""
    rows_out = []
    for v in store.versions():
        rows = store.updates(v.round_id, limit=10**9) if v.round_id else []
        t = {k.rsplit(".", 1)[1]: c for k, c in counters.items() if k.startswith(f"timing.round.{v.round_id}.")}
        rows_out.append({"version": v.version, "round": v.round_id, "val_loss": v.val_loss, "published": v.created,
                         "updates": sum(u.status == "accepted" for u in rows),
                         "refused": sum(u.status == "refused" for u in rows),
                         "refusals": _reasons(rows),
                         "bytes_up": sum(u.size or 0 for u in rows),
                         "bytes_down": counters.get(f"chunk_bytes_served.round.{v.round_id}", 0),
                         "validate_ms": round(sum(u.extra.get("validate_ms", 0) for u in rows), 1),
                         "validate_phases_ms": _phase_sums(rows),
                         "upload_ms_max": max((u.extra.get("receive_ms", 0) for u in rows), default=0), **t})
    return rows_out


def _reasons(rows: list[UpdateRecord]) -> dict[str, int]:
    """Refused updates of a round by reason (`stale_round`/`finished` are late, not cheats)."""
    out: dict[str, int] = {}
    for u in rows:
        if u.status == "refused":
            out[u.reason or "unknown"] = out.get(u.reason or "unknown", 0) + 1
    return out


def _phase_sums(rows: list[UpdateRecord]) -> dict[str, float]:
    out: dict[str, float] = {}
    for u in rows:
        for phase, ms in (u.extra.get("phase_ms") or {}).items():
            out[phase] = round(out.get(phase, 0.0) + ms, 1)
    return out


def peak_memory(device: torch.device) -> dict:
    peak = {"rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        peak["gpu_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        peak["gpu_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    return peak


def status(store: SQLiteRoundStore, live: LiveState) -> dict:
    rnd = store.open_round()
    counters = store.counters()
    return {"round": rnd.id, "version": live.version, "settled_round": live.settled_round, "preset": live.preset,
            "finished": live.finished, "deadline": rnd.deadline, "min_updates": rnd.min_updates,
            "accepted_in_round": store.count_updates(rnd.id, "accepted"), "needed_in_round": live.needed_in_round,
            "pending_in_round": store.count_updates(rnd.id, "pending"), "clients": store.clients(),
            "history": history(store, counters), "device": str(live.device), "peak_memory": peak_memory(live.device),
            "validation": live.validation, "counters": {k: v for k, v in counters.items() if ".round." not in k},
            "config": live.config}
