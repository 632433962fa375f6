"""The update wire format: a safetensors file of pseudo-gradients in the round's codec
(`codecs.py`: `fp32` = one float32 tensor per model parameter with the model's own names;
`int8` and `sparse` = packed arrays, decoded here to the same float32 tensors). Metadata (round, base version, n_k, loss,
identity and signature) travels in `X-Ailo-*` HTTP headers so the body's sha256 is the exact
thing a contributor signs. Never JSON number arrays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ailo.errors import Rejected
from ailo.chunks import Manifest
from ailo.federation.core.codecs import CodecError, CodecSpec, body_metadata, decode as codec_decode
from ailo.federation.core.codecs import encode as codec_encode, max_body_bytes

FP32 = CodecSpec()


INT64_MAX = 2**63 - 1
CLIENT_ID_PATTERN = r"^[ -~]{1,128}$"   # HTTP headers carry latin-1 at best; one rule for header, JSON and CLI


def client_id_problem(client_id: str) -> str | None:
    """Why `client_id` cannot name a client, or None. A client id travels in the X-Ailo-Client
    header (and inside the signed line): printable ASCII only, so every HTTP stack sends the same
    bytes that were signed (httpx refuses non-ASCII header values, browsers send latin-1,
    servers decode latin-1) and no control character reaches logs or the dashboard."""
    if not 1 <= len(client_id) <= 128:
        return "a client id must be 1–128 characters"
    if not all(" " <= c <= "~" for c in client_id):
        return "a client id must be printable ASCII (letters, digits, punctuation, space): the username is sent " \
               "in an HTTP header; non-ASCII names are not allowed"
    return None


class UpdateRejected(Rejected):
    """A refused update. `reason` is a stable machine code; str() is the human message."""


def encode_update(delta: Mapping[str, torch.Tensor], codec: CodecSpec = FP32) -> bytes:
    """Δ in `codec`, without error feedback (the worker uses `codecs.compress`)."""
    if codec.name == "fp32":
        return st_save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in delta.items()})
    return codec_encode(delta, codec)


def expected_update_bytes(manifest: Manifest) -> int:
    """Exact float32 payload size, used for the body-size limit before anything is parsed."""
    return sum(4 * math.prod(t.shape) for t in manifest.tensors.values())


def max_update_bytes(manifest: Manifest, codec: CodecSpec = FP32, names: Sequence[str] | None = None) -> int:
    """Largest acceptable body under `codec` (fp32, the default, bounds every codec); `names`:
    the tensors of a slice task (default: the whole model)."""
    names = list(manifest.tensors) if names is None else names
    if codec.name == "fp32":
        return sum(4 * math.prod(manifest.tensors[n].shape) for n in names) + 256 * len(names) + 4096
    return max_body_bytes({n: manifest.tensors[n].shape for n in names}, codec)


def decode_update(body: bytes, manifest: Manifest, codec: CodecSpec = FP32,
                  device: torch.device | str | None = None, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Parse and check an update against the model it claims to update, in the round's codec
    (packed codecs are decoded on `device`; fp32 bodies are parsed on the host). `names`: the
    tensors a slice task assigned (default: every tensor of the model), exactly those.

    Order matters: cheap structural checks first (size, header), then names, dtypes, shapes,
    finiteness. Every failure names the problem.
    """
    names = list(manifest.tensors) if names is None else list(names)
    limit = max_update_bytes(manifest, codec, names)
    if len(body) > limit:
        raise UpdateRejected("too_large", f"update body of {len(body)} bytes exceeds the limit of "
                             f"{limit} bytes for model version {manifest.version} in codec {codec.name}", 413)
    try:
        meta = body_metadata(body)  # the validated header (safetensors_header): 4xx for any crafted one
        if codec.name != "fp32":
            return codec_decode(body, {n: manifest.tensors[n].shape for n in names}, codec, device)
    except CodecError as exc:
        raise UpdateRejected(exc.reason, str(exc), exc.status) from None
    if meta.get("codec", "fp32") != "fp32":
        raise UpdateRejected("codec_mismatch", f"body is encoded as {meta.get('codec')!r} but this round asks "
                             "for 'fp32'")
    try:
        tensors = st_load(body)
    except Exception as exc:  # safetensors raises its own error types
        raise UpdateRejected("malformed", f"invalid safetensors body: {exc}") from None
    check_tensor_names(tensors, manifest, names)
    for name in names:
        entry, t = manifest.tensors[name], tensors[name]
        if t.dtype != torch.float32:
            raise UpdateRejected("dtype", f"tensor {name!r} has dtype {str(t.dtype).removeprefix('torch.')}, expected float32")
        if tuple(t.shape) != entry.shape:
            raise UpdateRejected("shape", f"tensor {name!r} has shape {tuple(t.shape)}, expected {entry.shape}")
        if not torch.isfinite(t).all():
            raise UpdateRejected("non_finite", f"tensor {name!r} contains NaN or Inf")
    return tensors


