"""What `POST /v1/updates` may afford to check before answering: cheap, O(header) work.

The request path stores the body (streamed to disk while it is hashed, never held in memory
whole), checks identity and the safetensors header against the model (names, dtypes, shapes,
offsets: no tensor data is read), and answers 202. Decoding the data (NaN/Inf), norm,
direction and loss checks run later in the validation pipeline.

`idempotency_key` names a signed submission: the same signed body with the same headers sent
again (a client retry after a lost reply or a crash) maps to the same update row and id.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from ailo.chunks import Manifest
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


def check_header(path: Path, size: int, manifest: Manifest, codec: CodecSpec = FP32) -> None:
    """Structural check of a stored update from its safetensors header alone (same reasons
    and messages as `decode_update`, which re-checks everything with the data later). For the
    packed codecs (int8, sparse) only size, header and codec name; their arrays are checked
    when the pipeline decodes them."""
    limit = max_update_bytes(manifest, codec)
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
    check_tensor_names(header.tensors, manifest)
    for name, entry in manifest.tensors.items():
        e = header.tensors[name]
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
