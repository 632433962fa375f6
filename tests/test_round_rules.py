"""The round-closing rule (ailo/federation/core/round_rules.py) the coordinator applies and
GET /v1/status publishes as `needed_in_round`."""
from ailo.federation.coordinator.config import CoordinatorConfig
from ailo.federation.core.round_rules import RoundRules


def test_needed_is_max_updates_else_min_updates():
    assert RoundRules(min_updates=3).needed == 3
    assert RoundRules(min_updates=3, max_updates=5).needed == 5
    assert CoordinatorConfig(min_updates=2, max_updates=7).rules.needed == 7
    rules = RoundRules(min_updates=3, max_updates=5)
    assert not rules.full(4) and rules.full(5)


def test_due_round_closes_with_min_updates_or_quorum_once_overdue():
    rules = RoundRules(min_updates=3, max_updates=5, quorum_updates=2, round_seconds=10)
    assert rules.closes_when_due(3, age_s=10) and not rules.closes_when_due(2, age_s=19.9)
    assert rules.closes_when_due(2, age_s=20) and not rules.closes_when_due(1, age_s=20)
    assert not RoundRules(min_updates=3, quorum_updates=0, round_seconds=10).closes_when_due(0, age_s=100)
