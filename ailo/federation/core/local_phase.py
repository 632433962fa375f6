"""Rounds sized by time (pure, no I/O): what a task asks of a contributor's local phase.

A step-sized task (`{"steps": S}`) makes a slow device hold the round up and a fast one idle.
A time-sized task names the phase in seconds (`"seconds"`) with a step cap (`"max_steps"`):
every device trains for the same wall time and does as many steps as its speed allows, so they
submit together, and FedAvg weighs each update by the samples it saw. `"steps"` stays in the
task for clients that only know step counts (the browser page).

Proof-of-Contribution judges a time-sized update by the work it claims (its samples ÷ batch
size, never above the cap): `work_steps`. A faster device's larger Δ is then not mistaken for
an implausible norm, and the per-coordinate AdamW bound (|Δ| ≤ c·lr·steps) stays tight.
"""
from __future__ import annotations

import math
from typing import Mapping

DEFAULT_SECONDS = 60.0     # `ailo coordinator` with no flags: a minute of local training per round
DEFAULT_MAX_STEPS = 400    # cap on one phase's steps (bounds what PoC accepts per update)


def phase_fields(local_seconds: float, max_steps: int) -> dict:
    """The task fields of a time-sized round (empty for step-sized rounds)."""
    if local_seconds <= 0:
        return {}
    return {"seconds": float(local_seconds), "max_steps": int(max_steps)}


def is_timed(task: Mapping) -> bool:
    return float(task.get("seconds", 0) or 0) > 0


def work_steps(task: Mapping, n_samples: int) -> int:
    """Local steps an update stands for: the task's `steps`, or for a time-sized task the
    steps its samples claim (at least 1, at most `max_steps`)."""
    if not is_timed(task):
        return int(task["steps"])
    cap = int(task.get("max_steps", task["steps"]))
    return max(1, min(cap, math.ceil(n_samples / max(1, int(task["batch_size"])))))


def effective_task(task: Mapping, n_samples: int) -> dict:
    """The task with `steps` replaced by the work this update claims (what the norm checks use)."""
    return {**task, "steps": work_steps(task, n_samples)}
