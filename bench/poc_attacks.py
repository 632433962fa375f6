"""Proof-of-Contribution v2 against every attack of issue 11, in the demo setting (ailo-tiny,
3 honest workers, AdamW, lr decay 0.8/round, private holdout), over a real coordinator app
(FastAPI through its ASGI test client, real ledger, validation pipeline). Prints one JSON line:
per attacker ALC ÷ honest median ALC, the honest refusal rate, the "Done when" bounds of
issue 11 checked on the figures (`bounds`), and the measured distributions behind the
thresholds in docs/REWARDS.md (honest vs attacker sketch cosines, loss t-values). One progress
line per round goes to stderr.

Local steps default to 10 (the demo uses 30): a step of ailo-tiny (its 50257×64 tied embedding
dominates) takes ≈ 0.75 s on one core of the shared 2-core box and a round trains 9 runs, so 30
steps made a 10-round run take ≈ 1 h. `--steps 30` reproduces the demo exactly. The booster
scales by 1.7, the most the norm check lets through (×2 is refused outright), so the clip is
exercised, not the norm check.

    .venv/bin/python bench/poc_attacks.py --plot docs/poc_attacks.png   # 10 rounds, all attacks
    .venv/bin/python bench/poc_attacks.py --kinds none --permissive     # honest distributions only
    .venv/bin/python bench/poc_attacks.py --kinds diluted,sign_global   # zero-compute copies of G
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastapi.testclient import TestClient  # noqa: E402

from ailo.data import carve_private  # noqa: E402
from ailo.federation.core.codecs import CodecSpec  # noqa: E402
from ailo.federation.coordinator.coordinator import CoordinatorConfig  # noqa: E402
from ailo.testing.redteam import EXTRA_KINDS, KINDS, Campaign  # noqa: E402
from ailo.federation.core.rewards import RewardConfig  # noqa: E402
from ailo.federation.core.validate import ValidationConfig  # noqa: E402
from ailo.paths import corpus_dir  # noqa: E402
from ailo.server.services import ServiceConfig, build_app  # noqa: E402


def quantiles(xs: list[float]) -> dict | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    q = lambda p: round(xs[min(len(xs) - 1, int(p * len(xs)))], 4)  # noqa: E731
    return {"n": len(xs), "min": round(xs[0], 4), "p50": q(0.5), "p95": q(0.95), "max": round(xs[-1], 4)}


def check_bounds(camp: Campaign, rows: list, honest_totals: list[int], cfg: ValidationConfig) -> dict:
    """Issue 11's "Done when" bounds, evaluated on this run's figures."""
    out: dict = {}
    kinds = {a.kind for a in camp.attackers}
    names = [w.client_id for w in camp.workers]
    if "sybil" in kinds:  # all clones together vs one update's reward, every round: at most one clone
        # is accepted (one real training run) and the clones together earn no more than one update
        # can (base × (1 + max LossBonus) + speed bonus). Its LossBonus may beat the round's honest
        # updates, as any honest update's may: the ratios to the honest median and best are reported.
        sybil = next(a for a in camp.attackers if a.kind == "sybil")
        clones = Counter(o["round"] for o in sybil.outcomes if o.get("status") == "accepted")
        best = [e["sybil"] / max(e[n] for n in names) for e in camp.earnings if max(e[n] for n in names) > 0]
        med = [e["sybil"] / statistics.median(e[n] for n in names) for e in camp.earnings
               if statistics.median(e[n] for n in names) > 0]
        out["sybil_accepted_clones_per_round_max"] = max(clones.values(), default=0)
        out["sybil_per_round_vs_best_honest_max"] = round(max(best), 3)
        out["sybil_per_round_vs_honest_median_max"] = round(max(med), 3)
        rc = RewardConfig()
        one_update = rc.base_reward * (1 + rc.max_bonus) + rc.speed_bonus
        out["sybil_per_round_max_alc"] = max(e["sybil"] for e in camp.earnings) / 1e8
        out["sybil_ok"] = (max(clones.values(), default=0) <= 1
                           and all(e["sybil"] <= one_update for e in camp.earnings))
    med_total = statistics.median(honest_totals)
    if "gamer" in kinds:
        ratio = sum(e["gamer"] for e in camp.earnings) / med_total
        out["gamer_vs_honest_median"], out["gamer_ok"] = round(ratio, 3), ratio <= 1.2
    for kind in ("copycat", "lazy"):
        if kind in kinds:
            later = sum(e[kind] for e in camp.earnings[1:])
            out[f"{kind}_alc_after_round_1"], out[f"{kind}_ok"] = later / 1e8, later == 0
    if "booster" in kinds:  # effective norm (clip · ‖Δ‖ per lr·step) vs clip_factor × median of history
        booster = next(a for a in camp.attackers if a.kind == "booster")
        accepted = sorted((u for u in rows if u.status == "accepted" and "norm_per_work" in u.extra), key=lambda u: u.id)
        worst, n = 0.0, 0
        for b in accepted:
            if b.address not in booster.addresses:
                continue
            history = [u.extra["norm_per_work"] for u in accepted if u.id < b.id][-cfg.norm_history:]
            if len(history) < cfg.norm_min_history:
                continue
            eff = b.extra["clip_scale"] * b.extra["norm_per_work"] / statistics.median(history)
            worst, n = max(worst, eff), n + 1
        out["booster_accepted_judged"] = n
        out["booster_effective_norm_max_vs_median"] = round(worst, 4)
        out["booster_ok"] = worst <= cfg.clip_factor * 1.001
    refused, total = camp.honest_refusals()
    out["honest_refusals_ok"] = refused / max(1, total) <= 0.02
    return out


def plot(per_round: dict[str, list[float]], path: str) -> None:
    """ALC earned per wallet (an attacker: all its wallets together) per round."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    for who, alc in per_round.items():
        honest = who.startswith("honest-")
        ax.plot(range(1, len(alc) + 1), alc, marker="o", markersize=3, label=who,
                linewidth=2 if honest else 1, linestyle="-" if honest else "--")
    ax.set_xlabel("round")
    ax.set_ylabel("ALC earned in the round")
    ax.set_xticks(range(1, len(next(iter(per_round.values()))) + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Proof-of-Contribution v2: ALC per wallet per round (bench/poc_attacks.py)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--booster-factor", type=float, default=1.7)
    ap.add_argument("--plot", default=None, help="write a PNG of ALC earned per wallet per round here")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma list of attackers, or 'none'; besides "
                    f"the default eight: {', '.join(EXTRA_KINDS)}")
    ap.add_argument("--permissive", action="store_true", help="accept anything passing the norm check "
                    "(measures the raw distributions the thresholds come from)")
    ap.add_argument("--aggregator", default="fedavg")
    ap.add_argument("--codec", default="fp32", help="update codec: fp32, int8, sparse or sparse:<density>")
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"], help="client optimizer (sparse: sgd)")
    ap.add_argument("--lr", type=float, default=None, help="client lr (default 3e-3 for adamw, 0.3 for sgd)")
    ap.add_argument("--dump", default=None, help="write every update row and the per-version sketches here (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    kinds = () if args.kinds == "none" else tuple(args.kinds.split(","))
    validation = ValidationConfig(registrations_per_hour=100)  # every participant registers from this one address
    if args.permissive:
        validation = ValidationConfig(registrations_per_hour=100, duplicate_cosine=2, copied_cosine=2, min_cosine=-2,
                                      loss_z=-1e9, min_paired_drop=-1e9, cooldown_base=0, refusal_cost=0,
                                      min_fresh_cosine=-2)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        carve_private(corpus_dir(), tmp / "public", tmp / "private")
        codec = CodecSpec.parse(args.codec)
        cfg = CoordinatorConfig(min_updates=1, max_updates=1000, local_steps=args.steps, lr_decay=0.8,
                                round_seconds=3600, val_batches=4, data_dir=str(tmp / "public"),
                                aggregator=args.aggregator, codec=codec.name, codec_density=codec.density,
                                optimizer=args.optimizer,
                                lr=args.lr if args.lr is not None else (0.3 if args.optimizer == "sgd" else 3e-3))
        svc = ServiceConfig(validation=validation, holdout_dir=str(tmp / "private"))
        app = build_app(cfg, tmp / "coord", svc)
        with TestClient(app) as client:
            camp = Campaign(client, app.state.coordinator, tmp / "public", kinds=kinds, cache_dir=tmp / "cache")
            for a in camp.attackers:
                if a.kind == "booster":
                    a.factor = args.booster_factor
            camp.play(args.rounds, progress=lambda line: print(f"[{time.time() - t0:6.0f} s] {line}",
                                                                file=sys.stderr, flush=True))
            rows = app.state.coordinator.store.updates(limit=100000)
            history = client.get("/v1/status").json()["history"]
            poc, coord = app.state.poc, app.state.coordinator
            fresh: dict[int, float] = {}   # update id → fresh-work score (docs/REWARDS.md "Fresh work")
            paid: dict[int, int] = {}      # update id → units minted at the round's close
            for rnd in range(1, args.rounds + 1):
                fresh.update(poc.fresh_scores(coord, rnd))
                paid.update({i: units for i, _, units in poc.reward_plan(coord, rnd)})
            if args.dump:
                Path(args.dump).write_text(json.dumps({
                    "rows": [{"client": u.client_id, "round": u.round_id, "status": u.status, "reason": u.reason,
                              "extra": u.extra} for u in rows],
                    "grad": {v: s.tolist() for v, s in poc.grad_sketches.items()},
                    "models": {v.version: poc.model_sketch(coord, v.version).tolist() for v in coord.store.versions()}}))
        refused, total = camp.honest_refusals()
    totals = {k: sum(e[k] for e in camp.earnings) for k in camp.earnings[0]}
    honest = [totals[w.client_id] for w in camp.workers]
    med = statistics.median(honest)
    honest_rows = [u for u in rows if u.client_id.startswith("honest-")]

    bounds = check_bounds(camp, rows, honest, ValidationConfig())
    unpaid = sum(paid.get(u.id, 0) == 0 for u in honest_rows if u.status == "accepted")
    bounds["honest_unpaid_rate"] = round(unpaid / max(1, total), 4)   # accepted but withheld (fresh work)
    bounds["honest_unpaid_ok"] = unpaid / max(1, total) <= 0.02
    alc_per_round = {k: [e[k] / 1e8 for e in camp.earnings] for k in camp.earnings[0]}
    if args.plot:
        plot(alc_per_round, args.plot)

    def dist(key, sel):
        return quantiles([u.extra.get(key) for u in rows if sel(u)])

    def tval(u):
        return u.extra["drop"] / u.extra["drop_se"] if u.extra.get("drop_se") else None
    print(json.dumps({
        "bench": "poc_attacks", "rounds": args.rounds, "steps": args.steps, "aggregator": args.aggregator,
        "codec": args.codec, "optimizer": args.optimizer,
        "permissive": args.permissive, "seconds": round(time.time() - t0, 1),
        "honest_refusal_rate": round(refused / max(1, total), 4), "honest_submissions": total,
        "honest_refused": refused, "honest_alc": [h / 1e8 for h in honest],
        "alc_ratio_to_honest_median": {a.kind: round(totals[a.kind] / med, 3) for a in camp.attackers},
        "alc_per_round": alc_per_round,
        "bounds": bounds,
        "outcomes": {a.kind: dict(Counter(o.get("reason") or o.get("status") for o in a.outcomes))
                     for a in camp.attackers},
        "honest_refusal_reasons": sorted({u.reason for u in honest_rows if u.status == "refused"}),
        "honest_accepted_unpaid": sum(paid.get(u.id, 0) == 0 for u in honest_rows if u.status == "accepted"),
        "unpaid_accepted": dict(Counter(u.client_id.rsplit("-", 1)[0] for u in rows
                                        if u.status == "accepted" and paid.get(u.id, 0) == 0)),
        "val_loss": [round(h["val_loss"], 4) for h in history],
        "distributions": {
            "honest_peer_cosine": dist("peer_cosine", lambda u: u.client_id.startswith("honest-")),
            "honest_peer_overlap": dist("peer_overlap", lambda u: u.client_id.startswith("honest-")),
            "honest_global_cosine": dist("global_cosine", lambda u: u.client_id.startswith("honest-")),
            "honest_loss_t": quantiles([tval(u) for u in honest_rows]),
            "honest_drop": dist("drop", lambda u: u.client_id.startswith("honest-")),
            "honest_clip_scale": dist("clip_scale", lambda u: u.client_id.startswith("honest-")),
            "honest_fresh": quantiles([fresh.get(u.id) for u in honest_rows]),
            **{f"{k}_fresh": quantiles([fresh.get(u.id) for u in rows if u.client_id.startswith(k)]) for k in kinds},
            **{f"{k}_{key}": dist(key, lambda u, k=k: u.client_id.startswith(k))
               for k in kinds for key in ("peer_cosine", "global_cosine", "clip_scale")},
            **{f"{k}_loss_t": quantiles([tval(u) for u in rows if u.client_id.startswith(k)]) for k in kinds},
        },
    }))


if __name__ == "__main__":
    main()
