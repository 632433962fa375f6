"""The native worker: fetch the global model, train on local data only, upload Δ (SPEC R3–R5).

Raw text never leaves this process: the only request bodies are the task request (client id)
and the update (float32 pseudo-gradients). Chunks are verified and cached on disk, so a
later round downloads only chunks whose hash changed, and an interrupted download resumes
with an HTTP Range request.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
import httpx
from tqdm import tqdm

from ailo.backoff import DEFAULT, Backoff, TransientStatus, Unavailable, is_transient, request, retrying
from ailo.chunks import ChunkStore, Manifest
from ailo.federation.core.codecs import CodecSpec, compress
from ailo.federation.client.lean_training import available_memory, device_peak_bytes, model_shape, task_shape, train_planned
from ailo.federation.client.memory_plan import DoesNotFit, MemoryPlan, format_size, plan as plan_memory
from ailo.federation.client.patching import ServedCache
from ailo.federation.client.overlap import OverlappedRun, wants_overlap
from ailo.federation.client.rounds import RETRYABLE, ROUND_MOVED_ON, RoundReport, _batch_seed
from ailo.data import TokenDataset
from ailo.federation.core.signing import sign_update
from ailo.federation.core.update_format import UpdateMeta, client_id_problem
from ailo.federation.client.uploader import submit_update
from ailo.mirrors import MirroredSource
from ailo.model import empty_model, get_preset
from ailo.training import TrainConfig, device_label, pick_device
from ailo.wallet import Wallet
from ailo.storage.atomic import atomic_write



CoordinatorUnavailable = Unavailable   # the name the CLI catches


class Refused(RuntimeError):
    """A clear 4xx verdict on a call other than an update (e.g. registration refused)."""


class TaskDoesNotFit(Refused):
    """The task cannot be trained inside this worker's memory budget (refused before any download)."""


@dataclass
class HTTPChunkSource:
    """Chunks over HTTP with resume: partial bytes are kept in `<cache>/<sha>.part`, and a
    connection lost mid-chunk (coordinator restart) is resumed with a Range request."""
    client: httpx.Client
    partial_dir: Path
    progress: tqdm | None = None
    bytes_read: int = 0
    policy: Backoff = DEFAULT

    def fetch(self, sha256: str) -> bytes:
        return retrying(lambda: self._fetch_once(sha256), self.policy, what=f"GET chunk {sha256[:12]}")

    def _fetch_once(self, sha256: str) -> bytes:
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        part = self.partial_dir / f"{sha256}.part"
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.client.stream("GET", f"/v1/chunks/{sha256}", headers=headers) as r:
            if is_transient(r.status_code):
                raise TransientStatus(r)
            if r.status_code == 416:  # nothing left to send: the part file is complete (or too long)
                if have:
                    part.unlink()
                raise TransientStatus(r)
            if r.status_code == 200 and have:  # server ignored the range: start over
                have = 0
                part.unlink()
            elif r.status_code not in (200, 206):
                raise Refused(f"GET chunk {sha256[:12]}: HTTP {r.status_code} {r.read()[:200]!r}")
            with open(part, "ab") as f:
                for piece in r.iter_bytes(1 << 16):
                    f.write(piece)
                    self.bytes_read += len(piece)
                    if self.progress is not None:
                        self.progress.update(len(piece))
        data = part.read_bytes()
        part.unlink()
        return data


ATTACKS = {  # what a cheater sends instead of its honest Δ (demo and red-team tests)
    "sign-flip": lambda delta: {k: -v for k, v in delta.items()},
    "scale": lambda delta: {k: 100 * v for k, v in delta.items()},
}


