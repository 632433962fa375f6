"""The names a coordinator's strategies are chosen by (`--aggregator`, `--outer`), as plain data:
the CLI offers them as choices without importing torch. `registry.py` and `outer.py` build the
strategies under exactly these names (tests/test_cli_imports.py holds them equal)."""
from __future__ import annotations

AGGREGATOR_NAMES = ("fedavg", "trimmed-mean", "median", "krum", "multi-krum", "fedavgm")
OUTER_OPTIMIZERS = ("sgd", "nesterov", "fedadam")
