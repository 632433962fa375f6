"""HTTP client for a coordinator's ledger endpoints (used by the CLI and by workers).

Every call retries connection errors and 5xx/429 under an `ailo.backoff` policy (default: none;
the CLI passes QUICK, about 30 s: a restart, not an outage). A signed transaction resent after a lost reply may be refused
as a replay although its first attempt landed; the client then looks for it in the blocks
sealed since it was first sent and, when found, answers with it (`"replayed": true`), so an
acknowledged transfer is on the chain exactly once.
"""
from __future__ import annotations

from typing import Any

import httpx

from ailo.backoff import ONCE, Backoff, request

from .errors import LedgerError


class LedgerHTTPError(LedgerError):
    """The coordinator refused a request; `code`/message come from its `detail`."""

    def __init__(self, status: int, detail: str) -> None:
        code, _, message = detail.partition(": ")
        super().__init__(message or detail, code if message else "http_error")
        self.status = status


class LedgerClient:
    def __init__(self, base_url: str, client: httpx.Client | None = None,
                 timeout: float = 30.0, policy: Backoff = ONCE) -> None:
        self.http = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self.policy = policy

    def _get(self, path: str, **kw: Any) -> httpx.Response:
        return request(self.http, "GET", path, self.policy, **kw)

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = str(response.json().get("detail"))
            except ValueError:
                detail = response.text
            raise LedgerHTTPError(response.status_code, detail)
        return response.json()

    def info(self) -> dict[str, Any]:
        return self._check(self._get("/v1/ledger/info"))

    def balance(self, address: str) -> dict[str, Any]:
        return self._check(self._get(f"/v1/balance/{address}"))

    def fetch_chain(self, from_height: int = 0, page: int = 1000) -> list[dict[str, Any]]:
        """Every block from `from_height` to the tip, paging through GET /v1/chain."""
        blocks: list[dict[str, Any]] = []
        while True:
            data = self._check(self._get(
                "/v1/chain", params={"from": from_height + len(blocks), "limit": page}))
            blocks.extend(data["blocks"])
            if not data["blocks"] or from_height + len(blocks) > data["height"]:
                return blocks

    def post(self, path: str, tx: dict[str, Any]) -> dict[str, Any]:
        retried: list[int] = []
        start = self.info()["height"] if "signature" in tx else None
        r = request(self.http, "POST", path, self.policy, json=tx, on_retry=lambda n, *_: retried.append(n))
        if r.status_code >= 400 and retried and start is not None:
            landed = self.find_tx(tx, start)
            if landed is not None:
                return landed
        return self._check(r)

    def find_tx(self, tx: dict[str, Any], from_height: int) -> dict[str, Any] | None:
        """The sealed copy of a signed transaction (matched by signature) at or after a height."""
        for block in self.fetch_chain(from_height):
            for t in block["txs"]:
                if t.get("signature") == tx["signature"]:
                    from ailo.ledger.tx import Transaction
                    return {"txid": Transaction.from_json(t).txid, "type": t["type"],
                            "height": block["height"], "replayed": True}
        return None

    def register(self, tx: dict[str, Any]) -> dict[str, Any]:
        return self.post("/v1/register", tx)

    def transfer(self, tx: dict[str, Any]) -> dict[str, Any]:
        return self.post("/v1/transfers", tx)

    def report(self, tx: dict[str, Any]) -> dict[str, Any]:
        return self.post("/v1/reports", tx)