def check_tensor_names(names, manifest: Manifest, assigned: Sequence[str] | None = None) -> None:
    """An update carries exactly the model version's tensors (or, for a slice task, exactly the
    `assigned` ones): `tensor_names` otherwise. Used on the parsed body here and on the bare
    safetensors header at admission."""
    expected = set(manifest.tensors) if assigned is None else set(assigned)
    missing, extra = sorted(expected - set(names)), sorted(set(names) - expected)
    if missing or extra:
        what = f"model version {manifest.version}" if assigned is None else "the slice this task assigned"
        raise UpdateRejected("tensor_names", f"tensor names do not match {what}: "
                             f"missing {missing[:5]}, unexpected {extra[:5]}")


@dataclass(frozen=True)
class UpdateMeta:
    """Header fields of an update submission."""
    client_id: str
    round_id: int
    base_version: int
    n_samples: int
    train_loss: float
    task_id: str = ""
    address: str = ""
    signature: str = ""
    nonce: int = 0
    timestamp: int = 0          # milliseconds since the epoch, as signed
    device: str = ""            # what trained it ("webgpu - nvidia hopper", "wasm - 4 threads"): shown, not signed

    HEADER_PREFIX = "x-ailo-"

    def to_headers(self) -> dict[str, str]:
        fields = {"client": self.client_id, "round": self.round_id, "base-version": self.base_version,
                  "samples": self.n_samples, "train-loss": repr(self.train_loss), "task": self.task_id,
                  "address": self.address, "signature": self.signature, "nonce": self.nonce,
                  "timestamp": self.timestamp, "device": self.device}
        optional = {"task", "address", "signature", "nonce", "timestamp", "device"}
        return {f"X-Ailo-{k.title()}": str(v) for k, v in fields.items() if k not in optional or v}

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> "UpdateMeta":
        h = {k.lower(): v for k, v in headers.items()}

        def get(name: str, cast, default=None):
            raw = h.get(cls.HEADER_PREFIX + name)
            if raw is None:
                if default is None:
                    raise UpdateRejected("missing_field", f"header X-Ailo-{name.title()} is required", 400)
                return default
            try:
                value = cast(raw)
            except ValueError:
                raise UpdateRejected("bad_field", f"header X-Ailo-{name.title()}: {raw!r} is not a valid {cast.__name__}", 400) from None
            if cast is float and not math.isfinite(value):
                raise UpdateRejected("bad_field", f"header X-Ailo-{name.title()} must be finite", 400)
            if cast is int and not 0 <= value <= INT64_MAX and name != "samples":  # stored/signed as int64
                raise UpdateRejected("bad_field", f"header X-Ailo-{name.title()}: {value} is outside [0, 2^63-1]", 400)
            return value

        meta = cls(client_id=get("client", str), round_id=get("round", int), base_version=get("base-version", int),
                   n_samples=get("samples", int), train_loss=get("train-loss", float), task_id=get("task", str, ""),
                   address=get("address", str, ""), signature=get("signature", str, ""),
                   nonce=get("nonce", int, 0), timestamp=get("timestamp", int, 0), device=get("device", str, ""))
        if not 0 < meta.n_samples <= INT64_MAX:
            raise UpdateRejected("bad_field", "X-Ailo-Samples must be a positive sample count below 2^63", 400)
        if (problem := client_id_problem(meta.client_id)) is not None:  # before the signature: a clear 400
            raise UpdateRejected("bad_field", f"X-Ailo-Client {meta.client_id[:40]!r}: {problem}", 400)
        if len(meta.device) > 128 or not all(" " <= c <= "~" for c in meta.device):
            raise UpdateRejected("bad_field", "X-Ailo-Device must be at most 128 printable ASCII characters", 400)
        return meta
