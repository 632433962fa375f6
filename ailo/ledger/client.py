"""HTTP client for a coordinator's ledger endpoints (used by the CLI and by workers)."""
from __future__ import annotations

from typing import Any

import httpx

from .errors import LedgerError


class LedgerHTTPError(LedgerError):
    """The coordinator refused a request; `code`/message come from its `detail`."""

    def __init__(self, status: int, detail: str) -> None:
        code, _, message = detail.partition(": ")
        super().__init__(message or detail, code if message else "http_error")
        self.status = status


class LedgerClient:
    def __init__(self, base_url: str, client: httpx.Client | None = None,
                 timeout: float = 30.0) -> None:
        self.http = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = str(response.json().get("detail"))
            except ValueError:
                detail = response.text
            raise LedgerHTTPError(response.status_code, detail)
        return response.json()

    def info(self) -> dict[str, Any]:
        return self._check(self.http.get("/v1/ledger/info"))

    def balance(self, address: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/balance/{address}"))

    def fetch_chain(self, from_height: int = 0, page: int = 1000) -> list[dict[str, Any]]:
        """Every block from `from_height` to the tip, paging through GET /v1/chain."""
        blocks: list[dict[str, Any]] = []
        while True:
            data = self._check(self.http.get(
                "/v1/chain", params={"from": from_height + len(blocks), "limit": page}))
            blocks.extend(data["blocks"])
            if not data["blocks"] or from_height + len(blocks) > data["height"]:
                return blocks

    def post(self, path: str, tx: dict[str, Any]) -> dict[str, Any]:
        return self._check(self.http.post(path, json=tx))

    def register(self, tx: dict[str, Any]) -> dict[str, Any]:
        return self.post("/v1/register", tx)

    def transfer(self, tx: dict[str, Any]) -> dict[str, Any]:
        return self.post("/v1/transfers", tx)

    def report(self, tx: dict[str, Any]) -> dict[str, Any]:
        return self.post("/v1/reports", tx)
