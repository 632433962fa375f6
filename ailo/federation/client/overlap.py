"""Overlapped rounds: a contributor never stops training to wait for the network (issue 27).

Two threads share one `Worker`. The trainer runs optimizer steps without pause; the courier
encodes and uploads the last phase's update, waits for its verdict and for the next model
version, and downloads it (a patch when it can), all while the trainer goes on:

    trainer  ─ phase r (from W_v) ─┬─ phase r+1 (from its own weights) ──merge W_{v+1}──┬─ phase r+2 …
    courier                       └─ encode, upload Δ_r, verdict, wait for v+1, fetch ─┘└─ upload Δ_{r+1} …

The rule (**eager merge with carry**, staleness ≤ 1): the trainer holds the served weights W_v
of its base version and its own weights θ = W_v − Δ_r + δ (δ: steps since it sent Δ_r). When
W_{v+1} arrives it applies the global change between steps:

    Δ_r in the new version (accepted), or refused on its merits:  θ ← θ + (W_{v+1} − W_v) + Δ_r
    Δ_r never judged (round moved on, upload lost) — "carry":     θ ← θ + (W_{v+1} − W_v)

so θ = W_{v+1} + δ (the global step replaces its own stale step; only unsent-but-honest work is
kept, and rides in the next update). The coordinator takes an update that arrives after its
round closed into the next round, judged on its own base (the delayed rule, coordinator/
stale_base.py): it is "accepted" here and in W_{v+2}, the version this courier then waits for.
Every update is therefore Δ = W_base − θ on the version it names, at most one update is in flight, and the next phase ends once the task
seconds have passed AND the previous update's version is merged (the trainer keeps stepping
meanwhile, up to the task's `max_steps`: the only idle time). AdamW's moments persist across
phases. Steps follow the worker's memory plan (`lean_training.planned_step`, the loop of
synchronous rounds too), planned with the overlap's two extra host copies (the Δ in flight and
the next version's weights; W_base is the plan's snapshot) taken off a CPU budget; a
slice task, or a full task whose plan does not fit beside them, runs as a synchronous round.
Quality against synchronous rounds: bench/utilization.py (`loss_ratio`), bench/RESULTS.md.
"""
from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ailo.backoff import Unavailable
from ailo.chunks import Manifest
from ailo.federation.core.codecs import CodecSpec, compress
from ailo.federation.core.local_phase import is_timed
from ailo.federation.core.update_format import UpdateMeta
from ailo.federation.client.lean_training import (QUANTISED_STATES, bound_like_adamw, device_peak_bytes,
                                                  make_lean_optimizer, planned_step)
from ailo.federation.client.uploader import submit_update
from ailo.federation.client.rounds import RETRYABLE, RoundReport, _batch_seed
from ailo.model import empty_model, get_preset
from ailo.training import TrainConfig, pick_device, set_lr


CARRY = {"stale_round", "stale_version", "unavailable"}   # honest work the network never judged


@dataclass
class Job:
    """One phase's update, handed from the trainer to the courier."""
    task: dict
    delta: dict[str, torch.Tensor]
    n_samples: int
    steps: int
    train_loss: float
    train_seconds: float
    wall_seconds: float          # since the previous submission (or the first training step)
    submitted_at: float


@dataclass
class Outcome:
    """What the courier hands back: a new version to merge, a fresh task for the same version
    (a retryable refusal), or the end of training."""
    kind: str                                 # "version" | "task" | "done"
    task: dict | None = None
    weights: dict[str, torch.Tensor] | None = None
    preset: str = ""
    carry: bool = False


@dataclass
class Phase:
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    losses: list = field(default_factory=list)

    def absorb(self, job: Job) -> None:
        """A carried update's work is part of the next one."""
        self.steps += job.steps
        self.samples += job.n_samples


