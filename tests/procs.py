"""The process helpers of the tests live in ailo/testing/procs.py (shared with bench/)."""
from ailo.testing.procs import ROOT, ailo, check_alive, free_port, stop, stop_all, wait_healthy  # noqa: F401
