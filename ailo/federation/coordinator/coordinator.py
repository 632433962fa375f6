"""The coordinator service: hands out tasks, admits updates, runs FedAvg rounds (SPEC R4).

HTTP-free: `ailo.server.app` exposes it. Round data flow (docs/ARCHITECTURE.md):

    POST /v1/updates ─ admit(): identity, header structure, body fsynced, row `pending` ─► 202 + id
                                        │ id
    ValidationPipeline (one thread per device) ─ judge(): decode, PoC checks ─► accepted/refused
        accepted: fold into the round's fp32 accumulator (O(model), `RoundAccumulator`)
        enough accepted / deadline: close_round(): aggregate, evaluate, split, ONE publish tx
    GET /v1/updates/{id} (long-poll) and the next POST /v1/tasks tell the client the verdict.

Request handlers never validate tensors or close rounds, and never wait for the validator.
`SQLiteRoundStore` holds the truth: a restart re-judges pending rows (each exactly once) and
rebuilds the accumulator from the accepted ones; a model version is served only after it is
completely written.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import asdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from ailo.chunks import ChunkStore, DirectorySource, Manifest, split_state_dict
from ailo.data import TokenDataset
from ailo.faults import crash_point
from ailo.federation.coordinator import round_status
from ailo.federation.coordinator.accumulator import RoundAccumulator, fp32_copies
from ailo.federation.coordinator.admission import Admission
from ailo.federation.core.codecs import CodecSpec
from ailo.federation.coordinator.config import CoordinatorConfig, Submission, resolve_device
from ailo.federation.coordinator.downloads import CompactDownloads
from ailo.federation.coordinator.evaluation import validation_loss
from ailo.federation.core.registry import round_strategy
from ailo.federation.coordinator.outer_store import OuterStateStore
from ailo.federation.coordinator.pipeline import ValidationPipeline
from ailo.federation.core.update_format import UpdateMeta, UpdateRejected, decode_update
from ailo.federation.coordinator.slice_tasks import SliceTasks
from ailo.model import build_model, get_preset
from ailo.storage.rounds_store import RoundRecord, SQLiteRoundStore, identity_key


MAX_OPEN_TASKS = 10_000  # issued tasks remembered (POST /v1/tasks is also rate-limited per address)

log = logging.getLogger("ailo.coordinator")

# How Proof-of-Contribution (and tests) plug into admission, validation and round closing.
Check = Callable[["Coordinator", Submission], None]            # raise UpdateRejected to refuse
AcceptHook = Callable[["Coordinator", Submission, int], None]  # called with the update row id
RoundHook = Callable[["Coordinator", int], None]                # called with the closed round id
RefuseHook = Callable[["Coordinator", Submission, UpdateRejected], None]  # after a refusal is recorded


class Coordinator(Admission):
    def __init__(self, config: CoordinatorConfig, state_dir: Path,
                 pre_checks: list[Check] | None = None, post_checks: list[Check] | None = None,
                 on_accept: list[AcceptHook] | None = None, on_round_closed: list[RoundHook] | None = None,
                 store: SQLiteRoundStore | None = None):
        """`store`: another backend with the same interface (PostgresRoundStore); default SQLite."""
        self.config = config
        self.cfg = get_preset(config.preset)
        self.seq_len = config.seq_len or self.cfg.n_ctx
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":  # holdout forwards in TF32 (fp32 accumulate); see docs/ARCHITECTURE.md
            torch.backends.cuda.matmul.allow_tf32 = True
        self.store = store if store is not None else SQLiteRoundStore(state_dir)
        self.codec = CodecSpec(config.codec, config.codec_density, config.ef_decay)
        self.aggregator, self.outer = round_strategy(config.aggregator, config.outer, config.server_lr,
                                                     config.outer_momentum)
        self.outer_store = OuterStateStore(Path(state_dir) / "outer")
        self.downloads = CompactDownloads(self.store, config.num_chunks, self.cfg.name, self.cfg.to_dict()) \
            if config.compact_downloads else None
        self.pre_checks, self.post_checks = pre_checks or [], post_checks or []   # request path / pipeline
        self.on_accept = on_accept or []
        self.on_round_closed = on_round_closed or []
        self.on_refused: list[RefuseHook] = []
        self.on_closing: list[RoundHook] = []  # before a round's aggregate: drop what only judging needed
        self.uncounted: Callable[["Coordinator", int], int] = lambda c, r: 0  # accepted, not counted to close
        self.status_extras: list[Callable[["Coordinator"], dict]] = []  # merged into status()
        self.on_idle: list[Callable[["Coordinator"], None]] = []  # pipeline thread, queue empty: warm caches
        self.lock = threading.RLock()          # swaps of model + manifest (short)
        self.admit_lock = threading.Lock()     # admission decisions: nonces, duplicates (short)
        self._admitting: set[tuple[int, str]] = set()  # (round, identity_key) being written
        self.tasks: dict[str, tuple[str, int, float]] = {}  # task id → (client, round, issued at)
        self.val_batches = TokenDataset.from_dir(config.data_dir, "val").fixed_batches(
            config.val_batches, config.batch_size, self.seq_len)
        self.model = build_model(self.cfg, seed=config.seed)
        latest = self.store.latest_version()
        if latest is None:
            self.model.to(self.device)
            self._genesis()
        else:
            self.manifest = Manifest.from_json(latest.manifest)
            self.model.load_state_dict(ChunkStore(self.manifest, DirectorySource(self.store.chunks_dir)).state_dict())
            self.outer_store.restore(self.outer, self.manifest.version)
            self.model.to(self.device)
        self.model.eval()
        self.slice_tasks = SliceTasks(self)  # budget-limited workers get slices (slice_tasks.py)
        # Last round whose close hooks (rewards) have run. Published rounds before this start
        # count as settled: `ProofOfContribution.install` pays any left unpaid before serving.
        self.settled_round = self.current_round().id - 1
        self.accumulator = RoundAccumulator(self.aggregator, self.device)
        self._rebuild_accumulator()
        self.pipeline = ValidationPipeline(self.judge, self.tick, self._pending_ids, capacity=config.max_pending,
                                           name=f"validator-{self.device}")

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the validation pipeline (it first judges updates left pending by a crash)."""
        self.pipeline.start()

    def stop(self) -> None:
        self.pipeline.stop()

    def drain(self, timeout: float = 120.0, tick: bool = True) -> None:
        """Judge everything admitted so far (in this thread when the pipeline is not running),
        then, with `tick`, apply the deadline rule once."""
        if self.pipeline.running:
            if not self.pipeline.wait_idle(timeout):
                raise TimeoutError("validation pipeline did not drain")
            return
        for update_id in self._pending_ids():
            self.judge(update_id)
        if tick:
            self.tick()

    def _pending_ids(self) -> list[int]:
        return [u.id for u in self.store.updates(status="pending", limit=10**9)]

    # -- model versions --------------------------------------------------------------------
    def _split(self, version: int, state: dict[str, torch.Tensor] | None = None) -> Manifest:
        # each chunk written as soon as it is serialised: no second copy of the model in memory
        manifest, _ = split_state_dict(state if state is not None else self.model.state_dict(),
                                       self.config.num_chunks, version=version, preset=self.cfg.name,
                                       config=self.cfg.to_dict(), sink=self.store.put_chunk)
        return manifest

    def _genesis(self) -> None:
        if self.config.init:  # continue from a checkpoint (DiLoCo-style runs start from a trained model)
            from safetensors.torch import load_file
            self.model.load_state_dict(load_file(self.config.init))
        self.manifest = self._split(0)
        if self.downloads:
            self.downloads.prepare(0, self.model.state_dict(), self.model.state_dict())
            self.downloads.commit()
        self.store.start(self.manifest.to_json(), self.evaluate(), self._task_spec(1),
                         self.config.min_updates, time.time() + self.config.round_seconds)

    def evaluate(self, params: dict[str, torch.Tensor] | None = None) -> float:
        """Validation loss of the global model, or of `params` swapped into it (no model copy)."""
        return validation_loss(self.model, self.val_batches, self.device, params)

    def _task_spec(self, round_id: int) -> dict:
        return self.config.task_spec(round_id, self.seq_len, self.codec.to_task())

    @property
    def version(self) -> int:
        return self.manifest.version

    # -- tasks -----------------------------------------------------------------------------
    def current_round(self) -> RoundRecord:
        rnd = self.store.open_round()
        assert rnd is not None, "the store always has an open round after genesis"
        return rnd

    def finished(self) -> bool:
        return self.config.max_rounds is not None and self.current_round().id > self.config.max_rounds

    def task(self, client_id: str, address: str | None = None, memory_budget: int | None = None,
             memory_device: str = "cpu") -> dict:
        """Never waits on validation: reads the store only. Carries the caller's last verdict.
        `address` (the wallet that will sign) is the identity; a bare client id only in open mode.
        A `memory_budget` (bytes) too small for a full task on `memory_device` gets a slice task
        (slice_tasks.py)."""
        rnd = self.current_round()
        last = self.store.latest_update_of(client_id, address)
        extra = {"last_update": round_status.short_verdict(last)} if last is not None else {}
        if self.finished():
            return {"status": "done", "round": rnd.id, "version": self.version, **extra}
        if identity_key(client_id, address) in self.store.holders(rnd.id):  # accepted or being judged
            return {"status": "wait", "round": rnd.id, "version": self.version, "retry_after": 0.5, **extra}
        task_id, sliced = self.slice_tasks.assign(client_id, rnd, memory_budget, memory_device)
        now = time.time()
        self._prune_tasks(rnd.id)
        self.tasks[task_id] = (client_id, rnd.id, now)
        return {"status": "train", "task_id": task_id, "round": rnd.id, "version": rnd.base_version,
                "preset": self.cfg.name, "deadline": rnd.deadline, "issued_at": now, **rnd.task, **extra, **sliced}

    def _prune_tasks(self, round_id: int) -> None:
        """Issued tasks are bookkeeping, not state: keep only the open round's, at most
        MAX_OPEN_TASKS (oldest dropped first), so junk task requests cannot grow memory."""
        with self.admit_lock:
            if self.tasks and next(iter(self.tasks.values()))[1] != round_id:
                self.tasks = {k: v for k, v in self.tasks.items() if v[1] == round_id}
            while len(self.tasks) >= MAX_OPEN_TASKS:
                self.tasks.pop(next(iter(self.tasks)))

    # -- validation (pipeline thread) ----------------------------------------------------------
    def judge(self, update_id: int) -> None:
        """Decide one pending update, exactly once; may close the round."""
        row = self.store.update(update_id)
        if row is None or row.status != "pending":
            return
        t0 = time.perf_counter()
        rnd = self.current_round()
        meta = UpdateMeta(row.client_id, row.round_id, row.extra.get("base_version", rnd.base_version), row.n_samples,
                          row.train_loss, task_id=row.extra.get("task_id", ""), address=row.address or "")
        sub = Submission(meta, b"", row.sha256 or "", rnd, row.received,
                         extra={k: v for k, v in row.extra.items() if k not in ("base_version", "task_id")})
        try:
            if self.finished():
                raise UpdateRejected("finished", "training finished before this update was validated", 409)
            if row.round_id != rnd.id and not self._carry_over(row, rnd, sub):
                raise UpdateRejected("stale_round", f"round {row.round_id} closed before this update was "
                                     f"validated; the open round is {rnd.id}", 409)
            with sub.timed("read"):
                sub.body = self.store.update_blob(sub.sha256)
            with sub.timed("decode"):
                decoded = decode_update(sub.body, self.manifest, CodecSpec.from_task(rnd.task), self.device,
                                        self._slice_names(row.extra))
                sub.body = b""
                sub.tensors = {k: v.to(self.device) for k, v in decoded.items()}
                del decoded
            for check in self.post_checks:
                with sub.timed(getattr(check, "__name__", "check")):
                    check(self, sub)
        except UpdateRejected as exc:
            sub.extra["validate_ms"] = round(1000 * (time.perf_counter() - t0), 1)
            self.store.decide_update(update_id, "refused", exc.reason, str(exc), {**sub.extra, "code": exc.status})
            log.info("update %d refused (round %d, wallet %s): %s: %s", update_id, row.round_id,
                     row.address or "-", exc.reason, exc, extra={"event": "verdict", "update": update_id,
                     "round": row.round_id, "wallet": row.address, "verdict": "refused", "reason": exc.reason})
            for hook in self.on_refused:
                hook(self, sub, exc)
            return
        sub.extra["validate_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        self.store.decide_update(update_id, "accepted", extra=sub.extra)
        log.info("update %d accepted (round %d, wallet %s, %d samples)", update_id, row.round_id,
                 row.address or "-", row.n_samples, extra={"event": "verdict", "update": update_id,
                 "round": row.round_id, "wallet": row.address, "verdict": "accepted"})
        crash_point("after_accept")
        t_fold = time.perf_counter()
        try:
            self.accumulator.fold(update_id, self.model.state_dict(), sub.tensors,
                                  self.slice_tasks.weight(row.n_samples, sub.extra), sub.extra.get("clip_scale", 1.0))
        except Exception:
            self._rebuild_accumulator()
        self.store.bump_counter(f"timing.round.{rnd.id}.fold_ms", int(1000 * (time.perf_counter() - t_fold)))
        self.slice_tasks.covered(rnd.id, row.extra.get("slice"))
        for hook in self.on_accept:
            hook(self, sub, update_id)
        sub.tensors = {}
        self._close_if_full(rnd)

    def counted(self, round_id: int, need: int) -> int:
        """Accepted updates that count towards closing a round: not those its settlement pays nothing
        (`uncounted`: zero-compute copies cannot fill or close a round), asked once `need` is reached."""
        n = self.store.count_updates(round_id, "accepted")
        return n - self.uncounted(self, round_id) if n >= need else n

    def _close_if_full(self, rnd: RoundRecord) -> bool:
        """Close the round once it holds `rules.needed` counted updates (core/round_rules.py)."""
        if not self.config.rules.full(self.counted(rnd.id, self.config.rules.needed)):
            return False
        self._close_round(rnd)
        return True

    def _accepted_files(self, round_id: int) -> list[tuple]:
        rows = self.store.updates(round_id, "accepted", limit=10**9)
        self._names_of = {self.store.update_blob_path(u.sha256): self._slice_names(u.extra) for u in rows}
        return [(u.id, self.store.update_blob_path(u.sha256), self.slice_tasks.weight(u.n_samples, u.extra),
                 u.extra.get("clip_scale", 1.0)) for u in rows]

    def _slice_names(self, extra: dict) -> list[str] | None:
        """The tensors of a slice update (its row's `slice`), None for a full update."""
        sl = self.slice_tasks.of_row(extra)
        return list(sl.names) if sl is not None else None

    def _decode_file(self, path: Path) -> dict[str, torch.Tensor]:
        codec = CodecSpec.from_task(self.current_round().task)
        names = getattr(self, "_names_of", {}).get(path)
        return {k: v.to(self.device) for k, v in
                decode_update(path.read_bytes(), self.manifest, codec, self.device, names).items()}

    def _rebuild_accumulator(self) -> None:
        rnd = self.current_round()
        self.accumulator.rebuild(rnd.id, self.model.state_dict(), self._accepted_files(rnd.id), self._decode_file)

    # -- rounds (pipeline thread) ----------------------------------------------------------------
    def tick(self) -> None:
        """Deadline handling (the liveness rule, core/round_rules.py): a due round closes with
        ≥ min_updates accepted, or — once it is 2 × round_seconds old (extended once) — with
        ≥ quorum_updates (≥ 1); otherwise its deadline moves on by round_seconds."""
        rnd = self.current_round()
        now = time.time()
        if self.finished():
            return
        if self._close_if_full(rnd):  # full: a close that failed in judge() is retried
            return
        if now < rnd.deadline:
            if self.pipeline.depth() == 0:  # idle while clients download and train
                for hook in self.on_idle:
                    hook(self)
            return
        if self.config.rules.closes_when_due(self.counted(rnd.id, 1), now - rnd.created):
            self._close_round(rnd)
        else:
            self.store.extend_deadline(rnd.id, time.time() + self.config.round_seconds)

    def _close_round(self, rnd: RoundRecord) -> None:
        for hook in self.on_closing:
            hook(self, rnd.id)
        t0 = time.perf_counter()
        base = self.model.state_dict()
        outer_before = self.outer.state_dict()
        files = self._accepted_files(rnd.id)
        codec = CodecSpec.from_task(rnd.task)
        if not self.accumulator.streaming and codec.name != "fp32":  # slices need fp32 files
            files = fp32_copies(files, self.manifest, codec, self.store._write_blob, getattr(self, "_names_of", {}))
        try:
            with torch.no_grad():
                if self.outer.name == "sgd":  # FedAvg with the server learning rate
                    new_state = self.accumulator.result(base, files, self.config.server_lr)
                else:  # the outer optimizer steps on the averaged pseudo-gradient ḡ
                    zeros = {n: torch.zeros(t.shape, dtype=torch.float32, device=t.device) for n, t in base.items()}
                    avg = {n: t.neg_() for n, t in self.accumulator.result(zeros, files, 1.0).items()}
                    del zeros
                    new_state = self.outer.step(base, avg)
                    del avg
            t1 = time.perf_counter()
            val_loss = self.evaluate(new_state)
            t2 = time.perf_counter()
            self.outer_store.save(self.outer, self.version + 1)  # before publish: a restart finds it
            with ThreadPoolExecutor(1) as pool:  # bf16 W_{v+1} + int8 patch (GPU codec) beside the fp32 chunks
                compact = pool.submit(self.downloads.prepare_seconds, self.version + 1, new_state, base) \
                    if self.downloads else None
                t_split = time.perf_counter()
                manifest = self._split(self.version + 1, new_state)
                fp32_s = time.perf_counter() - t_split
                compact_s = compact.result() if compact else 0.0
            crash_point("close_aggregate")
            self.store.publish(rnd.id, manifest.version, manifest.to_json(), val_loss, self._task_spec(rnd.id + 1),
                               self.config.min_updates, time.time() + self.config.round_seconds)
        except BaseException:  # nothing committed: keep serving the old version, re-fold the round
            self.outer.load_state_dict(outer_before)
            self._rebuild_accumulator()
            raise
        with self.lock, torch.no_grad():  # committed: serve and validate against the new version
            for k, v in base.items():
                v.copy_(new_state[k])
            self.manifest = manifest
        if self.downloads:
            self.downloads.commit()
        crash_point("after_publish")
        del new_state
        self.accumulator.reset(rnd.id + 1)
        t3 = time.perf_counter()
        for phase, ms in (("aggregate", t1 - t0), ("evaluate", t2 - t1), ("publish", t3 - t2),
                          ("publish_fp32_chunks", fp32_s), ("publish_compact", compact_s)):
            self.store.set_counter(f"timing.round.{rnd.id}.{phase}_ms", int(1000 * ms))
        log.info("round %d closed: %d updates accepted, version %d published, validation loss %.4f, %.1f s",
                 rnd.id, len(files), manifest.version, val_loss, t3 - t0,
                 extra={"event": "round_closed", "round": rnd.id, "accepted": len(files),
                        "version": manifest.version, "val_loss": val_loss})
        for hook in self.on_round_closed:
            try:
                hook(self, rnd.id)
            except Exception as exc:  # the version is published; hooks (rewards) catch up on restart
                print(f"round {rnd.id} hook {hook!r} failed: {exc!r}", flush=True)
        self.settled_round = rnd.id  # balances now include this round's rewards

    # -- read side (ailo/federation/coordinator/round_status.py) -------------------------------------------
    def record_chunk_bytes(self, n: int) -> None:
        self.store.bump_counter("chunk_bytes_served", n)
        self.store.bump_counter(f"chunk_bytes_served.round.{self.current_round().id}", n)

    def live(self) -> round_status.LiveState:
        pipe = self.pipeline
        return round_status.LiveState(
            self.version, self.settled_round, pipe.in_flight, self.finished(), self.cfg.name, self.device,
            {"queued": pipe.depth(), "in_flight": pipe.in_flight, "judged": pipe.judged,
             "busy_seconds": round(pipe.busy_seconds, 3)}, asdict(self.config), self.config.rules.needed)

    def verdict(self, update_id: int) -> dict | None:
        return round_status.verdict(self.store, self.live(), update_id)

    def status(self) -> dict:
        out = round_status.status(self.store, self.live())
        for extra in self.status_extras:
            out.update(extra(self))
        return out
