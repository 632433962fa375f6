"""Federated rounds, split by side: `core/` (pure maths: update format, codecs, aggregation,
validation, rewards), `coordinator/` (the coordinator service) and `client/` (the native worker)."""
