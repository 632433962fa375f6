"""Test, benchmark and red-team tooling (browser harness, adversarial clients).

Product code never imports this package (tests/test_layout.py enforces it)."""
