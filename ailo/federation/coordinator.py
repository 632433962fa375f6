"""The coordinator service: hands out tasks, takes updates, runs FedAvg rounds (SPEC R4).

HTTP-free: `ailo.server.app` exposes it. All state changes go through one lock and the
`SQLiteRoundStore`, so a restart resumes the open round with every accepted update, and a
model version is served only after it is completely written.
"""
from __future__ import annotations

import copy
import hashlib
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ailo.chunks import ChunkStore, DirectorySource, Manifest, split_state_dict
from ailo.data import TokenDataset
from ailo.faults import crash_point
from ailo.federation.aggregate import AGGREGATORS, WeightedDelta, average_delta
from ailo.federation.codecs import CodecSpec
from ailo.federation.downloads import CompactDownloads
from ailo.federation.outer import make_outer
from ailo.federation.outer_store import OuterStateStore
from ailo.federation.update_format import UpdateMeta, UpdateRejected, decode_update
from ailo.model import build_model, get_preset
from ailo.storage.rounds_store import RoundRecord, SQLiteRoundStore
from ailo.training import evaluate


@dataclass(frozen=True)
class CoordinatorConfig:
    preset: str = "ailo-tiny"
    seed: int = 0
    num_chunks: int = 8
    min_updates: int = 3
    max_updates: int | None = None       # close early when reached (default: min_updates)
    round_seconds: float = 300.0         # deadline; at the deadline a round with ≥ min_updates closes
    quorum_updates: int = 1              # liveness: a round 2×round_seconds old closes with this many
    max_rounds: int | None = None        # after this many rounds tasks answer "done"
    local_steps: int = 20
    batch_size: int = 8
    seq_len: int | None = None
    lr: float = 3e-3
    lr_decay: float = 1.0                # client learning rate of round r: lr · lr_decay^(r−1)
    optimizer: str = "adamw"
    server_lr: float = 1.0
    aggregator: str = "fedavg"
    outer: str = "sgd"                   # outer optimizer on the averaged Δ: sgd (FedAvg) | nesterov | fedadam
    outer_momentum: float = 0.9          # nesterov: momentum μ (server_lr is the outer learning rate)
    compact_downloads: bool = False      # also serve the bf16 model + int8 patches from v−1 (downloads.py)
    codec: str = "fp32"                  # update codec named in each task: fp32 | int8 | sparse
    codec_density: float = 0.01          # sparse: share of each tensor's entries a client sends
    ef_decay: float = 1.0                # lossy codecs: client error feedback e ← ef_decay·e + Δ
    val_batches: int = 4
    data_dir: str | None = None
    mirrors: tuple[str, ...] = ()        # chunk mirror base URLs listed in the served manifest


@dataclass
class Submission:
    """Everything a validation check may look at (parsed tensors only after structural checks)."""
    meta: UpdateMeta
    body: bytes
    sha256: str
    round: RoundRecord
    received: float
    peer: str = ""
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


Check = Callable[["Coordinator", Submission], None]            # raise UpdateRejected to refuse
AcceptHook = Callable[["Coordinator", Submission, int], None]  # called with the update row id
RoundHook = Callable[["Coordinator", int], None]                # called with the closed round id


