"""Binary frames that carry activations between the coordinator and nodes.

Layout (little-endian), one frame per HTTP body, both directions:

    magic  b"AILF"        4 bytes
    version               u8   (1)
    dtype code            u8   (0 f32, 1 f16, 2 bf16, 3 i64)
    ndim                  u8
    flags                 u8   (bit 0: reset — drop this request's cache before running;
                                bit 1: all logits — the last span answers every position's logits,
                                for speculative decoding, not only the final one;
                                bit 2: greedy — the last span answers the argmax token ids (int64)
                                instead of float32 logits: 8 bytes a position instead of 4 × vocab)
    start position        u32  (absolute position of the first row)
    span start, span end  u32, u32 (units the sender expects the receiver to run)
    request id length     u16, then the id in UTF-8
    shape                 u32 × ndim
    payload               the tensor's raw bytes, C order

A decode step for Llama-2 7B therefore moves 4096 × 2 bytes plus ~60 bytes of header per hop,
never a JSON array of floats.

A batch (content type `application/x-ailo-frames`) carries the frames of several requests that
go to the same place at once (a node's batched forward, issue 28), each with the sender's own
Ed25519 signature of that frame, so every frame stays separately attributable for audits:

    magic  b"AILB", version u8 (1), count u16, then per frame: length u32, frame, signature 64 bytes
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import torch

MAGIC = b"AILF"
VERSION = 1
CONTENT_TYPE = "application/x-ailo-frame"
BATCH_TYPE = "application/x-ailo-frames"
BATCH_MAGIC = b"AILB"
MAX_BATCH = 256
_BATCH = struct.Struct("<4sBH")
SIG_BYTES = 64
FLAG_RESET = 1
FLAG_ALL_LOGITS = 2
FLAG_GREEDY = 4
_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64]
_FIXED = struct.Struct("<4sBBBBIIIH")


class WireError(ValueError):
    pass


@dataclass
class Frame:
    request_id: str
    start: int
    span: tuple[int, int]
    tensor: torch.Tensor
    reset: bool = False
    all_logits: bool = False
    greedy: bool = False

    def encode(self) -> bytes:
        t = self.tensor.detach().contiguous().cpu()
        if t.dtype not in _DTYPES:
            raise WireError(f"dtype {t.dtype} cannot travel")
        rid = self.request_id.encode()
        head = _FIXED.pack(MAGIC, VERSION, _DTYPES.index(t.dtype), t.dim(), self.flags,
                           self.start, self.span[0], self.span[1], len(rid))
        shape = struct.pack(f"<{t.dim()}I", *t.shape)
        return b"".join((head, rid, shape, t.view(torch.uint8).numpy().tobytes() if t.numel() else b""))

    @property
    def flags(self) -> int:
        return (FLAG_RESET * self.reset) | (FLAG_ALL_LOGITS * self.all_logits) | (FLAG_GREEDY * self.greedy)

    @classmethod
    def decode(cls, data: bytes) -> "Frame":
        if len(data) < _FIXED.size:
            raise WireError("frame too short")
        magic, version, code, ndim, flags, start, s0, s1, rlen = _FIXED.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise WireError("not an ailo activation frame")
        if code >= len(_DTYPES):
            raise WireError(f"unknown dtype code {code}")
        off = _FIXED.size
        rid = data[off:off + rlen].decode()
        off += rlen
        shape = struct.unpack_from(f"<{ndim}I", data, off)
        off += 4 * ndim
        dtype = _DTYPES[code]
        n = 1
        for d in shape:
            n *= d
        payload = data[off:]
        if len(payload) != n * torch.empty((), dtype=dtype).element_size():
            raise WireError(f"payload of {len(payload)} bytes does not match shape {shape} {dtype}")
        tensor = torch.frombuffer(bytearray(payload), dtype=dtype).reshape(shape) if n else torch.empty(shape, dtype=dtype)
        return cls(rid, start, (s0, s1), tensor, bool(flags & FLAG_RESET),
                   bool(flags & FLAG_ALL_LOGITS), bool(flags & FLAG_GREEDY))


def encode_batch(items: list[tuple[bytes, bytes]]) -> bytes:
    """(frame bytes, 64-byte signature) pairs → one batch body."""
    if not 1 <= len(items) <= MAX_BATCH:
        raise WireError(f"a batch holds 1 to {MAX_BATCH} frames")
    parts = [_BATCH.pack(BATCH_MAGIC, VERSION, len(items))]
    for body, sig in items:
        if len(sig) != SIG_BYTES:
            raise WireError("a batched frame's signature is 64 bytes")
        parts += [struct.pack("<I", len(body)), body, sig]
    return b"".join(parts)


def decode_batch(data: bytes) -> list[tuple[bytes, bytes]]:
    """A batch body → its (frame bytes, signature) pairs; the frames themselves are not parsed."""
    if len(data) < _BATCH.size:
        raise WireError("batch too short")
    magic, version, count = _BATCH.unpack_from(data)
    if magic != BATCH_MAGIC or version != VERSION or not 1 <= count <= MAX_BATCH:
        raise WireError("not an ailo frame batch")
    off, out = _BATCH.size, []
    for _ in range(count):
        if off + 4 > len(data):
            raise WireError("batch cut short")
        (n,) = struct.unpack_from("<I", data, off)
        off += 4
        if off + n + SIG_BYTES > len(data):
            raise WireError("batch cut short")
        out.append((data[off:off + n], data[off + n:off + n + SIG_BYTES]))
        off += n + SIG_BYTES
    if off != len(data):
        raise WireError("bytes after the last frame of a batch")
    return out
