"""Test-only fault injection: make the process die by SIGKILL at a named point.

`AILO_CRASH_AT=after_publish` (comma-separated names; `name@N` = the N-th time the point is
reached) makes the coordinator kill itself exactly there, so the chaos tests can hit the
narrow windows a random kill rarely lands in. Unset (the default), `crash_point` is a dict
lookup and nothing else. Points (see docs/ARCHITECTURE.md "Fault tolerance"):

    update_write     an update body received into its temporary file, not yet moved into place
    chunk_write      half of a chunk file written to its temporary file
    after_accept     an update judged and its `accepted` row committed, before the round's
                     accumulator and close (the client is still polling for the verdict)
    close_aggregate  round close: new chunks written, version not yet committed
    after_publish    version committed (round closed), rewards not yet minted
    mid_settle       one reward of a closed round minted, the others not yet
"""
from __future__ import annotations

import os
import signal
import sys
from collections import Counter

_hits: Counter[str] = Counter()


def _armed() -> dict[str, int]:
    spec = os.environ.get("AILO_CRASH_AT", "")
    points = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, nth = item.partition("@")
        points[name] = int(nth) if nth.isdigit() else 1
    return points


def crash_point(name: str) -> None:
    """SIGKILL this process when `name` is armed in AILO_CRASH_AT (and reached often enough)."""
    if "AILO_CRASH_AT" not in os.environ:
        return
    nth = _armed().get(name)
    if nth is None:
        return
    _hits[name] += 1
    if _hits[name] >= nth:
        print(f"AILO_CRASH_AT: SIGKILL at {name}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
