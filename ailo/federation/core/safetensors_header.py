"""The one validated reader of safetensors headers (pure, no I/O).

Every place that looks at an update body before the safetensors library does — admission (on the
stored file), `codecs.body_metadata` and `update_format.decode_update` — reads the header through
`parse_header`, so a crafted header is refused the same way everywhere with a 4xx reason, before
any arithmetic on its values: the header length fits the body, the JSON nests no deeper than a
safetensors header can (3 levels), every entry has a known dtype, a shape of non-negative
integers and a `data_offsets` pair of integers 0 ≤ begin ≤ end ≤ data size whose length is the
dtype size × the element count, the entries tile the data exactly (no gap, no overlap, nothing
after), and `__metadata__` maps strings to strings. A value of the wrong JSON type (a string or
list where an integer belongs, a bool, a float) is `malformed`, never a TypeError.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field

from ailo.errors import Rejected

DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
               "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64",
               "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
MAX_HEADER_BYTES = 100 << 20   # the safetensors library's own limit
MAX_DEPTH = 3                  # {"name": {"shape": [..]}}: nothing in a valid header nests deeper
MAX_RANK = 8
_STRUCTURE = re.compile(rb'[\\"\[\]{}]')


class HeaderError(Rejected):
    """A header that cannot be read. `reason` is a stable code ("truncated" or "malformed")."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    length: int                                   # bytes of JSON after the 8-byte length prefix
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def data_start(self) -> int:
        return 8 + self.length


def header_length(prefix: bytes, size: int) -> int:
    """The header's byte count from the first 8 bytes of a `size`-byte body."""
    if size < 8 or len(prefix) < 8:
        raise HeaderError("truncated", "update body is shorter than a safetensors header", 400)
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > size - 8:
        raise HeaderError("truncated", f"safetensors header claims {n} bytes but the body has {size - 8}: "
                          "truncated upload", 400)
    if n > MAX_HEADER_BYTES:
        raise HeaderError("malformed", f"safetensors header of {n} bytes exceeds {MAX_HEADER_BYTES} bytes")
    return n


def _depth_ok(raw: bytes, limit: int) -> bool:
    """JSON nesting depth outside strings ≤ limit (scanned before json.loads can recurse)."""
    depth, in_string, skip = 0, False, -1
    for m in _STRUCTURE.finditer(raw):
        c, pos = raw[m.start()], m.start()
        if in_string:
            if pos == skip:
                continue
            if c == 0x5C:
                skip = pos + 1
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif c in (0x5D, 0x7D):
            depth -= 1
    return True


def _int(v: object) -> bool:
    return type(v) is int  # not bool, not float


def _entry(name: str, e: object) -> TensorEntry:
    """Types only: no arithmetic on a value before all of them are known to be what they claim."""
    if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
        raise HeaderError("malformed", f"safetensors entry {name[:80]!r} must hold exactly dtype, shape and data_offsets")
    dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise HeaderError("malformed", f"safetensors entry {name[:80]!r}: unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_int(d) and d >= 0 for d in shape):
        raise HeaderError("malformed", f"safetensors entry {name[:80]!r}: shape must be a list of at most "
                          f"{MAX_RANK} non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_int(o) for o in offsets)):
        raise HeaderError("malformed", f"safetensors entry {name[:80]!r}: data_offsets must be two integers")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise HeaderError("malformed", f"safetensors entry {name[:80]!r}: data_offsets [{begin}, {end}] out of order")
    if end - begin != DTYPE_SIZES[dtype] * math.prod(shape):
        raise HeaderError("malformed", f"tensor {name[:80]!r}: data offsets do not match its shape")
    return TensorEntry(dtype, tuple(shape), begin, end)


def parse_header(raw: bytes, data_size: int) -> Header:
    """Validate the JSON header `raw` of a body whose data section has `data_size` bytes."""
    if not _depth_ok(raw, MAX_DEPTH):
        raise HeaderError("malformed", f"unreadable safetensors header: JSON nests deeper than {MAX_DEPTH} levels")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise HeaderError("malformed", f"unreadable safetensors header: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise HeaderError("malformed", "unreadable safetensors header: not a JSON object")
    meta = header.get("__metadata__", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise HeaderError("malformed", "safetensors __metadata__ must map strings to strings")
    tensors = {name: _entry(name, e) for name, e in header.items() if name != "__metadata__"}
    at = 0
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if t.begin != at:
            raise HeaderError("malformed", "safetensors tensors must tile the data section without gaps or overlaps")
        if t.end > data_size:
            raise HeaderError("truncated", f"tensor {name[:80]!r} data ends at byte {t.end} of the data section "
                              f"but the body holds {data_size} data bytes: truncated upload", 400)
        at = t.end
    if at < data_size:
        raise HeaderError("malformed", f"{data_size - at} bytes after the last tensor's data")
    return Header(len(raw), tensors, meta)


def read_header(body: bytes) -> Header:
    """The validated header of a whole body held in memory."""
    n = header_length(body[:8], len(body))
    return parse_header(body[8:8 + n], len(body) - 8 - n)


def read_header_file(f, size: int) -> Header:
    """The validated header of a `size`-byte body in the open binary file `f` (reads the header only)."""
    n = header_length(f.read(8), size)
    return parse_header(f.read(n), size - 8 - n)
