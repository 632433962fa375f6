"""The coordinator's side of slice tasks: who gets a slice, which one, and what an update for a
task may carry (issue 26 part B; the pure rules are in `slices.py`).

On by default: a task request that declares a `memory_budget` (bytes) in which no way of
training the full task fits (the worker's own planner, `client/memory_plan.py`, asked for the
`memory_device` the request declares; "cpu" when it declares none — fp32 activations, no host
offload, attention probabilities kept: a budget that fits there fits anywhere) is answered
with a slice sized to the budget on that device. A budget too small for any single unit is refused (422
`budget_too_small`). Requests without a budget get full tasks, as before.

Coverage (`last_trained`) is rebuilt from the store's accepted updates at start and kept
current from the accept hook, so the least-recently-trained policy survives restarts.
"""
from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

from ailo.federation.coordinator.holdout import derive, load_secret
from ailo.federation.client.memory_plan import DoesNotFit, ModelShape, TaskShape, format_size, plan as plan_memory
from ailo.federation.core.slices import (HEADROOM, Slice, SlicePolicy, SliceTicket, influence, make_slice,
                                         slice_state_bytes, units_of)
from ailo.federation.core.update_format import UpdateMeta, UpdateRejected

if TYPE_CHECKING:
    from ailo.storage.rounds_store import RoundRecord


class CoordinatorFacts(Protocol):
    """What slice tasks read of the coordinator (a Protocol, so this module imports no
    coordinator.py: the coordinator owns its SliceTasks, not the other way round)."""
    cfg: Any
    manifest: Any
    store: Any


class SliceTasks:
    def __init__(self, coord: CoordinatorFacts):
        self.coord = coord
        self.shapes = {n: tuple(t.shape) for n, t in coord.manifest.tensors.items()}
        self.units = [u for u, _ in units_of(self.shapes, coord.cfg.n_layer)]
        self.groups = [names for _, names in units_of(self.shapes, coord.cfg.n_layer)]  # tensors per unit
        self.total_params = make_slice(self.shapes, coord.cfg.n_layer, 0, len(self.units)).params
        self.policy = SlicePolicy(coord.cfg, self.shapes)
        self.ticket = SliceTicket(derive(load_secret(coord.store.dir), "slice-task"))
        self.lock = threading.Lock()
        self.issued: dict[int, Counter] = {}           # round → unit → slice tasks handed out
        self.full_issued: set[int] = set()              # rounds that handed out a full task
        self.last_trained: dict[str, int] = {}
        for u in coord.store.updates(status="accepted", limit=10**9):
            self.covered(u.round_id, u.extra.get("slice"))

    def covered(self, round_id: int, span: list[int] | None) -> None:
        a, b = span if span else (0, len(self.units))
        for u in self.units[a:b]:
            self.last_trained[u] = max(self.last_trained.get(u, -1), round_id)

    def full_fits(self, task: dict, budget: int, device: str = "cpu") -> tuple[bool, int]:
        """(does a full task fit `budget`, the least a full task needs)."""
        c = self.coord.cfg
        shape = ModelShape(c.n_layer, c.n_embd, c.n_ffn, c.vocab_size, c.n_ctx)
        try:
            return True, plan_memory(shape, TaskShape(task["batch_size"], task["seq_len"], task["optimizer"]),
                                     budget, device).estimate
        except DoesNotFit as exc:
            return False, exc.least

    def assign(self, client_id: str, rnd: "RoundRecord", budget: int | None, device: str = "cpu") -> tuple[str, dict]:
        """(task id, extra task fields): a plain task id for a full task, or a MAC'ed slice
        ticket and the `slice` field (units, tensors, share) for a budget-limited one."""
        nonce = uuid.uuid4().hex
        device = "cuda" if device == "cuda" else "cpu"
        fits, need = (True, 0) if budget is None else self.full_fits(rnd.task, budget, device)
        if fits:
            self.full_issued = {r for r in self.full_issued if r >= rnd.id} | {rnd.id}
            return nonce, {}
        with self.lock:
            issued = self.issued.setdefault(rnd.id, Counter())
            self.issued = {r: c for r, c in self.issued.items() if r >= rnd.id}
            sl = self.policy.choose(budget, rnd.task["optimizer"], rnd.task["seq_len"], self.last_trained, issued, device)
            if sl is None:  # the worker turns this into its TaskDoesNotFit: "refusing <detail>"
                least = min(slice_state_bytes(self.coord.cfg, self.shapes,
                                              make_slice(self.shapes, self.coord.cfg.n_layer, i, i + 1),
                                              rnd.task["optimizer"], 1, rnd.task["seq_len"], device)
                            for i in range(len(self.units))) / (1 - HEADROOM)
                raise UpdateRejected("budget_too_small", f"the {self.coord.cfg.name} task of round {rnd.id}: needs at "
                                     f"least {format_size(need)} in full or {format_size(least)} as the smallest "
                                     f"slice on {device}; the memory budget is {format_size(budget)}", 422)
            issued.update(sl.units)
        return self.ticket.issue(nonce, client_id, rnd.id, sl), {"slice": sl.to_task()}

    def tensors_issued(self, round_id: int) -> list[str] | None:
        """What the round's tasks train so far: None = every tensor (a full task is out), else
        the tensors of the units its slice tasks cover (the PoC warms its reference for these)."""
        if round_id in self.full_issued:
            return None
        units = self.issued.get(round_id, Counter())
        return [n for u, group in zip(self.units, self.groups) if units.get(u) for n in group]

    def expected(self, meta: UpdateMeta, round_id: int) -> Slice | None:
        """The slice an update's task assigned (None: a full task); refuses a slice claim whose
        ticket was not issued to this client for this round."""
        span = self.ticket.read(meta.task_id, meta.client_id, round_id)
        if span is None:
            if SliceTicket.claims_slice(meta.task_id):
                raise UpdateRejected("bad_slice", "the task id claims a slice this coordinator did not assign to "
                                     f"client {meta.client_id!r} in round {round_id}", 403)
            return None
        return make_slice(self.shapes, self.coord.cfg.n_layer, *span)

    def weight(self, n_samples: int, extra: dict) -> float:
        """An accepted update's weight in the round's average: n_k, × its share for a slice
        (core/slices.influence: the factor its reward gets too)."""
        return influence(n_samples, extra.get("slice_params") if extra.get("slice") else None, self.total_params)

    def of_row(self, extra: dict) -> Slice | None:
        span = extra.get("slice")
        return make_slice(self.shapes, self.coord.cfg.n_layer, *span) if span else None
