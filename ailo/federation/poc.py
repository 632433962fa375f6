"""Proof-of-Contribution: wires the checks of `validate.py` into the coordinator and pays
accepted updates on the ledger (SPEC R6, R7, R10).

Order of checks for POST /v1/updates (cheapest first, nothing parsed before identity):
    in the request: signature present → address format → registered → signature valid →
    timestamp window → nonce strictly increasing (consumed once seen) → per-wallet rate limit →
    [safetensors header: names, dtypes, shapes] → 202;
    in the validation pipeline: [tensor data: NaN/Inf] → norm plausibility → direction → loss
    reduction (fp32, on the coordinator's device).
Refusals are recorded with their reason and never paid. Rewards are minted when the round
closes (the LossBonus needs the round's median) with ref `update:<id>`, which the ledger
makes idempotent, so a restart between publishing and paying pays exactly once.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.func import functional_call

from ailo.data import TokenDataset
from ailo.faults import crash_point
from ailo.federation.codecs import CodecSpec, backlog_lr
from ailo.federation.rewards import RewardConfig, training_reward
from ailo.federation.signing import update_message
from ailo.federation.update_format import UpdateRejected
from ailo.federation.validate import (TokenBucket, ValidationConfig, check_direction, check_loss,
                                      check_norm, check_timestamp)
from ailo.wallet import is_valid_address, verify_signature

if TYPE_CHECKING:
    from ailo.federation.coordinator import Coordinator, Submission
    from ailo.ledger.service import LedgerService


@dataclass
class ProofOfContribution:
    ledger: "LedgerService"
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    holdout_batches: int = 2

    def __post_init__(self) -> None:
        v = self.validation
        self.wallet_bucket = TokenBucket(v.updates_per_minute / 60.0, v.update_burst)
        self._holdout: list | None = None
        self._reference: dict[int, tuple[float, dict[str, torch.Tensor]]] = {}  # version → (loss, ∇loss)

    def install(self, coord: "Coordinator") -> None:
        coord.pre_checks.append(self.check_identity)
        coord.post_checks.append(self.check_contribution)
        coord.on_round_closed.append(self.settle_round)
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
        message = update_message(m.round_id, m.base_version, sub.sha256, m.n_samples, m.nonce, m.timestamp)
        if not verify_signature(m.address, message, m.signature):
            raise UpdateRejected("bad_signature", "signature does not verify for this address and update digest", 401)
        check_timestamp(m.timestamp / 1000.0, sub.received, self.validation)
        last = coord.store.counters().get(f"nonce:{m.address}", -1)
        if m.nonce <= last:
            raise UpdateRejected("replay", f"nonce {m.nonce} was already used (last {last}): replayed update", 409)
        coord.store.set_counter(f"nonce:{m.address}", m.nonce)
        if not self.wallet_bucket.take(m.address):
            raise UpdateRejected("rate_limited", f"wallet {m.address} exceeds "
                                 f"{self.validation.updates_per_minute:g} updates per minute", 429)
        if any(u.address == m.address for u in coord.store.updates(sub.round.id, "accepted")):
            raise UpdateRejected("duplicate", f"wallet {m.address} already has an accepted update in round "
                                 f"{sub.round.id}", 409)

    # -- contribution (after structural checks) --------------------------------------------
    def holdout(self, coord: "Coordinator") -> list:
        if self._holdout is None:
            self._holdout = TokenDataset.from_dir(coord.config.data_dir, "holdout").fixed_batches(
                self.holdout_batches, coord.config.batch_size, coord.seq_len, seed=99)
        return self._holdout

    @torch.no_grad()
    def holdout_loss(self, coord: "Coordinator", params: dict[str, torch.Tensor]) -> float:
        """Holdout loss of the global model's architecture with `params` swapped in."""
        total = 0.0
        for x, y in self.holdout(coord):  # fp32 on the coordinator's device: a decision threshold
            total += float(functional_call(coord.model, params, (x.to(coord.device), y.to(coord.device))))
        return total / len(self.holdout(coord))

    def reference(self, coord: "Coordinator") -> tuple[float, dict[str, torch.Tensor]]:
        """Holdout loss and its gradient at the current global model, once per version."""
        if coord.version not in self._reference:
            model = coord.model
            model.zero_grad(set_to_none=True)
            batches = self.holdout(coord)
            total = 0.0
            for x, y in batches:
                loss = model(x.to(coord.device), y.to(coord.device)) / len(batches)
                loss.backward()
                total += float(loss.detach())
            grad = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
            model.zero_grad(set_to_none=True)
            self._reference = {coord.version: (total, grad)}
        return self._reference[coord.version]

    def check_contribution(self, coord: "Coordinator", sub: "Submission") -> None:
        recent = coord.store.updates(status="accepted", limit=self.validation.norm_history, newest=True)
        history = [u.extra["norm_per_work"] for u in recent if "norm_per_work" in u.extra]
        task = sub.round.task
        codec = CodecSpec.from_task(task)
        if codec.lossy:  # error feedback: a body carries this round's work plus earlier rounds' backlog, so
            # norms grow until the backlog is steady; only the per-coordinate bound on all that work applies
            lrs = [r.task["lr"] for r in sorted(coord.store.rounds(), key=lambda r: -r.id) if r.id <= sub.round.id]
            task, history = {**task, "lr": backlog_lr(lrs, codec.ef_decay)}, []
        norm_per_work = check_norm(sub.tensors, history, task, self.validation)
        before, grad = self.reference(coord)
        cosine = check_direction(sub.tensors, grad, self.validation)
        eta = coord.config.server_lr
        params = {k: v - eta * sub.tensors[k] for k, v in coord.model.state_dict().items()}
        after = self.holdout_loss(coord, params)
        peers = [u.extra["reduction"] for u in coord.store.updates(sub.round.id, "accepted") if "reduction" in u.extra]
        reduction = check_loss(before, after, peers, self.validation)
        issued = coord.tasks.get(sub.meta.task_id)
        seconds = sub.received - issued[2] if issued and issued[:2] == (sub.meta.client_id, sub.round.id) else None
        sub.extra.update(norm_per_work=norm_per_work, cosine=cosine, loss_before=before, loss_after=after, reduction=reduction, seconds=seconds)

    # -- rewards ---------------------------------------------------------------------------
    def reward_plan(self, coord: "Coordinator", round_id: int) -> list[tuple[int, str, int]]:
        """(update id, address, units) for every accepted update of a closed round."""
        accepted = [u for u in coord.store.updates(round_id, "accepted") if u.address]
        if not accepted:
            return []
        task = coord.store.round(round_id).task
        task_samples = task["steps"] * task["batch_size"]
        med = statistics.median(u.extra.get("reduction", 0.0) for u in accepted)
        return [(u.id, u.address, training_reward(u.n_samples, task_samples, u.extra.get("reduction", 0.0), med,
                                                  u.extra.get("seconds"), self.rewards)) for u in accepted]

    def settle_round(self, coord: "Coordinator", round_id: int) -> None:
        for update_id, address, amount in self.reward_plan(coord, round_id):
            self.ledger.mint_training(address, amount, ref=f"update:{update_id}")
            crash_point("mid_settle")

    def settle_all(self, coord: "Coordinator") -> None:
        """Pay any closed round left unpaid by a crash (mints are idempotent by ref)."""
        for rnd in coord.store.rounds():
            if rnd.status == "closed":
                self.settle_round(coord, rnd.id)
