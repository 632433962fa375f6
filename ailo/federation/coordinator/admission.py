"""What `POST /v1/updates` may afford to check before answering: cheap, O(header) work.

The request path stores the body (streamed to disk while it is hashed, never held in memory
whole), checks identity and the safetensors header against the model (names, dtypes, shapes,
offsets: no tensor data is read), and answers 202. Decoding the data (NaN/Inf), norm,
direction and loss checks run later in the validation pipeline.

`Admission` is the coordinator's half that runs on the request path. `idempotency_key` names a signed submission: the same signed body with the same headers sent
again (a client retry after a lost reply or a crash) maps to the same update row and id.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

from ailo.chunks import Manifest
from ailo.faults import crash_point
from ailo.federation.coordinator import round_status
from ailo.federation.coordinator.config import Submission
from ailo.storage.rounds_store import RoundRecord, identity_key
from ailo.federation.core.codecs import CodecSpec
from ailo.federation.core.safetensors_header import DTYPE_NAMES, HeaderError, read_header_file
from ailo.federation.core.update_format import FP32, UpdateMeta, UpdateRejected, check_tensor_names, max_update_bytes



def idempotency_key(meta: UpdateMeta, sha256: str) -> str | None:
    """Only signed submissions have one: an unsigned body carries no proof it is a retry."""
    if not meta.signature:
        return None
    line = "|".join(map(str, (meta.client_id, meta.address, meta.round_id, meta.base_version, meta.n_samples,
                              meta.nonce, meta.timestamp, meta.signature, sha256)))
    return hashlib.sha256(line.encode()).hexdigest()


def check_header(path: Path, size: int, manifest: Manifest, codec: CodecSpec = FP32,
                 names: list[str] | None = None) -> None:
    """Structural check of a stored update from its safetensors header alone (same reasons
    and messages as `decode_update`, which re-checks everything with the data later). For the
    packed codecs (int8, sparse) only size, header and codec name; their arrays are checked
    when the pipeline decodes them. `names`: a slice task's tensors (default: the whole model)."""
    names = list(manifest.tensors) if names is None else names
    limit = max_update_bytes(manifest, codec, names)
    if size > limit:
        raise UpdateRejected("too_large", f"update body of {size} bytes exceeds the limit of {limit} bytes "
                             f"for model version {manifest.version} in codec {codec.name}", 413)
    try:
        with open(path, "rb") as f:
            header = read_header_file(f, size)
    except HeaderError as exc:
        raise UpdateRejected(exc.reason, str(exc), exc.status) from None
    sent = header.metadata.get("codec", "fp32")
    if sent != codec.name:
        raise UpdateRejected("codec_mismatch", f"body is encoded as {sent!r} but this round asks for {codec.name!r}")
    if codec.name != "fp32":
        return
    check_tensor_names(header.tensors, manifest, names)
    for name in names:
        entry, e = manifest.tensors[name], header.tensors[name]
        if e.dtype != "F32":
            raise UpdateRejected("dtype", f"tensor {name!r} has dtype {DTYPE_NAMES.get(e.dtype, e.dtype)}, expected float32")
        if e.shape != tuple(entry.shape):
            raise UpdateRejected("shape", f"tensor {name!r} has shape {e.shape}, expected {tuple(entry.shape)}")


