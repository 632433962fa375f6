"""What `worker.py` and `overlap.py` share about a round: the batch seed, which refusals are
retried, which mean the round moved on, and the report of one round."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

# Refusals worth another try on fresh batches (the work may pass on other data); any other
# refusal (stale round, duplicate, bad signature...) means this round is over for us.
RETRYABLE = {"no_loss_reduction", "wrong_direction", "implausible_norm", "rate_limited", "busy"}
# The round closed while we trained or uploaded: nothing to give up, the next task is a new round.
ROUND_MOVED_ON = {"stale_round", "stale_version"}


@dataclass
class RoundReport:
    round: int
    version: int
    train_loss: float
    n_samples: int
    seconds: float
    downloaded: int
    uploaded: int
    response: dict                       # the verdict (GET /v1/updates/{id}) plus http_status
    timings: dict = field(default_factory=dict)   # seconds: download, train, encode, upload + verdict
    slice_units: list[str] | None = None          # a slice task's units (None: the whole model)


def _batch_seed(seed: int, client_id: str, round_id: int, attempt: int = 0) -> int:
    """Deterministic across processes (unlike hash(), which Python salts per process)."""
    key = f"{seed}:{client_id}:{round_id}:{attempt}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")