@dataclass
class Worker:
    coordinator: str
    client_id: str
    data_dir: Path | None = None
    shard: int = 0
    num_shards: int = 1
    cache_dir: Path = Path("data/worker-cache")
    device: str | None = None
    seed: int = 0
    progress: bool = True
    wallet: Wallet | None = None        # signs updates and receives rewards; None = open mode
    http: httpx.Client | None = None    # injectable (tests use FastAPI's TestClient)
    attack: str | None = None           # red-team only: "sign-flip" | "scale" (demo's cheating worker)
    timeout: float = 120.0
    max_attempts: int = 3               # submissions per round before giving the round up
    policy: Backoff = DEFAULT           # back-off on connection errors and 5xx (ailo.backoff)
    json_log: bool = False              # one JSON line per submitted update on stdout (bench/utilization.py)
    memory_budget: int | None = None    # bytes for training on the device; None = what it has free now
    overlap: bool = True                # time-sized tasks: train while uploading (client/overlap.py)
    reports: list[RoundReport] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (problem := client_id_problem(self.client_id)) is not None:  # before any download or training
            raise ValueError(f"client id {self.client_id!r}: {problem}")
        if self.http is None:
            # Sending a body is one socket sendall whose timeout bounds the WHOLE upload: a 1B
            # model's 3.3 GB fp32 update needs far more than the per-operation `timeout`.
            self.http = httpx.Client(base_url=self.coordinator.rstrip("/"),
                                     timeout=httpx.Timeout(self.timeout, write=max(self.timeout, 1800.0)))
        self.data = TokenDataset.from_dir(self.data_dir, "train", self.shard, self.num_shards)
        self.model = None
        self.mirror_stats = None             # MirrorStats of the last model load that used mirrors
        self.mirror_bytes = 0                # bytes this round's download took from mirrors (reported)
        self.rounds_done = 0
        self.attempts: dict[int, int] = {}   # round → refused submissions so far
        self.outages = 0                     # calls that needed at least one retry
        if self.memory_budget is None:       # measured before this process holds a model
            self.memory_budget = available_memory(pick_device(self.device))
        self.plan: MemoryPlan | None = None  # how the last task was held in memory
        self.overlap_task: dict | None = None  # a time-sized task seen by run_round: run overlapped

    def _retry_note(self, attempt: int, wait: float, why: str) -> None:
        if attempt == 1:
            self.outages += 1
        if self.progress or attempt == 1:
            print(f"[{self.client_id}] coordinator unavailable ({why}); retry {attempt} in {wait:.1f} s", flush=True)

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        return request(self.http, method, path, self.policy, on_retry=self._retry_note, **kw)

    def _json(self, method: str, path: str, **kw) -> dict:
        r = self._call(method, path, **kw)
        if r.status_code >= 400:
            raise Refused(f"{method} {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def _model_for(self, manifest: Manifest) -> None:
        """An uninitialised model of the manifest's preset on the training device, unless held."""
        if self.model is None or self.model.cfg.name != manifest.preset:
            self.model = empty_model(get_preset(manifest.preset), pick_device(self.device))

    def load_model(self, manifest: Manifest):
        self._model_for(manifest)
        state, downloaded = self.fetch_state(manifest)
        self.model.load_state_dict(state)
        return downloaded

    def fetch_state(self, manifest: Manifest) -> tuple[dict, int]:
        """The manifest's weights (verified chunks, mirrors first) and the bytes downloaded."""
        bar = tqdm(total=manifest.total_bytes, unit="B", unit_scale=True, desc=f"model v{manifest.version}",
                   disable=not self.progress, leave=False)
        source = HTTPChunkSource(self.http, self.cache_dir / "partial", bar, policy=self.policy)
        mirrored = MirroredSource(manifest, manifest.mirrors, source, progress=bar) if manifest.mirrors else None
        store = ChunkStore(manifest, mirrored or source, self.cache_dir / "chunks")
        bar.update(sum(c.size for c in manifest.chunks if (self.cache_dir / "chunks" / c.sha256).exists()))
        state = store.state_dict()
        bar.close()
        self._prune_cache(manifest)
        if mirrored is not None:  # mirrors first (verified), the coordinator only for what they lack
            self.mirror_stats = mirrored.stats
            self.mirror_bytes = sum(n for origin, n in mirrored.stats.bytes_by_origin.items() if origin != "coordinator")
            for line in mirrored.stats.failures:
                print(f"[{self.client_id}] mirror refused, fell back: {line}", flush=True)
            return state, sum(mirrored.stats.bytes_by_origin.values())
        return state, source.bytes_read

    def load_compact(self, manifest: Manifest) -> int:
        """Patch the held W_{v−1} to W_v (verified by chunk hashes), else fetch the bf16 chunks."""
        state, downloaded = self.fetch_compact_state(manifest)
        self._model_for(manifest)
        self.model.load_state_dict(state)
        return downloaded

    def fetch_compact_state(self, manifest: Manifest) -> tuple[dict, int]:
        """W_v (bf16) from the held W_{v−1} and the patch, else from the bf16 chunks; held for next time."""
        if not hasattr(self, "served"):
            self.served = ServedCache(self.cache_dir)

        def fetch_patch(version: int) -> bytes | None:
            r = self._call("GET", f"/v1/patches/{version}")
            return r.content if r.status_code == 200 else None
        seen = len(self.served.notes)
        got = self.served.patched(manifest, fetch_patch)
        for note in self.served.notes[seen:]:  # a patch that lies costs its bytes, never a wrong weight
            print(f"[{self.client_id}] {note}; fell back to the bf16 chunks", flush=True)
        state, downloaded = got if got is not None else self.fetch_state(manifest)
        self.served.remember(manifest, state)
        return state, downloaded

    # -- error feedback: what lossy codecs did not send yet, kept between rounds ---------------
    @property
    def error_feedback_path(self) -> Path:
        return Path(self.cache_dir) / "error_feedback.safetensors"

    def load_error_feedback(self, preset: str, codec: CodecSpec) -> dict | None:
        """The residual of earlier rounds, if it was made for this model and codec."""
        path = self.error_feedback_path
        if not codec.lossy or not path.exists():
            return None
        from safetensors import safe_open
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                if meta.get("preset") != preset or meta.get("codec") != codec.name:
                    return None
                return {k: f.get_tensor(k) for k in f.keys()}
        except Exception:  # a damaged file only loses the residual: start from zero
            return None

    def save_error_feedback(self, preset: str, codec: CodecSpec, residual: dict) -> None:
        from safetensors.torch import save as st_save
        Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(self.error_feedback_path,
                      st_save({k: v.contiguous() for k, v in residual.items()}, {"preset": preset, "codec": codec.name}))

    def _sign(self, meta: UpdateMeta, sha256: str) -> UpdateMeta:
        return sign_update(self.wallet, meta, sha256) if self.wallet is not None else meta

    def _prune_cache(self, manifest: Manifest) -> None:
        """Chunks of older versions are not needed again (a 1B model is 3.3 GB a version)."""
        keep = {c.sha256 for c in manifest.chunks}
        chunk_dir = self.cache_dir / "chunks"
        for f in chunk_dir.iterdir() if chunk_dir.is_dir() else ():
            if len(f.name) == 64 and f.name not in keep:
                f.unlink(missing_ok=True)

    def run_round(self) -> RoundReport | None:
        """One task: returns None when the coordinator says wait/done (see `.last_status`)."""
        r = self._call("POST", "/v1/tasks", json={"client_id": self.client_id, "memory_budget": self.memory_budget,
                                                 "memory_device": "cuda" if pick_device(self.device).type == "cuda" else "cpu",
                                                 "address": self.wallet.address if self.wallet else None})
        if r.status_code == 422 and r.headers.get("content-type", "").startswith("application/json") \
                and r.json().get("reason") == "budget_too_small":  # no full task and no slice fits the budget
            raise TaskDoesNotFit(f"[{self.client_id}] refusing {r.json().get('detail')} (--memory-budget)")
        if r.status_code >= 400:
            raise Refused(f"POST /v1/tasks: HTTP {r.status_code}: {r.text[:300]}")
        task = r.json()
        self.last_status = task["status"]
        if self.overlap and wants_overlap(task) and "slice" not in task and self._fits_overlapped(task):
            self.overlap_task = task  # time-sized task: `run` hands over to OverlappedRun
            return None
        if task["status"] != "train" or self.attempts.get(task["round"], 0) >= self.max_attempts:
            self.last_status = "wait" if task["status"] == "train" else task["status"]
            return None
        sliced = "slice" in task  # train only these tensors, frozen weights streamed (slice_training.py)
        if not sliced:
            self.plan_task(task)  # refuses (TaskDoesNotFit) before downloading what it cannot train
        compact = task.get("download") == "bf16"  # the served bf16 model, patched from v−1 when held
        manifest = Manifest.from_json(self._call("GET", "/v1/model?format=bf16" if compact else "/v1/model").content)
        if manifest.version != task["version"]:
            self.last_status = "wait"  # the model moved on between the two calls
            return None
        self.mirror_bytes = 0
        cfg = TrainConfig(steps=task["steps"], batch_size=task["batch_size"], lr=task["lr"],
                          optimizer=task["optimizer"], warmup_steps=int(task.get("warmup_steps", 0)),
                          progress=self.progress)
        batches = self.data.random_batches(task["batch_size"], task["seq_len"],
                                           seed=_batch_seed(self.seed, self.client_id, task["round"],
                                                            self.attempts.get(task["round"], 0)))
        t0 = time.perf_counter()
        device = pick_device(self.device)
        if sliced:
            from ailo.federation.client.slice_training import train_slice_task
            source = HTTPChunkSource(self.http, Path(self.cache_dir) / "partial", policy=self.policy)
            upd, downloaded, t_download = train_slice_task(self, manifest, task, batches, cfg, source)
        else:
            downloaded = self.load_compact(manifest) if compact else self.load_model(manifest)
            t_download = time.perf_counter() - t0
            upd = train_planned(self.model, batches, cfg, self.plan, device)  # today's path when the plan is not lean
        t_trained = time.perf_counter()
        codec = CodecSpec.from_task(task)
        delta = ATTACKS[self.attack](upd.delta) if self.attack else upd.delta
        # a slice's residual would mix tensors of different slices: slices send without error feedback
        body, residual = compress(delta, None if sliced else self.load_error_feedback(manifest.preset, codec), codec)
        meta = UpdateMeta(self.client_id, task["round"], task["version"], upd.n_samples, upd.train_loss,
                          task_id=task["task_id"], device=device_label(device))
        sha = hashlib.sha256(body).hexdigest()
        t1 = time.perf_counter()
        result = submit_update(self.http, body, self._sign(meta, sha), policy=self.policy,
                               resign=(lambda m: self._sign(m, sha)) if self.wallet is not None else None,
                               on_retry=self._retry_note,
                               extra_headers={"X-Ailo-Mirror-Bytes": str(self.mirror_bytes)} if self.mirror_bytes else None)
        t2 = time.perf_counter()  # upload + validation queue + verdict (the uploader long-polls)
        if result.get("status") == "accepted" and codec.lossy and not sliced:
            self.save_error_feedback(manifest.preset, codec, residual)  # only what was really applied
        if result.get("status") != "accepted":
            reason = result.get("reason")
            if reason in RETRYABLE:        # another try on fresh batches, within max_attempts
                self.attempts[task["round"]] = self.attempts.get(task["round"], 0) + 1
            elif reason not in ROUND_MOVED_ON:  # this round is over for us: wait for the next one
                self.attempts[task["round"]] = self.max_attempts
        timings = {"download": t_download, "train": upd.seconds, "encode": t1 - t_trained, "upload_and_verdict": t2 - t1}
        report = RoundReport(task["round"], task["version"], upd.train_loss, upd.n_samples, upd.seconds,
                             downloaded, len(body), result, {k: round(v, 3) for k, v in timings.items()},
                             task["slice"]["units"] if sliced else None)
        self.reports.append(report)
        self.rounds_done += 1
        return report

    def plan_task(self, task: dict, overlapped: bool = False) -> MemoryPlan:
        """How to train this task inside the memory budget; logged when it changes. Overlapped
        rounds (client/overlap.py) keep the Δ in flight and the next version's weights in host
        memory beside the model: on the CPU that is the training memory, so two fp32 model copies
        come off the budget first (on CUDA they are host memory, outside the device budget)."""
        device = pick_device(self.device)
        shape = model_shape(get_preset(task["preset"]))
        budget = self.memory_budget - (2 * 4 * shape.params if overlapped and device.type != "cuda" else 0)
        try:
            if budget <= 0:
                raise DoesNotFit("the budget holds no model copy beside the overlapped round's two", 0)
            plan = plan_memory(shape, task_shape(task), budget, device.type)
        except DoesNotFit as exc:
            raise TaskDoesNotFit(f"[{self.client_id}] refusing the {task['preset']} task of round {task['round']}: {exc} "
                                 f"(--memory-budget; free memory on {device.type}: "
                                 f"{format_size(available_memory(device))})") from None
        if plan != self.plan:
            print(f"[{self.client_id}] memory plan for {task['preset']}: {plan.describe()}", flush=True)
        self.plan = plan
        return plan

    def _fits_overlapped(self, task: dict) -> bool:
        """A time-sized full task is overlapped when its plan fits beside the overlap's copies;
        otherwise it runs as a synchronous round (which may still fit, or refuses)."""
        try:
            self.plan_task(task, overlapped=True)
            return True
        except TaskDoesNotFit:
            return False

    def ensure_registered(self) -> None:
        """Bind the wallet's address to its username on the ledger, once (R5: no e-mail).
        A registration whose reply was lost in a restart is recognised on the next look."""
        from ailo.ledger.tx import register_tx
        from ailo.ledger.verify import now_ms

        assert self.wallet is not None
        info = self._json("GET", f"/v1/balance/{self.wallet.address}")
        if info.get("username"):
            return
        username = self.wallet.username or self.client_id
        r = self._call("POST", "/v1/register", json=register_tx(self.wallet, username, now_ms()).to_json())
        if r.status_code >= 400 and self._json("GET", f"/v1/balance/{self.wallet.address}").get("username") != username:
            raise Refused(f"POST /v1/register: HTTP {r.status_code}: {r.text[:300]}")

    def run(self, max_rounds: int | None = None, poll: float = 0.5) -> list[RoundReport]:
        """Loop until the coordinator says done or `max_rounds` rounds were submitted. A
        coordinator outage never ends the loop (calls back off and retry; a policy with a budget
        that runs out waits a while and starts the round over); only a 4xx verdict does."""
        if self.wallet is not None:
            self.ensure_registered()
        while max_rounds is None or self.rounds_done < max_rounds:
            try:
                report = self.run_round()
                if self.overlap_task is not None:
                    left = None if max_rounds is None else max_rounds - self.rounds_done
                    return OverlappedRun(self, self.overlap_task, poll).run(left)
            except Unavailable as exc:
                print(f"[{self.client_id}] {exc}; starting the round over", flush=True)
                self.overlap_task = None
                time.sleep(self.policy.cap)
                continue
            if report is not None:
                if self.progress:
                    ok = report.response.get("status", report.response.get("reason"))
                    print(f"[{self.client_id}] round {report.round}: loss {report.train_loss:.3f} "
                          f"n={report.n_samples} ↓{report.downloaded:,}B ↑{report.uploaded:,}B → {ok}", flush=True)
                if self.json_log:
                    status = report.response.get("status")
                    print(json.dumps({"client": self.client_id, "round": report.round, "version": report.version,
                                      "overlap": False, "t": round(time.time(), 3), "train_loss": report.train_loss,
                                      "n_samples": report.n_samples, "downloaded": report.downloaded,
                                      "uploaded": report.uploaded, "bytes": {"up": report.uploaded, "down": report.downloaded},
                                      "status": status, "reason": report.response.get("reason"),
                                      "verdict": status if status == "accepted" else report.response.get("reason"),
                                      "seconds": report.timings, "peak_device_bytes": device_peak_bytes(pick_device(self.device)),
                                      **({"slice": report.slice_units} if report.slice_units else {})}), flush=True)
                continue
            if self.last_status == "done":
                break
            time.sleep(poll)
        return self.reports
