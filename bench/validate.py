"""Cost of validating one update (Proof-of-Contribution), per preset. Prints one JSON line.

Measured: structural decode (`decode_update`) + norm, sketch (round-level), direction and loss checks
(`ProofOfContribution.check_contribution`) on an honest-looking update. Baseline in the same
process: one plain forward pass over the same holdout windows (the least a loss check costs).

    .venv/bin/python bench/validate.py
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ailo.data import TokenDataset  # noqa: E402
from ailo.federation.coordinator.coordinator import Coordinator, CoordinatorConfig, Submission  # noqa: E402
from ailo.federation.coordinator.holdout import sequence_losses  # noqa: E402
from ailo.federation.coordinator.poc import ProofOfContribution  # noqa: E402
from ailo.federation.core.update_format import UpdateMeta, UpdateRejected, decode_update, encode_update  # noqa: E402
from ailo.training import TrainConfig, train_local  # noqa: E402


class NoLedger:
    def is_registered(self, address: str) -> bool:
        return True


def measure(preset: str, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        coord = Coordinator(CoordinatorConfig(preset=preset, val_batches=1, local_steps=3, batch_size=4), Path(tmp))
        poc = ProofOfContribution(NoLedger())  # type: ignore[arg-type]
        model = type(coord.model)(coord.cfg, seed=None)
        model.load_state_dict(coord.model.state_dict())
        data = TokenDataset.from_dir(None, "train").random_batches(4, coord.seq_len, seed=3)
        delta = train_local(model, data, TrainConfig(steps=3)).delta  # an honest update on real text
        body = encode_update(delta)
        rnd = coord.current_round()
        meta = UpdateMeta("bench", rnd.id, 0, 12, 5.0)
        poc.reference(coord)  # per-version work (holdout gradient), amortised over a round
        times, outcome = [], "accepted"
        for _ in range(repeats):
            t0 = time.perf_counter()
            sub = Submission(meta, body, hashlib.sha256(body).hexdigest(), rnd, time.time())
            sub.tensors = decode_update(body, coord.manifest)
            try:
                poc.check_contribution(coord, sub)
            except UpdateRejected as exc:
                outcome = exc.reason
            times.append(time.perf_counter() - t0)
        base = []
        with torch.no_grad():
            for _ in range(repeats):
                t0 = time.perf_counter()
                hx, hy = poc.pool.windows(coord.version, coord.seq_len)
                sequence_losses(coord.model, hx, hy)
                base.append(time.perf_counter() - t0)
        coord.store.close()
    return {"preset": preset, "ms_per_update": round(1000 * min(times), 1),
            "ms_holdout_forward": round(1000 * min(base), 1), "ratio": round(min(times) / min(base), 2),
            "update_mb": round(len(body) / 1e6, 1), "outcome": outcome}


def main() -> None:
    results = [measure(p, 5) for p in ("ailo-tiny", "ailo-small")]
    print(json.dumps({"bench": "validate", "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
