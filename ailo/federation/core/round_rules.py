"""When a training round closes (the liveness rule, docs/ARCHITECTURE.md), as pure arithmetic.

The coordinator applies it; `GET /v1/status` and the update verdicts publish `needed_in_round`
from it, so the CLI and the dashboard show the coordinator's own number instead of
re-deriving it from the configuration.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoundRules:
    min_updates: int
    max_updates: int | None = None   # close early when reached (None: min_updates)
    quorum_updates: int = 1
    round_seconds: float = 300.0

    @property
    def needed(self) -> int:
        """Accepted updates that close a round before its deadline."""
        return self.max_updates or self.min_updates

    def full(self, accepted: int) -> bool:
        return accepted >= self.needed

    def closes_when_due(self, accepted: int, age_s: float) -> bool:
        """At its deadline a round closes with ≥ min_updates accepted or, once it is
        2 × round_seconds old, with ≥ quorum_updates (≥ 1); otherwise its deadline moves on."""
        overdue = age_s >= 2 * self.round_seconds
        return accepted >= self.min_updates or (overdue and accepted >= max(1, self.quorum_updates))
