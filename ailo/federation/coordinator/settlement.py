"""Settlement of a training round (SPEC R7): who is paid what when a round closes, and which
accepted updates count towards closing it. An accepted update with no fresh work beyond the last
global change G (`fresh_scores`: G plus noise, sign(G), sign(G)·|G|^½; docs/REWARDS.md "Fresh
work") is paid nothing and does not count. A mixin of `ProofOfContribution`, whose validation
config, reward config, ledger and model sketches it uses."""
from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

import numpy as np

from ailo.faults import crash_point
from ailo.federation.core import sketch as sk
from ailo.federation.core.rewards import slice_reward, training_reward
from ailo.federation.core.validate import fresh_cosines

if TYPE_CHECKING:
    from ailo.federation.coordinator.coordinator import Coordinator


class Settlement:
    def sharpened_sketches(self, coord: "Coordinator", version: int) -> list[np.ndarray]:
        """`sketch.sharpened` of G = M_{version−1} − M_version, once per version (one pass)."""
        if version not in self._sharpened:
            self._sharpened = {version: sk.sharpened(self._state(coord, version - 1), self._state(coord, version),
                                                     self.sketch_secret)}
        return self._sharpened[version]

    def fresh_scores(self, coord: "Coordinator", round_id: int) -> dict[int, float]:
        """update id → `fresh_cosines` for the accepted updates of a round, whatever the codec (the
        sketches are of the decoded update); empty where it cannot be judged: version 0 (no global
        change), fewer than `fresh_min_peers` + 1 sketched updates, or an older version's chunks
        no longer on disk."""
        cfg, rnd = self.validation, coord.store.round(round_id)
        if rnd is None or rnd.base_version < 1:
            return {}
        rows = [u for u in coord.store.updates(round_id, "accepted")  # slices: judged per slice at validation
                if u.address and "sketch" in u.extra and not u.extra.get("slice")]
        if len(rows) < cfg.fresh_min_peers + 1:
            return {}
        self.setup(coord)
        try:
            glob = self.model_sketch(coord, rnd.base_version - 1) - self.model_sketch(coord, rnd.base_version)
            also = self.sharpened_sketches(coord, rnd.base_version)
        except (StopIteration, OSError, KeyError):
            return {}
        scores = fresh_cosines([sk.decode(u.extra["sketch"]) for u in rows], glob, cfg.min_fresh_cosine,
                               cfg.fresh_min_peers + 1, also)
        return {u.id: c for u, c in zip(rows, scores)}

    def without_fresh_work(self, coord: "Coordinator", round_id: int) -> int:
        """How many accepted updates of the open round would be paid nothing now (`fresh_scores`):
        they do not count towards closing it, so Sybil wallets sending diluted copies of the last
        global change cannot close a round (publishing G again) before honest work arrives."""
        return sum(c < self.validation.min_fresh_cosine for c in self.fresh_scores(coord, round_id).values())

    def reward_plan(self, coord: "Coordinator", round_id: int) -> list[tuple[int, str, int]]:
        """(update id, address, units) for every accepted update of a closed round; 0 units for
        one that brought no work of its own beyond the last global change (`fresh_scores`)."""
        accepted = [u for u in coord.store.updates(round_id, "accepted") if u.address]
        if not accepted:
            return []
        task = coord.store.round(round_id).task
        task_samples = task["steps"] * task["batch_size"]
        # the round's typical full update; a stale one's drop is at an older base: no median, no LossBonus,
        # and no SpeedBonus (arriving late never pays more; it once earned one when validated quickly)
        full = [u for u in accepted if not u.extra.get("slice") and not u.extra.get("stale")] or accepted
        med = statistics.median(u.extra.get("reduction", 0.0) for u in full)
        fresh = self.fresh_scores(coord, round_id)
        total_params = coord.slice_tasks.total_params
        return [(u.id, u.address, 0 if fresh.get(u.id, 1.0) < self.validation.min_fresh_cosine else
                 slice_reward(training_reward(u.n_samples, task_samples, 0.0 if u.extra.get("stale") else
                                              u.extra.get("reduction", 0.0), med,
                                              None if u.extra.get("stale") else u.extra.get("seconds"), self.rewards),
                              u.extra.get("slice_params", total_params), total_params)) for u in accepted]

    def settle_round(self, coord: "Coordinator", round_id: int) -> None:
        for update_id, address, amount in self.reward_plan(coord, round_id):
            if amount > 0 and self.ledger.mint_training(address, amount, ref=f"update:{update_id}").created:
                crash_point("mid_settle")

    def settle_all(self, coord: "Coordinator") -> None:
        """Pay any closed round left unpaid by a crash (mints are idempotent by ref). Rounds whose
        every accepted update already has its mint are skipped (no model sketches of old
        versions to rebuild at each start-up)."""
        state = self.ledger.state() if hasattr(self.ledger, "state") else None
        paid = getattr(state, "refs", None)
        for rnd in coord.store.rounds():
            if rnd.status != "closed":
                continue
            if paid is not None and all(f"update:{u.id}" in paid for u in coord.store.updates(rnd.id, "accepted")
                                        if u.address):
                continue
            self.settle_round(coord, rnd.id)
