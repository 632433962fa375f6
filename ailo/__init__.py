"""Ailo Network: federated training and distributed inference on donated compute."""

__version__ = "0.1.0"