async def receive_to_file(chunks, path: Path, limit: int, declared: int | None,
                          flush_bytes: int = 8 << 20) -> tuple[str, int]:
    """Write an async byte stream to `path` while hashing it; refuse (413) past `limit` bytes
    and (400) when the body is shorter or longer than Content-Length. Returns (sha256, size).
    Hashing and writing run in a thread, `flush_bytes` at a time: a slow disk (writeback
    throttling) must not stall the event loop that serves every other request."""
    if declared is not None and declared > limit:
        raise UpdateRejected("too_large", f"body of {declared} bytes exceeds the limit of {limit} bytes", 413)
    h, size, buf = hashlib.sha256(), 0, bytearray()

    def put(f, data: bytes) -> None:
        h.update(data)
        f.write(data)

    try:
        with open(path, "wb") as f:
            async for piece in chunks:
                size += len(piece)
                if size > limit:
                    raise UpdateRejected("too_large", f"body exceeds the limit of {limit} bytes", 413)
                buf += piece
                if len(buf) >= flush_bytes:
                    data, buf = bytes(buf), bytearray()
                    await asyncio.to_thread(put, f, data)
            if buf:
                await asyncio.to_thread(put, f, bytes(buf))
            f.flush()
        if declared is not None and size != declared:
            raise UpdateRejected("truncated", f"body has {size} bytes, Content-Length said {declared}", 400)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return h.hexdigest(), size


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Admission:
    """The coordinator's request path (mixed into `Coordinator`): cheap checks, a durable
    `pending` row and a place in the validation queue; never decodes tensors, never waits."""

    def submit(self, meta: UpdateMeta, body: bytes, peer: str = "") -> dict:
        """Admit an update given as bytes (in-process callers); see `submit_file`."""
        tmp = self.store.incoming_path()
        tmp.write_bytes(body)
        return self.submit_file(meta, tmp, hashlib.sha256(body).hexdigest(), len(body), peer)

    def submit_file(self, meta: UpdateMeta, tmp: Path, sha256: str, size: int, peer: str = "",
                    receive_ms: float | None = None) -> dict:
        """Cheap checks, then a durable `pending` row and a place in the validation queue.
        Returns the receipt {"status": "pending", "update_id", ...}; a retried signed body gets
        the same update id (and its verdict once decided). Raises UpdateRejected (recorded)."""
        idem = idempotency_key(meta, sha256)
        keys: list[tuple[int, str]] = []
        try:
            with self.admit_lock:
                known = self.store.update_by_idem(idem) if idem else None
                if known is None:  # same body from the same wallet, e.g. re-signed after a lost reply
                    known = self.store.accepted_update(meta.round_id, meta.client_id, meta.address or None, sha256,
                                                       ("pending", "accepted"))
                if known is not None:
                    return round_status.receipt(self.store, self.live(), known)
                rnd = self.current_round()
                sub = Submission(meta, b"", sha256, rnd, time.time(), peer)
                try:
                    self._admit(sub, tmp, size)
                except UpdateRejected as exc:
                    self.store.record_update(rnd.id, meta.client_id, meta.address or None, meta.n_samples,
                                             meta.train_loss, sha256, size, "refused", exc.reason, str(exc),
                                             {**sub.extra, "code": exc.status}, idem=idem)
                    for hook in self.on_refused:
                        hook(self, sub, exc)
                    raise
                keys = [(rnd.id, identity_key(meta.client_id, meta.address))]
                self._admitting.update(keys)
            crash_point("update_write")  # fault injection (tests): body in its temp file, not in place
            fsync_file(tmp)
            self.store.adopt_update_blob(sha256, tmp)
            extra = {**sub.extra, "base_version": meta.base_version, "task_id": meta.task_id}
            if meta.device:
                extra["device"] = meta.device
            if receive_ms is not None:
                extra["receive_ms"] = receive_ms  # body upload time as the coordinator saw it
            update_id = self.store.record_update(rnd.id, meta.client_id, meta.address or None, meta.n_samples,
                                                 meta.train_loss, sha256, size, "pending", extra=extra, idem=idem)
            self.store.bump_counter("update_bytes_received", size)
        finally:
            tmp.unlink(missing_ok=True)
            with self.admit_lock:
                self._admitting.difference_update(keys)
        self.pipeline.submit(update_id)
        return {"status": "pending", "update_id": update_id, "round": rnd.id, "queued": self.pipeline.depth()}

    def _own_round(self, meta: UpdateMeta, rnd: RoundRecord) -> RoundRecord:
        """The open round, or for an update trained on an older version (overlapped workers) its
        own round when it is at most `max_staleness` rounds back; else `stale_round`."""
        lag = rnd.id - meta.round_id
        if lag == 0:
            return rnd
        if 0 < lag <= self.config.max_staleness:
            try:
                return self.store.round(meta.round_id)
            except KeyError:
                pass
        kind = "stale" if lag > 0 else "unknown"
        raise UpdateRejected("stale_round", f"update for {kind} round {meta.round_id}; the open round is {rnd.id} "
                             f"(updates up to {self.config.max_staleness} round(s) late are taken)", 409)

    def _carry_over(self, row, rnd: RoundRecord, sub: Submission) -> bool:
        """The delayed rule for an update whose round closed while it waited for validation: it
        joins the open round when its own round is at most `max_staleness` back, it is a full
        update, and its wallet has nothing in the open round yet (as `_admit` rules for one that
        arrives late)."""
        own = int(row.extra.get("task_round", row.round_id))
        who = identity_key(row.client_id, row.address)
        if row.extra.get("slice") or not 0 < rnd.id - own <= self.config.max_staleness:
            return False
        with self.admit_lock:
            if who in self.store.holders(rnd.id) or (rnd.id, who) in self._admitting:
                return False
            sub.extra.update(task_round=own, stale=rnd.id - own)
            return self.store.move_pending(row.id, rnd.id, {**row.extra, **sub.extra})

    def _admit(self, sub: Submission, path: Path, size: int) -> None:
        meta, rnd = sub.meta, sub.round
        if self.finished():
            raise UpdateRejected("finished", "training has finished; no round is open", 409)
        own = self._own_round(meta, rnd)  # the round whose task it answered (older: the delayed rule)
        if meta.base_version != own.base_version:
            raise UpdateRejected("stale_version", f"update trained on model version {meta.base_version}; "
                                 f"round {own.id} trains version {own.base_version}", 409)
        if own.id != rnd.id:
            sub.extra.update(task_round=own.id, stale=rnd.id - own.id)
        if self.store.count_updates(status="pending") >= self.config.max_pending:
            raise UpdateRejected("busy", f"{self.config.max_pending} updates are waiting for validation; "
                                 "retry in a few seconds", 429)
        for check in self.pre_checks:  # identity (PoC): signature, nonce, rate limit
            check(self, sub)
        # Duplicates by identity, checked once the identity is proven (pre_checks): the signing
        # wallet, never the client id another wallet can also send.
        who = identity_key(meta.client_id, meta.address)
        if who in self.store.holders(rnd.id) or (rnd.id, who) in self._admitting:
            owner = f"wallet {meta.address}" if meta.address else f"client {meta.client_id!r}"
            raise UpdateRejected("duplicate", f"{owner} already has an accepted or pending update in round {rnd.id}",
                                 409)
        if own.id != rnd.id and (who in self.store.holders(own.id) or (own.id, who) in self._admitting):
            raise UpdateRejected("duplicate", f"this wallet's update for round {own.id} is already in that round", 409)
        sl = self.slice_tasks.expected(meta, own.id)  # a slice task's update carries exactly its tensors
        if sl is not None and own.id != rnd.id:
            raise UpdateRejected("stale_round", f"a slice of round {own.id} is not taken after that round closed", 409)
        if sl is not None:
            sub.extra.update(slice=[sl.start, sl.stop], slice_params=sl.params)
        check_header(path, size, self.manifest, CodecSpec.from_task(rnd.task), list(sl.names) if sl else None)