class Coordinator:
    def __init__(self, config: CoordinatorConfig, state_dir: Path,
                 pre_checks: list[Check] | None = None, post_checks: list[Check] | None = None,
                 on_accept: list[AcceptHook] | None = None, on_round_closed: list[RoundHook] | None = None,
                 store: SQLiteRoundStore | None = None):
        """`store`: another backend with the same interface (PostgresRoundStore); default SQLite."""
        self.config = config
        self.cfg = get_preset(config.preset)
        self.seq_len = config.seq_len or self.cfg.n_ctx
        self.store = store if store is not None else SQLiteRoundStore(state_dir)
        self.aggregator = AGGREGATORS[config.aggregator]
        self.codec = CodecSpec(config.codec, config.codec_density, config.ef_decay)
        self.outer = make_outer(config.outer, config.server_lr, config.outer_momentum)
        self.outer_store = OuterStateStore(Path(state_dir) / "outer")
        self.downloads = CompactDownloads(self.store, config.num_chunks, self.cfg.name, self.cfg.to_dict()) \
            if config.compact_downloads else None
        self.pre_checks, self.post_checks = pre_checks or [], post_checks or []
        self.on_accept = on_accept or []
        self.on_round_closed = on_round_closed or []
        self.lock = threading.RLock()
        self.tasks: dict[str, tuple[str, int, float]] = {}  # task id → (client, round, issued at)
        self.val_batches = TokenDataset.from_dir(config.data_dir, "val").fixed_batches(
            config.val_batches, config.batch_size, self.seq_len)
        self.model = build_model(self.cfg, seed=config.seed)
        latest = self.store.latest_version()
        if latest is None:
            self._genesis()
        else:
            self.manifest = Manifest.from_json(latest.manifest)
            self.model.load_state_dict(ChunkStore(self.manifest, DirectorySource(self.store.chunks_dir)).state_dict())
            self.outer_store.restore(self.outer, self.manifest.version)

    # -- model versions --------------------------------------------------------------------
    def _split(self, version: int) -> Manifest:
        manifest, blobs = split_state_dict(self.model.state_dict(), self.config.num_chunks, version=version,
                                           preset=self.cfg.name, config=self.cfg.to_dict())
        for sha, data in blobs.items():
            self.store.put_chunk(sha, data)
        return manifest

    def _genesis(self) -> None:
        self.manifest = self._split(0)
        if self.downloads:
            self.downloads.prepare(0, self.model.state_dict(), self.model.state_dict())
            self.downloads.commit()
        self.store.start(self.manifest.to_json(), evaluate(self.model, self.val_batches), self._task_spec(1),
                         self.config.min_updates, time.time() + self.config.round_seconds)

    def _task_spec(self, round_id: int) -> dict:
        """What round `round_id` asks of clients; stored with the round, so it survives restarts."""
        c = self.config
        return {"steps": c.local_steps, "batch_size": c.batch_size, "seq_len": self.seq_len,
                "lr": c.lr * c.lr_decay ** (round_id - 1), "optimizer": c.optimizer, "codec": self.codec.to_task(),
                **({"download": "bf16"} if c.compact_downloads else {})}

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

    def task(self, client_id: str) -> dict:
        with self.lock:
            self.tick()
            rnd = self.current_round()
            if self.finished():
                return {"status": "done", "round": rnd.id, "version": self.version}
            if any(u.client_id == client_id for u in self.store.updates(rnd.id, "accepted")):
                return {"status": "wait", "round": rnd.id, "version": self.version, "retry_after": 0.5}
            task_id = uuid.uuid4().hex
            now = time.time()
            self.tasks[task_id] = (client_id, rnd.id, now)
            return {"status": "train", "task_id": task_id, "round": rnd.id, "version": rnd.base_version,
                    "preset": self.cfg.name, "deadline": rnd.deadline, "issued_at": now, **rnd.task}

    # -- updates ---------------------------------------------------------------------------
    def submit(self, meta: UpdateMeta, body: bytes, peer: str = "") -> dict:
        """Validate and record one update; aggregates when the round has enough. Raises
        UpdateRejected (with an HTTP status) for anything refused; refusals are recorded."""
        with self.lock:
            rnd = self.current_round()
            sub = Submission(meta, body, hashlib.sha256(body).hexdigest(), rnd, time.time(), peer)
            replayed = self._replayed(meta, sub.sha256)
            if replayed is not None:
                return replayed
            try:
                self._check(sub)
            except UpdateRejected as exc:
                self.store.record_update(rnd.id, meta.client_id, meta.address or None, meta.n_samples,
                                         meta.train_loss, sub.sha256, len(body), "refused", exc.reason, str(exc),
                                         sub.extra)
                raise
            self.store.put_update_blob(sub.sha256, body)
            update_id = self.store.record_update(rnd.id, meta.client_id, meta.address or None, meta.n_samples,
                                                 meta.train_loss, sub.sha256, len(body), "accepted", extra=sub.extra)
            self.store.bump_counter("update_bytes_received", len(body))
            crash_point("after_accept")
            for hook in self.on_accept:
                hook(self, sub, update_id)
            accepted = len(self.store.updates(rnd.id, "accepted"))
            result = {"status": "accepted", "update_id": update_id, "round": rnd.id, "accepted_in_round": accepted}
            if accepted >= (self.config.max_updates or self.config.min_updates):
                self._close_round(rnd)
                result["aggregated"] = True
            result["version"] = self.version
            return result

    def _replayed(self, meta: UpdateMeta, sha256: str) -> dict | None:
        """The original verdict when this exact update (round, client, wallet, body) was already
        accepted: a client retrying after a lost reply (coordinator crash) is counted once."""
        prior = self.store.accepted_update(meta.round_id, meta.client_id, sha256)
        if prior is None or (prior.address or "") != (meta.address or ""):
            return None
        return {"status": "accepted", "update_id": prior.id, "round": prior.round_id, "replayed": True,
                "accepted_in_round": len(self.store.updates(prior.round_id, "accepted")), "version": self.version}

    def _check(self, sub: Submission) -> None:
        meta, rnd = sub.meta, sub.round
        if self.finished():
            raise UpdateRejected("finished", "training has finished; no round is open", 409)
        if meta.round_id != rnd.id:
            kind = "stale" if meta.round_id < rnd.id else "unknown"
            raise UpdateRejected("stale_round", f"update for {kind} round {meta.round_id}; the open round is {rnd.id}", 409)
        if meta.base_version != rnd.base_version:
            raise UpdateRejected("stale_version", f"update trained on model version {meta.base_version}; "
                                 f"round {rnd.id} trains version {rnd.base_version}", 409)
        if any(u.client_id == meta.client_id for u in self.store.updates(rnd.id, "accepted")):
            raise UpdateRejected("duplicate", f"client {meta.client_id!r} already has an accepted update in round {rnd.id}", 409)
        for check in self.pre_checks:
            check(self, sub)
        sub.tensors = decode_update(sub.body, self.manifest, CodecSpec.from_task(rnd.task))
        for check in self.post_checks:
            check(self, sub)

    # -- rounds ----------------------------------------------------------------------------
    def tick(self) -> None:
        """Deadline handling (the liveness rule, docs/ARCHITECTURE.md): a due round closes with
        ≥ min_updates accepted, or — once it is 2 × round_seconds old (extended once) — with
        ≥ quorum_updates (≥ 1); otherwise its deadline moves on by round_seconds."""
        with self.lock:
            rnd = self.current_round()
            now = time.time()
            if self.finished() or now < rnd.deadline:
                return
            accepted = len(self.store.updates(rnd.id, "accepted"))
            overdue = now >= rnd.created + 2 * self.config.round_seconds
            if accepted >= self.config.min_updates or (overdue and accepted >= max(1, self.config.quorum_updates)):
                self._close_round(rnd)
            else:
                self.store.extend_deadline(rnd.id, time.time() + self.config.round_seconds)

    def _close_round(self, rnd: RoundRecord) -> None:
        accepted = self.store.updates(rnd.id, "accepted")
        codec = CodecSpec.from_task(rnd.task)
        updates = [WeightedDelta(decode_update(self.store.update_blob(u.sha256), self.manifest, codec), u.n_samples)
                   for u in accepted]
        base = self.model.state_dict()
        outer_before = self.outer.state_dict()
        if self.config.outer == "sgd":
            new_state = self.aggregator.aggregate(base, updates, self.config.server_lr)
        else:  # the outer optimizer steps on the averaged pseudo-gradient
            new_state = self.outer.step(base, average_delta(self.aggregator, base, updates))
        candidate = copy.deepcopy(self.model)
        candidate.load_state_dict(new_state)
        val_loss = evaluate(candidate, self.val_batches)
        previous_model, self.model = self.model, candidate
        try:
            self.outer_store.save(self.outer, self.version + 1)  # before publish: a restart finds it
            manifest = self._split(self.version + 1)
            if self.downloads:  # bf16 W_{v+1} and the int8 patch from W_v, before publish
                self.downloads.prepare(self.version + 1, self.model.state_dict(), previous_model.state_dict())
            crash_point("close_aggregate")
            self.store.publish(rnd.id, manifest.version, manifest.to_json(), val_loss, self._task_spec(rnd.id + 1),
                               self.config.min_updates, time.time() + self.config.round_seconds)
        except BaseException:
            self.model = previous_model  # nothing committed: keep serving the old version
            self.outer.load_state_dict(outer_before)
            raise
        self.manifest = manifest
        if self.downloads:
            self.downloads.commit()
        crash_point("after_publish")
        for hook in self.on_round_closed:
            try:
                hook(self, rnd.id)
            except Exception as exc:  # the version is published; hooks (rewards) catch up on restart
                print(f"round {rnd.id} hook {hook!r} failed: {exc!r}", flush=True)

    # -- read side -------------------------------------------------------------------------
    def record_chunk_bytes(self, n: int) -> None:
        self.store.bump_counter("chunk_bytes_served", n)
        self.store.bump_counter(f"chunk_bytes_served.round.{self.current_round().id}", n)

    def status(self) -> dict:
        with self.lock:
            rnd = self.current_round()
            accepted = self.store.updates(rnd.id, "accepted")
            counters = self.store.counters()
            history = []
            for v in self.store.versions():
                rows = self.store.updates(v.round_id) if v.round_id else []
                history.append({"version": v.version, "round": v.round_id, "val_loss": v.val_loss,
                                "updates": sum(u.status == "accepted" for u in rows),
                                "refused": sum(u.status == "refused" for u in rows),
                                "bytes_up": sum(u.size or 0 for u in rows),
                                "bytes_down": counters.get(f"chunk_bytes_served.round.{v.round_id}", 0)})
            return {"round": rnd.id, "version": self.version, "preset": self.cfg.name,
                    "finished": self.finished(), "deadline": rnd.deadline, "min_updates": rnd.min_updates,
                    "accepted_in_round": len(accepted), "clients": self.store.clients(),
                    "history": history,
                    "counters": {k: v for k, v in counters.items() if ".round." not in k}, "config": asdict(self.config)}
