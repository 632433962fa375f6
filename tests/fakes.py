"""Test doubles shared by several test modules."""
from __future__ import annotations


class FakeLedger:
    """An inference reward sink that records mints and, like the real ledger's idempotent
    mint, refuses a repeated ref."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []

    def mint_inference(self, address: str, amount: int, ref: str) -> None:
        if any(ref == r for _, _, r in self.calls):
            raise ValueError(f"duplicate ref {ref}")
        self.calls.append((address, amount, ref))

    def for_request(self, rid: str) -> list[tuple[str, int, str]]:
        return [c for c in self.calls if c[2].startswith(f"request:{rid}:")]
