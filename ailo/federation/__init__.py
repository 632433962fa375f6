"""Federated rounds: update format, aggregation (pure), coordinator service, native worker."""
