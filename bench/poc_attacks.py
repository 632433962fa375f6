"""Proof-of-Contribution v2 against every attack of issue 11, in the demo setting (ailo-tiny,
3 honest workers, 30 local steps, lr decay 0.8/round), over a real coordinator app (FastAPI
through its ASGI test client, real ledger, private holdout). Prints one JSON line:
per attacker ALC ÷ honest median ALC, the honest refusal rate, and the measured distributions
behind the thresholds in docs/REWARDS.md (honest vs attacker sketch cosines, loss t-values).

    .venv/bin/python bench/poc_attacks.py                      # 10 rounds, all attacks
    .venv/bin/python bench/poc_attacks.py --kinds none --permissive   # honest distributions only
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastapi.testclient import TestClient  # noqa: E402

from ailo.data import carve_private  # noqa: E402
from ailo.federation.coordinator import CoordinatorConfig  # noqa: E402
from ailo.federation.redteam import KINDS, Campaign  # noqa: E402
from ailo.federation.validate import ValidationConfig  # noqa: E402
from ailo.paths import corpus_dir  # noqa: E402
from ailo.server.services import ServiceConfig, build_app  # noqa: E402


def quantiles(xs: list[float]) -> dict | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    q = lambda p: round(xs[min(len(xs) - 1, int(p * len(xs)))], 4)  # noqa: E731
    return {"n": len(xs), "min": round(xs[0], 4), "p50": q(0.5), "p95": q(0.95), "max": round(xs[-1], 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma list of attackers, or 'none'")
    ap.add_argument("--permissive", action="store_true", help="accept anything passing the norm check "
                    "(measures the raw distributions the thresholds come from)")
    ap.add_argument("--aggregator", default="fedavg")
    ap.add_argument("--dump", default=None, help="write every update row and the per-version sketches here (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    kinds = () if args.kinds == "none" else tuple(args.kinds.split(","))
    validation = ValidationConfig(registrations_per_hour=100)  # every participant registers from this one address
    if args.permissive:
        validation = ValidationConfig(registrations_per_hour=100, duplicate_cosine=2, copied_cosine=2, min_cosine=-2,
                                      loss_z=-1e9, min_paired_drop=-1e9, cooldown_base=0, refusal_cost=0)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        carve_private(corpus_dir(), tmp / "public", tmp / "private")
        cfg = CoordinatorConfig(min_updates=1, max_updates=1000, local_steps=args.steps, lr_decay=0.8,
                                round_seconds=3600, val_batches=4, data_dir=str(tmp / "public"),
                                aggregator=args.aggregator)
        svc = ServiceConfig(validation=validation, holdout_dir=str(tmp / "private"))
        app = build_app(cfg, tmp / "coord", svc)
        with TestClient(app) as client:
            camp = Campaign(client, app.state.coordinator, tmp / "public", kinds=kinds, cache_dir=tmp / "cache")
            camp.play(args.rounds)
            rows = app.state.coordinator.store.updates(limit=100000)
            history = client.get("/v1/status").json()["history"]
            if args.dump:
                poc, coord = app.state.poc, app.state.coordinator
                Path(args.dump).write_text(json.dumps({
                    "rows": [{"client": u.client_id, "round": u.round_id, "status": u.status, "reason": u.reason,
                              "extra": u.extra} for u in rows],
                    "grad": {v: s.tolist() for v, s in poc.grad_sketches.items()},
                    "models": {v.version: poc.model_sketch(coord, v.version).tolist() for v in coord.store.versions()}}))
        refused, total = camp.honest_refusals()
    totals = {k: sum(e[k] for e in camp.earnings) for k in camp.earnings[0]}
    honest = [totals[w.client_id] for w in camp.workers]
    med = statistics.median(honest)
    per_round = {a.kind: [e[a.kind] for e in camp.earnings] for a in camp.attackers}
    honest_rows = [u for u in rows if u.client_id.startswith("honest-")]

    def dist(key, sel):
        return quantiles([u.extra.get(key) for u in rows if sel(u)])

    def tval(u):
        return u.extra["drop"] / u.extra["drop_se"] if u.extra.get("drop_se") else None
    print(json.dumps({
        "bench": "poc_attacks", "rounds": args.rounds, "steps": args.steps, "aggregator": args.aggregator,
        "permissive": args.permissive, "seconds": round(time.time() - t0, 1),
        "honest_refusal_rate": round(refused / max(1, total), 4), "honest_submissions": total,
        "honest_refused": refused, "honest_alc": [h / 1e8 for h in honest],
        "alc_ratio_to_honest_median": {a.kind: round(totals[a.kind] / med, 3) for a in camp.attackers},
        "attacker_alc_per_round": {k: [v / 1e8 for v in vs] for k, vs in per_round.items()},
        "refusals": {a.kind: sorted({o.get("reason", o.get("status")) for o in a.outcomes}) for a in camp.attackers},
        "honest_refusal_reasons": sorted({u.reason for u in honest_rows if u.status == "refused"}),
        "val_loss": [round(h["val_loss"], 4) for h in history],
        "distributions": {
            "honest_peer_cosine": dist("peer_cosine", lambda u: u.client_id.startswith("honest-")),
            "honest_peer_overlap": dist("peer_overlap", lambda u: u.client_id.startswith("honest-")),
            "honest_global_cosine": dist("global_cosine", lambda u: u.client_id.startswith("honest-")),
            "honest_loss_t": quantiles([tval(u) for u in honest_rows]),
            "honest_drop": dist("drop", lambda u: u.client_id.startswith("honest-")),
            "honest_clip_scale": dist("clip_scale", lambda u: u.client_id.startswith("honest-")),
            **{f"{k}_{key}": dist(key, lambda u, k=k: u.client_id.startswith(k))
               for k in kinds for key in ("peer_cosine", "global_cosine", "clip_scale")},
            **{f"{k}_loss_t": quantiles([tval(u) for u in rows if u.client_id.startswith(k)]) for k in kinds},
        },
    }))


if __name__ == "__main__":
    main()
