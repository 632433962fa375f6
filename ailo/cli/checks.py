"""Argument checks shared by every command: each turns a bad value into argparse's one-line
usage error before any work starts (no state written, no network touched)."""
from __future__ import annotations

import argparse
import math
from urllib.parse import urlsplit


def url(value: str) -> str:
    """An http(s) URL with a host: `htp://x` or `localhost:8400` fail here, at once, instead of
    after a retry budget spent on a request that can never succeed."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URL "
                                         f"(e.g. http://127.0.0.1:8400)")
    if not parts.hostname:
        raise argparse.ArgumentTypeError(f"{value!r} has no host name")
    try:
        parts.port
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} has an invalid port") from None
    return value.strip().rstrip("/")


def _number(kind, lo: float | None, lo_open: bool, what: str):
    def check(value: str):
        try:
            x = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {'an integer' if kind is int else 'a number'}") from None
        if isinstance(x, float) and not math.isfinite(x):
            raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
        if lo is not None and (x <= lo if lo_open else x < lo):
            raise argparse.ArgumentTypeError(f"{value} must be {what}")
        return x
    check.__name__ = kind.__name__  # argparse names the type in its messages
    return check


positive_int = _number(int, 0, True, "at least 1")
non_negative_int = _number(int, 0, False, "0 or more")
positive_float = _number(float, 0.0, True, "greater than 0")
non_negative_float = _number(float, 0.0, False, "0 or more")


def client_id(value: str) -> str:
    """A client id the coordinator will take (update_format.client_id_problem: printable ASCII,
    1–128 characters): refused here, not after a round of training when the upload's header
    cannot be encoded."""
    from ailo.federation.core.update_format import client_id_problem
    problem = client_id_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{value!r}: {problem}")
    return value


def username(value: str) -> str:
    """A username the ledger registers (3–32 of a-z 0-9 _ -, ASCII only: ailo.wallet)."""
    from ailo.wallet import is_valid_username
    if not is_valid_username(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a username: 3-32 characters of a-z 0-9 _ - "
                                         "(ASCII only), starting with a letter or digit")
    return value


def port(value: str) -> int:
    p = _number(int, 0, False, "0 or more")(value)
    if p > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0-65535)")
    return p


def probability(value: str) -> float:
    p = non_negative_float(value)
    if p > 1:
        raise argparse.ArgumentTypeError(f"{value} must be between 0 and 1")
    return p



def device(value: str) -> str:
    """A torch device this build can use: `cuda` on a CPU-only PyTorch is refused here, not by
    an assertion deep inside the first tensor move."""
    import torch
    try:
        dev = torch.device(value)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a device (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{value!r}: this PyTorch build sees no CUDA device "
                                             f"(CUDA build: {torch.version.cuda is not None}); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{value!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{value!r}: MPS is not available here")
    return value