class OverlappedRun:
    """`Worker.run` for time-sized tasks (see the module docstring)."""

    def __init__(self, worker: Any, first_task: dict, poll: float = 0.5):  # a client.worker.Worker
        self.w = worker
        self.first_task = first_task
        self.poll = poll
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.outcomes: queue.Queue[Outcome] = queue.Queue()
        self.error: BaseException | None = None
        self.plan = None  # the MemoryPlan the trainer steps under (Worker.plan_task)

    # -- courier thread ----------------------------------------------------------------------
    def _fetch(self, task: dict) -> tuple[Outcome, int] | None:
        compact = task.get("download") == "bf16"
        raw = self.w._call("GET", "/v1/model?format=bf16" if compact else "/v1/model").content
        manifest = Manifest.from_json(raw)
        if manifest.version != task["version"]:
            return None                                  # moved on between the two calls
        state, n = self.w.fetch_compact_state(manifest) if compact else self.w.fetch_state(manifest)
        return Outcome("version", task, state, manifest.preset), n

    def _next_task(self, after_version: int, retry_same: bool) -> tuple[Outcome, int]:
        """Poll until a newer version is published (or, when `retry_same`, a fresh task of the same)."""
        while True:
            task = self.w._json("POST", "/v1/tasks", json={"client_id": self.w.client_id})
            if task["status"] == "done":
                return Outcome("done"), 0
            if task["status"] == "train" and task["version"] > after_version:
                got = self._fetch(task)
                if got is not None:
                    return got
                continue
            if task["status"] == "train" and retry_same:
                return Outcome("task", task), 0
            time.sleep(float(task.get("retry_after", self.poll)) if task["status"] == "wait" else self.poll)

    def _deliver(self, job: Job) -> Outcome:
        w, task = self.w, job.task
        codec = CodecSpec.from_task(task)
        t0 = time.perf_counter()
        preset = task["preset"]
        body, residual = compress(job.delta, w.load_error_feedback(preset, codec), codec)
        meta = UpdateMeta(w.client_id, task["round"], task["version"], job.n_samples, job.train_loss,
                          task_id=task["task_id"])
        sha = hashlib.sha256(body).hexdigest()
        t1 = time.perf_counter()
        try:
            result = submit_update(w.http, body, w._sign(meta, sha), policy=w.policy,
                                   resign=(lambda m: w._sign(m, sha)) if w.wallet is not None else None,
                                   on_retry=w._retry_note)
        except Unavailable as exc:
            result = {"status": "refused", "reason": "unavailable", "detail": str(exc)}
        t2 = time.perf_counter()
        accepted = result.get("status") == "accepted"
        reason = result.get("reason")
        if accepted and codec.lossy:
            w.save_error_feedback(preset, codec, residual)
        attempts = w.attempts.get(task["round"], 0) + (0 if accepted else 1)
        w.attempts[task["round"]] = attempts
        retry_same = (not accepted) and reason in RETRYABLE and attempts < w.max_attempts
        outcome, downloaded = self._next_task(task["version"], retry_same)
        outcome.carry = (not accepted) and reason in CARRY
        t3 = time.perf_counter()
        self._report(job, result, len(body), downloaded,
                     {"encode": t1 - t0, "upload_and_verdict": t2 - t1, "next_version": t3 - t2})
        return outcome

    def _report(self, job: Job, result: dict, uploaded: int, downloaded: int, comm: dict) -> None:
        w, task = self.w, job.task
        seconds = {"train": job.train_seconds, "wall": job.wall_seconds, **comm}
        seconds = {k: round(v, 3) for k, v in seconds.items()}
        w.reports.append(RoundReport(task["round"], task["version"], job.train_loss, job.n_samples,
                                     job.train_seconds, downloaded, uploaded, result, seconds))
        w.rounds_done += 1
        verdict = result.get("status") if result.get("status") == "accepted" else result.get("reason")
        if w.progress:
            print(f"[{w.client_id}] round {task['round']}: loss {job.train_loss:.3f} steps={job.steps} "
                  f"train {job.train_seconds:.1f}s of {job.wall_seconds:.1f}s ↑{uploaded:,}B ↓{downloaded:,}B → {verdict}",
                  flush=True)
        if w.json_log:  # one line per submitted update: enough to compute utilization from a live run
            print(json.dumps({"client": w.client_id, "round": task["round"], "version": task["version"],
                              "overlap": True, "t": round(job.submitted_at, 3), "steps": job.steps,
                              "n_samples": job.n_samples, "train_loss": job.train_loss,
                              "seconds": seconds, "bytes": {"up": uploaded, "down": downloaded},
                              "uploaded": uploaded, "downloaded": downloaded, "verdict": verdict,
                              "status": result.get("status"), "reason": result.get("reason"),
                              "peak_device_bytes": device_peak_bytes(pick_device(w.device))}), flush=True)

    def _courier(self) -> None:
        try:
            while (job := self.jobs.get()) is not None:
                self.outcomes.put(self._deliver(job))
        except BaseException as exc:  # surfaced in the trainer's thread
            self.error = exc
            self.outcomes.put(Outcome("done"))

    # -- trainer (calling thread) ------------------------------------------------------------
    def run(self, max_rounds: int | None = None) -> list:
        w = self.w
        got = self._fetch(self.first_task) if self.first_task["status"] == "train" else None
        first, _ = got if got is not None else self._next_task(-1, True)
        while first.kind == "task":  # fetched nothing yet: the version moved on under us
            first, _ = self._next_task(-1, True)
        if first.kind == "done":
            return w.reports
        device = pick_device(w.device)
        if w.model is None or w.model.cfg.name != first.preset:
            w.model = empty_model(get_preset(first.preset), device)
        model = w.model
        model.load_state_dict(first.weights)
        model.to(device).train()
        # W_base and the Δ in flight live in host memory: on a GPU they would cost two more model
        # copies beside the weights, gradients and optimizer states (ailo-1b: 2 × 6.2 GB)
        base = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
        task = first.task
        cfg = TrainConfig(steps=int(task.get("max_steps", task["steps"])), batch_size=task["batch_size"],
                          lr=task["lr"], optimizer=task["optimizer"],
                          warmup_steps=int(task.get("warmup_steps", 0)))
        plan = self.plan = w.plan_task(task, overlapped=True)  # the budget's plan, as in synchronous rounds
        opt = make_lean_optimizer(model, cfg, plan.optimizer)
        step = planned_step(model, opt, cfg, plan, device)
        batches = w.data.random_batches(task["batch_size"], task["seq_len"],
                                        seed=_batch_seed(w.seed, w.client_id, task["round"]))
        courier = threading.Thread(target=self._courier, name=f"courier-{w.client_id}", daemon=True)
        courier.start()
        phase, outstanding, total_steps, submitted = Phase(), None, 0, 0
        last_submit = time.perf_counter()
        try:
            while True:
                idle = phase.steps >= int(task.get("max_steps", task["steps"]))  # at the cap: wait for the courier
                try:
                    outcome = self.outcomes.get(block=idle, timeout=None if idle else 0)
                except queue.Empty:
                    outcome = None
                if outcome is not None:
                    if self.error is not None:
                        raise self.error
                    if outcome.kind == "done":
                        break
                    job, outstanding = outstanding, None
                    if outcome.kind == "version":
                        self._merge(model, base, outcome.weights, None if outcome.carry else job)
                    if job is not None and (outcome.carry or outcome.kind == "task"):
                        phase.absorb(job)     # Δ_r stays in θ − W_base: the next update carries it
                    task = outcome.task
                    cfg = replace(cfg, lr=task["lr"])  # a decaying lr follows the round (warm-up: once per run)
                    step = planned_step(model, opt, cfg, plan, device)
                    if total_steps >= cfg.warmup_steps:
                        set_lr(opt, task["lr"])
                    if max_rounds is not None and submitted >= max_rounds:
                        break
                    continue
                if outstanding is None and task is not None and phase.steps > 0 and \
                        phase.seconds >= float(task.get("seconds", 0)) and (max_rounds is None or submitted < max_rounds):
                    now = time.perf_counter()
                    delta = {k: base[k] - v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
                    if plan.optimizer in QUANTISED_STATES:  # as train_planned: within full-state AdamW's reach
                        bound_like_adamw(delta, cfg.lr, phase.steps)
                    outstanding = Job(task, delta, phase.samples, phase.steps,
                                      float(torch.stack(phase.losses).float().mean()) if phase.losses else 0.0,
                                      phase.seconds, now - last_submit, time.time())
                    last_submit, phase, submitted = now, Phase(), submitted + 1
                    self.jobs.put(outstanding)  # training goes on; the next task comes with the next version
                    continue
                if idle:
                    continue
                x, y = next(batches)
                t0 = time.perf_counter()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                phase.losses.append(step(total_steps, x, y))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                phase.seconds += time.perf_counter() - t0
                phase.steps += 1
                phase.samples += x.shape[0]
                total_steps += 1
        finally:
            self.jobs.put(None)
            courier.join(timeout=5)
            if hasattr(opt, "close"):
                opt.close()  # host offload: its gradient hooks leave the model
        return w.reports

    @staticmethod
    @torch.no_grad()
    def _merge(model: torch.nn.Module, base: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
               sent: Job | None) -> None:
        """θ ← θ + (W_new − W_base) (+ Δ_r when it is in W_new or was refused); base ← W_new."""
        state = model.state_dict()
        for k, p in state.items():
            new = weights[k].to(base[k].device, torch.float32)
            step = new - base[k]
            if sent is not None:
                step += sent.delta[k]
            p.add_(step.to(p.device, p.dtype))
            base[k] = new


def wants_overlap(task: dict) -> bool:
    """Overlapped rounds serve time-sized tasks; step-sized ones keep the synchronous round."""
    return task.get("status") == "train" and is_timed(task)
