"""Proof-of-Contribution: wires the checks of `validate.py` into the coordinator and pays
accepted updates on the ledger (SPEC R6, R7, R10). Every check is a coordinator hook
(`pre_checks`, `post_checks`, `on_accept`, `on_refused`, `on_round_closed`), so it runs the
same wherever the coordinator decides (request path or a validation pipeline).

Order of checks for POST /v1/updates (cheapest first, nothing parsed before identity):
    in the request: signature present → address format → registered → signature valid →
    timestamp window → cool-down after refusals → nonce strictly increasing (consumed once
    seen) → per-wallet rate limit → [safetensors header: names, dtypes, shapes] → 202;
    in the validation pipeline: [tensor data: NaN/Inf] → norm plausibility (and the clip
    factor) → round-level similarity on secret sketches (duplicate_work, copied_global) →
    descent direction → paired per-sequence loss drop on the private rotating holdout (fp32,
    on the coordinator's device).
Refusals are recorded with their reason and never paid; verified ones count against the
wallet (reputation, cool-down, rate-limit tokens). Rewards are minted when the round closes
(the LossBonus needs the round's median; an accepted update with no fresh work beyond the last
global change — `fresh_scores` — is paid nothing) with ref `update:<id>`, which the ledger makes
idempotent, so a restart between publishing and paying pays exactly once (`settlement.py`).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from ailo.chunks import ChunkStore, DirectorySource, Manifest
from ailo.federation.core import sketch as sk
from ailo.federation.coordinator import slice_checks as sc
from ailo.federation.core.codecs import CodecSpec, backlog_lr
from ailo.federation.coordinator.holdout import PrivateHoldout, derive, holdout_batch, holdout_recompute, load_secret, sequence_losses
from ailo.federation.coordinator.reputation import Reputation
from ailo.federation.coordinator.settlement import Settlement
from ailo.federation.coordinator.stale_base import StaleBase, task_round  # the delayed rule's base
from ailo.federation.core.rewards import RewardConfig
from ailo.federation.core.signing import update_message
from ailo.federation.core.update_format import UpdateRejected
from ailo.federation.core.local_phase import effective_task, is_timed
from ailo.federation.core.validate import (TokenBucket, ValidationConfig, check_descent, check_direction,
                                      check_loss_harm, check_loss_paired, check_norm, check_round_similarity, same_work,
                                      check_timestamp, clip_scale, cooldown_seconds)
from ailo.recompute import lean_sequence_losses
from ailo.wallet import is_valid_address, verify_signature

if TYPE_CHECKING:
    from ailo.federation.coordinator.coordinator import Coordinator, Submission
    from ailo.ledger.service import LedgerService

NOT_COUNTED = {"rate_limited", "duplicate"}  # refusals that say nothing about the work's quality


@dataclass
class ProofOfContribution(Settlement):
    ledger: "LedgerService"
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    holdout_dir: str | None = None    # private text no client gets; None: public corpus's holdout split
    holdout_sequences: int = 64

    def __post_init__(self) -> None:
        v = self.validation
        self.wallet_bucket = TokenBucket(v.updates_per_minute / 60.0, v.update_burst)
        self.pool: PrivateHoldout | None = None
        self._reference: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}  # version → (losses, ∇)
        self._model_sketches: dict[int, np.ndarray] = {}
        self._sharpened: dict[int, list[np.ndarray]] = {}  # version → sketches of sign(G)·|G|^p
        self.grad_sketches: dict[int, np.ndarray] = {}    # version → sketch of ∇L_holdout(M_v)
        self.stale = StaleBase()                          # W_b and its reference for stale updates

    def setup(self, coord: "Coordinator") -> None:
        if self.pool is not None:
            return
        secret = load_secret(coord.store.dir)
        self.sketch_secret = derive(secret, "sketch")
        self.pool = PrivateHoldout.open(self.holdout_dir, coord.config.data_dir, secret, self.holdout_sequences)
        if not self.pool.private:
            print("warning: no --holdout-dir: the Proof-of-Contribution holdout is drawn from the public corpus's "
                  "holdout split (secret per-version draws, but the text itself is public)", flush=True)
        self.reputation = Reputation(coord.store)

    def install(self, coord: "Coordinator") -> None:
        self.setup(coord)
        coord.pre_checks.append(self.check_identity)
        coord.post_checks.append(self.check_contribution)
        coord.on_accept.append(self.record_accepted)
        coord.on_refused.append(self.record_refused)
        coord.on_round_closed.append(self.settle_round)
        coord.on_closing.append(self.drop_reference)
        coord.uncounted = self.without_fresh_work
        coord.on_idle.append(self.warm)
        coord.status_extras.append(self.status)
        self.settle_all(coord)

    # -- identity (before any tensor is parsed) --------------------------------------------
    def check_identity(self, coord: "Coordinator", sub: "Submission") -> None:
        m = sub.meta
        if not m.signature or not m.address:
            raise UpdateRejected("unsigned", "update must carry X-Ailo-Address and X-Ailo-Signature", 401)
        if not is_valid_address(m.address):
            raise UpdateRejected("bad_address", f"X-Ailo-Address {m.address[:80]!r} is not a valid address "
                                 "(format or checksum)", 400)
        if not self.ledger.is_registered(m.address):
            raise UpdateRejected("unregistered", f"address {m.address} is not registered; POST /v1/register first", 403)
        message = update_message(m.round_id, m.base_version, sub.sha256, m.n_samples, m.nonce, m.timestamp, m.client_id)
        if not verify_signature(m.address, message, m.signature):
            raise UpdateRejected("bad_signature", "signature does not verify for this address and update digest", 401)
        check_timestamp(m.timestamp / 1000.0, sub.received, self.validation)
        # Cool-down before the nonce is consumed: the client may resend the same signed body later.
        rec = self.reputation.record(m.address)
        wait = rec.last_refused_ms / 1000.0 + cooldown_seconds(rec.streak, self.validation) - sub.received
        if wait > 0:
            raise UpdateRejected("rate_limited", f"wallet {m.address} is cooling down after {rec.streak} refused "
                                 f"update(s) in a row; retry in {wait:.1f} s", 429)
        last = coord.store.counters().get(f"nonce:{m.address}", -1)
        if m.nonce <= last:
            raise UpdateRejected("replay", f"nonce {m.nonce} was already used (last {last}): replayed update", 409)
        coord.store.set_counter(f"nonce:{m.address}", m.nonce)
        sub.extra["signed"] = True  # from here on a refusal is the wallet's own doing
        if not self.wallet_bucket.take(m.address):
            raise UpdateRejected("rate_limited", f"wallet {m.address} exceeds "
                                 f"{self.validation.updates_per_minute:g} updates per minute", 429)
        if any(u.address == m.address for u in coord.store.updates(sub.round.id, "accepted")):
            raise UpdateRejected("duplicate", f"wallet {m.address} already has an accepted update in round "
                                 f"{sub.round.id}", 409)

    # -- holdout ---------------------------------------------------------------------------
    def reference(self, coord: "Coordinator", names: list[str] | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sequence holdout losses and the mean loss's gradient at the current global
        model, once per version (on that version's secret draw of holdout sequences). The
        gradient is computed for `names` only (default: every tensor) and kept for the version:
        a round of slice updates never holds a model-sized gradient (ailo-1b: 6.2 GB)."""
        self.setup(coord)
        model = coord.model
        params = dict(model.named_parameters())
        names = list(params) if names is None else names
        losses, grad = self._reference.get(coord.version, (None, {}))
        want = [n for n in names if n not in grad]
        if losses is None or want:
            x, y = self.pool.windows(coord.version, coord.seq_len)
            x, y = x.to(coord.device), y.to(coord.device)
            if losses is None:
                self._reference = {}  # the previous version's gradient goes before this one is built
            wanted = set(want)
            step = holdout_batch(x.shape[1])
            losses_of = lean_sequence_losses if holdout_recompute(coord.cfg, x.shape[1]) else sequence_losses
            try:
                for n, p in params.items():
                    p.requires_grad_(n in wanted)
                model.zero_grad(set_to_none=True)
                parts = []
                with torch.set_grad_enabled(bool(want)):
                    for i in range(0, x.shape[0], step):  # fp32; a big model's blocks and head recomputed in backward
                        part = losses_of(model, x[i:i + step], y[i:i + step])
                        if want:
                            (part.sum() / x.shape[0]).backward()
                        parts.append(part.detach())
                grad = {**grad, **{n: params[n].grad.detach() for n in want}}  # taken, not copied
            finally:
                for p in params.values():
                    p.grad = None
                    p.requires_grad_(True)
            first = coord.version not in self._reference
            self._reference = {coord.version: (torch.cat(parts) if losses is None else losses, grad)}
            if len(grad) == len(params):
                self.grad_sketches[coord.version] = sk.sketch(grad, self.sketch_secret)
            if first:
                self.model_sketch(coord, coord.version)  # while M_v is on the device: v+1's global change needs it
        losses, grad = self._reference[coord.version]
        return losses, {n: grad[n] for n in names}

    def drop_reference(self, coord: "Coordinator", round_id: int) -> None:
        """The version's holdout gradient (a model-sized tensor set) is not needed once its round
        closes: freed before the new version is built (ailo-1b: 6.2 GB less at the peak)."""
        self._reference = {}
        self.stale.drop_older(coord.version + 1 - coord.config.max_staleness)

    def warm(self, coord: "Coordinator") -> None:
        """Compute the new version's reference while clients download and train: the first
        update of a round then waits for its own checks only (ailo-1b: ~6 s off each round).
        The gradient of what the round's tasks train: every tensor once a full task is out,
        only the slices' tensors while the round has handed out slices only."""
        names = coord.slice_tasks.tensors_issued(coord.current_round().id)
        if names is None or names:
            self.reference(coord, names)

    @torch.no_grad()
    def losses_after(self, coord: "Coordinator", delta: dict[str, torch.Tensor], eta: float) -> torch.Tensor:
        x, y = self.pool.windows(coord.version, coord.seq_len)
        params = {k: (v - eta * delta[k]) if k in delta else v for k, v in coord.model.state_dict().items()}
        x, y = x.to(coord.device), y.to(coord.device)
        return sequence_losses(coord.model, x, y, batch=holdout_batch(x.shape[1]), params=params)

    # -- sketches --------------------------------------------------------------------------
    def model_sketch(self, coord: "Coordinator", version: int) -> np.ndarray:
        return sc.total(self.model_unit_sketches(coord, version))

    def model_unit_sketches(self, coord: "Coordinator", version: int) -> dict[int, np.ndarray]:
        """Sketches of M_version per unit (embed, blocks.i): their sum is the model's sketch."""
        if version not in self._model_sketches:
            state = {k: v.to(coord.device) for k, v in self._state(coord, version).items()}
            self._model_sketches = {v: s for v, s in self._model_sketches.items() if v >= version - 1}
            self._model_sketches[version] = sc.unit_sketches(state, self.sketch_secret, self._groups(coord))
        return self._model_sketches[version]

    @staticmethod
    def _state(coord: "Coordinator", version: int) -> dict[str, torch.Tensor]:
        """M_version: the served model when current, else from its chunk files (host memory)."""
        if version == coord.version:
            return coord.model.state_dict()
        rec = next(v for v in coord.store.versions() if v.version == version)
        return ChunkStore(Manifest.from_json(rec.manifest), DirectorySource(coord.store.chunks_dir)).state_dict()

    @staticmethod
    def _groups(coord: "Coordinator") -> list[list[str]]:
        return coord.slice_tasks.groups

    def change_sketch(self, coord: "Coordinator", a: int, b: int, span: list[int] | None = None) -> np.ndarray:
        """Sketch of M_a − M_b, the global change from version a to b (linear sketch); with
        `span`, of the units [a, b) of a slice only."""
        old, new = self.model_unit_sketches(coord, a), self.model_unit_sketches(coord, b)
        if span is None:
            return sc.total(old) - sc.total(new)
        return sc.restricted(old, span) - sc.restricted(new, span)

    # -- contribution (after structural checks) --------------------------------------------
    def check_contribution(self, coord: "Coordinator", sub: "Submission") -> None:
        self.setup(coord)
        own, base = task_round(coord, sub), sub.meta.base_version  # stale (delayed rule): its own round and base
        cfg, task = self.validation, effective_task(own.task, sub.meta.n_samples)  # time-sized: claimed steps
        span = sub.extra.get("slice")  # a slice task's units [a, b): judged on exactly those tensors
        groups = self._groups(coord)
        codec = CodecSpec.from_task(task)
        recent = coord.store.updates(status="accepted", limit=cfg.norm_history, newest=True)
        # Norms are compared within one codec (a lossy body is not an fp32 Δ). Under a lossy codec
        # a body carries this round's work plus the error-feedback backlog of earlier rounds, so its
        # norm is measured per unit of that backlog's work (`backlog_lr`, which also sets the
        # per-coordinate AdamW bound) and compared with the open and the previous round only, while
        # the backlog grows; the z-score and the 1.5× median clip then bound it as under fp32.
        comparable = [u for u in recent if u.extra.get("codec", "fp32") == codec.name
                      and (not codec.lossy or u.round_id >= sub.round.id - 1)]
        if span is None:  # full updates against full updates; a slice against the same units' norms
            rows = [(u.extra["norm_per_work"], u.extra.get("work_steps"), u.round_id) for u in comparable
                    if "norm_per_work" in u.extra and not u.extra.get("slice")]
            history = [h for h, _, _ in rows]
            # time-sized: z-scored within the round among similar claimed work (the clip uses all of them)
            z_history = same_work(rows, task["steps"], sub.round.id) if is_timed(own.task) else history
        else:
            history = z_history = sc.norm_history([u.extra["unit_npw"] for u in comparable if "unit_npw" in u.extra], span)
        if codec.lossy:
            lrs = [r.task["lr"] for r in sorted(coord.store.rounds(), key=lambda r: -r.id) if r.id <= own.id]
            task = {**task, "lr": backlog_lr(lrs, codec.ef_decay)}
        sub.extra["codec"] = codec.name
        with sub.timed("poc.norm"):
            norm_per_work = check_norm(sub.tensors, z_history, task, cfg)
        work = task["lr"] * task["steps"]
        ref = statistics.median(history) * work if len(history) >= cfg.norm_min_history else None
        scale = clip_scale(norm_per_work * work, ref, cfg.clip_factor)
        # Scored (loss test, LossBonus) at no more than a typical update's size: a boosted Δ moves
        # the model up to the clip, but its larger step must not buy a larger loss drop and bonus.
        score_scale = min(scale, clip_scale(norm_per_work * work, ref, 1.0))
        sub.extra.update(norm_per_work=norm_per_work, work_steps=task["steps"], clip_scale=scale, score_scale=score_scale,
                         seconds=sub.received - own.created,
                         unit_npw=sc.unit_norms(sub.tensors, groups, task["lr"] * task["steps"]))

        with sub.timed("poc.sketch"):
            units = sc.unit_sketches(sub.tensors, self.sketch_secret, groups)
            mine = sc.total(units)
        pairs = []  # (mine, peer's) on the tensors both trained: slices compare like with like
        for u in coord.store.updates(sub.round.id, "accepted"):
            peer_units = sc.decode_units(u.extra["unit_sketches"]) if "unit_sketches" in u.extra else None
            if span is None and not u.extra.get("slice") and "sketch" in u.extra:
                pairs.append((mine, sk.decode(u.extra["sketch"])))
            elif peer_units is not None:
                common = span if span is not None else u.extra["slice"]
                a, b = sc.restricted(units, common), sc.restricted(peer_units, common)
                if a is not None and b is not None:
                    pairs.append((a, b))
        cos_peers = [sk.cosine(a, b) for a, b in pairs]
        overlaps = [sk.overlap(a, b) for a, b in pairs]
        with sub.timed("poc.global_change"):
            glob = self.change_sketch(coord, base - 1, base, span) if base >= 1 else None  # the change before its base
            since = self.change_sketch(coord, base, coord.version, span) if base < coord.version else None
        cos_global = sk.cosine(mine, glob) if glob is not None else None
        if since is not None:  # stale: W_b − W_v applied to W_b is W_v, a free loss drop (copied_global)
            check_round_similarity([], sk.cosine(mine, since), cfg)
        sub.extra.update(sketch=sk.encode(mine), unit_sketches=sc.encode_units(units), peer_cosine=max(cos_peers, default=None),
                         peer_overlap=max(overlaps, default=None), global_cosine=cos_global)
        check_round_similarity(cos_peers, cos_global, cfg)

        with sub.timed("poc.reference"):
            before, grad = self.reference(coord, list(sub.tensors)) if base == coord.version else \
                self.stale.reference(coord, self.pool, base, list(sub.tensors))
        # lossy codecs: a top-k body's support differs from the global change's (honest sketch
        # cosine ≈ 0.18), so the global-direction bar would refuse honest work: gradient only
        with sub.timed("poc.direction"):
            cos = check_descent(None if codec.lossy else cos_global,
                                lambda: check_direction(sub.tensors, grad, cfg), cfg)
        if cos is not None:
            sub.extra["cosine"] = cos
        with sub.timed("poc.holdout"):
            eta = coord.config.server_lr * score_scale * cfg.loss_step_share
            after = self.losses_after(coord, sub.tensors, eta) if base == coord.version else \
                self.stale.losses_after(coord, self.pool, base, sub.tensors, eta)
        d = before.double() - after.double()
        sub.extra.update(loss_before=float(before.mean()), loss_after=float(after.mean()), drop=float(d.mean()),
                         drop_se=float(d.std() / d.numel() ** 0.5))
        peer_drops = [u.extra["reduction"] for u in coord.store.updates(sub.round.id, "accepted")
                      if "reduction" in u.extra and u.extra.get("slice") == span  # like with like
                      and u.extra.get("task_round") == sub.extra.get("task_round")]
        if cos_global is None:  # version 0: the update must visibly lower the loss
            sub.extra["reduction"], _ = check_loss_paired(before, after, peer_drops, cfg)
        else:  # later: refused only when it significantly raises it; the drop is scored (LossBonus)
            sub.extra["reduction"], _ = check_loss_harm(before, after, cfg)

    # -- reputation ------------------------------------------------------------------------
    def record_accepted(self, coord: "Coordinator", sub: "Submission", update_id: int) -> None:
        if sub.meta.address:
            self.reputation.accepted(sub.meta.address)

    def record_refused(self, coord: "Coordinator", sub: "Submission", exc: UpdateRejected) -> None:
        if sub.extra.get("signed") and exc.reason not in NOT_COUNTED:
            self.reputation.refused(sub.meta.address, exc.reason, sub.received)
            self.wallet_bucket.charge(sub.meta.address, self.validation.refusal_cost)

    def status(self, coord: "Coordinator") -> dict:
        self.setup(coord)
        rows = []
        for rec in self.reputation.all().values():
            row = rec.to_json()
            row["username"] = self.ledger.username(rec.address) if hasattr(self.ledger, "username") else None
            row["cooldown_s"] = cooldown_seconds(rec.streak, self.validation)
            rows.append(row)
        rows.sort(key=lambda r: (-r["accepted"], r["refused"], r["address"]))
        return {"reputation": rows, "holdout": {"private": self.pool.private, "sequences": self.pool.sequences,
                                                "pool_windows": self.pool.pool_windows(coord.seq_len)}}
